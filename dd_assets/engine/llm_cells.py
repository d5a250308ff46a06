"""What an LLM cell asks and how its answer becomes a value: pure functions, no HTTP.

The transport (dd_assets.llm) sends what `build_request` returns and hands the text back to
`parse_answer`; keeping both sides here means preview, runs and tests agree on prompts exactly."""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dd_assets.config.columns import (
    REASONING_SUFFIX,
    TRACE_SUFFIX,
    ColumnConfig,
    LLMCodeColumnConfig,
    LLMJudgeColumnConfig,
    LLMStructuredColumnConfig,
)
from dd_assets.config.fingerprint import sha256_hex
from dd_assets.config.models import ManualDistribution, ModelConfig, UniformDistribution
from dd_assets.engine import rng
from dd_assets.engine.expressions import CellError, render
from dd_assets.engine.images import LoadImage, decode_image, detected_image_url
from dd_assets.engine.schema import column_type


class AnswerError(Exception):
    """The model answered, but not in a usable form; worth re-asking with the error shown."""


def sampled_inference(model: ModelConfig, column: str, row_index: int) -> dict[str, float]:
    """This cell's draw of each sampling parameter given as a distribution: a function of
    (model identity, column, row), so a rerun sends exactly the same request."""
    out: dict[str, float] = {}
    for k, name in enumerate(("temperature", "top_p")):
        dist = getattr(model.inference, name)
        if not isinstance(dist, UniformDistribution | ManualDistribution):
            continue
        key = int(sha256_hex({"model": model.identity(), "column": column, "param": name})[:16], 16)
        u = float(rng.uniform(key, np.asarray([row_index], dtype=np.uint64), k)[0])
        if isinstance(dist, UniformDistribution):
            out[name] = dist.params.low + u * (dist.params.high - dist.params.low)
        else:
            w = np.asarray(dist.params.weights or [1.0] * len(dist.params.values), dtype=float)
            i = int(np.searchsorted(np.cumsum(w) / w.sum(), u, side="right"))
            out[name] = dist.params.values[min(i, len(w) - 1)]
    return out


@dataclass(frozen=True)
class SideAnswer:
    """An LLM cell's value plus its side columns (`with_trace`, `extract_reasoning_content`):
    side column name -> value."""

    value: Any
    sides: dict[str, Any]


def _trace(
    mode: str, messages: list[dict[str, Any]], answer: str, tools: bool = False
) -> list[dict[str, Any]]:
    """The trace DataDesigner keeps: the last assistant message, or the whole conversation
    (system, user, assistant, tool and correction turns), each message's content as text
    parts; a column with tools also keeps each message's `tool_calls` and `tool_call_id`."""
    turns = [*messages, {"role": "assistant", "content": answer}]
    if mode == "last_message":
        turns = turns[-1:]
    out = []
    for m in turns:
        kept: dict[str, Any] = {"role": m["role"], "content": _trace_parts(m.get("content"))}
        if tools:
            kept["tool_calls"] = m.get("tool_calls")
            kept["tool_call_id"] = m.get("tool_call_id")
        out.append(kept)
    return out


