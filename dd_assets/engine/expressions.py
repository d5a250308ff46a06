"""Rendering Jinja expressions into typed cells."""

from __future__ import annotations

from typing import Any

from dd_assets.config.templates import compile_template

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


def render(source: str, row: dict[str, Any], json_values: bool = False) -> str:
    try:
        return compile_template(source, json_values).render(row)
    except (
        Exception
    ) as exc:  # template runtime errors are data errors: drop the row, keep the reason
        raise CellError(f"{type(exc).__name__}: {exc}") from None
