"""`dd-assets materialize`: run stages through the real Dagster instance (DAGSTER_HOME), wave by
wave, one run per chunk of row groups, as a backfill with the multi_run policy would."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg

from dd_assets.dagster.assets import FRESH_START_TAG
from dd_assets.dagster.build import build_definitions
from dd_assets.dagster.names import asset_key, final_key, final_op_name, op_name
from dd_assets.dagster.runs import CliJob
from dd_assets.errors import DdAssetsError
from dd_assets.runners.finalize import read_final
from dd_assets.runners.plan import StagePlan, WorkflowPlan
from dd_assets.runners.seeds import skip_reason
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


def _count_files(store: PartitionStore, plans: list[StagePlan], names: set[str]) -> int:
    """Selected row groups present on disk: a directory listing, cheap enough to poll."""
    n = 0
    for p in plans:
        folder = store.files_dir(p.ref)
        if folder.is_dir():
            n += sum(1 for f in os.scandir(folder) if f.name in names)
    return n


def materialize_workflow(
    plan: WorkflowPlan,
    store: PartitionStore,
    instance: dg.DagsterInstance,
    *,
    stages: list[str] | None = None,
    resume: str = "if_possible",
    partitions: Callable[[int], list[int]] | None = None,
    progress: ProgressFn | None = None,
) -> MaterializeReport:
    """Materialize the selected stages (default: all), stopping at the first failed run."""
    defs = build_definitions([plan], root=str(store.root))
    wanted = {p.name for p in plan.select(stages)}
    token = uuid.uuid4().hex
    report = MaterializeReport()
    for wave in plan.waves:
        wave_plans = [plan[s] for s in wave if s in wanted]
        if not wave_plans:
            continue
        total = wave_plans[0].ref.num_row_groups
        row_groups = partitions(total) if partitions else list(range(total))
        job = CliJob.build(
            defs,
            op_name(wave_plans),
            # Assets only: the checks look at the whole stage and are run by `dd-assets check`.
            dg.AssetSelection.assets(*(asset_key(p) for p in wave_plans)).without_checks(),
            instance,
        )
        ops = {op_name([plan[s] for s in wave]): {"config": {"resume": resume}}}
        names = {batch_name(rg) for rg in row_groups}
        goal = len(row_groups) * len(wave_plans)
        label = ", ".join(p.name for p in wave_plans)
        try:
            with _Watcher(progress, label, store, wave_plans, names, goal):
                for chunk in _chunks(row_groups, plan.workflow.run.partitions_per_run):
                    result = job.run(
                        ops=ops,
                        tags={
                            "dagster/asset_partition_range_start": partition_key(chunk[0]),
                            "dagster/asset_partition_range_end": partition_key(chunk[-1]),
                            FRESH_START_TAG: token,
                        },
                    )
                    report.runs.append(result.run_id)
            for p in wave_plans:
                report.lines += _stage_lines(defs, instance, store, p, token)
        except DdAssetsError as exc:
            report.error = exc
            return report
    return report


def _stage_lines(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    store: PartitionStore,
    p: StagePlan,
    token: str,
) -> list[str]:
    """What a wave left for one stage, finalizing it when it is whole and has finalize steps."""
    skipped = skip_reason(store, p)
    if skipped:
        return [f"{p.name}: skipped: {skipped}"]
    done = store.completed(p.ref)
    rows = sum(i.rows for i in done.values())
    lines = [
        f"{p.name}: {len(done)}/{p.ref.num_row_groups} row groups, {rows} records"
        f" in {store.stage_dir(p.ref)}"
    ]
    if not p.finalizes:
        return lines
    missing = p.ref.num_row_groups - len(done)
    if missing:
        return [*lines, f"{p.name}: not finalized: {missing} row group(s) still missing"]
    job = CliJob.build(
        defs,
        final_op_name(p),
        dg.AssetSelection.assets(final_key(p)).without_checks(),
        instance,
    )
    job.run(tags={FRESH_START_TAG: token})
    final = read_final(store, p)
    return [
        *lines,
        f"{p.name}: final: {final.rows} of {final.info['rows_in']} rows in {final.path}",
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
