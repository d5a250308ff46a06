"""Resume = backfill: a backfill launched through Dagster's GraphQL API (as the UI's "Materialize
missing partitions" does), run by a real dagster-daemon and webserver, reuses row groups already on
disk and generates only the rest."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dd_assets.config import load_workflow
from dd_assets.dagster.asset_checks import CURRENT_CHECK
from dd_assets.dagster.names import LOCATION_NAME
from dd_assets.runners.checks import ROW_GROUP_CHECK
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.deployment import LAUNCH, STATUS
from dd_assets.testing.workflows import (
    REPO,
    graphql,
    isolated_env,
    people_config,
    running_webserver_and_fast_daemon,
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


class Dagster:
    def __init__(self, port: int, home: Path, tmp: Path, configs: Path):
        self.port = port
        self.home = home
        self.tmp = tmp
        self.configs = configs  # wf.yaml (people) and chain.yaml (examples/chain.yaml)
        self.root = tmp / "dd-data"

    def gql(self, query: str, variables: dict) -> dict:
        return graphql(self.port, query, variables)

    def daemon_log(self) -> str:
        return (self.tmp / "daemon.log").read_text()[-3000:]


@pytest.fixture(scope="module")
def dagster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dagster]:
    """One webserver and daemon for the module's tests (starting them was a large part of each
    test's time), on a folder of two workflows (one code location): wf.yaml (people) and a copy
    of examples/chain.yaml with its seeds. Each test reads only its own workflow's assets."""
    tmp = tmp_path_factory.mktemp("backfill")
    configs = tmp / "workflows"
    configs.mkdir()
    write_config(configs / "wf.yaml", people_config(num_records=1000, buffer_size=100))
    for name in ("chain.yaml", "seeds"):
        src = REPO / "examples" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, configs / name)
    env = isolated_env(tmp, configs)
    home = Path(env["DAGSTER_HOME"])
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    # What `dd-assets ui` starts (webserver and daemon, the way a user drives backfills; the
    # command itself is driven in tests/e2e/test_ui_browser.py), the daemon's backfill loop
    # ticking every 2 s instead of 30 s: most of a backfill's time was waiting for a tick.
    with running_webserver_and_fast_daemon(env, tmp) as (port, _):
        yield Dagster(port, home, tmp, configs)


def _people_files(root: Path) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in snapshot(root).items() if k.startswith("wf/")}


def _backfill_of_missing_partitions_reuses_row_groups_on_disk(
    dagster: Dagster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A run that crashed after checkpointing row groups 0-3: the files are on disk, but Dagster
    # never recorded their materializations, so the UI shows all ten partitions as missing.
    wf = load_workflow(dagster.configs / "wf.yaml")
    plan = plan_workflow(wf)["people"]
    store = PartitionStore(dagster.root)
    materialize(plan, store, range(4))
    before = _people_files(dagster.root)
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
        time.sleep(0.5)
        status = dagster.gql(STATUS, {"id": backfill_id})["partitionBackfillOrError"]["status"]
    assert status == "COMPLETED_SUCCESS", dagster.daemon_log()

    after = _people_files(dagster.root)
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
query($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    isPartitioned
    partitionKeys
    staleStatus
    partitionStats { numMaterialized numPartitions }
  }
}"""
STALE_BY_PARTITION = """
query($keys: [AssetKeyInput!], $partitions: [String!]) {
  assetNodes(assetKeys: $keys) { staleStatusByPartition(partitions: $partitions) }
}"""
BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill {
      status
      assetBackfillData { assetBackfillStatuses {
        ... on AssetPartitionsStatusCounts { assetKey { path } numPartitionsTargeted
          numPartitionsMaterialized }
        ... on UnpartitionedAssetStatus { assetKey { path } materialized }
      } }
    }
  }
}"""
ASSETS = "{ assetNodes { assetKey { path } } }"
LOCATIONS = "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"


