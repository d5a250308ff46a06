"""Request slots (dd_assets/llm/slots.py): `max_parallel_requests` of an endpoint held across
processes, by lock files on one machine and by PostgreSQL advisory locks in a deployment."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dd_assets.config.models import ModelConfig
from dd_assets.llm.slots import (
    FileSlots,
    PostgresSlots,
    RequestSlots,
    RequestSlotsError,
    endpoint_key,
)
from dd_assets.testing.mock_openai import MockOpenAI

KEY = "0123456789abcdef"


class _Gauge:
    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def enter(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def leave(self) -> None:
        self.now -= 1


async def _hold(slots: RequestSlots, gauge: _Gauge, limit: int, seconds: float, prio: int = 0):
    await slots.acquire(KEY, limit, prio)
    gauge.enter()
    try:
        await asyncio.sleep(seconds)
    finally:
        gauge.leave()
        slots.release(KEY, limit)


def test_endpoint_key_is_the_endpoint_and_model_not_the_alias_settings() -> None:
    a = ModelConfig(base_url="http://h:1/v1", model="m", max_parallel_requests=2)
    b = ModelConfig(
        base_url="http://h:1/v1/", model="m", max_parallel_requests=8, timeout_s=5, api_key_env="K"
    )
    assert endpoint_key(a) == endpoint_key(b)
    assert endpoint_key(a) != endpoint_key(a.model_copy(update={"model": "other"}))
    assert endpoint_key(a) != endpoint_key(a.model_copy(update={"base_url": "http://h:2/v1"}))


def test_file_slots_hold_the_limit_between_holders_that_share_a_folder(tmp_path: Path) -> None:
    # Three FileSlots on one folder have their own open file descriptions, so their locks
    # exclude each other exactly as three processes' do.
    gauge = _Gauge()

    async def main() -> None:
        holders = [FileSlots(tmp_path) for _ in range(3)]
        await asyncio.gather(
            *(_hold(h, gauge, 2, 0.01) for h in holders for _ in range(6)),
        )
        assert [h.held() for h in holders] == [0, 0, 0]
        for h in holders:
            h.close()

    asyncio.run(main())
    assert gauge.peak == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{KEY}.0.lock",
        f"{KEY}.1.lock",
        f"{KEY}.waiting",
    ]


def test_a_process_that_frees_a_slot_leaves_it_to_a_waiting_process(tmp_path: Path) -> None:
    # `busy` always has its next request ready the moment it frees a slot (in the same event-loop
    # step, as a run's next cell is), so without turns it would take the slot back every time and
    # `late` would wait for all of busy's 40 requests; with turns, late's requests interleave.
    done: list[str] = []

    async def main() -> None:
        busy, late = FileSlots(tmp_path), FileSlots(tmp_path)

        async def worker(slots: FileSlots, name: str, n: int) -> None:
            for _ in range(n):
                await slots.acquire(KEY, 2)
                await asyncio.sleep(0.01)
                done.append(name)
                slots.release(KEY, 2)

        hog = [asyncio.ensure_future(worker(busy, "busy", 20)) for _ in range(2)]
        await asyncio.sleep(0.02)  # busy holds both slots
        await asyncio.gather(worker(late, "late", 5), worker(late, "late", 5), *hog)
        assert busy.held() == late.held() == 0
        busy.close()
        late.close()

    asyncio.run(main())
    assert done.count("late") == 10
    # late finished its 10 while busy still had at least a third of its 40 left to do.
    assert done.index("late") < 10 and len(done) - 1 - done[::-1].index("late") < 40 - 13


def test_waiters_in_a_process_are_served_lowest_priority_first(tmp_path: Path) -> None:
    order: list[int] = []

    async def main() -> None:
        slots = FileSlots(tmp_path)
        await slots.acquire(KEY, 1)  # the only slot: everyone below waits for it

        async def waiter(prio: int) -> None:
            await slots.acquire(KEY, 1, prio)
            order.append(prio)
            slots.release(KEY, 1)

        tasks = [asyncio.ensure_future(waiter(p)) for p in (5, 1, 3, 2, 4)]
        await asyncio.sleep(0.02)
        slots.release(KEY, 1)
        await asyncio.gather(*tasks)
        slots.close()

    asyncio.run(main())
    assert order == [1, 2, 3, 4, 5]


def test_a_cancelled_waiter_leaves_no_slot_held(tmp_path: Path) -> None:
    async def main() -> None:
        slots, other = FileSlots(tmp_path), FileSlots(tmp_path)
        await other.acquire(KEY, 1)
        waiting = asyncio.ensure_future(slots.acquire(KEY, 1))
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        other.release(KEY, 1)
        await asyncio.sleep(0.03)  # the poller has nobody left to hand a slot to
        assert slots.held() == 0
        await asyncio.wait_for(other.acquire(KEY, 1), 1)  # so the slot is free for others
        other.release(KEY, 1)
        slots.close()
        other.close()

    asyncio.run(main())


def test_an_unwritable_slot_folder_is_an_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RequestSlotsError, match="DD_ASSETS_LLM_SLOTS"):
        FileSlots(blocker / "slots")


# ---- across processes, and with the HTTP client


WORKER = """
import asyncio, os, sys
from dd_assets.config.models import ModelConfig
from dd_assets.llm.client import LLMClient
from dd_assets.llm.slots import FileSlots, PostgresSlots

