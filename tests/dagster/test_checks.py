"""Asset checks per stage (dd_assets/checks.py, dd_assets/asset_checks.py, `dd-assets check`):
run through a real Dagster instance in a temp DAGSTER_HOME, on real materialized data, and on
files crafted to break one check each (same footer keys, so only that check should notice)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.config import load_workflow, parse_workflow
from dd_assets.engine.schema import stage_schema
from dd_assets.runners.checks import checks_for, run_checks
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.partition_store import CorruptStageError, PartitionStore
from dd_assets.testing.workflows import isolated_env, people_config, write_config

pytestmark = [pytest.mark.slow]

PEOPLE = dg.AssetKey(["wf", "people"])
NOTES = dg.AssetKey(["wf", "notes"])
CONFIG = people_config(num_records=500, downstream=True)  # 5 row groups of 100 per stage


def _use(tmp_path: Path, mp: pytest.MonkeyPatch) -> Path:
    e = isolated_env(tmp_path)
    for k in ("DAGSTER_HOME", "DD_ASSETS_ROOT"):
        mp.setenv(k, e[k])
    mp.chdir(tmp_path)
    return write_config(tmp_path / "wf.yaml", CONFIG)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full `dd-assets materialize`, made once: data root and Dagster instance (SQLite)."""
    tmp = tmp_path_factory.mktemp("template")
    with pytest.MonkeyPatch.context() as mp:
        cfg = _use(tmp, mp)
        assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    return tmp


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: Path) -> Path:
    """A copy of the template (data and instance), so each test breaks its own files."""
    for name in ("dd-data", "dagster_home"):
        shutil.copytree(template / name, tmp_path / name, dirs_exist_ok=True)
    return _use(tmp_path, monkeypatch)


def _check(cfg: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = cli.main(["check", str(cfg), *args])
    out = capsys.readouterr()
    return rc, out.out + out.err


def _latest(key: dg.AssetKey, name: str) -> dg.AssetCheckEvaluation:
    record = dg.DagsterInstance.get().get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(key, name)
    )
    assert record is not None and record.event is not None, f"no evaluation of {name}"
    evaluation = record.event.asset_check_evaluation
    assert evaluation is not None
    return evaluation


def _numbers(key: dg.AssetKey, name: str) -> dict[str, Any]:
    return {k: v.value for k, v in _latest(key, name).metadata.items()}


def _batch(root: Path, stage: str, rg: int) -> Path:
    (path,) = root.glob(f"wf/{stage}/*/parquet-files/batch_{rg:05d}.parquet")
    return path


