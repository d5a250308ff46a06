"""The checks of dd_assets/checks.py as Dagster asset checks: one multi-asset check per stage
(one op, footers read once), unpartitioned, looking at the whole stage.

They are not part of materialize runs: the stage jobs and `dd-assets materialize` select the
assets `.without_checks()`, since a run covering a few row groups would only fail completeness.
`dd-assets check` runs them, through the real instance, in a run of their own (`checks_job`),
so results land in the event log and the UI's "Checks" tab like any other run's.

No `from __future__ import annotations`: Dagster reads the context annotation at runtime."""

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg

from dd_assets.assets import asset_key
from dd_assets.checks import CheckOutcome, checks_for, run_checks
from dd_assets.config import WorkflowConfig
from dd_assets.stage_runner import StagePlan, plan_workflow
from resources.store_resource import StoreResource


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


def stage_checks(plan: StagePlan, *, store_key: str = "dd_store") -> dg.AssetChecksDefinition:
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
        name="__".join([*key.path, "checks"]),
        description=f"Asset checks of stage {plan.name!r} over all its row groups.",
        can_subset=True,
        required_resource_keys={store_key},
    )
    def _checks(context: dg.AssetCheckExecutionContext) -> Iterator[dg.AssetCheckResult]:
        store_res: StoreResource = getattr(context.resources, store_key)
        selected = {k.name for k in context.selected_asset_check_keys}
        for outcome in run_checks(plan, store_res.get_store(), names=selected):
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=outcome.name,
                passed=outcome.passed,
                severity=dg.AssetCheckSeverity(outcome.severity),
                description=outcome.description,
                metadata=_metadata(outcome),
            )

    return _checks


# ---- `dd-assets check` ---------------------------------------------------------------------------


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
    error: str | None = None

    @property
    def failed_blocking(self) -> list[CheckRow]:
        return [r for r in self.rows if not r.passed and r.blocking]

    @property
    def warnings(self) -> list[CheckRow]:
        return [r for r in self.rows if not r.passed and not r.blocking]


CHECKS_JOB = "checks_job"


def checks_job_name(workflow: WorkflowConfig) -> str:
    return f"{workflow.name}__{CHECKS_JOB}"


def check_workflow(
    workflow: WorkflowConfig,
    *,
    stages: list[str] | None = None,
    root: str | None = None,
    instance: dg.DagsterInstance | None = None,
) -> CheckReport:
    """Run the asset checks of the given stages (default: all) in one Dagster run on the real
    instance (DAGSTER_HOME), so their results show in the UI, and return what they found."""
    from dd_assets.cli_runs import CliJob, ensure_dagster_home, failure_message
    from dd_assets.definitions import build_definitions
    from resources.store_resource import default_root

    ensure_dagster_home()
    root = root or default_root()
    instance = instance or dg.DagsterInstance.get()
    plans = plan_workflow(workflow)
    wanted = stages or list(plans)
    unknown = set(wanted) - set(plans)
    if unknown:
        raise KeyError(
            f"no stage(s) {sorted(unknown)} in workflow {workflow.name!r}; stages: {', '.join(plans)}"
        )
    defs = build_definitions(workflow, root=root)
    job = CliJob.build(
        defs,
        f"{workflow.name}__checks",
        dg.AssetSelection.checks_for_assets(*(asset_key(plans[s]) for s in wanted)),
        instance,
    )
    result = job.run()
    stage_of = {asset_key(p): name for name, p in plans.items()}
    blocking = {(name, c.name): c.blocking for name in wanted for c in checks_for(plans[name])}
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
    order = {name: i for i, name in enumerate(plans)}
    rows.sort(key=lambda r: order[r.stage])
    error = None if result.success else failure_message(result)
    return CheckReport(result.run_id, rows, error)