url, make_slots, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
kind, _, target = make_slots.partition(":")
slots = {"files": FileSlots, "pg": PostgresSlots}[kind](target) if kind != "off" else None
model = ModelConfig(base_url=url, model="m", max_parallel_requests=2, max_retries=0)

async def main():
    async with LLMClient({"m": model}, slots=slots) as client:
        await asyncio.gather(*(
            client.chat("m", [{"role": "user", "content": f"{os.getpid()} {i}"}])
            for i in range(requests)
        ))

asyncio.run(main())
assert slots is None or slots.held() == 0
"""


def _four_processes(mock: MockOpenAI, make_slots: str, requests: int = 12) -> None:
    """Four 'runs', each its own process with its own LLMClient (per-process limit 2)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, mock.url, make_slots, str(requests)])
        for _ in range(4)
    ]
    assert [p.wait(120) for p in procs] == [0, 0, 0, 0]
    assert mock.by_status == {200: 4 * requests}


@pytest.mark.slow
def test_four_processes_share_max_parallel_requests_through_file_slots(tmp_path: Path) -> None:
    with MockOpenAI(latency_s=0.15) as mock:
        # Without shared slots each process keeps only its own limit of 2 (the control: the
        # assertion below could fail).
        _four_processes(mock, "off")
        assert mock.peak_concurrency > 2
        mock.reset()
        _four_processes(mock, f"files:{tmp_path}")
        assert mock.peak_concurrency == 2


def _kill_holder_then_acquire(code: str, fresh: Callable[[], RequestSlots]) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"

        async def blocked() -> None:
            slots = fresh()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(slots.acquire(KEY, 2), 0.3)
            slots.close()

        asyncio.run(blocked())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)

    async def freed() -> None:
        slots = fresh()
        t0 = time.monotonic()
        for _ in range(2):
            await asyncio.wait_for(slots.acquire(KEY, 2), 5)
        assert time.monotonic() - t0 < 1
        slots.close()

    asyncio.run(freed())


@pytest.mark.slow
def test_file_slots_of_a_killed_process_are_free_at_once(tmp_path: Path) -> None:
    code = f"""
        import asyncio
        from dd_assets.llm.slots import FileSlots
        async def main():
            s = FileSlots({str(tmp_path)!r})
            for _ in range(2):
                await s.acquire({KEY!r}, 2)
            print("held", flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """
    _kill_holder_then_acquire(code, lambda: FileSlots(tmp_path))


# ---- PostgreSQL advisory locks


@pytest.mark.slow
@pytest.mark.postgres
def test_postgres_slots_across_processes_after_sigkill_and_without_leaking_the_password(
    postgres,
) -> None:
    url = postgres.url
    with MockOpenAI(latency_s=0.15) as mock:
        _four_processes(mock, f"pg:{url}")
        assert mock.peak_concurrency == 2
    code = f"""
        import asyncio
        from dd_assets.llm.slots import PostgresSlots
        async def main():
            s = PostgresSlots({url!r})
            for _ in range(2):
                await s.acquire({KEY!r}, 2)
            print("held", flush=True)
            await asyncio.sleep(600)
        asyncio.run(main())
    """
    _kill_holder_then_acquire(code, lambda: PostgresSlots(url))

    bad = url.replace(f":{postgres.port}/", ":1/")  # nothing listens on port 1
    with pytest.raises(RequestSlotsError) as err:
        PostgresSlots(bad)
    assert postgres.password not in str(err.value)
    assert "127.0.0.1:1" in str(err.value)
    # Dagster's instance URL names its driver; libpq does not want it.
    slots = PostgresSlots(url.replace("postgresql://", "postgresql+psycopg2://"))
    assert postgres.password not in repr(slots)

    async def main() -> None:
        await slots.acquire(KEY, 3)
        await slots.acquire(KEY, 3)
        assert slots.held() == 2
        slots.release(KEY, 3)
        slots.release(KEY, 3)
        await asyncio.sleep(0.05)  # the unlocks run in a worker thread

    asyncio.run(main())
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert cur.fetchone()[0] == 0
    slots.close()
