"""Run the mock OpenAI-compatible server from the command line (benchmarks, manual checks).

    python -m dd_assets.testing.mock_server --port 0 --latency 0.05 --fail-rate 0.0

Prints the base URL (put it in a workflow's `models.<alias>.base_url`) on the first line of
stdout, then serves until interrupted and prints request counters to stderr. The server is
dd_assets/testing/mock_openai.py, so tests and benchmarks measure against the same one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from dd_assets.testing.mock_openai import MockOpenAI


def _statuses(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    p.add_argument("--fail-rate", type=float, default=0.0, help="fraction of injected failures")
    p.add_argument("--fail-statuses", type=_statuses, default=[429, 500], help="e.g. 429,500,503")
    p.add_argument("--retry-after", type=float, default=None, help="Retry-After seconds on 429")
    p.add_argument("--fatal-status", type=int, default=None, help="answer every request with it")
    p.add_argument("--invalid-json-rate", type=float, default=0.0)
    p.add_argument(
        "--require-key-env",
        default=None,
        help="NAME of an env var holding the key to require (keys never go on the command line)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--timeline",
        default=None,
        help="write [[monotonic time, requests in flight], ...] (each change) as JSON here",
    )
    args = p.parse_args(argv)

    require_key = None
    if args.require_key_env:
        require_key = os.environ.get(args.require_key_env)
        if not require_key:
            p.error(f"environment variable {args.require_key_env} is not set")

    mock = MockOpenAI(
        host=args.host,
        port=args.port,
        latency_s=args.latency,
        fail_rate=args.fail_rate,
        fail_statuses=args.fail_statuses,
        retry_after=args.retry_after,
        fatal_status=args.fatal_status,
        invalid_json_rate=args.invalid_json_rate,
        require_key=require_key,
        seed=args.seed,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with mock:
        print(mock.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
        print(
            f"requests={mock.requests} by_status={mock.by_status}"
            f" peak_concurrency={mock.peak_concurrency}"
            f" mean_concurrency={mock.mean_concurrency:.3f}",
            file=sys.stderr,
            flush=True,
        )
    if args.timeline:
        with open(args.timeline, "w", encoding="utf-8") as f:
            json.dump(mock.in_flight_log, f)
    return 0


@dataclass
class MockProcess:
    """A mock server running in its own process; the counters are filled in when it stops."""

    url: str
    requests: int = 0
    ok: int = 0
    peak_concurrency: int = 0
    mean_concurrency: float = 0.0  # from the first request's arrival to the last answer
    by_status: dict[str, int] = field(default_factory=dict)


@contextlib.contextmanager
def mock_process(latency: float = 0.0, fail_rate: float = 0.0, *args: str) -> Iterator[MockProcess]:
    """The mock in another process, as a real provider is: sharing the caller's GIL would charge
    the server's CPU time to the client under measurement. Yields its URL; stops it on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "dd_assets.testing.mock_server", "--latency", str(latency),
         "--fail-rate", str(fail_rate), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    mock = MockProcess(url=proc.stdout.readline().strip())
    try:
        yield mock
    finally:
        proc.send_signal(signal.SIGTERM)
        err = proc.stderr.read()
        proc.wait(30)
        m = re.search(r"requests=(\d+) by_status=(\{.*?\}) peak_concurrency=(\d+)", err)
        if m is None:
            raise RuntimeError(f"mock server said: {err[-2000:]}")
        mock.requests, mock.peak_concurrency = int(m[1]), int(m[3])
        mock.by_status = {k: int(v) for k, v in re.findall(r"([\w']+): (\d+)", m[2])}
        mock.ok = mock.by_status.get("200", 0)
        mean = re.search(r"mean_concurrency=([\d.]+)", err)
        mock.mean_concurrency = float(mean[1]) if mean else 0.0


if __name__ == "__main__":
    sys.exit(main())
