"""Expression templates rendered a whole column at a time, with Jinja's output.

Rendering through `Template.render` costs ~25 us a cell, most of it building Jinja's Context
(a fresh dict merging the environment's globals into the row's values, per row). Most expression
columns are text and `{{ ... }}` outputs over a few columns: `{{ a }} and {{ b.c }}`,
`{{ n > 3 or flag }}`, `{{ name | upper }}`. Such a template is translated here into one Python
function over the columns it reads, written node for node as Jinja's own code generator writes
it for a sandboxed environment without autoescape or finalize (jinja2/compiler.py): the same
Python operators (the sandbox's `call_binop` for those it intercepts: `*`, `**`, `%`), the sandbox's `getattr`/`getitem`,
the environment's own filter and test functions, `str()` of every output, `str_join` for `~`.
So a value is the same by construction, not by testing alone (tests/engine/test_template_columns.py
compares it with Jinja over generated templates and rows anyway).

What is not translated: statements (`{% ... %}`), calls, names Jinja treats specially, filters
or tests that take the template context, and a template reading a name that is not a column
(a Jinja global such as `range`, or a misspelt column). Those render through Jinja, as does any
row on which the function raises (so a failing row's error is Jinja's own message).
"""

from __future__ import annotations

import keyword
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import nodes
from jinja2.compiler import operators
from jinja2.nodes import EvalContext
from jinja2.runtime import str_join
from jinja2.utils import _PassArg

from dd_assets.config.templates import environment

# Names the code generator resolves to something other than the template's variables.
_SPECIAL_NAMES = frozenset({"self", "loop", "caller", "varargs", "kwargs", "super"})

_BINOPS = {
    nodes.Add: "+",
    nodes.Sub: "-",
    nodes.Mul: "*",
    nodes.Div: "/",
    nodes.FloorDiv: "//",
    nodes.Pow: "**",
    nodes.Mod: "%",
    nodes.And: "and",
    nodes.Or: "or",
}
_UNOPS = {nodes.Pos: "+", nodes.Neg: "-", nodes.Not: "not "}


class _Untranslatable(Exception):
    """The template uses something outside the translated subset: Jinja renders it."""


@dataclass(frozen=True)
class ColumnTemplate:
    """A template translated to Python. `column` maps the columns in `names` (equal lengths)
    to the rendered texts; `row` renders one row from the same values as positional args."""

    names: tuple[str, ...]
    column: Callable[..., list[str]]
    row: Callable[..., str]


