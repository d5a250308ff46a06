"""Materialize row groups of stages into the store: the part of an asset run that needs no
Dagster, so the CLI, the assets and the tests share it.

A row group already on disk for the current fingerprint is reused, never regenerated, unless
it is stale (built from upstream data regenerated since); each generated row group is written the
moment it completes, even when a run covers many."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dd_assets.config import ResumeMode
from dd_assets.engine import CellRunner, agenerate_row_group
from dd_assets.llm.cache import cache_path
from dd_assets.llm.cells import LLMCellRunner
from dd_assets.llm.client import LLMClient
from dd_assets.llm.pg_cache import PostgresRequestCache
from dd_assets.llm.slots import RequestSlots
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.plan import StagePlan
from dd_assets.runners.profile import record_row_group
from dd_assets.runners.seeds import SeedProvider, no_seed, seed_provider
from dd_assets.store.footer import RowGroupInfo
from dd_assets.store.partition_store import PartitionStore


@dataclass
class RowGroupOutcome:
    row_group: int
    info: RowGroupInfo
    reused: bool
    stats: dict[str, Any] = field(default_factory=dict)


async def amaterialize(
    plan: StagePlan,
    lineage: Lineage,
    row_groups: Iterable[int],
    *,
    seeds: SeedProvider = no_seed,
    cells: CellRunner | None = None,
    in_flight: int = 1,
    on_done: Callable[[RowGroupOutcome], None] | None = None,
    wait_for: Callable[[int], Awaitable[None]] | None = None,
) -> list[RowGroupOutcome]:
    """Produce the given row groups, at most `in_flight` at a time, checkpointing each.

    A row group on disk is reused unless it is stale (built from upstream data regenerated
    since, runners/lineage.py). `wait_for(rg)` is awaited before row group rg is looked at: a
    pipelined downstream stage waits there for its upstream row group to land (without holding
    a slot), and only then can tell whether its own row group on disk still matches it."""
    store = lineage.store
    outcomes: dict[int, RowGroupOutcome] = {}
    sem = asyncio.Semaphore(max(1, in_flight))

    def reuse(rg: int) -> bool:
        info = lineage.completed(plan).get(rg)
        if info is None or not lineage.reusable(plan, info):
            return False
        outcomes[rg] = RowGroupOutcome(rg, info, reused=True, stats=info.stats)
        if on_done:
            on_done(outcomes[rg])
        return True

    async def one(rg: int) -> None:
        if wait_for is not None:
            await wait_for(rg)
            if reuse(rg):
                return
        async with sem:
            seed = await asyncio.to_thread(seeds, rg)
            res = await agenerate_row_group(plan.compiled, rg, seed=seed.table, cells=cells)
            stats = res.stats()
            if hasattr(cells, "row_group_stats"):
                stats["llm"] = cells.row_group_stats(rg)
            info = await asyncio.to_thread(
                store.write_row_group,
                plan.ref,
                rg,
                res.table,
                stats,
                seed.inputs,
                res.dropped_columns if plan.keeps_dropped_columns else None,
            )
            # Its profile partial, from the rows still in memory (a cache: recomputed from
            # the file if a crash comes first).
            await asyncio.to_thread(record_row_group, store, plan.ref, info, res.table)
            lineage.landed(plan, info)
            outcomes[rg] = RowGroupOutcome(rg, info, reused=False, stats=stats)
            if on_done:
                on_done(outcomes[rg])

    # Without an upstream in this run, what is on disk is final: decide at once, no task each.
    todo = [rg for rg in row_groups if wait_for is not None or not reuse(rg)]
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
    slots: RequestSlots | None = None,
    cache_url: str | None = None,
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
        slots=slots,
        cache_url=cache_url,
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
    slots: RequestSlots | None = None,
    cache_url: str | None = None,
) -> dict[str, list[RowGroupOutcome]]:
    """Stages chained row group by row group, run as one pipeline: row group i of a downstream
    stage starts the moment row group i of its upstream lands, not when the upstream stage is
    done. One LLM client serves all of them, so `max_parallel_requests` holds across stages;
    with `slots` (the caller's) it also holds across every process sharing them. LLM answers
    are cached in the workflow's SQLite file, or with `cache_url` in that PostgreSQL database."""
    row_groups = list(row_groups)
    names = {p.name for p in plans}
    for p in plans:
        store.prepare(p.ref, resume, token=token)
    lineage = Lineage(store)
    for p in plans:
        done = lineage.completed(p)
        if any(rg not in done or not lineage.reusable(p, done[rg]) for rg in row_groups):
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
            client = LLMClient(plans[0].workflow.models, slots=slots)
            shared_cache = None
            if any(p.compiled.needs_cells for p in plans):
                await client.open()
                stack.push_async_callback(client.aclose)
                if cache_url is not None:
                    shared_cache = stack.enter_context(
                        PostgresRequestCache(cache_url, workflow=plans[0].workflow.name)
                    )
            coros = []
            for p in plans:
                cells = None
                if p.compiled.needs_cells:
                    cells = await stack.enter_async_context(
                        LLMCellRunner(
                            p.workflow,
                            p.name,
                            cache_path=cache_path(store.root, p.workflow.name),
                            read_cache=resume != ResumeMode.NEVER,
                            client=client,
                            cache=shared_cache,
                        )
                    )
                coros.append(
                    amaterialize(
                        p,
                        lineage,
                        row_groups,
                        # Built lazily per row group: a row_group seed reads only what landed.
                        seeds=seed_provider(lineage, p),
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
