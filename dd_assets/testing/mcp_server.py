"""A small real MCP server for tests (FastMCP from the `mcp` SDK), spoken to over stdio:
`python -m dd_assets.testing.mcp_server` (what `stdio_provider()` configures).

Tools: `search_docs(query)` (deterministic text), `stock_level(sku)` (a number), `flaky_lookup
(query)` (an answer that changes on every call: a nondeterministic tool), `broken(query)` (raises:
the result has isError), `slow(seconds)` (sleeps). Every call is appended to the file named by
$DD_TEST_MCP_LOG (one JSON line), so a test can count what was called. `http_server()` serves
the same tools over streamable HTTP in a thread, behind a bearer-token check."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CALLS = {"n": 0}


def _log(tool: str, args: dict[str, Any]) -> None:
    path = os.environ.get("DD_TEST_MCP_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"tool": tool, "args": args}) + "\n")


def build() -> Any:
    from mcp.server.fastmcp import FastMCP

    server = FastMCP("dd-assets-test-tools")

    @server.tool()
    def search_docs(query: str) -> str:
        """Search the product docs."""
        _log("search_docs", {"query": query})
        return f"doc hit for {query!r}: restock when below 5 units"

    @server.tool()
    def stock_level(sku: str) -> int:
        """Units in stock for a SKU."""
        _log("stock_level", {"sku": sku})
        return len(sku)

    @server.tool()
    def flaky_lookup(query: str) -> str:
        """An answer that changes on every call."""
        CALLS["n"] += 1
        _log("flaky_lookup", {"query": query})
        return f"lookup #{CALLS['n']} at {time.time_ns()}"

    @server.tool()
    def broken(query: str) -> str:
        """Always fails."""
        _log("broken", {"query": query})
        raise RuntimeError("the index is offline")

    @server.tool()
    def slow(seconds: int) -> str:
        """Sleeps."""
        _log("slow", {"seconds": seconds})
        time.sleep(seconds)
        return "done"

    return server


def stdio_provider(log: str | None = None) -> dict[str, Any]:
    """An `mcp_providers:` entry that starts this server (the test's Python, this module)."""
    spec: dict[str, Any] = {
        "provider_type": "stdio",
        "command": sys.executable,
        "args": ["-m", "dd_assets.testing.mcp_server"],
    }
    if log is not None:
        spec["env"] = {"DD_TEST_MCP_LOG": log}
    return spec


@contextmanager
def http_server(require_key: str | None = None) -> Iterator[str]:
    """The same tools served over streamable HTTP on 127.0.0.1 (uvicorn in a thread), answering
    401 unless the bearer token is `require_key`; yields the endpoint URL."""
    import uvicorn

    app = build().streamable_http_app()

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and require_key is not None:
            auth = dict(scope["headers"]).get(b"authorization", b"").decode()
            if auth != f"Bearer {require_key}":
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b"unauthorized"})
                return
        await app(scope, receive, send)

    server = uvicorn.Server(
        uvicorn.Config(guarded, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the MCP HTTP test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        thread.join(10)


if __name__ == "__main__":
    build().run()
