"""The seed rows of each row group of a stage, whatever its seed: nothing, row group i of the
upstream stage(s) (`mode: row_group`, joins), or rows sampled from a file, a whole upstream stage
or its final output (`mode: sample`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from dd_assets.config import FileSeed, JoinSeed, StageSeed
from dd_assets.config.workflow import final_output_name
from dd_assets.engine import join_row_group
from dd_assets.engine.seeds import (
    SeedSource,
    sampled_rows,
    seed_key,
    select_rows,
    selection_bounds,
)
from dd_assets.errors import GenerationError, RunError
from dd_assets.runners.finalize import read_final
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.plan import StagePlan
from dd_assets.store.approvals import read_approval
from dd_assets.store.layout import StageRef, key_ranges, keys_head, partition_key
from dd_assets.store.partition_store import FinalMissingError, PartitionStore
from dd_assets.store.seed_files import file_source


@dataclass(frozen=True)
class SeedRows:
    """A row group's seed rows (None: the stage has no seed) and the data versions they were
    read from, which the row group records as its inputs (runners/lineage.py)."""

    table: pa.Table | None
    inputs: dict[str, str] = field(default_factory=dict)


SeedProvider = Callable[[int], SeedRows]


class StageSkipped(RunError):
    """The stage's seed finalized to zero rows, as it was allowed to: skip, do not fail."""


def no_seed(_: int) -> SeedRows:
    return SeedRows(None)


def stage_source(store: PartitionStore, ref: StageRef) -> SeedSource:
    """The whole upstream stage; it must be complete, or the sample would depend on timing."""
    missing = store.missing(ref)
    if missing:
        raise GenerationError(
            f"stage {ref.stage!r} has {len(missing)} of {ref.num_row_groups} row groups missing"
            f" ({keys_head(missing)}); a stage seeded with"
            f" `mode: sample` reads all of it. Materialize {ref.stage!r} first"
        )
    dataset = store.dataset(ref)
    n = dataset.count_rows()
    if n == 0:
        raise GenerationError(f"stage {ref.stage!r} has no rows; a stage cannot sample from it")
    return SeedSource(
        ref.stage, n, lambda idx: dataset.take(pa.array(idx)), dataset.schema.remove_metadata()
    )


def final_source(store: PartitionStore, plan: StagePlan) -> SeedSource:
    """A finalized upstream is read through its final output, never its raw row groups."""
    return file_source(read_final(store, plan).path)


def row_group_seed(lineage: Lineage, plan: StagePlan) -> SeedProvider:
    """Row group i of a `mode: row_group` or join stage reads only row group i of its upstreams."""
    assert plan.pairs_row_groups
    seed = plan.compiled.stage.seed

    lineage.refuse_mixed_join(plan)

    def read(up: StagePlan, rg: int, inputs: dict[str, str]) -> pa.Table:
        approval = lineage.row_group_approval(up)
        if approval is not None:  # the approved rows of that row group (runners/approve.py)
            inputs[up.name] = lineage.handed_down(up, rg) or ""
            return approval.row_group(rg)
        info = lineage.completed(up).get(rg)
        if info is None:
            raise GenerationError(
                f"row group {partition_key(rg)} of stage {plan.name!r} is seeded by the same"
                f" row group of {up.name!r}, which is not on disk; materialize {up.name!r} first"
                " (or both together)"
            )
        inputs[up.name] = info.data_version
        return lineage.store.read(info)

    def provide(rg: int) -> SeedRows:
        inputs: dict[str, str] = {}
        if not isinstance(seed, JoinSeed):
            return SeedRows(read(plan.upstreams[0], rg, inputs), inputs)
        parts = [(up.name, read(up, rg, inputs)) for up in plan.upstreams]
        where = f"stage {plan.name!r}, row group {partition_key(rg)}"
        return SeedRows(join_row_group(parts, seed.keys, where), inputs)

    return provide


