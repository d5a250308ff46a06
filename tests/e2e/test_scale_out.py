"""Scale-out on Dagster's own machinery, on one machine (issue 16): a PostgreSQL instance, a
separate `dagster-webserver` and `dagster-daemon` with the queued run coordinator allowing 4
runs at once, run workers launched by the daemon, the HTTP LLM mock, the LLM request cache and
request slots in the instance's database (dd_assets/testing/deployment.py). A backfill of a
two-stage workflow with an LLM column runs as 4 runs at once; one run's processes are SIGKILLed
mid-way; its partitions are backfilled again through GraphQL. Then: every row once, identical
to a single-process run, no temp file left, and no answer the killed run had received asked
again.

The data root is a local folder shared by the runs (the object-store root of the issue is not
implemented: docs/scaling.md)."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pytest

from dd_assets.config import load_workflow
from dd_assets.llm.pg_cache import TABLE
from dd_assets.runners.materialize import materialize_wave
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.deployment import (
    TERMINATE,
    Deployment,
    most_in_flight,
    run_pids,
    running_deployment,
    two_stage_workflow,
)
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.postgres import PgServer
from dd_assets.testing.workflows import temp_files

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ROWS = 160
BUFFER = 10  # 16 row groups
PER_RUN = 4  # 4 runs of 4 row groups
PARALLEL = 4  # max_parallel_requests, for all runs together
LATENCY = 0.25


@pytest.fixture(scope="module")
def deployment(
    postgres: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    with MockOpenAI(latency_s=LATENCY) as mock:
        workflows = {
            name: two_stage_workflow(
                name, mock.url, rows=ROWS, buffer=BUFFER, per_run=PER_RUN, parallel=PARALLEL
            )
            for name in ("wf_kill", "wf_overlap")
        }
        with running_deployment(
            tmp_path_factory.mktemp("scale-out"), postgres, workflows, mock
        ) as d:
            yield d


def _keys(rgs: range | list[int]) -> list[str]:
    return [f"{i:05d}" for i in rgs]


def _files(root: Path, wf: str, stage: str = "qa") -> list[Path]:
    return sorted(
        p for p in (root / wf / stage).rglob("batch_*.parquet") if ".dd-tmp." not in p.name
    )


def _table(store: PartitionStore, wf: str, stage: str) -> pa.Table:
    plan = plan_workflow(load_workflow(Path(os.environ["DD_ASSETS_CONFIG"]) / f"{wf}.yaml"))
    return store.dataset(plan[stage].ref).to_table()


def test_backfill_on_four_workers_survives_a_killed_run(deployment: Deployment) -> None:
    d, mock, wf = deployment, deployment.mock, "wf_kill"
    asked_before = len(mock.bodies)
    t0 = time.monotonic()
    first = d.backfill(wf, _keys(range(ROWS // BUFFER)))

    # Kill one run once it has written a row group of its range and holds answers of another.
    victim = None
    deadline = time.monotonic() + 240
    while victim is None:
        assert time.monotonic() < deadline, d.log.read_text()[-4000:]
        assert d.status(first) == "REQUESTED", d.log.read_text()[-4000:]
        for run in d.runs(first):
            if run.status != dg.DagsterRunStatus.STARTED:
                continue
            lo = int(run.tags["dagster/asset_partition_range_start"])
            done = [p for p in _files(d.root, wf) if lo <= int(p.stem[-5:]) < lo + PER_RUN]
            if 1 <= len(done) < PER_RUN - 1:
                victim = run
                break
        time.sleep(0.05)
    pids = run_pids(victim.run_id)
    assert pids, f"no process of run {victim.run_id}"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with d.pg.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT row FROM {TABLE} WHERE workflow = %s AND stage = 'qa'", (wf,))
        answered_at_kill = {r[0] for r in cur.fetchall()}
    lo = int(victim.tags["dagster/asset_partition_range_start"])
    killed_keys = _keys(range(lo, lo + PER_RUN))

    # A run worker killed with SIGKILL never reports; the operator marks it (the UI's
    # "Terminate" -> force) and backfills its partitions again.
    time.sleep(1)
    assert d.gql(TERMINATE, {"id": victim.run_id})["terminateRun"]["__typename"] in (
        "TerminateRunSuccess",
        "TerminateRunFailure",
    )
    d.wait(first)
    runs = d.runs(first)
    with d.instance() as inst:
        in_flight = most_in_flight(runs, inst)
        statuses = {r.run_id: r.status for r in runs}
    assert len(runs) == ROWS // BUFFER // PER_RUN
    assert in_flight >= 3, f"at most {in_flight} runs at once"
    assert statuses[victim.run_id] in (dg.DagsterRunStatus.CANCELED, dg.DagsterRunStatus.FAILURE)
    assert sum(s == dg.DagsterRunStatus.SUCCESS for s in statuses.values()) == len(runs) - 1
    assert mock.peak_concurrency <= PARALLEL  # for all runs together (request slots)

    again = d.backfill(wf, killed_keys)
    assert d.wait(again) == "COMPLETED_SUCCESS", d.log.read_text()[-4000:]
    wall = time.monotonic() - t0

    # Every row once, identical to one process generating the same config alone.
    store = PartitionStore(d.root)
    got = {s: _table(store, wf, s) for s in ("qa", "notes")}
    assert got["qa"].num_rows == got["notes"].num_rows == ROWS
    assert len(set(got["qa"].column("rid").to_pylist())) == ROWS
    assert temp_files(d.root) == []
    asked = [b["messages"][-1]["content"] for b in mock.bodies[asked_before:]]
    rid_of_row = got["qa"].column("rid").to_pylist()
    for row in answered_at_kill:
        n = sum(rid_of_row[row] in prompt for prompt in asked)
        assert n == 1, f"row {row} was answered before the kill and asked {n} times"
    assert len(asked) >= ROWS
    ref_root = d.root.parent / "reference"
    plan = plan_workflow(load_workflow(d.configs / f"{wf}.yaml"))
    materialize_wave(
        [plan["qa"], plan["notes"]], PartitionStore(ref_root), range(ROWS // BUFFER), in_flight=4
    )
    ref = PartitionStore(ref_root)
    for s in ("qa", "notes"):
        assert got[s].equals(_table(ref, wf, s)), f"stage {s} differs from a single-process run"
    print(f"\n4-worker backfill with a kill and a re-backfill: {wall:.1f} s")


def test_overlapping_backfills_of_one_stage_end_whole_and_identical(
    deployment: Deployment,
) -> None:
    d, wf = deployment, "wf_overlap"
    # Two backfills sharing partitions 00002-00003, at once: the documented outcome
    # (docs/scaling.md) is that both succeed, a shared row group is generated by both and
    # written whole (the last rename wins), and the content is what one run makes (sampler
    # values depend on the row index only; LLM answers come from the shared cache or, asked
    # twice, are the same for a deterministic endpoint like the mock).
    a = d.backfill(wf, _keys(range(0, 4)))
    b = d.backfill(wf, _keys(range(2, 6)))
    assert d.wait(a) == "COMPLETED_SUCCESS", d.log.read_text()[-4000:]
    assert d.wait(b) == "COMPLETED_SUCCESS", d.log.read_text()[-4000:]
    store = PartitionStore(d.root)
    plan = plan_workflow(load_workflow(d.configs / f"{wf}.yaml"))
    done = store.completed(plan["qa"].ref)
    assert sorted(done) == list(range(6))
    assert temp_files(d.root) == []
    ref_root = d.root.parent / "reference-overlap"
    materialize_wave([plan["qa"], plan["notes"]], PartitionStore(ref_root), range(6))
    ref = PartitionStore(ref_root)
    for s in ("qa", "notes"):
        assert store.dataset(plan[s].ref).to_table().equals(ref.dataset(plan[s].ref).to_table()), (
            f"stage {s}: overlapping backfills left content a single run would not"
        )
