"""One Jinja2 environment for every template (expressions, prompts, filters), so that what the
config validator sees as a template's dependencies is exactly what the engine renders.

The environment is Jinja's sandbox (no attribute access to internals, `range` bounded) plus
bounds on what makes big values: `'x' * 300000000`, `10 ** 10 ** 10`, `'%300000000s' % x`,
`'x'.ljust(10**9)`, `'x'|center(10**9)` raise a SecurityError before building them, so a
template cannot take the process's memory (MAX_TEMPLATE_OUTPUT; the engine also caps what a
template prints, `engine.expressions.render`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import lru_cache, wraps
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from dd_assets.config.limits import MAX_TEMPLATE_OUTPUT

_MAX_POW_BITS = 100_000  # an int Python could still print has < 14,300 bits (4300 digits)
_GROWING_METHODS = {"ljust", "rjust", "center", "zfill", "expandtabs"}
_FORMAT_SPECS = re.compile(r"\{[^{}]*:([^{}]*)\}")
_PRINTF_SIZES = re.compile(r"%[-#0 +]*(\d*)(?:\.(\d+))?")


def _too_big(what: str) -> SecurityError:
    return SecurityError(
        f"{what} would make a value of more than {MAX_TEMPLATE_OUTPUT} characters"
        " (the template output limit)"
    )


def _check_printf(fmt: object) -> None:
    if isinstance(fmt, str):
        for width, precision in _PRINTF_SIZES.findall(fmt):
            if max(int(width or 0), int(precision or 0)) > MAX_TEMPLATE_OUTPUT:
                raise _too_big(f"format {fmt[:40]!r}")


def _check_sizes(what: str, args: tuple[Any, ...]) -> None:
    if any(isinstance(a, int) and a > MAX_TEMPLATE_OUTPUT for a in args):
        raise _too_big(what)


def _bounded_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(fn)
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_sizes(f"|{name}", (*args, *kwargs.values()))
        if name == "format":
            _check_printf(value)
        return fn(value, *args, **kwargs)

    return bounded


class BoundedSandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "%"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("center", "indent", "format", "wordwrap", "truncate"):
            self.filters[name] = _bounded_filter(name, self.filters[name])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(n, int)
                    and len(seq) * n > MAX_TEMPLATE_OUTPUT
                ):
                    raise _too_big(f"repeating a value of length {len(seq)} {n} times")
        elif operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right * max(abs(left).bit_length() - 1, 0) > _MAX_POW_BITS
            ):
                raise _too_big(f"{left} ** {right}")
        elif operator == "%":
            _check_printf(left)
        return super().call_binop(context, operator, left, right)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`'{:>300000000}'.format(x)`: the widths of a str.format are checked first."""
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            for spec in _FORMAT_SPECS.findall(str(value.__self__)):
                if any(int(n) > MAX_TEMPLATE_OUTPUT for n in re.findall(r"\d+", spec)):
                    raise _too_big(f"format spec {spec[:40]!r}")
        return wrapped

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(__obj, "__name__", None) in _GROWING_METHODS and isinstance(
            getattr(__obj, "__self__", None), str
        ):
            _check_sizes(f".{__obj.__name__}()", (*args, *kwargs.values()))
        return super().call(__context, __obj, *args, **kwargs)


@lru_cache(maxsize=1)
def environment() -> SandboxedEnvironment:
    # StrictUndefined: a misspelt column must fail loudly, never render as "".
    return BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False)


def _json_value(value: object) -> object:
    """How DataDesigner prints a value into a JSON template: JSON literals, dicts and lists as
    JSON text, strings as they are."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


@lru_cache(maxsize=1)
def json_environment() -> SandboxedEnvironment:
    return BoundedSandbox(undefined=jinja2.StrictUndefined, autoescape=False, finalize=_json_value)


@lru_cache(maxsize=4096)
def compile_template(source: str, json_values: bool = False) -> jinja2.Template:
    return (json_environment() if json_values else environment()).from_string(source)


def referenced_names(source: str) -> frozenset[str]:
    """Top-level variables a template reads; raises jinja2.TemplateSyntaxError on bad syntax.

    Cached: the engine asks for every LLM cell's dependencies, and parsing costs ~0.5 ms."""
    return _referenced_names(source)


@lru_cache(maxsize=4096)
def _referenced_names(source: str) -> frozenset[str]:
    return frozenset(meta.find_undeclared_variables(environment().parse(source)))
