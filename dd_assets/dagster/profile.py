"""The stage profile (runners/profile, runners/report.profile_metadata) as Dagster metadata: the
markdown summary with its sparkline charts, the column table, and numbers the UI plots over
materializations. One call per stage per run: it reads one small cached partial per row group."""

from typing import Any

import dagster as dg

from dd_assets.runners.plan import StagePlan
from dd_assets.runners.profile import stage_profile
from dd_assets.runners.report import profile_metadata
from dd_assets.store.partition_store import PartitionStore


def _value(kind: str, value: Any) -> Any:
    if kind == "md":
        return dg.MetadataValue.md(value)
    if kind == "json":
        return dg.MetadataValue.json(value)
    if kind == "table":
        columns = value["columns"]
        return dg.MetadataValue.table(
            records=[dg.TableRecord({c: str(r[c]) for c in columns}) for r in value["rows"]],
            schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns]),
        )
    if kind == "float":
        return dg.MetadataValue.float(float(value))
    if kind == "int":
        return dg.MetadataValue.int(int(value))
    return dg.MetadataValue.text(str(value))


def profile_metadata_values(
    plan: StagePlan, store: PartitionStore, *, final: bool | None = None
) -> dict[str, Any]:
    """The profile of the stage as it is on disk now (its final output when `final` and current)."""
    prof = stage_profile(plan, store, final=final)
    return {k: _value(v["kind"], v["value"]) for k, v in profile_metadata(prof).items()}
