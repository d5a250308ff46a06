"""LLM client and request cache, against the mock provider over real HTTP on 127.0.0.1.

Backoff waits go through a recorded `sleep` injected into the client, so retry tests check the
exact waits without spending them; everything else (sockets, keep-alive, timeouts) is real."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from dd_assets.config.models import InferenceParams, ModelConfig
from dd_assets.llm import (
    ChatResult,
    LLMClient,
    LLMConfigError,
    LLMFatalError,
    LLMRequestRejected,
    LLMRetryableExhausted,
    RequestCache,
    RequestCacheError,
    UsageStats,
    parse_retry_after,
    request_hash,
)
from dd_assets.testing.mock_openai import MockOpenAI

KEY_ENV = "DD_TEST_LLM_KEY"
SECRET = "sk-SECRET-do-not-leak-4f1c9a"


class RecordedSleep:
    """Stands in for asyncio.sleep: records each backoff wait and yields once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def mock() -> Iterator[MockOpenAI]:
    with MockOpenAI(seed=7) as server:
        yield server


def model(server: MockOpenAI, **overrides: Any) -> ModelConfig:
    fields: dict[str, Any] = {"base_url": server.url, "model": "m-test", "max_retries": 3}
    fields.update(overrides)
    return ModelConfig(**fields)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def run_chat(
    models: dict[str, ModelConfig],
    alias: str,
    messages: list[dict[str, Any]],
    *,
    sleep: RecordedSleep | None = None,
    **kwargs: Any,
) -> ChatResult:
    async def go() -> ChatResult:
        async with LLMClient(models, sleep=sleep or RecordedSleep()) as client:
            return await client.chat(alias, messages, **kwargs)

    return asyncio.run(go())


def full_text(exc: BaseException) -> str:
    """Everything a log or a crash report could show of an exception, chained causes included."""
    return "".join(traceback.format_exception(exc)) + repr(exc) + repr(exc.args)


# ---------------------------------------------------------------------------------- happy path


def test_happy_path_payload_tokens_latency(mock: MockOpenAI, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    mock.latency_s = 0.05
    cfg = model(
        mock, api_key_env=KEY_ENV, inference=InferenceParams(temperature=0.5, max_tokens=64)
    )
    messages = [{"role": "system", "content": "be brief"}, *user("hello world, tell me a story")]

    usage = UsageStats()

    async def go() -> tuple[ChatResult, UsageStats]:
        async with LLMClient({"writer": cfg}) as client:
            result = await client.chat("writer", messages, usage=usage)
            return result, client.usage("writer")

    result, per_alias = asyncio.run(go())

    assert result.content == "[m-test] hello world, tell me a story"
    assert result.tokens_in == (len("be brief") + len("hello world, tell me a story")) // 4
    assert result.tokens_out == len(result.content) // 4
    assert 0.05 <= result.latency_s < 2.0
    assert (result.retries, result.finish_reason, result.raw_model) == (0, "stop", "m-test")

    (body,) = mock.bodies
    assert body == {"model": "m-test", "messages": messages, "temperature": 0.5, "max_tokens": 64}
    assert mock.auth_headers == [f"Bearer {SECRET}"]
    for stats in (usage, per_alias):
        assert (stats.requests, stats.retries, stats.failures) == (1, 0, 0)
        assert (stats.tokens_in, stats.tokens_out) == (result.tokens_in, result.tokens_out)
        assert stats.latencies == [result.latency_s]
    assert SECRET not in repr(result) and SECRET not in json.dumps(result.to_dict())


def test_structured_output_is_sent_and_answer_validates(mock: MockOpenAI):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 3},
            "age": {"type": "integer", "minimum": 18, "maximum": 99},
            "score": {"type": "number", "exclusiveMinimum": 0},
            "tier": {"enum": ["gold", "silver"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "address": {"$ref": "#/$defs/Address"},
            "vip": {"type": "boolean"},
        },
        "required": ["name", "age", "score", "tier", "tags", "address", "vip"],
        "$defs": {
            "Address": {"type": "object", "properties": {"city": {"type": ["string", "null"]}}}
        },
    }
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    result = run_chat({"a": model(mock)}, "a", user("make a person"), response_format=rf)

    assert mock.bodies[0]["response_format"] == rf
    value = json.loads(result.content)
    assert set(value) == set(schema["required"])
    assert isinstance(value["name"], str) and len(value["name"]) >= 3
    assert isinstance(value["age"], int) and 18 <= value["age"] <= 99
    assert isinstance(value["score"], float) and value["score"] > 0
    assert value["tier"] in ("gold", "silver")
    assert value["tags"] and all(isinstance(t, str) for t in value["tags"])
    assert isinstance(value["address"]["city"], str)
    assert value["vip"] is True


