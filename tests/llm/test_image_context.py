"""multi_modal_context (DataDesigner's image context): the images of a row go before the
prompt's text as OpenAI image_url parts (sent over real HTTP to the mock), base64 as data URIs,
a JSON-list cell as several images; the all_messages trace keeps them as image_url parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from dd_assets.config import WorkflowConfigError, load_workflow, parse_workflow
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.preview import preview_stage
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import write_config


def _config(url: str, contexts: list[dict]) -> dict:
    return {
        "name": "img",
        "models": {"m": {"base_url": url, "model": "vision", "api_key_env": "IMG_TEST_KEY"}},
        "stages": [
            {
                "name": "s",
                "num_records": 2,
                "buffer_size": 2,
                "columns": [
                    {"name": "pics", "column_type": "expression",
                     "expr": '["https://x.test/{{ 1 }}.png", "https://x.test/2.png"]'},
                    {"name": "raw", "column_type": "expression", "expr": "iVBORw0KGgo="},
                    {"name": "cap", "column_type": "llm-text", "model_alias": "m",
                     "prompt": "Describe.", "with_trace": "all_messages",
                     "multi_modal_context": contexts},
                ],
            }
        ],
    }  # fmt: skip


def test_images_are_sent_before_the_prompt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMG_TEST_KEY", "k")
    contexts = [
        {"column_name": "pics", "data_type": "url"},
        {"column_name": "raw", "data_type": "base64", "image_format": "png"},
    ]
    with MockOpenAI() as mock:
        wf = load_workflow(write_config(tmp_path / "wf.yaml", _config(mock.url, contexts)))
        rows = preview_stage(plan_workflow(wf)["s"], 2).table.to_pylist()
        bodies = mock.bodies
    urls = ["https://x.test/1.png", "https://x.test/2.png", "data:image/png;base64,iVBORw0KGgo="]
    assert len(bodies) == 2
    for b in bodies:
        content = b["messages"][0]["content"]
        assert [p["image_url"]["url"] for p in content[:3]] == urls
        assert content[3] == {"type": "text", "text": "Describe."}
    for r in rows:
        assert r["cap"].startswith("[vision] Describe.")
        user = r["cap__trace"][0]["content"]
        assert [p["text"] for p in user] == [*urls, "Describe."]
        assert [p["type"] for p in user] == ["image_url"] * 3 + ["text"]
    with pytest.raises(WorkflowConfigError, match="image_format is required"):
        parse_workflow(_config(mock.url, [{"column_name": "raw", "data_type": "base64"}]))
    with pytest.raises(WorkflowConfigError, match="unknown column 'nope'"):
        parse_workflow(_config(mock.url, [{"column_name": "nope", "data_type": "url"}]))
