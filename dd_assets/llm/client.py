"""Async client for OpenAI-compatible chat-completion endpoints.

One `LLMClient` serves every model alias of a run so that the HTTP connection pool and the
per-alias concurrency limits are shared by all row groups in flight. Retry policy lives here
(and not in the engine) because only the transport knows whether a failure is worth repeating.
Every failure falls in one of three classes (docs/llm.md), and the engine sees one outcome each:

- transient (429, 408, 5xx, timeouts, connection errors, a body that is not the wire format,
  empty content, an answer the caller's `accept` hook calls a glitch): retried with backoff,
  Retry-After honoured; 429 for as long as the run lives, the others `max_retries` times, then
  `LLMRetryableExhausted` (the cell is unfinished, never dropped);
- row-deterministic (400, 413, 422, a body over `max_response_bytes`): `LLMRequestRejected`,
  at once (this request, i.e. this row, cannot be answered; the others can);
- endpoint-fatal (401, 403, 404, any other refusal, 429 `insufficient_quota`): `LLMFatalError`.

Secrets: the API key is looked up in the environment on every call and lives only in the headers
of the outgoing request. Nothing this module returns, raises or logs holds it, and provider error
messages are scrubbed of it because some providers echo the key they rejected.
"""

from __future__ import annotations

import array
import asyncio
import base64
import functools
import heapq
import http
import itertools
import json
import logging
import math
import os
import random
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from dd_assets.config.models import InferenceParams, ModelConfig
from dd_assets.errors import LLMError
from dd_assets.llm.slots import RequestSlots, endpoint_key

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "RETRY_AFTER_CAP_S",
    "AcceptFn",
    "ChatResult",
    "LLMClient",
    "LLMConfigError",
    "LLMFatalError",
    "LLMRequestRejected",
    "LLMRetryableExhausted",
    "UsageStats",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
RETRY_AFTER_CAP_S = 120.0
ERROR_MESSAGE_MAX = 500
# An error body is read only for its message; past this it is cut (a gateway's HTML page).
ERROR_BODY_MAX = 64 * 1024

# 408 is a timeout reported by an intermediary, so it behaves like our own timeouts.
_TRANSIENT_STATUS = frozenset({408, 429})
# The request itself (this row's prompt: too long, a value the API refuses) is wrong; the next
# row's may be fine. Other 4xx (401, 403, 404, ...) say the endpoint or the key is wrong.
_REJECTED_STATUS = frozenset({400, 413, 422})
# A 429 that is not a rate limit but an empty account (OpenAI): waiting never ends it.
_QUOTA_CODES = frozenset({"insufficient_quota"})

SleepFn = Callable[[float], Awaitable[Any]]


# --------------------------------------------------------------------------------------- errors


class LLMConfigError(LLMError):
    """The call cannot be made as configured (unknown alias, missing key); no request was sent."""


