"""finalize processors and the seal: whole-dataset steps into final/, the stage sealed while it
is finalized, extension refused with nothing written, crash recovery, allow_empty."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dd_assets.config import load_workflow
from dd_assets.runners.finalize import finalize_stage, read_final
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.seeds import StageSkipped
from dd_assets.store.partition_store import (
    EmptyFinalError,
    FinalMissingError,
    PartitionStore,
    StageSealedError,
    StoreError,
)
from dd_assets.testing.workflows import batch_files, people_config, snapshot, write_config


def _config(finalize: list[dict], *, allow_empty: bool = False, sample: bool = False, n=300):
    cfg = people_config(num_records=n, buffer_size=100)
    cfg["stages"][0]["finalize"] = finalize
    cfg["stages"][0]["allow_empty"] = allow_empty
    if sample:
        cfg["stages"].append(
            {
                "name": "picked",
                "num_records": 50,
                "buffer_size": 25,
                "seed": {"stage": "people", "mode": "sample"},
                "columns": [{"name": "tag", "column_type": "expression", "expr": "{{ city }}!"}],
            }
        )
    return cfg


FILTER_LYON = {"processor_type": "filter", "expr": "{{ city == 'Lyon' }}"}


def _setup(tmp_path: Path, cfg: dict):
    path = write_config(tmp_path / "wf.yaml", cfg)
    plans = plan_workflow(load_workflow(path))
    store = PartitionStore(tmp_path / "dd-data")
    p = plans["people"]
    materialize(p, store, range(p.ref.num_row_groups))
    return path, plans, store


def test_filter_dedupe_transform_drop(tmp_path: Path) -> None:
    steps = [
        FILTER_LYON,
        {"processor_type": "dedupe", "columns": ["score"]},
        {
            "processor_type": "schema_transform",
            "template": {"who": "{{ customer.first_name }}", "score": "{{ score }}", "x": "1"},
        },
        {"processor_type": "drop_columns", "column_names": ["x"]},
    ]
    _, plans, store = _setup(tmp_path, _config(steps))
    raw = store.dataset(plans["people"].ref).to_table().to_pylist()
    res = finalize_stage(plans["people"], store)
    out = pq.read_table(res.path).to_pylist()

    lyon = [r for r in raw if r["city"] == "Lyon"]
    first_by_score: dict[int, dict] = {}
    for r in lyon:
        first_by_score.setdefault(r["score"], r)
    expected = [
        {"who": r["customer"]["first_name"], "score": str(r["score"])}
        for r in first_by_score.values()
    ]
    assert out == expected
    assert (res.rows_in, res.rows_out) == (300, len(expected))
    steps_out = [s["rows_out"] for s in res.summary["steps"]]
    assert steps_out == [len(lyon), len(expected), len(expected), len(expected)]
    state = store.state(plans["people"].ref)
    assert state["finalize_state"] == "complete"
    final = read_final(store, plans["people"])
    path, info = final.path, final.info
    assert path == res.path
    assert info["final_fingerprint"] == plans["people"].fingerprint.final_hex


def test_finalized_stage_refuses_extension_with_nothing_written(tmp_path: Path) -> None:
    cfg_path, plans, store = _setup(tmp_path, _config([FILTER_LYON]))
    finalize_stage(plans["people"], store)
    before = snapshot(tmp_path / "dd-data")
    write_config(cfg_path, _config([FILTER_LYON], n=450))  # grow: two more row groups
    grown = plan_workflow(load_workflow(cfg_path))["people"]
    with pytest.raises(StageSealedError, match=r"'people' is finalized.*dd-assets unseal"):
        materialize(grown, store, range(grown.ref.num_row_groups))
    assert snapshot(tmp_path / "dd-data") == before
    # Reusing what is on disk is still fine while sealed: nothing is written.
    materialize(plans["people"], store, range(3))
    # Unseal: the final output is moved aside (not deleted) and the stage grows.
    moved = store.unseal(grown.ref)
    assert moved is not None and (moved / "data.parquet").exists()
    materialize(grown, store, range(grown.ref.num_row_groups))
    assert len(batch_files(tmp_path / "dd-data")) == 5
    with pytest.raises(FinalMissingError, match="final first"):
        read_final(store, grown)


def test_crash_during_finalize_is_recovered_by_rerunning(tmp_path: Path) -> None:
    _, plans, store = _setup(tmp_path, _config([FILTER_LYON]))
    ref = plans["people"].ref
    store.begin_finalize(ref)  # a finalize that died before writing anything
    data_dir = store.final_dir(ref)
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "data.parquet.dd-tmp.somehost.999999.0").write_bytes(b"partial")
    with pytest.raises(FinalMissingError):
        read_final(store, plans["people"])
    with pytest.raises(StageSealedError):  # still sealed while started
        store.write_row_group(ref, 0, store.read_row_group(ref, 0))
    res = finalize_stage(plans["people"], store)
    assert res.rows_out > 0
    assert store.state(ref)["finalize_state"] == "complete"
    assert len(batch_files(tmp_path / "dd-data")) == 3  # raw row groups intact


def test_finalize_needs_every_row_group(tmp_path: Path) -> None:
    path = write_config(tmp_path / "wf.yaml", _config([FILTER_LYON]))
    plan = plan_workflow(load_workflow(path))["people"]
    store = PartitionStore(tmp_path / "dd-data")
    materialize(plan, store, range(2))
    with pytest.raises(StoreError, match=r"1 of 3 row groups are missing \(00002\)"):
        finalize_stage(plan, store)
    assert store.state(plan.ref).get("finalize_state") is None


def test_empty_result_fails_unless_allowed(tmp_path: Path) -> None:
    nobody = {"processor_type": "filter", "expr": "{{ city == 'Atlantis' }}"}
    _, plans, store = _setup(tmp_path, _config([nobody], sample=True))
    with pytest.raises(EmptyFinalError, match=r"kept 0 of 300 rows.*allow_empty"):
        finalize_stage(plans["people"], store)
    assert not (store.final_dir(plans["people"].ref) / "data.parquet").exists()

    cfg_path = tmp_path / "allowed.yaml"
    write_config(cfg_path, _config([nobody], allow_empty=True, sample=True))
    plans = plan_workflow(load_workflow(cfg_path))
    materialize(plans["people"], store, range(3))  # reused: same raw fingerprint
    res = finalize_stage(plans["people"], store)
    assert res.rows_out == 0 and pq.read_metadata(res.path).num_rows == 0
    with pytest.raises(StageSkipped, match="'picked' is skipped"):
        materialize(plans["picked"], store, range(2))


def test_filter_errors_are_counted(tmp_path: Path) -> None:
    broken = {"processor_type": "filter", "expr": "{{ customer.no_such_field > 1 }}"}
    _, plans, store = _setup(tmp_path, _config([broken], allow_empty=True))
    res = finalize_stage(plans["people"], store)
    step = res.summary["steps"][0]
    assert step["errors"] == 300 and step["rows_out"] == 0
    assert "no_such_field" in step["error_samples"][0]
    meta = json.loads((store.final_dir(plans["people"].ref) / "final.json").read_text())
    assert meta["steps"][0]["errors"] == 300


def test_sample_seed_reads_the_final_output(tmp_path: Path) -> None:
    _, plans, store = _setup(tmp_path, _config([FILTER_LYON], sample=True))
    with pytest.raises(FinalMissingError):
        materialize(plans["picked"], store, range(2))
    finalize_stage(plans["people"], store)
    materialize(plans["picked"], store, range(2))
    picked = store.dataset(plans["picked"].ref).to_table()
    assert picked.num_rows == 50
    assert set(picked.column("city").to_pylist()) == {"Lyon"}