def _trace_parts(content: Any) -> list[dict[str, str]]:
    """A message's content as trace parts `{type, text}`; an image part keeps its URL as text."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [
        {"type": "text", "text": p["text"]}
        if p["type"] == "text"
        else {"type": "image_url", "text": p["image_url"]["url"]}
        for p in content
    ]


def image_parts(
    col: ColumnConfig, row: dict[str, Any], load: LoadImage | None = None
) -> list[dict[str, Any]]:
    """The image_url parts of the column's multi_modal_context for this row: a cell holding a
    JSON list gives one image per item; base64 data becomes a data URI (kept as it is when it
    already is one); `data_type: null` decides per value (images.detected_image_url, reading
    files with `load`). Raises expressions.CellError for a cell with no image."""
    parts: list[dict[str, Any]] = []
    for ctx in getattr(col, "multi_modal_context", None) or []:
        raw = row.get(ctx.column_name)
        values: list[Any] = [raw]
        if isinstance(raw, list):
            values = raw
        elif isinstance(raw, str):
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
            if isinstance(parsed, list):
                values = parsed
        for v in values:
            if not isinstance(v, str) or not v:
                raise CellError(f"multi_modal_context column {ctx.column_name!r} holds no image")
            if ctx.data_type is None:
                v = detected_image_url(ctx.column_name, v, load)
            elif ctx.data_type == "base64" and not v.startswith("data:"):
                fmt = "jpeg" if ctx.image_format == "jpg" else ctx.image_format
                v = f"data:image/{fmt};base64,{v}"
            parts.append({"type": "image_url", "image_url": {"url": v}})
    return parts


def with_sides(
    col: ColumnConfig,
    value: Any,
    messages: list[dict[str, Any]],
    answer: str,
    reasoning: str | None,
) -> Any:
    """`value`, or a SideAnswer when the column keeps side columns. The reasoning is the final
    answer's, stripped, None when empty (as DataDesigner extracts it)."""
    sides: dict[str, Any] = {}
    mode = getattr(col, "with_trace", "none")
    if mode != "none":
        tools = getattr(col, "tool_alias", None) is not None
        sides[col.name + TRACE_SUFFIX] = _trace(mode, messages, answer, tools)
    if getattr(col, "extract_reasoning_content", False):
        sides[col.name + REASONING_SUFFIX] = (reasoning or "").strip() or None
    return SideAnswer(value, sides) if sides else value


def embedding_inputs(value: Any) -> list[str]:
    """The texts an embedding cell sends, read as DataDesigner reads its target cell: a JSON
    (or Python-literal) list gives one text per item, anything else is one text; each stripped.
    A null cell (a skipped one read with propagate_skip: false) has no text."""
    if value is None:
        return []
    if isinstance(value, list):
        return [(v if isinstance(v, str) else json.dumps(v)).strip() for v in value]
    text = value if isinstance(value, str) else json.dumps(value)
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(text.strip())
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(parsed, list):
            return [str(v).strip() for v in parsed]
        break
    return [text.strip()]


def embedding_value(vectors: list[list[float]]) -> dict[str, Any]:
    return {
        "embeddings": vectors,
        "num_embeddings": len(vectors),
        "dimension": len(vectors[0]) if vectors else 0,
    }


def image_value(content: str) -> list[str]:
    """An image cell's value from the client's answer (a JSON list of base64 images): each
    checked to be an image, kept as base64 (the store writes them as files)."""
    images = json.loads(content)
    for b64 in images:
        try:
            decode_image(b64)
        except ValueError as exc:
            raise AnswerError(f"the model's image is unusable: {exc}") from None
    return images


@dataclass(frozen=True)
class CellRequest:
    messages: list[dict[str, Any]]
    response_format: dict[str, Any] | None


def judge_schema(col: LLMJudgeColumnConfig) -> dict[str, Any]:
    props = {}
    for s in col.scores:
        props[s.name] = {
            "type": "object",
            "properties": {"score": {"enum": list(s.options)}, "reasoning": {"type": "string"}},
            "required": ["score", "reasoning"],
        }
    return {"type": "object", "properties": props, "required": [s.name for s in col.scores]}


def _schema_of(col: ColumnConfig) -> dict[str, Any] | None:
    if isinstance(col, LLMStructuredColumnConfig):
        return col.output_format
    if isinstance(col, LLMJudgeColumnConfig):
        return judge_schema(col)
    return None


def build_request(
    col: ColumnConfig, row: dict[str, Any], load: LoadImage | None = None
) -> CellRequest:
    """Messages for one cell; raises expressions.CellError if a template cannot render.
    An image column's request is its prompt alone (with its context images): the client
    sends it as /images/generations or as a chat completion, as the model is asked."""
    prompt = render(col.prompt, row)  # type: ignore[union-attr]
    messages: list[dict[str, Any]] = []
    system = getattr(col, "system_prompt", None)
    if system:
        messages.append({"role": "system", "content": render(system, row)})
    response_format = None
    if isinstance(col, LLMCodeColumnConfig):
        prompt += f"\n\nAnswer with {col.code_lang} code in a single fenced code block."
    elif isinstance(col, LLMJudgeColumnConfig):
        rubric = []
        for s in col.scores:
            opts = "\n".join(f"  - {k}: {v}" for k, v in s.options.items())
            rubric.append(f"{s.name}: {s.description}\n{opts}")
        prompt += (
            "\n\nScore the above on each criterion. For each, give `score` (one of the listed"
            " options) and a short `reasoning`.\n\n" + "\n\n".join(rubric)
        )
    schema = _schema_of(col)
    if schema is not None:
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": col.name, "schema": schema, "strict": False},
        }
        if isinstance(col, LLMStructuredColumnConfig):
            prompt += "\n\nAnswer with JSON only, matching this JSON schema:\n" + json.dumps(schema)
    images = image_parts(col, row, load)
    content: Any = [*images, {"type": "text", "text": prompt}] if images else prompt
    messages.append({"role": "user", "content": content})
    return CellRequest(messages, response_format)