# --------------------------------------------------------------------------------- concurrency


def test_peak_concurrency_never_exceeds_max_parallel_requests(mock: MockOpenAI):
    mock.latency_s = 0.02
    cfg = model(mock, max_parallel_requests=8)

    async def go() -> list[ChatResult]:
        async with LLMClient({"a": cfg}) as client:
            return await asyncio.gather(*(client.chat("a", user(f"q{i}")) for i in range(100)))

    results = asyncio.run(go())
    assert [r.content for r in results] == [f"[m-test] q{i}" for i in range(100)]
    assert mock.requests == 100
    assert mock.peak_concurrency <= 8
    assert mock.peak_concurrency >= 4, "the limit should be used, not serialised"


def test_each_alias_has_its_own_limit():
    with MockOpenAI() as a_srv, MockOpenAI() as b_srv:
        a_srv.latency_s = b_srv.latency_s = 0.02
        models = {
            "a": model(a_srv, max_parallel_requests=3),
            "b": model(b_srv, max_parallel_requests=5),
        }

        async def go() -> None:
            async with LLMClient(models) as client:
                calls = [client.chat(alias, user(str(i))) for i in range(40) for alias in "ab"]
                await asyncio.gather(*calls)

        asyncio.run(go())
        assert (a_srv.requests, b_srv.requests) == (40, 40)
        assert 2 <= a_srv.peak_concurrency <= 3
        assert 3 <= b_srv.peak_concurrency <= 5


def test_semaphore_is_not_held_while_backing_off(mock: MockOpenAI):
    """With one slot, a call sleeping in backoff must not block another call."""
    cfg = model(mock, max_parallel_requests=1)
    mock.retry_after = 5
    mock.queue_faults(429)
    gate = asyncio.Event()
    waits: list[float] = []

    async def gated_sleep(seconds: float) -> None:
        waits.append(seconds)
        await gate.wait()

    async def go() -> tuple[ChatResult, ChatResult]:
        async with LLMClient({"a": cfg}, sleep=gated_sleep) as client:
            first = asyncio.create_task(client.chat("a", user("first")))
            while not waits:
                await asyncio.sleep(0.005)
            second = await asyncio.wait_for(client.chat("a", user("second")), timeout=5)
            assert not first.done()
            gate.set()
            return await first, second

    first, second = asyncio.run(go())
    assert waits == [5.0]
    assert (first.retries, second.retries) == (1, 0)


# ------------------------------------------------------------------------------------- retries


def test_injected_429_and_500_are_retried_until_success(mock: MockOpenAI):
    mock.fail_rate = 0.3
    mock.fail_statuses = [429, 500]
    cfg = model(mock, max_parallel_requests=16, max_retries=12)
    sleep = RecordedSleep()

    async def go() -> tuple[list[ChatResult], UsageStats]:
        async with LLMClient({"a": cfg}, sleep=sleep) as client:
            results = await asyncio.gather(*(client.chat("a", user(f"p{i}")) for i in range(200)))
            assert client.in_flight() == 0
            return results, client.usage("a")

    results, stats = asyncio.run(go())
    retries = sum(r.retries for r in results)
    injected = mock.by_status.get(429, 0) + mock.by_status.get(500, 0)
    assert mock.by_status.get(429, 0) > 0 and mock.by_status.get(500, 0) > 0
    assert retries == injected == len(sleep.waits) == stats.retries
    assert 30 < injected < 150  # ~30% of ~285 attempts
    assert mock.requests == 200 + retries
    assert (stats.requests, stats.failures, len(stats.latencies)) == (200, 0, 200)
    assert all(0 <= w <= 30 for w in sleep.waits)


