"""Scale-out on Dagster's own machinery, on one machine (issue 16): a PostgreSQL instance, a
separate `dagster-webserver` and `dagster-daemon` with the queued run coordinator allowing 4
runs at once, run workers launched by the daemon, the HTTP LLM mock, the LLM request cache and
request slots in the instance's database (dd_assets/testing/deployment.py). A backfill of a
two-stage workflow with an LLM column runs as 4 runs at once; one run's processes are SIGKILLed
mid-way; its partitions are backfilled again through GraphQL. Then: every row once, identical
to a single-process run, no half-written object, and no answer the killed run had received asked
again.

The data root is `s3://` on a local S3-compatible server (moto, the session's `s3_server`): the
run workers share no folder, only the bucket, PostgreSQL and the endpoint. The workload is as
small as still shows the behaviour (12 row groups of 5 rows, 4 runs of 3, mock latency 2 s):
the deployment's processes, not the rows, are what these tests are about and what they cost."""

from __future__ import annotations

import contextlib
import json
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
from dd_assets.store import files
from dd_assets.store.layout import StageRef
from dd_assets.store.objects import ObjectPath
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
from dd_assets.testing.s3 import S3Server

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.s3]

ROWS = 60
BUFFER = 5  # 12 row groups
PER_RUN = 3  # 4 runs of 3 row groups
PARALLEL = 4  # max_parallel_requests, for all runs together
# A run's window (its start to end events) must outlast the daemon's launches of the others for
# them to be seen in flight together. However slow a run is, the daemon can launch the last run
# later than the first one ends on a loaded machine (CI once saw 2 at once at 2 s per request):
# so the mock answers nothing (`hold`) until every run of the backfill has started, and no run
# can end before the last one starts. The requests held count against the model's deadline,
# which is raised so that a slow launch cannot turn them into retries (asked twice).
LATENCY = 2.0
HELD_DEADLINE_S = 600.0
# Once every run has started (the windows overlap already), and for the reference runs made in
# this process, the answers come at once: what is checked then (rows, the cache, identity)
# depends on no timing, and at 2 s per request with 4 slots those phases were over half of the
# module's time (~90 s of ~200 on a quiet machine).
FAST = 0.0


