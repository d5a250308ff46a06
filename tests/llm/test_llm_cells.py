"""LLM columns end to end: workflow config -> `stage_runner.materialize` -> parquet on disk, against
the mock provider over real HTTP on 127.0.0.1 (no fake client objects).

Client-level behaviour (payloads, backoff shape, Retry-After, timeouts, key scrubbing in one call,
the cache file itself) is covered in test_llm_client.py; this file checks what a stage run does
with it: values and types in the written row groups, re-asks, drops, early stop, fatal errors,
parallelism, cell-level scheduling, the request cache across runs and crashes, usage metadata
and that the API key never reaches the data root."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dd_assets.config import ResumeMode, WorkflowConfig
from dd_assets.config.loader import loads_workflow, parse_workflow
from dd_assets.config.models import ModelConfig
from dd_assets.llm import LLMClient, LLMFatalError, request_hash
from dd_assets.llm import client as llm_client
from dd_assets.llm.cache import CACHE_DIR_ENV, RequestCache, cache_path
from dd_assets.llm.cells import SAME_REJECTIONS_FATAL, EarlyStopError, LLMCellRunner
from dd_assets.runners.materialize import RowGroupOutcome, UnfinishedCellsError, materialize
from dd_assets.runners.plan import StagePlan, plan_workflow
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.mock_openai import CONTEXT_LENGTH_MESSAGE, MockOpenAI
from dd_assets.testing.workflows import sampler_rows

MODEL = "m-cells"
KEY_ENV = "DD_TEST_CELLS_KEY"
SECRET = "sk-test-SECRET-123"
REPO = Path(__file__).resolve().parents[2]

RID = {"name": "rid", "column_type": "sampler", "sampler_type": "uuid", "params": {}}
TEXT_A = {"name": "a", "column_type": "llm-text", "model_alias": "gen", "prompt": "A: {{ rid }}"}
TEXT_B = {"name": "b", "column_type": "llm-text", "model_alias": "gen", "prompt": "B: {{ a }}"}
INFO_SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer", "minimum": 1990},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["title", "year", "tags"],
}


def structured(**overrides: Any) -> dict[str, Any]:
    col = {
        "name": "info",
        "column_type": "llm-structured",
        "model_alias": "gen",
        "prompt": "I: facts about {{ rid }}",
        "output_format": INFO_SCHEMA,
    }
    col.update(overrides)
    return col


@pytest.fixture
def mock() -> Iterator[MockOpenAI]:
    with MockOpenAI(seed=11) as server:
        yield server


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff is read from module constants at each retry: 1 ms instead of 0.5 s keeps retry
    tests fast while still going through the real sleep."""
    monkeypatch.setattr(llm_client, "BACKOFF_BASE_S", 0.001)
    monkeypatch.setattr(llm_client, "BACKOFF_CAP_S", 0.005)


def make_workflow(
    url: str,
    columns: list[dict[str, Any]],
    *,
    num_records: int = 10,
    buffer_size: int = 5,
    model: dict[str, Any] | None = None,
    run: dict[str, Any] | None = None,
) -> WorkflowConfig:
    """A one-stage workflow (stage `s`, row id column `rid` first) through the config loader."""
    m: dict[str, Any] = {
        "base_url": url,
        "model": MODEL,
        "max_parallel_requests": 4,
        "max_retries": 3,
        "timeout_s": 10,
    }
    m.update(model or {})
    data: dict[str, Any] = {
        "name": "cells",
        "models": {"gen": m},
        "stages": [
            {
                "name": "s",
                "num_records": num_records,
                "buffer_size": buffer_size,
                "columns": [RID, *columns],
            }
        ],
    }
    if run is not None:
        data["run"] = run
    return parse_workflow(data)


def run_stage(
    wf: WorkflowConfig,
    root: Path,
    *,
    resume: ResumeMode = ResumeMode.IF_POSSIBLE,
    in_flight: int = 2,
    on_done: Any = None,
    retry_dropped: bool = False,
) -> tuple[StagePlan, list[RowGroupOutcome]]:
    plan = plan_workflow(wf)["s"]
    out = materialize(
        plan,
        PartitionStore(root),
        range(plan.ref.num_row_groups),
        resume=resume,
        in_flight=in_flight,
        on_done=on_done,
        retry_dropped=retry_dropped,
    )
    return plan, out


def rid_row(rows: list[dict[str, Any]], body: dict[str, Any]) -> int:
    """Which row a request is for (A prompts name the rid, B prompts the row's answer a)."""
    text = body["messages"][0]["content"]
    return next(i for i, r in enumerate(rows) if r["rid"] in text)


def cached_contents(root: Path, workflow: str) -> list[str]:
    """The content of every answer in the request cache, read with sqlite3 directly."""
    con = sqlite3.connect(f"file:{cache_path(root, workflow)}?mode=ro", uri=True)
    try:
        return [
            json.loads(r[0])["content"] for r in con.execute("SELECT response FROM llm_responses")
        ]
    finally:
        con.close()


def parquet_files(root: Path, plan: StagePlan) -> dict[int, Path]:
    return {rg: info.path for rg, info in PartitionStore(root).completed(plan.ref).items()}


def read_rows(root: Path, plan: StagePlan) -> list[dict[str, Any]]:
    """All rows of the stage, read from the parquet files the store wrote, in row-group order."""
    rows: list[dict[str, Any]] = []
    for _, path in sorted(parquet_files(root, plan).items()):
        rows += pq.read_table(path).to_pylist()
    return rows


def footer_stats(path: Path) -> dict[str, Any]:
    """Stats exactly as written in the parquet footer (not the in-memory outcome)."""
    meta = pq.read_metadata(path).metadata
    return json.loads(meta[b"dd_assets.stats"])


