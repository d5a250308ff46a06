"""LLM access for LLM columns: an async OpenAI-wire-format client and a crash-safe request cache.

Kept free of Dagster so the engine, `dd-assets preview` and benchmarks can use it directly."""

from resources.llm.cache import CacheEntry, RequestCache, RequestCacheError, request_hash
from resources.llm.client import (
    ChatResult,
    LLMClient,
    LLMConfigError,
    LLMError,
    LLMFatalError,
    LLMRetryableExhausted,
    UsageStats,
    parse_retry_after,
)

__all__ = [
    "CacheEntry",
    "ChatResult",
    "LLMClient",
    "LLMConfigError",
    "LLMError",
    "LLMFatalError",
    "LLMRetryableExhausted",
    "RequestCache",
    "RequestCacheError",
    "UsageStats",
    "parse_retry_after",
    "request_hash",
]