def test_backoff_is_full_jitter_exponential(mock: MockOpenAI):
    import random

    mock.queue_faults(500, 502, 503, 504, 500)
    sleep = RecordedSleep()

    async def go() -> ChatResult:
        cfg = model(mock, max_retries=5)
        async with LLMClient({"a": cfg}, sleep=sleep, rng=random.Random(3)) as client:
            return await client.chat("a", user("x"))

    assert asyncio.run(go()).retries == 5
    assert len(sleep.waits) == 5
    for i, wait in enumerate(sleep.waits):
        assert 0 <= wait <= 0.5 * 2**i
    assert len(set(sleep.waits)) == 5, "waits should be jittered, not fixed"


@pytest.mark.parametrize(
    ("header", "expected"),
    [(7, (7.0, 7.0)), (0.25, (0.25, 0.25)), (1000, (120.0, 120.0)), ("date+30", (27.0, 30.5))],
)
def test_retry_after_is_honoured(mock: MockOpenAI, header: Any, expected: tuple[float, float]):
    mock.retry_after = formatdate(time.time() + 30, usegmt=True) if header == "date+30" else header
    mock.queue_faults(429, 429)
    sleep = RecordedSleep()
    result = run_chat({"a": model(mock)}, "a", user("x"), sleep=sleep)
    assert result.retries == 2
    assert len(sleep.waits) == 2
    lo, hi = expected
    assert all(lo <= w <= hi for w in sleep.waits), sleep.waits


def test_exhausted_5xx_raises_with_status_reason_attempts(mock: MockOpenAI):
    mock.queue_faults(503, 503, 503)
    usage = UsageStats()

    async def go() -> None:
        async with LLMClient({"a": model(mock, max_retries=2)}, sleep=RecordedSleep()) as c:
            await c.chat("a", user("x"), usage=usage)

    with pytest.raises(LLMRetryableExhausted) as info:
        asyncio.run(go())
    exc = info.value
    assert (exc.status, exc.attempts, exc.alias) == (503, 3, "a")
    assert "Mock provider injected failure 503" in exc.reason
    assert mock.requests == 3
    assert (usage.requests, usage.retries, usage.failures) == (1, 2, 1)
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.status, clone.reason, clone.attempts, str(clone)) == (
        exc.status,
        exc.reason,
        exc.attempts,
        str(exc),
    )


def test_timeouts_are_retried(mock: MockOpenAI):
    mock.stall_s = 5
    mock.queue_faults("stall", "stall")
    started = time.perf_counter()
    result = run_chat({"a": model(mock, timeout_s=0.2)}, "a", user("x"))
    assert result.retries == 2
    assert mock.requests == 3
    assert time.perf_counter() - started < 3


def test_timeouts_exhausted(mock: MockOpenAI):
    mock.stall_s = 5
    mock.queue_faults("stall", "stall")
    with pytest.raises(LLMRetryableExhausted) as info:
        run_chat({"a": model(mock, timeout_s=0.2, max_retries=1)}, "a", user("x"))
    assert info.value.status is None
    assert info.value.attempts == 2
    assert "timeout" in info.value.reason


def test_dropped_connection_and_malformed_body_are_retried(mock: MockOpenAI):
    mock.queue_faults("disconnect", "malformed")
    result = run_chat({"a": model(mock)}, "a", user("x"))
    assert result.retries == 2
    assert result.content == "[m-test] x"
    assert mock.by_status.get("disconnect") == 1


def test_malformed_body_exhausts_as_retryable(mock: MockOpenAI):
    mock.queue_faults("malformed")
    with pytest.raises(LLMRetryableExhausted) as info:
        run_chat({"a": model(mock, max_retries=0)}, "a", user("x"))
    assert (info.value.status, info.value.attempts) == (200, 1)
    assert "no choices" in info.value.reason


def test_connection_refused_is_retried_then_exhausted():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = ModelConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=2)
    sleep = RecordedSleep()
    with pytest.raises(LLMRetryableExhausted) as info:
        run_chat({"a": cfg}, "a", user("x"), sleep=sleep)
    assert info.value.attempts == 3 and len(sleep.waits) == 2
    assert "connection error" in info.value.reason