def tag(body: dict[str, Any]) -> str:
    """Which column a request is for: prompts start with a one-letter tag ('A: ...')."""
    first_user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return first_user.split(":", 1)[0]


def full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args)


# ----------------------------------------------------------------------------- column types


def test_every_llm_column_type_lands_in_parquet_with_its_value_and_type(
    mock: MockOpenAI, tmp_path: Path
):
    columns = [
        {
            "name": "topic",
            "column_type": "sampler",
            "sampler_type": "category",
            "params": {"values": ["router", "laptop"]},
        },
        {
            "name": "text",
            "column_type": "llm-text",
            "model_alias": "gen",
            "prompt": "T: {{ topic }}",
        },
        structured(prompt="I: facts about {{ text }}"),
        {"name": "label", "column_type": "expression", "expr": "{{ info.title }}/{{ info.year }}"},
        {
            "name": "verdict",
            "column_type": "llm-judge",
            "model_alias": "gen",
            "prompt": "J: judge {{ text }}",
            "scores": [
                {"name": "helpful", "description": "is it useful", "options": {3: "yes", 1: "no"}},
                {"name": "tone", "description": "tone", "options": {"calm": "ok", "rude": "bad"}},
            ],
        },
        {
            "name": "snippet",
            "column_type": "llm-code",
            "model_alias": "gen",
            "code_lang": "python",
            "prompt": "C: a function about {{ topic }}",
        },
    ]
    wf = make_workflow(mock.url, columns, num_records=6, buffer_size=3)
    plan, outcomes = run_stage(wf, tmp_path / "dd-data")

    assert [o.reused for o in outcomes] == [False, False]
    files = parquet_files(tmp_path / "dd-data", plan)
    assert sorted(files) == [0, 1]
    schema = pq.read_schema(files[0])
    assert schema.field("text").type == pa.string()
    assert schema.field("info").type == pa.struct(
        [("title", pa.string()), ("year", pa.int64()), ("tags", pa.list_(pa.string()))]
    )
    assert schema.field("label").type == pa.string()
    verdict_t = schema.field("verdict").type
    assert verdict_t.field("helpful").type == pa.struct(
        [("score", pa.int64()), ("reasoning", pa.string())]
    )
    assert verdict_t.field("tone").type.field("score").type == pa.string()
    assert schema.field("snippet").type == pa.string()

    rows = read_rows(tmp_path / "dd-data", plan)
    assert len(rows) == 6
    for r in rows:
        assert r["topic"] in ("router", "laptop")
        assert r["text"] == f"[{MODEL}] T: {r['topic']}"  # the mock echoes the prompt
        # example_for_schema: a string field is "example <name>", integers their minimum
        assert r["info"] == {"title": "example title", "year": 1990, "tags": ["example tags"]}
        assert r["label"] == "example title/1990"  # downstream Jinja over the struct
        # the first listed option; int scores stay ints, string scores strings
        assert r["verdict"]["helpful"] == {"score": 3, "reasoning": "example reasoning"}
        assert r["verdict"]["tone"]["score"] == "calm"
        code = r["snippet"]
        assert "```" not in code and code.startswith(f"# [{MODEL}] C: a function about")
        assert "def answer() -> str:" in code

    by_tag: dict[str, list[dict[str, Any]]] = {}
    for b in mock.bodies:
        by_tag.setdefault(tag(b), []).append(b)
    assert {k: len(v) for k, v in by_tag.items()} == {"T": 6, "I": 6, "J": 6, "C": 6}
    assert all(b["model"] == MODEL for b in mock.bodies)
    info_rf = by_tag["I"][0]["response_format"]
    assert info_rf["type"] == "json_schema" and info_rf["json_schema"]["schema"] == INFO_SCHEMA
    judge_schema = by_tag["J"][0]["response_format"]["json_schema"]["schema"]
    assert judge_schema["required"] == ["helpful", "tone"]
    assert "response_format" not in by_tag["T"][0] and "response_format" not in by_tag["C"][0]


# ------------------------------------------------------------------------- structured re-ask


def test_unparseable_json_is_retried_like_a_503_and_never_cached(mock: MockOpenAI, tmp_path: Path):
    """JSON that does not parse at all is what a cut stream or an overloaded gateway returns:
    the same request is asked again (a retry, not a re-ask with the error shown), and the broken
    answer never reaches the cache."""
    wf = make_workflow(mock.url, [structured()], num_records=4, buffer_size=4)
    mock.queue_faults("invalid_json", "empty")  # the first answer cut in half, the second empty
    plan, _outcomes = run_stage(wf, tmp_path / "dd-data")

    rows = read_rows(tmp_path / "dd-data", plan)
    assert len(rows) == 4
    assert all(r["info"] == {"title": "example title", "year": 1990, "tags": ["example tags"]}
               for r in rows)  # fmt: skip
    stats = footer_stats(parquet_files(tmp_path / "dd-data", plan)[0])
    assert stats["dropped_rows"] == 0
    assert (stats["llm"]["llm_parse_retries"], stats["llm"]["llm_retries"]) == (0, 2)
    assert stats["llm"]["llm_requests"] == 4 and mock.requests == 6
    assert all(len(b["messages"]) == 1 for b in mock.bodies)  # no correction re-asks
    answers = cached_contents(tmp_path / "dd-data", "cells")
    assert len(answers) == 4
    assert all(json.loads(a)["year"] == 1990 for a in answers)


