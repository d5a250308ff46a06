"""The LLM cell runner the engine calls for every LLM cell: request cache first, then HTTP.

One outcome per class of failure (docs/llm.md):
- a value;
- `CellUnfinished`: transient faults (429 aside, which waits as long as the run lives)
  outlasted the retries. The row is not dropped; its row group is not saved, and the next run
  asks again (the answered cells of that row group come from the cache);
- `CellFailed` (the row is dropped, with its reason): the endpoint refused this request (400,
  413, 422), the response was over max_response_bytes, or the answer stayed unusable through
  all re-asks;
- `LLMFatalError` (the run stops at once): 401, 403, 404 and the like, or the first rows of a
  column all refused the same way before any answer (the request is wrong, not the rows);
- `EarlyStopError` once too many recent cells were dropped. Transient faults never count
  toward it (DataDesigner #575): a flaky endpoint delays a dataset, it does not stop it.
An endpoint that fails `early_stop.window` cells in a row after all retries is down
(`Outage`): the run stops asking, and its remaining cells are unfinished without a request."""

from __future__ import annotations

import asyncio
import json
import re
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from dd_assets.config import EarlyStopSettings, WorkflowConfig
from dd_assets.config.columns import (
    ColumnConfig,
    EmbeddingColumnConfig,
    ImageColumnConfig,
    LLMJudgeColumnConfig,
    LLMStructuredColumnConfig,
)
from dd_assets.engine import CellFailed, CellUnfinished
from dd_assets.engine.images import LoadImage
from dd_assets.engine.llm_cells import (
    AnswerError,
    build_request,
    check_answer,
    correction_message,
    embedding_inputs,
    embedding_value,
    glitch,
    image_value,
    parse_answer,
    sampled_inference,
    with_sides,
)
from dd_assets.errors import EXIT_PARTIAL, LLMError
from dd_assets.llm.cache import CacheEntry, RequestCache, RequestCacheBase, RequestHasher
from dd_assets.llm.client import (
    AcceptFn,
    ChatResult,
    LLMClient,
    LLMFatalError,
    LLMRequestRejected,
    LLMRetryableExhausted,
    UsageStats,
)
from dd_assets.llm.tools import REFUSAL, ToolBox, ToolCallRefused, ToolCallUnfinished

# The "response format" of an embedding request in its cache key (a chat request's is a dict of
# another shape or None, so the two never share a key).
EMBEDDINGS = {"type": "embeddings"}
# Likewise for an image request (chat or /images/generations: the model config decides which).
IMAGES = {"type": "images"}

# A column whose first requests were all refused with the same message (digits aside: "your
# prompt has 9120 tokens") before any was answered has a wrong request, not wrong rows.
SAME_REJECTIONS_FATAL = 5


class EarlyStopError(LLMError):
    """Too many recent cells were dropped: stop rather than burn budget on a broken setup.
    Row groups completed before are saved: a partial result, exit code 3."""

    exit_code = EXIT_PARTIAL


@dataclass
class _Window:
    """Recent cell outcomes: answered (True) or dropped (False). Unfinished cells are not
    outcomes: a transient fault says nothing about the prompts."""

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
                f"early stop: {failed} of the last {len(self.outcomes)} LLM cells were dropped"
                f" (threshold {self.settings.max_failure_rate:.0%}); recent reasons:"
                f" {list(self.reasons)}. Row groups completed so far are saved; fix the endpoint"
                " or prompts, then backfill the missing partitions (answers already received are"
                " cached and will not be paid for again)"
            )


@dataclass
class Outage:
    """Cells that ended unfinished in a row, run-wide (one per run, shared by its stages): at
    `limit` with no answer in between, the endpoint is down and asking on only hammers it.
    The run then stops: remaining cells are unfinished without a request, and no new row group
    starts; the run exits 4 and a later run picks up from the cache."""

    limit: int
    streak: int = 0
    tripped: str | None = None

    def answered(self) -> None:
        self.streak = 0

    def unfinished(self) -> None:
        self.streak += 1
        if self.tripped is None and self.streak >= self.limit:
            self.tripped = (
                f"the endpoint failed {self.streak} cells in a row after all retries, so the run"
                " stopped asking"
            )