@pytest.fixture(scope="module")
def deployment(
    postgres: PgServer, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    root = f"s3://{s3_server.create_bucket()}/data"
    saved = {k: os.environ.get(k) for k in s3_server.env()}
    os.environ.update(s3_server.env())  # this process reads the bucket too
    with MockOpenAI(latency_s=LATENCY) as mock:
        workflows = {
            name: two_stage_workflow(
                name,
                mock.url,
                rows=ROWS,
                buffer=BUFFER,
                per_run=per_run,
                parallel=PARALLEL,
                in_flight=1,  # a run is caught between its row groups: 1 landed, 1 under way
            )
            # the overlap test: each backfill one run (4 partitions), the runs overlapping
            for name, per_run in (("wf_kill", PER_RUN), ("wf_overlap", 4))
        }
        for wf in workflows.values():
            wf["models"]["gen"]["timeout_s"] = HELD_DEADLINE_S
        try:
            with running_deployment(
                tmp_path_factory.mktemp("scale-out"),
                postgres,
                workflows,
                mock,
                root=root,
                store_env=s3_server.env(),
            ) as d:
                yield d
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _keys(rgs: range | list[int]) -> list[str]:
    return [f"{i:05d}" for i in rgs]


def _done_keys(store: PartitionStore, ref: StageRef) -> list[int]:
    """Row groups whose object is listed (one listing, as a poll)."""
    return [int(p.name[6:11]) for p in store.batch_paths(ref)]


def _no_half_written_objects(s3: S3Server, root: str) -> None:
    """Every object of the bucket is whole (each parquet reads, each JSON parses), no upload is
    pending (the store never uses multipart uploads) and no lock object is left behind."""
    bucket = files.root_path(root)
    assert isinstance(bucket, ObjectPath)
    keys = s3.keys(bucket.bucket)
    assert keys
    for key in keys:
        path = ObjectPath(f"{bucket.scheme}:", bucket.bucket, *key.split("/"))
        assert not key.endswith(".lock") and ".dd-tmp." not in key, key
        if key.endswith(".parquet"):
            files.parquet_file(path).metadata  # noqa: B018 (reads the footer: the file is whole)
        elif key.endswith(".json"):
            json.loads(files.read_bytes(path) or b"")
    assert s3.pending_uploads(bucket.bucket) == []


def _table(store: PartitionStore, wf: str, stage: str) -> pa.Table:
    plan = plan_workflow(load_workflow(Path(os.environ["DD_ASSETS_CONFIG"]) / f"{wf}.yaml"))
    return store.dataset(plan[stage].ref).to_table()


def _all_started(d: Deployment, backfill_id: str, n: int) -> None:
    """Wait until the backfill's `n` runs have all started (their start times are recorded)."""
    deadline = time.monotonic() + 240
    while True:
        runs = d.runs(backfill_id)
        with d.instance() as inst:
            started = [inst.get_run_record_by_id(r.run_id) for r in runs]
        if len(runs) == n and all(
            rec is not None and rec.start_time is not None for rec in started
        ):
            return
        assert time.monotonic() < deadline, d.log.read_text()[-4000:]
        time.sleep(0.2)


def test_backfill_on_four_workers_survives_a_killed_run(
    deployment: Deployment, s3_server: S3Server
) -> None:
    d, mock, wf = deployment, deployment.mock, "wf_kill"
    store = PartitionStore(d.root)
    qa = plan_workflow(load_workflow(d.configs / f"{wf}.yaml"))["qa"].ref
    asked_before = len(mock.bodies)
    t0 = time.monotonic()
    mock.hold = True
    try:
        first = d.backfill(wf, _keys(range(ROWS // BUFFER)))
        _all_started(d, first, ROWS // BUFFER // PER_RUN)
    finally:
        mock.hold = False

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
            done = [rg for rg in _done_keys(store, qa) if lo <= rg < lo + PER_RUN]
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
    mock.latency_s = FAST  # the runs' windows overlap already (`hold` above)
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
    got = {s: _table(store, wf, s) for s in ("qa", "notes")}
    assert got["qa"].num_rows == got["notes"].num_rows == ROWS
    assert len(set(got["qa"].column("rid").to_pylist())) == ROWS
    _no_half_written_objects(s3_server, d.root)
    asked = [b["messages"][-1]["content"] for b in mock.bodies[asked_before:]]
    rid_of_row = got["qa"].column("rid").to_pylist()
    for row in answered_at_kill:
        n = sum(rid_of_row[row] in prompt for prompt in asked)
        assert n == 1, f"row {row} was answered before the kill and asked {n} times"
    assert len(asked) >= ROWS
    ref_root = d.home.parent / "reference"
    plan = plan_workflow(load_workflow(d.configs / f"{wf}.yaml"))
    materialize_wave(
        [plan["qa"], plan["notes"]], PartitionStore(ref_root), range(ROWS // BUFFER), in_flight=4
    )
    ref = PartitionStore(ref_root)
    for s in ("qa", "notes"):
        assert got[s].equals(_table(ref, wf, s)), f"stage {s} differs from a single-process run"
    print(f"\n4-worker backfill with a kill and a re-backfill: {wall:.1f} s")


def test_overlapping_backfills_of_one_stage_end_whole_and_identical(
    deployment: Deployment, s3_server: S3Server
) -> None:
    d, wf = deployment, "wf_overlap"
    d.mock.latency_s = LATENCY  # the module's other test may have left it at FAST
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
    _no_half_written_objects(s3_server, d.root)
    ref_root = d.home.parent / "reference-overlap"
    d.mock.latency_s = FAST  # the reference run's answers: the same at any pace
    materialize_wave([plan["qa"], plan["notes"]], PartitionStore(ref_root), range(6))
    ref = PartitionStore(ref_root)
    for s in ("qa", "notes"):
        assert store.dataset(plan[s].ref).to_table().equals(ref.dataset(plan[s].ref).to_table()), (
            f"stage {s}: overlapping backfills left content a single run would not"
        )