def test_materialize_all_of_the_chain_then_a_backfill_of_missing_partitions_while_an_edit_shows(
    dagster: Dagster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's "Materialize all" on examples/chain.yaml, through GraphQL, as the UI launches it
    (a backfill of every asset over the root's partitions, checks included; the wave of four
    stages in runs of 4 row groups, so one run covers part of each stage), run by a real daemon:
    - every one of the 6 assets is targeted and materialized, the digest (which samples the
      finalized reviews) after reviews_final;
    - each partition has exactly one materialization per run, and nothing is "Unsynced";
    - no run records a failed whole-stage check for the row groups outside its range; the run
      that completes a stage records it passed; row_group_valid passed for every partition;
    - then a config edit: once the code location reloads, the workflow's sensor (in the daemon)
      turns `materializations_current` red for the edited stage, with no run;
    - while that is awaited (the daemon reloads every 60 s, the sensor ticks every 15 s), the
      other workflow's backfill of missing partitions reuses the row groups a crashed run left
      on disk (_backfill_of_missing_partitions_reuses_row_groups_on_disk: a test of its own, it
      waited for its backfill, then this one for the daemon, one after the other).
    One server (the module's) and one backfill for all of it (starting them is most of the
    time), with the daemon's backfill loop ticking every 2 s: a level of the graph waits a tick
    for its runs."""
    chain = dagster.configs / "chain.yaml"
    home, port = dagster.home, dagster.port
    locations = graphql(port, LOCATIONS)["workspaceOrError"]["locationEntries"]
    assert [entry["name"] for entry in locations] == [LOCATION_NAME]
    paths = [a["assetKey"]["path"] for a in graphql(port, ASSETS)["assetNodes"]]
    assert ["wf", "people"] in paths  # the folder's other workflow: not this test's
    paths = [p for p in paths if p[0] == "chain"]
    assert len(paths) == 6 and ["chain", "reviews_final"] in paths
    roots = [f"{i:05d}" for i in range(6)]  # the partitions of the root, reviews
    launched = graphql(
        port,
        LAUNCH,
        {"p": {"assetSelection": [{"path": k} for k in paths], "partitionNames": roots}},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    deadline = time.monotonic() + 600
    while True:
        backfill = graphql(port, BACKFILL_STATUS, {"id": launched["backfillId"]})
        backfill = backfill["partitionBackfillOrError"]
        if backfill["status"] != "REQUESTED":
            break
        assert time.monotonic() < deadline, "backfill still running after 600 s"
        time.sleep(0.5)
    assert backfill["status"] == "COMPLETED_SUCCESS", dagster.daemon_log()
    # A config edit, made at once: the daemon (the sensor's process) reloads its code location
    # only every 60 s (Dagster's RELOAD_WORKSPACE_INTERVAL), so the sooner the file changes, the
    # sooner its reload sees it. The webserver answers with what it loaded until it reloads.
    text = chain.read_text()
    assert "{{ stars }} stars." in text
    chain.write_text(text.replace("{{ stars }} stars.", "{{ stars }} stars!"))
    statuses = {
        "/".join(s["assetKey"]["path"]): s
        for s in backfill["assetBackfillData"]["assetBackfillStatuses"]
    }
    assert sorted(statuses) == sorted("/".join(k) for k in paths)
    for name, s in statuses.items():
        if "numPartitionsTargeted" in s:
            expected = 3 if name == "chain/digest" else 6
            assert s["numPartitionsTargeted"] == s["numPartitionsMaterialized"] == expected, s
        else:
            assert s["materialized"], s

    # Nothing "Unsynced", at asset level and per partition (what the UI shows).
    nodes = graphql(port, STALENESS, {"keys": [{"path": k} for k in paths]})["assetNodes"]
    for node in nodes:
        assert node["staleStatus"] == "FRESH", node
        if node["isPartitioned"]:
            n = len(node["partitionKeys"])
            assert node["partitionStats"] == {"numMaterialized": n, "numPartitions": n}
            by_partition = graphql(
                port,
                STALE_BY_PARTITION,
                {
                    "keys": [{"path": node["assetKey"]["path"]}],
                    "partitions": node["partitionKeys"],
                },
            )["assetNodes"][0]["staleStatusByPartition"]
            assert by_partition == ["FRESH"] * n, node

    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()
    runs = instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/backfill": launched["backfillId"]})
    )
    ranges = {
        (
            r.tags.get("dagster/asset_partition_range_start"),
            r.tags.get("dagster/asset_partition_range_end"),
        )
        for r in runs
    }
    assert ("00000", "00003") in ranges, ranges  # a run over part of the stages
    for path in paths:
        key = dg.AssetKey(path)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key), limit=100
        ).records
        per = Counter((r.run_id, r.asset_materialization.partition) for r in records)
        assert set(per.values()) == {1}, per
        if path[-1] == "reviews_final":
            continue
        partitions = sorted(pk for _, pk in per)
        assert partitions == [f"{i:05d}" for i in range(len(partitions))], per
        # Whole-stage checks: never failed by a run covering part of the stage; evaluated
        # (and passed) by the run that completed it.
        history = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(key, "row_groups_complete"), limit=10
        )
        assert all(r.status.value != "FAILED" for r in history), history
        assert any(r.status.value == "SUCCEEDED" for r in history), history
        rg_checks = instance.event_log_storage.get_asset_check_partition_info(
            [dg.AssetCheckKey(key, ROW_GROUP_CHECK)]
        )
        assert {i.partition_key: i.latest_execution_status.value for i in rg_checks} == {
            k: "SUCCEEDED" for k in partitions
        }
    final = instance.get_latest_materialization_event(dg.AssetKey(["chain", "reviews_final"]))
    first_digest = min(
        r.event_log_entry.timestamp
        for r in instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(["chain", "digest"])), limit=10
        ).records
    )
    assert final is not None and final.timestamp < first_digest

    # The edit (above), seen by the code location on reload: no run needed.
    reloaded = graphql(port, "mutation { reloadWorkspace { __typename } }")
    assert reloaded["reloadWorkspace"]["__typename"] == "Workspace", reloaded
    _backfill_of_missing_partitions_reuses_row_groups_on_disk(dagster, monkeypatch)
    check = dg.AssetCheckKey(dg.AssetKey(["chain", "reviews"]), CURRENT_CHECK)
    deadline = time.monotonic() + 120
    while True:
        record = instance.get_latest_asset_check_evaluation_record(check)
        if record is not None and record.status.value == "FAILED":
            break
        assert time.monotonic() < deadline, dagster.daemon_log()
        time.sleep(0.5)
    assert record.run_id == "", "evaluated by the sensor, without a run"
    evaluation = record.event.asset_check_evaluation
    assert "6 of 6 materialized partition(s) have no row group" in evaluation.description