def test_answers_invalid_beyond_max_parse_retries_drop_their_row(mock: MockOpenAI, tmp_path: Path):
    """JSON that parses but breaks the schema is the model's doing: re-asked with the error shown,
    then the row is dropped, and the drops table says which row, which column and why."""
    mock.wrong_schema_rate = 0.5  # per request, a pure function of the body: deterministic
    wf = make_workflow(
        mock.url,
        [structured(max_parse_retries=1)],
        num_records=20,
        buffer_size=20,
        run={"early_stop": {"window": 1000, "max_failure_rate": 1.0}},
    )
    plan, _outcomes = run_stage(wf, tmp_path / "dd-data")

    rows = read_rows(tmp_path / "dd-data", plan)
    store = PartitionStore(tmp_path / "dd-data")
    info = store.completed(plan.ref)[0]
    stats = footer_stats(info.path)
    dropped = stats["dropped_rows"]
    assert dropped >= 1 and len(rows) >= 1, "seed 11 gives both outcomes"
    assert len(rows) + dropped == 20
    assert stats["drop_reasons"] == {"info: unusable_answer": dropped}
    drops = store.drops(plan.ref, info).to_pylist()
    assert len(drops) == dropped and len({d["row"] for d in drops}) == dropped
    for d in drops:
        assert (d["row_group"], d["column"], d["reason"], d["status"]) == (
            0,
            "info",
            "unusable_answer",
            None,
        )
        assert d["message"].startswith("no usable answer after 2 attempt(s): answer does not")
        assert "'title' is a required property" in d["message"]
    all_rows = sampler_rows(wf.model_dump(), "s")
    assert {r["rid"] for r in rows}.isdisjoint({all_rows[d["row"]]["rid"] for d in drops})
    # every dropped row was asked twice; rows that survived a re-ask count too
    reasks = [b for b in mock.bodies if len(b["messages"]) > 1]
    assert all("does not match the schema" in b["messages"][-1]["content"] for b in reasks)
    assert stats["llm"]["llm_parse_retries"] == len(reasks) >= dropped
    assert stats["llm"]["llm_requests"] == 20 + len(reasks) == mock.requests
    assert all(r["info"]["year"] == 1990 for r in rows)


# ---------------------------------------------------------------------- parallelism and DAG


def test_peak_concurrency_reaches_but_never_exceeds_max_parallel_requests(
    mock: MockOpenAI, tmp_path: Path
):
    mock.latency_s = 0.02
    wf = make_workflow(
        mock.url,
        [TEXT_A, TEXT_B],
        num_records=36,
        buffer_size=12,
        model={"max_parallel_requests": 4},
    )
    _plan, outcomes = run_stage(wf, tmp_path / "dd-data", in_flight=3)

    assert sum(o.info.rows for o in outcomes) == 36
    assert mock.requests == 72
    assert mock.peak_concurrency == 4


@pytest.mark.slow
def test_no_column_barrier_next_column_starts_before_previous_column_ends(
    mock: MockOpenAI, tmp_path: Path
):
    mock.latency_s = 0.005
    wf = make_workflow(mock.url, [TEXT_A, TEXT_B], num_records=100, buffer_size=100)
    plan, _ = run_stage(wf, tmp_path / "dd-data", in_flight=1)

    order = [tag(b) for b in mock.bodies]
    assert order.count("A") == 100 and order.count("B") == 100
    first_b, last_a = order.index("B"), len(order) - 1 - order[::-1].index("A")
    assert first_b < last_a, "every B request waited for every A request: a column barrier"
    # not just at the very end: a row's B overtakes later rows' A (rows finish in order)
    assert first_b < 50, order
    # each B request carries its own row's A answer, so dependencies were respected
    rows = {r["rid"]: r for r in read_rows(tmp_path / "dd-data", plan)}
    assert all(r["b"] == f"[{MODEL}] B: {r['a']}" for r in rows.values())
    assert all(r["a"] == f"[{MODEL}] A: {rid}" for rid, r in rows.items())


def test_waiting_calls_are_served_by_priority_and_cancelling_leaks_no_slot(mock: MockOpenAI):
    """The client's per-model limit serves waiters lowest priority (row index) first; that is what
    lets a row's next column overtake later rows. A cancelled waiter must not eat a slot."""
    mock.latency_s = 0.03
    cfg = ModelConfig(base_url=mock.url, model=MODEL, max_parallel_requests=2, max_retries=0)

    def ask(client: LLMClient, n: int) -> Any:
        msgs = [{"role": "user", "content": f"P: {n}"}]
        return asyncio.ensure_future(client.chat("gen", msgs, priority=n))

    async def go() -> None:
        async with LLMClient({"gen": cfg}) as client:
            first = [ask(client, 100), ask(client, 101)]
            await asyncio.sleep(0)  # both run up to their request: they hold the two slots
            waiting = {n: ask(client, n) for n in (9, 3, 7, 1, 5, 8)}
            await asyncio.sleep(0)  # all six now wait for a slot
            waiting[3].cancel()
            waiting[8].cancel()
            await asyncio.gather(*first, *waiting.values(), return_exceptions=True)
            assert waiting[3].cancelled() and waiting[8].cancelled()
            order = [b["messages"][0]["content"] for b in mock.bodies]
            # Two slots: calls are let in two at a time, lowest priority first; which of a pair
            # reaches the server first is up to the sockets.
            pairs = [set(order[i : i + 2]) for i in range(0, len(order), 2)]
            assert pairs == [{"P: 100", "P: 101"}, {"P: 1", "P: 5"}, {"P: 7", "P: 9"}]
            # all slots came back: two calls still run side by side
            mock.reset()
            await asyncio.gather(ask(client, 0), ask(client, 0))
            assert mock.peak_concurrency == 2

    asyncio.run(go())
    assert mock.requests == 2  # after the reset


# ------------------------------------------------------------------------------ failures


