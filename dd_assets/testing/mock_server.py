"""Run the mock OpenAI-compatible server from the command line (benchmarks, manual checks).

    python -m dd_assets.testing.mock_server --port 0 --latency 0.05 --fail-rate 0.0

Prints the base URL (put it in a workflow's `models.<alias>.base_url`) on the first line of
stdout, then serves until interrupted and prints request counters to stderr. The server is
dd_assets/testing/mock_openai.py, so tests and benchmarks measure against the same one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

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
            f" peak_concurrency={mock.peak_concurrency}",
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
