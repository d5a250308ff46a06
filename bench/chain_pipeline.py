"""Benchmark: does a chain pipeline? examples/llm-chain.yaml's two stages (the second seeded row
group by row group from the first) run one after the other, then as one pipelined wave.

    .venv/bin/python bench/chain_pipeline.py [--latency 0.2]

Prints wall(pipelined) / (wall(stage 1) + wall(stage 2)), 1.0 meaning no overlap, and
wall(pipelined) / wall(longest stage), 1.0 meaning perfect overlap. Two scenarios: both stages on
one model (one `max_parallel_requests` budget, which each stage saturates alone, so the sum is the
bound) and each stage on its own model budget (where pipelining can overlap them).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from llm_chain import CONFIG, _mock_server


def _workflow(separate_models: bool):
    import yaml

    from dd_assets.config.loader import parse_workflow

    data = yaml.safe_load(CONFIG.read_text())
    if separate_models:
        # The second stage on its own endpoint budget (another deployment, another provider):
        # then pipelining can overlap the stages instead of sharing one budget.
        data["models"]["rewriter"] = dict(data["models"]["writer"])
        for col in data["stages"][1]["columns"]:
            col["model_alias"] = "rewriter"
    return parse_workflow(data)


def _run(latency: float, separate_models: bool) -> None:
    from dd_assets.runners.materialize import materialize, materialize_wave
    from dd_assets.runners.plan import plan_workflow
    from dd_assets.store.partition_store import PartitionStore

    stage_walls: dict[str, float] = {}
    with _mock_server(latency, 0.0) as seq_counts, tempfile.TemporaryDirectory() as tmp:
        wf = _workflow(separate_models)
        plans = plan_workflow(wf).stages
        store = PartitionStore(tmp)
        for name, plan in plans.items():
            t0 = time.perf_counter()
            materialize(
                plan, store, range(plan.ref.num_row_groups), in_flight=wf.run.row_groups_in_flight
            )
            stage_walls[name] = time.perf_counter() - t0
    with _mock_server(latency, 0.0) as wave_counts, tempfile.TemporaryDirectory() as tmp:
        wf = _workflow(separate_models)
        plans = plan_workflow(wf).stages
        t0 = time.perf_counter()
        materialize_wave(
            list(plans.values()),
            PartitionStore(tmp),
            range(next(iter(plans.values())).ref.num_row_groups),
            in_flight=wf.run.row_groups_in_flight,
        )
        wave = time.perf_counter() - t0
    seq = sum(stage_walls.values())
    longest = max(stage_walls.values())
    label = "separate model budgets" if separate_models else "one shared model budget"
    stages = ", ".join(f"{k} {v:.2f} s" for k, v in stage_walls.items())
    print(f"[{label}] sequential: {stages}; sum {seq:.2f} s ({seq_counts.requests} requests)")
    print(
        f"[{label}] pipelined: {wave:.2f} s ({wave_counts.requests} requests, peak"
        f" {wave_counts.peak_concurrency}); pipelined / sum of stages = {wave / seq:.3f};"
        f" pipelined / longest stage = {wave / longest:.3f}",
        flush=True,
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latency", type=float, default=0.2)
    args = p.parse_args()
    # One budget: both stages already saturate it alone, so the best possible is the sum.
    _run(args.latency, separate_models=False)
    # Two budgets: the best possible is the longest stage (plus one row group of lag).
    _run(args.latency, separate_models=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