@pytest.mark.parametrize("fault", ["empty", "null_content", "not_json", "invalid_json"])
def test_empty_null_and_non_wire_answers_are_transient(mock: MockOpenAI, fault: str):
    """A gateway under load answers 200 with nothing usable: retried like a 503, never handed
    on as an answer. (invalid_json is an answer to the client: only a caller that expects JSON
    calls it a glitch, through `accept`.)"""
    mock.queue_faults(fault)
    sleep = RecordedSleep()
    if fault == "invalid_json":
        schema = {"type": "object", "properties": {"a": {"type": "string"}}}
        rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}

        def accept(r: ChatResult) -> str | None:
            try:
                json.loads(r.content)
            except ValueError:
                return "not JSON"
            return None

        result = run_chat({"a": model(mock)}, "a", user("x"), sleep=sleep, response_format=rf,
                          accept=accept)  # fmt: skip
        assert json.loads(result.content) == {"a": "example a"}
    else:
        result = run_chat({"a": model(mock)}, "a", user("x"), sleep=sleep)
        assert result.content == "[m-test] x"
    assert result.retries == 1 and len(sleep.waits) == 1 and mock.requests == 2


def test_empty_answers_exhaust_as_transient(mock: MockOpenAI):
    mock.queue_faults("empty", "null_content")
    with pytest.raises(LLMRetryableExhausted) as info:
        run_chat({"a": model(mock, max_retries=1)}, "a", user("x"))
    assert (info.value.status, info.value.attempts) == (200, 2)
    assert "null message content" in info.value.reason


def test_sustained_429s_never_use_up_the_retries(mock: MockOpenAI):
    """DataDesigner #575: a rate limit delays a cell, it never fails it. 20 429s in a row with
    max_retries=1: answered, each wait Retry-After long; a 503 still counts."""
    mock.retry_after = 0.25
    mock.queue_faults(*[429] * 20, 503)
    sleep = RecordedSleep()
    usage = UsageStats()
    result = run_chat({"a": model(mock, max_retries=1)}, "a", user("x"), sleep=sleep, usage=usage)
    assert result.content == "[m-test] x"
    assert sleep.waits[:20] == [0.25] * 20 and len(sleep.waits) == 21
    assert (usage.retries, usage.failures) == (21, 0)
    mock.queue_faults(503, 429, 503)
    with pytest.raises(LLMRetryableExhausted) as info:
        run_chat({"a": model(mock, max_retries=1)}, "a", user("x"))
    assert info.value.attempts == 3 and info.value.status == 503


def test_429_out_of_quota_is_fatal(mock: MockOpenAI):
    """OpenAI answers 429 `insufficient_quota` for an empty account: no wait ends it."""
    mock.queue_faults("quota")
    with pytest.raises(LLMFatalError) as info:
        run_chat({"a": model(mock)}, "a", user("x"))
    assert info.value.status == 429 and "exceeded your current quota" in info.value.message
    assert mock.requests == 1


def test_slow_loris_body_fails_within_the_total_deadline(mock: MockOpenAI):
    """Per-read socket timeouts bound each read: a body dripping a byte every 0.1 s never trips
    them. timeout_s is a deadline on the whole request, body included."""
    mock.drip_s = 0.1
    mock.queue_faults("slow_loris")
    started = time.perf_counter()
    with pytest.raises(LLMRetryableExhausted) as info:
        run_chat({"a": model(mock, timeout_s=1, max_retries=0)}, "a", user("x"))
    elapsed = time.perf_counter() - started
    assert 1 <= elapsed < 1.5, elapsed
    assert "timeout" in info.value.reason and "timeout_s=1s" in info.value.reason


@pytest.mark.parametrize("fault", ["huge", "huge_chunked"])
def test_a_response_over_max_response_bytes_is_rejected_unread(mock: MockOpenAI, fault: str):
    """A 10 MB answer, announced or not: refused after at most max_response_bytes, quickly,
    without retries (the same request would ramble again): its row is dropped as too_large."""
    mock.queue_faults(fault)
    started = time.perf_counter()
    with pytest.raises(LLMRequestRejected) as info:
        run_chat({"a": model(mock, max_response_bytes=64 * 1024)}, "a", user("x"))
    assert time.perf_counter() - started < 2
    exc = info.value
    assert (exc.kind, exc.status) == ("too_large", 200)
    assert "max_response_bytes=65536" in exc.message
    assert mock.requests == 1
    # the default cap (2 MiB) takes a normal answer
    assert run_chat({"a": model(mock)}, "a", user("y")).content == "[m-test] y"


