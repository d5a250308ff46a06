"""The DataDesigner LLM fixture end to end against the mock OpenAI server: referenced with
`data_designer:` it validates and previews (every LLM column type, the message trace, inference
distributions, extra_body), and `dd-assets import` writes a workflow that previews the same rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.preview import preview_stage
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import write_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "datadesigner"


def _referenced(tmp_path: Path, url: str, suffix: str) -> Path:
    provider = {"endpoint": url, "api_key": "DD_TEST_MOCK_KEY"}
    return write_config(
        tmp_path / "wf.yaml",
        {
            "name": "dd",
            # nvidia is a built-in provider; pointed at the mock here.
            "providers": {"mock": provider, "nvidia": provider},
            "stages": [
                {
                    "name": "llm",
                    "num_records": 4,
                    "buffer_size": 4,
                    "data_designer": str(FIXTURES / f"llm{suffix}"),
                }
            ],
        },
    )


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_llm_fixture_validates_previews_and_imports_to_the_same_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    monkeypatch.setenv("DD_TEST_MOCK_KEY", "k")
    with MockOpenAI() as mock:
        cfg = _referenced(tmp_path, mock.url, suffix)
        assert cli.main(["validate", str(cfg)]) == 0
        assert cli.main(["preview", str(cfg), "-n", "3"]) == 0
        assert "answer__trace" in capsys.readouterr().out
        shown = preview_stage(plan_workflow(load_workflow(cfg))["llm"], 3)
        assert shown.table.num_rows == 3, shown.dropped
        row = shown.table.to_pylist()[0]
        trace = row["answer__trace"]
        assert [m["role"] for m in trace] == ["user", "assistant"]
        assert trace[-1]["content"] == [{"type": "text", "text": row["answer"]}]
        assert trace[0]["content"][0]["text"].startswith("Answer the customer question:")
        assert set(row["quality"]) == {"helpfulness", "tone"}
        assert row["quality"]["helpfulness"]["score"] in ("1", "2", "3")  # keys are text, as theirs
        # DataDesigner's inference distributions: drawn per cell, within their range; its
        # extra_body goes into the request body.
        bodies = [b for b in mock.bodies if b["model"] == "nvidia/nemotron-3-nano-30b-a3b"]
        assert bodies and all(0.5 <= b["temperature"] <= 0.9 for b in bodies)
        assert all(b["top_p"] in (0.9, 0.95) for b in bodies)
        assert all(b["chat_template_kwargs"] == {"enable_thinking": False} for b in bodies)

        out = tmp_path / "native.yaml"
        args = ["import", str(FIXTURES / f"llm{suffix}"), "-o", str(out), "--name", "dd"]
        args += ["--provider", f"mock={mock.url},api_key_env=DD_TEST_MOCK_KEY"]
        args += ["--provider", f"nvidia={mock.url},api_key_env=DD_TEST_MOCK_KEY"]
        assert cli.main(args) == 0
        native = yaml.safe_load(out.read_text())
        native["stages"][0].update(name="llm", num_records=4, buffer_size=4)
        out.write_text(yaml.safe_dump(native, sort_keys=False))
        assert cli.main(["validate", str(out)]) == 0
        again = preview_stage(plan_workflow(load_workflow(out))["llm"], 3)
        assert again.table.equals(shown.table)
