"""Every benchmark in bench/, one after the other, and one table of ratios to issue 17's bounds.

    .venv/bin/python bench/run.py [--quick] [--only NAME,...] [--all]

A ratio is measured / bound, oriented so that <= 1.00 meets the bound (for a floor, such as rows/s
or the share of the request budget in use, it is bound / measured). Each benchmark runs as its
own process and reports on a `RESULT {json}` line; the load average is printed before each one,
since on a shared machine it moves every figure (a benchmark is never a test: nothing here
asserts).

By default the benchmarks with a bound run; `--all` adds those without one in issue 17
(chain_pipeline, request_slots, scale_out: the last starts PostgreSQL and a Dagster deployment).
`--quick` shrinks each workload (fewer repeats, smaller sizes) for a first look; the figures in
docs/speed.md come from a run without it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bound:
    key: str  # in the benchmark's RESULT line
    label: str
    bound: float
    unit: str
    floor: bool = False  # the bound is a minimum (ratio = bound / measured)

    def ratio(self, value: float) -> float:
        if self.floor:
            return self.bound / value if value > 0 else float("inf")
        return value / self.bound


@dataclass(frozen=True)
class Bench:
    name: str  # a name for --only, and the table
    script: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    bounds: tuple[Bound, ...] = ()
    prefix: str = ""  # prepended to the RESULT keys (one script run at two settings)
    # (RESULT key, label): figures shown beside the bounds, with no bound of their own
    context: tuple[tuple[str, str], ...] = ()


LLM_BOUNDS = {
    "dagster_wall_over_ideal": ("wall / ideal, end to end (dd-assets materialize)", 1.05, "x"),
    "engine_wall_over_ideal": ("wall / ideal, engine alone", 1.05, "x"),
}


def _llm(latency_ms: int) -> Bench:
    p = f"{latency_ms}ms_"
    bounds = [
        Bound(p + k, f"{label} at {latency_ms} ms", b, u) for k, (label, b, u) in LLM_BOUNDS.items()
    ]
    bounds.append(
        Bound(
            p + "dagster_mean_in_flight_share",
            f"mean in flight / max_parallel_requests at {latency_ms} ms",
            0.95,
            "",
            floor=True,
        )
    )
    return Bench(
        f"llm_chain_{latency_ms}ms",
        "llm_chain.py",
        ("--latency", str(latency_ms / 1000)),
        ("--latency", str(latency_ms / 1000)),
        tuple(bounds),
        prefix=p,
        context=(
            (
                p + "transport_wall_over_ideal",
                f"wall / ideal, bare aiohttp to the same mock at {latency_ms} ms (this machine's"
                " transport, no bound)",
            ),
        ),
    )


BENCHES = [
    Bench(
        "cli_speed",
        "cli_speed.py",
        ("--repeat", "5"),
        ("--repeat", "2"),
        (
            Bound("validate_first_output_s_pyc", "validate, first output", 0.5, "s"),
            Bound("preview_first_output_s_pyc", "preview -n 5, first output", 0.5, "s"),
            Bound("status_first_output_s_pyc", "status, first output", 0.5, "s"),
            Bound("status_data_first_output_s_pyc", "status with data, first output", 0.5, "s"),
            Bound("status_100k_s", "status of 100,000 row groups", 1.0, "s"),
            Bound(
                "status_chain_100k_s",
                "status of 100,000 row groups and as many seeded from them",
                1.0,
                "s",
            ),
        ),
    ),
    Bench(
        "engine",
        "engine_memory.py",
        ("--rows", "1000000", "--trace-groups", "2"),
        ("--rows", "200000", "--trace-groups", "1"),
        (
            Bound(
                "engine_rows_per_s",
                "engine rows/s, samplers + expressions",
                150_000,
                "rows/s",
                floor=True,
            ),
        ),
    ),
    Bench(
        "llm_client_cpu",
        "llm_client_cpu.py",
        ("--requests", "4000"),
        ("--requests", "1500"),
        (Bound("client_cpu_ms_per_request", "LLM client CPU per request at 50 ms", 0.5, "ms"),),
    ),
    _llm(100),
    _llm(200),
    Bench(
        "dagster_overhead",
        "dagster_overhead.py",
        ("--variants", "default"),
        ("--variants", "default", "--sizes", "10,1000", "--repeat", "1", "--run", "20"),
        (
            Bound("dagster_per_partition_s", "Dagster per partition (worst size)", 0.005, "s"),
            Bound("dagster_per_run_s", "Dagster per run (worst size)", 0.3, "s"),
        ),
    ),
]
UNBOUNDED = [
    Bench("chain_pipeline", "chain_pipeline.py", (), ()),
    Bench("request_slots", "request_slots.py", (), ("--n", "2000")),
    Bench("scale_out", "scale_out.py", (), ()),
]


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def run(bench: Bench, quick: bool) -> tuple[dict[str, float], float, str, str | None]:
    """(its RESULT values, prefixed; seconds; the load average before it; error or None)."""
    before = load()
    print(f"== {bench.name} ({before})", flush=True)
    t0 = time.perf_counter()
    args = bench.quick_args if quick else bench.args
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / bench.script), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    values: dict[str, float] = {}
    for line in proc.stdout:
        print("   " + line.rstrip(), flush=True)
        if line.startswith("RESULT "):
            for k, v in json.loads(line[len("RESULT ") :]).items():
                values[bench.prefix + k] = float(v)
    code = proc.wait()
    return values, time.perf_counter() - t0, before, None if code == 0 else f"exit {code}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller workloads, for a first look")
    p.add_argument("--all", action="store_true", help="also the benchmarks without a bound")
    p.add_argument("--only", default="", help="comma-separated benchmark names")
    args = p.parse_args()
    chosen = BENCHES + (UNBOUNDED if args.all else [])
    if args.only:
        names = set(args.only.split(","))
        chosen = [b for b in BENCHES + UNBOUNDED if b.name in names]
        if unknown := names - {b.name for b in chosen}:
            raise SystemExit(f"unknown benchmark(s): {sorted(unknown)}")

    rows: list[tuple[str, str, str, str, str]] = []
    for bench in chosen:
        values, seconds, before, error = run(bench, args.quick)
        if error is not None or not bench.bounds:
            rows.append((bench.name, error or "ran (no bound in issue 17)", "", "", before))
        for b in bench.bounds:
            if b.key not in values:
                rows.append((bench.name, b.label, "missing", "", before))
                continue
            v = values[b.key]
            shown = f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"
            rows.append(
                (bench.name, b.label, f"{shown} {b.unit}".strip(), f"{b.ratio(v):.2f}", before)
            )
        for key, label in bench.context:
            if key in values:
                rows.append((bench.name, label, f"{values[key]:.3f} x", "-", before))
        print(f"   ({seconds:.0f} s)", flush=True)

    print(f"\nissue 17 bounds: ratio <= 1.00 meets the bound ({load()} now; machine: {os.uname().machine}, {os.cpu_count()} cores)")  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("benchmark", "figure", "measured", "ratio")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  before")
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + f"  {r[4]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
