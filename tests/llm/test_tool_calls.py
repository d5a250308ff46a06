"""Tool calls (DataDesigner's tool_alias / tool_configs) against real parts: a FastMCP server
started over stdio (dd_assets.testing.mcp_server) and the mock OpenAI server answering with
tool_calls. Why it takes seconds: a run starts its MCP server (a Python process importing the
SDK, ~1 s) as a real run does; the loop test makes 8 short runs (loop, cache replay, a changing
tool, the turn budget, an endless caller, a wrong tool, a bad allow_tools) in one test, the HTTP
test one server in a thread."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.engine.compiled import compile_stage
from dd_assets.engine.rowgroup import agenerate_rows
from dd_assets.llm.cells import LLMCellRunner
from dd_assets.llm.tools import REFUSAL, ToolError
from dd_assets.testing.mcp_server import http_server, stdio_provider
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import write_config

pytestmark = pytest.mark.slow  # starts an MCP server process per run


def _workflow(tmp_path: Path, url: str, log: Path, allow: list[str], turns: int = 2) -> Path:
    return write_config(
        tmp_path / "wf.yaml",
        {
            "name": "tools",
            "models": {"m": {"base_url": url, "model": "mock/tool-model"}},
            "mcp_providers": {"docs": stdio_provider(str(log))},
            "tools": {
                "search": {
                    "providers": ["docs"],
                    "allow_tools": allow,
                    "max_tool_call_turns": turns,
                    "timeout_s": 30,
                }
            },
            "stages": [
                {
                    "name": "s",
                    "num_records": 4,
                    "buffer_size": 4,
                    "columns": [
                        {
                            "name": "sku",
                            "column_type": "sampler",
                            "sampler_type": "category",
                            "params": {"values": ["A1", "B22"]},
                        },
                        {
                            "name": "note",
                            "column_type": "llm-text",
                            "model_alias": "m",
                            "prompt": "Write a restock note for {{ sku }}",
                            "tool_alias": "search",
                            "with_trace": "all_messages",
                        },
                    ],
                }
            ],
        },
    )


def _run(cfg: Path, cache: Path) -> Any:
    wf = load_workflow(cfg)
    cs = compile_stage(wf, "s")

    async def go() -> Any:
        async with LLMCellRunner(wf, "s", cache_path=cache) as runner:
            return await agenerate_rows(cs, 0, 4, cells=runner)

    return asyncio.run(go())


def _calls(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_tool_loop_trace_cache_turn_limit_and_faults(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "calls.jsonl"
    cache = tmp_path / "cache.sqlite"
    with MockOpenAI(tool_turns=1) as mock:
        cfg = _workflow(tmp_path, mock.url, log, ["search_docs"])
        assert cli.main(["validate", str(cfg)]) == 0
        result = _run(cfg, cache)
        rows = result.table.to_pylist()
        assert len(rows) == 4, result.drops
        # The request offered exactly the allowed tool, in OpenAI's format, from the server's
        # listing (its description and JSON schema).
        first = mock.bodies[0]
        assert [t["function"]["name"] for t in first["tools"]] == ["search_docs"]
        assert first["tools"][0]["type"] == "function"
        assert first["tools"][0]["function"]["parameters"]["required"] == ["query"]
        assert len(_calls(log)) == 4  # one tool call per row, run by the MCP server
        for r in rows:
            # The answer read the tool's result; the trace holds every turn, as DataDesigner's.
            assert "tools: doc hit for 'Write a restock note for" in r["note"]
            trace = r["note__trace"]
            assert [m["role"] for m in trace] == ["user", "assistant", "tool", "assistant"]
            call = trace[1]["tool_calls"][0]
            assert call["function"]["name"] == "search_docs"
            assert json.loads(call["function"]["arguments"])["query"].startswith("Write a")
            assert trace[2]["tool_call_id"] == call["id"]
            assert trace[2]["content"][0]["text"].startswith("doc hit for")
            assert trace[3]["content"][0]["text"] == r["note"]

        # Rerun: a deterministic tool gives the same results, so every LLM answer (the
        # tool-calling one and the final one) comes from the cache; the tools run again.
        asked = mock.requests
        again = _run(cfg, cache)
        assert again.table.equals(result.table)
        assert mock.requests == asked and len(_calls(log)) == 8

        # A tool whose answer changes: the final answer depended on it, so it is asked again.
        cfg = _workflow(tmp_path, mock.url, log, ["flaky_lookup"])
        _run(cfg, cache)
        asked = mock.requests
        _run(cfg, cache)
        assert mock.requests == asked + 4  # the tool-calling turn cached, the answer not

        # Past max_tool_call_turns the calls are refused, not run, and the model answers (a
        # fresh cache: the mock now answers the same requests differently, a model would not).
        mock.tool_turns = 4
        before = len(_calls(log))
        cache = tmp_path / "cache2.sqlite"
        cfg = _workflow(tmp_path, mock.url, log, ["search_docs"], turns=2)
        refused = _run(cfg, cache).table.to_pylist()
        assert len(_calls(log)) == before + 2 * 4
        trace = refused[0]["note__trace"]
        tool_texts = [m["content"][0]["text"] for m in trace if m["role"] == "tool"]
        assert len(tool_texts) == 4 and tool_texts[2:] == [REFUSAL, REFUSAL]

        # A model that goes on calling tools as many turns past the budget as it had: dropped.
        mock.tool_turns = 10
        endless = _run(cfg, tmp_path / "cache4.sqlite")
        assert endless.table.num_rows == 0 and {d.kind for d in endless.drops} == {"tool_call"}
        assert "went on calling tools after 2 refused turn(s)" in endless.drops[0].message

        # A tool the column was not offered: that row's call is wrong, the row is dropped.
        mock.tool_turns, mock.tool_name = 1, "stock_level"
        dropped = _run(cfg, tmp_path / "cache3.sqlite")
        assert dropped.table.num_rows == 0
        assert {d.kind for d in dropped.drops} == {"tool_call"}
        assert (
            "tool 'stock_level', which tool_alias 'search' does not offer"
            in dropped.drops[0].message
        )

        # allow_tools naming a tool no provider offers: the setup is wrong, the run stops.
        cfg = _workflow(tmp_path, mock.url, log, ["no_such_tool"])
        with pytest.raises(Exception, match=r"allow_tools \['no_such_tool'\] not offered"):
            _run(cfg, cache)


def test_a_streamable_http_provider_with_a_key_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MockOpenAI(tool_turns=1) as mock, http_server(require_key="s3cret") as endpoint:
        cfg = _workflow(tmp_path, mock.url, tmp_path / "calls.jsonl", ["stock_level"])
        wf = yaml.safe_load(cfg.read_text())
        wf["mcp_providers"] = {
            "docs": {"provider_type": "streamable_http", "endpoint": endpoint, "api_key": "MCP_KEY"}
        }
        cfg.write_text(yaml.safe_dump(wf))
        with pytest.raises(ToolError, match="environment variable MCP_KEY is not set"):
            _run(cfg, tmp_path / "c.sqlite")
        monkeypatch.setenv("MCP_KEY", "s3cret")
        rows = _run(cfg, tmp_path / "c.sqlite").table.to_pylist()
        # stock_level returns the length of its sku argument (the mock sends the prompt)
        assert len(rows) == 4
        for r in rows:
            assert r["note"].endswith(f"| tools: {len('Write a restock note for ' + r['sku'])}")
        assert "s3cret" not in cfg.read_text()