def test_transient_failures_are_retried_until_the_full_dataset_exists(
    mock: MockOpenAI, tmp_path: Path
):
    mock.fail_rate = 0.3
    mock.fail_statuses = [429, 500]
    wf = make_workflow(
        mock.url, [TEXT_A, TEXT_B], num_records=30, buffer_size=10, model={"max_retries": 10}
    )
    plan, _outcomes = run_stage(wf, tmp_path / "dd-data", in_flight=3)

    rows = read_rows(tmp_path / "dd-data", plan)
    assert len(rows) == 30 and len({r["rid"] for r in rows}) == 30
    assert all(r["b"] == f"[{MODEL}] B: {r['a']}" for r in rows)
    status = mock.by_status
    assert status.get(429, 0) > 0 and status.get(500, 0) > 0
    stats = [footer_stats(p) for p in parquet_files(tmp_path / "dd-data", plan).values()]
    assert all(s["dropped_rows"] == 0 and s["llm"]["llm_failures"] == 0 for s in stats)
    assert sum(s["llm"]["llm_requests"] for s in stats) == 60 == status[200]
    assert sum(s["llm"]["llm_retries"] for s in stats) == status[429] + status[500]


def test_transient_failures_outlasting_the_retries_leave_their_row_group_unsaved(
    mock: MockOpenAI, tmp_path: Path
):
    """A cell whose 503s outlast max_retries is unfinished, never dropped: its row group is not
    saved (so every reader sees it missing), the others are, and the run ends with
    UnfinishedCellsError. Once the endpoint recovers, a rerun asks exactly the cells without
    an answer and completes every row."""
    root = tmp_path / "dd-data"
    mock.fail_rate = 0.3
    mock.fail_statuses = [503]
    wf = make_workflow(
        mock.url,
        [TEXT_A, TEXT_B],
        num_records=40,
        buffer_size=10,
        model={"max_retries": 1},
        run={"early_stop": {"window": 1000, "max_failure_rate": 1.0}},
    )
    plan = plan_workflow(wf)["s"]
    with pytest.raises(UnfinishedCellsError) as info:
        run_stage(wf, root)
    held = info.value.unfinished
    assert held.stopped is None and held.not_started == {}
    missing = set(held.cells["s"])
    store = PartitionStore(root)
    assert missing and set(store.completed(plan.ref)) == set(range(4)) - missing
    msg = str(info.value)
    assert msg.startswith(
        f"{sum(held.cells['s'].values())} LLM cell(s) unfinished in s row group(s)"
    )
    assert "HTTP 503: Mock provider injected failure 503" in msg and "run materialize again" in msg
    assert info.value.exit_code == 4
    assert all(
        footer_stats(i.path)["dropped_rows"] == 0 for i in store.completed(plan.ref).values()
    )

    answered = {(c, r) for c, r, _ in _cached(cache_path(root, "cells"))}
    assert len(answered) < 80
    mock.fail_rate = 0.0
    mock.reset()
    plan, outcomes = run_stage(wf, root)
    rows = read_rows(root, plan)
    assert len(rows) == 40 and all(r["b"] == f"[{MODEL}] B: {r['a']}" for r in rows)
    assert [o.reused for o in outcomes] == [rg not in missing for rg in range(4)]
    asked = {(tag(b).lower(), rid_row(rows, b)) for b in mock.bodies}
    assert mock.requests == len(asked) == 80 - len(answered)
    assert asked.isdisjoint(answered)


def test_early_stop_counts_drops_not_transient_faults(mock: MockOpenAI, tmp_path: Path):
    """DataDesigner #575: retryable errors never count toward the early stop. A 503 burst
    longer than the retries leaves cells unfinished (no early stop); refusals after the column
    worked are drops, and enough of them stop the run (exit code 3)."""
    wf = make_workflow(
        mock.url,
        [TEXT_A],
        num_records=15,
        buffer_size=5,
        model={"max_retries": 1},
        run={"early_stop": {"window": 5, "max_failure_rate": 0.6}},
    )

    def endpoint_refuses(outcome: RowGroupOutcome) -> None:
        if outcome.row_group == 0:
            mock.fatal_status = 400

    with pytest.raises(EarlyStopError) as info:
        run_stage(wf, tmp_path / "dd-data", in_flight=1, on_done=endpoint_refuses)
    msg = str(info.value)
    assert msg.startswith("early stop: 3 of the last 5 LLM cells were dropped")
    assert "threshold 60%" in msg and "rejected" in msg and "backfill" in msg
    assert info.value.exit_code == 3

    plan = plan_workflow(wf)["s"]
    store = PartitionStore(tmp_path / "dd-data")
    done = store.completed(plan.ref)
    assert sorted(done) == [0], "the row group that tripped the early stop must not be saved"
    assert done[0].rows == 5 and done[0].stats["dropped_rows"] == 0

    # the same cells failing with 503s instead: unfinished, no early stop
    mock.fatal_status = None
    mock.fail_rate = 1.0
    mock.fail_statuses = [503]
    wf2 = make_workflow(
        mock.url,
        [TEXT_A],
        num_records=15,
        buffer_size=5,
        model={"max_retries": 1},
        run={"early_stop": {"window": 100, "max_failure_rate": 0.6}},
    )
    with pytest.raises(UnfinishedCellsError) as unfinished:
        run_stage(wf2, tmp_path / "dd-data", in_flight=1)
    assert unfinished.value.unfinished.cells == {"s": {1: 5, 2: 5}}

    # the endpoint recovers: a backfill produces the rest, reusing row group 0
    mock.fail_rate = 0.0
    before = mock.requests
    plan, outcomes = run_stage(wf, tmp_path / "dd-data", in_flight=1)
    assert [o.reused for o in outcomes] == [True, False, False]
    assert len(read_rows(tmp_path / "dd-data", plan)) == 15
    assert mock.requests - before == 10


