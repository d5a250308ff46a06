"""kill -9 of a real `dd-assets materialize` process at a random row group, then resume.

The process runs through a real Dagster instance (SQLite in a temp DAGSTER_HOME) and writes real
parquet; the test only watches the filesystem, as a user watching `ls` would."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from dd_assets.config import load_workflow
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.profile import stage_profile
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.workflows import (
    isolated_env,
    kill_after,
    people_config,
    run_materialize,
    snapshot,
    stage_table,
    temp_files,
    write_config,
)

pytestmark = [pytest.mark.slow]

NUM_RECORDS = 6000
BUFFER = 300  # 20 row groups, ~0.1 s each: slow enough to land a kill between any two


def _kill_then_resume(cfg: Path, tmp_path: Path, files: int, kill_at: int) -> Path:
    """Kill a run once `kill_at` row groups are on disk, resume it, and check the resume wrote
    all `files` row groups, each exactly once, without touching one written before the kill.
    Returns the data root."""
    root = tmp_path / "dd-data"
    env = isolated_env(tmp_path, cfg)
    kill_after(cfg, env, root, kill_at)
    before = snapshot(root)
    assert kill_at <= len(before) < files, f"killed at {kill_at}: {len(before)} files on disk"

    out = run_materialize(cfg, env)
    assert out.returncode == 0, out.stderr
    after = snapshot(root)
    assert len(after) == files
    assert {k: after[k] for k in before} == before, "a row group on disk was regenerated"
    assert temp_files(root) == []
    return root


def _profile(cfg: Path, root: Path) -> dict:
    plan = plan_workflow(load_workflow(cfg))["people"]
    return stage_profile(plan, PartitionStore(root)).to_dict()


def test_repeated_kills_never_duplicate_or_lose_rows_and_resume_equals_one_run(
    tmp_path: Path,
) -> None:
    """Three kills in a row (the first at a random row group), then a resume: no row group
    written before a kill is touched, every row once, and the data and the stage profile equal
    an uninterrupted run's. (It holds the former single-kill test and the profile-after-kill
    test of test_profile_resume.py: the same kill + resume, four CLI processes instead of eight.)"""
    config = people_config(num_records=NUM_RECORDS, buffer_size=BUFFER, partitions_per_run=3)
    config["stages"][0]["drift"] = {"share_tolerance": 0.02}
    cfg = write_config(tmp_path / "wf.yaml", config)
    root = tmp_path / "dd-data"
    env = isolated_env(tmp_path, cfg)
    kept: dict[str, tuple[int, int]] = {}
    for n, target in enumerate((random.Random(os.getpid()).randint(1, 8), 9, 14)):
        kill_after(cfg, env, root, target)
        now = snapshot(root)
        assert target <= len(now) < 20, f"killed at {target}: {len(now)} files on disk"
        assert {k: now[k] for k in kept} == kept, "a row group on disk was regenerated"
        kept = now
        if n == 0:  # a partial profile of what landed before the kill
            killed = _profile(cfg, root)
            assert 0 < killed["num_records"] < NUM_RECORDS
    out = run_materialize(cfg, env)
    assert out.returncode == 0, out.stderr
    final = snapshot(root)
    assert len(final) == 20
    assert {k: final[k] for k in kept} == kept, "a row group on disk was regenerated"
    table = stage_table(root)
    assert table.num_rows == NUM_RECORDS
    assert len(set(table.column("person_id").to_pylist())) == NUM_RECORDS
    assert temp_files(root) == []

    # The interrupted-and-resumed dataset and its profile equal an uninterrupted one's, row for
    # row (made in this process by the runner the CLI drives: the data is the runner's; a CLI
    # process here would only repeat the Dagster run the resume above already went through).
    # The profile's partials are a function of each row group's content, merged in row-group
    # order.
    ref_root = tmp_path / "reference"
    materialize(plan_workflow(load_workflow(cfg))["people"], PartitionStore(ref_root), range(20))
    assert stage_table(ref_root).equals(table)
    resumed, reference = _profile(cfg, root), _profile(cfg, ref_root)
    assert resumed["num_records"] == NUM_RECORDS and resumed["percent_complete"] == 100.0
    assert resumed == reference
    # and whatever the caches hold: recomputed from the files, the same again
    shutil.rmtree(PartitionStore(root).profile_dir(plan_workflow(load_workflow(cfg))["people"].ref))
    assert _profile(cfg, root) == reference


def test_kill9_of_a_diamond_then_resume(tmp_path: Path) -> None:
    """people -> notes and people -> tags, joined back into cards on person_id: all four in one
    pipelined op. A kill leaves each stage at its own row group; the resume completes the chain
    (notes seeded row group by row group) and the join without rewriting anything, every note
    and card made from its own person's rows. (It holds the former pipelined-chain test too:
    people -> notes is a part of this graph; one kill + resume instead of two.)"""
    cfg_data = people_config(
        num_records=NUM_RECORDS, buffer_size=BUFFER, partitions_per_run=10, downstream=True
    )
    size = {"num_records": NUM_RECORDS, "buffer_size": BUFFER}
    cfg_data["stages"] += [
        {
            "name": "tags",
            **size,
            "seed": {"stage": "people"},
            "columns": [{"name": "tag", "column_type": "expression", "expr": "#{{ city }}"}],
        },
        {
            "name": "cards",
            **size,
            "seed": {"stages": ["notes", "tags"], "keys": "person_id"},
            "columns": [
                {"name": "card", "column_type": "expression", "expr": "{{ note }} {{ tag }}"}
            ],
        },
    ]
    cfg = write_config(tmp_path / "wf.yaml", cfg_data)
    root = _kill_then_resume(cfg, tmp_path, 80, random.Random(os.getpid() + 2).randint(5, 60))
    people, cards = stage_table(root, "people"), stage_table(root, "cards")
    notes = stage_table(root, "notes")
    assert notes.num_rows == NUM_RECORDS
    assert notes.column("person_id").to_pylist() == people.column("person_id").to_pylist()
    assert notes.column("note")[0].as_py() == f"note for {people.column('person_id')[0].as_py()}"
    assert cards.column("person_id").to_pylist() == people.column("person_id").to_pylist()
    for person, card in zip(people.to_pylist()[::97], cards.to_pylist()[::97], strict=True):
        assert card["card"] == f"note for {person['person_id']} #{person['city']}"
