"""The stage checks as Dagster asset checks, declared on the stage's own asset (its wave op), so
a run of the asset and a run of its checks are one op doing what was selected:

- `row_group_valid` (partitioned like the stage): one row group on its own (footer, schema, drop
  budget). Recorded for each row group a run materializes, once the run's materializations are
  in (events.StageEvents.record_checks, also when the run fails), or on demand for a
  run's partitions. It is the one event per row group beyond its materialization.
- the whole-stage checks of runners/checks.py (completeness, uniqueness, ...): unpartitioned.
  Run on demand (a run of the checks alone: `dd-assets check`, the UI's "Execute"), and at the
  end of a materialization run only when the stage is whole by then: a backfill run covering a
  few row groups records no failed completeness for the partitions outside its range.
- `materializations_current`: every partition Dagster shows as materialized has its row group for the
  current config. A config edit turns it red for the whole asset (Dagster itself marks only
  each partition stale); the code location's sensor re-evaluates it without a run
  (sensors.py), and every run of the asset does too.

"Blocking" checks fail with severity ERROR and make `dd-assets check` exit 1; they are not
Dagster's `blocking=True`, which would fail the step and gate downstream assets in a run that
happens to include them.

No `from __future__ import annotations`: Dagster reads the context annotation at runtime."""

import warnings
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluation,
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from dd_assets.dagster.names import asset_key, status_partitions
from dd_assets.runners.checks import (
    ROW_GROUP_CHECK,
    ROW_GROUP_CHECK_DESCRIPTION,
    CheckOutcome,
    check_row_group,
    checks_for,
    expected_schema,
    parquet_schema,
    run_checks,
    stage_files_present,
)
from dd_assets.runners.materialize import RowGroupOutcome
from dd_assets.runners.plan import StagePlan
from dd_assets.store import files
from dd_assets.store.footer import read_footer
from dd_assets.store.layout import BATCH_RE, key_ranges, partition_key, row_group_of
from dd_assets.store.partition_store import PartitionStore

CURRENT_CHECK = "materializations_current"
CURRENT_CHECK_DESCRIPTION = (
    "Every partition shown as materialized has its row group on disk for the stage's current"
    " config (fingerprint = code version). Fails (WARN) after a config edit until the stage is"
    " materialized again; evaluated by every run of the asset and, without a run, by the"
    " workflow's `__current` sensor."
)


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


def check_specs(
    plan: StagePlan, partitions_def: dg.PartitionsDefinition
) -> list[dg.AssetCheckSpec]:
    """The checks a stage asset declares (its wave op runs them)."""
    key = asset_key(plan)
    specs = [
        dg.AssetCheckSpec(
            name=c.name,
            asset=key,
            description=c.description,
            blocking=False,
            metadata={"dd_assets/blocking": c.blocking, "dd_assets/scope": "stage"},
        )
        for c in checks_for(plan)
    ]
    # Partitioned checks are a Dagster preview (pinned minor); its warning would only be noise.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        specs.append(
            dg.AssetCheckSpec(
                name=ROW_GROUP_CHECK,
                asset=key,
                description=ROW_GROUP_CHECK_DESCRIPTION,
                blocking=False,
                metadata={"dd_assets/blocking": True, "dd_assets/scope": "row group"},
                partitions_def=partitions_def,
            )
        )
    specs.append(
        dg.AssetCheckSpec(
            name=CURRENT_CHECK,
            asset=key,
            description=CURRENT_CHECK_DESCRIPTION,
            blocking=False,
            metadata={"dd_assets/blocking": False, "dd_assets/scope": "stage"},
        )
    )
    return specs


def stage_check_names(plan: StagePlan) -> list[str]:
    """The whole-stage checks: what `dd-assets check` runs and reports."""
    return [c.name for c in checks_for(plan)]


def _evaluation(
    key: dg.AssetKey,
    outcome: CheckOutcome,
    *,
    partition: str | None = None,
    target: AssetCheckEvaluationTargetMaterializationData | None = None,
) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(
        asset_key=key,
        check_name=outcome.name,
        passed=outcome.passed,
        metadata=_metadata(outcome),
        target_materialization_data=target,
        severity=dg.AssetCheckSeverity(outcome.severity),
        description=outcome.description,
        partition=partition,
    )


def _result(key: dg.AssetKey, outcome: CheckOutcome) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=outcome.name,
        passed=outcome.passed,
        severity=dg.AssetCheckSeverity(outcome.severity),
        description=outcome.description,
        metadata=_metadata(outcome),
    )