def test_an_endpoint_down_for_a_window_of_cells_stops_the_run(mock: MockOpenAI, tmp_path: Path):
    """early_stop.window cells in a row unfinished: the endpoint is down, so the run stops asking
    (the rest would only hammer it) and starts no new row group; it ends unfinished (exit 4)."""
    wf = make_workflow(
        mock.url,
        [TEXT_A],
        num_records=40,
        buffer_size=5,
        model={"max_retries": 1, "max_parallel_requests": 2},
        run={"early_stop": {"window": 4, "max_failure_rate": 0.5}},
    )

    def endpoint_dies(outcome: RowGroupOutcome) -> None:
        if outcome.row_group == 0:
            mock.fail_rate = 1.0
            mock.fail_statuses = [500]

    with pytest.raises(UnfinishedCellsError) as info:
        run_stage(wf, tmp_path / "dd-data", in_flight=1, on_done=endpoint_dies)
    held = info.value.unfinished
    assert held.stopped and "4 cells in a row" in held.stopped
    assert held.cells == {"s": {1: 5}}  # 4 gave up, the 5th was not asked
    assert held.not_started == {"s": set(range(2, 8))}
    assert "6 row group(s) not started" in str(info.value)
    # 5 requests for row group 0, then 2 attempts for each of 4 cells (+ at most the 2 in flight)
    assert 5 + 8 <= mock.requests <= 5 + 8 + 2
    plan = plan_workflow(wf)["s"]
    assert sorted(PartitionStore(tmp_path / "dd-data").completed(plan.ref)) == [0]


def test_a_row_refused_with_400_is_dropped_with_its_provenance(mock: MockOpenAI, tmp_path: Path):
    """One row's prompt over the context length: that row is dropped (the stage goes on), the
    drops table beside its row group says which row, column, status and message. A rerun does
    not ask it again; --retry-dropped asks exactly that cell (and the cells after it in the row)."""
    root = tmp_path / "dd-data"
    wf = make_workflow(mock.url, [TEXT_A, TEXT_B], num_records=20, buffer_size=10)
    plan = plan_workflow(wf)["s"]
    rids = [r["rid"] for r in sampler_rows(wf.model_dump(), "s")]
    mock.prompt_faults = {f"A: {rids[13]}": 400}
    plan, outcomes = run_stage(wf, root)
    store = PartitionStore(root)
    rows = read_rows(root, plan)
    assert len(rows) == 19 and rids[13] not in {r["rid"] for r in rows}
    info = store.completed(plan.ref)[1]
    assert info.stats["dropped_rows"] == 1 and outcomes[1].stats == info.stats
    assert info.stats["drop_reasons"] == {"a: rejected (HTTP 400)": 1}
    (drop,) = store.drops(plan.ref, info).to_pylist()
    assert drop == {
        "row_group": 1,
        "row": 13,
        "column": "a",
        "reason": "rejected",
        "status": 400,
        "message": CONTEXT_LENGTH_MESSAGE,
    }
    assert store.drops(plan.ref, store.completed(plan.ref)[0]).num_rows == 0
    assert [p.name for p in store.drops_dir(plan.ref).iterdir()] == [info.drops]
    assert mock.requests == 39  # the refused row's b was never asked

    mock.reset()
    assert all(o.reused for o in run_stage(wf, root)[1]) and mock.requests == 0

    mock.prompt_faults = {}  # the prompt fits now (say, a model with a longer context)
    plan, outcomes = run_stage(wf, root, retry_dropped=True)
    assert [o.reused for o in outcomes] == [True, False]
    assert sorted(tag(b) for b in mock.bodies) == ["A", "B"]
    assert all(rids[13] in b["messages"][0]["content"] or "B: " in b["messages"][0]["content"]
               for b in mock.bodies)  # fmt: skip
    assert len(read_rows(root, plan)) == 20
    info = store.completed(plan.ref)[1]
    assert info.stats["dropped_rows"] == 0 and info.drops is None
    assert list(store.drops_dir(plan.ref).iterdir()) == []  # the old drops file went with it


def test_retry_dropped_asks_an_unusable_answer_afresh(mock: MockOpenAI, tmp_path: Path):
    """An unusable answer is cached (it is an answer): only --retry-dropped, which skips the
    cache for the dropped cells, gets a new one."""
    root = tmp_path / "dd-data"
    wf = make_workflow(mock.url, [structured(max_parse_retries=0)], num_records=4, buffer_size=4)
    mock.queue_faults("wrong_schema")
    plan, outcomes = run_stage(wf, root, in_flight=1)
    assert outcomes[0].stats["dropped_rows"] == 1
    mock.reset()
    run_stage(wf, root)
    assert mock.requests == 0
    plan, outcomes = run_stage(wf, root, retry_dropped=True)
    assert mock.requests == 1 and outcomes[0].stats["dropped_rows"] == 0
    assert len(read_rows(root, plan)) == 4


def test_a_freed_slots_next_request_is_out_before_the_answer_is_handed_on(
    mock: MockOpenAI, tmp_path: Path
):
    """Answers come back in bursts; the freed slots' waiting requests used to go out only after
    every answer of the burst was handed on (issue 17: each slot idled meanwhile). With one
    slot: when the first cell's answer reaches the engine, the second cell's request is out,
    and the first answer is already queued for the cache."""
    wf = make_workflow(mock.url, [TEXT_A], model={"max_parallel_requests": 1})
    col = wf.stage("s").columns[1]

    async def go() -> list[int]:
        seen: list[int] = []
        async with (
            LLMClient(wf.models) as client,
            LLMCellRunner(wf, "s", cache_path=tmp_path / "cache.sqlite", client=client) as runner,
        ):

            async def first() -> None:
                await runner(col, 0, {"rid": "r0"})
                seen.append(client.in_flight())

            await asyncio.gather(first(), runner(col, 1, {"rid": "r1"}))
        return seen

    assert asyncio.run(go()) == [1]
    assert mock.requests == 2
    with RequestCache(tmp_path / "cache.sqlite") as cache:
        assert cache.count("s") == 2