class _Translator:
    def __init__(self) -> None:
        self.env = environment()
        self.namespace: dict[str, Any] = {
            "str": str,
            "type": type,
            "dict": dict,
            "_getattr": self.env.getattr,
            "_getitem": self.env.getitem,
            "_str_join": str_join,
            # The eval context filters marked pass_eval_context read (autoescape, volatile):
            # the one Jinja gives a context of a template without `{% autoescape %}` blocks.
            "_eval_ctx": EvalContext(self.env, None),
        }
        self.names: dict[str, str] = {}  # column -> argument name

    def _const(self, value: Any) -> str:
        key = f"_k{len(self.namespace)}"
        self.namespace[key] = value
        return key

    def expr(self, node: nodes.Node) -> str:
        if isinstance(node, nodes.Const | nodes.TemplateData):
            return self._const(node.value if isinstance(node, nodes.Const) else node.data)
        if isinstance(node, nodes.Name):
            if node.ctx != "load" or node.name in _SPECIAL_NAMES:
                raise _Untranslatable(node.name)
            return self.names.setdefault(node.name, f"a{len(self.names)}")
        if isinstance(node, nodes.Getattr):
            obj, attr = self.expr(node.node), self._const(node.attr)
            if hasattr(dict, node.attr):
                return f"_getattr({obj}, {attr})"
            # The sandbox's getattr on a plain dict without such a method is the item lookup;
            # _dict_item is it without raising and catching AttributeError per row.
            self.namespace["_dict_item"] = _dict_item
            return f"_dict_item({obj}, {attr})"
        if isinstance(node, nodes.Getitem):
            if isinstance(node.arg, nodes.Slice):
                return f"{self.expr(node.node)}[{self._slice(node.arg)}]"
            return f"_getitem({self.expr(node.node)}, {self.expr(node.arg)})"
        if type(node) in _BINOPS:
            assert isinstance(node, nodes.BinExpr)
            op = _BINOPS[type(node)]
            if op in self.env.intercepted_binops:
                # As Jinja's code generator does: the sandbox decides (config/templates.py
                # bounds `*`, `**` and `%` so a cell cannot make a gigabyte string).
                self.namespace["_binop"] = self.env.call_binop
                return f"_binop(None, {op!r}, {self.expr(node.left)}, {self.expr(node.right)})"
            return f"({self.expr(node.left)} {op} {self.expr(node.right)})"
        if type(node) in _UNOPS:
            assert isinstance(node, nodes.UnaryExpr)
            self._not_intercepted(_UNOPS[type(node)], self.env.intercepted_unops)
            return f"({_UNOPS[type(node)]}{self.expr(node.node)})"
        if isinstance(node, nodes.Compare):
            ops = "".join(f" {operators[op.op]} {self.expr(op.expr)}" for op in node.ops)
            return f"({self.expr(node.expr)}{ops})"
        if isinstance(node, nodes.Concat):
            return "_str_join((" + "".join(f"{self.expr(n)}, " for n in node.nodes) + "))"
        if isinstance(node, nodes.CondExpr):
            if node.expr2 is None:  # Jinja's "no else section" undefined
                raise _Untranslatable("inline if without else")
            return (
                f"({self.expr(node.expr1)} if {self.expr(node.test)} else {self.expr(node.expr2)})"
            )
        if isinstance(node, nodes.List):
            return "[" + ", ".join(self.expr(n) for n in node.items) + "]"
        if isinstance(node, nodes.Tuple):
            if node.ctx != "load":
                raise _Untranslatable("tuple store")
            items = [self.expr(n) for n in node.items]
            return "(" + ", ".join(items) + (",)" if len(items) == 1 else ")")
        if isinstance(node, nodes.Filter | nodes.Test):
            return self._filter_or_test(node)
        raise _Untranslatable(type(node).__name__)

    @staticmethod
    def _not_intercepted(op: str, intercepted: frozenset[str]) -> None:
        if op.strip() in intercepted:
            raise _Untranslatable(f"intercepted operator {op}")

    def _slice(self, node: nodes.Slice) -> str:
        out = self.expr(node.start) if node.start is not None else ""
        out += ":"
        if node.stop is not None:
            out += self.expr(node.stop)
        if node.step is not None:
            out += ":" + self.expr(node.step)
        return out

    def _filter_or_test(self, node: nodes.Filter | nodes.Test) -> str:
        table = self.env.filters if isinstance(node, nodes.Filter) else self.env.tests
        func = table.get(node.name)
        if func is None or node.node is None or node.dyn_args or node.dyn_kwargs:
            raise _Untranslatable(f"filter or test {node.name}")
        if any(keyword.iskeyword(k.key) for k in node.kwargs):
            raise _Untranslatable("keyword argument named like a Python keyword")
        pass_arg = _PassArg.from_obj(func)
        if pass_arg is _PassArg.context:
            raise _Untranslatable(f"{node.name} needs the template context")
        args = [self.expr(node.node)]
        if pass_arg is _PassArg.eval_context:
            args.insert(0, "_eval_ctx")
        elif pass_arg is _PassArg.environment:
            args.insert(0, self._const(self.env))
        args += [self.expr(a) for a in node.args]
        args += [f"{k.key}={self.expr(k.value)}" for k in node.kwargs]
        return f"{self._const(func)}({', '.join(args)})"

    def template(self, source: str) -> ColumnTemplate:
        tree = self.env.parse(source)
        parts: list[str] = []
        for stmt in tree.body:
            if not isinstance(stmt, nodes.Output):
                raise _Untranslatable(type(stmt).__name__)
            for child in stmt.nodes:
                if isinstance(child, nodes.TemplateData):
                    parts.append(self.expr(child))
                else:
                    parts.append(f"str({self.expr(child)})")
        text = " + ".join(parts) if parts else repr("")
        args = ", ".join(self.names.values())
        columns = ", ".join(f"c{i}" for i in range(len(self.names)))
        if self.names:
            loop = f"for {args}{',' if len(self.names) == 1 else ''} in zip({columns}, strict=True)"
        else:
            loop = "for _ in range(n)"
        code = (
            f"def row({args}):\n    return {text}\n"
            f"def column({columns}{', ' if columns else ''}n=None):\n"
            f"    return [{text} {loop}]\n"
        )
        exec(compile(code, f"<template columns {source[:40]!r}>", "exec"), self.namespace)
        return ColumnTemplate(tuple(self.names), self.namespace["column"], self.namespace["row"])


def _dict_item(obj: Any, attr: str) -> Any:
    if type(obj) is dict and attr in obj:
        return obj[attr]
    return environment().getattr(obj, attr)


@lru_cache(maxsize=1024)
def translate(source: str) -> ColumnTemplate | None:
    """The template as Python, or None when Jinja must render it."""
    try:
        return _Translator().template(source)
    except _Untranslatable:
        return None


def render_column(
    source: str,
    columns: Mapping[str, Sequence[Any]],
    n: int,
    render_row: Callable[[int], str],
) -> list[Any]:
    """The template rendered for n rows whose values are `columns`; `render_row(i)` renders row
    i through Jinja. A row Jinja fails on holds the exception instead of a text."""
    t = translate(source)
    if t is None or any(name not in columns for name in t.names):
        return [_or_error(render_row, i) for i in range(n)]
    cols = [columns[name] for name in t.names]
    try:
        return t.column(*cols, n=n)
    except Exception:  # some row fails: find which, and let Jinja say why
        out: list[Any] = []
        for i, values in enumerate(zip(*cols, strict=True) if cols else ((),) * n):
            try:
                out.append(t.row(*values))
            except Exception:
                out.append(_or_error(render_row, i))
        return out


def _or_error(render_row: Callable[[int], str], i: int) -> Any:
    try:
        return render_row(i)
    except Exception as exc:
        return exc