# --------------------------------------------------------------------- rejected and fatal errors


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_rejected_request_fails_at_once_without_retries(mock: MockOpenAI, status: int):
    """400/413/422 are about this request (its row), not the endpoint: the caller drops the row."""
    mock.fatal_status = status
    sleep = RecordedSleep()
    with pytest.raises(LLMRequestRejected) as info:
        run_chat({"gen": model(mock)}, "gen", user("x"), sleep=sleep)
    exc = info.value
    assert (exc.status, exc.kind) == (status, "rejected")
    assert exc.message == f"Mock provider rejected the request with status {status}"
    assert exc.url == f"{mock.url}/chat/completions"
    assert "'gen'" in str(exc) and exc.message in str(exc) and exc.url in str(exc)
    assert mock.requests == 1 and sleep.waits == []
    clone = pickle.loads(pickle.dumps(exc))
    assert (clone.kind, clone.status, str(clone)) == (exc.kind, exc.status, str(exc))


@pytest.mark.parametrize("status", [403, 404, 405])
def test_client_errors_are_fatal_at_once(mock: MockOpenAI, status: int):
    mock.fatal_status = status
    sleep = RecordedSleep()
    with pytest.raises(LLMFatalError) as info:
        run_chat({"gen": model(mock)}, "gen", user("x"), sleep=sleep)
    exc = info.value
    assert exc.status == status
    assert exc.message == f"Mock provider rejected the request with status {status}"
    assert exc.url == f"{mock.url}/chat/completions"
    assert "'gen'" in str(exc) and exc.message in str(exc) and exc.url in str(exc)
    assert mock.requests == 1 and sleep.waits == []


def test_401_names_the_problem_but_never_the_key(mock: MockOpenAI, monkeypatch: pytest.MonkeyPatch):
    """The mock echoes the rejected key in its message, as some providers do."""
    mock.require_key = "sk-the-right-one"
    monkeypatch.setenv(KEY_ENV, SECRET)
    with pytest.raises(LLMFatalError) as info:
        run_chat({"a": model(mock, api_key_env=KEY_ENV)}, "a", user("x"))
    exc = info.value
    assert exc.status == 401
    assert "Incorrect API key provided" in str(exc)
    assert mock.auth_headers == [f"Bearer {SECRET}"], "the key was sent..."
    assert SECRET not in full_text(exc), "...but must not be in the error"
    assert SECRET not in full_text(pickle.loads(pickle.dumps(exc)))
    assert mock.requests == 1


def test_key_is_read_at_call_time(mock: MockOpenAI, monkeypatch: pytest.MonkeyPatch):
    mock.require_key = "sk-first"
    monkeypatch.setenv(KEY_ENV, "sk-first")
    cfg = model(mock, api_key_env=KEY_ENV)

    async def go() -> None:
        async with LLMClient({"a": cfg}) as client:
            await client.chat("a", user("1"))
            mock.require_key = "sk-rotated"  # the provider revokes the first key
            with pytest.raises(LLMFatalError):
                await client.chat("a", user("2"))
            with pytest.raises(LLMFatalError):  # not sent again with a key refused already
                await client.chat("a", user("3"))
            os.environ[KEY_ENV] = "sk-rotated"  # the user rotates it: no restart needed
            await client.chat("a", user("4"))

    asyncio.run(go())
    assert mock.auth_headers == ["Bearer sk-first", "Bearer sk-first", "Bearer sk-rotated"]


def test_missing_key_variable_is_a_config_error(mock: MockOpenAI, monkeypatch):
    monkeypatch.delenv("DD_TEST_MISSING_KEY", raising=False)
    with pytest.raises(LLMConfigError) as info:
        run_chat({"judge": model(mock, api_key_env="DD_TEST_MISSING_KEY")}, "judge", user("x"))
    assert "DD_TEST_MISSING_KEY" in str(info.value) and "'judge'" in str(info.value)
    assert mock.requests == 0


def test_unknown_alias_is_a_config_error(mock: MockOpenAI):
    with pytest.raises(LLMConfigError, match="'nope'"):
        run_chat({"a": model(mock)}, "nope", user("x"))