class RowGroupChecker:
    """`row_group_valid` of one stage, with the expected schema worked out once per run."""

    name = ROW_GROUP_CHECK

    def __init__(self, plan: StagePlan, store: PartitionStore) -> None:
        self.plan = plan
        self.key = asset_key(plan)
        self.expected = parquet_schema(expected_schema(plan, store))

    def evaluate(
        self,
        outcome: RowGroupOutcome,
        target: AssetCheckEvaluationTargetMaterializationData | None,
    ) -> AssetCheckEvaluation:
        result = check_row_group(self.plan, read_footer(outcome.info.path), self.expected)
        return _evaluation(
            self.key, result, partition=partition_key(outcome.row_group), target=target
        )


def current_outcome(
    plan: StagePlan, store: PartitionStore, instance: dg.DagsterInstance
) -> CheckOutcome:
    """`materializations_current`: partitions Dagster shows as materialized against the row-group
    files of the current fingerprint (a directory listing). Read from Dagster's partition status
    cache (what the UI reads too), which only looks at events newer than its cursor: cheap
    enough for every run and for a sensor tick."""
    partitions = status_partitions(plan.ref.num_row_groups)
    cached = get_and_update_asset_status_cache_value(instance, asset_key(plan), partitions)
    materialized = {
        row_group_of(k)
        for k in (
            cached.deserialize_materialized_partition_subsets(partitions).get_partition_keys()
            if cached
            else []
        )
    }
    names = files.names(store.files_dir(plan.ref))
    on_disk = {int(m[1]) for name in names if (m := BATCH_RE.match(name))}
    stale = sorted(rg for rg in materialized if rg not in on_disk and rg < plan.ref.num_row_groups)
    numbers: dict[str, Any] = {
        "materialized": len(materialized),
        "stale": len(stale),
        "stale_head": [partition_key(rg) for rg in stale[:10]],
        "fingerprint": plan.ref.fp12,
    }
    if stale:
        text = (
            f"{len(stale)} of {len(materialized)} materialized partition(s) have no row group for"
            f" the current config (fingerprint {plan.ref.fp12}): {key_ranges(stale, 10)}. The"
            " config changed since they were materialized (or their files were moved aside);"
            " materialize the stage again: row groups still current are reused and LLM answers"
            " whose prompts did not change come from the cache"
        )
    else:
        text = f"every materialized partition ({len(materialized)}) is current ({plan.ref.fp12})"
    return CheckOutcome(CURRENT_CHECK, not stale, False, text, numbers)


def current_evaluation(
    plan: StagePlan, store: PartitionStore, instance: dg.DagsterInstance
) -> AssetCheckEvaluation:
    return _evaluation(asset_key(plan), current_outcome(plan, store, instance))


def stage_checks_at_end(
    context: dg.AssetExecutionContext,
    plan: StagePlan,
    store: PartitionStore,
    *,
    on_demand: bool,
) -> Iterator[dg.AssetCheckResult]:
    """The selected unpartitioned checks of one stage. After a materialization (`on_demand`
    False) the whole-stage checks run only if every row group has a file by then; otherwise
    they are left unevaluated in this run (Dagster shows them skipped), not failed."""
    key = asset_key(plan)
    selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == key}
    whole = [n for n in stage_check_names(plan) if n in selected]
    if whole:
        if on_demand or stage_files_present(plan, store):
            for outcome in run_checks(plan, store, names=whole):
                yield _result(key, outcome)
        else:
            context.log.info(
                f"{plan.name}: whole-stage checks not run: the stage is not whole yet; they run"
                " in the run that completes it, or on demand (`dd-assets check`)"
            )
    if CURRENT_CHECK in selected:
        yield _result(key, current_outcome(plan, store, context.instance))


def row_group_checks_on_demand(
    context: dg.AssetExecutionContext, plan: StagePlan, store: PartitionStore
) -> Iterator[AssetCheckEvaluation]:
    """`row_group_valid` run on its own, for the run's partitions (every file on disk when the
    run has none), each against the partition's latest materialization."""
    key = asset_key(plan)
    if dg.AssetCheckKey(key, ROW_GROUP_CHECK) not in context.selected_asset_check_keys:
        return
    checker = RowGroupChecker(plan, store)
    done = store.completed(plan.ref)
    if context.has_partition_key or context.has_partition_key_range:
        wanted = [row_group_of(k) for k in context.partition_keys]
    else:
        wanted = sorted(done)
    for rg in wanted:
        info = done.get(rg)
        if info is None:
            continue
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition_key(rg)]), limit=1
        ).records
        target = (
            AssetCheckEvaluationTargetMaterializationData(
                run_id=records[0].run_id,
                storage_id=records[0].storage_id,
                timestamp=records[0].timestamp,
            )
            if records
            else None
        )
        yield checker.evaluate(RowGroupOutcome(rg, info, reused=True, stats=info.stats), target)
