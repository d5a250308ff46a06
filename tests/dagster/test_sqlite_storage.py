"""dd-assets' SQLite storage (dd_assets/dagster/sqlite_storage.py: kept engines, batched writes)
against Dagster's own, on the same CLI runs: the same events, materializations and provenance per
partition, asset records, check executions and staleness; and an instance switches from one to
the other keeping its history (same files).

One test for all of it (a two-stage chained workflow of 6 row groups, five `materialize`
commands; 129 s at load 14 on two cores): every assertion compares the same runs on both
storages, so they share those runs rather than each starting its own."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.definitions.data_version import DATA_VERSION_TAG
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.utils import make_new_run_id
from dagster._utils.test.data_versions import get_stale_status_resolver

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.dagster import sqlite_storage
from dd_assets.dagster.build import build_definitions
from dd_assets.dagster.instance import NEW_INSTANCE_YAML, get_instance
from dd_assets.dagster.names import asset_key
from dd_assets.dagster.sqlite_storage import DdSqliteEventLogStorage
from dd_assets.runners.plan import plan_workflow
from dd_assets.testing.workflows import people_config, write_config

pytestmark = [pytest.mark.slow]

DAGSTER_SQLITE = "telemetry:\n  enabled: false\n"  # an instance made before dd-assets' storage


def _materialize(home: Path, root: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DD_ASSETS_ROOT", str(root))
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0


def _what_dagster_shows(instance: dg.DagsterInstance, cfg: Path, root: Path) -> dict[str, Any]:
    """Everything the UI reads about the workflow's assets, without storage ids (which differ
    between two instances when row groups land in another order)."""
    plan = plan_workflow(load_workflow(cfg))
    defs = build_definitions([plan], root=str(root))
    resolver = get_stale_status_resolver(instance, list(defs.assets or []))
    out: dict[str, Any] = {}
    for stage in plan.stages.values():
        key = asset_key(stage)
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key), limit=1000
        ).records
        newest: dict[str, Any] = {}
        for r in records:  # newest first
            newest.setdefault(r.asset_materialization.partition, r)
        entry = instance.get_asset_records([key])[0].asset_entry
        assert entry.last_materialization_record is not None
        assert entry.last_materialization_record.storage_id == records[0].storage_id
        assert entry.last_run_id == records[0].run_id
        checks = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(key, "row_group_valid"), limit=1000
        )
        latest_check: dict[str, Any] = {}
        for c in checks:  # newest first
            latest_check.setdefault(c.partition, c)
        for pk, c in latest_check.items():  # each evaluation targets its partition's newest
            target = c.event.dagster_event.event_specific_data.target_materialization_data
            assert target.storage_id == newest[pk].storage_id, (stage.name, pk)
        planned = instance.event_log_storage.get_latest_planned_materialization_info(key, "00005")
        out[stage.name] = {
            "materializations": Counter(r.asset_materialization.partition for r in records),
            "data_versions": {
                pk: r.event_log_entry.tags[DATA_VERSION_TAG] for pk, r in newest.items()
            },
            "tags": {pk: sorted(r.event_log_entry.tags) for pk, r in newest.items()},
            "metadata": {pk: sorted(r.asset_materialization.metadata) for pk, r in newest.items()},
            "checks": {pk: c.status.value for pk, c in latest_check.items()},
            "stale": {pk: resolver.get_status(key, pk).value for pk in newest},
            "planned_in_last_run": planned is not None and planned.run_id == records[0].run_id,
        }
    runs = instance.get_runs()
    out["runs"] = [
        (r.status.value, Counter(e.dagster_event_type for e in instance.all_logs(r.run_id)))
        for r in reversed(runs)
    ]
    return out


def test_dd_assets_storage_records_what_dagsters_own_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = write_config(
        tmp_path / "wf.yaml",
        people_config(num_records=600, buffer_size=100, partitions_per_run=4, downstream=True),
    )
    shown = {}
    for name, yaml_text in (("dd-assets", NEW_INSTANCE_YAML), ("dagster", DAGSTER_SQLITE)):
        home, root = tmp_path / f"home-{name}", tmp_path / f"data-{name}"
        home.mkdir()
        (home / "dagster.yaml").write_text(yaml_text)
        _materialize(home, root, cfg, monkeypatch)  # 6 row groups per stage: runs of 4 and 2
        _materialize(home, root, cfg, monkeypatch)  # a resume: every row group reused
        instance = dg.DagsterInstance.get()
        assert isinstance(instance.event_log_storage, DdSqliteEventLogStorage) == (
            name == "dd-assets"
        )
        shown[name] = _what_dagster_shows(instance, cfg, root)

    ours, theirs = shown["dd-assets"], shown["dagster"]
    assert ours == theirs
    people = ours["people"]
    assert people["materializations"] == Counter({f"{i:05d}": 2 for i in range(6)})
    assert set(people["checks"].values()) == {"SUCCEEDED"}
    assert set(people["stale"].values()) == {"FRESH"}
    assert set(ours["notes"]["stale"].values()) == {"FRESH"}
    assert people["planned_in_last_run"]
    assert [status for status, _ in ours["runs"]] == ["SUCCESS"] * len(ours["runs"])

    # Same files: the instance made with dd-assets' storage, opened with Dagster's own, has its
    # history, and runs on; and back again.
    home, root = tmp_path / "home-dd-assets", tmp_path / "data-dd-assets"
    (home / "dagster.yaml").write_text(DAGSTER_SQLITE)
    _materialize(home, root, cfg, monkeypatch)
    (home / "dagster.yaml").write_text(NEW_INSTANCE_YAML)
    instance = dg.DagsterInstance.get()
    assert isinstance(instance.event_log_storage, DdSqliteEventLogStorage)
    switched = _what_dagster_shows(instance, cfg, root)
    assert switched["people"]["materializations"] == Counter({f"{i:05d}": 3 for i in range(6)})
    assert switched["runs"][: len(ours["runs"])] == ours["runs"]
    assert set(switched["people"]["stale"].values()) == {"FRESH"}


def _in_file_alone(path: Path, tmp: Path) -> int:
    """Events in a run's `<run id>.db` itself, its WAL left aside: what a copy of the file, or
    the webserver's watch on it (it streams a running run's logs on the file's modification),
    sees."""
    copy = tmp / "copy.db"
    shutil.copyfile(path, copy)
    with closing(sqlite3.connect(copy)) as conn:
        return conn.execute("SELECT count(*) FROM event_logs").fetchone()[0]


def _materialization(run_id: str, i: int) -> EventLogEntry:
    return EventLogEntry(
        error_info=None,
        level="debug",
        user_message="",
        run_id=run_id,
        timestamp=time.time(),
        dagster_event=DagsterEvent(
            DagsterEventType.ASSET_MATERIALIZATION.value,
            "job",
            event_specific_data=StepMaterializationData(
                dg.AssetMaterialization(asset_key="a", partition=f"{i:05d}")
            ),
        ),
    )


def test_run_log_reaches_its_file_and_storage_ids_are_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage keeps a run log's connection open (sqlite_storage._Checkpoints): its events
    reach `<run id>.db` at most CHECKPOINT_SECONDS later, all of them once the run's status
    changes; and the storage tells the thread that wrote materializations their storage ids
    (events.py points check evaluations at them)."""
    wait = 1.0
    monkeypatch.setattr(sqlite_storage, "CHECKPOINT_SECONDS", wait)
    storage = DdSqliteEventLogStorage(str(tmp_path / "logs"))
    run_id = make_new_run_id()
    path = Path(storage.path_for_shard(run_id))
    assert storage.take_stored() == []  # this thread's recording starts
    storage.store_event_batch([_materialization(run_id, 0), _materialization(run_id, 1)])
    assert _in_file_alone(path, tmp_path) == 2  # the log's first write: checkpointed at once
    first = time.monotonic()
    storage.store_event(_materialization(run_id, 2))  # within CHECKPOINT_SECONDS: waits
    if time.monotonic() - first < wait / 2:  # (a starved machine may take longer)
        assert _in_file_alone(path, tmp_path) == 2
    stored = storage.take_stored()
    assert [e.dagster_event.partition for e, _ in stored] == ["00000", "00001", "00002"]
    records = storage.fetch_materializations(dg.AssetKey("a"), limit=10).records
    assert sorted(sid for _, sid in stored) == sorted(r.storage_id for r in records)
    deadline = time.monotonic() + wait + 10
    while _in_file_alone(path, tmp_path) < 3:  # the timer's checkpoint
        assert time.monotonic() < deadline
        time.sleep(0.1)
    storage.store_event_batch([_materialization(run_id, 3)])
    storage.store_event(
        EventLogEntry(
            error_info=None,
            level="info",
            user_message="a log line",
            run_id=run_id,
            timestamp=time.time(),
        )
    )
    storage.store_event(
        EventLogEntry(
            error_info=None,
            level="debug",
            user_message="",
            run_id=run_id,
            timestamp=time.time(),
            dagster_event=DagsterEvent(DagsterEventType.RUN_SUCCESS.value, "job"),
        )
    )
    # The run's status changed: checkpointed at once, with what waited.
    assert _in_file_alone(path, tmp_path) == 6
    assert len(storage.get_records_for_run(run_id).records) == 6
    storage.dispose()


def test_a_new_instance_makes_the_empty_run_log_before_its_first_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs copy an empty run log (`run_log_template`); making it takes ~0.6 s of CPU. A new
    instance makes it when it is created, not during its first run, whose requests are going out
    while Dagster starts the run (runners/materialize_ahead.py)."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    instance = get_instance()
    storage = instance.event_log_storage
    assert isinstance(storage, DdSqliteEventLogStorage)
    made = list(Path(storage._base_dir).glob(".dd-assets-run-log-*.sqlite"))
    assert [p.name for p in made] == [Path(storage.run_log_template()).name]
    instance.dispose()
