"""Expression templates rendered column-wise (engine/template_columns.py, expressions.render_cells)
give, row for row, what Jinja's own `Template.render` + `cast` gives: the same text, or the same
error message. Templates and rows are generated: outputs over names, attributes, items, slices,
operators, filters and tests, plus statements and calls that must go to Jinja."""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dd_assets.config.templates import compile_template
from dd_assets.engine.expressions import CellError, cast, render, render_cells
from dd_assets.engine.template_columns import translate

NAMES = ("a", "b", "c", "d")


def reference(source: str, row: dict[str, Any], dtype: str) -> Any:
    """Today's engine, row by row: Jinja's Template.render, then the cast."""
    try:
        text = compile_template(source).render(row)
    except Exception as exc:
        return f"error: {type(exc).__name__}: {exc}"
    try:
        return cast(text, dtype)
    except CellError as exc:
        return f"error: {exc}"


def ours(source: str, columns: dict[str, list[Any]], n: int, dtype: str) -> list[Any]:
    return [
        f"error: {v}" if isinstance(v, CellError) else v
        for v in render_cells(source, columns, n, dtype)
    ]


_ADDRESS = re.compile(r" at 0x[0-9a-f]+")


def same(a: list[Any], b: list[Any]) -> bool:
    """Equal, with NaN equal to NaN, bool never equal to int (a cast must keep its type), and
    object addresses in reprs (`<built-in method upper of str object at 0x...>`) left out:
    two renders by Jinja itself differ there."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, str) and isinstance(y, str):
            x, y = _ADDRESS.sub(" at 0x", x), _ADDRESS.sub(" at 0x", y)
        if type(x) is not type(y):
            return False
        if isinstance(x, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


scalars = st.one_of(
    st.integers(-5, 30),
    st.sampled_from(["a", "ab", "x y", "", "yes", "no", "True", "0", "1.5", " 7 ", "none"]),
    st.booleans(),
    st.none(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1)),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=4),
    st.dictionaries(st.sampled_from(["x", "y", "items", "first_name"]), scalars, max_size=3),
)

_literals = st.sampled_from(
    ["1", "2", "0", "-3", "2.5", "'x'", "'ab'", '"a b"', "true", "false", "none", "[1, 'x']", "('x',)"]
)  # fmt: skip


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    names = st.sampled_from(NAMES)
    if depth >= 2:
        return draw(st.one_of(names, names, _literals))
    sub = expressions(depth + 1)
    a, b = draw(sub), draw(sub)
    forms = [
        lambda: a,
        lambda: a,
        lambda: f"{a}.{draw(st.sampled_from(['x', 'y', 'items', 'first_name', 'real', 'upper']))}",
        lambda: f"{a}[{draw(st.sampled_from(['0', '1', '-1', repr('x'), 'b']))}]",
        lambda: f"{a}[{draw(st.sampled_from(['1:', ':2', '::-1', '1:3:2']))}]",
        lambda: f"({a} {draw(st.sampled_from(['+', '-', '*', '/', '//', '%', '**']))} {b})",
        lambda: (
            f"({a} {draw(st.sampled_from(['==', '!=', '<', '<=', '>', '>=', 'in', 'not in']))} {b})"
        ),
        lambda: f"({a} {draw(st.sampled_from(['and', 'or']))} {b})",
        lambda: f"({a} {draw(st.sampled_from(['and', 'or']))} {b})",
        lambda: f"(not {a})",
        lambda: f"(-{a})",
        lambda: f"({a} ~ {b})",
        lambda: f"({a} ~ {b})",
        lambda: f"({a} if {b} else {draw(sub)})",
        lambda: f"({a} if {b})",  # no else: Jinja renders it
        lambda: f"{a} | {draw(st.sampled_from(FILTERS))}",
        lambda: f"{a} | {draw(st.sampled_from(FILTERS))}",
        lambda: f"({a} is {draw(st.sampled_from(TESTS))})",
        lambda: f"[{a}, {b}]",
        lambda: f"range({draw(st.integers(0, 3))})",  # a call: Jinja renders it
        lambda: f"{a} | map('upper') | list",  # a context filter: Jinja renders it
        lambda: f"({a} < 3 < {b})",
    ]
    return draw(st.sampled_from(forms))()


FILTERS = [
    "upper", "lower", "title", "capitalize", "trim", "length", "string", "int", "float",
    "round", "round(1)", "abs", "first", "last", "default('dflt')", "default('z', true)",
    "replace('a', 'b')", "truncate(5)", "join(',')", "join", "list", "sort", "unique | list",
    "e", "safe", "tojson", "wordcount", "center(9)", "indent(2)", "sum", "min", "max",
    "format(1)", "urlencode", "striptags", "reverse | list", "batch(2) | list", "attr('x')",
    "no_such_filter",
]  # fmt: skip
TESTS = [
    "none", "defined", "undefined", "number", "string", "mapping", "sequence", "odd", "even",
    "divisibleby(3)", "eq(1)", "in([1, 'x'])", "true", "false", "integer", "float", "lower",
]  # fmt: skip


@st.composite
def templates(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 9))
        if kind <= 1:
            parts.append(draw(st.text(alphabet="ab {}%#-\n\u00e9", max_size=6)))
            if parts[-1].endswith("{"):
                parts[-1] += " "  # not the start of a tag by accident
        elif kind == 2:
            parts.append("{% if " + draw(expressions()) + " %}y{% else %}n{% endif %}")
        elif kind == 3:
            parts.append("{{- " + draw(expressions()) + " -}}")
        else:
            parts.append("{{ " + draw(expressions()) + " }}")
    return "".join(parts)


@st.composite
def cases(draw: st.DrawFn) -> tuple[str, dict[str, list[Any]], int, str]:
    source = draw(templates())
    try:
        compile_template(source)
    except Exception:
        # Not a template (the config validator refuses it); keep the ones Jinja compiles.
        source = "{{ a }}"
    n = draw(st.integers(0, 6))
    # Usually every name is a column (the translated path); sometimes not (Jinja's path).
    names = (
        list(NAMES)
        if draw(st.integers(0, 3))
        else draw(st.lists(st.sampled_from(NAMES), unique=True, min_size=1))
    )
    columns = {name: draw(st.lists(values, min_size=n, max_size=n)) for name in names}
    dtype = draw(st.sampled_from(["str", "str", "bool", "int", "float"]))
    return source, columns, n, dtype


def check_case(case: tuple[str, dict[str, list[Any]], int, str]) -> None:
    source, columns, n, dtype = case
    expected = [reference(source, {k: v[i] for k, v in columns.items()}, dtype) for i in range(n)]
    assert same(ours(source, columns, n, dtype), expected), source


# Jinja warns about the generated `1[0]`s when it compiles them; that is the point of them.
@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
@example(("{{ a }} and {{ b.x }}", {"a": [1, "s", None], "b": [{"x": 2}, {}, {"items": 3}]}, 3, "str"))  # fmt: skip
@example(("{{ a < 2 or b > 20 }}", {"a": [1, 5, 3], "b": [0, 30, "x"]}, 3, "bool"))
@example(("{{ a | upper }}-{{ b | default('?') }}", {"a": ["x", 1, None]}, 3, "str"))
@example(("{{ a.items }}", {"a": [{"items": 1}, {}]}, 2, "str"))
@example(("{{ a ~ b }}", {"a": [1, "x"], "b": [2, None]}, 2, "str"))
def test_column_render_equals_jinja(case: tuple[str, dict[str, list[Any]], int, str]) -> None:
    check_case(case)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::SyntaxWarning")
@settings(
    max_examples=int(os.environ.get("DD_PROPERTY_EXAMPLES", "800")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(cases())
def test_column_render_equals_jinja_many(case: tuple[str, dict[str, list[Any]], int, str]) -> None:
    """The same property over more templates: 800 in CI (~45 s on a quiet 2-core machine),
    DD_PROPERTY_EXAMPLES=5000 for a long hunt."""
    check_case(case)


def test_plain_templates_are_translated() -> None:
    """The fast path is taken for the templates it is for (else the speed is an accident)."""
    for source in [
        "{{ a }}",
        "{{ a.b }} and {{ c['d'] }}",
        "{{ n < 2 or m > 20 }}",
        "{{ name | upper }} {{ x | default('-') }} {{ s | truncate(5) }} {{ l | join(',') }}",
        "{{ a ~ b }}{{ a if b else c }}{{ a is none }}{{ a[1:] }}{{ -a + 2 * b }}",
        "plain text",
    ]:
        assert translate(source) is not None, source
    for source in ["{% if a %}x{% endif %}", "{{ range(3) }}", "{{ a | map('x') }}", "{{ self }}"]:
        assert translate(source) is None, source


def test_a_name_that_is_not_a_column_renders_through_jinja() -> None:
    # `range` is a Jinja global, `zzz` a misspelt column: Jinja's own answer and error.
    assert render_cells("{{ range(2) | join }}", {"a": [1]}, 1) == ["01"]
    err = render_cells("{{ zzz }}", {"a": [1]}, 1)[0]
    assert isinstance(err, CellError) and "'zzz' is undefined" in str(err)


def test_render_keeps_jinja_globals_and_row_shadowing() -> None:
    assert render("{{ range(3) | join }}", {}) == "012"
    assert render("{{ range }}", {"range": "mine"}) == "mine"  # the row shadows a global
    with pytest.raises(CellError, match="UndefinedError: 'x' is undefined"):
        render("{{ x }}", {})
