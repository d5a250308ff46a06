"""MCP tools for LLM columns with a `tool_alias` (DataDesigner's tool calls), through the `mcp`
SDK's client (`pip install 'dd-assets[tools]'`).

One `ToolBox` per stage run: it opens a session per MCP provider on first use (a stdio server
is started then), lists the tools a tool_alias may offer (allow_tools), hands them to the chat
request in OpenAI's `tools` format and runs the calls the model asks for. Each session lives in
a task of its own, because the SDK's transports must be entered and left in one task; the box
stops them when the run's LLM runner closes.

Failure classes (docs/llm.md#tool-calls):
- a provider that cannot be started or listed, an allow_tools name no provider offers, a tool
  name offered twice, a missing key variable: `ToolError`, the run stops (the setup is wrong);
- a call the model got wrong (a tool it was not offered, arguments that are not a JSON object)
  or one the server refused with a protocol error: `ToolCallRefused`, the row is dropped (the
  cached answer would ask the same again);
- a call that timed out or whose connection broke: `ToolCallUnfinished`, the cell is unfinished
  (the next run asks again; the session is reopened on next use);
- a tool that ran and reported an error (`isError`) is an answer: the model reads it, as in
  DataDesigner."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from typing import Any

from dd_assets.config.tools import HttpMcpProvider, StdioMcpProvider, ToolsConfig
from dd_assets.errors import LLMError

# A tool call (or a listing) without timeout_s: long, but never forever (a hung server must not
# hang a run).
DEFAULT_TOOL_TIMEOUT_S = 600.0
START_TIMEOUT_S = 60.0
# What the model reads for calls past max_tool_call_turns (DataDesigner's refusal text).
REFUSAL = (
    "Tool call refused: You have reached the maximum number of tool-calling turns. "
    "Please provide your final response without requesting additional tool calls."
)


class ToolError(LLMError):
    """An MCP provider or tool_alias cannot be used: the run stops."""


class ToolCallRefused(Exception):
    """This row's tool call cannot succeed (the model's call is wrong, or the server refused
    it): the row is dropped."""


class ToolCallUnfinished(Exception):
    """A tool call timed out or lost its connection: transient, the cell is unfinished."""


def _sdk() -> Any:
    try:
        import mcp
    except ImportError:
        raise ToolError(
            "tool calls (tool_alias) need the MCP SDK, which is not installed: pip install"
            " 'dd-assets[tools]'"
        ) from None
    return mcp


class _Session:
    """One provider's MCP session, held open by a task of its own until `close`."""

    def __init__(self, name: str, provider: HttpMcpProvider | StdioMcpProvider) -> None:
        self.name = name
        self.provider = provider
        self.session: Any = None
        self.broken = False
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._errlog: Any = None

    def _transport(self) -> Any:
        p = self.provider
        if isinstance(p, StdioMcpProvider):
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            env = dict(p.env)
            for var in p.pass_env:
                value = os.environ.get(var)
                if value is None:
                    raise ToolError(
                        f"MCP provider {self.name!r}: environment variable {var} (pass_env) is not"
                        " set"
                    )
                env[var] = value
            params = StdioServerParameters(command=p.command, args=list(p.args), env=env or None)
            # The server's stderr (FastMCP logs every request there) would fill the CLI's
            # output: discarded.
            self._errlog = open(os.devnull, "w")  # noqa: SIM115 - closed in close()
            return stdio_client(params, errlog=self._errlog)
        headers = None
        if p.api_key is not None:
            key = os.environ.get(p.api_key)
            if not key:
                raise ToolError(
                    f"MCP provider {self.name!r}: environment variable {p.api_key} is not set (or"
                    " empty); export the key under that name"
                )
            headers = {"Authorization": f"Bearer {key}"}
        if p.provider_type == "sse":
            from mcp.client.sse import sse_client

            return sse_client(p.endpoint, headers=headers)
        return _streamable_http(p.endpoint, headers)

    async def start(self) -> Any:
        self._task = asyncio.create_task(self._hold())
        try:
            await asyncio.wait_for(self._ready.wait(), START_TIMEOUT_S)
        except TimeoutError:
            await self.close()
            raise ToolError(
                f"MCP provider {self.name!r} did not answer within {START_TIMEOUT_S:g} s"
            ) from None
        if self._error is not None:
            await self.close()
            if isinstance(self._error, ToolError):
                raise self._error
            raise ToolError(
                f"MCP provider {self.name!r} could not be started or reached:"
                f" {_describe(self._error)}"
            ) from None
        return self.session

    async def _hold(self) -> None:
        from mcp import ClientSession

        try:
            async with AsyncExitStack() as stack:
                streams = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
                await session.initialize()
                self.session = session
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.is_set():
                self._error = exc
            self.broken = True
            if isinstance(exc, asyncio.CancelledError) and self._stop.is_set():
                return
        finally:
            self._ready.set()

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._task), 5.0)
            except (TimeoutError, Exception):
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        if self._errlog is not None:
            self._errlog.close()
            self._errlog = None


