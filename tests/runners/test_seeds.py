"""Stages seeded by sampling: from a file (parquet/csv/jsonl) or from a whole upstream stage,
`ordered` or `shuffle`, deterministic across runs and buffer sizes, cycling past the seed's end."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.config import WorkflowConfigError, load_workflow
from dd_assets.engine.seeds import sample_indices
from dd_assets.errors import GenerationError
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.preview import preview_stage
from dd_assets.store.partition_store import PartitionStore
from dd_assets.store.seed_files import SeedFileError, file_digest
from dd_assets.testing.workflows import people_config, write_config

SEED_ROWS = [{"topic": f"topic-{i}", "level": i % 3} for i in range(7)]


def _write_seed(path: Path) -> Path:
    table = pa.Table.from_pylist(SEED_ROWS)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".csv":
        pacsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in SEED_ROWS))
    return path


def _file_config(seed_path: str, *, strategy: str = "ordered", n: int = 20, buffer: int = 6):
    return {
        "name": "seeded",
        "stages": [
            {
                "name": "prompts",
                "num_records": n,
                "buffer_size": buffer,
                "seed": {"path": seed_path, "strategy": strategy},
                "columns": [
                    {
                        "name": "prompt",
                        "column_type": "expression",
                        "expr": "Explain {{ topic }} at level {{ level }}",
                    }
                ],
            }
        ],
    }


def _run_all(cfg: Path, root: Path, stage: str) -> pa.Table:
    plans = plan_workflow(load_workflow(cfg))
    store = PartitionStore(root)
    for plan in plans.values():
        materialize(plan, store, range(plan.ref.num_row_groups))
    return store.dataset(plans[stage].ref).to_table()


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_file_seed_ordered_cycles_through_the_file(tmp_path: Path, suffix: str) -> None:
    _write_seed(tmp_path / f"seed{suffix}")
    # Relative to the config file, not to the working directory.
    cfg = write_config(tmp_path / "wf.yaml", _file_config(f"seed{suffix}"))
    table = _run_all(cfg, tmp_path / "dd-data", "prompts")
    assert table.num_rows == 20
    assert table.column_names == ["topic", "level", "prompt"]
    assert table.column("topic").to_pylist() == [f"topic-{i % 7}" for i in range(20)]
    assert table.column("prompt")[8].as_py() == "Explain topic-1 at level 1"


def test_file_seed_shuffle_is_a_permutation_per_pass_and_deterministic(tmp_path: Path) -> None:
    _write_seed(tmp_path / "seed.parquet")
    cfg = write_config(tmp_path / "wf.yaml", _file_config("seed.parquet", strategy="shuffle", n=21))
    table = _run_all(cfg, tmp_path / "a", "prompts")
    topics = table.column("topic").to_pylist()
    for p in range(3):  # 21 rows = three full passes over 7 seed rows, each a permutation
        assert sorted(topics[p * 7 : (p + 1) * 7]) == sorted(r["topic"] for r in SEED_ROWS)
    assert topics[:7] != [r["topic"] for r in SEED_ROWS] or topics[7:14] != topics[:7]
    # Same rows again in another store, and with another buffer size (same row -> same seed row).
    assert _run_all(cfg, tmp_path / "b", "prompts").equals(table)
    other = write_config(
        tmp_path / "wf2.yaml", _file_config("seed.parquet", strategy="shuffle", n=21, buffer=4)
    )
    assert _run_all(other, tmp_path / "c", "prompts").column("topic").to_pylist() == topics


def test_sample_indices_property() -> None:
    key = 12345
    whole = sample_indices(key, 0, 50, 7, "shuffle")
    for start, end in [(0, 3), (3, 20), (20, 50), (13, 14)]:
        assert np.array_equal(sample_indices(key, start, end, 7, "shuffle"), whole[start:end])
    assert sample_indices(key, 0, 10, 4, "ordered").tolist() == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1]


def test_editing_the_seed_file_changes_the_fingerprint(tmp_path: Path) -> None:
    seed = _write_seed(tmp_path / "seed.csv")
    cfg = write_config(tmp_path / "wf.yaml", _file_config("seed.csv"))
    before = plan_workflow(load_workflow(cfg))["prompts"].ref.fingerprint
    seed.write_text(seed.read_text().replace("topic-3", "topic-three"))
    after = plan_workflow(load_workflow(cfg))["prompts"].ref.fingerprint
    assert before != after
    # The path is not part of it: the same bytes elsewhere are the same dataset.
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (moved / "seed.csv").write_bytes(seed.read_bytes())
    cfg2 = write_config(moved / "wf.yaml", _file_config("seed.csv"))
    assert plan_workflow(load_workflow(cfg2))["prompts"].ref.fingerprint == after
    assert file_digest(seed) == file_digest(moved / "seed.csv")


def test_missing_seed_file_and_unknown_seed_column_are_clear_errors(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _file_config("nope.parquet"))
    with pytest.raises(SeedFileError, match=r"nope\.parquet not found.*seed\.path"):
        plan_workflow(load_workflow(cfg))

    _write_seed(tmp_path / "seed.parquet")
    bad = _file_config("seed.parquet")
    bad["stages"][0]["columns"][0]["expr"] = "{{ subject }}"
    cfg = write_config(tmp_path / "bad.yaml", bad)
    # Found when the workflow is planned (validate does), from the file's schema: with the YAML
    # line, before anything is generated.
    with pytest.raises(
        WorkflowConfigError,
        match=r"bad\.yaml:\d+: stages\[0\]\.columns\[0\]: column 'prompt' refers to unknown"
        r" column 'subject'; known columns: level, prompt, topic",
    ):
        plan_workflow(load_workflow(cfg))
    assert not (tmp_path / "dd-data").exists()


def test_preview_of_a_file_seeded_stage_matches_the_run(tmp_path: Path) -> None:
    _write_seed(tmp_path / "seed.jsonl")
    cfg = write_config(tmp_path / "wf.yaml", _file_config("seed.jsonl", strategy="shuffle"))
    wf = load_workflow(cfg)
    shown = preview_stage(plan_workflow(wf)["prompts"], n=5).table
    run = _run_all(cfg, tmp_path / "dd-data", "prompts").slice(0, 5)
    assert shown.equals(run)


def _sample_config(strategy: str) -> dict:
    cfg = people_config(num_records=300, buffer_size=100)
    cfg["stages"].append(
        {
            "name": "picked",
            "num_records": 450,  # more than the upstream has: cycles
            "buffer_size": 50,
            "seed": {"stage": "people", "mode": "sample", "strategy": strategy},
            "columns": [
                {"name": "tag", "column_type": "expression", "expr": "{{ person_id }}/{{ city }}"}
            ],
        }
    )
    return cfg


@pytest.mark.parametrize("strategy", ["ordered", "shuffle"])
def test_sample_from_a_whole_upstream_stage(tmp_path: Path, strategy: str) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _sample_config(strategy))
    root = tmp_path / "dd-data"
    people = _run_all(cfg, root, "people")
    picked = PartitionStore(root).dataset(plan_workflow(load_workflow(cfg))["picked"].ref)
    picked = picked.to_table()
    assert picked.num_rows == 450
    ids = picked.column("person_id").to_pylist()
    upstream_ids = people.column("person_id").to_pylist()
    for p in range(450 // 300 + 1):
        chunk = ids[p * 300 : (p + 1) * 300]
        assert len(set(chunk)) == len(chunk)  # a pass never repeats an upstream row
        assert set(chunk) <= set(upstream_ids)
    if strategy == "ordered":
        assert ids[:300] == upstream_ids and ids[300:] == upstream_ids[:150]
    else:
        assert ids[:300] != upstream_ids and sorted(ids[:300]) == sorted(upstream_ids)


def test_sample_needs_the_whole_upstream(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _sample_config("shuffle"))
    plans = plan_workflow(load_workflow(cfg))
    store = PartitionStore(tmp_path / "dd-data")
    materialize(plans["people"], store, range(2))
    with pytest.raises(GenerationError, match=r"1 of 3 row groups missing \(00002\).*first"):
        materialize(plans["picked"], store, range(1))


@pytest.mark.slow
def test_sampled_stage_through_the_cli_and_dagster(tmp_path: Path, data_root: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _sample_config("shuffle"))
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    instance = dg.DagsterInstance.get()
    assert len(instance.get_materialized_partitions(dg.AssetKey(["wf", "picked"]))) == 9
    files = list((data_root / "wf" / "picked").rglob("batch_*.parquet"))
    assert len(files) == 9
    assert sum(pq.read_metadata(f).num_rows for f in files) == 450


# ---- seed selection: a slice or a shard of the file (DataDesigner's selection_strategy) ------


@pytest.mark.parametrize(
    ("selection", "expected"),
    [
        ({"rows": {"first": 2, "last": 4}}, [2, 3, 4]),
        ({"shard": {"index": 0, "count": 3}}, [0, 1]),
        ({"shard": {"index": 1, "count": 3}}, [2, 3]),
        ({"shard": {"index": 2, "count": 3}}, [4, 5, 6]),  # the last shard takes the remainder
    ],
)
def test_file_seed_selection_cycles_through_the_selected_rows(
    tmp_path: Path, selection: dict, expected: list[int]
) -> None:
    _write_seed(tmp_path / "seed.parquet")
    config = _file_config("seed.parquet", n=8, buffer=3)
    config["stages"][0]["seed"].update(selection)
    cfg = write_config(tmp_path / "wf.yaml", config)
    table = _run_all(cfg, tmp_path / "dd-data", "prompts")
    want = [f"topic-{expected[i % len(expected)]}" for i in range(8)]
    assert table.column("topic").to_pylist() == want
    # Shuffled: permutations of the selection only.
    config["stages"][0]["seed"]["strategy"] = "shuffle"
    cfg = write_config(tmp_path / "wf2.yaml", config)
    topics = _run_all(cfg, tmp_path / "dd-data2", "prompts").column("topic").to_pylist()
    assert set(topics) == {f"topic-{i}" for i in expected}


def test_file_seed_selection_is_in_the_fingerprint_only_when_set(tmp_path: Path) -> None:
    _write_seed(tmp_path / "seed.parquet")

    def fp(**selection: object) -> dict:
        config = _file_config("seed.parquet")
        config["stages"][0]["seed"].update(selection)
        cfg = write_config(tmp_path / "wf.yaml", config)
        return plan_workflow(load_workflow(cfg))["prompts"].fingerprint.payload["seed"]

    plain = fp()
    assert set(plain) == {"format", "strategy", "sha256"}  # as before selection existed
    assert fp(rows={"first": 0, "last": 3})["rows"] == {"first": 0, "last": 3}
    assert fp(shard={"index": 1, "count": 2})["shard"] == {"index": 1, "count": 2}
    assert fp(shard={"index": 0, "count": 2}) != fp(shard={"index": 1, "count": 2})


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ({"rows": {"first": 3, "last": 1}}, "last (1) must be >= first (3)"),
        ({"shard": {"index": 3, "count": 3}}, "index (3) must be < count (3)"),
        ({"rows": {"first": 0, "last": 1}, "shard": {"index": 0, "count": 2}}, "not both"),
    ],
)
def test_bad_seed_selection_is_a_config_error(selection: dict, message: str) -> None:
    from dd_assets.config import WorkflowConfigError, parse_workflow

    config = _file_config("seed.parquet")
    config["stages"][0]["seed"].update(selection)
    with pytest.raises(WorkflowConfigError, match=re.escape(message)):
        parse_workflow(config)


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        (
            {"rows": {"first": 2, "last": 7}},
            "has 7 rows (0..6); seed.rows.last (7) is past the end",
        ),
        ({"shard": {"index": 0, "count": 8}}, "has 7 rows, fewer than seed.shard.count (8)"),
    ],
)
def test_selection_past_the_file_names_the_file(
    tmp_path: Path, selection: dict, message: str
) -> None:
    _write_seed(tmp_path / "seed.parquet")
    config = _file_config("seed.parquet")
    config["stages"][0]["seed"].update(selection)
    cfg = write_config(tmp_path / "wf.yaml", config)
    with pytest.raises(GenerationError, match=re.escape(message)) as exc:
        preview_stage(plan_workflow(load_workflow(cfg))["prompts"], n=3)
    assert "seed.parquet" in str(exc.value)
