"""A wave started ahead of the Dagster step that reports it (issue 17).

`dd-assets materialize` runs each wave as an in-process Dagster run. Creating the run and
starting its step takes Dagster ~0.3-0.8 s of CPU, all of it before the step could send its
first LLM request. So the command starts the wave's `amaterialize_wave` first, in a thread of
its own (its own event loop), registered under an id the run carries as a tag; the step claims
it by that id and, instead of generating, reports what it produces (`attach`) and waits for it.

What makes this safe:
- nothing is written before the step attaches: requests are sent and answers cached (as any
  run does), but each finished row group waits (`may_save`) until the step is there to log it.
  A run that never reaches its step (Ctrl-C while Dagster starts it, a storage error) leaves
  no row group behind that Dagster was not told of, only cached answers a rerun reads;
- the step only takes a wave started for exactly what it was asked to run (stages, row
  groups, resume mode, retry_dropped); otherwise it stops that wave (nothing was written) and
  runs its own, as it does when no wave was started (a run launched from the UI, a backfill);
- row groups reused from disk are reported when the step attaches, in order, as if it had
  found them itself;
- stopping (the step failed or was interrupted) cancels the wave the way an interrupted
  `materialize_wave` is cancelled: row groups being written are finished and reported first."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from dd_assets.config import ResumeMode
from dd_assets.runners.materialize import RowGroupOutcome, amaterialize_wave
from dd_assets.runners.plan import StagePlan
from dd_assets.store.partition_store import PartitionStore

OnDone = Callable[[str, RowGroupOutcome], None]


def _work(
    plans: list[StagePlan],
    row_groups: Iterable[int],
    resume: ResumeMode,
    token: str | None,
    retry_dropped: bool,
) -> tuple[Any, ...]:
    """What a wave produces: a step takes a started wave only if it was asked for the same."""
    return ([p.name for p in plans], list(row_groups), ResumeMode(resume), token, retry_dropped)


class WaveAhead:
    """`amaterialize_wave` running in its own thread until a step claims it (module docstring)."""

    _started: ClassVar[dict[str, WaveAhead]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        plans: list[StagePlan],
        store: PartitionStore,
        row_groups: Iterable[int],
        *,
        resume: ResumeMode,
        token: str | None,
        retry_dropped: bool = False,
        **wave: Any,
    ) -> None:
        """`wave`: the rest of `amaterialize_wave`'s keyword arguments (in_flight, slots,
        cache_url), which the step would pass the same way."""
        self.id = uuid.uuid4().hex
        self.plans = plans
        self.row_groups = list(row_groups)
        self._work = _work(plans, self.row_groups, resume, token, retry_dropped)
        self._store = store
        self._wave = wave
        self._lock = threading.Lock()
        self._early: list[tuple[str, RowGroupOutcome]] = []  # landed before the step attached
        self._on_done: OnDone | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Future[Any] | None = None
        self._attached: asyncio.Event | None = None
        self._ready = threading.Event()  # the loop is running (or the thread ended)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dd-assets-wave", daemon=False)

    # -- the command's side

    def start(self) -> WaveAhead:
        with self._registry_lock:
            self._started[self.id] = self
        self._thread.start()
        self._ready.wait()
        return self

    def close(self) -> None:
        """The run is over: a wave no step claimed is stopped (it wrote nothing)."""
        with self._registry_lock:
            self._started.pop(self.id, None)
        self.stop()

    # -- the step's side

    @classmethod
    def claim(
        cls,
        wave_id: str | None,
        plans: list[StagePlan],
        row_groups: list[int],
        *,
        resume: ResumeMode,
        token: str | None,
        retry_dropped: bool,
    ) -> WaveAhead | None:
        """The wave started under `wave_id` in this process if it is exactly this work (it can
        be claimed once); one started for other work is stopped. None: run it yourself."""
        if wave_id is None:
            return None
        with cls._registry_lock:
            wave = cls._started.pop(wave_id, None)
        if wave is None:
            return None
        if wave._work != _work(plans, row_groups, resume, token, retry_dropped):
            wave.stop()
            return None
        return wave

    def attach(self, on_done: OnDone) -> None:
        """Report every row group from now on (those reused or landed so far first), and let
        the wave write."""
        with self._lock:
            early, self._early = self._early, []
            self._on_done = on_done
        for stage, outcome in early:
            on_done(stage, outcome)
        self._call(lambda: self._attached.set() if self._attached else None)

    def result(self) -> None:
        """Wait for the wave; raise what it raised (UnfinishedCellsError, a stage's error)."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Cancel the wave and wait until it has unwound (row groups being written finish and
        are reported first). Its error, if any, is left to `result`."""
        self._call(lambda: self._task.cancel() if self._task else None)
        self._thread.join()

    # -- the wave's thread

    def _call(self, fn: Callable[[], object]) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: the wave is over
            loop.call_soon_threadsafe(fn)

    def _landed(self, stage: str, outcome: RowGroupOutcome) -> None:
        with self._lock:
            on_done = self._on_done
            if on_done is None:
                self._early.append((stage, outcome))
                return
        on_done(stage, outcome)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # handed to the step (result) or dropped by close
            self._error = exc
        finally:
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._attached = attached = asyncio.Event()
        self._ready.set()
        _, _, resume, token, retry_dropped = self._work
        await amaterialize_wave(
            self.plans,
            self._store,
            self.row_groups,
            resume=resume,
            token=token,
            retry_dropped=retry_dropped,
            on_done=self._landed,
            may_save=attached.wait,
            **self._wave,
        )
