"""Data identity through the CLI and a real instance: a stage regenerated with other content makes
the row groups built from it stale (status, check and the next materialize agree), the next
materialize regenerates exactly those, and regenerating identical content, or resuming, makes
nothing stale."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import batch_files, snapshot, write_config

pytestmark = [pytest.mark.slow]


def _config(url: str | None) -> dict:
    a_columns: list[dict] = [
        {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
        {"name": "n", "column_type": "sampler", "sampler_type": "uniform",
         "params": {"low": 1, "high": 9}, "convert_to": "int"},
    ]  # fmt: skip
    if url is not None:
        a_columns.append(
            {
                "name": "answer",
                "column_type": "llm-text",
                "model_alias": "gen",
                "prompt": "Say something about {{ rid }}",
            }
        )
    else:
        a_columns.append({"name": "answer", "column_type": "expression", "expr": "n={{ n }}"})
    return {
        "name": "lin",
        "models": {"gen": {"base_url": url, "model": "m-lin"}} if url else {},
        "run": {"partitions_per_run": 2, "row_groups_in_flight": 2},
        "stages": [
            {"name": "a", "num_records": 40, "buffer_size": 10, "columns": a_columns},
            {
                "name": "b",
                "num_records": 40,
                "buffer_size": 10,
                "seed": {"stage": "a", "mode": "row_group"},
                "columns": [{"name": "line", "column_type": "expression", "expr": "{{ answer }}!"}],
            },
            {
                "name": "c",
                "num_records": 10,
                "buffer_size": 10,
                "seed": {"stage": "b", "mode": "sample"},
                "columns": [{"name": "pick", "column_type": "expression", "expr": "<{{ line }}>"}],
            },
        ],
    }


def _files(root: Path, stage: str) -> dict[str, tuple[int, int]]:
    return {k: v for k, v in snapshot(root).items() if k.startswith(f"lin/{stage}/")}


def _table(root: Path, stage: str) -> pa.Table:
    files = {k: p for k, p in batch_files(root).items() if k.startswith(f"lin/{stage}/")}
    return pa.concat_tables(pq.read_table(files[k]) for k in sorted(files))


def _status(cfg: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert cli.main(["status", str(cfg)]) == 0
    return capsys.readouterr().out


def _materialize(cfg: Path, *args: str) -> int:
    return cli.main(["materialize", str(cfg), "--no-progress", *args])


@pytest.fixture
def mock() -> MockOpenAI:
    with MockOpenAI(content_template="v1 {prompt}") as m:
        yield m


def test_regenerated_upstream_makes_exactly_its_descendants_stale(
    data_root: Path, tmp_path: Path, mock: MockOpenAI, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _config(mock.url))
    assert _materialize(cfg) == 0
    assert "stale: " not in _status(cfg, capsys)
    assert cli.main(["check", str(cfg)]) == 0

    # The endpoint now answers differently; `never` asks afresh, so a's content changes.
    mock.content_template = "v2 {prompt}"
    a_before = _files(data_root, "a")
    assert _materialize(cfg, "--resume", "never", "--stage", "a") == 0
    assert set(_files(data_root, "a")) == set(a_before)  # the same row groups, regenerated
    out = _status(cfg, capsys)
    assert (
        "b: stale: 4 row group(s) (00000-00003) built from data of 'a' that was regenerated" in out
    )
    assert "c: stale" not in out  # b itself has not changed (yet)
    capsys.readouterr()
    assert cli.main(["check", str(cfg)]) == 1
    assert "b/row_groups_current" in capsys.readouterr().err

    # One materialize of everything: a is reused, b is regenerated row group by row group behind
    # it (pipelined in one wave), and then c, which sampled the old b, is stale and regenerated.
    a_files, b_files = _files(data_root, "a"), _files(data_root, "b")
    requests = mock.requests
    assert _materialize(cfg) == 0
    assert _files(data_root, "a") == a_files
    assert set(_files(data_root, "b")) == set(b_files)
    assert all(_files(data_root, "b")[k] != v for k, v in b_files.items())
    assert mock.requests == requests  # b and c have no LLM column; a was not asked again
    assert set(_table(data_root, "b").column("line").to_pylist()) == {
        f"{answer}!" for answer in _table(data_root, "a").column("answer").to_pylist()
    }
    assert all(p.startswith("<v2 ") for p in _table(data_root, "c").column("pick").to_pylist())
    assert "stale: " not in _status(cfg, capsys)
    assert cli.main(["check", str(cfg)]) == 0

    # Nothing left to do: a second run rewrites nothing.
    every = snapshot(data_root)
    assert _materialize(cfg) == 0
    assert snapshot(data_root) == every


def test_regenerating_identical_data_or_resuming_makes_nothing_stale(
    data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _config(None))
    # an interrupted run ...
    assert _materialize(cfg, "--partitions", "0-1", "--stage", "a", "--stage", "b") == 0
    assert _materialize(cfg) == 0  # ... resumed
    assert "stale: " not in _status(cfg, capsys)
    b_files, c_files = _files(data_root, "b"), _files(data_root, "c")

    # Samplers and expressions only: a regenerated from scratch has the same content, so the
    # rows built from it are still right and are kept.
    assert _materialize(cfg, "--resume", "never", "--stage", "a") == 0
    assert "stale: " not in _status(cfg, capsys)
    assert _materialize(cfg) == 0
    assert _files(data_root, "b") == b_files and _files(data_root, "c") == c_files
