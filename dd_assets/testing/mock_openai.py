"""An OpenAI-compatible server (chat completions, embeddings, image generations) for tests and
benchmarks.

Real HTTP over real sockets, so tests exercise the actual client stack (connection pool, keep-alive,
timeouts, headers) rather than a fake object. It runs an asyncio loop in one background thread (no
thread per request), so hundreds of simultaneous connections cost nothing but file descriptors,
and `latency_s` models a provider that is slow but not busy.

Answers are a pure function of the request body (plus the seed and how many times that same body
was seen), so a run that replays the same requests gets the same answers and the same injected
failures whatever order concurrent requests arrive in.

Usage::

    with MockOpenAI(latency_s=0.01, fail_rate=0.2) as mock:
        cfg = ModelConfig(base_url=mock.url, model="m")
        ...
        assert mock.peak_concurrency <= 8
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import http
import json
import math
import re
import struct
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["FAULTS", "MockOpenAI", "example_for_schema"]

# Scripted faults (`queue_faults`, `fail_for`, `prompt_faults`): an int is an HTTP status, the
# strings are:
FAULTS = frozenset(
    {
        "disconnect",  # close the connection without answering
        "stall",  # answer only after `stall_s`
        "malformed",  # 200 without choices
        "invalid_json",  # 200 whose JSON content is cut in half
        "wrong_schema",  # 200 whose JSON content parses but matches no schema
        "empty",  # 200 with content ""
        "null_content",  # 200 with content null
        "not_json",  # 200 whose body is an HTML page (a gateway's)
        "slow_loris",  # a 200 body sent one byte every `drip_s`
        "huge",  # a 200 answer of `huge_bytes`, Content-Length announced
        "huge_chunked",  # the same, chunked: no length announced, the reader must stop itself
        "quota",  # 429 insufficient_quota: OpenAI's "your account is out of credit"
    }
)

# What a provider says when a prompt is over the context length (status 400, one row only).
CONTEXT_LENGTH_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in"
    " 9120 tokens. Please reduce the length of the messages."
)

# A chat model whose name holds this is an image model: its answers also carry an image.
IMAGE_MODEL_MARK = "image"

_MAX_HEAD = 1 << 20
_CODE_RE = re.compile(r"\bcode\b", re.IGNORECASE)
_SCHEMA_TAG_RE = re.compile(r"<response_schema>\s*(.*?)\s*</response_schema>", re.DOTALL)


@dataclass
class _Reply:
    status: int
    body: dict[str, Any] | str
    headers: dict[str, str]
    drip_s: float | None = None  # send the body one byte at a time, this far apart
    chunked: bool = False  # Transfer-Encoding: chunked, no Content-Length


class _Disconnect:
    """Sentinel: close the connection without answering (the client sees a protocol error)."""


_DISCONNECT = _Disconnect()


# ----------------------------------------------------------------------- JSON schema examples


def example_for_schema(
    schema: Any, *, root: Any = None, name: str = "value", depth: int = 0
) -> Any:
    """A value that validates against `schema` for the subset of JSON Schema that structured
    outputs use: objects (every property), strings (length, common formats), integers and
    numbers (bounds, multipleOf), booleans, null, enum/const, anyOf/oneOf/allOf, arrays (minItems
    items, at least one), local `$ref`s. Deterministic: the same schema gives the same value."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 16:
        return f"example {name}"
    if "$ref" in schema:
        return example_for_schema(
            _resolve(schema["$ref"], root), root=root, name=name, depth=depth + 1
        )
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return example_for_schema(
                (non_null or options)[0], root=root, name=name, depth=depth + 1
            )
    if schema.get("allOf"):
        merged: dict[str, Any] = {}
        for sub in schema["allOf"]:
            sub = _resolve(sub["$ref"], root) if isinstance(sub, dict) and "$ref" in sub else sub
            if isinstance(sub, dict):
                props = {**merged.get("properties", {}), **sub.get("properties", {})}
                merged.update(sub)
                if props:
                    merged["properties"] = props
        merged.update({k: v for k, v in schema.items() if k != "allOf"})
        return example_for_schema(merged, root=root, name=name, depth=depth + 1)

    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"

    if kind == "object":
        props = schema.get("properties") or {}
        out = {
            k: example_for_schema(v, root=root, name=k, depth=depth + 1) for k, v in props.items()
        }
        for k in schema.get("required") or []:
            out.setdefault(k, f"example {k}")
        return out
    if kind == "array":
        prefix = schema.get("prefixItems")
        if prefix:
            return [example_for_schema(p, root=root, name=name, depth=depth + 1) for p in prefix]
        n = max(1, int(schema.get("minItems", 1)))
        if schema.get("maxItems") is not None:
            n = min(n, int(schema["maxItems"]))
        item = schema.get("items", {})
        return [example_for_schema(item, root=root, name=name, depth=depth + 1) for _ in range(n)]
    if kind == "string":
        return _example_string(schema, name)
    if kind in ("integer", "number"):
        return _example_number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return f"example {name}"


