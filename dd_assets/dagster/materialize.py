"""`dd-assets materialize`: run stages through the real Dagster instance (DAGSTER_HOME), wave by
wave, one run of the wave's job per contiguous range of row groups (per chunk of
`partitions_per_run` for `target_records` stages, as a backfill with the multi_run policy would);
then each stage's final job once the stage is whole."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from dd_assets.dagster.assets import FRESH_START_TAG, wave_ahead
from dd_assets.dagster.build import build_definitions, wave_check_keys
from dd_assets.dagster.names import asset_key, final_job_name, final_key, job_name, op_name
from dd_assets.dagster.runs import run_job
from dd_assets.errors import DdAssetsError, RunError
from dd_assets.runners.checks import drop_budget_error
from dd_assets.runners.finalize import TargetProgress, read_final, target_progress
from dd_assets.runners.materialize import UnfinishedCellsError
from dd_assets.runners.plan import StagePlan, WorkflowPlan
from dd_assets.runners.seeds import skip_reason, whole_input_gap
from dd_assets.store import files
from dd_assets.store.layout import batch_name, partition_key
from dd_assets.store.partition_store import PartitionStore

# (stages of the wave, row groups on disk, row groups wanted): called as files land.
ProgressFn = Callable[[str, int, int], None]


@dataclass
class MaterializeReport:
    runs: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    # The failed step's error; what completed before it is on disk (and in `lines`).
    error: DdAssetsError | None = None


def _chunks(row_groups: list[int], size: int) -> list[list[int]]:
    """Contiguous runs of at most `size` row groups (a Dagster run takes a partition range)."""
    chunks: list[list[int]] = []
    for rg in row_groups:
        if chunks and rg == chunks[-1][-1] + 1 and len(chunks[-1]) < size:
            chunks[-1].append(rg)
        else:
            chunks.append([rg])
    return chunks


def _per_run(plan: WorkflowPlan, wave: list[StagePlan], wanted: int) -> int:
    """Row groups per run: all of the wave's (one run per contiguous range), so the request
    budget never drains between runs; `partitions_per_run` only for a wave with a
    `target_records` stage, which counts its passing rows before each run to stop in time.
    (`partitions_per_run` still sizes the runs of a backfill launched from the UI.)"""
    if any(p.compiled.stage.target_records is not None for p in wave):
        return plan.workflow.run.partitions_per_run
    return max(1, wanted)


def _count_files(store: PartitionStore, plans: list[StagePlan], names: set[str]) -> int:
    """Selected row groups present on disk: a directory listing, cheap enough to poll."""
    n = 0
    for p in plans:
        n += sum(1 for name in files.names(store.files_dir(p.ref)) if name in names)
    return n


def _not_runnable(
    store: PartitionStore, wave: list[StagePlan], held_back: dict[str, str]
) -> dict[str, str]:
    """Stages of a wave whose input is not whole (a `mode: sample` stage or a stage reading a
    final output, while its upstream is incomplete), and the stages they seed: stage -> why."""
    out: dict[str, str] = {}
    for p in wave:
        gap = whole_input_gap(store, p)
        behind = next((up.name for up in p.upstreams if up.name in {**held_back, **out}), None)
        if gap:
            out[p.name] = gap
        elif behind:
            out[p.name] = f"its seed stage {behind!r} did not run"
    return out


def materialize_workflow(
    plan: WorkflowPlan,
    store: PartitionStore,
    instance: dg.DagsterInstance,
    *,
    stages: list[str] | None = None,
    resume: str = "if_possible",
    partitions: Callable[[int], list[int]] | None = None,
    progress: ProgressFn | None = None,
    retry_dropped: bool = False,
) -> MaterializeReport:
    """Materialize the selected stages (default: all), stopping at the first failed run, except
    that a run with unfinished cells does not stop the other row groups of its wave (only the
    waves after it). Ends with a DropBudgetError when a stage dropped more rows than allowed.

    With `partitions` (a subset of row groups), a stage that needs a whole upstream which this
    run leaves incomplete is not run: the report says which and why in one line, and what was
    asked of the other stages decides success. Without, such a stage is an error."""
    defs = build_definitions([plan], root=str(store.root))
    wanted = {p.name for p in plan.select(stages)}
    token = uuid.uuid4().hex
    report = MaterializeReport()
    held_back: dict[str, str] = {}
    # target_records stages: row groups in order, stopping once the target passes finalize.
    targets: dict[str, TargetProgress] = {}

    def reached(p: StagePlan, first: bool) -> bool:
        if p.compiled.stage.target_records is None:
            return False
        if first and resume == "never":
            return False  # what is on disk is about to be moved aside
        if p.name not in targets:
            targets[p.name] = target_progress(p, store)
        return targets[p.name].advance(store).reached

    try:
        for wave in plan.waves:
            wave_plans = [plan[s] for s in wave if s in wanted]
            if not wave_plans:
                continue
            blocked = _not_runnable(store, wave_plans, held_back)
            if blocked and partitions is None:
                name, why = next(iter(blocked.items()))
                raise RunError(
                    f"stage {name!r} cannot run yet: {why}; materialize its upstream stages"
                    " first (or all stages together)"
                )
            held_back.update(blocked)
            wave_plans = [p for p in wave_plans if p.name not in blocked]
            if not wave_plans:
                continue
            total = wave_plans[0].ref.num_row_groups
            row_groups = partitions(total) if partitions else list(range(total))
            job = defs.resolve_job_def(job_name([plan[s] for s in wave]))
            ops = {
                op_name([plan[s] for s in wave]): {
                    "config": {"resume": resume, "retry_dropped": retry_dropped}
                }
            }
            names = {batch_name(rg) for rg in row_groups}
            goal = len(row_groups) * len(wave_plans)
            label = ", ".join(p.name for p in wave_plans)
            unfinished: UnfinishedCellsError | None = None
            with _Watcher(progress, label, store, wave_plans, names, goal):
                chunks = _chunks(row_groups, _per_run(plan, wave_plans, len(row_groups)))
                for i, chunk in enumerate(chunks):
                    running = [p for p in wave_plans if not reached(p, first=i == 0)]
                    if not running:
                        break
                    try:
                        # Its requests go out while Dagster starts the run.
                        with wave_ahead(
                            running,
                            store,
                            instance,
                            chunk,
                            resume=resume,
                            token=token,
                            retry_dropped=retry_dropped,
                        ) as ahead:
                            result = run_job(
                                job,
                                instance,
                                # The wave's stages this command runs (all of them by default),
                                # their row-group check and materializations_current; the
                                # whole-stage checks are run by `dd-assets check`.
                                assets=[asset_key(p) for p in running],
                                checks=wave_check_keys(running),
                                ops=ops,
                                tags={
                                    "dagster/asset_partition_range_start": partition_key(chunk[0]),
                                    "dagster/asset_partition_range_end": partition_key(chunk[-1]),
                                    FRESH_START_TAG: token,
                                    **ahead,
                                },
                            )
                    except UnfinishedCellsError as exc:
                        # The other row groups go on, unless the endpoint is down.
                        unfinished = exc if unfinished is None else unfinished.merge(exc)
                        if exc.unfinished.stopped:
                            break
                        continue
                    report.runs.append(result.run_id)
            for p in wave_plans:
                report.lines += _stage_lines(defs, instance, store, p, token)
            if unfinished is not None:
                raise _with_not_started(unfinished, store, wave_plans, row_groups)
        report.error = drop_budget_error(plan.select(stages), store)
    except DdAssetsError as exc:
        report.error = exc
    if held_back:
        report.lines.append(
            "not run (input not whole in this --partitions run): "
            + "; ".join(f"{name}: {why}" for name, why in held_back.items())
        )
    return report


def _with_not_started(
    error: UnfinishedCellsError, store: PartitionStore, plans: list[StagePlan], wanted: list[int]
) -> UnfinishedCellsError:
    """The error with every wanted row group still missing and without unfinished cells of its
    own counted as not started (also those of runs skipped once the endpoint was down)."""
    held = error.unfinished
    for p in plans:
        done = store.completed(p.ref)
        cells = held.cells.get(p.name, {})
        rest = {rg for rg in wanted if rg not in done and rg not in cells}
        if rest:
            held.not_started[p.name] = rest
    return UnfinishedCellsError(held)


def _stage_lines(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    store: PartitionStore,
    p: StagePlan,
    token: str,
) -> list[str]:
    """What a wave left for one stage, finalizing it when it is whole (or has reached its
    target_records, or spent its budget: finalize then says so) and has finalize steps."""
    skipped = skip_reason(store, p)
    if skipped:
        return [f"{p.name}: skipped: {skipped}"]
    done = store.completed(p.ref)
    rows = sum(i.rows for i in done.values())
    dropped = sum(int(i.stats.get("dropped_rows", 0) or 0) for i in done.values())
    lines = [
        f"{p.name}: {len(done)}/{p.ref.num_row_groups} row groups, {rows} records"
        + (f" ({dropped} rows dropped)" if dropped else "")
        + f" in {store.stage_dir(p.ref)}"
    ]
    if not p.finalizes:
        return lines
    missing = p.ref.num_row_groups - len(done)
    if p.compiled.stage.target_records is not None:
        target = target_progress(p, store)
        if not (target.reached or target.exhausted):
            return [
                *lines,
                f"{p.name}: not finalized: {target.passed} of target_records {target.target}"
                f" rows pass so far; row group {partition_key(target.missing or 0)} is missing",
            ]
    elif missing:
        return [*lines, f"{p.name}: not finalized: {missing} row group(s) still missing"]
    run_job(
        defs.resolve_job_def(final_job_name(p)),
        instance,
        assets=[final_key(p)],
        tags={FRESH_START_TAG: token},
    )
    final = read_final(store, p)
    used = final.info.get("target", {}).get("row_groups_used")
    reached = (
        f" (target_records reached with row groups 00000-{used - 1:05d}; the"
        f" {p.ref.num_row_groups - used} after them are not needed)"
        if used is not None
        else ""
    )
    return [
        *lines,
        f"{p.name}: final: {final.rows} of {final.info['rows_in']} rows in {final.path}{reached}",
    ]


class _Watcher:
    """Polls the filesystem, the truth for progress, while a wave runs."""

    def __init__(
        self,
        progress: ProgressFn | None,
        label: str,
        store: PartitionStore,
        plans: list[StagePlan],
        names: set[str],
        goal: int,
    ) -> None:
        self.progress = progress
        self.args = (store, plans, names)
        self.label = label
        self.goal = goal
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _tick(self) -> None:
        assert self.progress is not None
        self.progress(self.label, min(self.goal, _count_files(*self.args)), self.goal)

    def _loop(self) -> None:
        while True:
            self._tick()
            if self.stop.wait(0.5):
                self._tick()
                return

    def __enter__(self) -> _Watcher:
        if self.progress is not None:
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.stop.set()
            self.thread.join()
