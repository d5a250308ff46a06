"""LLM failures as `dd-assets materialize` reports them through Dagster: the exit code and the
message a user sees, and what stays on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from dd_assets import cli
from dd_assets.llm import client as llm_client
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import batch_files, write_config

pytestmark = [pytest.mark.slow]

KEY_ENV = "DD_TEST_CLI_KEY"
SECRET = "sk-test-CLI-SECRET-456"


def _config(url: str) -> dict:
    return {
        "name": "llmwf",
        "models": {
            "gen": {
                "base_url": url,
                "model": "m-cli",
                "api_key_env": KEY_ENV,
                "max_parallel_requests": 4,
                "max_retries": 1,
            }
        },
        "run": {
            "partitions_per_run": 2,
            "row_groups_in_flight": 1,
            "early_stop": {"window": 10, "max_failure_rate": 0.5},
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
    with MockOpenAI(latency_s=0.002) as mock:
        cfg = write_config(tmp_path / "wf.yaml", _config(mock.url))
        # Healthy for the first two row groups, then the provider breaks for good.
        assert cli.main(["materialize", str(cfg), "--no-progress", "--partitions", "0-1"]) == 0
        mock.fail_rate = 1.0
        mock.fail_statuses = [503]
        capsys.readouterr()
        code = cli.main(["materialize", str(cfg), "--no-progress"])
        err = capsys.readouterr().err
    assert code == 3, err
    assert "stopped early (partial result)" in err
    assert "early stop" in err and "503" in err
    names = sorted(Path(k).name for k in batch_files(env))
    assert names == ["batch_00000.parquet", "batch_00001.parquet"]  # nothing half-written
    assert SECRET not in err


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
