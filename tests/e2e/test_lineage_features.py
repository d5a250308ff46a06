"""Issue 14's tools through the CLI and a real Dagster instance: `--rerun-from` rebuilds a stage
and its descendants and nothing else; `approve` refuses a file that does not fit (the column
named), seeds the stages below with a good one and `--clear` restores the original;
`target_records` gives exactly N rows, the same N after a kill -9 and a rerun, or fails with
the numbers; `run.keep_dropped_columns` writes and exports the side tables."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import (
    batch_files,
    isolated_env,
    kill_after,
    snapshot,
    temp_files,
    write_config,
)

pytestmark = [pytest.mark.slow]

WF = "lf"


def _files(root: Path, stage: str) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in snapshot(root).items() if k.startswith(f"{WF}/{stage}/")}


def _materialize(cfg: Path, *args: str) -> int:
    return cli.main(["materialize", str(cfg), "--no-progress", *args])


def _out(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- --rerun-from ----------------------------------------------------------------------------


def _rerun_config(url: str) -> dict:
    rg = {"num_records": 40, "buffer_size": 10}
    return {
        "name": WF,
        "models": {"gen": {"base_url": url, "model": "m"}},
        "run": {"partitions_per_run": 2, "row_groups_in_flight": 2},
        "stages": [
            {"name": "u", **rg, "columns": [
                {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"}]},
            {"name": "a", **rg, "seed": {"stage": "u"}, "columns": [
                {"name": "answer", "column_type": "llm-text", "model_alias": "gen",
                 "prompt": "Say something about {{ rid }}"}]},
            {"name": "b", **rg, "seed": {"stage": "a"},
             "columns": [{"name": "line", "column_type": "expression", "expr": "{{ answer }}!"}],
             "finalize": [{"processor_type": "dedupe", "columns": ["line"]}]},
            {"name": "z", "num_records": 10, "buffer_size": 10, "columns": [
                {"name": "k", "column_type": "sampler", "sampler_type": "uuid"}]},
        ],
    }  # fmt: skip


def test_rerun_from_rebuilds_the_stage_and_its_descendants_only(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with MockOpenAI(content_template="v1 {prompt}") as mock:
        cfg = write_config(tmp_path / "wf.yaml", _rerun_config(mock.url))
        assert _materialize(cfg) == 0
        assert mock.requests == 40
        before = snapshot(data_root)

        # Misuse: refused with the reason, nothing run or written.
        code, _, err = _out(
            capsys, "materialize", str(cfg), "--rerun-from", "a", "--resume", "always"
        )
        assert code == 1 and "--resume always only ever reuses what is on disk" in err
        code, _, err = _out(capsys, "materialize", str(cfg), "--rerun-from", "a", "--stage", "b")
        assert code == 1 and "drop --stage/--partitions" in err
        code, _, err = _out(capsys, "materialize", str(cfg), "--rerun-from", "nope")
        assert code == 1 and "no stage 'nope'" in err
        assert snapshot(data_root) == before and mock.requests == 40

        # b is finalized (sealed): the rerun moves its folder aside whole, which unseals it.
        mock.content_template = "v2 {prompt}"
        code, out, err = _out(capsys, "materialize", str(cfg), "--no-progress", "--rerun-from", "a")
        assert code == 0, err
        assert "regenerating a, b with fresh LLM calls" in out
        assert "b: final: 40 of 40 rows" in out
        after = snapshot(data_root)
        # u (above) and z (beside) are untouched; every row group of a and b is new.
        for stage in ("u", "z"):
            assert _files(data_root, stage) == {k: before[k] for k in _files(data_root, stage)}
        for stage in ("a", "b"):
            new = _files(data_root, stage)
            assert set(new) == {k for k in before if k.startswith(f"{WF}/{stage}/")}
            assert all(after[k] != before[k] for k in new)
            assert len(list((data_root / WF / stage).glob("*.replaced-*"))) == 1
        assert mock.requests == 80  # a's cells asked again, not read from the cache
        # The current fingerprint folder's final output (the old one was moved aside with it).
        (final_path,) = [
            p
            for p in (data_root / WF / "b").glob("*/final/data.parquet")
            if ".replaced-" not in str(p)
        ]
        final = pq.read_table(final_path)
        assert all(line.startswith("v2 ") for line in final.column("line").to_pylist())
        code, out, _ = _out(capsys, "status", str(cfg))
        assert "stale: " not in out
        assert cli.main(["check", str(cfg)]) == 0


# ---- approve -------------------------------------------------------------------------------------


def _gate_config() -> dict:
    return {
        "name": WF,
        "run": {"partitions_per_run": 2},
        "stages": [
            {"name": "a", "num_records": 30, "buffer_size": 10, "columns": [
                {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                {"name": "n", "column_type": "sampler", "sampler_type": "uniform",
                 "params": {"low": 1, "high": 9}, "convert_to": "int"},
                {"name": "text", "column_type": "expression", "expr": "n={{ n }}"}]},
            {"name": "b", "num_records": 30, "buffer_size": 10, "seed": {"stage": "a"},
             "columns": [{"name": "line", "column_type": "expression", "expr": "{{ text }}!"}]},
            {"name": "c", "num_records": 10, "buffer_size": 10,
             "seed": {"stage": "a", "mode": "sample"},
             "columns": [{"name": "pick", "column_type": "expression", "expr": "<{{ text }}>"}]},
        ],
    }  # fmt: skip


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _write_csv(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return path


def _column(root: Path, stage: str, column: str) -> list:
    files = {k: p for k, p in batch_files(root).items() if k.startswith(f"{WF}/{stage}/")}
    return [v for k in sorted(files) for v in pq.read_table(files[k]).column(column).to_pylist()]


def test_approve_refuses_a_wrong_type_seeds_with_a_good_file_and_clear_restores(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _gate_config())
    assert _materialize(cfg) == 0
    original_b = _column(data_root, "b", "line")
    exported = tmp_path / "a.csv"
    assert (
        cli.main(["export", str(cfg), "--stage", "a", "--format", "csv", "-o", str(exported)]) == 0
    )
    rows = _csv(exported)
    n = rows[0].index("n")

    # A wrong type in column n: refused, the column named, nothing stored or changed.
    bad = [list(r) for r in rows]
    bad[5][n] = "five"
    before = sorted(p.name for p in (data_root / WF / "a").iterdir())
    code, _, err = _out(
        capsys, "approve", str(cfg), "a", str(_write_csv(tmp_path / "bad.csv", bad))
    )
    assert code == 1
    assert err.startswith("error: ") and "column 'n' row 4: 'five' is not int64" in err
    assert sorted(p.name for p in (data_root / WF / "a").iterdir()) == before

    # A good file (row 0 edited, the last 5 rows removed) seeds b and c.
    good = [list(r) for r in rows[:26]]
    good[1][rows[0].index("text")] = "REVIEWED"
    a_files = _files(data_root, "a")
    code, out, err = _out(
        capsys, "approve", str(cfg), "a", str(_write_csv(tmp_path / "ok.csv", good))
    )
    assert code == 0, err
    assert "approved: 25 rows are the output of 'a'" in out and "b (row_group), c (sample)" in out
    code, out, _ = _out(capsys, "status", str(cfg))
    assert "a: approved: 25 rows from" in out
    assert "b: stale: 2 row group(s) (00000, 00002)" in out and "c: stale" in out
    assert _materialize(cfg) == 0
    assert _files(data_root, "a") == a_files  # its own row groups untouched
    lines = _column(data_root, "b", "line")
    assert len(lines) == 25 and lines[0] == "REVIEWED!" and lines[1:] == original_b[1:25]
    assert all(p.split("=")[0] in ("<n", "<REVIEWED>") for p in _column(data_root, "c", "pick"))
    code, out, _ = _out(capsys, "status", str(cfg))
    assert "stale: " not in out
    assert cli.main(["check", str(cfg)]) == 0
    # The asset's metadata shows the approval.
    instance = dg.DagsterInstance.get()
    records = instance.fetch_materializations(dg.AssetKey([WF, "a"]), limit=20).records
    assert any(
        r.asset_materialization.metadata.get("approved_rows", dg.MetadataValue.int(0)).value == 25
        for r in records
    )

    # --clear: the generated rows again; b is regenerated to what it was.
    code, out, _ = _out(capsys, "approve", str(cfg), "a", "--clear")
    assert code == 0 and "approval of 'a' cleared (moved to" in out
    assert _materialize(cfg) == 0
    assert _column(data_root, "b", "line") == original_b
    code, _, err = _out(capsys, "approve", str(cfg), "a")
    assert code == 1 and "give the file to approve" in err


# ---- target_records ------------------------------------------------------------------------------


def _target_config(num_records: int) -> dict:
    return {
        "name": WF,
        "run": {"partitions_per_run": 1, "row_groups_in_flight": 1},
        "stages": [
            {
                "name": "cand",
                "num_records": num_records,
                "buffer_size": 20,
                "columns": [
                    {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                    {"name": "score", "column_type": "sampler", "sampler_type": "uniform",
                     "params": {"low": 1, "high": 10}, "convert_to": "int"},
                ],
                "finalize": [{"processor_type": "filter", "expr": "{{ score <= 3 }}"}],
                "target_records": 50,
            },
            {
                "name": "use",
                "num_records": 50,
                "buffer_size": 25,
                "seed": {"stage": "cand", "mode": "sample"},
                "columns": [{"name": "x", "column_type": "expression", "expr": "{{ rid }}"}],
            },
        ],
    }  # fmt: skip


def _final(root: Path) -> list[dict]:
    return pq.read_table(next((root / WF / "cand").glob("*/final/data.parquet"))).to_pylist()


def _use_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Point this process's in-process CLI runs at `env`'s instance and data root."""
    for k in ("DAGSTER_HOME", "DD_ASSETS_ROOT", "DD_ASSETS_CONFIG"):
        monkeypatch.setenv(k, env[k])