@pytest.mark.parametrize("status", [400, 401])
def test_fatal_status_stops_the_run_at_once(
    mock: MockOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int
):
    """401 stops at the first answer; a 400 is about one row unless the first rows of a column
    are all refused the same way (SAME_REJECTIONS_FATAL of them): then the request is wrong."""
    monkeypatch.setenv(KEY_ENV, SECRET)
    mock.latency_s = 0.02
    if status == 401:
        mock.require_key = "sk-some-other-key"
        expected = "Incorrect API key provided: ***."
        least, most = 1, 4  # the first answer stops it: only those in flight then were sent
    else:
        mock.fatal_status = 400
        expected = (
            "Mock provider rejected the request with status 400 (the first 5 rows of column 'a'"
            " were all refused this way, none answered: the request is wrong, not the rows)"
        )
        # the fifth refusal stops it: the 3 other slots' requests were sent, nothing after
        least, most = SAME_REJECTIONS_FATAL, SAME_REJECTIONS_FATAL + 3
    wf = make_workflow(
        mock.url,
        [TEXT_A, TEXT_B],
        num_records=20,
        buffer_size=10,
        model={"max_retries": 5, "api_key_env": KEY_ENV},
    )
    with pytest.raises(LLMFatalError) as info:
        run_stage(wf, tmp_path / "dd-data", in_flight=2)
    exc = info.value
    assert exc.status == status and exc.message == expected
    assert f"HTTP {status}" in str(exc) and expected in str(exc) and mock.url in str(exc)
    assert SECRET not in full_text(exc)

    # no retries: every request is a different cell, and no more than were in flight at once
    bodies = [json.dumps(b, sort_keys=True) for b in mock.bodies]
    assert len(set(bodies)) == len(bodies)
    # nothing sent after the stop: requests waiting for a slot are not sent (LLMClient.stop)
    assert least <= mock.requests <= most
    deadline = time.monotonic() + 5
    while mock.current and time.monotonic() < deadline:  # requests abandoned by the stop
        time.sleep(0.005)
    assert mock.by_status == {status: mock.requests}
    # nothing half-written: no row group, no temp file
    plan = plan_workflow(wf)["s"]
    files = PartitionStore(tmp_path / "dd-data").files_dir(plan.ref)
    assert not files.exists() or list(files.iterdir()) == []


# -------------------------------------------------------------------------- request cache


