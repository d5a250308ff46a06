"""What Dagster is told about row groups (dd_assets/dagster/events.py), on a real instance (SQLite
in a temp DAGSTER_HOME): one materialization per partition per run, recorded as each row group
lands (or at the end when a step of the same run reads the asset), kept when the run fails
later, with provenance Dagster reads right, so nothing is "Unsynced" after a clean run."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster._utils.test.data_versions import get_stale_status_resolver

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.dagster.asset_checks import CURRENT_CHECK
from dd_assets.dagster.build import build_definitions
from dd_assets.dagster.names import current_sensor_name
from dd_assets.dagster.resources import STORE_KEY, StoreResource
from dd_assets.errors import DdAssetsError
from dd_assets.llm import client as llm_client
from dd_assets.runners.plan import plan_workflow
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import REPO, people_config, write_config

pytestmark = [pytest.mark.slow]


def _defs(cfg: Path, root: Path, *extra: dg.AssetsDefinition) -> dg.Definitions:
    defs = build_definitions([plan_workflow(load_workflow(cfg))], root=str(root))
    return dg.Definitions.merge(defs, dg.Definitions(assets=list(extra))) if extra else defs


def _records(instance: dg.DagsterInstance, key: dg.AssetKey) -> list[Any]:
    return instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key), limit=10_000
    ).records


def _per_run_and_partition(instance: dg.DagsterInstance, key: dg.AssetKey) -> Counter[Any]:
    return Counter((r.run_id, r.asset_materialization.partition) for r in _records(instance, key))


def _statuses(
    instance: dg.DagsterInstance, defs: dg.Definitions, key: dg.AssetKey, partitions: list[str]
) -> dict[str, str]:
    """Dagster's own stale status per partition (what the UI's "Unsynced" shows), with causes."""
    resolver = get_stale_status_resolver(instance, list(defs.assets or []))
    out = {}
    for pk in partitions:
        status = resolver.get_status(key, pk).value
        causes = [c.reason for c in resolver.get_stale_causes(key, pk)]
        out[pk] = status + (f" ({'; '.join(causes)})" if causes else "")
    return out


def _keys(n: int) -> list[str]:
    return [f"{i:05d}" for i in range(n)]


def test_chain_records_each_partition_once_per_run_and_nothing_unsynced(
    data_root: Path, tmp_path: Path
) -> None:
    for name in ("chain.yaml", "seeds"):
        src = REPO / "examples" / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    cfg = tmp_path / "chain.yaml"
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0  # a resume: all reused

    instance = dg.DagsterInstance.get()
    plan = plan_workflow(load_workflow(cfg))
    defs = _defs(cfg, data_root)
    for stage in plan.stages.values():
        key = dg.AssetKey(["chain", stage.name])
        partitions = _keys(stage.ref.num_row_groups)
        per = _per_run_and_partition(instance, key)
        assert set(per.values()) == {1}, f"{stage.name}: a partition recorded twice in a run"
        assert {pk for _, pk in per} == set(partitions)
        assert len({run for run, _ in per}) >= 2, "both materializes recorded every partition"
        # No false "Unsynced": every partition of every stage is fresh, downstream included.
        assert set(_statuses(instance, defs, key, partitions).values()) == {"FRESH"}, stage.name
        latest = _records(instance, key)[0].asset_materialization
        assert latest.tags["dagster/code_version"] == stage.ref.fingerprint
        assert latest.metadata["reused"].value is True
    final = dg.AssetKey(["chain", "reviews_final"])
    resolver = get_stale_status_resolver(instance, list(defs.assets or []))
    assert resolver.get_status(final).value == "FRESH", resolver.get_stale_causes(final)


def _file_join(tmp_path: Path) -> Path:
    """Three waves, each its own op: names and prices (file seeds), listing joining them row
    group by row group (identity partition mapping across waves)."""
    skus = pa.table({"sku": [f"S{i:03d}" for i in range(100)], "price": list(range(100))})
    pq.write_table(skus, tmp_path / "skus.parquet")
    size = {"num_records": 100, "buffer_size": 25}

    def expr(n: str, e: str) -> dict[str, str]:
        return {"name": n, "column_type": "expression", "expr": e}

    return write_config(
        tmp_path / "wf.yaml",
        {
            "name": "wf",
            "run": {"partitions_per_run": 2},
            "stages": [
                {**size, "name": "names", "seed": {"path": "skus.parquet"},
                 "columns": [expr("title", "Item {{ sku }}")]},
                {**size, "name": "prices", "seed": {"path": "skus.parquet"},
                 "columns": [expr("eur", "{{ price }} EUR")]},
                {**size, "name": "listing", "seed": {"stages": ["names", "prices"], "keys": ["sku"]},
                 "columns": [expr("text", "{{ title }}: {{ eur }}")]},
            ],
        },
    )  # fmt: skip


def test_a_downstream_wave_in_the_same_run_still_runs(data_root: Path, tmp_path: Path) -> None:
    """A "Materialize all" style run: three waves in one run. The upstream waves are read by a
    later step of the run, so they yield their Output (each partition's own metadata attached);
    the last wave is recorded live. Still one materialization per partition, nothing stale."""
    cfg = _file_join(tmp_path)
    defs = _defs(cfg, data_root)
    keys = [dg.AssetKey(["wf", s]) for s in ("names", "prices", "listing")]
    job = dg.Definitions.merge(
        defs, dg.Definitions(jobs=[dg.define_asset_job("all_waves", selection=keys)])
    ).resolve_job_def("all_waves")
    instance = dg.DagsterInstance.get()
    result = job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": "00000",
            "dagster/asset_partition_range_end": "00003",
        },
    )
    assert result.success
    steps = {e.step_key: e.event_type_value for e in result.all_events if e.is_step_event}
    assert "STEP_SKIPPED" not in steps.values(), steps
    for key in keys:
        per = _per_run_and_partition(instance, key)
        assert per == Counter({(result.run_id, pk): 1 for pk in _keys(4)}), key
        assert set(_statuses(instance, defs, key, _keys(4)).values()) == {"FRESH"}, key
        for record in _records(instance, key):
            md = record.asset_materialization.metadata
            pk = record.asset_materialization.partition
            assert md["rows"].value == 25 and md["path"].value.endswith(f"batch_{pk}.parquet")
    logs = "\n".join(e.user_message for e in instance.all_logs(result.run_id))
    assert "names: 4 row group(s)" in logs and "recorded at the end" in logs
    assert "listing: 4 row group(s)" in logs and "recorded live" in logs


def _llm_config(url: str) -> dict[str, Any]:
    cfg = people_config(num_records=80, buffer_size=10, partitions_per_run=8)
    cfg["run"]["row_groups_in_flight"] = 1
    cfg["models"] = {"gen": {"base_url": url, "model": "m", "max_retries": 0}}
    cfg["stages"].append(
        {
            "name": "bios",
            "num_records": 80,
            "buffer_size": 10,
            "seed": {"stage": "people", "mode": "row_group"},
            "columns": [
                {
                    "name": "bio",
                    "column_type": "llm-text",
                    "model_alias": "gen",
                    "prompt": "A bio of {{ customer.first_name }} from {{ city }}",
                }
            ],
        }
    )
    return cfg


def _break_after(mock: MockOpenAI, folder: Path, files: int) -> threading.Thread:
    """Make the endpoint refuse every request (401: the run stops) once `files` row groups of a
    stage are on disk."""

    def watch() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(list(folder.glob("*/parquet-files/batch_*.parquet"))) >= files:
                mock.fatal_status = 401
                return
            time.sleep(0.01)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("recorded", ["live", "at the end"])
def test_row_groups_landed_before_a_failure_are_in_the_instance(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recorded: str
) -> None:
    """The run fails after some row groups of `bios` landed: each of them has its
    materialization (once) in the instance, written before the run ended. Live: logged as
    each landed. At the end (a step of the run reads `bios`): logged when the step failed."""
    monkeypatch.setattr(llm_client, "BACKOFF_BASE_S", 0.001)
    with MockOpenAI(latency_s=0.02) as mock:
        cfg = write_config(tmp_path / "wf.yaml", _llm_config(mock.url))
        bios = dg.AssetKey(["wf", "bios"])

        @dg.asset(
            partitions_def=dg.StaticPartitionsDefinition(_keys(8)),
            deps=[dg.AssetDep(bios, partition_mapping=dg.IdentityPartitionMapping())],
        )
        def reader() -> None:
            raise AssertionError("must not run: its upstream failed")

        extra = (reader,) if recorded == "at the end" else ()
        defs = _defs(cfg, data_root, *extra)
        selection = [dg.AssetKey(["wf", "people"]), bios, *(a.key for a in extra)]
        job = dg.Definitions.merge(
            defs, dg.Definitions(jobs=[dg.define_asset_job("run", selection=selection)])
        ).resolve_job_def("run")
        instance = dg.DagsterInstance.get()
        _break_after(mock, data_root / "wf" / "bios", 3)
        with pytest.raises(DdAssetsError, match="401"):
            job.execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": "00000",
                    "dagster/asset_partition_range_end": "00007",
                },
            )

    run = instance.get_runs(limit=1)[0]
    assert run.status == dg.DagsterRunStatus.FAILURE
    ended = instance.get_run_record_by_id(run.run_id).end_time
    on_disk = sorted(p.stem[-5:] for p in (data_root / "wf" / "bios").rglob("batch_*.parquet"))
    assert 3 <= len(on_disk) < 8, on_disk
    records = _records(instance, bios)
    assert sorted(r.asset_materialization.partition for r in records) == on_disk
    assert all(r.run_id == run.run_id and r.timestamp < ended for r in records)


def test_config_edit_turns_materializations_current_red_until_rematerialized(
    data_root: Path, tmp_path: Path
) -> None:
    """Dagster marks each partition of a partitioned asset stale after a code version change,
    never the asset. The workflow's sensor re-evaluates `materializations_current` without a run, so
    the asset's check fails until the stage is materialized again."""
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=300, downstream=True))
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    instance = dg.DagsterInstance.get()
    people = dg.AssetKey(["wf", "people"])

    def tick(cursor: str | None) -> tuple[dict[str, Any], str | None]:
        defs = _defs(cfg, data_root)
        sensor = defs.resolve_sensor_def(current_sensor_name(plan_workflow(load_workflow(cfg))))
        context = dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            resources={STORE_KEY: StoreResource(root=str(data_root))},
        )
        data = sensor.evaluate_tick(context)
        for event in data.asset_events:  # what the daemon does with a sensor's asset events
            instance.report_runless_asset_event(event)
        return {e.asset_key.path[-1]: e for e in data.asset_events}, data.cursor

    events, cursor = tick(None)
    assert events["people"].passed and events["notes"].passed
    assert tick(cursor)[0] == {}, "an unchanged stage is not reported again"

    write_config(cfg, people_config(num_records=300, downstream=True, score_high=99))
    events, cursor = tick(cursor)
    assert not events["people"].passed and not events["notes"].passed
    assert "3 of 3 materialized partition(s) have no row group for the current config" in (
        events["people"].description or ""
    )
    latest = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(people, CURRENT_CHECK)
    )
    assert latest is not None and latest.status.value == "FAILED"
    # Dagster itself: each partition stale (new code version), the asset as such fresh.
    defs = _defs(cfg, data_root)
    assert set(_statuses(instance, defs, people, _keys(3)).values()) == {
        "STALE (has a new code version)"
    }

    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    latest = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(people, CURRENT_CHECK)
    )
    assert latest is not None and latest.status.value == "SUCCEEDED"  # the run's own evaluation
    events, _ = tick(cursor)
    assert events["people"].passed


