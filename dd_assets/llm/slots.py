"""Request slots: `max_parallel_requests` of a model endpoint held across processes and machines.

The client's per-alias semaphore bounds one process. When a backfill runs N Dagster runs at once
(N processes, maybe N machines), the endpoint would see N times the limit; Dagster's concurrency
pools cannot help, since they count steps, not HTTP requests (research notes, dagster-instance.md
section 5). So each request also holds one of K = `max_parallel_requests` slots of its endpoint,
shared by every process that uses the same backend:

- `FileSlots(folder)`: K lock files `<folder>/<endpoint>.<i>.lock`, taken with a non-blocking
  `flock`; for processes on one machine (the folder is local, e.g. DAGSTER_HOME).
- `PostgresSlots(dsn)`: K session advisory locks `(endpoint class id, i)` in a PostgreSQL
  database (the Dagster instance's, in a deployment); for processes on any number of machines.

Both are safe against SIGKILL: the kernel (closed descriptors) or the server (ended session)
drops a dead holder's locks, so no slot leaks and no sweeper is needed. Both kinds of lock are
re-entrant for their holder (same open file description, same session), so each process keeps
the set of slots it holds and never probes those.

A slot is held only for one HTTP exchange, never during a retry's backoff. Waiting is local
first: in a process, waiters for an endpoint queue by priority (the client passes the row index)
and a single poller probes the shared slots for them, a few milliseconds apart, at once when this
process frees one. Slots are interchangeable, so `release` frees any one the process holds.

Turns: a process that frees a slot could always take it back at once (its next request is ready
within microseconds, while other processes probe milliseconds apart), so one run of a backfill
would keep every slot until it ends and the others would sit idle. So a process whose poller is
waiting says so (a shared lock on `<endpoint>.waiting`, or a shared advisory lock on slot -1), and
a process that just freed a slot first checks for such a waiter: if there is one, it leaves the
slot to it for `YIELD_S` (two poll intervals) instead of taking it back. Slots then pass between
runs in turn; the cost is the waiter's poll delay per hand-over (~`POLL_MAX_S / 2` idle per
request while runs contend, nothing for a lone run).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import heapq
import itertools
import json
import logging
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

from dd_assets.config.models import ModelConfig
from dd_assets.errors import LLMError
from dd_assets.llm.postgres import connect, libpq_url, safe_url, scrub

__all__ = [
    "FileSlots",
    "PostgresSlots",
    "RequestSlots",
    "RequestSlotsError",
    "endpoint_key",
]

log = logging.getLogger(__name__)

POLL_MIN_S = 0.001
POLL_MAX_S = 0.005
YIELD_S = 2 * POLL_MAX_S  # every other waiter probes at least once meanwhile
WAITING = -1  # the slot number that stands for "a process is waiting" in a backend


class RequestSlotsError(LLMError):
    """The shared request slots cannot be used (folder not writable, database unreachable)."""


def endpoint_key(model: ModelConfig) -> str:
    """Which slots a model's requests take: its endpoint (host, port and path of base_url, never
    credentials) and model name. Aliases of one endpoint and model share its slots; each still
    takes only slots below its own limit, so the endpoint never sees more than the largest."""
    identity = model.identity()
    doc = json.dumps({"base_url": identity["base_url"], "model": model.model}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


class RequestSlots:
    """Shared slots per endpoint key. Subclasses give `_try` (take a free slot below `limit`, not
    one this process holds; None when all are taken) and `_free`; `_blocking` says whether those
    wait on a network round trip (then they run in a worker thread, off the event loop)."""

    _blocking = False

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: dict[tuple[str, int], set[int]] = {}
        self._rng = random.Random()
        self._queues: dict[tuple[str, int], list[tuple[Any, int, asyncio.Future[None]]]] = {}
        self._pollers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._wake: dict[tuple[str, int], asyncio.Event] = {}
        self._seq = itertools.count()
        self._freed: set[tuple[str, int]] = set()  # released since this process last took one
        self._yield_until: dict[tuple[str, int], float] = {}
        self._waiting: dict[str, int] = {}  # pollers per key (announced while > 0)
        self._waiting_pid = os.getpid()  # a forked child has none of its parent's pollers

    # -- the interface the client uses

    async def acquire(self, key: str, limit: int, priority: Any = 0) -> None:
        """Hold one of the `limit` slots of `key` (wait for one, lowest priority first)."""
        q = (key, limit)
        if not self._live(q) and await self._call(self._take, q):
            return
        # From here the poller serves this waiter (and any turn yielded above is kept).
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queues.setdefault(q, []), (priority, next(self._seq), fut))
        if q not in self._pollers:
            self._pollers[q] = asyncio.ensure_future(self._poll(q))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted, then cancelled: give it back
                self.release(key, limit)
            raise

    def release(self, key: str, limit: int) -> None:
        """Free one slot of `key` this process holds (any one: they are interchangeable)."""
        q = (key, limit)
        with self._mutex:
            held = self._held.get(q)
            if not held:
                raise RuntimeError(f"release of request slot {key}/{limit} that is not held")
            slot = held.pop()
            self._freed.add(q)
        if self._blocking:
            # Not awaited: the next probe may find the slot still locked for a moment, which is
            # harmless; a lock held twice by this session (re-entrant) is still released once.
            asyncio.get_running_loop().run_in_executor(None, self._free_quietly, key, slot)
        else:
            self._free_quietly(key, slot)
        wake = self._wake.get(q)
        if wake is not None:
            wake.set()

    def held(self) -> int:
        """Slots this process holds now (0 when idle, else one leaked)."""
        with self._mutex:
            return sum(len(v) for v in self._held.values())

    def close(self) -> None:
        """Drop every lock and connection (locks held then are freed with them)."""

    def __enter__(self) -> RequestSlots:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- waiting

    def _live(self, q: tuple[str, int]) -> bool:
        waiters = self._queues.get(q)
        while waiters and waiters[0][2].done():  # cancelled waiters
            heapq.heappop(waiters)
        return bool(waiters)

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._blocking:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def _take(self, q: tuple[str, int]) -> bool:
        """Take a slot; False when none is free, or when this process just freed one and another
        process waits for it (its turn: this process then waits `YIELD_S` before probing)."""
        key, limit = q
        with self._mutex:
            mine = self._held.setdefault(q, set())
            if q in self._freed:
                self._freed.discard(q)
                if self._others_wait(key, self._waiting.get(key, 0) > 0):
                    self._yield_until[q] = time.monotonic() + YIELD_S
                    return False
            # From a random slot on, so that processes do not all contend for slot 0.
            slot = self._try(key, limit, int(self._rng.random() * limit), mine)
            if slot is None:
                return False
            mine.add(slot)
            return True

    async def _poll(self, q: tuple[str, int]) -> None:
        """Probe for the waiters of one (key, limit) until none is left."""
        wake = self._wake.setdefault(q, asyncio.Event())
        delay = POLL_MIN_S
        announced = False
        try:
            await self._call(self._announce, q[0], True)
            announced = True
            while self._live(q):
                wake.clear()
                turn = self._yield_until.pop(q, 0.0) - time.monotonic()
                if turn > 0:  # another process's turn: do not probe (nor be woken) meanwhile
                    await asyncio.sleep(turn)
                    continue
                if await self._call(self._take, q):
                    delay = POLL_MIN_S
                    if not self._live(q):  # the waiter left while we probed
                        self.release(*q)
                        break
                    _, _, fut = heapq.heappop(self._queues[q])
                    fut.set_result(None)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), delay)
                delay = min(POLL_MAX_S, delay * 2)
        except BaseException as exc:  # the backend failed: every waiter gets the error
            for _, _, fut in self._queues.pop(q, []):
                if fut.done():
                    continue
                if isinstance(exc, Exception):
                    fut.set_exception(exc)
                else:
                    fut.cancel()
            if not isinstance(exc, Exception):
                raise
        finally:
            self._pollers.pop(q, None)
            if announced:
                with contextlib.suppress(Exception):
                    await self._call(self._announce, q[0], False)

    def _announce(self, key: str, on: bool) -> None:
        """Count this process's pollers for `key`; the backend holds its "waiting" mark while
        there is one."""
        with self._mutex:
            if self._waiting_pid != os.getpid():
                self._waiting, self._freed, self._waiting_pid = {}, set(), os.getpid()
            before = self._waiting.get(key, 0)
            after = before + (1 if on else -1)
            self._waiting[key] = after
            if (before == 0) != (after == 0):
                self._mark_waiting(key, after > 0)

    # -- backend

    def _try(
        self, key: str, limit: int, start: int, mine: set[int]
    ) -> int | None:  # pragma: no cover - abstract
        """Lock the first free slot of start, start + 1, ... (mod limit) not in `mine`."""
        raise NotImplementedError

    def _free(self, key: str, slot: int) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _mark_waiting(self, key: str, on: bool) -> None:  # pragma: no cover - abstract
        """Hold (or drop) this process's shared "waiting for `key`" mark."""
        raise NotImplementedError

    def _others_wait(self, key: str, marked: bool) -> bool:  # pragma: no cover - abstract
        """Whether another process holds its "waiting" mark for `key` (`marked`: this one does;
        it must still hold it afterwards)."""
        raise NotImplementedError

    def _free_quietly(self, key: str, slot: int) -> None:
        try:
            with self._mutex:
                self._free(key, slot)
        except Exception as exc:  # the lock goes with its connection anyway
            log.warning("could not release request slot %s/%d: %s", key, slot, exc)


