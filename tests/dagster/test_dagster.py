"""The stage assets against a real Dagster instance (SQLite in a temp DAGSTER_HOME): partitions,
per-partition metadata, reuse on rerun, the IO manager, status, export."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import dagster as dg
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.config.fingerprint import workflow_fingerprints
from dd_assets.dagster.build import build_definitions
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.status import workflow_status
from dd_assets.store.layout import default_root
from dd_assets.store.partition_store import MissingRowGroupsError, PartitionStore
from dd_assets.testing.workflows import (
    BIN,
    isolated_env,
    people_config,
    snapshot,
    write_config,
)

pytestmark = [pytest.mark.slow]


@pytest.fixture
def env(data_root: Path) -> Path:
    return data_root


def _materialize(cfg: Path, *args: str) -> int:
    return cli.main(["materialize", str(cfg), "--no-progress", *args])


def _partition_event(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1
    ).records
    assert records, f"no materialization recorded for {key.to_user_string()} {partition}"
    return records[0].asset_materialization


def _run_with(defs: dg.Definitions, user_asset: dg.AssetsDefinition) -> dg.ExecuteInProcessResult:
    """Run a user's asset that reads a stage, as a code location combining both would."""
    merged = dg.Definitions.merge(defs, dg.Definitions(assets=[user_asset]))
    job = merged.resolve_implicit_global_asset_job_def()
    return job.execute_in_process(
        asset_selection=[user_asset.key], instance=dg.DagsterInstance.get()
    )


def test_definitions_mirror_the_config(tmp_path: Path) -> None:
    wf = load_workflow(write_config(tmp_path / "wf.yaml", people_config(downstream=True)))
    defs = build_definitions([plan_workflow(wf)], root=str(tmp_path / "dd-data"))
    fps = workflow_fingerprints(wf)
    graph = defs.resolve_asset_graph()
    people = graph.get(dg.AssetKey(["wf", "people"]))
    notes = graph.get(dg.AssetKey(["wf", "notes"]))
    assert people.code_version == fps["people"].hex
    assert notes.code_version == fps["notes"].hex
    assert people.partitions_def.get_partition_keys()[:3] == ["00000", "00001", "00002"]
    assert len(people.partitions_def.get_partition_keys()) == 10
    assert people.backfill_policy.max_partitions_per_run == 4
    assert people.group_name == "wf"
    assert notes.parent_keys == {dg.AssetKey(["wf", "people"])}


def test_definitions_validate_cli(tmp_path: Path) -> None:
    """What `dagster definitions validate` (and so the webserver and daemon) load must load."""
    cfg = write_config(tmp_path / "wf.yaml", people_config(downstream=True))
    env = isolated_env(tmp_path, cfg)
    out = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-m", "dd_assets.dagster.definitions"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Validation successful" in out.stdout + out.stderr


def test_materialize_records_every_partition_with_metadata(env, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=950))
    assert _materialize(cfg) == 0
    instance = dg.DagsterInstance.get()
    key = dg.AssetKey(["wf", "people"])
    assert instance.get_materialized_partitions(key) == {f"{i:05d}" for i in range(10)}
    fp = workflow_fingerprints(load_workflow(cfg))["people"].hex

    last = _partition_event(instance, key, "00009")
    md = last.metadata
    assert md["rows"].value == 50  # 950 records: the last group is short
    assert md["reused"].value is False
    assert Path(md["path"].value).is_file()
    assert md["fingerprint"].value == fp[:12]
    assert "| person_id |" in md["preview"].value
    assert last.tags["dagster/code_version"] == fp

    first = _partition_event(instance, key, "00000")
    assert first.metadata["rows"].value == 100
    table = pq.read_table(first.metadata["path"].value)
    assert table.num_rows == 100
    footer = pq.read_metadata(first.metadata["path"].value).metadata
    assert footer[b"dd_assets.fingerprint"].decode() == fp


def test_rerun_reuses_every_row_group(env, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config())
    assert _materialize(cfg) == 0
    before = snapshot(tmp_path / "dd-data")
    assert len(before) == 10
    assert _materialize(cfg) == 0
    assert snapshot(tmp_path / "dd-data") == before
    md = _partition_event(dg.DagsterInstance.get(), dg.AssetKey(["wf", "people"]), "00004")
    assert md.metadata["reused"].value is True


