"""The LLM cell runner the engine calls for every LLM cell: request cache first, then HTTP.

Outcomes: a value; `CellFailed` (the row is dropped and the reason recorded) when the endpoint
stayed unhealthy through all retries or the answer stayed unusable through all re-asks;
`LLMFatalError` (the run stops at once) for errors no retry can fix, such as 401 or 400;
`EarlyStopError` once too many recent cells failed for good."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from dd_assets.config import EarlyStopSettings, WorkflowConfig
from dd_assets.config.columns import ColumnConfig, LLMJudgeColumnConfig, LLMStructuredColumnConfig
from dd_assets.engine import CellFailed
from dd_assets.engine.llm_cells import (
    AnswerError,
    TracedAnswer,
    build_request,
    correction_message,
    parse_answer,
    sampled_inference,
    trace,
)
from dd_assets.errors import EXIT_PARTIAL, LLMError
from dd_assets.llm.cache import RequestCache, RequestCacheBase, request_hash
from dd_assets.llm.client import LLMClient, LLMRetryableExhausted, UsageStats


class EarlyStopError(LLMError):
    """Too many recent cells failed for good: stop rather than burn budget on a broken setup.
    Row groups completed before are saved: a partial result, exit code 3."""

    exit_code = EXIT_PARTIAL


@dataclass
class _Window:
    settings: EarlyStopSettings
    outcomes: deque[bool] = field(default_factory=deque)
    reasons: deque[str] = field(default_factory=deque)
    tripped: str | None = None

    def record(self, ok: bool, reason: str = "") -> None:
        self.outcomes.append(ok)
        if not ok:
            self.reasons.append(reason)
        while len(self.outcomes) > self.settings.window:
            self.outcomes.popleft()
        while len(self.reasons) > 5:
            self.reasons.popleft()
        failed = self.outcomes.count(False)
        if (
            self.tripped is None
            and len(self.outcomes) >= self.settings.window
            and failed / len(self.outcomes) >= self.settings.max_failure_rate
        ):
            self.tripped = (
                f"early stop: {failed} of the last {len(self.outcomes)} LLM cells failed after all"
                f" retries (threshold {self.settings.max_failure_rate:.0%}); recent reasons:"
                f" {list(self.reasons)}. Row groups completed so far are saved; fix the endpoint"
                " or prompts, then backfill the missing partitions (answers already received are"
                " cached and will not be paid for again)"
            )


class LLMCellRunner:
    """One per stage run. Use `async with` so the HTTP pool and the cache close cleanly."""

    def __init__(
        self,
        workflow: WorkflowConfig,
        stage: str,
        *,
        cache_path: Path | None,
        read_cache: bool = True,
        early_stop: EarlyStopSettings | None = None,
        client: LLMClient | None = None,
        cache: RequestCacheBase | None = None,
    ) -> None:
        self.workflow = workflow
        self.stage = workflow.stage(stage)
        self.cache_path = cache_path
        self.read_cache = read_cache
        self._window = _Window(early_stop or workflow.run.early_stop)
        # A client passed in is shared (e.g. by the stages of one pipelined run, so that
        # max_parallel_requests holds across them); its owner opens and closes it.
        self._owns_client = client is None
        self._client = client or LLMClient(workflow.models)
        # A cache passed in (e.g. the shared PostgreSQL one) is its owner's to close; otherwise
        # the SQLite file at cache_path is opened here.
        self._given_cache = cache
        self._cache: RequestCacheBase | None = cache
        self._usage: dict[int, UsageStats] = {}
        self._parse_retries: dict[int, int] = {}

    async def __aenter__(self) -> LLMCellRunner:
        if self._owns_client:
            await self._client.open()
        if self._given_cache is None and self.cache_path is not None:
            self._cache = RequestCache(self.cache_path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._owns_client:
            await self._client.aclose()
        if self._cache is not None and self._given_cache is None:
            self._cache.close()

    def usage(self, row_group: int) -> UsageStats:
        return self._usage.setdefault(row_group, UsageStats())

    def row_group_stats(self, row_group: int) -> dict[str, Any]:
        md = self.usage(row_group).to_metadata()
        md["llm_parse_retries"] = self._parse_retries.get(row_group, 0)
        return md

    async def __call__(self, col: ColumnConfig, row_index: int, row: dict[str, Any]) -> Any:
        if self._window.tripped:
            raise EarlyStopError(self._window.tripped)
        rg = row_index // self.stage.buffer_size
        usage = self.usage(rg)
        req = build_request(col, row)
        model = self.workflow.models[col.model_alias]  # type: ignore[union-attr]
        messages = list(req.messages)
        asks = 1 + (
            col.max_parse_retries
            if isinstance(col, LLMStructuredColumnConfig | LLMJudgeColumnConfig)
            else 0
        )
        error: AnswerError | None = None
        for ask in range(asks):
            content = await self._answer(
                col, row_index, model, messages, req.response_format, usage
            )
            try:
                value = parse_answer(col, content)
            except AnswerError as exc:
                error = exc
                if ask + 1 < asks:
                    self._parse_retries[rg] = self._parse_retries.get(rg, 0) + 1
                    messages = [
                        *messages,
                        {"role": "assistant", "content": content},
                        correction_message(exc),
                    ]
                continue
            self._window.record(True)
            traced = trace(col, messages, content)
            return value if traced is None else TracedAnswer(value, traced.trace)
        self._fail(f"unusable answer after {asks} attempt(s): {error}")

    def _fail(self, reason: str) -> NoReturn:
        """Drop the cell's row, unless this failure trips the early stop: then the whole row
        group fails, so it is not checkpointed with the rows the broken endpoint cost it (a
        later backfill would reuse it as complete)."""
        self._window.record(False, reason[:200])
        if self._window.tripped:
            raise EarlyStopError(self._window.tripped) from None
        raise CellFailed(reason) from None

    async def _answer(
        self,
        col: ColumnConfig,
        row_index: int,
        model: Any,
        messages: list[dict[str, str]],
        response_format: dict[str, Any] | None,
        usage: UsageStats,
    ) -> str:
        key = request_hash(model.identity(), messages, response_format)
        if self._cache is not None and self.read_cache:
            hit = await self._cache.aget(self.stage.name, col.name, row_index, key)
            if hit is not None and isinstance(hit.get("content"), str):
                usage.cache_hits += 1
                return hit["content"]
        try:
            result = await self._client.chat(
                col.model_alias,  # type: ignore[union-attr]
                messages,
                response_format=response_format,
                usage=usage,
                priority=row_index,
                sampled=sampled_inference(model, col.name, row_index) or None,
            )
        except LLMRetryableExhausted as exc:
            self._fail(f"{exc.status or 'transport'} {exc.reason} after {exc.attempts} attempt(s)")
        if self._cache is not None:
            await self._cache.aput(self.stage.name, col.name, row_index, key, result.to_dict())
        return result.content