def _rewrite(
    path: Path,
    table_fn: Callable[[pa.Table], pa.Table] = lambda t: t,
    footer_fn: Callable[[dict[bytes, bytes]], None] = lambda kv: None,
) -> None:
    """Rewrite a row-group file as a hand edit or a buggy writer would: same footer keys
    (changed only by footer_fn), new content; replaced atomically (a new inode)."""
    table = pq.read_table(path)
    meta = dict(table.schema.metadata or {})
    footer_fn(meta)
    table = table_fn(table).replace_schema_metadata(meta)
    tmp = path.with_name(path.name + ".edit")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def test_all_checks_pass_after_a_full_materialize(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    instance = dg.DagsterInstance.get()
    assert instance.get_materialized_partitions(PEOPLE) == {f"{i:05d}" for i in range(5)}
    # Materialize runs record the row-group check per partition, not the whole-stage checks.
    assert (
        instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(PEOPLE, "row_groups_complete")
        )
        is None
    )
    for key in (PEOPLE, NOTES):
        per_partition = instance.event_log_storage.get_asset_check_partition_info(
            [dg.AssetCheckKey(key, "row_group_valid")]
        )
        assert {i.partition_key: i.latest_execution_status.value for i in per_partition} == {
            f"{i:05d}": "SUCCEEDED" for i in range(5)
        }
        # Each evaluation targets its partition's latest materialization (the UI shows it
        # current, not outdated).
        assert all(i.is_current for i in per_partition)

    rc, out = _check(cfg, capsys)
    assert rc == 0, out
    # the ten of before, plus profile_drift (the stage has a category sampler column), plus
    # pages_intact on each of the two stages
    assert "FAIL" not in out and "ok: 13 check(s), 0 warning(s)" in out
    assert "profile_drift" in out

    # Every check of both stages is recorded in the instance, with its numbers as metadata.
    for key, names in (
        (PEOPLE, {"row_groups_complete", "rows_within_drop_budget", "schema_matches_config",
                  "footer_fingerprint_matches", "pages_intact", "uuid_columns_unique"}),
        (NOTES, {"row_groups_complete", "row_groups_current", "rows_within_drop_budget",
                 "schema_matches_config", "footer_fingerprint_matches", "pages_intact"}),
    ):  # fmt: skip
        for name in names:
            ev = _latest(key, name)
            assert ev.passed, (key, name, ev.description)
    assert _numbers(PEOPLE, "row_groups_complete") | {"missing_head": []} == {
        "done": 5,
        "total": 5,
        "missing": 0,
        "missing_head": [],
        "contiguous_through": "00004",
        "records": 500,
        "files_not_counted": 0,
    }
    assert _numbers(PEOPLE, "uuid_columns_unique")["duplicates"] == 0
    assert _numbers(PEOPLE, "uuid_columns_unique")["distinct"] == 500
    assert _numbers(NOTES, "schema_matches_config")["files_checked"] == 5
    assert _numbers(PEOPLE, "footer_fingerprint_matches")["files"] == 5
    budget = _numbers(PEOPLE, "rows_within_drop_budget")
    assert (budget["budget"], budget["dropped_rows"], budget["planned_rows"]) == (0.01, 0, 500)
    assert _latest(PEOPLE, "uuid_columns_unique").severity == dg.AssetCheckSeverity.ERROR
    assert _latest(PEOPLE, "rows_within_drop_budget").severity == dg.AssetCheckSeverity.ERROR

    from dd_assets.dagster.build import build_definitions

    defs = build_definitions([plan_workflow(load_workflow(cfg))], root=str(tmp_path / "dd-data"))
    # The code location exposes the checks (the 13 whole-stage ones, and per stage
    # row_group_valid and materializations_current) and a job running the whole-stage ones alone.
    assert len(defs.resolve_asset_graph().asset_check_keys) == 13 + 2 * 2
    job = defs.resolve_job_def("wf__checks_job")
    assert job.execute_in_process(instance=instance).success


def test_partial_materialize_fails_completeness(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _use(tmp_path, monkeypatch)
    assert cli.main(["materialize", str(cfg), "--no-progress", "--partitions", "0-1"]) == 0
    rc, out = _check(cfg, capsys, "--stage", "people")
    assert rc == 1
    assert "FAIL people/row_groups_complete: 3 of 5 row groups missing: 00002-00004" in out
    assert "failed: 1 blocking check(s): people/row_groups_complete" in out
    n = _numbers(PEOPLE, "row_groups_complete")
    assert (n["done"], n["total"], n["missing"], n["missing_head"]) == (
        2,
        5,
        3,
        ["00002", "00003", "00004"],
    )
    assert n["contiguous_through"] == "00001"
    assert not _latest(PEOPLE, "row_groups_complete").passed
    # --stage people ran only people's checks.
    assert (
        dg.DagsterInstance.get().get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(NOTES, "row_groups_complete")
        )
        is None
    )