class LLMFatalError(LLMError):
    """The provider rejected the request in a way retrying cannot fix (4xx other than 408/429).

    Carries what a user needs to fix the config without a debugger: status, the provider's own
    message (truncated, key scrubbed), the alias and the URL (never credentials)."""

    def __init__(self, *, alias: str, url: str, status: int | None, message: str) -> None:
        self.alias = alias
        self.url = url
        self.status = status
        self.message = message
        status_txt = f"HTTP {status}" if status is not None else "request error"
        super().__init__(f"model {alias!r}: {status_txt} from {url}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only __init__ would otherwise break pickling across Dagster process boundaries.
        fields = ("alias", "url", "status", "message")
        return (_rebuild, (type(self), {k: getattr(self, k) for k in fields}))


class LLMRequestRejected(LLMError):
    """This request cannot be answered, though the endpoint works: HTTP 400/413/422 (`kind`
    "rejected"), or a response body over `max_response_bytes` ("too_large"). Its row is dropped;
    retrying the same request would get the same answer."""

    def __init__(
        self, *, alias: str, url: str, status: int | None, kind: str, message: str
    ) -> None:
        self.alias = alias
        self.url = url
        self.status = status
        self.kind = kind
        self.message = message
        status_txt = f"HTTP {status}" if status is not None else kind
        super().__init__(f"model {alias!r}: {status_txt} from {url}: {message}")

    def __reduce__(self) -> tuple[Any, ...]:
        fields = ("alias", "url", "status", "kind", "message")
        return (_rebuild, (type(self), {k: getattr(self, k) for k in fields}))


class LLMRetryableExhausted(LLMError):
    """Every attempt failed with a transient error; `reason` describes the last one."""

    def __init__(
        self, *, alias: str, url: str, status: int | None, reason: str, attempts: int
    ) -> None:
        self.alias = alias
        self.url = url
        self.status = status
        self.reason = reason
        self.attempts = attempts
        super().__init__(
            f"model {alias!r}: gave up after {attempts} attempt(s) to {url}; last error: {reason}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        fields = ("alias", "url", "status", "reason", "attempts")
        return (_rebuild, (type(self), {k: getattr(self, k) for k in fields}))


def _rebuild(cls: type[LLMError], state: dict[str, Any]) -> LLMError:
    return cls(**state)


# -------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ChatResult:
    """One completion in the wire format. `latency_s` is of the attempt that succeeded, so it
    measures the provider, not our backoff; `retries` says how much the call cost beyond one
    request. `content` is empty only when the provider said why (`refusal`, or `finish_reason`
    "length" / "content_filter"): the model's own answer, unusable, never a glitch."""

    content: str
    tokens_in: int
    tokens_out: int
    latency_s: float
    retries: int
    finish_reason: str | None
    raw_model: str | None
    refusal: str | None = None
    # The model's reasoning, where the provider sends it beside the answer (`reasoning`, as
    # vLLM >= 0.16 names it, else `reasoning_content`): kept for extract_reasoning_content.
    reasoning: str | None = None
    # The tools the model asked to call (OpenAI's `tool_calls`: id, type, function name and
    # arguments), when the request offered tools; its content may then be empty.
    tool_calls: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, e.g. for the request cache (every field is a plain value, so a
        shallow copy is what `dataclasses.asdict` would give, at a tenth of its CPU)."""
        return {f: getattr(self, f) for f in _CHAT_RESULT_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChatResult:
        """Inverse of `to_dict`; tolerant of missing counters so old cache rows still load."""
        return cls(
            content=str(data["content"]),
            tokens_in=int(data.get("tokens_in", 0)),
            tokens_out=int(data.get("tokens_out", 0)),
            latency_s=float(data.get("latency_s", 0.0)),
            retries=int(data.get("retries", 0)),
            finish_reason=data.get("finish_reason"),
            raw_model=data.get("raw_model"),
            refusal=data.get("refusal"),
            reasoning=data.get("reasoning"),
            tool_calls=data.get("tool_calls") or None,
        )


_CHAT_RESULT_FIELDS = tuple(f.name for f in fields(ChatResult))

# The caller's last word on an answer: None if it is an answer, else why it looks like a
# provider glitch (e.g. JSON that does not parse at all), which is retried like a 503.
AcceptFn = Callable[[ChatResult], str | None]


@dataclass
class UsageStats:
    """Counters for materialization metadata.

    `requests` counts logical `chat()` calls (each may take several HTTP attempts: attempts =
    requests + retries); `failures` counts calls that raised; `latencies` holds the latency of
    each successful attempt. `cache_hits` is never touched by the client: callers that answer a
    cell from the request cache add to it so one object describes the whole partition.
    Mergeable so per-row-group stats can roll up into per-run or per-alias totals."""

    requests: int = 0
    retries: int = 0
    failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cache_hits: int = 0
    latencies: list[float] = field(default_factory=list)

    def merge(self, other: UsageStats) -> UsageStats:
        """Add `other` into self (in place) and return self, so merges chain."""
        self.requests += other.requests
        self.retries += other.retries
        self.failures += other.failures
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out
        self.cache_hits += other.cache_hits
        self.latencies.extend(other.latencies)
        return self

    @classmethod
    def combine(cls, stats: Iterable[UsageStats]) -> UsageStats:
        """A fresh total over many stats, leaving the inputs untouched."""
        total = cls()
        for s in stats:
            total.merge(s)
        return total

    def percentile(self, q: float) -> float | None:
        """Nearest-rank percentile (q in 0..100): always a latency that was really observed."""
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        rank = max(1, math.ceil(q / 100.0 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    def p50(self) -> float | None:
        return self.percentile(50)

    def p95(self) -> float | None:
        return self.percentile(95)

    def to_metadata(self) -> dict[str, Any]:
        """Flat, JSON-safe dict for Dagster metadata (None where no latency was observed)."""

        def ms(v: float | None) -> float | None:
            return None if v is None else round(v * 1000.0, 1)

        return {
            "llm_requests": self.requests,
            "llm_retries": self.retries,
            "llm_failures": self.failures,
            "llm_cache_hits": self.cache_hits,
            "llm_tokens_in": self.tokens_in,
            "llm_tokens_out": self.tokens_out,
            "llm_latency_p50_ms": ms(self.p50()),
            "llm_latency_p95_ms": ms(self.p95()),
        }


# ------------------------------------------------------------------------------------- helpers


_ANY_KEY = object()  # LLMClient.stop: whatever the key
# A request body's encoder, built once (`json.dumps` with arguments builds one per call): compact,
# the text as is (UTF-8), no NaN (not JSON).
_BODY = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


@functools.lru_cache(maxsize=64)  # once per endpoint, not per request
def _safe_url(url: str) -> str:
    """The URL as it may appear in messages: no userinfo, no query, no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _scrub(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, "***")
    return text


def _truncate(text: str, limit: int = ERROR_MESSAGE_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _json_body(raw: bytes) -> Any:
    """The body as JSON, or None when it is not JSON."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _provider_message(status: int, raw: bytes) -> tuple[str, str | None]:
    """(message, error code): the provider's own explanation (OpenAI-style `error.message`, else
    common variants, else the raw text). Users fix configs from this, so it must survive to the
    exception."""
    body = _json_body(raw)
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            code = err.get("code") if isinstance(err.get("code"), str) else err.get("type")
            return err["message"], code if isinstance(code, str) else None
        if isinstance(err, str):
            return err, None
        for key in ("message", "detail"):
            if isinstance(body.get(key), str):
                return body[key], None
    text = raw.decode("utf-8", errors="replace").strip()
    if text:
        return text, None
    try:
        return http.HTTPStatus(status).phrase, None
    except ValueError:
        return "(empty body)", None


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait as requested by the server, or None when absent/unparseable.

    Accepts `retry-after-ms` (sent by some OpenAI/Azure gateways, more precise), `Retry-After` as
    delta-seconds, or as an HTTP date. A date in the past means "now" (0)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            value = float(ms) / 1000.0
        except ValueError:
            value = -1.0
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
    except ValueError:
        pass
    else:
        return value if math.isfinite(value) and value >= 0 else None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means the zone was omitted
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


class _PrioritySemaphore:
    """A counting semaphore whose waiters are served lowest `priority` first (FIFO among equal
    priorities). The cell runner passes the row index, so a row's next column overtakes later
    rows' first column: rows, and so row groups, finish (and are checkpointed) in order, instead
    of every row's column b queuing behind every row's column a (a column wave in disguise)."""

    def __init__(self, value: int) -> None:
        self._value = value
        self._waiters: list[tuple[Any, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    async def acquire(self, priority: Any = 0) -> None:
        if self._value > 0:
            self._value -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (priority, next(self._seq), fut))
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted, then cancelled: pass the slot on
                self.release()
            raise

    def release(self) -> None:
        self._value += 1
        while self._value > 0 and self._waiters:
            _, _, fut = heapq.heappop(self._waiters)
            if fut.done():  # its waiter was cancelled
                continue
            self._value -= 1
            fut.set_result(None)


class _SharedGate:
    """The alias's own semaphore, then one of its endpoint's shared slots (`llm/slots.py`):
    `max_parallel_requests` then holds across every process using the same slots, not only in
    this one. Same interface as `_PrioritySemaphore`, so the request path does not change."""

    def __init__(self, own: _PrioritySemaphore, slots: RequestSlots, key: str, limit: int) -> None:
        self._own = own
        self._slots = slots
        self._key = key
        self._limit = limit

    async def acquire(self, priority: Any = 0) -> None:
        await self._own.acquire(priority)
        try:
            await self._slots.acquire(self._key, self._limit, priority)
        except BaseException:
            self._own.release()
            raise

    def release(self) -> None:
        self._slots.release(self._key, self._limit)
        self._own.release()


@dataclass
class _Failure:
    """One failed attempt, classified: `kind` is "transient", "rejected", "too_large" or
    "fatal" (see the module docstring)."""

    kind: str
    status: int | None
    reason: str
    retry_after: float | None = None

    @property
    def rate_limited(self) -> bool:
        return self.kind == "transient" and self.status == 429


# -------------------------------------------------------------------------------------- client


class LLMClient:
    """Async chat-completions client over one shared `aiohttp.ClientSession`.

    Use as `async with LLMClient(models) as client: await client.chat(alias, messages)`.
    `sleep` and `rng` are injectable so tests can observe backoff waits without waiting.
    `slots` (owned by the caller) makes `max_parallel_requests` hold across processes too.

    Usage stats: the client keeps a running `UsageStats` per alias (`usage(alias)`,
    `usage_total()`), for whole-run totals; a caller that needs per-partition numbers passes its
    own `usage=` to `chat()`, which is updated in addition to the per-alias one.
    """

    def __init__(
        self,
        models: Mapping[str, ModelConfig],
        *,
        sleep: SleepFn = asyncio.sleep,
        rng: random.Random | None = None,
        slots: RequestSlots | None = None,
    ) -> None:
        self._models: dict[str, ModelConfig] = dict(models)
        self._slots = slots
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._http: aiohttp.ClientSession | None = None
        self._exchanges = 0  # HTTP exchanges begun and not yet ended (their connection held)
        # Aliases whose endpoint gave an endpoint-fatal answer: nothing more is sent to them
        # with the key it was given with (calls waiting for a slot get the same answer), so the
        # run stops at that answer, not one round of requests later. A rotated key is tried.
        self._stopped: dict[str, tuple[_Failure, object]] = {}
        self._semaphores: dict[str, _PrioritySemaphore | _SharedGate] = {}
        self._params: dict[int, tuple[ModelConfig, dict[str, Any]]] = {}
        self._usage: dict[str, UsageStats] = {alias: UsageStats() for alias in self._models}

    def __repr__(self) -> str:
        return f"LLMClient(aliases={sorted(self._models)!r}, open={self._http is not None})"

    # -- lifecycle

    async def __aenter__(self) -> LLMClient:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Create the connection pool, sized so every alias can use its full parallelism at
        once: requests then never queue inside aiohttp, only on our per-alias semaphores, where
        the wait is not charged to `timeout_s`."""
        if self._http is not None:
            return
        total = max(1, sum(m.max_parallel_requests for m in self._models.values()))
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=total, limit_per_host=0),
            # timeout_s is enforced around each exchange (_attempt), as one total deadline
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
            # the body is sent as given; aiohttp adds no User-Agent of its own
            skip_auto_headers=("User-Agent",),
        )
        self._semaphores = {}
        for alias, m in self._models.items():
            own = _PrioritySemaphore(m.max_parallel_requests)
            self._semaphores[alias] = (
                own
                if self._slots is None
                else _SharedGate(own, self._slots, endpoint_key(m), m.max_parallel_requests)
            )

    def stop(self, alias: str, status: int | None, message: str) -> None:
        """Send nothing more to `alias`: its calls, waiting or new, fail with this fatal
        answer (the caller decided the endpoint cannot serve the run, e.g. a parameter it
        refuses on every row)."""
        self._stopped.setdefault(alias, (_Failure("fatal", status, message), _ANY_KEY))

    def in_flight(self) -> int:
        """HTTP exchanges whose connection is not yet given back (0 when idle, else a leak)."""
        return self._exchanges

    async def aclose(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    # -- stats

    def usage(self, alias: str) -> UsageStats:
        """Running totals of one alias since the client was created (live object)."""
        return self._usage[alias]

    def usage_total(self) -> UsageStats:
        return UsageStats.combine(self._usage.values())

    # -- calls

    async def chat(
        self,
        alias: str,
        messages: list[dict[str, Any]],
        *,
        response_format: dict[str, Any] | None = None,
        usage: UsageStats | None = None,
        priority: Any = 0,
        sampled: dict[str, float] | None = None,
        accept: AcceptFn | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> ChatResult:
        """One chat completion with retries; see the module docstring for the outcome contract.

        `priority` orders calls waiting for the alias's `max_parallel_requests` (lower first,
        FIFO among equals); the engine passes the row index so earlier rows finish first.
        `accept` sees each answer in the wire format and may call it a glitch (retried)."""
        model = self._model(alias)
        payload = self._payload(model, messages, response_format, sampled)
        if tools:
            payload["tools"] = tools
        return await self._call(alias, model, "chat/completions", payload, usage, priority, accept)

    async def embed(
        self,
        alias: str,
        texts: list[str],
        *,
        usage: UsageStats | None = None,
        priority: Any = 0,
    ) -> ChatResult:
        """The embeddings of `texts` (OpenAI's `/embeddings`), with the same retries, limits and
        outcome contract as `chat`. The vectors come back as JSON text in `content` (a list of
        lists of floats, in input order), so the request cache keeps them like an answer."""
        model = self._model(alias)
        payload: dict[str, Any] = {"model": model.model, "input": texts}
        for name in InferenceParams.EMBEDDING_ONLY:
            value = getattr(model.inference, name)
            if value is not None:
                payload[name] = value
        payload.update(model.extra_body or {})

        def count(result: ChatResult) -> str | None:
            got = len(json.loads(result.content))
            return None if got == len(texts) else f"{got} embeddings for {len(texts)} inputs"

        return await self._call(
            alias, model, "embeddings", payload, usage, priority, count, _embedding_result
        )

    async def generate_image(
        self,
        alias: str,
        messages: list[dict[str, Any]],
        *,
        usage: UsageStats | None = None,
        priority: Any = 0,
    ) -> ChatResult:
        """The images a model draws for one user message (its prompt text and any context
        images), with the same retries, limits and outcome contract as `chat`. As DataDesigner
        asks: a diffusion model (ModelConfig.images_endpoint) gets OpenAI's
        `/images/generations` with the prompt text alone; any other model a chat completion
        whose answer carries the images. The images come back as a JSON list of base64 texts
        in `content`, so the request cache keeps them like an answer."""
        model = self._model(alias)
        if model.images_endpoint:
            content = messages[-1]["content"]
            prompt = content if isinstance(content, str) else content[-1]["text"]
            payload: dict[str, Any] = {"model": model.model, "prompt": prompt}
            path, parse = "images/generations", _images_result
        else:
            payload = {"model": model.model, "messages": messages}
            path, parse = "chat/completions", _chat_images_result
        payload.update(model.extra_body or {})
        return await self._call(alias, model, path, payload, usage, priority, None, parse)

    def _model(self, alias: str) -> ModelConfig:
        model = self._models.get(alias)
        if model is None:
            raise LLMConfigError(
                f"unknown model alias {alias!r}; configured aliases: {sorted(self._models)}"
            )
        if self._http is None:
            raise RuntimeError("LLMClient is not open: use `async with LLMClient(...) as client`")
        return model

    async def _call(
        self,
        alias: str,
        model: ModelConfig,
        path: str,
        payload: dict[str, Any],
        usage: UsageStats | None,
        priority: Any,
        accept: AcceptFn | None,
        parse: Callable[[Any, float], ChatResult | _Failure] | None = None,
    ) -> ChatResult:
        """POST `payload` to `path` under the endpoint with retries (see `chat`); `parse`
        turns a 200 body into a result (default: a chat completion)."""
        key = self._api_key(alias, model)
        url = f"{model.base_url}/{path}"
        safe_url = _safe_url(url)
        body = _BODY.encode(payload).encode("utf-8")  # once, not per attempt
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"

        sinks = [self._usage.setdefault(alias, UsageStats())]
        if usage is not None:
            sinks.append(usage)
        for s in sinks:
            s.requests += 1

        attempt = transient = 0
        while True:
            attempt += 1
            outcome = await self._attempt(alias, model, url, body, headers, key, priority, parse)
            if isinstance(outcome, ChatResult):
                result = replace(outcome, retries=attempt - 1)
                glitch = accept(result) if accept is not None else None
                if glitch is None:
                    for s in sinks:
                        s.tokens_in += result.tokens_in
                        s.tokens_out += result.tokens_out
                        s.latencies.append(result.latency_s)
                    return result
                failure = _Failure("transient", 200, _scrub(glitch, key))
            else:
                failure = outcome
            if failure.kind != "transient":
                for s in sinks:
                    s.failures += 1
                if failure.kind == "fatal":
                    self._stopped.setdefault(alias, (failure, key))
                    raise LLMFatalError(
                        alias=alias, url=safe_url, status=failure.status, message=failure.reason
                    )
                raise LLMRequestRejected(
                    alias=alias,
                    url=safe_url,
                    status=failure.status,
                    kind=failure.kind,
                    message=failure.reason,
                )
            # A rate limit is the provider pacing us, not failing: it never uses up the
            # retries (DataDesigner #575), so a long 429 spell delays the run, never shrinks it.
            if not failure.rate_limited:
                transient += 1
                if transient > model.max_retries:
                    break
            for s in sinks:
                s.retries += 1
            wait = self._backoff(attempt, failure.retry_after)
            # DEBUG: under a degraded provider this fires per call; the counters carry the signal.
            log.debug(
                "LLM retry: model %r attempt %d (%d of %d retries used) failed (%s); waiting %.2fs",
                alias,
                attempt,
                transient,
                model.max_retries,
                failure.reason,
                wait,
            )
            await self._sleep(wait)

        for s in sinks:
            s.failures += 1
        raise LLMRetryableExhausted(
            alias=alias,
            url=safe_url,
            status=failure.status,
            reason=failure.reason,
            attempts=attempt,
        )

    # -- internals

    @staticmethod
    def _api_key(alias: str, model: ModelConfig) -> str | None:
        """Read at call time so key rotation needs no restart and no config object holds it."""
        if model.api_key_env is None:
            return None
        key = os.environ.get(model.api_key_env)
        if not key:
            raise LLMConfigError(
                f"model {alias!r}: environment variable {model.api_key_env} is not set (or"
                " empty); export the API key under that name"
            )
        return key

    def _payload(
        self,
        model: ModelConfig,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        sampled: dict[str, float] | None = None,
    ) -> dict[str, Any]:
        """`sampled`: this cell's draws of parameters the config gives as distributions."""
        payload: dict[str, Any] = {"model": model.model, "messages": messages}
        payload.update(self._fixed_params(model))
        payload.update(sampled or {})
        if response_format is not None:
            payload["response_format"] = response_format
        payload.update(model.extra_body or {})
        return payload

    def _fixed_params(self, model: ModelConfig) -> dict[str, Any]:
        """The model's inference parameters that are plain values, dumped once per model (a
        frozen config) rather than per request."""
        found = self._params.get(id(model))
        if found is None or found[0] is not model:
            params = model.inference.model_dump(
                exclude_none=True, exclude=set(InferenceParams.EMBEDDING_ONLY)
            )
            fixed = {k: v for k, v in params.items() if not isinstance(v, dict)}
            found = self._params[id(model)] = (model, fixed)
        return found[1]

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Server's Retry-After wins (capped, so a bogus header cannot park a run for hours);
        else full jitter, which spreads a burst of simultaneous 429s instead of re-synchronising
        them."""
        if retry_after is not None:
            return min(retry_after, RETRY_AFTER_CAP_S)
        ceiling = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2 ** min(attempt - 1, 30)))
        return self._rng.uniform(0.0, ceiling)

    async def _attempt(
        self,
        alias: str,
        model: ModelConfig,
        url: str,
        body: bytes,
        headers: dict[str, str],
        key: str | None,
        priority: Any = 0,
        parse: Callable[[Any, float], ChatResult | _Failure] | None = None,
    ) -> ChatResult | _Failure:
        """One HTTP exchange under the alias semaphore, classified. Never raises transport
        errors: they become `_Failure`s outside of any `except` block, so no aiohttp exception
        (whose request holds the key) is chained.

        `timeout_s` is a deadline on the whole exchange (connect, send, every byte of the body):
        per-read socket timeouts bound each operation, so a server sending a byte a second
        would never trip them. The wait for the semaphore is not charged to it."""
        assert self._http is not None
        failure: _Failure | None = None
        semaphore = self._semaphores[alias]
        await semaphore.acquire(priority)
        try:
            stopped, stopped_key = self._stopped.get(alias, (None, None))
            if stopped is not None and stopped_key in (key, _ANY_KEY):
                return stopped
            start = time.perf_counter()
            try:
                async with asyncio.timeout(model.timeout_s):
                    exchange = await self._exchange(url, body, headers, model)
            except TimeoutError as exc:  # aiohttp's own timeouts subclass it too
                failure = _Failure(
                    "transient",
                    None,
                    f"timeout: no complete answer within timeout_s={model.timeout_s:g}s"
                    f" ({type(exc).__name__})",
                )
            except (
                aiohttp.ClientConnectionError,  # refused, reset, closed by the server
                aiohttp.ClientPayloadError,  # a body cut short or not decodable
                aiohttp.ClientResponseError,  # not HTTP, or a malformed response head
            ) as exc:
                failure = _Failure(
                    "transient",
                    None,
                    f"connection error: {type(exc).__name__}: {_scrub(str(exc), key)}",
                )
            except aiohttp.ClientError as exc:
                failure = _Failure("fatal", None, f"{type(exc).__name__}: {_scrub(str(exc), key)}")
            latency = time.perf_counter() - start
        finally:
            semaphore.release()
        if failure is not None:
            return failure
        if isinstance(exchange, _Failure):
            return exchange
        status, retry_after, raw = exchange
        if 200 <= status <= 299:
            data = _json_body(raw)
            if data is None:
                text = raw[:120].decode("utf-8", errors="replace")
                return _Failure(
                    "transient", status, "malformed response: body is not JSON: " + _truncate(text)
                )
            return (parse or self._result)(data, latency)
        message, code = _provider_message(status, raw)
        message = _truncate(_scrub(message, key))
        if status == 429 and code in _QUOTA_CODES:
            return _Failure("fatal", status, message)
        if status in _TRANSIENT_STATUS or 500 <= status <= 599:
            return _Failure("transient", status, f"HTTP {status}: {message}", retry_after)
        if status in _REJECTED_STATUS:
            return _Failure("rejected", status, message)
        return _Failure("fatal", status, message)

    async def _exchange(
        self, url: str, body: bytes, headers: dict[str, str], model: ModelConfig
    ) -> tuple[int, float | None, bytes] | _Failure:
        """POST and read the body, streaming, so a body over `max_response_bytes` is refused
        after at most that many bytes (on its Content-Length, before any): a runaway answer
        costs neither memory nor a row group of gigabytes."""
        assert self._http is not None
        self._exchanges += 1
        try:
            async with self._http.post(
                url, data=body, headers=headers, allow_redirects=False
            ) as response:
                return await self._read(response, model)
        finally:
            self._exchanges -= 1

    @staticmethod
    async def _read(
        response: aiohttp.ClientResponse, model: ModelConfig
    ) -> tuple[int, float | None, bytes] | _Failure:
        """Status, Retry-After and body; a body over the cap is not read past it."""
        ok = 200 <= response.status <= 299
        cap = model.max_response_bytes if ok else ERROR_BODY_MAX
        too_large = _Failure(
            "too_large",
            response.status,
            f"response body over max_response_bytes={model.max_response_bytes} bytes; not"
            " read further (raise max_response_bytes, or lower inference.max_tokens)",
        )
        declared = response.headers.get("content-length", "")
        if ok and declared.isdigit() and int(declared) > cap:
            return too_large
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_any():
            size += len(chunk)
            if size > cap:
                if ok:
                    return too_large
                chunks.append(chunk[: len(chunk) - (size - cap)])
                break
            chunks.append(chunk)
        retry_after = parse_retry_after(response.headers) if not ok else None
        return response.status, retry_after, b"".join(chunks)

    @staticmethod
    def _result(data: Any, latency: float) -> ChatResult | _Failure:
        """Validate a 200 body. A body without usable content is a provider fault (gateways do
        return these under load), so it is retried rather than handed to the engine as data;
        empty content is handed on only when the provider says why (a refusal, a content
        filter, the token limit): that is the model's answer, and asking again would not help."""

        def bad(why: str) -> _Failure:
            return _Failure("transient", 200, f"malformed response: {why}")

        if not isinstance(data, dict):
            return bad("body is not a JSON object")
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            err = data.get("error")  # some gateways report errors inside a 200
            detail = err.get("message") if isinstance(err, dict) else err
            suffix = f" (provider error: {_truncate(str(detail), 200)})" if detail else ""
            return bad("no choices" + suffix)
        message = choices[0].get("message")
        if not isinstance(message, dict):
            return bad("no message")
        content = message.get("content")
        if content is not None and not isinstance(content, str):
            return bad("message content is not text")
        finish = choices[0].get("finish_reason")
        finish = finish if isinstance(finish, str) else None
        refusal = message.get("refusal") if isinstance(message.get("refusal"), str) else None
        tool_calls = _tool_calls(message.get("tool_calls"))
        if tool_calls == "bad":
            return bad("tool_calls are not function calls with a name and arguments")
        if (
            not (content or "").strip()
            and not refusal
            and not tool_calls
            and finish not in _EMPTY_FOR_A_REASON
        ):
            return bad("empty answer" if content is not None else "null message content")
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

        def count(name: str) -> int:
            value = usage.get(name)
            return int(value) if isinstance(value, int | float) and value >= 0 else 0

        raw_model = data.get("model")
        return ChatResult(
            content=content or "",
            tokens_in=count("prompt_tokens"),
            tokens_out=count("completion_tokens"),
            latency_s=latency,
            retries=0,
            finish_reason=finish,
            raw_model=raw_model if isinstance(raw_model, str) else None,
            refusal=_truncate(refusal) if refusal else None,
            reasoning=_reasoning(message),
            tool_calls=tool_calls or None,
        )


def _tool_calls(raw: Any) -> list[dict[str, Any]] | str | None:
    """A message's `tool_calls` in the one shape the tool loop reads ({id, type: function,
    function: {name, arguments}}), None when there are none, "bad" when they are malformed."""
    if not raw:
        return None
    if not isinstance(raw, list):
        return "bad"
    out = []
    for k, tc in enumerate(raw):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            return "bad"
        args = fn.get("arguments")
        if isinstance(args, dict):  # some servers send the object itself
            args = json.dumps(args)
        call_id = tc.get("id") if isinstance(tc.get("id"), str) and tc.get("id") else f"call_{k}"
        out.append(
            {
                "id": call_id,
                "type": "function",
                "function": {
                    "name": fn["name"],
                    "arguments": args if isinstance(args, str) else "",
                },
            }
        )
    return out


def _embedding_result(data: Any, latency: float) -> ChatResult | _Failure:
    """A 200 body of `/embeddings`: `data[i].embedding` (floats, or base64 of little-endian
    float32 when encoding_format is base64) in `index` order, as JSON text."""

    def bad(why: str) -> _Failure:
        return _Failure("transient", 200, f"malformed embeddings response: {why}")

    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        return bad("no data list")
    vectors: list[list[float]] = []
    for item in sorted(
        items, key=lambda i: i.get("index", 0) if isinstance(i.get("index"), int) else 0
    ):
        vector = item.get("embedding")
        if isinstance(vector, str):
            try:
                raw = base64.b64decode(vector, validate=True)
            except ValueError:
                return bad("embedding is not base64")
            if len(raw) % 4:
                return bad("base64 embedding is not float32")
            floats = array.array("f")
            floats.frombytes(raw)
            if sys.byteorder != "little":
                floats.byteswap()
            vector = [float(v) for v in floats]
        if not isinstance(vector, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in vector
        ):
            return bad("embedding is not a list of finite numbers")
        vectors.append([float(v) for v in vector])
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    tokens = usage.get("prompt_tokens")
    raw_model = data.get("model")
    return ChatResult(
        content=json.dumps(vectors),
        tokens_in=int(tokens) if isinstance(tokens, int) and tokens >= 0 else 0,
        tokens_out=0,
        latency_s=latency,
        retries=0,
        finish_reason="stop",
        raw_model=raw_model if isinstance(raw_model, str) else None,
    )


def _image_of(item: Any) -> str | None:
    """The base64 of one image as an answer gives it: `{b64_json}`, `{image_url: {url}}`,
    `{url}` or a string, the URL or string a data URI or bare base64 (None: none there)."""
    if isinstance(item, dict):
        if isinstance(item.get("b64_json"), str):
            return item["b64_json"]
        inner = item.get("image_url", item.get("url"))
        return _image_of(inner.get("url") if isinstance(inner, dict) else inner)
    if not isinstance(item, str) or not item:
        return None
    if item.startswith("data:image/") and ";base64," in item:
        return item.split(",", 1)[1]
    if item.startswith(("http://", "https://")):
        return None
    return item if _BASE64_TEXT.fullmatch(item[:100]) and len(item) > 100 else None


_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/=\s]+")


def _images(items: list[Any], latency: float, data: dict[str, Any]) -> ChatResult | _Failure:
    images = [b64 for item in items if (b64 := _image_of(item)) is not None]
    if not images and any(
        isinstance(i, dict) and str(i.get("url", "")).startswith("http") for i in items
    ):
        # Every row would be answered so: the run stops at once with what to change.
        return _Failure(
            "fatal",
            200,
            "the endpoint answered with image URLs, not image data; ask it for base64 (for"
            " OpenAI's images API: extra_body: {response_format: b64_json} on the model)",
        )
    raw_model = data.get("model")
    return ChatResult(
        content=json.dumps(images),
        tokens_in=0,
        tokens_out=0,
        latency_s=latency,
        retries=0,
        finish_reason="stop",
        raw_model=raw_model if isinstance(raw_model, str) else None,
    )


def _images_result(data: Any, latency: float) -> ChatResult | _Failure:
    """A 200 body of `/images/generations`: `data[i].b64_json` (or a data URI)."""
    items = data.get("data") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return _Failure("transient", 200, "malformed images response: no data list")
    return _images(items, latency, data)


def _chat_images_result(data: Any, latency: float) -> ChatResult | _Failure:
    """A 200 chat completion of an image model: the message's `images` (OpenRouter's and
    DataDesigner's reading: image_url parts or b64_json items), else its content when that is
    a data URI or base64."""
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return _Failure("transient", 200, "malformed chat response: no choices")
    message = choices[0].get("message")
    if not isinstance(message, dict):
        return _Failure("transient", 200, "malformed chat response: no message")
    items = message.get("images") if isinstance(message.get("images"), list) else []
    if not [i for i in items if _image_of(i) is not None]:
        content = message.get("content")
        items = [content.strip()] if isinstance(content, str) else []
    return _images(items, latency, data)


def _reasoning(message: dict[str, Any]) -> str | None:
    """`reasoning` first, then the older `reasoning_content` (DataDesigner reads them so)."""
    for key in ("reasoning", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str) and value:
            return value
    return None


# An empty answer with one of these finish reasons is the model's answer (cut off by max_tokens
# before any content, or filtered), not a gateway glitch: retrying the same request would not help.
_EMPTY_FOR_A_REASON = frozenset({"length", "content_filter"})


# ----------------------------------------------------------------------------------- transport
