"""Asset factory: one partitioned Dagster asset per stage (partition = row group), stages chained
row group by row group sharing one op so runs pipeline them, and a `final` asset per stage with
finalize processors.

No `from __future__ import annotations` here: Dagster reads the run-config annotation at runtime."""

import contextlib
import time
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg

from dd_assets.config import ResumeMode, RunSettings
from dd_assets.dagster.asset_checks import (
    check_specs,
    row_group_checks_on_demand,
    stage_checks_at_end,
)
from dd_assets.dagster.events import StageEvents, preview_md
from dd_assets.dagster.io_manager import ref_metadata
from dd_assets.dagster.llm_backends import request_cache_url, request_slots
from dd_assets.dagster.names import (
    asset_key,
    final_key,
    op_name,
    output_name,
    partitions_def,
)
from dd_assets.dagster.profile import profile_metadata_values
from dd_assets.dagster.resources import IO_MANAGER_KEY, StoreResource
from dd_assets.errors import DdAssetsError
from dd_assets.runners.approve import approval_metadata
from dd_assets.runners.finalize import finalize_stage
from dd_assets.runners.materialize import materialize_wave
from dd_assets.runners.materialize_ahead import WaveAhead
from dd_assets.runners.plan import StagePlan
from dd_assets.runners.seeds import skip_reason
from dd_assets.store import files
from dd_assets.store.layout import row_group_of
from dd_assets.store.partition_store import PartitionStore

FRESH_START_TAG = "dd-assets/fresh-start-token"
# The wave `dd-assets materialize` started in its own process before this run (`wave_ahead`).
AHEAD_TAG = "dd-assets/wave-ahead"


class StageRunConfig(dg.Config):
    """Run config, settable in the launchpad: how this run treats data already on disk."""

    resume: Literal["if_possible", "always", "never"] = "if_possible"
    # Regenerate the row groups that dropped rows, asking exactly those cells again.
    retry_dropped: bool = False


def _upstream_deps(plan: StagePlan, up: StagePlan) -> list[dg.AssetDep]:
    """What a stage depends on in an upstream outside its wave: the same row groups (a join of
    stages from different waves), or all of it, and its final output when it has finalize
    processors. A stage reading a final output also depends on all of the raw stage (which the
    final output is made of): an asset backfill over partitions of the upstream, as the UI's
    "Materialize all" launches, reaches downstream assets only through partitioned ones, and
    would otherwise never target this stage."""
    if plan.pairs_row_groups:
        return [dg.AssetDep(asset_key(up), partition_mapping=dg.IdentityPartitionMapping())]
    whole = dg.AssetDep(asset_key(up), partition_mapping=dg.AllPartitionMapping())
    return [dg.AssetDep(final_key(up)), whole] if up.finalizes else [whole]


def _description(plan: StagePlan) -> str:
    stage = plan.compiled.stage
    text = stage.description or f"Stage {stage.name!r} of workflow {plan.workflow.name!r}."
    return text + (
        f"\n\n{stage.num_records} records in row groups of {stage.buffer_size}; columns: "
        + ", ".join(f"`{c.name}` ({c.column_type})" for c in stage.columns)
    )


def wave_asset(plans: list[StagePlan], settings: RunSettings) -> dg.AssetsDefinition:
    """One op for stages chained row group by row group (a "wave"): a run pipelines them, so
    row group i of a downstream stage starts as soon as row group i of its upstream lands.
    Each stage is still its own asset (own partitions, code version, metadata, checks); the
    op can run any subset of them."""
    in_wave = {p.name for p in plans}
    outs: dict[str, dg.AssetOut] = {}
    internal: dict[str, set[dg.AssetKey]] = {}
    deps: list[dg.AssetDep] = []
    for p in plans:
        outs[output_name(p)] = dg.AssetOut(
            key=asset_key(p),
            code_version=p.ref.fingerprint,
            group_name=p.workflow.name,
            io_manager_key=IO_MANAGER_KEY,
            description=_description(p),
            metadata=ref_metadata(p.ref),
            kinds={"parquet"},
            # Not required: a stage whose seed finalized to zero rows is skipped, not failed.
            is_required=False,
        )
        internal[output_name(p)] = set()
        for up in p.upstreams:
            if up.name in in_wave:
                internal[output_name(p)].add(asset_key(up))  # same partitions: identity mapping
            else:
                for dep in _upstream_deps(p, up):
                    internal[output_name(p)].add(dep.asset_key)
                    if dep.asset_key not in {d.asset_key for d in deps}:
                        deps.append(dep)

    partitions = partitions_def(plans[0])
    # BackfillPolicy is marked beta; we depend on it on purpose (pinned dagster minor), so its
    # warning would only be noise in every CLI run, webserver and daemon log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        decorator = dg.multi_asset(
            name=op_name(plans),
            outs=outs,
            deps=deps,
            internal_asset_deps=internal,
            partitions_def=partitions,
            backfill_policy=dg.BackfillPolicy.multi_run(settings.partitions_per_run),
            can_subset=True,
            check_specs=[spec for p in plans for spec in check_specs(p, partitions)],
        )

    @decorator
    def _wave(
        context: dg.AssetExecutionContext, config: StageRunConfig, dd_store: StoreResource
    ) -> Iterator[Any]:
        store = dd_store.get_store()
        selected = [p for p in plans if asset_key(p) in context.selected_asset_keys]
        if not selected:
            # A run of checks alone (`dd-assets check`, the UI's "Execute"): nothing is written.
            for p in plans:
                yield from row_group_checks_on_demand(context, p, store)
                yield from stage_checks_at_end(context, p, store, on_demand=True)
            return
        tags = context.run.tags
        token = tags.get(FRESH_START_TAG) or tags.get("dagster/backfill") or context.run.run_id
        t0 = time.perf_counter()
        runnable = []
        for p in selected:
            skipped = skip_reason(store, p)
            if skipped:
                context.log.warning(f"stage {p.name!r} is skipped: {skipped}")
                continue
            runnable.append(p)
        if not runnable:
            return
        events = StageEvents(
            context,
            runnable,
            store,
            context.partition_keys,
            # Once per run and stage, on its newest event (what the asset page shows): the whole
            # stage's profile as it stands after the run, and its review gate.
            stage_metadata=lambda p: {
                **profile_metadata_values(p, store, final=False),
                **approval_metadata(p, store),
            },
        )
        row_groups = [row_group_of(k) for k in context.partition_keys]
        resume = ResumeMode(config.resume)
        ahead = WaveAhead.claim(
            tags.get(AHEAD_TAG),
            runnable,
            row_groups,
            resume=resume,
            token=token,
            retry_dropped=config.retry_dropped,
        )
        calls_llm = any(p.compiled.needs_cells for p in runnable)
        try:
            if ahead is not None:  # already generating: report what it produces
                try:
                    ahead.attach(events.on_done)
                    ahead.result()
                except BaseException:
                    ahead.stop()
                    raise
            else:
                with request_slots(context.instance, calls_llm) as slots:
                    materialize_wave(
                        runnable,
                        store,
                        row_groups,
                        resume=resume,
                        token=token,
                        in_flight=settings.row_groups_in_flight,
                        on_done=events.on_done,
                        slots=slots,
                        cache_url=request_cache_url(context.instance) if calls_llm else None,
                        retry_dropped=config.retry_dropped,
                    )
        except BaseException:
            events.failed()
            raise
        yield from events.finish()
        events.record_checks()
        context.log.info(events.summary(time.perf_counter() - t0))
        for p in runnable:
            yield from stage_checks_at_end(context, p, store, on_demand=False)

    return _wave