def seed_provider(lineage: Lineage, plan: StagePlan) -> SeedProvider:
    """The seed rows of each row group, whatever kind of seed the stage has."""
    store = lineage.store
    seed = plan.compiled.stage.seed
    if seed is None:
        return no_seed
    skipped = skip_reason(store, plan)
    if skipped:
        raise StageSkipped(f"stage {plan.name!r} is skipped: {skipped}")
    if plan.pairs_row_groups:
        return row_group_seed(lineage, plan)
    if isinstance(seed, FileSeed):
        return file_seed(plan)
    up = plan.upstreams[0]
    approval = lineage.approval(up)
    if approval is not None:
        rows = approval.read()
        source = SeedSource(
            f"the approved output of stage {up.name!r}",
            rows.num_rows,
            lambda idx: rows.take(pa.array(idx)),
            rows.schema,
        )
        origin = up.fingerprint.final_hex or up.ref.fingerprint
    elif up.finalizes:
        source, origin = final_source(store, up), up.fingerprint.final_hex or ""
    else:
        source, origin = stage_source(store, up.ref), up.ref.fingerprint
    inputs = lineage.inputs(plan, 0) or {}
    return _sampled(plan, source, origin, inputs=inputs)


def file_seed(
    plan: StagePlan, row_range: Callable[[int], tuple[int, int]] | None = None
) -> SeedProvider:
    """Rows sampled from the stage's seed file (`row_range`: which rows a row group holds,
    by default the stage's own; a preview asks for the first n)."""
    seed = plan.compiled.stage.seed
    assert isinstance(seed, FileSeed)
    source = file_source(seed.path)
    source = select_rows(
        source, *selection_bounds(seed.rows, seed.shard, source.num_rows, source.name)
    )
    return _sampled(plan, source, plan.fingerprint.payload["seed"]["sha256"], row_range)


def _sampled(
    plan: StagePlan,
    source: SeedSource,
    origin: str,
    row_range: Callable[[int], tuple[int, int]] | None = None,
    inputs: dict[str, str] | None = None,
) -> SeedProvider:
    seed = plan.compiled.stage.seed
    assert isinstance(seed, StageSeed | FileSeed)
    check_seed_columns(plan, source)
    # Keyed by what the seed is, not by the stage's columns: editing a column must not reshuffle
    # which seed row each row gets (that would change every prompt and miss the LLM cache).
    key = seed_key(plan.workflow.name, plan.name, seed.strategy, origin)
    rows = sampled_rows(source, key, seed.strategy, row_range or plan.ref.row_range)
    return lambda rg: SeedRows(rows(rg), inputs or {})


def skip_reason(store: PartitionStore, plan: StagePlan) -> str | None:
    """Why a stage is skipped rather than run or failed: a stage it samples finalized to zero
    rows (allowed there by allow_empty), or a stage above it was skipped for that reason."""
    for up in plan.upstreams:
        if skip_reason(store, up) is not None:
            return f"its seed stage {up.name!r} is skipped"
        if not plan.pairs_row_groups and up.finalizes and read_approval(store, up.ref) is None:
            try:
                final = read_final(store, up)
            except FinalMissingError:
                continue  # not finalized yet: running the stage will say so
            if final.rows == 0:
                return f"its seed stage {up.name!r} finalized to 0 rows (allow_empty: true)"
    return None


def whole_input_gap(store: PartitionStore, plan: StagePlan) -> str | None:
    """Why a stage that reads whole upstream stages (`mode: sample`, a final output) cannot run
    now: what of its input is not there yet. None when it can run (or reads row group by row
    group, or an approved output, or is skipped: see skip_reason)."""
    if plan.pairs_row_groups or skip_reason(store, plan) is not None:
        return None
    for up in plan.upstreams:
        if read_approval(store, up.ref) is not None:
            continue  # it reads the approved output (runners/approve.py), which is whole
        if up.finalizes:
            try:
                read_final(store, up)  # made from every row group, or enough (target_records)
                continue
            except FinalMissingError:
                pass
        missing = store.missing(up.ref)
        name = final_output_name(up.name) if up.finalizes else up.name
        if missing:
            return (
                f"it reads all of {name}, and {up.name} has {len(missing)} of"
                f" {up.ref.num_row_groups} row groups missing ({key_ranges(missing, 3)})"
            )
        if up.finalizes:
            return f"it reads {name}, which is not materialized"
    return None


def check_seed_columns(plan: StagePlan, source: SeedSource) -> None:
    available = set(source.columns) | {c.name for c in plan.compiled.stage.columns}
    for col in plan.compiled.stage.columns:
        unknown = sorted(col.required_columns - available)
        if unknown:
            raise GenerationError(
                f"stage {plan.name!r}, column {col.name!r} refers to {', '.join(unknown)}, which"
                f" neither the stage nor its seed {source.name} provides; seed columns:"
                f" {', '.join(source.columns)}"
            )