def test_extra_column_fails_the_schema_check_naming_it(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _rewrite(
        _batch(tmp_path / "dd-data", "people", 3),
        lambda t: t.append_column("bogus", pa.array(["x"] * t.num_rows)),
    )
    rc, out = _check(cfg, capsys)
    assert rc == 1
    assert "people/schema_matches_config" in out and "'bogus'" in out
    n = _numbers(PEOPLE, "schema_matches_config")
    assert (n["files_checked"], n["mismatches"], n["mismatched_columns"]) == (5, 1, ["bogus"])
    assert n["first_mismatches"] == {"batch_00003.parquet": ["extra column 'bogus' (string)"]}
    # Same footer keys: every other check still passes.
    assert _latest(PEOPLE, "row_groups_complete").passed
    assert _latest(PEOPLE, "footer_fingerprint_matches").passed


def test_changed_column_type_is_named(cfg: Path, tmp_path: Path) -> None:
    _rewrite(
        _batch(tmp_path / "dd-data", "people", 0),
        lambda t: t.set_column(3, "score", t.column("score").cast(pa.float64())),
    )
    wf = load_workflow(cfg)
    out = {
        o.name: o
        for o in run_checks(plan_workflow(wf)["people"], PartitionStore(tmp_path / "dd-data"))
    }
    assert not out["schema_matches_config"].passed
    assert "column 'score' is double, config says int64" in out["schema_matches_config"].description


def test_foreign_fingerprint_is_reported_not_raised(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _batch(tmp_path / "dd-data", "people", 2)
    _rewrite(path, footer_fn=lambda kv: kv.update({b"dd_assets.fingerprint": b"f" * 64}))
    wf = load_workflow(cfg)
    # The store refuses the whole stage...
    with pytest.raises(CorruptStageError, match="belongs elsewhere"):
        PartitionStore(tmp_path / "dd-data").completed(plan_workflow(wf)["people"].ref)
    # ...the check names the file and the rest of the checks still run.
    rc, out = _check(cfg, capsys)
    assert rc == 1
    assert "batch_00002.parquet" in out and "ffffffffffff" in out
    n = _numbers(PEOPLE, "footer_fingerprint_matches")
    assert (n["files"], n["mismatches"]) == (5, 1)
    assert "batch_00002.parquet" in n["first_mismatches"]
    # That row group does not count as done.
    assert _numbers(PEOPLE, "row_groups_complete")["missing_head"] == ["00002"]
    assert _latest(PEOPLE, "schema_matches_config").passed
    assert _latest(PEOPLE, "uuid_columns_unique").passed
    assert _latest(NOTES, "footer_fingerprint_matches").passed


def test_unreadable_file_is_reported(cfg: Path, tmp_path: Path) -> None:
    _batch(tmp_path / "dd-data", "people", 4).write_bytes(b"not parquet")
    wf = load_workflow(cfg)
    out = {
        o.name: o
        for o in run_checks(plan_workflow(wf)["people"], PartitionStore(tmp_path / "dd-data"))
    }
    fp = out["footer_fingerprint_matches"]
    assert not fp.passed and "batch_00004.parquet: unreadable parquet" in fp.description
    assert out["row_groups_complete"].numbers["missing"] == 1


def test_duplicate_uuids_fail_with_their_count(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "dd-data"
    ids = pq.read_table(_batch(root, "people", 0), columns=["person_id"]).column(0)
    # Row group 1 gets row group 0's ids (and 10 of them twice within itself).
    dup = pa.chunked_array([ids.combine_chunks().slice(0, 90), ids.combine_chunks().slice(0, 10)])
    _rewrite(_batch(root, "people", 1), lambda t: t.set_column(0, "person_id", dup))
    rc, out = _check(cfg, capsys, "--stage", "people")
    assert rc == 1
    assert "people/uuid_columns_unique" in out and "100 duplicate id(s)" in out
    n = _numbers(PEOPLE, "uuid_columns_unique")
    assert (n["rows"], n["distinct"], n["duplicates"]) == (500, 400, 100)
    assert n["per_column"]["person_id"]["duplicates"] == 100
    assert ids[0].as_py() in n["duplicate_samples"]["person_id"]
    assert _latest(PEOPLE, "schema_matches_config").passed


def test_drop_budget_exceeded_is_blocking(
    cfg: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Over the whole stage, dropped rows / planned rows above run.max_drop_rate fails the check
    (the same test `materialize` turns into exit code 5)."""

    def stats(kv: dict[bytes, bytes]) -> None:
        s = json.loads(kv[b"dd_assets.stats"])
        s.update(planned_rows=100, dropped_rows=30, drop_reasons={"line: expression": 30})
        kv[b"dd_assets.stats"] = json.dumps(s).encode()

    _rewrite(_batch(tmp_path / "dd-data", "people", 3), footer_fn=stats)
    rc, out = _check(cfg, capsys)
    assert rc == 1, out
    assert "FAIL people/rows_within_drop_budget: 30 of 500 planned rows dropped (6.0%); over" in out
    assert "failed: 1 blocking check(s): people/rows_within_drop_budget" in out
    ev = _latest(PEOPLE, "rows_within_drop_budget")
    assert not ev.passed and ev.severity == dg.AssetCheckSeverity.ERROR
    n = _numbers(PEOPLE, "rows_within_drop_budget")
    assert (n["worst_row_group"], n["worst_drop_rate"], n["budget"]) == ("00003", 0.3, 0.01)
    assert (n["drop_rate"], n["dropped_rows"], n["row_groups_with_drops"]) == (0.06, 30, 1)
    assert n["top_drop_reasons"] == {"line: expression": 30}


# ---- pure checks on crafted stores (no Dagster) -----------------------------------------------

LLM_WORKFLOW: dict[str, Any] = {
    "name": "llmwf",
    "models": {"gen": {"base_url": "http://127.0.0.1:9/v1", "model": "m"}},
    "run": {"early_stop": {"max_failure_rate": 0.2}},
    "stages": [
        {
            "name": "s",
            "num_records": 20,
            "buffer_size": 10,
            "columns": [
                {
                    "name": "rid",
                    "column_type": "sampler",
                    "sampler_type": "uuid",
                    "params": {"short_form": True},
                },
                {
                    "name": "a",
                    "column_type": "llm-text",
                    "model_alias": "gen",
                    "prompt": "{{ rid }}",
                },
                {"name": "b", "column_type": "llm-text", "model_alias": "gen", "prompt": "{{ a }}"},
            ],
            "post_batch": [{"processor_type": "rename", "mapping": {"rid": "id"}}],
        }
    ],
}


def _write_llm_group(store: PartitionStore, plan: Any, rg: int, rows: int, failed: int) -> None:
    schema = stage_schema(plan.workflow, "s")
    assert schema.names == ["id", "a", "b"]  # the rename applies
    table = pa.table(
        {"id": [f"{rg}-{i}" for i in range(rows)], "a": ["x"] * rows, "b": ["y"] * rows},
        schema=schema,
    )
    stats = {
        "planned_rows": 10,
        "dropped_rows": failed,
        "drop_reasons": {"b: rejected (HTTP 400)": failed} if failed else {},
        "llm": {"llm_requests": 2 * rows + failed, "llm_failures": failed, "llm_retries": 3},
    }
    store.write_row_group(plan.ref, rg, table, stats)


def test_llm_failure_rate_from_footer_stats(tmp_path: Path) -> None:
    wf = parse_workflow(LLM_WORKFLOW)
    plan = plan_workflow(wf)["s"]
    assert [c.name for c in checks_for(plan)][-2:] == ["llm_failure_rate", "uuid_columns_unique"]
    store = PartitionStore(tmp_path)
    _write_llm_group(store, plan, 0, rows=10, failed=0)
    _write_llm_group(store, plan, 1, rows=6, failed=4)
    out = {o.name: o for o in run_checks(plan, store)}
    llm = out["llm_failure_rate"]
    # 4 failed cells; kept rows answered 2 cells each: 4 / (4 + 32)
    assert llm.numbers["cells"] == 36 and llm.numbers["failed_cells"] == 4
    assert llm.numbers["failure_rate"] == round(4 / 36, 4) and llm.passed
    assert (llm.numbers["llm_failures"], llm.numbers["llm_retries"]) == (4, 6)
    assert not llm.blocking and llm.severity == "WARN"
    # 4 of 20 rows dropped: over the default 1% budget; ids checked under their new name.
    assert not out["rows_within_drop_budget"].passed
    assert out["rows_within_drop_budget"].numbers["drop_rate"] == 0.2
    assert out["uuid_columns_unique"].numbers["columns"] == ["id"]
    assert out["uuid_columns_unique"].passed and out["schema_matches_config"].passed

    # Past the threshold (20%): the check fails.
    _write_llm_group(store, plan, 1, rows=2, failed=8)
    llm = next(o for o in run_checks(plan, store, ["llm_failure_rate"]))
    assert llm.numbers["failed_cells"] == 8 and not llm.passed
    assert "8 of 32 LLM cells failed" in llm.description


def test_stage_without_llm_or_uuid_columns_gets_only_the_general_checks(tmp_path: Path) -> None:
    wf = load_workflow(write_config(tmp_path / "wf.yaml", CONFIG))
    plans = plan_workflow(wf)
    assert [c.name for c in checks_for(plans["notes"])] == [
        "row_groups_complete",
        "row_groups_current",  # notes has an upstream stage
        "rows_within_drop_budget",
        "schema_matches_config",
        "footer_fingerprint_matches",
        "pages_intact",
    ]
    # Nothing on disk: completeness fails, the rest has nothing to object to.
    out = {o.name: o for o in run_checks(plans["people"], PartitionStore(tmp_path / "none"))}
    assert not out["row_groups_complete"].passed
    assert out["row_groups_complete"].numbers["missing"] == 5
    assert all(o.passed for n, o in out.items() if n != "row_groups_complete")