@contextlib.contextmanager
def wave_ahead(
    plans: list[StagePlan],
    store: PartitionStore,
    instance: dg.DagsterInstance,
    row_groups: list[int],
    *,
    resume: str,
    token: str,
    retry_dropped: bool,
) -> Iterator[dict[str, str]]:
    """Start the wave a run of `plans` over `row_groups` is about to run, so its requests go
    out while Dagster creates the run and starts the step (runners/materialize_ahead.py); yields
    the run tag by which the step claims it, and stops it if the step never did. Starts nothing
    when the step would fail before generating (its request slots or cache cannot be opened:
    the step then reports that error itself) or has nothing to run."""
    runnable = [p for p in plans if not skip_reason(store, p)]
    calls_llm = any(p.compiled.needs_cells for p in runnable)
    with contextlib.ExitStack() as stack:
        try:
            slots = stack.enter_context(request_slots(instance, calls_llm))
            cache_url = request_cache_url(instance) if calls_llm else None
        except DdAssetsError:
            runnable = []
        if not runnable:
            yield {}
            return
        ahead = WaveAhead(
            runnable,
            store,
            row_groups,
            resume=ResumeMode(resume),
            token=token,
            retry_dropped=retry_dropped,
            in_flight=runnable[0].workflow.run.row_groups_in_flight,
            slots=slots,
            cache_url=cache_url,
        ).start()
        stack.callback(ahead.close)
        yield {AHEAD_TAG: ahead.id}


def final_asset(plan: StagePlan) -> dg.AssetsDefinition:
    """`[workflow, <stage>_final]`: the stage's finalize processors over all its row groups."""
    stage = plan.compiled.stage
    steps = ", ".join(p.processor_type for p in stage.finalize)

    @dg.asset(
        key=final_key(plan),
        deps=[dg.AssetDep(asset_key(plan), partition_mapping=dg.AllPartitionMapping())],
        code_version=plan.fingerprint.final_hex,
        group_name=plan.workflow.name,
        description=f"Final output of stage {stage.name!r}: {steps}. Materializing it seals the"
        " stage's row groups (`dd-assets unseal` reopens them).",
        kinds={"parquet"},
        io_manager_key=IO_MANAGER_KEY,
        metadata=ref_metadata(plan.ref, final_fingerprint=plan.fingerprint.final_hex),
    )
    def _final(context: dg.AssetExecutionContext, dd_store: StoreResource) -> dg.MaterializeResult:
        store = dd_store.get_store()
        t0 = time.perf_counter()
        res = finalize_stage(plan, store)
        md: dict[str, Any] = {
            "rows_in": res.rows_in,
            "rows": res.rows_out,
            "steps": dg.MetadataValue.json(res.summary["steps"]),
            "seconds": round(time.perf_counter() - t0, 3),
            "path": dg.MetadataValue.path(str(res.path)),
        }
        md.update(profile_metadata_values(plan, store, final=True))
        md.update(approval_metadata(plan, store))
        if res.rows_out:
            md["preview"] = dg.MetadataValue.md(
                preview_md(files.parquet_file(res.path).read_row_group(0))
            )
        else:
            context.log.warning(
                f"finalize of {stage.name!r} kept no rows (allow_empty: true); stages sampling"
                " from it will be skipped"
            )
        return dg.MaterializeResult(metadata=md)

    return _final
