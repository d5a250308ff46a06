"""Benchmark: how soon the CLI answers. `validate`, `preview -n 5` and `status` of the quickstart
(bound: first output within 0.5 s; `status` both on an empty data root and on one holding two of
its row groups), and `status` of a stage of 100,000 row groups (bound: 1 s), alone and with a
second stage seeded from it row group by row group (whose staleness status works out), each as a
fresh process, the way a user runs them.

    .venv/bin/python bench/cli_speed.py [--fixture DIR] [--repeat 5]

Times are the best of --repeat runs (wall time to the first byte on stdout, and to exit; CPU of
the process), for Python with and without compiled bytecode (.pyc) of dd_assets: an installed
wheel has it, a source tree run with PYTHONDONTWRITEBYTECODE=1 compiles every module at start.

The 100,000-row-group stage is built once in --fixture (default: ~/.cache/dd-assets-bench) and
reused: one real row group written by the store, the others written with the same footer keys
(checked) straight to parquet, which takes ~1 min instead of ~10 (no fsync, lock or seal check
per file). Status is timed with its footer index (store/footer_index.py) as a second run finds
it, and without (the first run after the index is deleted).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dd_assets.store.layout import FOOTER_INDEX

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart.yaml"
BIG_ROW_GROUPS = 100_000
DD_ASSETS = str(Path(sys.executable).with_name("dd-assets"))


def _env(pyc: bool, root: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ, DD_ASSETS_ROOT=str(root), COLUMNS="120")
    env.pop("DAGSTER_HOME", None)
    if pyc:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache)  # .pyc of dd_assets, kept out of the tree
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def timed(args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, float]:
    """(seconds to the first byte on stdout, seconds to exit, CPU seconds) of one run."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [DD_ASSETS, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd
    )
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.perf_counter() - t0
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"dd-assets {' '.join(args)} failed: {err.decode()[-2000:]}")
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime
    return first, wall, cpu


def best(args: list[str], env: dict[str, str], cwd: Path, repeat: int) -> tuple[float, ...]:
    runs = [timed(args, env, cwd) for _ in range(repeat)]
    return tuple(min(r[i] for r in runs) for i in range(3))


def quickstart_data(root: Path) -> None:
    """Two row groups of the quickstart on disk, written as materialize writes them."""
    from dd_assets.config import load_workflow
    from dd_assets.runners.materialize import materialize_wave
    from dd_assets.runners.plan import plan_workflow
    from dd_assets.store.partition_store import PartitionStore

    plan = plan_workflow(load_workflow(QUICKSTART))
    materialize_wave(list(plan.stages.values()), PartitionStore(root), range(2))