def test_lost_checkpoint_is_rebuilt_from_the_cache_without_requests(
    mock: MockOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # The cache is read once per row group (one query), never once per cell.
    reads: list[str] = []
    for name in ("get", "get_rows"):
        real = getattr(RequestCache, name)
        monkeypatch.setattr(
            RequestCache, name, lambda self, *a, _r=real, _n=name: reads.append(_n) or _r(self, *a)
        )
    root = tmp_path / "dd-data"
    wf = make_workflow(mock.url, [TEXT_A, TEXT_B, structured()], num_records=8, buffer_size=4)
    plan, _ = run_stage(wf, root)
    first = read_rows(root, plan)
    assert len(first) == 8 and mock.requests == 24
    assert reads == ["get_rows", "get_rows"]
    # every answer committed by the end of the run (the writer's group commits)
    assert len(cached_contents(root, "cells")) == 24

    # a crash after the answers arrived but before the checkpoint: no parquet file survives
    for path in parquet_files(root, plan).values():
        path.unlink()
    mock.reset()
    plan, outcomes = run_stage(wf, root)

    assert mock.requests == 0 and reads == ["get_rows"] * 4
    assert [o.reused for o in outcomes] == [False, False]
    assert read_rows(root, plan) == first
    for path in parquet_files(root, plan).values():
        llm = footer_stats(path)["llm"]
        assert llm["llm_cache_hits"] == 12 and llm["llm_requests"] == 0
        assert llm["llm_tokens_in"] == 0 and llm["llm_latency_p50_ms"] is None


def test_cache_folder_can_be_moved_off_the_data_root(
    mock: MockOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """DD_ASSETS_LLM_CACHE_DIR: one cache per machine when the data root is shared over NFS."""
    root, local = tmp_path / "dd-data", tmp_path / "node-local"
    monkeypatch.setenv(CACHE_DIR_ENV, str(local))
    wf = make_workflow(mock.url, [TEXT_A], num_records=8, buffer_size=4)
    plan, _ = run_stage(wf, root)
    assert (local / "cells" / "llm-cache.sqlite").is_file()
    assert not list(root.rglob("*.sqlite*"))
    for path in parquet_files(root, plan).values():
        path.unlink()
    mock.reset()
    run_stage(wf, root)
    assert mock.requests == 0  # answered from the moved cache


def test_config_edit_elsewhere_costs_no_repeat_call_for_unchanged_prompts(
    mock: MockOpenAI, tmp_path: Path
):
    root = tmp_path / "dd-data"
    wf = make_workflow(mock.url, [TEXT_A, TEXT_B], num_records=8, buffer_size=4)
    plan, _ = run_stage(wf, root)
    first = {r["rid"]: r for r in read_rows(root, plan)}
    mock.reset()

    edited_b = {**TEXT_B, "prompt": "B: rewrite {{ a }}"}
    extra = {
        "name": "mood",
        "column_type": "sampler",
        "sampler_type": "category",
        "params": {"values": ["x", "y"]},
    }
    wf2 = make_workflow(mock.url, [TEXT_A, edited_b, extra], num_records=8, buffer_size=4)
    plan2, _ = run_stage(wf2, root)

    assert plan2.ref.fingerprint != plan.ref.fingerprint  # a new dataset...
    assert [tag(b) for b in mock.bodies] == ["B"] * 8  # ...but column a was not asked again
    second = {r["rid"]: r for r in read_rows(root, plan2)}
    assert second.keys() == first.keys()
    assert all(second[k]["a"] == first[k]["a"] for k in first)
    assert all(second[k]["b"] == f"[{MODEL}] B: rewrite {first[k]['a']}" for k in first)
    for path in parquet_files(root, plan2).values():
        llm = footer_stats(path)["llm"]
        assert llm["llm_cache_hits"] == 4 and llm["llm_requests"] == 4


def test_resume_never_asks_again(mock: MockOpenAI, tmp_path: Path):
    root = tmp_path / "dd-data"
    wf = make_workflow(mock.url, [TEXT_A, TEXT_B], num_records=8, buffer_size=4)
    plan, _ = run_stage(wf, root)
    first_bodies = mock.bodies
    mock.reset()

    plan, outcomes = run_stage(wf, root, resume=ResumeMode.IF_POSSIBLE)
    assert mock.requests == 0 and all(o.reused for o in outcomes)

    plan, outcomes = run_stage(wf, root, resume=ResumeMode.NEVER)
    assert not any(o.reused for o in outcomes)
    assert mock.requests == 16
    key = lambda b: json.dumps(b, sort_keys=True)  # noqa: E731
    assert sorted(map(key, mock.bodies)) == sorted(map(key, first_bodies))
    for path in parquet_files(root, plan).values():
        llm = footer_stats(path)["llm"]
        assert llm["llm_cache_hits"] == 0 and llm["llm_requests"] == 8


# ------------------------------------------------------------------------- usage metadata


def test_usage_metadata_per_row_group(mock: MockOpenAI, tmp_path: Path):
    mock.latency_s = 0.02
    mock.queue_faults(500, 429)  # two retried attempts, somewhere in the run
    root = tmp_path / "dd-data"
    wf = make_workflow(mock.url, [TEXT_A], num_records=16, buffer_size=8)
    plan, outcomes = run_stage(wf, root)

    # the mock bills max(1, chars // 4) tokens each way; recompute per row from what was sent
    billed_in = {
        next(m["content"] for m in b["messages"]).removeprefix("A: "): max(
            1, len(b["messages"][0]["content"]) // 4
        )
        for b in mock.bodies
    }
    retries = 0
    for rg, path in sorted(parquet_files(root, plan).items()):
        stats = footer_stats(path)
        assert stats == outcomes[rg].stats
        llm = stats["llm"]
        rows = pq.read_table(path).to_pylist()
        assert llm["llm_requests"] == 8 == len(rows)
        assert llm["llm_failures"] == 0 and llm["llm_cache_hits"] == 0
        assert llm["llm_parse_retries"] == 0
        assert llm["llm_tokens_in"] == sum(billed_in[r["rid"]] for r in rows)
        assert llm["llm_tokens_out"] == sum(max(1, len(r["a"]) // 4) for r in rows)
        p50, p95 = llm["llm_latency_p50_ms"], llm["llm_latency_p95_ms"]
        assert 20.0 <= p50 <= p95 < 2000.0  # the mock sleeps 20 ms per answer
        assert stats["seconds"] > 0
        retries += llm["llm_retries"]
    assert retries == 2 and mock.requests == 18


# ------------------------------------------------------------------------------- secrets


def test_api_key_is_sent_but_never_stored_or_shown(
    mock: MockOpenAI,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET)
    mock.require_key = SECRET
    mock.fail_rate = 0.2  # exercise the retry and log paths too
    root = tmp_path / "dd-data"
    wf = make_workflow(
        mock.url,
        [TEXT_A, structured()],
        num_records=8,
        buffer_size=4,
        model={"api_key_env": KEY_ENV, "max_retries": 8},
    )
    plan, _ = run_stage(wf, root)
    assert len(read_rows(root, plan)) == 8
    assert mock.auth_headers and set(mock.auth_headers) == {f"Bearer {SECRET}"}

    # the key is rejected: the run stops, and the provider's message (which echoes the key)
    # is scrubbed before it reaches the exception
    mock.require_key = "sk-the-right-one"
    with pytest.raises(LLMFatalError) as info:
        run_stage(wf, root, resume=ResumeMode.NEVER)
    assert info.value.status == 401 and "Incorrect API key provided" in str(info.value)
    assert SECRET not in full_text(info.value)

    # The refused run committed nothing, so it left no stage.json; the one moved aside by
    # `never` is checked with every other file below.
    assert not (PartitionStore(root).stage_dir(plan.ref) / "stage.json").exists()
    files = [p for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "stage.json" for p in files)
    assert cache_path(root, "cells") in files
    assert any(p.suffix == ".parquet" for p in files)
    for path in files:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text


# ----------------------------------------------------------------------- crash and resume

DRIVER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[3])
    from dd_assets.config.loader import load_workflow
    from dd_assets.runners.materialize import materialize
    from dd_assets.runners.plan import plan_workflow
    from dd_assets.store.partition_store import PartitionStore

    plan = plan_workflow(load_workflow(sys.argv[1]))["s"]
    out = materialize(
        plan, PartitionStore(sys.argv[2]), range(plan.ref.num_row_groups), in_flight=2
    )
    print(sum(o.info.rows for o in out), flush=True)
    """
)

CRASH_CONFIG = """\
name: crash
models:
  gen:
    base_url: ${DD_TEST_MOCK_URL}
    model: m-cells
    max_parallel_requests: 4
    max_retries: 2
stages:
  - name: s
    num_records: 60
    buffer_size: 10
    columns:
      - {name: rid, column_type: sampler, sampler_type: uuid, params: {}}
      - {name: a, column_type: llm-text, model_alias: gen, prompt: "A: {{ rid }}"}
      - {name: b, column_type: llm-text, model_alias: gen, prompt: "B: {{ a }}"}
"""


def _cached(cache: Path) -> set[tuple[str, int, str]]:
    con = sqlite3.connect(f"file:{cache}?mode=ro", uri=True)
    try:
        return {
            tuple(r)
            for r in con.execute("SELECT column_name, row, request_hash FROM llm_responses")
        }  # type: ignore[misc]
    finally:
        con.close()


@pytest.mark.slow
def test_sigkill_mid_stage_then_resume_repeats_no_answered_request(
    mock: MockOpenAI, tmp_path: Path
):
    mock.latency_s = 0.03
    config = tmp_path / "crash.yaml"
    config.write_text(CRASH_CONFIG)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    root = tmp_path / "dd-data"
    env = {**os.environ, "DD_TEST_MOCK_URL": mock.url}
    argv = [sys.executable, str(driver), str(config), str(root), str(REPO)]

    wf = loads_workflow(CRASH_CONFIG.replace("${DD_TEST_MOCK_URL}", mock.url))
    plan = plan_workflow(wf)["s"]
    store = PartitionStore(root)
    cache = cache_path(store.root, "crash")
    files_dir = store.files_dir(plan.ref)

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            # kill once row groups are on disk AND answers of unwritten row groups are cached
            written = {int(p.name[6:11]) for p in files_dir.glob("batch_*.parquet")}
            if written and cache.exists():
                pending = [r for _, r, _ in _cached(cache) if r // 10 not in written]
                if len(pending) >= 8:
                    break
            time.sleep(0.005)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.1)  # let the mock finish answering requests that were in flight

    before_bodies = mock.bodies
    answered = _cached(cache)  # answers the killed process received and committed
    kept = {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files_dir.glob("batch_*.parquet")
    }
    assert 1 <= len(kept) < 6, "killed mid-stage"
    assert len(before_bodies) < 120
    mock.reset()

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "60"

    identity = wf.models["gen"].identity()

    def key(body: dict[str, Any]) -> str:
        return request_hash(identity, body["messages"], body.get("response_format"))

    after_bodies = mock.bodies
    assert len(after_bodies) > 0
    answered_hashes = {h for _, _, h in answered}
    repeated = [b for b in after_bodies if key(b) in answered_hashes]
    assert repeated == [], "an answer already in the cache was paid for again"
    # at most the requests in flight at the kill (answered but not yet committed) repeat
    before_keys = {key(b) for b in before_bodies}
    assert len([b for b in after_bodies if key(b) in before_keys]) <= 4
    # every cell is asked exactly once over both runs, except those few
    assert len(before_keys | {key(b) for b in after_bodies}) == 120

    rows = read_rows(root, plan)
    assert len(rows) == 60 and len({r["rid"] for r in rows}) == 60
    assert all(r["b"] == f"[m-cells] B: {r['a']}" for r in rows)
    for name, (ino, mtime) in kept.items():
        st = (files_dir / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == (ino, mtime), f"{name} was rewritten"
    # each answer cached for a row group that was not yet written is used exactly once
    kept_rgs = {int(name[6:11]) for name in kept}
    hits = sum(footer_stats(p)["llm"]["llm_cache_hits"] for p in files_dir.glob("*.parquet"))
    assert hits == len([1 for _, row, _ in answered if row // 10 not in kept_rgs]) > 0


def test_embedding_columns_over_real_http_base64_and_the_cache(mock: MockOpenAI, tmp_path: Path):
    """An embedding column (DataDesigner's): one vector per text, a JSON list cell gives one per
    item, base64 float32 answers decode to the float ones, the embedding parameters go to
    /embeddings only, and a rerun takes the vectors from the request cache."""
    from dd_assets.testing.mock_openai import _embeddings

    columns = [
        TEXT_A,
        {"name": "pair", "column_type": "expression", "expr": '["{{ rid }}", " {{ a }} "]'},
        {"name": "e1", "column_type": "embedding", "model_alias": "gen", "target_column": "a"},
        {"name": "e2", "column_type": "embedding", "model_alias": "gen", "target_column": "pair"},
    ]
    inference = {"dimensions": 16, "encoding_format": "base64"}
    wf = make_workflow(
        mock.url, columns, num_records=4, buffer_size=4, model={"inference": inference}
    )
    plan, _ = run_stage(wf, tmp_path / "dd-data")
    rows = read_rows(tmp_path / "dd-data", plan)
    assert len(rows) == 4
    field = pq.read_schema(parquet_files(tmp_path / "dd-data", plan)[0]).field("e1")
    assert field.type == pa.struct(
        [("embeddings", pa.list_(pa.list_(pa.float64()))), ("num_embeddings", pa.int64()),
         ("dimension", pa.int64())]
    )  # fmt: skip

    def expected(text: str) -> list[float]:
        reply = _embeddings({"input": [text], "dimensions": 16}, MODEL)
        return reply.body["data"][0]["embedding"]

    for r in rows:
        assert (r["e1"]["num_embeddings"], r["e1"]["dimension"]) == (1, 16)
        assert r["e1"]["embeddings"] == [expected(r["a"])]
        assert r["e2"]["embeddings"] == [expected(r["rid"]), expected(r["a"])]
    embeds = [b for b in mock.bodies if "input" in b]
    chats = [b for b in mock.bodies if "messages" in b]
    assert len(embeds) == 8 and len(chats) == 4
    assert all(b["encoding_format"] == "base64" and b["dimensions"] == 16 for b in embeds)
    assert not any("dimensions" in b or "encoding_format" in b for b in chats)
    for path in parquet_files(tmp_path / "dd-data", plan).values():
        path.unlink()  # a crash before the checkpoint: rebuilt from the cache
    before = mock.requests
    run_stage(wf, tmp_path / "dd-data")
    assert mock.requests == before  # every cell, embeddings too, from the cache
    assert read_rows(tmp_path / "dd-data", plan) == rows