def test_target_records_gives_the_same_50_rows_after_a_kill9(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An uninterrupted run, in a root of its own. In this process (cli.main, what the command
    # runs): only the killed run needs a process of its own.
    whole = tmp_path / "whole"
    whole.mkdir()
    cfg = write_config(whole / "wf.yaml", _target_config(1000))
    _use_env(monkeypatch, isolated_env(whole, cfg))
    code, out, err = _out(capsys, "materialize", str(cfg), "--no-progress")
    assert code == 0, err
    expected = _final(whole / "dd-data")
    assert len(expected) == 50 and all(r["score"] <= 3 for r in expected)
    assert "target_records reached with row groups 00000-" in out
    used = len(batch_files(whole / "dd-data")) - 2  # minus use's row groups
    assert used < 50  # far fewer row groups than the budget's 50

    # Killed after 4 row groups, then run again: the same 50 rows.
    killed = tmp_path / "killed"
    killed.mkdir()
    cfg = write_config(killed / "wf.yaml", _target_config(1000))
    env = isolated_env(killed, cfg)
    root = killed / "dd-data"
    kill_after(cfg, env, root, 4)
    on_disk = snapshot(root)
    assert not list(root.glob(f"{WF}/cand/*/final/data.parquet"))
    _use_env(monkeypatch, env)
    code, _, err = _out(capsys, "materialize", str(cfg), "--no-progress")
    assert code == 0, err
    assert _final(root) == expected
    after = snapshot(root)
    assert {k: after[k] for k in on_disk} == on_disk  # nothing generated twice
    assert temp_files(root) == []
    assert sum(1 for k in after if "/cand/" in k) <= used + 1  # at most one chunk beyond
    code, status, err = _out(capsys, "status", str(cfg))
    assert code == 0, err
    assert "cand: target_records 50: reached with row groups 00000-" in status


def test_a_budget_too_small_fails_with_the_numbers(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _target_config(100))
    code, _, err = _out(capsys, "materialize", str(cfg), "--no-progress")
    assert code == 1
    assert (
        "error: stage 'cand': the candidate budget is spent: all 5 row groups (num_records 100)"
        in err
    )
    assert (
        "of the 100 candidate rows in row groups 00000-00004 pass finalize (0:filter 100->" in err
    )
    assert "fewer than target_records 50. Raise num_records" in err
    # Not sealed: raising the budget adds row groups and reaches the target.
    write_config(cfg, _target_config(400))
    assert _materialize(cfg) == 0
    assert len(_final(data_root)) == 50


# ---- keep_dropped_columns ------------------------------------------------------------------------


def test_keep_dropped_columns_writes_and_exports_the_side_table(
    data_root: Path, tmp_path: Path
) -> None:
    a = {"name": "a", "num_records": 30, "buffer_size": 10, "columns": [
        {"name": "n", "column_type": "sampler", "sampler_type": "uniform",
         "params": {"low": 1, "high": 9}, "convert_to": "int"},
        {"name": "hidden", "column_type": "expression", "expr": "h{{ n }}", "drop": True},
        {"name": "text", "column_type": "expression", "expr": "{{ hidden }}!"}]}  # fmt: skip
    config = {"name": WF, "run": {"keep_dropped_columns": True}, "stages": [a]}
    cfg = write_config(tmp_path / "wf.yaml", config)
    assert _materialize(cfg) == 0
    assert len(list((data_root / WF / "a").glob("*/dropped-columns/dropped_*.parquet"))) == 3
    rows, dropped = tmp_path / "rows.jsonl", tmp_path / "dropped.jsonl"
    assert cli.main(["export", str(cfg), "--stage", "a", "-o", str(rows)]) == 0
    assert (
        cli.main(["export", str(cfg), "--stage", "a", "--dropped-columns", "-o", str(dropped)]) == 0
    )
    kept = [json.loads(line) for line in rows.read_text().splitlines()]
    side = [json.loads(line) for line in dropped.read_text().splitlines()]
    assert len(kept) == len(side) == 30
    assert all(
        r["text"] == f"{d['hidden']}!" and "hidden" not in r
        for r, d in zip(kept, side, strict=True)
    )
