"""Benchmark: CPU time the LLM client spends per request (bound: 0.5 ms at 50 ms latency).

    .venv/bin/python bench/llm_client_cpu.py [--requests 4000] [--parallel 64] [--latency 0.05]

The mock provider runs in its own process (dd_assets.testing.mock_server), so the CPU time of this
process (time.process_time) is the client's alone: LLMClient.chat with its retries, semaphores,
JSON encoding and decoding, and the HTTP transport. A first round warms the connection pool and
is not counted. At 2 cores, 0.5 ms per request lets one process drive ~2,000 requests a second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

from dd_assets.config.models import ModelConfig
from dd_assets.llm.client import LLMClient
from dd_assets.testing.mock_server import mock_process

PROMPT = "Write one sentence about a customer support ticket for a laptop battery. " * 4


async def _drive(client: LLMClient, requests: int, parallel: int) -> None:
    pending = iter(range(requests))

    async def worker() -> None:
        for i in pending:
            await client.chat("m", [{"role": "user", "content": f"{i}: {PROMPT}"}])

    await asyncio.gather(*(worker() for _ in range(parallel)))


async def measure(url: str, requests: int, parallel: int) -> tuple[float, float]:
    """(CPU seconds per request, wall seconds) for `requests` calls at `parallel` in flight."""
    model = ModelConfig(base_url=url, model="mock", max_parallel_requests=parallel)
    async with LLMClient({"m": model}) as client:
        await _drive(client, parallel * 2, parallel)  # connections open, code warm
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await _drive(client, requests, parallel)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / requests, wall


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--parallel", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.05)
    args = p.parse_args()
    os.environ.setdefault("DD_LLM_MODEL", "mock")
    with mock_process(args.latency) as mock:
        per_request, wall = asyncio.run(measure(mock.url, args.requests, args.parallel))
    ideal = args.requests * args.latency / args.parallel
    print(
        f"client CPU {per_request * 1000:.3f} ms per request ({args.requests} requests,"
        f" {args.parallel} in flight, {args.latency * 1000:.0f} ms latency); wall {wall:.2f} s,"
        f" ideal {ideal:.2f} s",
        flush=True,
    )
    print("RESULT " + json.dumps({"client_cpu_ms_per_request": per_request * 1000}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
