"""Asset factory: one partitioned Dagster asset per stage (partition = row group), stages chained
row group by row group sharing one op so runs pipeline them, and a `final` asset per stage with
finalize processors.

No `from __future__ import annotations` here: Dagster reads the run-config annotation at runtime."""

import hashlib
import time
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq

from dd_assets.config import ResumeMode, RunSettings
from dd_assets.dagster.io_manager import ref_metadata
from dd_assets.dagster.llm_backends import request_cache_url, request_slots
from dd_assets.dagster.names import (
    asset_key,
    final_key,
    op_name,
    output_name,
    partition_keys,
)
from dd_assets.dagster.profile import profile_metadata_values
from dd_assets.dagster.resources import IO_MANAGER_KEY, StoreResource
from dd_assets.runners.approve import approval_metadata
from dd_assets.runners.finalize import finalize_stage
from dd_assets.runners.materialize import RowGroupOutcome, materialize_wave
from dd_assets.runners.plan import StagePlan
from dd_assets.runners.seeds import skip_reason
from dd_assets.store.layout import partition_key, row_group_of

FRESH_START_TAG = "dd-assets/fresh-start-token"
PREVIEW_ROWS = 5


class StageRunConfig(dg.Config):
    """Run config, settable in the launchpad: how this run treats data already on disk."""

    resume: Literal["if_possible", "always", "never"] = "if_possible"
    # Regenerate the row groups that dropped rows, asking exactly those cells again.
    retry_dropped: bool = False


def _preview_md(table: pa.Table) -> str:
    rows = table.slice(0, PREVIEW_ROWS).to_pylist()
    if not rows:
        return "_no rows_"
    cols = list(rows[0])

    def cell(v: Any) -> str:
        text = str(v).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 60 else text[:59] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def data_version(plan: StagePlan, outcome: RowGroupOutcome) -> str:
    # Same fingerprint + same row group + same rows = same data: a reused row group keeps its
    # version, so downstream stages are not shown as stale by a resume.
    raw = f"{plan.ref.fingerprint}:{outcome.row_group}:{outcome.info.rows}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def partition_metadata(plan: StagePlan, outcome: RowGroupOutcome) -> dict[str, Any]:
    stats = outcome.stats or {}
    md: dict[str, Any] = {
        "rows": outcome.info.rows,
        "planned_rows": stats.get("planned_rows", outcome.info.row_end - outcome.info.row_start),
        "dropped_rows": stats.get("dropped_rows", 0),
        "seconds": float(stats.get("seconds", 0.0)),
        "reused": outcome.reused,
        "path": dg.MetadataValue.path(str(outcome.info.path)),
        "fingerprint": plan.ref.fingerprint[:12],
    }
    if stats.get("drop_reasons"):
        md["drop_reasons"] = dg.MetadataValue.json(stats["drop_reasons"])
    if stats.get("llm"):
        md.update({f"llm_{k}": v for k, v in stats["llm"].items()})
    return md


def _upstream_dep(plan: StagePlan, up: StagePlan) -> dg.AssetDep:
    """What a stage depends on in an upstream outside its wave: the same row groups (a join of
    stages from different waves), its final output when it has finalize processors, or all of it."""
    if plan.pairs_row_groups:
        return dg.AssetDep(asset_key(up), partition_mapping=dg.IdentityPartitionMapping())
    if up.compiled.stage.finalize:
        return dg.AssetDep(final_key(up))
    return dg.AssetDep(asset_key(up), partition_mapping=dg.AllPartitionMapping())


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
                dep = _upstream_dep(p, up)
                internal[output_name(p)].add(dep.asset_key)
                if dep.asset_key not in {d.asset_key for d in deps}:
                    deps.append(dep)

    # BackfillPolicy is marked beta; we depend on it on purpose (pinned dagster minor), so its
    # warning would only be noise in every CLI run, webserver and daemon log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        decorator = dg.multi_asset(
            name=op_name(plans),
            outs=outs,
            deps=deps,
            internal_asset_deps=internal,
            partitions_def=dg.StaticPartitionsDefinition(partition_keys(plans[0])),
            backfill_policy=dg.BackfillPolicy.multi_run(settings.partitions_per_run),
            can_subset=True,
        )

    @decorator
    def _wave(
        context: dg.AssetExecutionContext, config: StageRunConfig, dd_store: StoreResource
    ) -> Iterator[Any]:
        store = dd_store.get_store()
        selected = [
            p for p in plans if output_name(p) in context.op_execution_context.selected_output_names
        ]
        row_groups = [row_group_of(k) for k in context.partition_keys]
        tags = context.run.tags
        token = tags.get(FRESH_START_TAG) or tags.get("dagster/backfill") or context.run.run_id
        t0 = time.perf_counter()

        def on_done(stage: str, o: RowGroupOutcome) -> None:
            verb = "reused" if o.reused else "generated"
            context.log.info(
                f"{stage} row group {o.info.path.stem[-5:]}: {verb} {o.info.rows} rows"
                f" -> {o.info.path}"
            )

        runnable = []
        for p in selected:
            skipped = skip_reason(store, p)
            if skipped:
                context.log.warning(f"stage {p.name!r} is skipped: {skipped}")
                continue
            runnable.append(p)
        if not runnable:
            return
        calls_llm = any(p.compiled.needs_cells for p in runnable)
        with request_slots(context.instance, calls_llm) as slots:
            outcomes = materialize_wave(
                runnable,
                store,
                row_groups,
                resume=ResumeMode(config.resume),
                token=token,
                in_flight=settings.row_groups_in_flight,
                on_done=on_done,
                slots=slots,
                cache_url=request_cache_url(context.instance) if calls_llm else None,
                retry_dropped=config.retry_dropped,
            )
        seconds = round(time.perf_counter() - t0, 3)
        for p in runnable:
            done = outcomes[p.name]
            generated = [o for o in done if not o.reused]
            yield dg.Output(
                None,
                output_name=output_name(p),
                metadata={
                    "row_groups": len(done),
                    "generated": len(generated),
                    "reused": len(done) - len(generated),
                    "rows": sum(o.info.rows for o in done),
                    "seconds": seconds,
                    # Review gate: what the stage hands downstream instead (runners/approve.py).
                    **approval_metadata(p, store),
                },
            )
        # Logged after the Outputs so that each partition's latest materialization carries its
        # own numbers rather than the run's totals.
        for p in runnable:
            last = outcomes[p.name][-1].row_group if outcomes[p.name] else None
            for o in outcomes[p.name]:
                md = partition_metadata(p, o)
                if o.row_group == last:
                    # The whole stage's profile as it stands after this run, on its newest event
                    # (what the asset page shows); once per run, not per row group.
                    md.update(profile_metadata_values(p, store, final=False))
                if not o.reused:
                    md["preview"] = dg.MetadataValue.md(
                        _preview_md(store.read_row_group(p.ref, o.row_group))
                    )
                yield dg.AssetMaterialization(
                    asset_key=asset_key(p),
                    partition=partition_key(o.row_group),
                    metadata=md,
                    tags={
                        "dagster/code_version": p.ref.fingerprint,
                        "dagster/data_version": data_version(p, o),
                    },
                )

    return _wave


def final_asset(plan: StagePlan) -> dg.AssetsDefinition:
    """`[workflow, stage, final]`: the stage's finalize processors over all its row groups."""
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
                _preview_md(pq.ParquetFile(res.path).read_row_group(0))
            )
        else:
            context.log.warning(
                f"finalize of {stage.name!r} kept no rows (allow_empty: true); stages sampling"
                " from it will be skipped"
            )
        return dg.MaterializeResult(metadata=md)

    return _final