def _resolve(ref: str, root: Any) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if not part:
            continue
        part = part.replace("~1", "/").replace("~0", "~")
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


_FORMATS = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "12:00:00",
    "email": "user@example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "uri": "https://example.com/",
    "hostname": "example.com",
    "ipv4": "192.0.2.1",
}


def _example_string(schema: dict[str, Any], name: str) -> str:
    fmt = schema.get("format")
    value = _FORMATS.get(fmt, f"example {name}") if isinstance(fmt, str) else f"example {name}"
    lo = int(schema.get("minLength", 0))
    hi = schema.get("maxLength")
    if len(value) < lo:
        value += "x" * (lo - len(value))
    if hi is not None:
        value = value[: int(hi)]
    return value


def _example_number(schema: dict[str, Any], *, integer: bool) -> int | float:
    lo = schema.get("minimum")
    hi = schema.get("maximum")
    ex_lo = schema.get("exclusiveMinimum")
    ex_hi = schema.get("exclusiveMaximum")
    step = 1 if integer else 0.5
    if isinstance(ex_lo, int | float) and not isinstance(ex_lo, bool):
        lo = ex_lo + step if lo is None else max(lo, ex_lo + step)
    if isinstance(ex_hi, int | float) and not isinstance(ex_hi, bool):
        hi = ex_hi - step if hi is None else min(hi, ex_hi - step)
    if lo is not None:
        value: float = lo
    elif hi is not None:
        value = min(1, hi)
    else:
        value = 1
    mult = schema.get("multipleOf")
    if isinstance(mult, int | float) and mult > 0:
        value = math.ceil(value / mult) * mult
    if integer:
        return math.ceil(value)
    return float(value)


# ------------------------------------------------------------------------------------ server