def test_regenerated_upstream_makes_downstream_stale_until_it_is_rematerialized(
    data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data identity in Dagster: `--resume never --stage people` regenerates people with other
    LLM answers, so each people partition gets a new data version and every bios partition
    built from the old ones turns stale; materializing bios (which regenerates exactly those
    row groups) makes them fresh. A resume changes nothing."""
    monkeypatch.setattr(llm_client, "BACKOFF_BASE_S", 0.001)
    cfg_data = _llm_config("http://127.0.0.1:9")
    people, bios = cfg_data["stages"]
    # The LLM column moves up into people; bios only derives from it.
    people["columns"].append(dict(bios["columns"][0]))
    bios["columns"] = [{"name": "card", "column_type": "expression", "expr": "{{ bio }}!"}]
    instance = dg.DagsterInstance.get()
    key = {s: dg.AssetKey(["wf", s]) for s in ("people", "bios")}
    with MockOpenAI(content_template="first answer to {prompt}") as mock:
        cfg_data["models"]["gen"]["base_url"] = mock.url
        cfg = write_config(tmp_path / "wf.yaml", cfg_data)
        defs = _defs(cfg, data_root)
        assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
        assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0  # a resume
        for s in key:
            assert set(_statuses(instance, defs, key[s], _keys(8)).values()) == {"FRESH"}, s

        mock.content_template = "second answer to {prompt}"
        assert (
            cli.main(
                ["materialize", str(cfg), "--no-progress", "--resume", "never", "--stage", "people"]
            )
            == 0
        )
    statuses = _statuses(instance, defs, key["bios"], _keys(8))
    assert set(statuses.values()) == {"STALE (has a new dependency data version)"}, statuses
    versions = {
        r.asset_materialization.partition: r.asset_materialization.tags["dagster/data_version"]
        for r in _records(instance, key["people"])[:8]
    }
    assert len(set(versions.values())) == 8, "each row group its own content hash"

    assert cli.main(["materialize", str(cfg), "--no-progress", "--stage", "bios"]) == 0
    assert set(_statuses(instance, defs, key["bios"], _keys(8)).values()) == {"FRESH"}
    latest = _records(instance, key["bios"])[0].asset_materialization
    assert latest.metadata["reused"].value is False  # regenerated, not only re-recorded
