"""Resume = backfill: a backfill launched through Dagster's GraphQL API (as the UI's "Materialize
missing partitions" does), run by a real dagster-daemon and webserver, reuses row groups already on
disk and generates only the rest."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dd_assets.config import load_workflow
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.workflows import (
    isolated_env,
    people_config,
    running_ui,
    snapshot,
    write_config,
)

pytestmark = [pytest.mark.slow]

DAGSTER_YAML = """\
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
telemetry:
  enabled: false
"""

LAUNCH = """
mutation($p: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $p) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}"""

STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status }
  }
}"""


class Dagster:
    def __init__(self, port: int, home: Path):
        self.port = port
        self.home = home

    def gql(self, query: str, variables: dict) -> dict:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql",
            data=json.dumps({"query": query, "variables": variables}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            body = json.loads(resp.read())
        assert "errors" not in body, body
        return body["data"]


@pytest.fixture
def workflow(tmp_path: Path) -> Path:
    return write_config(tmp_path / "wf.yaml", people_config(num_records=1000, buffer_size=100))


@pytest.fixture
def dagster(tmp_path: Path, workflow: Path) -> Iterator[Dagster]:
    env = isolated_env(tmp_path, workflow)
    home = Path(env["DAGSTER_HOME"])
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    # `dd-assets ui` = `dagster dev`: webserver and daemon, the way a user drives backfills.
    with running_ui(workflow, env, tmp_path) as (port, _):
        yield Dagster(port, home)


def test_backfill_of_missing_partitions_reuses_row_groups_on_disk(
    tmp_path: Path, workflow: Path, dagster: Dagster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run that crashed after checkpointing row groups 0-3: the files are on disk, but Dagster
    # never recorded their materializations, so the UI shows all ten partitions as missing.
    wf = load_workflow(workflow)
    plan = plan_workflow(wf)["people"]
    store = PartitionStore(tmp_path / "dd-data")
    materialize(plan, store, range(4))
    before = snapshot(tmp_path / "dd-data")
    assert len(before) == 4

    keys = [f"{i:05d}" for i in range(10)]
    launched = dagster.gql(
        LAUNCH, {"p": {"assetSelection": [{"path": ["wf", "people"]}], "partitionNames": keys}}
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    deadline = time.monotonic() + 240
    status = "REQUESTED"
    while status == "REQUESTED":
        assert time.monotonic() < deadline, f"backfill still {status} after 240 s"
        time.sleep(1)
        status = dagster.gql(STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
    assert status == "COMPLETED_SUCCESS", (tmp_path / "ui.log").read_text()[-3000:]

    after = snapshot(tmp_path / "dd-data")
    assert len(after) == 10
    assert {k: after[k] for k in before} == before, "the backfill regenerated a row group"
    assert sum(i.rows for i in store.completed(plan.ref).values()) == 1000

    monkeypatch.setenv("DAGSTER_HOME", str(dagster.home))
    instance = dg.DagsterInstance.get()
    key = dg.AssetKey(["wf", "people"])
    assert instance.get_materialized_partitions(key) == set(keys)
    for partition, reused in (("00002", True), ("00007", False)):
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
        ).records[0]
        assert record.asset_materialization.metadata["reused"].value is reused
    runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert len(runs) == 3  # ten partitions, four per run (partitions_per_run: 4)


STALENESS = """
query($keys: [AssetKeyInput!], $partitions: [String!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    staleStatusByPartition(partitions: $partitions)
    partitionStats { numMaterialized numPartitions }
  }
}"""


@pytest.fixture
def two_stages(tmp_path: Path) -> Path:
    return write_config(
        tmp_path / "wf.yaml", people_config(num_records=1000, buffer_size=100, downstream=True)
    )


def test_backfill_records_each_partition_once_fails_no_check_and_shows_config_edits(
    tmp_path: Path, two_stages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UI backfill of two chained stages (three runs of four row groups, checks included, as
    the UI launches them): each partition materialized once, nothing "Unsynced" through
    GraphQL, no run records a failed whole-stage check for the row groups outside its range.
    Then a config edit: after the code location reloads, the workflow's sensor (in the daemon)
    turns `materializations_current` red for the asset, with no run."""
    env = isolated_env(tmp_path, two_stages)
    home = Path(env["DAGSTER_HOME"])
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    keys = [f"{i:05d}" for i in range(10)]
    stages = {s: dg.AssetKey(["wf", s]) for s in ("people", "notes")}
    with running_ui(two_stages, env, tmp_path) as (port, _):
        dagster = Dagster(port, home)
        launched = dagster.gql(
            LAUNCH,
            {
                "p": {
                    "assetSelection": [{"path": k.path} for k in stages.values()],
                    "partitionNames": keys,
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        deadline = time.monotonic() + 240
        status = "REQUESTED"
        while status == "REQUESTED":
            assert time.monotonic() < deadline, f"backfill still {status} after 240 s"
            time.sleep(1)
            status = dagster.gql(STATUS, {"id": launched["backfillId"]})[
                "partitionBackfillOrError"
            ]["status"]
        assert status == "COMPLETED_SUCCESS", (tmp_path / "ui.log").read_text()[-3000:]

        nodes = dagster.gql(
            STALENESS,
            {"keys": [{"path": k.path} for k in stages.values()], "partitions": keys},
        )["assetNodes"]
        for node in nodes:
            assert node["staleStatusByPartition"] == ["FRESH"] * 10, node
            assert node["partitionStats"] == {"numMaterialized": 10, "numPartitions": 10}

        monkeypatch.setenv("DAGSTER_HOME", str(home))
        instance = dg.DagsterInstance.get()
        runs = instance.get_runs(
            filters=dg.RunsFilter(tags={"dagster/backfill": launched["backfillId"]})
        )
        assert len(runs) == 3
        for key in stages.values():
            per = Counter(
                (r.run_id, r.asset_materialization.partition)
                for r in instance.fetch_materializations(
                    dg.AssetRecordsFilter(asset_key=key), limit=100
                ).records
            )
            assert sorted(pk for _, pk in per) == keys and set(per.values()) == {1}, per
            # Whole-stage checks: never failed by a run covering part of the stage; evaluated
            # (and passed) by the run that completed it.
            history = instance.event_log_storage.get_asset_check_execution_history(
                dg.AssetCheckKey(key, "row_groups_complete"), limit=10
            )
            assert all(r.status.value != "FAILED" for r in history), history
            assert any(r.status.value == "SUCCEEDED" for r in history), history
            rg_checks = instance.event_log_storage.get_asset_check_partition_info(
                [dg.AssetCheckKey(key, "row_group_valid")]
            )
            assert {i.partition_key: i.latest_execution_status.value for i in rg_checks} == {
                k: "SUCCEEDED" for k in keys
            }

        # A config edit, seen by the code location on reload: no run needed.
        write_config(
            two_stages,
            people_config(num_records=1000, buffer_size=100, downstream=True, score_high=99),
        )
        reloaded = dagster.gql("mutation { reloadWorkspace { __typename } }", {})
        assert reloaded["reloadWorkspace"]["__typename"] == "Workspace", reloaded
        check = dg.AssetCheckKey(stages["people"], "materializations_current")
        deadline = time.monotonic() + 120
        while True:
            record = instance.get_latest_asset_check_evaluation_record(check)
            if record is not None and record.status.value == "FAILED":
                break
            assert time.monotonic() < deadline, (tmp_path / "ui.log").read_text()[-3000:]
            time.sleep(2)
        assert record.run_id == "", "evaluated by the sensor, without a run"
        evaluation = record.event.asset_check_evaluation
        assert "10 of 10 materialized partition(s) have no row group" in evaluation.description