class MockOpenAI:
    """OpenAI-compatible mock provider on 127.0.0.1 (port 0 = any free port).

    Knobs are plain attributes, safe to change while the server runs:
    `latency_s`, `fail_rate` + `fail_statuses` (random injected failures), `retry_after` (value
    of the Retry-After header on 429s: seconds, or a string sent verbatim, e.g. an HTTP date),
    `fatal_status` (every chat request fails with it), `require_key` (401 unless the bearer
    token matches; the 401 message echoes the token it got, as some real providers do, so tests
    can prove the client scrubs it), `invalid_json_rate` (JSON answers broken at that rate),
    `content_template` (forces the content; `{model}` and `{prompt}` are substituted),
    `code_fence` (answer a fenced code block), `stall_s` (how long a "stall" fault hangs),
    `wrong_schema_rate` (JSON answers that parse but break the schema, at that rate), `drip_s`
    (byte interval of a "slow_loris" body), `huge_bytes` (size of a "huge" answer),
    `prompt_faults` ({substring: fault}: every request whose messages contain the substring gets
    the fault; a 400 says the prompt is over the context length), `reasoning_template` (a
    reasoning model's thinking, sent as the message's `reasoning_content`; `{model}` and
    `{prompt}` are substituted), `tool_turns` (when a request offers `tools`: how many
    tool-calling turns to ask for before answering, each one call of `tool_name` (even when
    not offered, as a confused model does) or the first tool offered, with arguments made from its schema; the answer then quotes the tool results).
    `hold` (while true, no answer is sent: each request waits after its latency until it is
    cleared; a test uses it so that nothing can finish before something else has started).
    `queue_faults(...)` scripts the next requests exactly, `fail_for(seconds, ...)` every request
    for a while (then the provider recovers); both come before everything except the key check.
    """

    def __init__(
        self,
        *,
        latency_s: float = 0.0,
        fail_rate: float = 0.0,
        fail_statuses: Sequence[int] = (429, 500),
        retry_after: float | str | None = None,
        fatal_status: int | None = None,
        require_key: str | None = None,
        invalid_json_rate: float = 0.0,
        content_template: str | None = None,
        code_fence: bool = False,
        stall_s: float = 30.0,
        wrong_schema_rate: float = 0.0,
        drip_s: float = 1.0,
        huge_bytes: int = 10 * 1024 * 1024,
        prompt_faults: dict[str, int | str] | None = None,
        reasoning_template: str | None = None,
        tool_turns: int = 1,
        tool_name: str | None = None,
        seed: int = 0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.latency_s = latency_s
        self.fail_rate = fail_rate
        self.fail_statuses = list(fail_statuses)
        self.retry_after = retry_after
        self.fatal_status = fatal_status
        self.require_key = require_key
        self.invalid_json_rate = invalid_json_rate
        self.content_template = content_template
        self.code_fence = code_fence
        self.stall_s = stall_s
        self.wrong_schema_rate = wrong_schema_rate
        self.drip_s = drip_s
        self.huge_bytes = huge_bytes
        self.prompt_faults: dict[str, int | str] = dict(prompt_faults or {})
        self.reasoning_template = reasoning_template
        self.tool_turns = tool_turns
        self.tool_name = tool_name
        self.seed = seed
        self.host = host
        self.hold = False
        self._port = port

        self._lock = threading.Lock()
        self._faults: deque[int | str] = deque()
        self._fail_until = 0.0
        self._fail_cycle: list[int | str] = []
        self._fail_n = 0
        self._seen: Counter[str] = Counter()
        self._requests = 0
        self._by_status: Counter[int | str] = Counter()
        self._peak = 0
        self._current = 0
        # requests in flight integrated over time, from the first request's arrival to the
        # last one's answer: the mean in flight is what a provider sees of a client's dispatch
        self._busy = 0.0
        self._first = self._changed = 0.0
        # (time.monotonic(), requests in flight) after each change: where a dispatcher leaves
        # the budget idle (bench/llm_chain.py --timeline)
        self.in_flight_log: list[tuple[float, int]] = []
        self._bodies: list[dict[str, Any]] = []
        self._auth: list[str | None] = []

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conn_tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle

    def start(self) -> MockOpenAI:
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="mock-openai", daemon=True
        )
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._serve(), loop)
        self._port = fut.result(timeout=10)
        return self

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        loop.run_forever()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> MockOpenAI:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """Base URL to put in `ModelConfig.base_url`."""
        return f"http://{self.host}:{self._port}/v1"

    # -- scripting and counters

    def queue_faults(self, *faults: int | str) -> None:
        """The next len(faults) chat requests get these outcomes, in arrival order: an HTTP status
        (with an OpenAI-style error body; 429 carries `retry_after`) or one of FAULTS."""
        _check_faults(faults)
        with self._lock:
            self._faults.extend(faults)

    def fail_for(self, seconds: float, *faults: int | str) -> None:
        """For the next `seconds`, every chat request gets one of `faults` (in turn): a burst of
        500s, a spell of 429s, a gateway answering empty content; then the provider recovers."""
        _check_faults(faults)
        if not faults:
            raise ValueError("fail_for needs at least one fault")
        with self._lock:
            self._fail_until = time.monotonic() + seconds
            self._fail_cycle = list(faults)
            self._fail_n = 0

    def reset(self) -> None:
        """Zero the counters and the logs, drop queued faults; knobs are left as they are."""
        with self._lock:
            self._faults.clear()
            self._fail_until = 0.0
            self._seen.clear()
            self._requests = 0
            self._by_status.clear()
            self._peak = self._current
            self._busy, self._first = 0.0, 0.0
            self.in_flight_log.clear()
            self._bodies.clear()
            self._auth.clear()

    @property
    def requests(self) -> int:
        with self._lock:
            return self._requests

    @property
    def by_status(self) -> dict[int | str, int]:
        """Responses by HTTP status; "disconnect" for connections dropped on purpose."""
        with self._lock:
            return dict(self._by_status)

    @property
    def peak_concurrency(self) -> int:
        with self._lock:
            return self._peak

    @property
    def current(self) -> int:
        with self._lock:
            return self._current

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """Parsed JSON bodies of chat requests, in arrival order (a copy)."""
        with self._lock:
            return list(self._bodies)

    @property
    def auth_headers(self) -> list[str | None]:
        """Authorization header of each chat request (None when absent), in arrival order."""
        with self._lock:
            return list(self._auth)

    # -- server internals (run on the server thread)

    async def _serve(self) -> int:
        self._server = await asyncio.start_server(
            self._handle, self.host, self._port, backlog=4096, limit=_MAX_HEAD
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        tasks = list(self._conn_tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conn_tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                except asyncio.LimitOverrunError:
                    await self._write(writer, _error(431, "request header too large"), False)
                    return
                request = await self._read_request(head, reader)
                if request is None:
                    await self._write(writer, _error(400, "malformed HTTP request"), False)
                    return
                method, path, headers, body, keep_alive = request
                reply = await self._unless_gone(reader, self._dispatch(method, path, headers, body))
                if reply is None or isinstance(reply, _Disconnect):
                    return
                if not await self._write(writer, reply, keep_alive) or not keep_alive:
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:
            # Only our own shutdown cancels handlers. Finishing normally keeps asyncio's stream
            # callback (3.11 calls task.exception() on it) from logging a traceback per connection.
            return
        finally:
            self._conn_tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _unless_gone(
        reader: asyncio.StreamReader, work: Awaitable[_Reply | _Disconnect]
    ) -> _Reply | _Disconnect | None:
        """The reply, or None once the client hung up: a provider such as vLLM aborts a request
        whose connection closed, so an abandoned request (a SIGKILLed run worker's) stops
        counting as in flight instead of looking like a breach of max_parallel_requests."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.05)
                if done:
                    return task.result()
                if reader.at_eof():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    return None
        except BaseException:
            task.cancel()
            raise

    @staticmethod
    async def _read_request(
        head: bytes, reader: asyncio.StreamReader
    ) -> tuple[str, str, dict[str, str], bytes, bool] | None:
        try:
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                return None
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    await reader.readuntil(b"\r\n")  # no trailers expected
                    break
                chunks.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(chunks)
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                return None
            body = await reader.readexactly(length) if length > 0 else b""
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        return method.upper(), target.split("?", 1)[0], headers, body, keep_alive

    async def _write(self, writer: asyncio.StreamWriter, reply: _Reply, keep_alive: bool) -> bool:
        payload = reply.body if isinstance(reply.body, str) else json.dumps(reply.body)
        data = payload.encode("utf-8")
        try:
            phrase = http.HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = "Status"
        length = "Transfer-Encoding: chunked" if reply.chunked else f"Content-Length: {len(data)}"
        head = [
            f"HTTP/1.1 {reply.status} {phrase}",
            "Content-Type: application/json",
            length,
            f"Connection: {'keep-alive' if keep_alive else 'close'}",
            *(f"{k}: {v}" for k, v in reply.headers.items()),
        ]
        with self._lock:
            self._by_status[reply.status] += 1
        head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        try:
            if reply.drip_s is not None:
                writer.write(head_bytes)
                for i in range(len(data)):
                    await writer.drain()
                    if writer.is_closing():
                        return False
                    await asyncio.sleep(reply.drip_s)
                    writer.write(data[i : i + 1])
            elif reply.chunked:
                writer.write(head_bytes)
                step = 64 * 1024
                for i in range(0, len(data), step):
                    part = data[i : i + step]
                    writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(head_bytes + data)
            await writer.drain()
        except ConnectionError:
            return False
        return True

    async def _dispatch(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> _Reply | _Disconnect:
        path = path.rstrip("/")
        if path in ("/v1/models", "/models") and method == "GET":
            return _Reply(200, {"object": "list", "data": [{"id": "mock", "object": "model"}]}, {})
        embeddings = path in ("/v1/embeddings", "/embeddings")
        images = path in ("/v1/images/generations", "/images/generations")
        if path not in ("/v1/chat/completions", "/chat/completions") and not (embeddings or images):
            return _error(404, f"no route for {method} {path}")
        if method != "POST":
            return _error(405, f"{method} not allowed on {path}")
        try:
            request = json.loads(body)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            return _error(400, "request body is not a JSON object")

        digest = hashlib.sha256(body).hexdigest()
        with self._lock:
            self._requests += 1
            self._count_in_flight(+1)
            self._peak = max(self._peak, self._current)
            self._bodies.append(request)
            self._auth.append(headers.get("authorization"))
            self._seen[digest] += 1
            occurrence = self._seen[digest]
            fault = self._faults.popleft() if self._faults else None
            if fault is None and time.monotonic() < self._fail_until:
                fault = self._fail_cycle[self._fail_n % len(self._fail_cycle)]
                self._fail_n += 1
            if fault is None and self.prompt_faults:
                text = body.decode("utf-8", errors="replace")
                fault = next((f for k, f in self.prompt_faults.items() if k in text), None)
        try:
            route = "embeddings" if embeddings else "images" if images else "chat"
            return await self._answer(request, headers, digest, occurrence, fault, route)
        finally:
            with self._lock:
                self._count_in_flight(-1)

    def _count_in_flight(self, change: int) -> None:
        now = time.monotonic()
        if not self._first:
            self._first = self._changed = now
        self._busy += self._current * (now - self._changed)
        self._changed = now
        self._current += change
        self.in_flight_log.append((now, self._current))

    @property
    def mean_concurrency(self) -> float:
        """Mean requests in flight from the first request's arrival to the last answer."""
        with self._lock:
            span = self._changed - self._first
            return self._busy / span if span > 0 else 0.0

    def _draw(self, tag: str, digest: str, occurrence: int) -> float:
        """Uniform [0, 1) from (seed, tag, body, occurrence): independent of arrival order."""
        h = hashlib.sha256(f"{self.seed}:{tag}:{digest}:{occurrence}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    async def _answer(
        self,
        request: dict[str, Any],
        headers: dict[str, str],
        digest: str,
        occurrence: int,
        fault: int | str | None,
        route: str = "chat",
    ) -> _Reply | _Disconnect:
        if self.require_key is not None:
            auth = headers.get("authorization", "")
            token = auth[7:] if auth.lower().startswith("bearer ") else auth
            if token != self.require_key:
                shown = token or "(none)"
                return _error(
                    401,
                    f"Incorrect API key provided: {shown}.",
                    "invalid_request_error",
                    "invalid_api_key",
                )

        if self.latency_s > 0:
            await asyncio.sleep(self.latency_s)
        while self.hold:
            await asyncio.sleep(0.05)

        broken_json = wrong_schema = False
        drip_s: float | None = None
        forced: str | None = None
        if fault is not None:
            if fault == "disconnect":
                with self._lock:
                    self._by_status["disconnect"] += 1
                return _DISCONNECT
            if fault == "stall":
                await asyncio.sleep(self.stall_s)
            elif fault == "malformed":
                return _Reply(
                    200, {"id": "chatcmpl-mock", "object": "chat.completion", "choices": []}, {}
                )
            elif fault == "not_json":
                return _Reply(200, "<html><body>502 Bad Gateway</body></html>", {})
            elif fault == "invalid_json":
                broken_json = True
            elif fault == "wrong_schema":
                wrong_schema = True
            elif fault == "empty":
                forced = ""
            elif fault == "null_content":
                return _Reply(200, _completion(request, None, digest, occurrence), {})
            elif fault == "slow_loris":
                drip_s = self.drip_s
            elif fault in ("huge", "huge_chunked"):
                reply = _Reply(
                    200, _completion(request, "x" * self.huge_bytes, digest, occurrence), {}
                )
                reply.chunked = fault == "huge_chunked"
                return reply
            elif fault == "quota":
                return _error(
                    429,
                    "You exceeded your current quota, please check your plan and billing details.",
                    "insufficient_quota",
                    "insufficient_quota",
                )
            elif isinstance(fault, int):
                if fault == 400:
                    return _error(400, CONTEXT_LENGTH_MESSAGE, code="context_length_exceeded")
                return self._injected(fault)

        if self.fatal_status is not None:
            return _error(
                self.fatal_status,
                f"Mock provider rejected the request with status {self.fatal_status}",
            )
        if self.fail_rate > 0 and self._draw("fail", digest, occurrence) < self.fail_rate:
            statuses = self.fail_statuses or [500]
            pick = statuses[int(self._draw("status", digest, occurrence) * len(statuses))]
            return self._injected(pick)

        model = str(request.get("model", ""))
        if route == "embeddings":
            return _embeddings(request, model)
        if route == "images":
            return _images(request, model)
        messages = request.get("messages")
        if not isinstance(messages, list) or not messages:
            return _error(400, "'messages' must be a non-empty array")
        if (
            self.invalid_json_rate > 0
            and self._draw("json", digest, occurrence) < self.invalid_json_rate
        ):
            broken_json = True
        if (
            self.wrong_schema_rate > 0
            and self._draw("schema", digest, occurrence) < self.wrong_schema_rate
        ):
            wrong_schema = True
        tools = request.get("tools")
        if isinstance(tools, list) and tools:
            calls = self._tool_calls(messages, tools, digest)
            if calls:
                body = _completion(request, None, digest, occurrence)
                body["choices"][0]["message"]["tool_calls"] = calls
                body["choices"][0]["finish_reason"] = "tool_calls"
                return _Reply(200, body, {})
        content, is_json = self._content(model, messages, request.get("response_format"))
        if broken_json and is_json:
            content = content[: max(1, len(content) // 2)]
        if wrong_schema and is_json:
            content = json.dumps({"unexpected": "shape"})
        if forced is not None:
            content = forced
        body = _completion(request, content, digest, occurrence)
        if IMAGE_MODEL_MARK in model and forced is None:
            # An image model behind chat completions (OpenRouter's shape, which DataDesigner
            # reads): the image in message.images, a data URI.
            png = base64.b64encode(mock_png(model, content)).decode()
            body["choices"][0]["message"]["images"] = [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
            ]
        if self.reasoning_template is not None:
            last = messages[-1] if isinstance(messages[-1], dict) else {}
            echo = " ".join(_text(last.get("content")).split())[:80]
            body["choices"][0]["message"]["reasoning_content"] = self.reasoning_template.replace(
                "{model}", model
            ).replace("{prompt}", echo)
        return _Reply(200, body, {}, drip_s=drip_s)

    def _tool_calls(
        self, messages: list[Any], tools: list[Any], digest: str
    ) -> list[dict[str, Any]]:
        """While fewer than `tool_turns` tool-calling turns follow the last user message: one
        call of `tool_name` (default: the first tool offered), its arguments made from its JSON
        schema (text: the prompt's first 40 characters; integers: the turn number)."""
        last_user = max(
            (i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "user"),
            default=0,
        )
        turns = sum(
            1
            for m in messages[last_user:]
            if isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls")
        )
        if turns >= self.tool_turns:
            return []
        offered = [t.get("function") for t in tools if isinstance(t, dict)]
        offered = [f for f in offered if isinstance(f, dict) and isinstance(f.get("name"), str)]
        pick = next((f for f in offered if f["name"] == self.tool_name), None)
        if pick is None and self.tool_name is not None:
            pick = {"name": self.tool_name}  # a model calling a tool it was not offered
        pick = pick or (offered[0] if offered else None)
        if pick is None:
            return []
        echo = " ".join(_text(messages[last_user].get("content")).split())[:40]
        schema = pick.get("parameters") if isinstance(pick.get("parameters"), dict) else {}
        args: dict[str, Any] = {}
        for name, prop in (schema.get("properties") or {}).items():
            kind = prop.get("type") if isinstance(prop, dict) else None
            if kind == "string":
                args[name] = echo
            elif kind in ("integer", "number"):
                args[name] = turns + 1
            elif kind == "boolean":
                args[name] = True
        return [
            {
                "id": f"call_{digest[:8]}_{turns}",
                "type": "function",
                "function": {"name": pick["name"], "arguments": json.dumps(args)},
            }
        ]

    def _injected(self, status: int) -> _Reply:
        reply = _error(status, f"Mock provider injected failure {status}", "mock_injected")
        if status == 429 and self.retry_after is not None:
            value = self.retry_after
            reply.headers["Retry-After"] = value if isinstance(value, str) else f"{value:g}"
        return reply

    def _content(self, model: str, messages: list[Any], response_format: Any) -> tuple[str, bool]:
        """Returns (content, whether it is JSON)."""
        last_user = next(
            (
                _text(m.get("content"))
                for m in reversed(messages)
                if isinstance(m, dict) and m.get("role") == "user"
            ),
            "",
        )
        echo = " ".join(last_user.split())[:80]
        if self.content_template is not None:
            return self.content_template.replace("{model}", model).replace("{prompt}", echo), False
        rf_type = response_format.get("type") if isinstance(response_format, dict) else None
        if rf_type == "json_schema":
            spec = response_format.get("json_schema") or {}
            schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
            return json.dumps(example_for_schema(schema)), True
        if rf_type == "json_object":
            return json.dumps({"answer": f"[{model}] {echo}"}), True
        tagged = _SCHEMA_TAG_RE.search(last_user)
        if tagged:
            try:
                schema = json.loads(tagged.group(1))
            except ValueError:
                schema = {}
            return f"```json\n{json.dumps(example_for_schema(schema), indent=2)}\n```", True
        if self.code_fence or "```" in last_user or _CODE_RE.search(last_user):
            return (
                f"```python\n# [{model}] {echo}\ndef answer() -> str:\n    return {echo!r}\n```",
                False,
            )
        results = [
            _text(m.get("content"))
            for m in messages
            if isinstance(m, dict) and m.get("role") == "tool"
        ]
        if results:  # the answer shows what the tools said
            return f"[{model}] {echo} | tools: {' / '.join(results)[:200]}", False
        return f"[{model}] {echo}", False


def _check_faults(faults: Iterable[int | str]) -> None:
    for f in faults:
        if not isinstance(f, int) and f not in FAULTS:
            raise ValueError(f"unknown fault {f!r}; use an HTTP status or one of {sorted(FAULTS)}")


def _completion(
    request: dict[str, Any], content: str | None, digest: str, occurrence: int
) -> dict[str, Any]:
    """A chat.completion body in the OpenAI wire format."""
    messages = request.get("messages") or []
    prompt_chars = sum(len(_text(m.get("content"))) for m in messages if isinstance(m, dict))
    usage = {
        "prompt_tokens": max(1, prompt_chars // 4),
        "completion_tokens": max(1, len(content or "") // 4),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": f"chatcmpl-mock-{digest[:12]}-{occurrence}",
        "object": "chat.completion",
        "created": 1700000000,
        "model": str(request.get("model", "")),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": usage,
    }


def _embeddings(request: dict[str, Any], model: str) -> _Reply:
    """An `/embeddings` answer in the OpenAI wire format: per input text a vector of
    `dimensions` (default 8) numbers in [-1, 1), a function of (model, text) only; base64
    (little-endian float32) when `encoding_format` is base64."""
    texts = request.get("input")
    texts = [texts] if isinstance(texts, str) else texts
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        return _error(400, "'input' must be a string or a non-empty array of strings")
    dims = request.get("dimensions", 8)
    if not isinstance(dims, int) or not 1 <= dims <= 4096:
        return _error(400, "'dimensions' must be an integer in [1, 4096]")
    data = []
    for i, text in enumerate(texts):
        seed = hashlib.sha256(f"{model}\0{text}".encode()).digest()
        stream = b"".join(
            hashlib.sha256(seed + k.to_bytes(4, "big")).digest() for k in range(dims // 8 + 1)
        )
        vector = [
            int.from_bytes(stream[4 * k : 4 * k + 4], "big") / 2**31 - 1.0 for k in range(dims)
        ]
        vector = [float(struct.unpack("<f", struct.pack("<f", v))[0]) for v in vector]
        if request.get("encoding_format") == "base64":
            packed = struct.pack(f"<{dims}f", *vector)
            data.append(
                {"object": "embedding", "index": i, "embedding": base64.b64encode(packed).decode()}
            )
        else:
            data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(max(1, len(t) // 4) for t in texts)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _Reply(200, {"object": "list", "data": data, "model": model, "usage": usage}, {})


def mock_png(model: str, prompt: str) -> bytes:
    """A 4x4 PNG whose colour is a function of (model, prompt): the same request draws the
    same image, different prompts (almost always) different ones."""
    r, g, b = hashlib.sha256(f"{model}\0{prompt}".encode()).digest()[:3]
    raw = b"".join(b"\x00" + bytes((r, g, b)) * 4 for _ in range(4))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 4, 4, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def _images(request: dict[str, Any], model: str) -> _Reply:
    """An `/images/generations` answer in the OpenAI wire format: `n` (default 1) images of
    the prompt as b64_json PNGs (mock_png; the i-th of several drawn from prompt + i)."""
    prompt = request.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        return _error(400, "'prompt' must be a non-empty string")
    n = request.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= 10:
        return _error(400, "'n' must be an integer in [1, 10]")
    data = [
        {
            "b64_json": base64.b64encode(
                mock_png(model, prompt + ("" if i == 0 else f"#{i}"))
            ).decode()
        }
        for i in range(n)
    ]
    return _Reply(200, {"created": 1700000000, "data": data}, {})


def _text(content: Any) -> str:
    """Message content as text: a string, or the text parts of a multi-part content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Iterable) and not isinstance(content, bytes | dict):
        return " ".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    return ""


def _error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None
) -> _Reply:
    return _Reply(
        status, {"error": {"message": message, "type": kind, "param": None, "code": code}}, {}
    )