def build_fixture(folder: Path, n: int = BIG_ROW_GROUPS, *, chained: bool = False) -> Path:
    """A workflow whose stage `s` has n row groups of one row, all on disk; with `chained`, a
    second stage `t` seeded from it row group by row group, as many row groups, each recording
    the data version of the one it was built from (what its staleness is told by). Returns
    the config."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml

    from dd_assets.config import load_workflow
    from dd_assets.runners.plan import plan_workflow
    from dd_assets.store.footer import META_PREFIX, content_hash
    from dd_assets.store.partition_store import PartitionStore

    config = folder / "big.yaml"
    done = folder / "complete"
    if done.exists():
        return config
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    column = {"name": "c", "column_type": "sampler", "sampler_type": "category"}
    column["params"] = {"values": ["a", "b"]}
    stages = [{"name": "s", "num_records": n, "buffer_size": 1, "columns": [column]}]
    if chained:
        seed = {"stage": "s", "mode": "row_group"}
        d = {"name": "d", "column_type": "expression", "expr": "{{ c }}!"}
        stages.append({"name": "t", "num_records": n, "buffer_size": 1, "seed": seed, "columns": [d]})  # fmt: skip
    config.write_text(yaml.safe_dump({"name": "big", "stages": stages}))
    plan = plan_workflow(load_workflow(config))
    store = PartitionStore(folder / "data")
    versions: list[str] = []  # stage s's, by row group
    t0 = time.perf_counter()
    for stage in [st["name"] for st in stages]:
        sp = plan[stage]
        store.prepare(sp.ref, "if_possible")

        def table(rg: int, stage: str = stage) -> pa.Table:
            c = "ab"[rg % 2]
            return pa.table({"c": [c]} if stage == "s" else {"c": [c], "d": [c + "!"]})

        inputs = {"s": versions[0]} if stage == "t" else None
        first = store.write_row_group(sp.ref, 0, table(0), {"rows": 1}, inputs=inputs)
        if stage == "s":
            versions.append(first.data_version)
        kv0 = {
            k[len(META_PREFIX) :].decode(): v.decode()
            for k, v in (pq.read_schema(first.path).metadata or {}).items()
            if k.startswith(META_PREFIX)
        }
        made = set()
        for rg in range(1, n):
            tb = table(rg)
            kv = dict(kv0, row_group=str(rg), row_start=str(rg), row_end=str(rg + 1))
            kv["data_version"] = content_hash(tb)
            if stage == "s":
                versions.append(kv["data_version"])
            else:  # as write_row_group records them
                kv["inputs"] = json.dumps({"s": versions[rg]}, sort_keys=True)
            made = set(kv)
            meta = {META_PREFIX + k.encode(): v.encode() for k, v in kv.items()}
            pq.write_table(tb.replace_schema_metadata(meta), store.batch_path(sp.ref, rg))
            if rg % 10_000 == 0:
                print(f"  fixture {stage}: {rg:,} row groups ({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
        assert made == set(kv0), "the fixture's footer keys differ from write_row_group's"
    done.touch()
    return config


def _status_of_big(fixture: Path, cache: Path, repeat: int, results: dict[str, float], key: str, chained: bool) -> None:  # fmt: skip
    """`status` of the 100,000-row-group fixture, with its footer indexes (timed) and without
    (the first run, which writes them)."""
    big = build_fixture(fixture, chained=chained)
    env = _env(True, big.parent / "data", cache)
    for index in (big.parent / "data").glob(f"big/*/*/{FOOTER_INDEX}"):
        index.unlink()
    _, cold, _ = timed(["status", str(big)], env, REPO)  # reads every footer, writes the index
    _, wall, cpu = best(["status", str(big)], env, REPO, repeat)
    what = "two chained stages of" if chained else "a stage of"
    print(f"status of {what} {BIG_ROW_GROUPS:,} row groups: {wall:.3f} s (cpu {cpu:.3f} s) with its footer index; {cold:.1f} s without")  # fmt: skip
    results[key] = wall
    results[f"{key.removesuffix('_s')}_without_index_s"] = cold


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fixture", type=Path, default=Path.home() / ".cache" / "dd-assets-bench")
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args()

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache, root = Path(tmp) / "pycache", Path(tmp) / "data"
        with_data = Path(tmp) / "with-data"
        quickstart_data(with_data)
        for pyc in (True, False):
            env = _env(pyc, root, cache)
            if pyc:  # compile once, as an install does (the store's and engine's modules too)
                for cmd in (["validate"], ["preview"], ["status"]):
                    subprocess.run([DD_ASSETS, *cmd, str(QUICKSTART)], env=env, check=True,
                                   capture_output=True)  # fmt: skip
            label = "pyc" if pyc else "no-pyc"
            for name, cmd, data in [
                ("validate", ["validate", str(QUICKSTART)], root),
                ("preview", ["preview", str(QUICKSTART), "-n", "5"], root),
                ("status", ["status", str(QUICKSTART)], root),
                ("status_data", ["status", str(QUICKSTART)], with_data),
            ]:
                env["DD_ASSETS_ROOT"] = str(data)
                first, wall, cpu = best(cmd, env, REPO, args.repeat)
                print(f"{label:6s} {name:11s} first output {first:.3f} s, exit {wall:.3f} s, cpu {cpu:.3f} s", flush=True)  # fmt: skip
                results[f"{name}_first_output_s_{label}"] = first

        _status_of_big(args.fixture / f"status-{BIG_ROW_GROUPS}", cache, args.repeat, results, "status_100k_s", chained=False)  # fmt: skip
        _status_of_big(args.fixture / f"status-chain-{BIG_ROW_GROUPS}", cache, args.repeat, results, "status_chain_100k_s", chained=True)  # fmt: skip
    print("RESULT " + json.dumps(results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