@dataclass
class _FirstRejections:
    """A column's refused rows before its first answer, by normalized message."""

    answered: bool = False
    rows: dict[str, set[int]] = field(default_factory=dict)


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
        outage: Outage | None = None,
        answered_before: bool = False,
        load_image: LoadImage | None = None,
    ) -> None:
        """`answered_before`: the stage's LLM columns have been answered before (it has rows on
        disk), so refusals are about rows, never the sign of a wrong request. `load_image`
        reads the image files multi_modal_context cells name (`data_type: null`)."""
        self._load_image = load_image
        self.workflow = workflow
        self.stage = workflow.stage(stage)
        self.cache_path = cache_path
        self.read_cache = read_cache
        settings = early_stop or workflow.run.early_stop
        self._window = _Window(settings)
        # Shared by the stages of a run (an endpoint is down for all of them at once).
        self.outage = outage or Outage(settings.window)
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
        self._first: dict[str, _FirstRejections] = (
            {c.name: _FirstRejections(answered=True) for c in self.stage.columns if c.is_llm}
            if answered_before
            else {}
        )
        self._fresh: set[tuple[int, str]] = set()
        # The cache read once per row group (one query, one thread hop) instead of once per
        # cell: row group -> its cached answers, dropped when the row group's stats are taken.
        self._cache_columns = [c.name for c in self.stage.columns]  # any may hold answers
        self._cached_rows: dict[int, asyncio.Future[dict[tuple[str, int, str], Any]]] = {}
        # Answers are committed by one writer task, many per transaction (group commit), so a
        # row's next cell never waits on a commit; `__aexit__` commits what is left.
        self._unsaved: list[CacheEntry] = []
        self._saving: asyncio.Task[None] | None = None
        self._save_error: BaseException | None = None
        self._hashers: dict[int, tuple[Any, RequestHasher]] = {}
        self._tools: ToolBox | None = None  # MCP sessions, opened by the first tool column

    async def __aenter__(self) -> LLMCellRunner:
        if self._owns_client:
            await self._client.open()
        if self._given_cache is None and self.cache_path is not None:
            self._cache = RequestCache(self.cache_path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.flush()
        finally:
            for fut in self._cached_rows.values():
                fut.cancel()
            if self._tools is not None:
                await self._tools.aclose()
            if self._owns_client:
                await self._client.aclose()
            if self._cache is not None and self._given_cache is None:
                self._cache.close()

    async def flush(self) -> None:
        """Wait until every answer received so far is committed to the cache."""
        while self._saving is not None:
            await asyncio.shield(self._saving)
        if self._save_error is not None:
            raise self._save_error

    def _save(self, entry: CacheEntry) -> None:
        if self._save_error is not None:
            raise self._save_error
        self._unsaved.append(entry)
        if self._saving is None:
            self._saving = asyncio.ensure_future(self._save_loop())

    async def _save_loop(self) -> None:
        assert self._cache is not None
        try:
            while self._unsaved:
                batch, self._unsaved = self._unsaved, []
                await self._cache.aput_many(batch)
        except Exception as exc:  # the next cell (or the flush) raises it
            self._save_error = exc
        finally:
            self._saving = None

    def _hash(self, model: Any) -> RequestHasher:
        """The model's request hasher (its identity encoded once per model, a frozen config),
        not per request."""
        found = self._hashers.get(id(model))
        if found is None or found[0] is not model:
            found = self._hashers[id(model)] = (model, RequestHasher(model.identity()))
        return found[1]

    async def _cached(self, row_index: int) -> dict[tuple[str, int, str], Any]:
        assert self._cache is not None
        rg = row_index // self.stage.buffer_size
        fut = self._cached_rows.get(rg)
        if fut is None:
            start = rg * self.stage.buffer_size
            fut = self._cached_rows[rg] = asyncio.ensure_future(
                self._cache.aget_rows(
                    self.stage.name, self._cache_columns, start, start + self.stage.buffer_size
                )
            )
        return await asyncio.shield(fut)

    def usage(self, row_group: int) -> UsageStats:
        return self._usage.setdefault(row_group, UsageStats())

    def row_group_stats(self, row_group: int) -> dict[str, Any]:
        """Its LLM usage, taken once its cells are done (which also frees its cached answers)."""
        self._cached_rows.pop(row_group, None)
        md = self.usage(row_group).to_metadata()
        md["llm_parse_retries"] = self._parse_retries.get(row_group, 0)
        return md

    def ask_fresh(self, cells: Iterable[tuple[int, str]]) -> None:
        """(row, column) cells to ask the endpoint again, not the cache: the cells of dropped
        rows under `--retry-dropped` (an unusable answer is cached, so the cache would only
        repeat it)."""
        self._fresh.update(cells)

    async def __call__(self, col: ColumnConfig, row_index: int, row: dict[str, Any]) -> Any:
        if self._window.tripped:
            raise EarlyStopError(self._window.tripped)
        if self.outage.tripped:
            raise CellUnfinished(f"not asked: {self.outage.tripped}")
        rg = row_index // self.stage.buffer_size
        usage = self.usage(rg)
        model = self.workflow.models[col.model_alias]  # type: ignore[union-attr]
        if isinstance(col, EmbeddingColumnConfig):
            return await self._embedding(col, row_index, row, model, usage)
        req = build_request(col, row, self._load_image)
        if isinstance(col, ImageColumnConfig):
            return await self._image(col, row_index, model, req.messages, usage)
        messages = list(req.messages)
        asks = 1 + (
            col.max_parse_retries
            if isinstance(col, LLMStructuredColumnConfig | LLMJudgeColumnConfig)
            else 0
        )
        alias = getattr(col, "tool_alias", None)
        tools = await self._toolbox().offered(alias) if alias else None
        turns = 0
        error: AnswerError | None = None
        for ask in range(asks):
            while True:
                result = await self._chat(
                    col, row_index, model, messages, req.response_format, usage, tools
                )
                if not (tools and result.tool_calls):
                    break
                # The tool loop (DataDesigner's): run the calls, hand the results back; past
                # max_tool_call_turns the calls are refused and the model asked to answer.
                turns += 1
                messages = [*messages, *(await self._tool_turn(col, alias, result, turns))]
            try:
                check_answer(result.content, result.finish_reason, result.refusal)
                value = parse_answer(col, result.content)
            except AnswerError as exc:
                error = exc
                if ask + 1 < asks:
                    self._parse_retries[rg] = self._parse_retries.get(rg, 0) + 1
                    messages = [
                        *messages,
                        {"role": "assistant", "content": result.content},
                        correction_message(exc),
                    ]
                continue
            self._window.record(True)
            return with_sides(col, value, messages, result.content, result.reasoning)
        self._drop("unusable_answer", f"no usable answer after {asks} attempt(s): {error}")

    def _toolbox(self) -> ToolBox:
        if self._tools is None:
            self._tools = ToolBox(self.workflow.tools, self.workflow.mcp_providers)
        return self._tools

    async def _tool_turn(
        self, col: ColumnConfig, alias: str, result: ChatResult, turn: int
    ) -> list[dict[str, Any]]:
        """The assistant's tool-calling message and the tool messages answering it."""
        calls = result.tool_calls or []
        assistant: dict[str, Any] = {
            "role": "assistant",
            "content": result.content,
            "tool_calls": calls,
        }
        budget = self._toolbox().config(alias).max_tool_call_turns
        if turn > 2 * budget:
            # Refused as many turns as it was allowed and still calling: it will not stop.
            self._drop(
                "tool_call",
                f"the model went on calling tools after {budget} refused turn(s) past"
                f" max_tool_call_turns ({budget})",
            )
        if turn > budget:
            answers = [{"role": "tool", "tool_call_id": c["id"], "content": REFUSAL} for c in calls]
            return [assistant, *answers]
        try:
            answers = await self._toolbox().call(alias, calls)
        except ToolCallRefused as exc:
            self._drop("tool_call", str(exc))
        except ToolCallUnfinished as exc:
            self.outage.unfinished()
            raise CellUnfinished(str(exc)) from None
        return [assistant, *answers]

    def _drop(self, kind: str, message: str, status: int | None = None) -> NoReturn:
        """Drop the cell's row, unless this drop trips the early stop: then the whole row
        group fails, so it is not checkpointed with the rows the broken setup cost it (a
        later backfill would reuse it as complete)."""
        self._window.record(False, f"{kind}: {message}"[:200])
        if self._window.tripped:
            raise EarlyStopError(self._window.tripped) from None
        raise CellFailed(kind, message, status) from None

    def _refused(self, col: ColumnConfig, row_index: int, exc: LLMRequestRejected) -> None:
        """Stop at once when a column's first rows were all refused the same way: a parameter
        the endpoint does not take would otherwise drop every row, one request at a time."""
        first = self._first.setdefault(col.name, _FirstRejections())
        if first.answered or exc.kind != "rejected" or (row_index, col.name) in self._fresh:
            return
        rows = first.rows.setdefault(f"{exc.status} {re.sub(r'[0-9]+', '#', exc.message)}", set())
        rows.add(row_index)
        if len(rows) >= SAME_REJECTIONS_FATAL:
            message = (
                f"{exc.message} (the first {len(rows)} rows of column {col.name!r} were"
                " all refused this way, none answered: the request is wrong, not the rows)"
            )
            self._client.stop(exc.alias, exc.status, message)
            raise LLMFatalError(alias=exc.alias, url=exc.url, status=exc.status, message=message)

    @staticmethod
    def _accept(col: ColumnConfig) -> AcceptFn:
        return lambda r: glitch(col, r.content, r.finish_reason)

    async def _embedding(
        self,
        col: EmbeddingColumnConfig,
        row_index: int,
        row: dict[str, Any],
        model: Any,
        usage: UsageStats,
    ) -> dict[str, Any]:
        texts = embedding_inputs(row.get(col.target_column))
        if not texts:  # nothing to embed: no request
            return embedding_value([])
        key = self._hash(model)([{"role": "input", "content": texts}], EMBEDDINGS)
        result = await self._answer(
            col,
            row_index,
            key,
            lambda r: None if len(json.loads(r.content)) == len(texts) else "wrong count",
            lambda: self._client.embed(col.model_alias, texts, usage=usage, priority=row_index),
            usage,
        )
        self._window.record(True)
        return embedding_value(json.loads(result.content))

    async def _image(
        self,
        col: ImageColumnConfig,
        row_index: int,
        model: Any,
        messages: list[dict[str, Any]],
        usage: UsageStats,
    ) -> list[str]:
        key = self._hash(model)(messages, IMAGES)
        result = await self._answer(
            col,
            row_index,
            key,
            lambda r: None,
            lambda: self._client.generate_image(
                col.model_alias, messages, usage=usage, priority=row_index
            ),
            usage,
        )
        try:
            images = image_value(result.content)
        except AnswerError as exc:
            self._drop("unusable_answer", str(exc))
        if not images:
            self._drop("unusable_answer", "the model's answer holds no image")
        self._window.record(True)
        return images

    async def _chat(
        self,
        col: ColumnConfig,
        row_index: int,
        model: Any,
        messages: list[dict[str, Any]],
        response_format: dict[str, Any] | None,
        usage: UsageStats,
        tools: list[dict[str, Any]] | None = None,
    ) -> ChatResult:
        accept = self._accept(col)
        return await self._answer(
            col,
            row_index,
            self._hash(model)(messages, response_format, tools),
            accept,
            lambda: self._client.chat(
                col.model_alias,  # type: ignore[union-attr]
                messages,
                response_format=response_format,
                usage=usage,
                priority=row_index,
                sampled=sampled_inference(model, col.name, row_index) or None,
                accept=accept,
                tools=tools,
            ),
            usage,
        )

    async def _answer(
        self,
        col: ColumnConfig,
        row_index: int,
        key: str,
        accept: AcceptFn,
        send: Callable[[], Awaitable[ChatResult]],
        usage: UsageStats,
    ) -> ChatResult:
        """The cached result of request `key`, else `send()`'s, each failure class mapped to
        its cell outcome (module docstring)."""
        fresh = (row_index, col.name) in self._fresh
        if self._cache is not None and self.read_cache and not fresh:
            hit = _cached((await self._cached(row_index)).get((col.name, row_index, key)))
            # A glitch cached by an older version is asked again, never used.
            if hit is not None and accept(hit) is None:
                usage.cache_hits += 1
                self._first.setdefault(col.name, _FirstRejections()).answered = True
                return hit
        try:
            result = await send()
        except LLMRetryableExhausted as exc:
            self.outage.unfinished()
            raise CellUnfinished(str(exc)) from None
        except LLMRequestRejected as exc:
            self._refused(col, row_index, exc)
            self._drop(exc.kind, exc.message, exc.status)
        self.outage.answered()
        self._first.setdefault(col.name, _FirstRejections()).answered = True
        # Only answers with content: a refusal or an answer cut off before any text is asked
        # again by --retry-dropped, and an empty answer must never be served as one.
        if self._cache is not None and (result.content.strip() or result.tool_calls):
            self._save(CacheEntry(self.stage.name, col.name, row_index, key, result.to_dict()))
        # Answers come back in bursts (requests sent together come back together). Each one
        # freed its request slot and woke the request waiting for it, but that request went
        # out only once the loop had handed on the burst's every answer (the row's next cell
        # rendered, its request keyed): each slot idled meanwhile. Two turns of the loop first:
        # in the first the woken requests go out, in the second the burst's other answers get
        # as far as this one. Not before the answer is queued for the cache: a kill -9 must
        # not find more answers received and unsaved than before.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        return result


def _cached(hit: dict[str, Any] | None) -> ChatResult | None:
    """A cache entry as a result, or None when it holds no answer (older versions cached
    empty ones)."""
    if hit is None or not isinstance(hit.get("content"), str):
        return None
    if not hit["content"].strip() and not hit.get("tool_calls"):
        return None
    return ChatResult.from_dict(hit)