_FENCE = re.compile(r"```[ \t]*([\w:+#.-]*)[ \t]*\n(.*?)```", re.DOTALL)


def extract_code(text: str) -> str:
    blocks = _FENCE.findall(text)
    if blocks:
        return max(blocks, key=lambda b: len(b[1]))[1].rstrip("\n")
    return text.strip()


def _json_payload(text: str) -> Any:
    candidates = [text.strip()]
    candidates += [b[1] for b in _FENCE.findall(text)]
    first, last = text.find("{"), text.rfind("}")
    if 0 <= first < last:
        candidates.append(text[first : last + 1])
    for c in candidates:
        try:
            return json.loads(c)
        except json.JSONDecodeError:
            continue
    raise AnswerError(f"answer is not valid JSON: {text[:120]!r}")


def glitch(col: ColumnConfig, content: str, finish_reason: str | None) -> str | None:
    """Why an answer looks like a provider fault rather than the model's answer (None: it is an
    answer). A structured answer whose JSON does not parse at all is what an overloaded gateway
    or a cut stream returns; asking the same request again usually fixes it, so it is retried
    like a 503. JSON that parses but breaks the schema is the model's doing: `parse_answer`
    raises and the model is re-asked with the error shown. An answer cut off by max_tokens is
    the model's too (the same request would be cut again)."""
    if _schema_of(col) is None or finish_reason == "length" or not content.strip():
        return None
    try:
        _json_payload(content)
    except AnswerError as exc:
        return str(exc)
    return None


def check_answer(content: str, finish_reason: str | None, refusal: str | None) -> None:
    """Raise AnswerError for an answer that holds no value: a refusal, or nothing because of
    the token limit or a content filter (the client passes empty content on only then)."""
    if refusal:
        raise AnswerError(f"the model refused: {refusal[:200]}")
    if not content.strip():
        why = (
            "it hit inference.max_tokens before answering"
            if finish_reason == "length"
            else f"finish_reason {finish_reason}"
        )
        raise AnswerError(f"empty answer: {why}")


def coerce(value: Any, t: pa.DataType) -> Any:
    """Fit a JSON value to the column's Arrow type (free-form parts become JSON text)."""
    if value is None:
        return None
    if pa.types.is_struct(t):
        if not isinstance(value, dict):
            return None
        return {
            t.field(i).name: coerce(value.get(t.field(i).name), t.field(i).type)
            for i in range(t.num_fields)
        }
    if pa.types.is_list(t):
        return [coerce(v, t.value_type) for v in value] if isinstance(value, list) else None
    if pa.types.is_string(t):
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if pa.types.is_integer(t):
        if isinstance(value, bool):
            return int(value)
        return (
            int(value)
            if isinstance(value, int | float) or str(value).lstrip("-").isdigit()
            else None
        )
    if pa.types.is_floating(t):
        return float(value) if isinstance(value, int | float) else None
    return value


def parse_answer(col: ColumnConfig, text: str) -> Any:
    if isinstance(col, LLMCodeColumnConfig):
        return extract_code(text)
    schema = _schema_of(col)
    if schema is None:
        return text.strip()
    value = _json_payload(text)
    import jsonschema  # here: only structured answers use it (~0.05 s of CPU to import)

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "<root>"
        raise AnswerError(f"answer does not match the schema at {where}: {exc.message}") from None
    return coerce(value, column_type(col))


def correction_message(error: AnswerError) -> dict[str, str]:
    return {
        "role": "user",
        "content": f"That answer could not be used: {error}. Answer again with JSON only,"
        " matching the schema exactly.",
    }
