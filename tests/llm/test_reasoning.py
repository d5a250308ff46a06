"""extract_reasoning_content: a reasoning model's `reasoning_content` (sent by the mock over
real HTTP) lands, stripped, in `<column>__reasoning_content`, beside a `last_message` trace;
an answer without reasoning gives null there."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from dd_assets.config import load_workflow
from dd_assets.engine.schema import stage_schema
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.preview import preview_stage
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import write_config


def test_reasoning_content_goes_to_its_side_column(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REASONING_TEST_KEY", "k")
    with MockOpenAI(reasoning_template="  thinking about: {prompt}\n") as mock:
        cfg = write_config(
            tmp_path / "wf.yaml",
            {
                "name": "r",
                "models": {
                    "m": {
                        "base_url": mock.url,
                        "model": "think",
                        "api_key_env": "REASONING_TEST_KEY",
                    }
                },
                "stages": [
                    {
                        "name": "s",
                        "num_records": 3,
                        "buffer_size": 3,
                        "columns": [
                            {
                                "name": "n",
                                "column_type": "sampler",
                                "sampler_type": "uniform",
                                "params": {"low": 0, "high": 9},
                            },
                            {
                                "name": "a",
                                "column_type": "llm-text",
                                "model_alias": "m",
                                "prompt": "Say {{ n }}",
                                "with_trace": "last_message",
                                "extract_reasoning_content": True,
                            },
                        ],
                    }
                ],
            },
        )
        wf = load_workflow(cfg)
        table = preview_stage(plan_workflow(wf)["s"], 3).table
        assert table.schema == stage_schema(wf, "s")
        assert table.schema.field("a__reasoning_content").type == pa.string()
        assert table.column_names == ["n", "a", "a__trace", "a__reasoning_content"]
        for r in table.to_pylist():
            assert r["a__reasoning_content"] == f"thinking about: Say {r['n']}"
            assert r["a__trace"] == [
                {"role": "assistant", "content": [{"type": "text", "text": r["a"]}]}
            ]
        mock.reasoning_template = "   "  # whitespace only: no reasoning, as DataDesigner reads it
        again = preview_stage(plan_workflow(wf)["s"], 3).table
        assert again.column("a__reasoning_content").to_pylist() == [None] * 3