# ------------------------------------------------------------------------------------- helpers


def test_parse_retry_after_forms():
    now = 1_700_000_000.0
    assert parse_retry_after({"retry-after": "5"}, now) == 5.0
    assert parse_retry_after({"retry-after": "1.5"}, now) == 1.5
    assert parse_retry_after({"retry-after": "-3"}, now) is None
    assert parse_retry_after({"retry-after": "soon"}, now) is None
    assert parse_retry_after({"retry-after": formatdate(now + 12, usegmt=True)}, now) == 12.0
    assert parse_retry_after({"retry-after": formatdate(now - 60, usegmt=True)}, now) == 0.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}, now) == 0.25
    assert parse_retry_after({}, now) is None


def test_usage_stats_percentiles_merge_metadata():
    a = UsageStats(requests=2, retries=1, tokens_in=10, tokens_out=4, latencies=[0.1, 0.2])
    b = UsageStats(requests=3, failures=1, cache_hits=5, latencies=[0.3, 0.4, 1.0])
    total = UsageStats.combine([a, b])
    assert a.requests == 2, "combine must not mutate its inputs"
    assert (total.requests, total.retries, total.failures, total.cache_hits) == (5, 1, 1, 5)
    assert total.p50() == 0.3 and total.p95() == 1.0
    assert UsageStats().p50() is None
    meta = total.to_metadata()
    assert meta["llm_latency_p50_ms"] == 300.0 and meta["llm_latency_p95_ms"] == 1000.0
    assert meta["llm_requests"] == 5 and meta["llm_cache_hits"] == 5
    json.dumps(meta)


# --------------------------------------------------------------------------------------- cache


def test_cache_round_trip_wal_and_reopen(tmp_path: Path):
    path = tmp_path / "deep" / "er" / "llm-cache.sqlite"
    with RequestCache(path) as cache:
        assert cache.get("s", "c", 0, "h") is None
        cache.put("s", "c", 0, "h", {"content": "one", "tokens_in": 3})
        cache.put("s", "c", 0, "h", {"content": "two", "tokens_in": 4})  # replaces
        cache.put("s", "c", 1, "h", {"content": "row1"})
        cache.put("s2", "c", 0, "h", {"content": "other stage"})
        assert cache.get("s", "c", 0, "h") == {"content": "two", "tokens_in": 4}
        assert cache.get("s", "c", 0, "other-hash") is None
        assert cache.count() == 3 and cache.count("s") == 2
        assert cache._db().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        with sqlite3.connect(path) as other:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with RequestCache(path) as again:
        assert again.get("s", "c", 1, "h") == {"content": "row1"}
        assert again.count() == 3


def test_cache_async_api_under_concurrency(tmp_path: Path):
    cache = RequestCache(tmp_path / "c.sqlite")

    async def go() -> list[dict[str, Any] | None]:
        await asyncio.gather(
            *(cache.aput("s", "c", i, "h", {"content": str(i)}) for i in range(200))
        )
        return await asyncio.gather(*(cache.aget("s", "c", i, "h") for i in range(200)))

    got = asyncio.run(go())
    assert got == [{"content": str(i)} for i in range(200)]
    assert cache.count() == 200
    cache.close()


def test_request_hash_is_canonical(mock: MockOpenAI):
    ident = model(mock, inference=InferenceParams(temperature=0.7)).identity()
    msgs = [{"role": "user", "content": "hi"}]
    rf = {"type": "json_object"}
    h = request_hash(ident, msgs, rf)
    assert len(h) == 64 and all(ch in "0123456789abcdef" for ch in h)
    reordered = dict(reversed(list(ident.items())))
    assert request_hash(reordered, [{"content": "hi", "role": "user"}], dict(rf)) == h
    assert request_hash(ident, [{"role": "user", "content": "hi!"}], rf) != h
    assert request_hash(ident, msgs, None) != h
    other = model(mock, inference=InferenceParams(temperature=0.8)).identity()
    assert request_hash(other, msgs, rf) != h
    # parallelism, timeouts and the key's variable name do not change what is generated
    ops = model(mock, inference=InferenceParams(temperature=0.7), max_parallel_requests=64)
    assert request_hash(ops.model_copy(update={"api_key_env": "X"}).identity(), msgs, rf) == h
    with pytest.raises(ValueError, match="credentials"):
        request_hash({**ident, "api_key": "sk-x"}, msgs, rf)


