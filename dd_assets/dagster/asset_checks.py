"""The checks of dd_assets/checks.py as Dagster asset checks: one multi-asset check per stage
(one op, footers read once), unpartitioned, looking at the whole stage.

They are not part of materialize runs: the stage jobs and `dd-assets materialize` select the
assets `.without_checks()`, since a run covering a few row groups would only fail completeness.
`dd-assets check` runs them, through the real instance, in a run of their own (dagster/check.py),
so results land in the event log and the UI's "Checks" tab like any other run's.

No `from __future__ import annotations`: Dagster reads the context annotation at runtime."""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from dd_assets.dagster.names import asset_key, checks_name
from dd_assets.dagster.resources import StoreResource
from dd_assets.runners.checks import CheckOutcome, checks_for, run_checks
from dd_assets.runners.plan import StagePlan


def _metadata(outcome: CheckOutcome) -> dict[str, Any]:
    md: dict[str, Any] = {}
    for k, v in outcome.numbers.items():
        if v is None:
            md[k] = dg.MetadataValue.null()
        elif isinstance(v, dict | list):
            md[k] = dg.MetadataValue.json(v)
        else:
            md[k] = v
    return md


def stage_checks(plan: StagePlan) -> dg.AssetChecksDefinition:
    key = asset_key(plan)
    specs = [
        dg.AssetCheckSpec(
            name=c.name,
            asset=key,
            description=c.description,
            # Dagster's `blocking` gates downstream assets in the same run and fails the check's
            # step; our checks never share a run with the assets, so "blocking" here means
            # severity ERROR and a failing `dd-assets check` (exit 1), not a failed Dagster run.
            blocking=False,
            metadata={"dd_assets/blocking": c.blocking},
        )
        for c in checks_for(plan)
    ]

    @dg.multi_asset_check(
        specs=specs,
        name=checks_name(plan),
        description=f"Asset checks of stage {plan.name!r} over all its row groups.",
        can_subset=True,
    )
    def _checks(
        context: dg.AssetCheckExecutionContext, dd_store: StoreResource
    ) -> Iterator[dg.AssetCheckResult]:
        selected = {k.name for k in context.selected_asset_check_keys}
        for outcome in run_checks(plan, dd_store.get_store(), names=selected):
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=outcome.name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity(outcome.severity),
                description=outcome.description,
                metadata=_metadata(outcome),
            )

    return _checks
