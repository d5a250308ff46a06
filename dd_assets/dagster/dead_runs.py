"""Runs whose process was killed. A CLI run lives in the command's process: if that process is
killed (kill -9, OOM, a preempted VM) nothing is left to end the run, and Dagster's run
monitoring cannot see an in-process run, so it would stay "Started" forever. Every run a command
starts is tagged with its host, pid and the pid's start time (`process_tags`), and the next
command that opens the instance marks such runs of dead processes failed (`sweep_dead_runs`,
called by instance.get_instance)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import dagster as dg

from dd_assets.dagster.names import HOST_TAG, PID_START_TAG, PID_TAG

# Run states in which a run still needs a live process to finish it.
_UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _pid_start(pid: int) -> str | None:
    """When the process started (clock ticks since boot, /proc/<pid>/stat field 22): a pid
    reused by another process has another start time. None where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def process_tags() -> dict[str, str]:
    """Which process runs a run: the tags `sweep_dead_runs` reads."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    started = _pid_start(os.getpid())
    if started is not None:
        tags[PID_START_TAG] = started
    return tags


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not ours to judge
        return True
    return started is None or _pid_start(pid) in (started, None)


def sweep_dead_runs(
    instance: dg.DagsterInstance, guard: Callable[[], AbstractContextManager[Any]] = nullcontext
) -> list[str]:
    """Mark failed the unfinished runs whose dd-assets process on this host is gone, and free the
    concurrency slots they held; returns their run ids. Runs of other hosts are left alone (a pid
    means nothing elsewhere), and so are runs launched by the daemon (backfills, re-executions).

    `guard` (the instance lock) is taken only when there is a run to mark, and its status read
    again under it, so two commands never mark one run twice, and commands that find nothing
    (nearly always) never wait for each other."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=_UNFINISHED, tags={HOST_TAG: socket.gethostname()})
    )
    # A re-execution from the UI copies its parent's tags, pid included, but runs in a run
    # worker the daemon launched: it is not ours to judge. A CLI run never has a parent.
    dead = [
        run
        for run in runs
        if not run.parent_run_id
        and int(run.tags.get(PID_TAG, "0"))
        and not _alive(int(run.tags[PID_TAG]), run.tags.get(PID_START_TAG))
    ]
    if not dead:
        return []
    failed = []
    with guard():
        for run in dead:
            current = instance.get_run_by_id(run.run_id)
            if current is None or current.status not in _UNFINISHED:
                continue  # another command marked it meanwhile
            instance.report_run_failed(
                current,
                f"dd-assets process {run.tags[PID_TAG]} on {run.tags[HOST_TAG]} ended before this"
                " run finished (killed?); marked failed by the next dd-assets command. Row groups"
                " it checkpointed are on disk and will be reused.",
            )
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            failed.append(run.run_id)
    return failed
