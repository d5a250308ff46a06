"""LLM access for LLM columns: an async OpenAI-wire-format client and a crash-safe request cache.

Kept free of Dagster (and of the store) so `dd-assets preview`, runs and benchmarks share it.

The names below are loaded on first use (PEP 562), as in `dd_assets.engine`: the request cache's
path and the request slots are needed by every run, the HTTP client (aiohttp, ~0.2 s of CPU to
import) only by one with LLM columns."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dd_assets.llm.cache import (
        CacheEntry,
        RequestCache,
        RequestCacheError,
        cache_path,
        request_hash,
    )
    from dd_assets.llm.client import (
        ChatResult,
        LLMClient,
        LLMConfigError,
        LLMFatalError,
        LLMRequestRejected,
        LLMRetryableExhausted,
        UsageStats,
        parse_retry_after,
    )
    from dd_assets.llm.pg_cache import PostgresRequestCache

_WHERE = {
    "CacheEntry": "cache",
    "ChatResult": "client",
    "LLMClient": "client",
    "LLMConfigError": "client",
    "LLMFatalError": "client",
    "LLMRequestRejected": "client",
    "LLMRetryableExhausted": "client",
    "PostgresRequestCache": "pg_cache",
    "RequestCache": "cache",
    "RequestCacheError": "cache",
    "UsageStats": "client",
    "cache_path": "cache",
    "parse_retry_after": "client",
    "request_hash": "cache",
}

__all__ = [
    "CacheEntry",
    "ChatResult",
    "LLMClient",
    "LLMConfigError",
    "LLMFatalError",
    "LLMRequestRejected",
    "LLMRetryableExhausted",
    "PostgresRequestCache",
    "RequestCache",
    "RequestCacheError",
    "UsageStats",
    "cache_path",
    "parse_retry_after",
    "request_hash",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
