"""Benchmark: a backfill on 4 run workers at once against the same backfill on 1, on one
deployment (PostgreSQL instance, dagster-webserver + dagster-daemon, run workers launched by the
daemon, shared request cache and slots: dd_assets/testing/deployment.py) and the mock endpoint.

    .venv/bin/python bench/scale_out.py [--rows 160] [--latency 0.25] [--parallel 32] [--s3]

--s3: the data root is s3://<bucket>/data on a local S3-compatible server (moto) instead of a
folder.

Two workflows with the same shape (two stages, one LLM column; only their names differ, so
nothing is reused between them) are backfilled one after the other: the first as 4 runs that
the queued coordinator starts together, the second with a tag limited to one run at a time.
Prints each wall time (backfill launched -> COMPLETED_SUCCESS) and their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

from dd_assets.testing.deployment import ONE_AT_A_TIME, running_deployment, two_stage_workflow
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.postgres import running_postgres
from dd_assets.testing.s3 import running_s3

BUFFER = 10
PER_RUN = 4


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=160, help="records per stage (4 runs at 160)")
    p.add_argument("--latency", type=float, default=0.25, help="mock latency per request (s)")
    p.add_argument("--parallel", type=int, default=32, help="max_parallel_requests, all runs")
    p.add_argument("--s3", action="store_true", help="data root on a local S3 server (moto)")
    args = p.parse_args()
    keys = [f"{i:05d}" for i in range(args.rows // BUFFER)]
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_postgres(Path(tmp)) as pg,
        MockOpenAI(latency_s=args.latency) as mock,
        contextlib.ExitStack() as stack,
    ):
        root, store_env = None, None
        if args.s3:
            s3 = stack.enter_context(running_s3(Path(tmp)))
            root, store_env = f"s3://{s3.create_bucket()}/data", s3.env()
        workflows = {
            name: two_stage_workflow(
                name,
                mock.url,
                rows=args.rows,
                buffer=BUFFER,
                per_run=PER_RUN,
                parallel=args.parallel,
            )
            for name in ("four_workers", "one_worker")
        }
        with running_deployment(
            Path(tmp) / "d", pg, workflows, mock, root=root, store_env=store_env
        ) as d:
            walls = {}
            for name, tags in (("four_workers", None), ("one_worker", ONE_AT_A_TIME)):
                t0 = time.monotonic()
                backfill = d.backfill(name, keys, tags=tags)
                status = d.wait(backfill, timeout=3600)
                walls[name] = time.monotonic() - t0
                runs = len(d.runs(backfill))
                print(f"{name}: {status} in {walls[name]:.1f} s ({runs} runs)", flush=True)
            print(
                f"1 worker / 4 workers: {walls['one_worker'] / walls['four_workers']:.2f}"
                f" ({len(keys)} row groups x 2 stages, {args.rows} LLM requests each,"
                f" latency {args.latency} s, max_parallel_requests {args.parallel} in total,"
                f" data root {'s3 (moto)' if args.s3 else 'a local folder'};"
                f" peak at the endpoint {mock.peak_concurrency})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
