"""Resume modes and store errors as a user meets them: through `dd-assets materialize` on a real
Dagster instance, with the message on stderr and the exit code, and nothing deleted."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.config.fingerprint import workflow_fingerprints
from dd_assets.testing.workflows import batch_files, people_config, snapshot, write_config

pytestmark = [pytest.mark.slow]


@pytest.fixture
def root(data_root: Path) -> Path:
    return data_root


def _run(cfg: Path, *args: str) -> int:
    return cli.main(["materialize", str(cfg), "--no-progress", *args])


def _all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _data(root: Path) -> dict[str, bytes]:
    """Everything but the (empty, never-deleted) lock files a run may create."""
    return {k: v for k, v in _all_bytes(root).items() if not k.endswith(".lock")}


def _fp12(cfg: Path) -> str:
    return workflow_fingerprints(load_workflow(cfg))["people"].hex[:12]


def test_always_refuses_a_changed_config_and_names_both_fingerprints(
    tmp_path: Path, root: Path, capsys
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=500))
    assert _run(cfg, "--partitions", "0-1") == 0
    old = _fp12(cfg)
    write_config(cfg, people_config(num_records=500, score_high=50))
    new = _fp12(cfg)
    files = _all_bytes(root)
    capsys.readouterr()

    assert _run(cfg, "--resume", "always") == 1
    err = capsys.readouterr().err
    assert old in err and new in err
    assert "score" in err or "params" in err  # the changed field is named
    assert _data(root) == {k: v for k, v in files.items() if not k.endswith(".lock")}
    assert not (root / "wf" / "people" / new).exists()  # a refused run leaves no empty folder


def test_if_possible_after_a_config_change_starts_the_new_fingerprint_beside_the_old(
    tmp_path: Path, root: Path
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=300))
    assert _run(cfg) == 0
    old = _fp12(cfg)
    write_config(cfg, people_config(num_records=300, score_high=50))
    assert _run(cfg) == 0
    stage = root / "wf" / "people"
    assert len(list((stage / old / "parquet-files").glob("batch_*.parquet"))) == 3
    assert len(list((stage / _fp12(cfg) / "parquet-files").glob("batch_*.parquet"))) == 3


def test_never_moves_old_data_aside_and_regenerates(tmp_path: Path, root: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=500))
    assert _run(cfg) == 0
    before = snapshot(root)
    old_bytes = {Path(k).name: p.read_bytes() for k, p in batch_files(root).items()}

    assert _run(cfg, "--resume", "never") == 0
    after = snapshot(root)
    assert after.keys() == before.keys()
    assert all(after[k][0] != before[k][0] for k in before), "never must regenerate every group"
    aside = list((root / "wf" / "people").glob(f"{_fp12(cfg)}.replaced-*"))
    assert len(aside) == 1
    moved = {p.name: p.read_bytes() for p in (aside[0] / "parquet-files").glob("batch_*")}
    assert moved == old_bytes  # nothing deleted: the old data is all there
    # Deterministic generation: same config, same values.
    new_bytes = {Path(k).name: pq.read_table(p) for k, p in batch_files(root).items()}
    assert new_bytes["batch_00000.parquet"].equals(
        pq.read_table(aside[0] / "parquet-files" / "batch_00000.parquet")
    )


def test_corrupt_stage_json_is_a_clear_error_and_nothing_is_touched(
    tmp_path: Path, root: Path, capsys
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=500))
    assert _run(cfg, "--partitions", "0-2") == 0
    stage_json = root / "wf" / "people" / _fp12(cfg) / "stage.json"
    stage_json.write_bytes(stage_json.read_bytes()[:40])  # torn write from some other tool
    files = _all_bytes(root)
    capsys.readouterr()

    assert _run(cfg) == 1
    err = capsys.readouterr().err
    assert "stage.json" in err and "--resume never" in err
    assert _all_bytes(root) == files

    # The way out it names works, and still deletes nothing.
    assert _run(cfg, "--resume", "never") == 0
    assert len(batch_files(root)) == 5
    aside = next((root / "wf" / "people").glob("*.replaced-*"))
    assert (aside / "stage.json").read_bytes() == files[str(stage_json.relative_to(root))]


def test_corrupt_parquet_footer_is_a_clear_error(tmp_path: Path, root: Path, capsys) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=500))
    assert _run(cfg, "--partitions", "0-2") == 0
    victim = root / "wf" / "people" / _fp12(cfg) / "parquet-files" / "batch_00001.parquet"
    victim.write_bytes(victim.read_bytes()[:-30])
    files = _all_bytes(root)
    capsys.readouterr()
    assert _run(cfg) == 1
    err = capsys.readouterr().err
    assert "batch_00001.parquet" in err
    assert _all_bytes(root) == files


def test_shrinking_num_records_names_what_is_on_disk(tmp_path: Path, root: Path, capsys) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=500))
    assert _run(cfg) == 0
    files = _all_bytes(root)
    write_config(cfg, people_config(num_records=250))
    capsys.readouterr()
    assert _run(cfg) == 1
    err = capsys.readouterr().err
    assert "500" in err and "250" in err
    assert _all_bytes(root) == files


def test_growing_num_records_adds_row_groups_and_redoes_only_the_short_one(
    tmp_path: Path, root: Path
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=950))
    assert _run(cfg) == 0
    before = snapshot(root)
    fp = _fp12(cfg)
    write_config(cfg, people_config(num_records=1200))
    assert _fp12(cfg) == fp  # num_records is not part of the fingerprint
    assert _run(cfg) == 0
    after = snapshot(root)
    assert len(after) == 12
    short = next(k for k in before if k.endswith("batch_00009.parquet"))
    assert after[short] != before[short]  # 50 rows became 100
    assert {k: after[k] for k in before if k != short} == {
        k: v for k, v in before.items() if k != short
    }
    rows = [pq.read_metadata(p).num_rows for p in batch_files(root).values()]
    assert sum(rows) == 1200
