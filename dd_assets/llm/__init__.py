"""LLM access for LLM columns: an async OpenAI-wire-format client and a crash-safe request cache.

Kept free of Dagster (and of the store) so `dd-assets preview`, runs and benchmarks share it."""

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