class FileSlots(RequestSlots):
    """Slots as lock files in one local folder; each slot's file stays open for the process's
    life (one `flock` syscall per probe, no open/close per request)."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        super().__init__()
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RequestSlotsError(
                f"cannot create the request-slot folder {self.folder}: {exc}; set"
                " DD_ASSETS_LLM_SLOTS to a writable folder (docs/scaling.md)"
            ) from exc
        self._fds: dict[tuple[str, int], int] = {}
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"FileSlots({str(self.folder)!r})"

    def _fd(self, key: str, slot: int) -> int:
        if self._pid != os.getpid():  # a forked child shares our descriptions: open its own
            self._fds, self._held, self._pid = {}, {}, os.getpid()
        fd = self._fds.get((key, slot))
        if fd is None:
            name = f"{key}.waiting" if slot == WAITING else f"{key}.{slot}.lock"
            path = self.folder / name
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise RequestSlotsError(f"cannot open request-slot file {path}: {exc}") from exc
            self._fds[(key, slot)] = fd
        return fd

    def _try(self, key: str, limit: int, start: int, mine: set[int]) -> int | None:
        for j in range(limit):
            slot = start + j
            if slot >= limit:
                slot -= limit
            if slot in mine:
                continue
            try:
                fcntl.flock(self._fd(key, slot), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            return slot
        return None

    def _free(self, key: str, slot: int) -> None:
        fcntl.flock(self._fds[(key, slot)], fcntl.LOCK_UN)

    def _mark_waiting(self, key: str, on: bool) -> None:
        fcntl.flock(self._fd(key, WAITING), fcntl.LOCK_SH if on else fcntl.LOCK_UN)

    def _others_wait(self, key: str, marked: bool) -> bool:
        fd = self._fd(key, WAITING)
        try:
            # Exclusive is granted only if no other description holds the shared mark. A failed
            # conversion may drop our own shared lock (flock(2)), so it is restored either way.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            others = False
        except BlockingIOError:
            others = True
        fcntl.flock(fd, fcntl.LOCK_SH if marked else fcntl.LOCK_UN)
        return others

    def close(self) -> None:
        with self._mutex:
            fds, self._fds = self._fds, {}
            self._held = {}
        for fd in fds.values():
            os.close(fd)


class PostgresSlots(RequestSlots):
    """Slots as session advisory locks `(class id of the endpoint, slot)` on one autocommit
    connection per process. A probe is one round trip for a random slot, and when that one is
    taken, one more that takes the first free slot of the rest."""

    _blocking = True

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self._dsn = libpq_url(dsn)
        self._conn = connect(self._dsn, "request slots", RequestSlotsError)

    def __repr__(self) -> str:
        return f"PostgresSlots({safe_url(self._dsn)!r})"

    @staticmethod
    def class_id(key: str) -> int:
        """A signed 32-bit id per endpoint key (advisory locks take two int4s)."""
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big", signed=True)

    def _try(self, key: str, limit: int, start: int, mine: set[int]) -> int | None:
        import psycopg2

        order = [(start + j) % limit for j in range(limit)]
        order = [slot for slot in order if slot not in mine]
        if not order:
            return None
        try:
            with self._conn.cursor() as cur:
                # The random first slot alone (one short statement), which is free whenever the
                # endpoint is not busy; then a scan of the rest: a function scan filtered row by
                # row under LIMIT 1, so locks are tried in order and none after the first
                # granted (an ORDER BY would sort, trying them all first).
                cur.execute("SELECT pg_try_advisory_lock(%s, %s)", (self.class_id(key), order[0]))
                if cur.fetchone()[0]:
                    return order[0]
                if len(order) == 1:
                    return None
                cur.execute(
                    "SELECT s FROM unnest(%s::int[]) AS s WHERE pg_try_advisory_lock(%s, s) LIMIT 1",
                    (order[1:], self.class_id(key)),
                )
                row = cur.fetchone()
        except psycopg2.Error as exc:
            raise RequestSlotsError(
                f"request slots in PostgreSQL at {safe_url(self._dsn)} failed:"
                f" {scrub(str(exc).strip(), self._dsn)}"
            ) from None
        return None if row is None else int(row[0])

    def _free(self, key: str, slot: int) -> None:
        with self._conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s, %s)", (self.class_id(key), slot))

    def _mark_waiting(self, key: str, on: bool) -> None:
        fn = "pg_advisory_lock_shared" if on else "pg_advisory_unlock_shared"
        self._query(f"SELECT {fn}(%s, %s)", (self.class_id(key), WAITING))

    def _others_wait(self, key: str, marked: bool) -> bool:
        # A session's own shared lock does not conflict with its exclusive request, so the
        # exclusive lock is granted exactly when no other session holds the mark; it is given
        # back in the same statement.
        row = self._query(
            "SELECT CASE WHEN pg_try_advisory_lock(%(c)s, %(w)s)"
            " THEN NOT pg_advisory_unlock(%(c)s, %(w)s) ELSE true END",
            {"c": self.class_id(key), "w": WAITING},
        )
        return bool(row[0])

    def _query(self, sql: str, params: Any) -> Any:
        import psycopg2

        try:
            with self._conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchone()
        except psycopg2.Error as exc:
            raise RequestSlotsError(
                f"request slots in PostgreSQL at {safe_url(self._dsn)} failed:"
                f" {scrub(str(exc).strip(), self._dsn)}"
            ) from None

    def close(self) -> None:
        with self._mutex:
            conn, self._conn = self._conn, None
            self._held = {}
        if conn is not None:
            conn.close()
