"""`dd-assets check`: the asset checks of a workflow's stages, run as one run of the workflow's
checks job on the real instance (DAGSTER_HOME) so their results show in the UI, and returned for
the exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg

from dd_assets.dagster.asset_checks import stage_check_names
from dd_assets.dagster.build import build_definitions
from dd_assets.dagster.names import asset_key, checks_job_name
from dd_assets.dagster.runs import run_job
from dd_assets.runners.checks import checks_for
from dd_assets.runners.plan import WorkflowPlan
from dd_assets.store.partition_store import PartitionStore


@dataclass
class CheckRow:
    stage: str
    check: str
    passed: bool
    severity: str
    blocking: bool
    description: str
    metadata: dict[str, Any]


@dataclass
class CheckReport:
    run_id: str | None
    rows: list[CheckRow]

    @property
    def failed_blocking(self) -> list[CheckRow]:
        return [r for r in self.rows if not r.passed and r.blocking]

    @property
    def warnings(self) -> list[CheckRow]:
        return [r for r in self.rows if not r.passed and not r.blocking]


def check_workflow(
    plan: WorkflowPlan,
    store: PartitionStore,
    instance: dg.DagsterInstance,
    *,
    stages: list[str] | None = None,
) -> CheckReport:
    """Run the asset checks of the given stages (default: all) and return what they found."""
    wanted = plan.select(stages)
    defs = build_definitions([plan], root=str(store.root))
    checks = None  # all of them
    if len(wanted) < len(plan):
        checks = [
            dg.AssetCheckKey(asset_key(p), name) for p in wanted for name in stage_check_names(p)
        ]
    result = run_job(defs.resolve_job_def(checks_job_name(plan)), instance, checks=checks)
    stage_of = {asset_key(p): p.name for p in wanted}
    blocking = {(p.name, c.name): c.blocking for p in wanted for c in checks_for(p)}
    rows = [
        CheckRow(
            stage=stage_of[ev.asset_key],
            check=ev.check_name,
            passed=ev.passed,
            severity=ev.severity.value,
            blocking=blocking.get((stage_of[ev.asset_key], ev.check_name), True),
            description=ev.description or "",
            metadata={k: v.value for k, v in ev.metadata.items()},
        )
        for ev in result.get_asset_check_evaluations()
    ]
    order = {name: i for i, name in enumerate(plan.stages)}
    rows.sort(key=lambda r: order[r.stage])
    return CheckReport(result.run_id, rows)
