"""Profiles of stages: what the rows look like, column by column, computed from mergeable
per-row-group partials (streamed, bounded memory, equal however the row groups were made), and
the drift check on them. See docs/report.md."""

from dd_assets.runners.profile.partials import record_row_group
from dd_assets.runners.profile.stage import DriftFinding, StageProfile, stage_profile

__all__ = ["DriftFinding", "StageProfile", "record_row_group", "stage_profile"]
