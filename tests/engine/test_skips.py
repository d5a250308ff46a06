"""`skip` and `propagate_skip` (DataDesigner's conditional generation): a skipped cell holds
skip.value, its side columns are null, its LLM cell sends no request (counted at the mock over
real HTTP), and a skip propagates to the columns reading it unless they opt out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dd_assets.config import WorkflowConfigError, load_workflow, parse_workflow
from dd_assets.config.fingerprint import workflow_fingerprints
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.preview import preview_stage
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import write_config


def _workflow(url: str, columns: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "skips",
        "models": {"m": {"base_url": url, "model": "mock-model", "api_key_env": "SKIP_TEST_KEY"}},
        "stages": [{"name": "s", "num_records": 12, "buffer_size": 12, "columns": columns}],
    }


COLUMNS: list[dict[str, Any]] = [
    {"name": "stock", "column_type": "sampler", "sampler_type": "category", "params": {"values": [0, 1, 2]}},
    # batch phase: an expression gated on a sampler
    {"name": "label", "column_type": "expression", "expr": "s{{ stock }}", "skip": {"when": "{{ stock == 1 }}", "value": "one"}},
    # cell phase: an LLM cell gated on a sampler, with a trace
    {
        "name": "note",
        "column_type": "llm-text",
        "model_alias": "m",
        "prompt": "Restock note for level {{ stock }}",
        "with_trace": "last_message",
        "skip": {"when": "{{ stock > 0 }}", "value": "n/a"},
    },
    # reads a skipped cell: skipped too (propagate_skip defaults to true), value None
    {"name": "follow_up", "column_type": "llm-text", "model_alias": "m", "prompt": "On {{ note }}"},
    # opts out: rendered from the skipped cell's value
    {"name": "note_len", "column_type": "expression", "expr": "{{ note | length }}", "dtype": "int", "propagate_skip": False},
    # the expression's skip.value is converted to its dtype, as DataDesigner does
    {"name": "double", "column_type": "expression", "expr": "{{ stock * 2 }}", "dtype": "int",
     "skip": {"when": "{{ stock == 2 }}", "value": "7"}},
]  # fmt: skip


def test_skipped_cells_hold_their_value_and_send_no_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SKIP_TEST_KEY", "k")
    with MockOpenAI() as mock:
        wf = load_workflow(write_config(tmp_path / "wf.yaml", _workflow(mock.url, COLUMNS)))
        result = preview_stage(plan_workflow(wf)["s"], 12)
        rows = result.table.to_pylist()
        assert len(rows) == 12, result.drops
        asked = [b["messages"][-1]["content"] for b in mock.bodies]
    stocks = [r["stock"] for r in rows]
    assert {0, 1, 2} <= set(stocks)
    for r in rows:
        assert r["label"] == ("one" if r["stock"] == 1 else f"s{r['stock']}")
        assert r["double"] == (7 if r["stock"] == 2 else r["stock"] * 2)
        if r["stock"] > 0:
            assert r["note"] == "n/a" and r["note__trace"] is None
            assert r["follow_up"] is None  # propagated: no skip gate of its own, so null
            assert r["note_len"] == 3
        else:
            assert r["note"].startswith("[mock-model] Restock note for level 0")
            assert r["note__trace"][0]["role"] == "assistant"
            assert r["follow_up"].startswith("[mock-model] On ")
            assert r["note_len"] == len(r["note"])
    # Only the rows not skipped were asked: one note and one follow-up each.
    zeros = stocks.count(0)
    assert len(asked) == 2 * zeros
    assert sum(a.startswith("Restock note") for a in asked) == zeros


def test_skip_is_checked_and_leaves_old_fingerprints_alone(tmp_path: Path) -> None:
    base = _workflow(
        "http://127.0.0.1:9/v1",
        [*COLUMNS[:1], {"name": "e", "column_type": "expression", "expr": "{{ stock }}"}],
    )
    plain = workflow_fingerprints(parse_workflow(base))["s"].hex
    defaults = _workflow("http://127.0.0.1:9/v1", COLUMNS[:1])
    defaults["stages"][0]["columns"].append(
        {
            "name": "e",
            "column_type": "expression",
            "expr": "{{ stock }}",
            "skip": None,
            "propagate_skip": True,
        }
    )
    assert workflow_fingerprints(parse_workflow(defaults))["s"].hex == plain
    bad = [
        ({"name": "x", "column_type": "sampler", "sampler_type": "uniform", "params": {"low": 0, "high": 1},
          "skip": {"when": "{{ stock }}"}}, "skip does not apply to sampler columns"),
        ({"name": "x", "column_type": "expression", "expr": "{{ stock }}", "skip": {"when": "stock == 0"}},
         "reads no column"),
        ({"name": "x", "column_type": "expression", "expr": "{{ stock }}", "dtype": "int",
          "skip": {"when": "{{ stock }}", "value": "n/a"}}, "cannot be converted to int"),
        ({"name": "x", "column_type": "expression", "expr": "{{ stock }}", "skip": {"when": "{{ nope }}"}},
         "unknown column 'nope'"),
    ]  # fmt: skip
    for col, message in bad:
        with pytest.raises(WorkflowConfigError, match=message):
            parse_workflow(_workflow("http://127.0.0.1:9/v1", [COLUMNS[0], col]))
