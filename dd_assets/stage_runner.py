"""Materialize row groups of one stage into the store: the part of an asset run that needs no
Dagster, so the CLI, the asset and the tests share it.

A row group already on disk for the current fingerprint is reused, never regenerated; each
generated row group is written the moment it completes, even when a run covers many."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from dd_assets.config import (
    FileSeed,
    JoinSeed,
    ResumeMode,
    StageSeed,
    WorkflowConfig,
    pairs_row_groups,
)
from dd_assets.engine import (
    CellRunner,
    CompiledStage,
    GenerationError,
    agenerate_row_group,
    compile_stage,
    join_row_group,
)
from dd_assets.finalize_runner import read_final
from dd_assets.fingerprint import StageFingerprint, workflow_fingerprints
from dd_assets.seed_sources import (
    SeedSource,
    file_digest,
    file_source,
    sampled_rows,
    seed_key,
    stage_source,
)
from resources.llm.cells import LLMCellRunner
from resources.llm.client import LLMClient
from resources.store import PartitionStore, RowGroupInfo, StageRef, StoreError


@dataclass(frozen=True)
class StagePlan:
    """Everything about one stage that a run needs, computed once per workflow load."""

    workflow: WorkflowConfig
    compiled: CompiledStage
    fingerprint: StageFingerprint
    ref: StageRef
    upstreams: tuple[StagePlan, ...]  # what the seed reads: none, one, or the stages of a join

    @property
    def name(self) -> str:
        return self.compiled.stage.name

    @property
    def pairs_row_groups(self) -> bool:
        return pairs_row_groups(self.compiled.stage)


def plan_workflow(
    workflow: WorkflowConfig, fingerprints: dict[str, StageFingerprint] | None = None
) -> dict[str, StagePlan]:
    digests = {
        s.name: file_digest(s.seed.path) for s in workflow.stages if isinstance(s.seed, FileSeed)
    }
    fps = fingerprints or workflow_fingerprints(workflow, digests)
    plans: dict[str, StagePlan] = {}

    def visit(name: str) -> StagePlan:
        if name in plans:
            return plans[name]
        stage = workflow.stage(name)
        ups = tuple(visit(up.name) for up in workflow.upstreams_of(stage))
        fp = fps[name]
        ref = StageRef(
            workflow=workflow.name,
            stage=name,
            fingerprint=fp.hex,
            buffer_size=stage.buffer_size,
            num_records=stage.num_records,
            identity=fp.payload,
        )
        plans[name] = StagePlan(workflow, compile_stage(workflow, name, fp.hex), fp, ref, ups)
        return plans[name]

    for s in workflow.stages:
        visit(s.name)
    return plans


@dataclass
class RowGroupOutcome:
    row_group: int
    info: RowGroupInfo
    reused: bool
    stats: dict[str, Any] = field(default_factory=dict)


SeedProvider = Callable[[int], pa.Table | None]


def no_seed(_: int) -> None:
    return None


def row_group_seed(store: PartitionStore, plan: StagePlan) -> SeedProvider:
    """Row group i of a `mode: row_group` or join stage reads only row group i of its upstreams."""
    assert plan.pairs_row_groups
    seed = plan.compiled.stage.seed

    def read(up: StagePlan, rg: int) -> pa.Table:
        if rg not in store.completed(up.ref):
            raise GenerationError(
                f"row group {up.ref.partition_key(rg)} of stage {plan.name!r} is seeded by the same"
                f" row group of {up.name!r}, which is not on disk; materialize {up.name!r} first"
                " (or both together)"
            )
        return store.read_row_group(up.ref, rg)

    def provide(rg: int) -> pa.Table:
        if not isinstance(seed, JoinSeed):
            return read(plan.upstreams[0], rg)
        parts = [(up.name, read(up, rg)) for up in plan.upstreams]
        where = f"stage {plan.name!r}, row group {plan.ref.partition_key(rg)}"
        return join_row_group(parts, seed.keys, where)

    return provide


def seed_provider(store: PartitionStore, plan: StagePlan) -> SeedProvider:
    """The seed rows of each row group, whatever kind of seed the stage has."""
    seed = plan.compiled.stage.seed
    if seed is None:
        return no_seed
    skipped = skip_reason(store, plan)
    if skipped:
        raise UpstreamEmptyError(f"stage {plan.name!r} is skipped: {skipped}")
    if plan.pairs_row_groups:
        return row_group_seed(store, plan)
    if isinstance(seed, StageSeed):
        up = plan.upstreams[0]
        if up.compiled.stage.finalize:
            # A finalized upstream is read through its final output, never its raw row groups.
            data, _ = read_final(store, up)
            source = file_source(data)
            origin = up.fingerprint.final_hex or ""
        else:
            source = stage_source(store, up.ref)
            origin = up.ref.fingerprint
    else:
        assert isinstance(seed, FileSeed)
        source = file_source(seed.path)
        origin = plan.fingerprint.payload["seed"]["sha256"]
    _check_seed_columns(plan, source)
    # Keyed by what the seed is, not by the stage's columns: editing a column must not reshuffle
    # which seed row each row gets (that would change every prompt and miss the LLM cache).
    key = seed_key(plan.workflow.name, plan.name, seed.strategy, origin)
    return sampled_rows(source, key, seed.strategy, plan.ref.row_range)


def skip_reason(store: PartitionStore, plan: StagePlan) -> str | None:
    """Why a stage is skipped rather than run or failed: a stage it samples finalized to zero
    rows (allowed there by allow_empty), or a stage above it was skipped for that reason."""
    for up in plan.upstreams:
        if skip_reason(store, up) is not None:
            return f"its seed stage {up.name!r} is skipped"
        if not plan.pairs_row_groups and up.compiled.stage.finalize:
            try:
                _, info = read_final(store, up)
            except StoreError:
                continue  # not finalized yet: running the stage will say so
            if info.get("rows_out") == 0:
                return f"its seed stage {up.name!r} finalized to 0 rows (allow_empty: true)"
    return None


class UpstreamEmptyError(Exception):
    """The seed stage finalized to zero rows, as it was allowed to: skip, do not fail."""


def _check_seed_columns(plan: StagePlan, source: SeedSource) -> None:
    available = set(source.columns) | {c.name for c in plan.compiled.stage.columns}
    for col in plan.compiled.stage.columns:
        unknown = sorted(col.required_columns - available)
        if unknown:
            raise GenerationError(
                f"stage {plan.name!r}, column {col.name!r} refers to {', '.join(unknown)}, which"
                f" neither the stage nor its seed {source.name} provides; seed columns:"
                f" {', '.join(source.columns)}"
            )


async def amaterialize(
    plan: StagePlan,
    store: PartitionStore,
    row_groups: Iterable[int],
    *,
    seeds: SeedProvider = no_seed,
    cells: CellRunner | None = None,
    in_flight: int = 1,
    on_done: Callable[[RowGroupOutcome], None] | None = None,
    wait_for: Callable[[int], Awaitable[None]] | None = None,
) -> list[RowGroupOutcome]:
    """Produce the given row groups, at most `in_flight` at a time, checkpointing each.

    `wait_for(rg)` is awaited before row group rg takes a slot: a pipelined downstream stage
    waits there for its upstream row group to land, without holding a slot meanwhile."""
    ref = plan.ref
    done = store.completed(ref)
    outcomes: dict[int, RowGroupOutcome] = {}
    todo: list[int] = []
    for rg in row_groups:
        if rg in done:
            outcomes[rg] = RowGroupOutcome(rg, done[rg], reused=True, stats=done[rg].stats)
            if on_done:
                on_done(outcomes[rg])
        else:
            todo.append(rg)

    sem = asyncio.Semaphore(max(1, in_flight))

    async def one(rg: int) -> None:
        if wait_for is not None:
            await wait_for(rg)
        async with sem:
            seed = await asyncio.to_thread(seeds, rg)
            res = await agenerate_row_group(plan.compiled, rg, seed=seed, cells=cells)
            stats = res.stats()
            if hasattr(cells, "row_group_stats"):
                stats["llm"] = cells.row_group_stats(rg)
            info = await asyncio.to_thread(store.write_row_group, ref, rg, res.table, stats)
            outcomes[rg] = RowGroupOutcome(rg, info, reused=False, stats=stats)
            if on_done:
                on_done(outcomes[rg])

    tasks = [asyncio.ensure_future(one(rg)) for rg in todo]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    return [outcomes[rg] for rg in sorted(outcomes)]


def materialize(
    plan: StagePlan,
    store: PartitionStore,
    row_groups: Iterable[int],
    *,
    resume: ResumeMode = ResumeMode.IF_POSSIBLE,
    token: str | None = None,
    in_flight: int = 1,
    on_done: Callable[[RowGroupOutcome], None] | None = None,
) -> list[RowGroupOutcome]:
    """One stage on its own: a wave of one (its seed, if any, must already be on disk)."""
    return materialize_wave(
        [plan],
        store,
        row_groups,
        resume=resume,
        token=token,
        in_flight=in_flight,
        on_done=(lambda _stage, o: on_done(o)) if on_done else None,
    )[plan.name]


def materialize_wave(
    plans: list[StagePlan],
    store: PartitionStore,
    row_groups: Iterable[int],
    *,
    resume: ResumeMode = ResumeMode.IF_POSSIBLE,
    token: str | None = None,
    in_flight: int = 1,
    on_done: Callable[[str, RowGroupOutcome], None] | None = None,
) -> dict[str, list[RowGroupOutcome]]:
    """Stages chained row group by row group, run as one pipeline: row group i of a downstream
    stage starts the moment row group i of its upstream lands, not when the upstream stage is
    done. One LLM client serves all of them, so `max_parallel_requests` holds across stages."""
    row_groups = list(row_groups)
    names = {p.name for p in plans}
    for p in plans:
        store.prepare(p.ref, resume, token=token)
        done = store.completed(p.ref)
        if any(rg not in done for rg in row_groups):
            store.refuse_if_sealed(p.ref)

    async def run() -> dict[str, list[RowGroupOutcome]]:
        landed = {(p.name, rg): asyncio.Event() for p in plans for rg in row_groups}

        def landing(p: StagePlan) -> Callable[[RowGroupOutcome], None]:
            def done(o: RowGroupOutcome) -> None:
                landed[(p.name, o.row_group)].set()
                if on_done:
                    on_done(p.name, o)

            return done

        def gate(p: StagePlan) -> Callable[[int], Awaitable[None]] | None:
            ups = [up.name for up in p.upstreams if up.name in names]
            if not ups:
                return None

            async def wait(rg: int) -> None:
                for up in ups:
                    await landed[(up, rg)].wait()

            return wait

        async with contextlib.AsyncExitStack() as stack:
            client = LLMClient(plans[0].workflow.models)
            if any(p.compiled.needs_cells for p in plans):
                await client.open()
                stack.push_async_callback(client.aclose)
            coros = []
            for p in plans:
                cells = None
                if p.compiled.needs_cells:
                    cells = await stack.enter_async_context(
                        LLMCellRunner(
                            p.workflow,
                            p.name,
                            cache_path=llm_cache_path(store, p.workflow.name),
                            read_cache=resume != ResumeMode.NEVER,
                            client=client,
                        )
                    )
                coros.append(
                    amaterialize(
                        p,
                        store,
                        row_groups,
                        # Built lazily per row group: a row_group seed reads only what landed.
                        seeds=seed_provider(store, p),
                        cells=cells,
                        in_flight=in_flight,
                        on_done=landing(p),
                        wait_for=gate(p),
                    )
                )
            tasks = [asyncio.ensure_future(c) for c in coros]
            try:
                results = await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return {p.name: r for p, r in zip(plans, results, strict=True)}

    return asyncio.run(run())


LLM_CACHE_ENV = "DD_ASSETS_LLM_CACHE_DIR"


def llm_cache_path(store: PartitionStore, workflow: str) -> Path:
    """`<root>/<workflow>/llm-cache.sqlite`, or the same under $DD_ASSETS_LLM_CACHE_DIR: a
    node-local folder when the data root is a network filesystem, where one SQLite file must not
    be written by several machines."""
    base = os.environ.get(LLM_CACHE_ENV)
    return (Path(base).resolve() if base else Path(store.root)) / workflow / "llm-cache.sqlite"