@asynccontextmanager
async def _streamable_http(url: str, headers: dict[str, str] | None) -> AsyncIterator[Any]:
    """The SDK's streamable HTTP transport over an HTTP client carrying the key header."""
    import httpx
    from mcp.client.streamable_http import streamable_http_client

    # The SDK's own defaults: 30 s to connect and send, 300 s to read a server-sent stream.
    timeout = httpx.Timeout(30.0, read=300.0)
    async with (
        httpx.AsyncClient(headers=headers, timeout=timeout, follow_redirects=True) as http,
        streamable_http_client(url, http_client=http) as streams,
    ):
        yield streams


def _describe(exc: BaseException) -> str:
    """An exception's message, the first leaf of an exception group (anyio task groups)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"[:300]


class ToolBox:
    """The MCP side of one stage run (module docstring). Use `async with` or `aclose()`."""

    def __init__(
        self,
        tools: dict[str, ToolsConfig],
        providers: dict[str, HttpMcpProvider | StdioMcpProvider],
    ) -> None:
        self._configs = tools
        self._providers = providers
        self._sessions: dict[str, _Session] = {}
        self._offered: dict[str, list[dict[str, Any]]] = {}
        self._owner: dict[str, dict[str, str]] = {}  # alias -> tool -> provider
        self._lock = asyncio.Lock()
        self._listing = asyncio.Lock()

    async def __aenter__(self) -> ToolBox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    def config(self, alias: str) -> ToolsConfig:
        return self._configs[alias]

    def _timeout(self, alias: str) -> float:
        return self._configs[alias].timeout_s or DEFAULT_TOOL_TIMEOUT_S

    async def _session(self, name: str) -> Any:
        """The provider's open session; started (again, when broken) under the lock, so
        concurrent cells wait for one start."""
        async with self._lock:
            current = self._sessions.get(name)
            if current is not None and not current.broken:
                return current.session
            _sdk()
            if current is not None:
                await current.close()
            fresh = _Session(name, self._providers[name])
            self._sessions[name] = fresh
            return await fresh.start()

    async def offered(self, alias: str) -> list[dict[str, Any]]:
        """The tools of `alias` in OpenAI's `tools` wire format, in the providers' order and
        each provider's listing order (so the request, and its cache key, are stable)."""
        async with self._listing:
            if alias not in self._offered:
                await self._list_alias(alias)
        return self._offered[alias]

    async def _list_alias(self, alias: str) -> None:
        cfg = self._configs[alias]
        owner: dict[str, str] = {}
        found: list[Any] = []
        for name in cfg.providers:
            session = await self._session(name)
            try:
                listed = await asyncio.wait_for(self._list(session), self._timeout(alias))
            except Exception as exc:
                raise ToolError(
                    f"MCP provider {name!r} (tool_alias {alias!r}): listing its tools failed:"
                    f" {_describe(exc)}"
                ) from None
            for tool in listed:
                if tool.name in owner:
                    raise ToolError(
                        f"tool_alias {alias!r}: tool {tool.name!r} is offered by both"
                        f" {owner[tool.name]!r} and {name!r}; each tool name must be unique"
                        " across a tool_alias's providers"
                    )
                owner[tool.name] = name
                found.append(tool)
        if cfg.allow_tools is not None:
            missing = sorted(set(cfg.allow_tools) - set(owner))
            if missing:
                raise ToolError(
                    f"tool_alias {alias!r}: allow_tools {missing} not offered by its providers"
                    f" {cfg.providers} (they offer {sorted(owner)})"
                )
            found = [t for t in found if t.name in cfg.allow_tools]
        self._owner[alias] = {t.name: owner[t.name] for t in found}
        self._offered[alias] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description or "",
                    "parameters": t.inputSchema or {"type": "object", "properties": {}},
                },
            }
            for t in found
        ]

    @staticmethod
    async def _list(session: Any) -> list[Any]:
        tools: list[Any] = []
        cursor = None
        while True:
            page = await (session.list_tools(cursor) if cursor else session.list_tools())
            tools += list(page.tools)
            cursor = getattr(page, "nextCursor", None)
            if not cursor:
                return tools

    async def call(self, alias: str, tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The tool messages answering one assistant turn's calls (run in parallel, in the
        calls' order)."""
        await self.offered(alias)
        owners = self._owner[alias]
        parsed = []
        for tc in tool_calls:
            name = tc["function"]["name"]
            if name not in owners:
                raise ToolCallRefused(
                    f"the model called tool {name!r}, which tool_alias {alias!r} does not offer"
                    f" ({sorted(owners)})"
                )
            raw = tc["function"].get("arguments") or "{}"
            try:
                args = json.loads(raw)
            except ValueError:
                raise ToolCallRefused(
                    f"the model's arguments for tool {name!r} are not JSON: {raw[:200]!r}"
                ) from None
            if not isinstance(args, dict):
                raise ToolCallRefused(f"the model's arguments for tool {name!r} are not an object")
            parsed.append((tc["id"], name, args))
        results = await asyncio.gather(
            *(self._call_one(alias, owners[name], name, args) for _, name, args in parsed)
        )
        return [
            {"role": "tool", "tool_call_id": call_id, "content": content}
            for (call_id, _, _), content in zip(parsed, results, strict=True)
        ]

    async def _call_one(self, alias: str, provider: str, name: str, args: dict[str, Any]) -> Any:
        from mcp.shared.exceptions import McpError

        timeout = self._timeout(alias)
        try:
            session = await self._session(provider)
            result = await asyncio.wait_for(
                session.call_tool(name, args, read_timeout_seconds=timedelta(seconds=timeout)),
                timeout,
            )
        except ToolError:
            raise
        except McpError as exc:
            if _is_timeout(exc):
                raise ToolCallUnfinished(
                    f"tool {name!r} of MCP provider {provider!r} timed out after {timeout:g} s"
                ) from None
            raise ToolCallRefused(
                f"MCP provider {provider!r} refused the call of tool {name!r}: {_describe(exc)}"
            ) from None
        except TimeoutError:
            raise ToolCallUnfinished(
                f"tool {name!r} of MCP provider {provider!r} timed out after {timeout:g} s"
            ) from None
        except Exception as exc:
            self._sessions[provider].broken = True
            raise ToolCallUnfinished(
                f"tool {name!r} of MCP provider {provider!r}: the connection failed:"
                f" {_describe(exc)}"
            ) from None
        return tool_content(result)


def _is_timeout(exc: Any) -> bool:
    error = getattr(exc, "error", None)
    return "timed out" in str(getattr(error, "message", exc)).lower()


def tool_content(result: Any) -> str | list[dict[str, Any]]:
    """A CallToolResult as a tool message's content, as DataDesigner makes it: the text parts
    joined by newlines; with an image among them, a list of text and image_url parts."""
    parts: list[dict[str, Any]] = []
    for item in getattr(result, "content", None) or []:
        kind = getattr(item, "type", None)
        if kind == "text":
            parts.append({"type": "text", "text": item.text})
        elif kind == "image":
            url = f"data:{item.mimeType};base64,{item.data}"
            parts.append({"type": "image_url", "image_url": {"url": url}})
        else:
            dump = item.model_dump(mode="json") if hasattr(item, "model_dump") else str(item)
            parts.append({"type": "text", "text": json.dumps(dump, ensure_ascii=False)})
    if any(p["type"] == "image_url" for p in parts):
        return parts
    return "\n".join(p["text"] for p in parts)