def test_partition_range_then_rest(env, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config())
    assert _materialize(cfg, "--partitions", "2-4") == 0
    assert sorted(p.name for p in (tmp_path / "dd-data").rglob("batch_*.parquet")) == [
        "batch_00002.parquet",
        "batch_00003.parquet",
        "batch_00004.parquet",
    ]
    first = snapshot(tmp_path / "dd-data")
    assert _materialize(cfg) == 0
    after = snapshot(tmp_path / "dd-data")
    assert len(after) == 10
    assert {k: after[k] for k in first} == first


def test_io_manager_serves_a_lazy_dataset_to_downstream_assets(env, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=500))
    assert _materialize(cfg) == 0
    wf = load_workflow(cfg)
    root = str(tmp_path / "dd-data")
    defs = build_definitions([plan_workflow(wf)], root=root)
    seen: dict[str, object] = {}

    @dg.asset(ins={"people": dg.AssetIn(key=dg.AssetKey(["wf", "people"]))})
    def city_counts(people: pads.Dataset) -> dg.MaterializeResult:
        seen["type"] = type(people)
        seen["rows"] = people.count_rows()
        seen["files"] = len(people.files)
        return dg.MaterializeResult(metadata={"rows": people.count_rows()})

    result = _run_with(defs, city_counts)
    assert result.success
    assert issubclass(seen["type"], pads.Dataset)
    assert seen == {"type": seen["type"], "rows": 500, "files": 5}


def test_io_manager_names_missing_partitions(env, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=500))
    assert _materialize(cfg, "--partitions", "0-1") == 0
    defs = build_definitions([plan_workflow(load_workflow(cfg))], root=str(tmp_path / "dd-data"))

    @dg.asset(ins={"people": dg.AssetIn(key=dg.AssetKey(["wf", "people"]))})
    def consumer(people: pads.Dataset) -> None:
        raise AssertionError("must not run with partitions missing")

    with pytest.raises(MissingRowGroupsError, match=r"00002.*materialize them first"):
        _run_with(defs, consumer)


def test_status_reports_progress_and_upstream_staleness(env, tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=500, downstream=True))
    assert _materialize(cfg, "--partitions", "0-2") == 0
    st = {
        s.stage: s
        for s in workflow_status(plan_workflow(load_workflow(cfg)), PartitionStore(default_root()))
    }
    assert (st["people"].done, st["people"].total, st["people"].records) == (3, 5, 300)
    assert st["people"].missing == [3, 4]
    assert st["notes"].done == 3 and not st["notes"].stale

    # Edit only the upstream stage: both get new fingerprints; notes says why it is stale.
    write_config(cfg, people_config(num_records=500, downstream=True, score_high=99))
    st = {
        s.stage: s
        for s in workflow_status(plan_workflow(load_workflow(cfg)), PartitionStore(default_root()))
    }
    assert st["people"].stale and "params" in (st["people"].stale_reason or "")
    assert st["notes"].stale
    assert "upstream stage 'people' changed" in (st["notes"].stale_reason or "")
    assert st["notes"].done == 0

    capsys.readouterr()
    assert cli.main(["status", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "upstream stage 'people'" in out and "0/5" in out


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_export_streams_every_row(env, tmp_path: Path, fmt: str) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=730))
    assert _materialize(cfg) == 0
    out = tmp_path / "out" / f"people.{fmt}"
    assert cli.main(["export", str(cfg), "--format", fmt, "-o", str(out)]) == 0
    if fmt == "jsonl":
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == 730
        assert isinstance(rows[0]["customer"], dict)
        assert len({r["person_id"] for r in rows}) == 730
    elif fmt == "csv":
        lines = out.read_text().splitlines()
        assert len(lines) == 731  # header + rows
        assert '"person_id"' in lines[0]
    else:
        assert pq.read_metadata(out).num_rows == 730
    assert not list(out.parent.glob("*.dd-tmp.*"))
