"""Benchmark: what Dagster adds to a stage run, per partition and per run, against issue 17's
bounds (<= 5 ms per partition, <= 0.3 s per run, independent of how many row groups the stage has).

    .venv/bin/python bench/dagster_overhead.py [--sizes 10,1000,100000] [--run 40] [--repeat 3]

A one-stage workflow of tiny row groups (one sampler column, 10 rows each) whose partitions
definition has 10, 1,000 or 100,000 row groups. For each size, in-process runs on a SQLite
instance (a temp DAGSTER_HOME, the in-process executor, as `dd-assets materialize` runs them) of
1 and of `--run` new row groups, and the same row groups through the engine alone
(`materialize_wave`, no Dagster). Then

    per partition = (dagster(run) - dagster(1)) / (run - 1) - (engine(run) - engine(1)) / (run - 1)
    per run       = dagster(1) - engine(1) - per partition

both medians over `--repeat` interleaved rounds, and the ratios to the bounds (1.0 = at the bound).
`events/part` counts the event-log writes a run adds per partition, materialization included.

Variants:
- `default`: what dd-assets does: each row group's materialization logged as it lands, with its
  metadata and provenance, plus its `row_group_valid` check evaluation.
- `no-row-check`: the same run without the row-group check (assets only).
- `planned-subset`: `default` with DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true: one
  "planned" event per asset instead of one per partition (docs/decisions.md: the UI then shows
  no partition of a failed run as failed, nor in progress while it runs).
- `dagster-storage`: `default` on an instance with Dagster's own SQLite storage (a dagster.yaml
  without dd-assets' `storage:` block, as instances made before it have; decisions.md).

Every variant but `dagster-storage` runs on the instance `dd-assets` creates
(dd_assets/dagster/instance.py's dagster.yaml: dd_assets/dagster/sqlite_storage.py).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

BOUND_PARTITION_S = 0.005
BOUND_RUN_S = 0.3
ROWS = 10
VARIANTS = ("default", "no-row-check", "planned-subset", "dagster-storage")
PLANNED_SUBSET = "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS"


def _config(row_groups: int) -> dict[str, Any]:
    return {
        "name": "bench",
        "run": {"partitions_per_run": 100},
        "stages": [
            {
                "name": "tiny",
                "num_records": row_groups * ROWS,
                "buffer_size": ROWS,
                "columns": [
                    {
                        "name": "n",
                        "column_type": "sampler",
                        "sampler_type": "uniform",
                        "params": {"low": 0, "high": 1000},
                        "convert_to": "int",
                    }
                ],
            }
        ],
    }


class Size:
    """One partitions definition size: its definitions, built once (as a CLI command does)."""

    def __init__(self, row_groups: int, home: Path, root: Path) -> None:
        import dagster as dg

        from dd_assets.config.loader import parse_workflow
        from dd_assets.dagster.build import build_definitions, wave_selection
        from dd_assets.runners.plan import plan_workflow

        self.row_groups = row_groups
        self.root = root
        self.plan = plan_workflow(parse_workflow(_config(row_groups)))
        self.stage = self.plan["tiny"]
        defs = build_definitions([self.plan], root=str(root))
        selections = {
            "default": wave_selection([self.stage]),
            "no-row-check": dg.AssetSelection.assets(
                dg.AssetKey(["bench", "tiny"])
            ).without_checks(),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.jobs = {
                name: dg.Definitions.merge(
                    defs,
                    dg.Definitions(
                        jobs=[dg.define_asset_job(f"bench_{name}".replace("-", "_"), sel)]
                    ),
                ).resolve_job_def(f"bench_{name}".replace("-", "_"))
                for name, sel in selections.items()
            }
        self.next = 0  # row groups are used once: every run generates new ones

    def take(self, n: int) -> list[int]:
        if self.next + n > self.row_groups:
            self.next = 0
            self.root = Path(tempfile.mkdtemp(dir=self.root.parent))
        out = list(range(self.next, self.next + n))
        self.next += n
        return out


def _dagster(size: Size, variant: str, row_groups: list[int], instance: Any) -> tuple[float, int]:
    from dd_assets.dagster.io_manager import StageIOManager
    from dd_assets.dagster.resources import IO_MANAGER_KEY, STORE_KEY, StoreResource
    from dd_assets.dagster.runs import QUIET_LOGGERS
    from dd_assets.store.layout import partition_key

    job = size.jobs["no-row-check" if variant == "no-row-check" else "default"]
    resources = {
        STORE_KEY: StoreResource(root=str(size.root)),
        IO_MANAGER_KEY: StageIOManager(root=str(size.root)),
    }
    if variant == "planned-subset":
        os.environ[PLANNED_SUBSET] = "true"
    try:
        t0 = time.perf_counter()
        result = job.execute_in_process(
            instance=instance,
            run_config={"loggers": QUIET_LOGGERS},
            resources=resources,
            tags={
                "dagster/asset_partition_range_start": partition_key(row_groups[0]),
                "dagster/asset_partition_range_end": partition_key(row_groups[-1]),
            },
        )
        wall = time.perf_counter() - t0
    finally:
        os.environ.pop(PLANNED_SUBSET, None)
    assert result.success
    return wall, len(instance.all_logs(result.run_id))


def _engine(size: Size, row_groups: list[int]) -> float:
    from dd_assets.runners.materialize import materialize_wave
    from dd_assets.store.partition_store import PartitionStore

    t0 = time.perf_counter()
    materialize_wave([size.stage], PartitionStore(size.root), row_groups)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,1000,100000")
    ap.add_argument("--run", type=int, default=40, help="row groups in the long run")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.variants.split(",")

    base = Path(tempfile.mkdtemp(prefix="dd-bench-"))
    warnings.filterwarnings("ignore")
    import dagster as dg

    from dd_assets.dagster.instance import NEW_INSTANCE_YAML

    instances = {}
    for name, text in (
        ("dd-assets", NEW_INSTANCE_YAML),
        ("dagster", "telemetry:\n  enabled: false\n"),
    ):
        home = base / f"dagster_home_{name}"
        home.mkdir()
        (home / "dagster.yaml").write_text(text)
        os.environ["DAGSTER_HOME"] = str(home)  # the storage's base_dir reads it
        instances[name] = dg.DagsterInstance.get()
    home = base / "dagster_home_dd-assets"
    os.environ["DAGSTER_HOME"] = str(home)
    print(f"Dagster overhead, in-process executor, SQLite instances in {base}", flush=True)
    print(f"{'variant':<15} {'row groups':>10} {'per partition':>14} {'/ 5 ms':>7}"
          f" {'per run':>8} {'/ 0.3 s':>8} {'events/part':>11}")  # fmt: skip
    rows = []
    for n in sizes:
        size = Size(n, home, base / f"data-{n}")
        size.root.mkdir()
        run = min(args.run, n - 1)
        samples: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
        events: dict[str, list[float]] = {v: [] for v in variants}
        engine: list[tuple[float, float]] = []
        for instance in instances.values():  # warm: imports, first run's setup
            _dagster(size, "default", size.take(1), instance)
        for _ in range(args.repeat):
            engine.append((_engine(size, size.take(1)), _engine(size, size.take(run))))
            for v in variants:
                instance = instances["dagster" if v == "dagster-storage" else "dd-assets"]
                one, logged_one = _dagster(size, v, size.take(1), instance)
                many, logged_many = _dagster(size, v, size.take(run), instance)
                samples[v].append((one, many))
                events[v].append((logged_many - logged_one) / (run - 1))
        e1 = statistics.median(a for a, _ in engine)
        e_part = statistics.median((b - a) / (run - 1) for a, b in engine)
        for v in variants:
            d_part = statistics.median((b - a) / (run - 1) for a, b in samples[v])
            d1 = statistics.median(a for a, _ in samples[v])
            per_part = max(d_part - e_part, 0.0)
            per_run = max(d1 - e1 - per_part, 0.0)
            rows.append((v, n, per_part, per_run))
            print(
                f"{v:<15} {n:>10} {per_part * 1000:>11.1f} ms {per_part / BOUND_PARTITION_S:>7.1f}"
                f" {per_run:>6.2f} s {per_run / BOUND_RUN_S:>8.1f}"
                f" {statistics.median(events[v]):>11.1f}",
                flush=True,
            )
    # the worst size of the default variant (what dd-assets does), for bench/run.py
    default = [r for r in rows if r[0] == "default"] or rows
    worst = {
        "dagster_per_partition_s": max(r[2] for r in default),
        "dagster_per_run_s": max(r[3] for r in default),
    }
    print("RESULT " + json.dumps(worst), flush=True)
    print(f"(engine alone: {e_part * 1000:.1f} ms per row group of {ROWS} rows; load average"
          f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    raise SystemExit(main())
