"""Resume = backfill: a backfill launched through Dagster's GraphQL API (as the UI's "Materialize
missing partitions" does), run by a real dagster-daemon and webserver, reuses row groups already on
disk and generates only the rest."""

from __future__ import annotations

import json
import time
import urllib.request
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