def test_request_hasher_keeps_the_cache_keys():
    """The hasher encodes the model identity once; the keys must stay those of every cache
    written before (else a resume would ask every cell again): golden values from the
    json.dumps-per-request version, and the same as hashing the whole document canonically."""
    import hashlib

    from dd_assets.llm.cache import RequestHasher

    ident = {
        "base_url": "http://h/v1",
        "model": "m",
        "inference": {"temperature": 0.7, "top_p": 0.95},
    }
    tools = [{"type": "function", "function": {"name": "f"}}]
    msgs = [{"role": "user", "content": 'héllo "x"'}]
    hasher = RequestHasher(ident)
    assert hasher(msgs, {"type": "json_object"}) == (
        "feff4dcdd79276b5bc75396b98dbf7aed292bac65d83aa35314bc04ef2192022"
    )
    assert hasher([{"role": "user", "content": "hi"}], None, tools) == (
        "36bc96946361446395a369b4e97e5d606de67e5656d4b9e5061f989a31bc3f32"
    )
    for rf, tl in [
        (None, None),
        ({"b": [1, 2.5, None], "a": "ü"}, None),
        (None, tools),
        (None, []),
    ]:
        doc: dict[str, Any] = {"scheme": 1, "model": ident, "messages": msgs, "response_format": rf}
        if tl:
            doc["tools"] = tl
        text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        assert hasher(msgs, rf, tl) == hashlib.sha256(text.encode()).hexdigest()
        assert request_hash(ident, msgs, rf, tl) == hasher(msgs, rf, tl)
    with pytest.raises(ValueError, match="credentials"):
        RequestHasher({**ident, "api_key": "sk-x"})


def test_cache_never_stores_the_key(
    mock: MockOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv(KEY_ENV, SECRET)
    cfg = model(mock, api_key_env=KEY_ENV)
    msgs = user("cache me")
    result = run_chat({"a": cfg}, "a", msgs)
    path = tmp_path / "c.sqlite"
    with RequestCache(path) as cache:
        key = request_hash(cfg.identity(), msgs, None)
        cache.put("s", "col", 0, key, result.to_dict())
        assert ChatResult.from_dict(cache.get("s", "col", 0, key) or {}) == result
        with pytest.raises(ValueError, match="credentials"):
            cache.put("s", "col", 1, key, {"content": "x", "headers": {"Authorization": "B"}})
        assert cache.count() == 1
        blob = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    assert SECRET.encode() not in blob
    assert b"[m-test] cache me" in blob, "sanity: the blob does hold the cached answer"


_WRITER = textwrap.dedent(
    """
    import sys
    from dd_assets.llm.cache import RequestCache

    cache = RequestCache(sys.argv[1])
    i = 0
    while True:
        cache.put("stage", "col", i, "h", {"content": f"answer {i}"})
        print(i, flush=True)
        i += 1
    """
)


def test_cache_survives_sigkilled_writer(tmp_path: Path):
    path = tmp_path / "llm-cache.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    confirmed: list[int] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 10
        while len(confirmed) < 300 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            confirmed.append(int(line))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        confirmed += [
            int(line)
            for line in proc.stdout.read().splitlines(keepends=True)
            if line.endswith("\n")
        ]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert len(confirmed) >= 300
    with RequestCache(path) as cache:
        missing = [
            i for i in confirmed if cache.get("stage", "col", i, "h") != {"content": f"answer {i}"}
        ]
        assert missing == []
        assert cache.count() >= len(confirmed)


def test_corrupt_cache_file_is_a_clear_error_and_is_kept(tmp_path: Path):
    path = tmp_path / "llm-cache.sqlite"
    junk = b"definitely not sqlite " * 200
    path.write_bytes(junk)
    with pytest.raises(RequestCacheError) as info:
        RequestCache(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == junk

    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE llm_responses (k TEXT PRIMARY KEY, v TEXT)")
    with pytest.raises(RequestCacheError, match=r"foreign\.sqlite"):
        RequestCache(foreign)
