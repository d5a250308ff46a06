"""The DataDesigner `images` fixture (image columns on both of DataDesigner's routes, and
multi_modal_context with data_type null) against the mock OpenAI server: referenced with
`data_designer:` it validates and previews the rows DataDesigner 0.9.7's own preview made
against the same mock (tests/fixtures/datadesigner/images_preview.jsonl), and `dd-assets
import` writes a workflow that previews the same rows."""

from __future__ import annotations

import json
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


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_images_fixture_previews_datadesigners_rows_and_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    monkeypatch.setenv("DD_TEST_MOCK_KEY", "k")
    theirs = {r["subject"]: r for r in map(json.loads, (FIXTURES / "images_preview.jsonl").open())}
    with MockOpenAI() as mock:
        provider = {"endpoint": mock.url, "api_key": "DD_TEST_MOCK_KEY"}
        stage = {"name": "x", "num_records": 6, "buffer_size": 6}
        cfg = write_config(
            tmp_path / "wf.yaml",
            {
                "name": "dd",
                "providers": {"mock": provider},
                "stages": [{**stage, "data_designer": str(FIXTURES / f"images{suffix}")}],
            },
        )
        assert cli.main(["validate", str(cfg)]) == 0
        assert cli.main(["preview", str(cfg), "-n", "6"]) == 0
        assert "picture" in capsys.readouterr().out
        shown = preview_stage(plan_workflow(load_workflow(cfg))["x"], 6)
        rows = shown.table.to_pylist()
        assert len(rows) == 6, shown.dropped
        # The same mock answers the same request with the same image, so equal cells mean
        # DataDesigner and dd-assets sent the same requests: the diffusion model's prompt to
        # /images/generations, the chat image model's prompt after picture (detected base64).
        for r in rows:
            assert r == theirs[r["subject"]]
        drawn = [b for b in mock.bodies if b.get("model") == "mock/gpt-image-1"]
        assert drawn and all(b["size"] == "256x256" and "messages" not in b for b in drawn)
        sketched = [b for b in mock.bodies if b.get("model") == "mock/image-model"]
        assert all(
            b["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
            for b in sketched
        )

        out = tmp_path / "native.yaml"
        args = ["import", str(FIXTURES / f"images{suffix}"), "-o", str(out), "--name", "dd"]
        args += ["--provider", f"mock={mock.url},api_key_env=DD_TEST_MOCK_KEY"]
        assert cli.main(args) == 0
        assert "0 thing(s) lost" in capsys.readouterr().out
        native = yaml.safe_load(out.read_text())
        native["stages"][0].update(stage)
        assert native["models"]["mock-painter"]["max_response_bytes"] == 64 * 1024 * 1024
        out.write_text(yaml.safe_dump(native, sort_keys=False))
        again = preview_stage(plan_workflow(load_workflow(out))["x"], 6)
        assert again.table.equals(shown.table)
