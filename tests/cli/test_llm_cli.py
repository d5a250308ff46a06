"""LLM failures as `dd-assets materialize` reports them through Dagster (a real instance, the
mock provider over real HTTP): the exit code and the one line a user sees, what stays on disk,
what `status`, `check` and `export --drops` say, and what a rerun asks (issue 13's "done when").

Exit codes: 0 whole and within the drop budget, 1 error, 3 early stop, 4 cells unfinished by
transient faults (rerun later), 5 over the drop budget."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.llm import client as llm_client
from dd_assets.llm.cache import cache_path
from dd_assets.testing.mock_openai import CONTEXT_LENGTH_MESSAGE, MockOpenAI
from dd_assets.testing.workflows import batch_files, sampler_rows, stage_table, write_config

pytestmark = [pytest.mark.slow]

KEY_ENV = "DD_TEST_CLI_KEY"
SECRET = "sk-test-CLI-SECRET-456"


def _config(url: str, *, model: dict | None = None, run: dict | None = None) -> dict:
    cfg: dict[str, Any] = {
        "name": "llmwf",
        "models": {
            "gen": {
                "base_url": url,
                "model": "m-cli",
                "api_key_env": KEY_ENV,
                "max_parallel_requests": 4,
                "max_retries": 1,
                **(model or {}),
            }
        },
        "run": {
            "partitions_per_run": 2,
            "row_groups_in_flight": 1,
            "early_stop": {"window": 10, "max_failure_rate": 0.5},
            **(run or {}),
        },
        "stages": [
            {
                "name": "qa",
                "num_records": 60,
                "buffer_size": 10,
                "columns": [
                    {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                    {
                        "name": "answer",
                        "column_type": "llm-text",
                        "model_alias": "gen",
                        "prompt": "Say something about {{ rid }}",
                    },
                ],
            }
        ],
    }
    return cfg


def _structured(cfg: dict) -> dict:
    """The answer column as llm-structured (JSON answers that can be broken)."""
    cfg["stages"][0]["columns"][1] = {
        "name": "answer",
        "column_type": "llm-structured",
        "model_alias": "gen",
        "prompt": "Facts about {{ rid }}",
        "output_format": {
            "type": "object",
            "properties": {"fact": {"type": "string"}},
            "required": ["fact"],
        },
    }
    return cfg


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def _rows(root: Path) -> list[dict]:
    return stage_table(root, "qa").to_pylist() if batch_files(root) else []


def _cache_contents(root: Path) -> list[str]:
    con = sqlite3.connect(f"file:{cache_path(root, 'llmwf')}?mode=ro", uri=True)
    try:
        return [
            json.loads(r[0])["content"] for r in con.execute("SELECT response FROM llm_responses")
        ]
    finally:
        con.close()


@pytest.fixture
def env(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setattr(llm_client, "BACKOFF_BASE_S", 0.001)
    monkeypatch.setattr(llm_client, "BACKOFF_CAP_S", 0.005)
    return data_root


def test_full_run_exit_0(env: Path, tmp_path: Path, capsys) -> None:
    with MockOpenAI(latency_s=0.002) as mock:
        cfg = write_config(tmp_path / "wf.yaml", _config(mock.url))
        assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    assert len(batch_files(env)) == 6
    assert "qa: 6/6 row groups, 60 records" in capsys.readouterr().out


def test_early_stop_is_exit_3_and_keeps_completed_row_groups(
    env: Path, tmp_path: Path, capsys
) -> None:
    """Refusals after the column was answered are drops; when most recent cells are dropped the
    run stops early, keeping the row groups made before (retryable errors never count)."""
    with MockOpenAI(latency_s=0.002) as mock:
        config = _config(mock.url)
        cfg = write_config(tmp_path / "wf.yaml", config)
        # Healthy for the first two row groups, then every prompt is refused.
        mock.prompt_faults = {r["rid"]: 400 for r in sampler_rows(config, "qa")[20:]}
        code, _, err = _run(capsys, "materialize", str(cfg), "--no-progress")
    assert code == 3, err
    assert "stopped early (partial result)" in err
    # One run for the wave (not runs of partitions_per_run: 2): the window still holds row group
    # 1's answers when row group 2's refusals reach half of it.
    assert "early stop: 5 of the last 10 LLM cells were dropped" in err and "rejected" in err
    names = sorted(Path(k).name for k in batch_files(env))
    assert names == ["batch_00000.parquet", "batch_00001.parquet"]  # nothing half-written
    assert SECRET not in err


def test_a_burst_of_500s_is_exit_4_and_a_rerun_asks_only_the_unfinished_cells(
    env: Path, tmp_path: Path, capsys
) -> None:
    """40 500s in a row with max_retries 1: the first 20 cells give up; their row groups are
    held back (not saved, so `status`, `check` and Dagster see them missing), the others
    saved, exit 4 with one line. After recovery the rerun asks exactly those 20 cells."""
    with MockOpenAI(latency_s=0.002) as mock:
        cfg = write_config(
            tmp_path / "wf.yaml",
            _config(mock.url, run={"early_stop": {"window": 50, "max_failure_rate": 0.5}}),
        )
        mock.queue_faults(*[500] * 40)
        code, out, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        assert code == 4, err
        (line,) = _error_lines(err)
        assert line.startswith("error: 20 LLM cell(s) unfinished in qa row group(s) 00000-00001:")
        assert "HTTP 500: Mock provider injected failure 500" in line
        assert "qa: 4/6 row groups, 40 records" in out
        assert sorted(Path(k).name for k in batch_files(env)) == [
            f"batch_0000{i}.parquet" for i in range(2, 6)
        ]
        code, out, _ = _run(capsys, "status", str(cfg))
        assert code == 0 and "4/6" in out and "│ 2:" in out  # 2 missing (the cell folds)
        code, out, err = _run(capsys, "check", str(cfg))
        assert code == 1 and "failed: 1 blocking check(s): qa/row_groups_complete" in err

        mock.reset()
        code, out, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        assert code == 0, err
        assert mock.requests == 20 and mock.by_status == {200: 20}
    rows = _rows(env)
    assert len(rows) == 60 and len({r["rid"] for r in rows}) == 60
    assert all(r["answer"] == f"[m-cli] Say something about {r['rid']}" for r in rows)
    assert _run(capsys, "check", str(cfg))[0] == 0


def test_sustained_429s_delay_the_run_and_drop_nothing(env: Path, tmp_path: Path, capsys) -> None:
    """200 429s (Retry-After 50 ms), far beyond max_retries=1: every cell waits its turn,
    nothing is dropped or unfinished, exit 0 (DataDesigner #575)."""
    with MockOpenAI(latency_s=0.002, retry_after=0.05) as mock:
        cfg = write_config(tmp_path / "wf.yaml", _config(mock.url))
        mock.queue_faults(*[429] * 200)
        started = time.perf_counter()
        code, _out, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        elapsed = time.perf_counter() - started
        assert code == 0, err
        assert mock.by_status == {429: 200, 200: 60}
    # Delayed: each 429 waited out (200 x 50 ms of waiting, by at most the 60 cells at once; a
    # client ignoring Retry-After would take 260 x 2 ms / 4 slots = 0.13 s). A wait does not
    # hold a request slot, so "four at a time" is no lower bound (CI measured 2.47 s < 2.5 s).
    assert elapsed >= 200 * 0.05 / 60
    assert len(_rows(env)) == 60
    stats = [
        json.loads(pq.read_metadata(p).metadata[b"dd_assets.stats"])
        for p in batch_files(env).values()
    ]
    assert sum(s["llm"]["llm_retries"] for s in stats) == 200
    assert all(s["dropped_rows"] == 0 and s["llm"]["llm_failures"] == 0 for s in stats)


def test_broken_json_and_empty_answers_then_recovery(env: Path, tmp_path: Path, capsys) -> None:
    """A gateway answering cut JSON and empty content for a while: those cells are unfinished
    (exit 4), never cached; after recovery a rerun completes the dataset."""
    with MockOpenAI(latency_s=0.002) as mock:
        cfg = write_config(
            tmp_path / "wf.yaml",
            _structured(
                _config(mock.url, run={"early_stop": {"window": 50, "max_failure_rate": 0.5}})
            ),
        )
        # Row group 0's ten cells each get two of them (one row group at a time, max_retries 1).
        mock.queue_faults(*["invalid_json", "empty", "null_content", "not_json"] * 5)
        code, _, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        assert code == 4, err
        (line,) = _error_lines(err)
        assert line.startswith("error: 10 LLM cell(s) unfinished in qa row group(s) 00000:")
        mock.reset()
        assert _run(capsys, "materialize", str(cfg), "--no-progress")[0] == 0
        assert mock.requests == 10
    rows = _rows(env)
    assert len(rows) == 60 and all(r["answer"] == {"fact": "example fact"} for r in rows)
    contents = _cache_contents(env)
    assert len(contents) == 60
    assert all(json.loads(c) == {"fact": "example fact"} for c in contents)


def test_one_row_refused_with_400_is_dropped_counted_and_exit_per_budget(
    env: Path, tmp_path: Path, capsys
) -> None:
    """Row 23's prompt is over the context length: that row is dropped (the stage goes on and
    is complete), recorded with its provenance, shown by status, exported by export --drops.
    1 of 60 rows is over the default 1% budget: exit 5, and the blocking check agrees. A rerun
    asks nothing; --retry-dropped asks exactly that cell."""
    with MockOpenAI(latency_s=0.002) as mock:
        config = _config(mock.url)
        rid = sampler_rows(config, "qa")[23]["rid"]
        cfg = write_config(tmp_path / "wf.yaml", config)
        mock.prompt_faults = {rid: 400}
        code, out, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        assert code == 5, err
        (line,) = _error_lines(err)
        assert line.startswith(
            "error: over the drop budget: stage qa: 1 of 60 planned rows dropped (1.7%); over"
            " run.max_drop_rate 1.0%; in row group(s) 00002"
        )
        assert "answer: rejected (HTTP 400) 1" in line and "--retry-dropped" in line
        assert "qa: 6/6 row groups, 59 records (1 rows dropped)" in out
        assert mock.requests == 60

        code, out, _ = _run(capsys, "status", str(cfg))
        assert code == 0 and "6/6" in out
        assert "qa: 1 rows dropped (1.7% of 60): answer: rejected (HTTP 400) 1" in out
        code, out, err = _run(capsys, "check", str(cfg))
        assert code == 1 and "failed: 1 blocking check(s): qa/rows_within_drop_budget" in err
        drops = tmp_path / "drops.jsonl"
        code, out, _ = _run(capsys, "export", str(cfg), "--drops", "-o", str(drops))
        assert code == 0 and "wrote 1 dropped rows of llmwf/qa" in out
        assert [json.loads(x) for x in drops.read_text().splitlines()] == [
            {
                "row_group": 2,
                "row": 23,
                "column": "answer",
                "reason": "rejected",
                "status": 400,
                "message": CONTEXT_LENGTH_MESSAGE,
            }
        ]
        assert rid not in {r["rid"] for r in _rows(env)}

        # Within a 5% budget the same data is a success, for materialize and for the checks.
        write_config(cfg, _config(mock.url, run={"max_drop_rate": 0.05}))
        mock.reset()
        assert _run(capsys, "materialize", str(cfg), "--no-progress")[0] == 0
        assert mock.requests == 0  # a dropped row is not asked again
        assert _run(capsys, "check", str(cfg))[0] == 0

        mock.prompt_faults = {}
        code, out, err = _run(capsys, "materialize", str(cfg), "--no-progress", "--retry-dropped")
        assert code == 0, err
        assert mock.requests == 1 and rid in mock.bodies[0]["messages"][0]["content"]
    assert len(_rows(env)) == 60
    code, out, _ = _run(capsys, "export", str(cfg), "--drops", "-o", str(drops))
    assert "wrote 0 dropped rows" in out and drops.read_text() == ""


def test_slow_loris_and_a_10_mb_answer(env: Path, tmp_path: Path, capsys) -> None:
    """A body dripping a byte every 0.5 s fails its cell within timeout_s (1 s), not after the
    minutes the body would take: unfinished, exit 4, and the rerun completes it. A 10 MB answer
    is dropped as too_large; the row groups stay small."""
    with MockOpenAI(latency_s=0.002, drip_s=0.5) as mock:
        config = _config(
            mock.url, model={"timeout_s": 1, "max_retries": 0}, run={"max_drop_rate": 0.05}
        )
        rid = sampler_rows(config, "qa")[42]["rid"]
        cfg = write_config(tmp_path / "wf.yaml", config)
        mock.queue_faults("slow_loris")
        mock.prompt_faults = {rid: "huge"}
        started = time.perf_counter()
        code, _out, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        assert code == 4, err
        assert time.perf_counter() - started < 30
        (line,) = _error_lines(err)
        assert line.startswith("error: 1 LLM cell(s) unfinished in qa row group(s) 00000:")
        assert "timeout: no complete answer within timeout_s=1s" in line
        code, _, err = _run(capsys, "materialize", str(cfg), "--no-progress")
        assert code == 0, err
    drops = tmp_path / "drops.jsonl"
    assert _run(capsys, "export", str(cfg), "--drops", "-o", str(drops))[0] == 0
    (drop,) = [json.loads(x) for x in drops.read_text().splitlines()]
    assert (drop["row"], drop["reason"], drop["status"]) == (42, "too_large", 200)
    assert "max_response_bytes=2097152" in drop["message"]
    assert len(_rows(env)) == 59
    assert max(p.stat().st_size for p in batch_files(env).values()) < 100_000


def test_rejected_key_is_exit_1_with_the_providers_message(
    env: Path, tmp_path: Path, capsys
) -> None:
    with MockOpenAI(require_key="the-right-key") as mock:
        cfg = write_config(tmp_path / "wf.yaml", _config(mock.url))
        code = cli.main(["materialize", str(cfg), "--no-progress"])
        err = capsys.readouterr().err
        requests = mock.requests
    assert code == 1
    assert "401" in err
    assert SECRET not in err
    assert requests <= 8  # stops at once: no retries of a 401
    assert batch_files(env) == {}
