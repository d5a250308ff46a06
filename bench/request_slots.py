"""Benchmark: what a shared request slot (dd_assets/llm/slots.py) adds to each LLM request.

    .venv/bin/python bench/request_slots.py [--n 20000] [--pg postgresql://user:pw@host:port/db]

Prints the mean cost of one uncontended acquire + release, from the event loop as the client
does it, for lock files (always) and PostgreSQL advisory locks (with --pg), next to the
in-process semaphore alone. An LLM request takes 100 ms to seconds; this is the overhead on it.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from dd_assets.llm.client import _PrioritySemaphore, _SharedGate
from dd_assets.llm.slots import FileSlots, PostgresSlots, RequestSlots

KEY = "0123456789abcdef"


async def _per_acquire(gate: _PrioritySemaphore | _SharedGate, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        await gate.acquire(0)
        gate.release()
    return (time.perf_counter() - t0) / n


def _measure(slots: RequestSlots | None, n: int, limit: int = 32) -> float:
    own = _PrioritySemaphore(limit)
    gate = own if slots is None else _SharedGate(own, slots, KEY, limit)
    return asyncio.run(_per_acquire(gate, n))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--pg", default=None, help="a PostgreSQL URL to measure advisory locks on")
    args = p.parse_args()
    base = _measure(None, args.n)
    print(f"in-process semaphore only: {base * 1e6:.1f} us per acquire+release")
    with tempfile.TemporaryDirectory() as tmp, FileSlots(tmp) as files:
        cost = _measure(files, args.n)
        print(f"+ lock-file slots:        {cost * 1e6:.1f} us ({(cost - base) * 1e6:.1f} us added)")
    if args.pg:
        with PostgresSlots(args.pg) as pg:
            n = min(args.n, 2000)
            cost = _measure(pg, n)
            print(
                f"+ PostgreSQL slots:       {cost * 1e6:.1f} us ({(cost - base) * 1e6:.1f} us added)"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
