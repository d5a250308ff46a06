"""Keep a wave's event loop free of the two pauses that stopped every request mid-run.

The loop that sends LLM requests also finishes row groups; while it is stopped, no freed slot
gets its next request, so the whole budget idles (bench/llm_chain.py --timeline showed the
mock with no request in flight for these, issue 17):

- **pyarrow's first look for pandas.** `pa.array` of a Python list asks pyarrow's pandas shim
  whether the list is a pandas object, which imports pandas when it is installed: 0.3-0.8 s
  in the loop, the first time a row group becomes a table. Done here first, in a thread, while
  the first requests are out (a thread shares the loop's GIL in 5 ms turns; the loop is no
  longer stopped for the whole import).
- **The cyclic GC's full collections.** Each walks every object alive, Dagster's and the
  imported modules' included: 0.1 s per collection, a few per wave. The objects alive when the
  wave starts are frozen out of the walk (`gc.freeze`) for the wave; refcounting still frees
  them, only a reference cycle among them waits for the wave's end (`gc.unfreeze`).
- **The cyclic GC's young collections, and what they promote.** A request's objects (its
  tasks, coroutines, futures, aiohttp's request and response) live as long as the request,
  0.1 s or more; with Python's 700 new objects between young collections they outlived two of
  them and landed in the oldest generation, whose collections then walked every request in
  flight: in a 100 ms wave of 6,000 requests, ~355 young, ~32 middle and 2 full collections,
  0.21-0.25 s in all on a quiet machine. While waves run, a young collection waits for
  `WAVE_YOUNG_OBJECTS` new objects instead: 14-15 young collections in the same wave, none
  older, 0.05-0.06 s. Cycles are still collected, only in fewer, larger young collections (a
  few ms each); the threshold is restored with the GC's freeze."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from collections.abc import AsyncIterator

_lock = threading.Lock()
_waves = 0  # waves running in this process (a wave started ahead runs in a thread of its own)
_threshold: tuple[int, ...] = ()  # the GC's thresholds before the first running wave

WAVE_YOUNG_OBJECTS = 10_000


def _look_for_pandas() -> None:
    import pyarrow as pa

    pa.array([])


@contextlib.asynccontextmanager
async def fewer_pauses() -> AsyncIterator[None]:
    global _waves, _threshold
    with _lock:
        _waves += 1
        if _waves == 1:
            _threshold = gc.get_threshold()
            gc.set_threshold(max(_threshold[0], WAVE_YOUNG_OBJECTS), *_threshold[1:])
        gc.freeze()
    warm = asyncio.ensure_future(asyncio.to_thread(_look_for_pandas))
    try:
        yield
    finally:
        try:
            await asyncio.gather(warm, return_exceptions=True)
        finally:  # also when cancelled again while waiting: the GC is never left frozen
            with _lock:
                _waves -= 1
                if _waves == 0:
                    gc.unfreeze()
                    gc.set_threshold(*_threshold)
