"""Materialize row groups of stages into the store: the part of an asset run that needs no
Dagster, so the CLI, the assets and the tests share it.

A row group already on disk for the current fingerprint is reused, never regenerated, unless
it is stale (built from upstream data regenerated since) or, under `retry_dropped`, has dropped
rows; each generated row group is written the moment it completes, even when a run covers
many. A row group with unfinished cells (transient faults outlasted the retries) is not written
at all: the run goes on with the others and ends with `UnfinishedCellsError` (exit code 4)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dd_assets.config import ResumeMode, output_columns
from dd_assets.engine import RowGroupResult, RowGroupUnfinished, agenerate_row_group
from dd_assets.engine.images import image_columns
from dd_assets.errors import EXIT_UNFINISHED, GenerationError, LLMError
from dd_assets.llm.cache import cache_path
from dd_assets.llm.slots import RequestSlots
from dd_assets.runners.images import image_loader
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.loop_pauses import fewer_pauses
from dd_assets.runners.plan import StagePlan
from dd_assets.runners.profile import record_row_group
from dd_assets.runners.seeds import SeedProvider, SeedRows, no_seed, seed_provider
from dd_assets.store.footer import RowGroupInfo
from dd_assets.store.layout import key_ranges, partition_key
from dd_assets.store.partition_store import PartitionStore

if TYPE_CHECKING:
    from dd_assets.llm.cells import LLMCellRunner


@dataclass
class RowGroupOutcome:
    row_group: int
    info: RowGroupInfo
    reused: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class Unfinished:
    """What a run could not finish: per stage, row group -> unfinished cells; row groups
    not started because the run stopped asking or their upstream row group is unfinished."""

    cells: dict[str, dict[int, int]] = field(default_factory=dict)
    not_started: dict[str, set[int]] = field(default_factory=dict)
    last_error: str = ""
    stopped: str | None = None

    def __bool__(self) -> bool:
        return bool(self.cells or self.not_started)

    def merge(self, other: Unfinished) -> Unfinished:
        for stage, rgs in other.cells.items():
            self.cells.setdefault(stage, {}).update(rgs)
        for stage, rgs in other.not_started.items():
            self.not_started.setdefault(stage, set()).update(rgs)
        self.last_error = other.last_error or self.last_error
        self.stopped = other.stopped or self.stopped
        return self

    def message(self) -> str:
        n = sum(sum(rgs.values()) for rgs in self.cells.values())
        where = "; ".join(
            f"{stage} row group(s) {key_ranges(rgs, 6)}" for stage, rgs in self.cells.items()
        )
        text = f"{n} LLM cell(s) unfinished in {where or 'no row group'}" if n else ""
        if self.not_started:
            skipped = sum(len(r) for r in self.not_started.values())
            text += f"{'; ' if text else ''}{skipped} row group(s) not started"
        if self.stopped:
            text += f" ({self.stopped})"
        return (
            f"{text}: transient faults outlasted the retries (last error: {self.last_error})."
            " Those row groups were not saved; run materialize again once the endpoint"
            " recovers (cells already answered come from the request cache)"
        )


class UnfinishedCellsError(LLMError):
    """Cells a transient fault left without an answer: their row groups were not saved, the
    others were. Rerunning completes them; exit code 4, so CI can retry later."""

    exit_code = EXIT_UNFINISHED

    def __init__(self, unfinished: Unfinished, message: str | None = None) -> None:
        super().__init__(message or unfinished.message())
        self.unfinished = unfinished

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.unfinished, str(self)))

    def merge(self, other: UnfinishedCellsError) -> UnfinishedCellsError:
        return UnfinishedCellsError(self.unfinished.merge(other.unfinished))


def reusable(
    lineage: Lineage, plan: StagePlan, row_group: int, retry_dropped: bool
) -> RowGroupInfo | None:
    """The row group on disk if a run may reuse it: done, reusable as far as lineage goes (not
    stale, with the side tables the config asks for: runners/lineage.py) and, under
    `retry_dropped`, without dropped rows (those are generated again, asking exactly the
    dropped cells; the answered ones come from the cache)."""
    info = lineage.completed(plan).get(row_group)
    if info is None or not lineage.reusable(plan, info):
        return None
    if retry_dropped and info.stats.get("dropped_rows"):
        return None
    return info


def refuse_unexpected_columns(
    plan: StagePlan, row_group: int, table: pa.Table, seed: pa.Table | None
) -> None:
    """A row group is committed only with exactly the columns the config gives it: two columns
    of one name (a rename onto a seed column) or a column nobody asked for would be written,
    reused by every rerun and silently lost by an export."""
    names = table.column_names
    expected = output_columns(plan.compiled.stage, seed.column_names if seed is not None else [])
    if names == expected:
        return
    dupes = sorted({n for n in names if names.count(n) > 1})
    what = (
        f"two or more columns named {', '.join(map(repr, dupes))}"
        if dupes
        else f"columns {names}, not {expected}"
    )
    raise GenerationError(
        f"stage {plan.name!r}, row group {partition_key(row_group)}: the generated table has"
        f" {what}; nothing was written. Fix the columns, seed or post_batch processors in the"
        " config (`dd-assets validate` checks them against the seed's columns)"
    )


async def amaterialize(
    plan: StagePlan,
    lineage: Lineage,
    row_groups: Iterable[int],
    *,
    seeds: SeedProvider = no_seed,
    cells: LLMCellRunner | None = None,
    in_flight: int = 1,
    on_done: Callable[[RowGroupOutcome], None] | None = None,
    on_missed: Callable[[int], None] | None = None,
    wait_for: Callable[[int], Awaitable[bool]] | None = None,
    retry_dropped: bool = False,
    unfinished: Unfinished | None = None,
    may_save: Callable[[], Awaitable[None]] | None = None,
) -> list[RowGroupOutcome]:
    """Produce the given row groups, at most `in_flight` at a time, checkpointing each.

    A row group on disk is reused when `reusable`. `wait_for(rg)` is awaited before row group
    rg is looked at: a pipelined downstream stage waits there for its upstream row group to land,
    and only then can tell whether its own row group on disk still
    matches it; False means the upstream row group will not land (its cells are unfinished),
    so rg is not started. A row group with unfinished cells is recorded in `unfinished` and
    `on_missed(rg)` is called; nothing is written for it. `may_save()` is awaited before each
    row group is written (a wave started ahead of its Dagster step writes nothing before the
    step is there to record it: runners/materialize_ahead.py)."""
    store = lineage.store
    unfinished = unfinished if unfinished is not None else Unfinished()
    outcomes: dict[int, RowGroupOutcome] = {}

    def reuse(rg: int) -> bool:
        info = reusable(lineage, plan, rg, retry_dropped)
        if info is None:
            return False
        outcomes[rg] = RowGroupOutcome(rg, info, reused=True, stats=info.stats)
        if on_done:
            on_done(outcomes[rg])
        return True

    def missed(rg: int) -> None:
        if on_missed:
            on_missed(rg)

    async def one(rg: int) -> Callable[[], Awaitable[None]] | None:
        """Generate row group rg; what is left to do is saving it (None: nothing to save)."""
        if wait_for is not None:
            if not await wait_for(rg):
                unfinished.not_started.setdefault(plan.name, set()).add(rg)
                return missed(rg)
            if reuse(rg):
                return
        if cells is not None and cells.outage.tripped:
            unfinished.not_started.setdefault(plan.name, set()).add(rg)
            unfinished.stopped = cells.outage.tripped
            return missed(rg)
        before = lineage.completed(plan).get(rg)
        if cells is not None and retry_dropped and before and before.stats.get("dropped_rows"):
            drops = await asyncio.to_thread(store.drops, plan.ref, before)
            cells.ask_fresh(zip(drops["row"].to_pylist(), drops["column"].to_pylist(), strict=True))
        seed = await asyncio.to_thread(seeds, rg)
        try:
            res = await agenerate_row_group(plan.compiled, rg, seed=seed.table, cells=cells)
        except RowGroupUnfinished as exc:
            unfinished.cells.setdefault(plan.name, {})[rg] = exc.cells
            unfinished.last_error = exc.reason
            if cells is not None:
                unfinished.stopped = cells.outage.tripped
            return missed(rg)
        refuse_unexpected_columns(plan, rg, res.table, seed.table)
        stats = res.stats()
        if cells is not None:
            stats["llm"] = cells.row_group_stats(rg)
        return lambda: save(rg, res, seed, stats)

    async def save(rg: int, res: RowGroupResult, seed: SeedRows, stats: dict[str, Any]) -> None:
        info = await asyncio.to_thread(
            store.write_row_group,
            plan.ref,
            rg,
            res.table,
            stats,
            inputs=seed.inputs,
            dropped_columns=res.dropped_columns if plan.keeps_dropped_columns else None,
            drops=res.drops_table(),
            images=image_columns(plan.compiled.stage),
        )
        # Its profile partial, from the rows still in memory (a cache: recomputed from
        # the file if a crash comes first).
        await asyncio.to_thread(record_row_group, store, plan.ref, info, res.table)
        lineage.landed(plan, info)
        outcomes[rg] = RowGroupOutcome(rg, info, reused=False, stats=info.stats)
        if on_done:
            on_done(outcomes[rg])

    # Without an upstream in this run, what is on disk is final: decide at once.
    todo = iter([rg for rg in row_groups if wait_for is not None or not reuse(rg)])

    async def worker() -> None:
        # `in_flight` workers take the row groups in order from one iterator: a run of 100,000
        # row groups holds `in_flight` coroutines, not one task per row group.
        for rg in todo:
            save_it = await one(rg)
            if save_it is None:
                continue
            if may_save is not None:
                await may_save()  # cancelled here, nothing is written
            saving = asyncio.ensure_future(save_it())
            try:
                await asyncio.shield(saving)
            except BaseException:
                # Never cancelled: its file may be on disk already, and a row group on disk
                # gets its lineage, profile partial and event (on_done) even when the run fails.
                await asyncio.gather(saving, return_exceptions=True)
                raise

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, in_flight))]
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
    retry_dropped: bool = False,
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
        retry_dropped=retry_dropped,
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
    retry_dropped: bool = False,
) -> dict[str, list[RowGroupOutcome]]:
    """Stages chained row group by row group, run as one pipeline: row group i of a downstream
    stage starts the moment row group i of its upstream lands, not when the upstream stage is
    done. One LLM client serves all of them, so `max_parallel_requests` holds across stages;
    with `slots` (the caller's) it also holds across every process sharing them. LLM answers
    are cached in the workflow's SQLite file, or with `cache_url` in that PostgreSQL database.

    Raises UnfinishedCellsError at the end when cells were left unfinished (everything else
    that could be made is on disk by then)."""
    return asyncio.run(
        amaterialize_wave(
            plans,
            store,
            row_groups,
            resume=resume,
            token=token,
            in_flight=in_flight,
            on_done=on_done,
            slots=slots,
            cache_url=cache_url,
            retry_dropped=retry_dropped,
        )
    )


async def amaterialize_wave(
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
    retry_dropped: bool = False,
    may_save: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, list[RowGroupOutcome]]:
    """`materialize_wave` in a running event loop; `may_save` as in `amaterialize`."""
    row_groups = list(row_groups)
    names = {p.name for p in plans}
    for p in plans:
        store.prepare(p.ref, resume, token=token)
    lineage = Lineage(store)
    for p in plans:
        if any(reusable(lineage, p, rg, retry_dropped) is None for rg in row_groups):
            store.refuse_if_sealed(p.ref)
    unfinished = Unfinished()

    async def run() -> dict[str, list[RowGroupOutcome]]:
        landed = {(p.name, rg): asyncio.Event() for p in plans for rg in row_groups}
        saved: set[tuple[str, int]] = set()

        def landing(p: StagePlan) -> Callable[[RowGroupOutcome], None]:
            def done(o: RowGroupOutcome) -> None:
                saved.add((p.name, o.row_group))
                landed[(p.name, o.row_group)].set()
                if on_done:
                    on_done(p.name, o)

            return done

        def gate(p: StagePlan) -> Callable[[int], Awaitable[bool]] | None:
            ups = [up.name for up in p.upstreams if up.name in names]
            if not ups:
                return None

            async def wait(rg: int) -> bool:
                for up in ups:
                    await landed[(up, rg)].wait()
                return all((up, rg) in saved for up in ups)

            return wait

        async with contextlib.AsyncExitStack() as stack:
            if any(p.compiled.needs_cells for p in plans):
                # here: the HTTP client (aiohttp, ~0.2 s of CPU to import) only for LLM cells
                from dd_assets.llm.cells import LLMCellRunner, Outage
                from dd_assets.llm.client import LLMClient
                from dd_assets.llm.pg_cache import PostgresRequestCache

                client = LLMClient(plans[0].workflow.models, slots=slots)
                await client.open()
                stack.push_async_callback(client.aclose)
                shared_cache = None
                if cache_url is not None:
                    shared_cache = stack.enter_context(
                        PostgresRequestCache(cache_url, workflow=plans[0].workflow.name)
                    )
                outage = Outage(plans[0].workflow.run.early_stop.window)
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
                            outage=outage,
                            answered_before=any(i.rows for i in lineage.completed(p).values()),
                            load_image=image_loader(store, p),
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
                        on_missed=lambda rg, name=p.name: landed[(name, rg)].set(),
                        wait_for=gate(p),
                        retry_dropped=retry_dropped,
                        unfinished=unfinished,
                        may_save=may_save,
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

    async with fewer_pauses():
        outcomes = await run()
    if unfinished:
        raise UnfinishedCellsError(unfinished)
    return outcomes
