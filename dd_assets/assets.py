"""Asset factory: one partitioned Dagster asset per stage (partition = row group).

No `from __future__ import annotations` here: Dagster reads the run-config annotation at runtime."""

import hashlib
import time
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import dagster as dg
import pyarrow as pa

from dd_assets.config import ResumeMode, RunSettings, StageSeed
from dd_assets.stage_runner import RowGroupOutcome, StagePlan, materialize
from resources.io_manager import ref_metadata
from resources.store_resource import StoreResource

FRESH_START_TAG = "dd-assets/fresh-start-token"
IO_MANAGER_KEY = "dd_io_manager"
PREVIEW_ROWS = 5


class StageRunConfig(dg.Config):
    """Run config, settable in the launchpad: how this run treats data already on disk."""

    resume: Literal["if_possible", "always", "never"] = "if_possible"


def partition_keys(plan: StagePlan) -> list[str]:
    return [plan.ref.partition_key(rg) for rg in range(plan.ref.num_row_groups)]


def asset_key(plan: StagePlan) -> dg.AssetKey:
    return dg.AssetKey([plan.workflow.name, plan.name])


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


def partition_metadata(
    plan: StagePlan, outcome: RowGroupOutcome, store_root: str
) -> dict[str, Any]:
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


def stage_asset(
    plan: StagePlan, settings: RunSettings, *, store_key: str = "dd_store"
) -> dg.AssetsDefinition:
    stage = plan.compiled.stage
    key = asset_key(plan)
    deps: list[dg.AssetDep] = []
    if plan.upstream is not None:
        mapping: dg.PartitionMapping = (
            dg.IdentityPartitionMapping()
            if isinstance(stage.seed, StageSeed) and stage.seed.mode == "row_group"
            else dg.AllPartitionMapping()
        )
        deps.append(dg.AssetDep(asset_key(plan.upstream), partition_mapping=mapping))
    description = stage.description or f"Stage {stage.name!r} of workflow {plan.workflow.name!r}."
    description += (
        f"\n\n{stage.num_records} records in row groups of {stage.buffer_size}; columns: "
        + ", ".join(f"`{c.name}` ({c.column_type})" for c in stage.columns)
    )

    # BackfillPolicy is marked beta; we depend on it on purpose (pinned dagster minor), so its
    # warning would only be noise in every CLI run, webserver and daemon log.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        decorator = dg.asset(
            key=key,
            deps=deps,
            partitions_def=dg.StaticPartitionsDefinition(partition_keys(plan)),
            code_version=plan.ref.fingerprint,
            group_name=plan.workflow.name,
            backfill_policy=dg.BackfillPolicy.multi_run(settings.partitions_per_run),
            io_manager_key=IO_MANAGER_KEY,
            description=description,
            metadata=ref_metadata(plan.ref),
            required_resource_keys={store_key},
            kinds={"parquet"},
        )

    @decorator
    def _stage(context: dg.AssetExecutionContext, config: StageRunConfig) -> Iterator[Any]:
        store_res: StoreResource = getattr(context.resources, store_key)
        store = store_res.get_store()
        row_groups = [plan.ref.row_group_of(k) for k in context.partition_keys]
        tags = context.run.tags
        token = tags.get(FRESH_START_TAG) or tags.get("dagster/backfill") or context.run.run_id
        t0 = time.perf_counter()

        def on_done(o: RowGroupOutcome) -> None:
            verb = "reused" if o.reused else "generated"
            context.log.info(
                f"row group {plan.ref.partition_key(o.row_group)}: {verb} {o.info.rows} rows"
                f" -> {o.info.path}"
            )

        outcomes = materialize(
            plan,
            store,
            row_groups,
            resume=ResumeMode(config.resume),
            token=token,
            in_flight=settings.row_groups_in_flight,
            on_done=on_done,
        )
        generated = [o for o in outcomes if not o.reused]
        yield dg.Output(
            None,
            metadata={
                "row_groups": len(outcomes),
                "generated": len(generated),
                "reused": len(outcomes) - len(generated),
                "rows": sum(o.info.rows for o in outcomes),
                "seconds": round(time.perf_counter() - t0, 3),
            },
        )
        # Logged after the Output so that each partition's latest materialization carries its
        # own numbers rather than the run's totals.
        for o in outcomes:
            md = partition_metadata(plan, o, store_res.root)
            if not o.reused:
                md["preview"] = dg.MetadataValue.md(
                    _preview_md(store.read_row_group(plan.ref, o.row_group))
                )
            yield dg.AssetMaterialization(
                asset_key=key,
                partition=plan.ref.partition_key(o.row_group),
                metadata=md,
                tags={
                    "dagster/code_version": plan.ref.fingerprint,
                    "dagster/data_version": data_version(plan, o),
                },
            )

    return _stage
