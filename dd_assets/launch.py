"""Run stages through a real Dagster instance (DAGSTER_HOME; SQLite unless dagster.yaml says
otherwise), one run per chunk of row groups, as a backfill with the multi_run policy would."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dd_assets.assets import FRESH_START_TAG, asset_key, final_key, op_name
from dd_assets.cli_runs import CliJob, ensure_dagster_home, failure_message
from dd_assets.config import WorkflowConfig
from dd_assets.definitions import build_definitions, waves
from dd_assets.finalize_runner import read_final
from dd_assets.stage_runner import StagePlan, plan_workflow, skip_reason
from resources.store import PartitionStore
from resources.store_resource import default_root


@dataclass
class MaterializeReport:
    success: bool = True
    partial: bool = False  # stopped early (LLM failure rate): what completed is on disk
    error: str | None = None
    runs: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


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
        folder = store.stage_dir(p.ref) / "parquet-files"
        if folder.is_dir():
            n += sum(1 for f in os.scandir(folder) if f.name in names)
    return n


def materialize_workflow(
    workflow: WorkflowConfig,
    *,
    stages: list[str] | None = None,
    resume: str = "if_possible",
    partitions: Callable[[int], list[int]] | None = None,
    progress: bool = True,
    root: str | None = None,
    instance: dg.DagsterInstance | None = None,
) -> MaterializeReport:
    ensure_dagster_home()
    root = root or default_root()
    instance = instance or dg.DagsterInstance.get()
    defs = build_definitions(workflow, root=root)
    plans = plan_workflow(workflow)
    store = PartitionStore(root)
    wanted = set(stages or [s.name for s in workflow.stages])
    unknown = wanted - set(plans)
    if unknown:
        raise KeyError(
            f"no stage(s) {sorted(unknown)} in workflow {workflow.name!r}; stages: {', '.join(plans)}"
        )
    token = uuid.uuid4().hex
    report = MaterializeReport()
    for wave in waves(workflow):
        selected = [s for s in wave if s in wanted]
        if not selected:
            continue
        wave_plans = [plans[s] for s in selected]
        total = wave_plans[0].ref.num_row_groups
        row_groups = partitions(total) if partitions else list(range(total))
        job = CliJob.build(
            defs,
            f"{workflow.name}__{selected[0]}",
            # Assets only: the checks look at the whole stage and are run by `dd-assets check`.
            dg.AssetSelection.assets(*(asset_key(p) for p in wave_plans)).without_checks(),
            instance,
        )
        ops = {op_name([plans[s] for s in wave]): {"config": {"resume": resume}}}
        size = workflow.run.partitions_per_run
        names = {f"batch_{rg:05d}.parquet" for rg in row_groups}
        goal = len(row_groups) * len(wave_plans)
        with _progress(progress, f"{', '.join(selected)}", goal) as bar:
            stop = threading.Event()
            watcher = threading.Thread(
                target=_watch, args=(bar, store, wave_plans, names, goal, stop), daemon=True
            )
            watcher.start()
            try:
                for chunk in _chunks(row_groups, size):
                    keys = [wave_plans[0].ref.partition_key(rg) for rg in (chunk[0], chunk[-1])]
                    result = job.run(
                        ops=ops,
                        tags={
                            "dagster/asset_partition_range_start": keys[0],
                            "dagster/asset_partition_range_end": keys[1],
                            FRESH_START_TAG: token,
                        },
                    )
                    report.runs.append(result.run_id)
                    if not result.success:
                        report.success = False
                        report.error = failure_message(result)
                        report.partial = "EarlyStopError" in report.error
                        return report
            finally:
                stop.set()
                watcher.join()
        for p in wave_plans:
            skipped = skip_reason(store, p)
            if skipped:
                report.lines.append(f"{p.name}: skipped: {skipped}")
                continue
            done = store.completed(p.ref)
            rows = sum(i.rows for i in done.values())
            report.lines.append(
                f"{p.name}: {len(done)}/{p.ref.num_row_groups} row groups, {rows} records"
                f" in {store.stage_dir(p.ref)}"
            )
            if p.compiled.stage.finalize:
                missing = p.ref.num_row_groups - len(done)
                if missing:
                    report.lines.append(
                        f"{p.name}: not finalized: {missing} row group(s) still missing"
                    )
                    continue
                error = _finalize(defs, instance, p, token)
                if error:
                    report.success = False
                    report.error = error
                    return report
                data, info = read_final(store, p)
                report.lines.append(
                    f"{p.name}: final: {info['rows_out']} of {info['rows_in']} rows in {data}"
                )
    return report


def _finalize(
    defs: dg.Definitions, instance: dg.DagsterInstance, plan: StagePlan, token: str
) -> str | None:
    job = CliJob.build(
        defs,
        f"{plan.workflow.name}__{plan.name}__final",
        dg.AssetSelection.assets(final_key(plan)).without_checks(),
        instance,
    )
    result = job.run(tags={FRESH_START_TAG: token})
    return None if result.success else failure_message(result)


class _NoBar:
    def update(self, *a: object, **k: object) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *a: object) -> None:
        pass


class _Bar:
    def __init__(self, label: str, total: int):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("row groups"),
            TimeElapsedColumn(),
        )
        self.task = self.progress.add_task(label, total=total)

    def update(self, completed: int) -> None:
        self.progress.update(self.task, completed=completed)

    def __enter__(self) -> _Bar:
        self.progress.start()
        return self

    def __exit__(self, *a: object) -> None:
        self.progress.stop()


def _progress(enabled: bool, label: str, total: int) -> _Bar | _NoBar:
    return _Bar(label, total) if enabled else _NoBar()


def _watch(
    bar: _Bar | _NoBar,
    store: PartitionStore,
    plans: list[StagePlan],
    names: set[str],
    goal: int,
    stop: threading.Event,
) -> None:
    # The filesystem is the truth for progress: count checkpointed row groups as they land.
    while True:
        bar.update(min(goal, _count_files(store, plans, names)))
        if stop.wait(0.5):
            bar.update(min(goal, _count_files(store, plans, names)))
            return
