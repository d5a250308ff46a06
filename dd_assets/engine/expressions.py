"""Rendering Jinja expressions into typed cells."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Any

from dd_assets.config.limits import MAX_TEMPLATE_OUTPUT
from dd_assets.config.templates import compile_template
from dd_assets.engine.template_columns import render_column

_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f", "", "none"}


class CellError(Exception):
    """A single cell could not be produced; its row is dropped and the reason recorded."""


def cast(text: str, dtype: str) -> Any:
    s = text.strip()
    try:
        if dtype == "str":
            return text
        if dtype == "int":
            try:
                v = int(s)
            except ValueError:
                f = float(s)
                if not f.is_integer():
                    raise
                v = int(f)
            if (
                not -(2**63) <= v < 2**63
            ):  # the column is int64: one huge value must drop its row only
                raise OverflowError(s)
            return v
        if dtype == "float":
            return float(s)
        low = s.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(s)
    except (ValueError, OverflowError):
        raise CellError(f"cannot convert {text[:60]!r} to {dtype}") from None


@lru_cache(maxsize=4096)
def _renderer(source: str, json_values: bool) -> Callable[[dict[str, Any]], str]:
    """`Template.render` without its per-call costs: Jinja builds each render's context from
    `dict(template.globals, **row)`, where `template.globals` is a ChainMap over the environment's
    globals (slow to iterate); the merged globals are the same for every row, so they are merged
    once here. What the template's code sees (the context's parent, vars, eval context, blocks)
    is what `render` gives it."""
    template = compile_template(source, json_values)
    env = template.environment
    globals_ = dict(template.globals)
    root, name, blocks, context_class, concat = (
        template.root_render_func,
        template.name,
        template.blocks,
        env.context_class,
        env.concat,
    )

    def run(row: dict[str, Any]) -> str:
        return concat(_capped(root(context_class(env, {**globals_, **row}, name, blocks))))  # type: ignore[no-any-return]

    return run


def _too_long() -> CellError:
    return CellError(
        f"the template printed more than {MAX_TEMPLATE_OUTPUT} characters (the template output"
        " limit)"
    )


def _capped(chunks: Iterator[str]) -> Iterator[str]:
    """A template's output, stopped once it passes MAX_TEMPLATE_OUTPUT (a loop printing
    forever), before it is joined into one string."""
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_TEMPLATE_OUTPUT:
            raise _too_long()
        yield chunk


def render(source: str, row: dict[str, Any], json_values: bool = False) -> str:
    """The template's text for one row; a CellError (the row is dropped, the reason kept) when
    it fails or prints more than MAX_TEMPLATE_OUTPUT characters."""
    try:
        return _renderer(source, json_values)(row)
    except CellError:
        raise
    except Exception as exc:  # template runtime errors are data errors: drop the row
        raise CellError(f"{type(exc).__name__}: {exc}") from None


def render_cells(
    source: str, columns: Mapping[str, Sequence[Any]], n: int, dtype: str = "str"
) -> list[Any]:
    """A template over n rows given as columns, cast to dtype: what `cast(render(source, row),
    dtype)` gives for each row, or the CellError it raises, in that row's place."""

    def one_row(i: int) -> str:
        return render(source, {k: v[i] for k, v in columns.items()})

    texts: list[Any] = [
        _too_long() if isinstance(t, str) and len(t) > MAX_TEMPLATE_OUTPUT else t
        for t in render_column(source, columns, n, one_row)
    ]
    if dtype == "str":
        return texts
    out: list[Any] = []
    for t in texts:
        if isinstance(t, str):
            try:
                t = cast(t, dtype)
            except CellError as exc:
                t = exc
        out.append(t)
    return out
