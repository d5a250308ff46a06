"""Samplers and options added for DataDesigner configs, natively: every value stays a pure
function of (column key, row index), whatever the row group it is made in."""

from __future__ import annotations

import re
from typing import Any

import pytest

from dd_assets.config import WorkflowConfigError, parse_workflow
from dd_assets.engine import compile_stage, generate_rows


def _rows(columns: list[dict[str, Any]], n: int = 400, start: int = 0) -> list[dict[str, Any]]:
    wf = parse_workflow(
        {"name": "w", "stages": [{"name": "s", "num_records": 10_000, "columns": columns}]}
    )
    return generate_rows(compile_stage(wf, "s"), start, start + n).table.to_pylist()


def _sampler(name: str, st: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "column_type": "sampler", "sampler_type": st, "params": params, **extra}


def test_uuid_formats() -> None:
    rows = _rows(
        [
            _sampler("a", "uuid", {}),
            _sampler("b", "uuid", {"format": "hex"}),
            _sampler("c", "uuid", {"short_form": True, "short_length": 8, "prefix": "X-"}),
            _sampler("d", "uuid", {"short_form": True}),
        ],
        20,
    )
    for r in rows:
        assert re.fullmatch(
            r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", r["a"]
        )
        assert re.fullmatch(r"[0-9a-f]{32}", r["b"])
        assert re.fullmatch(r"X-[0-9a-f]{8}", r["c"])
        assert re.fullmatch(r"[0-9a-f]{16}", r["d"])  # dd-assets' short form, unchanged


def test_int_rounding_half_even_gives_the_ends_half_weight() -> None:
    rows = _rows(
        [
            _sampler("even", "uniform", {"low": 1, "high": 4}, convert_to="int"),
            _sampler(
                "dd", "uniform", {"low": 1, "high": 4}, convert_to="int", int_rounding="half_even"
            ),
        ],
        6000,
    )
    even = {v: sum(r["even"] == v for r in rows) for v in range(1, 5)}
    dd = {v: sum(r["dd"] == v for r in rows) for v in range(1, 5)}
    assert min(even.values()) > 1300  # evenly over 1..4
    assert dd[1] < 0.7 * dd[2] and dd[4] < 0.7 * dd[3]  # ~1000 vs ~2000


def test_new_distributions() -> None:
    rows = _rows(
        [
            _sampler("b", "binomial", {"n": 10, "p": 0.3}),
            _sampler(
                "beta",
                "scipy",
                {"dist_name": "beta", "dist_params": {"a": 2, "b": 5}, "decimal_places": 3},
            ),
            _sampler("pois", "scipy", {"dist_name": "poisson", "dist_params": {"mu": 2}}),
            _sampler(
                "mix",
                "bernoulli_mixture",
                {"p": 0.5, "dist_name": "expon", "dist_params": {"scale": 3}},
            ),
            _sampler("day", "datetime", {"start": "2024-01-01", "end": "2024-01-10"}),
            _sampler(
                "later", "timedelta", {"dt_min": 1, "dt_max": 3, "reference_column_name": "day"}
            ),
            _sampler(
                "sec",
                "datetime",
                {"start": "2020-06-01", "end": "2021-01-01", "unit": "Y", "draw": "seconds"},
                convert_to="%Y-%m-%d",
            ),
        ],
        2000,
    )
    assert {type(r["b"]) for r in rows} == {int} and all(0 <= r["b"] <= 10 for r in rows)
    assert all(0 < r["beta"] < 1 and round(r["beta"], 3) == r["beta"] for r in rows)
    assert {type(r["pois"]) for r in rows} == {int}
    zeros = sum(r["mix"] == 0 for r in rows)
    assert 800 < zeros < 1200 and all(r["mix"] >= 0 for r in rows)
    assert all(1 <= (r["later"] - r["day"]).days <= 2 for r in rows)  # dt_max excluded
    assert {r["sec"] for r in rows} == {"2020-01-01"}  # floored to the year, as DataDesigner does


def test_conditional_params_and_constraints_are_per_row() -> None:
    columns = [
        _sampler("kind", "category", {"values": ["a", "b"]}),
        _sampler(
            "n",
            "uniform",
            {"low": 0, "high": 10},
            convert_to="int",
            constraints=[{"operator": "ge", "value": 3}],
        ),
        _sampler(
            "price",
            "uniform",
            {"low": 1, "high": 2},
            conditional_params={
                "kind == 'a'": {"low": 10, "high": 11},
                "n > 8": {"low": 100, "high": 101},  # sorts after: wins over kind == 'a'
            },
        ),
        _sampler(
            "low",
            "uniform",
            {"low": 0, "high": 200},
            constraints=[{"operator": "lt", "column": "price"}],
        ),
    ]
    rows = _rows(columns, 600)
    for r in rows:
        assert r["n"] >= 3
        lo = 100 if r["n"] > 8 else 10 if r["kind"] == "a" else 1
        assert lo <= r["price"] <= lo + 1
        assert r["low"] < r["price"]
    # The same rows made in another row group (another start, another size) are the same.
    assert _rows(columns, 50, start=300) == rows[300:350]


def test_conditions_do_not_depend_on_their_written_order() -> None:
    def cols(order: list[str]) -> list[dict[str, Any]]:
        conds = {"x > 0.5": {"low": 1, "high": 2}, "x > 0.2": {"low": 5, "high": 6}}
        return [
            _sampler("x", "uniform", {"low": 0, "high": 1}),
            _sampler(
                "y",
                "uniform",
                {"low": 0, "high": 1},
                conditional_params={k: conds[k] for k in order},
            ),
        ]

    assert _rows(cols(["x > 0.5", "x > 0.2"]), 50) == _rows(cols(["x > 0.2", "x > 0.5"]), 50)


@pytest.mark.parametrize(
    ("column", "message"),
    [
        (
            _sampler("s", "scipy", {"dist_name": "nope"}),
            "not a univariate scipy.stats distribution",
        ),
        (
            _sampler("s", "scipy", {"dist_name": "beta", "dist_params": {"a": -1, "b": 1}}),
            "not valid for scipy.stats.beta",
        ),
        (
            _sampler("s", "uuid", {}, constraints=[{"operator": "lt", "value": 1}]),
            "constraints apply to numeric samplers",
        ),
        (
            _sampler(
                "s",
                "uniform",
                {"low": 0, "high": 1},
                conditional_params={"x >": {"low": 0, "high": 1}},
            ),
            "not a valid Jinja2 template",
        ),
        (
            _sampler(
                "s",
                "uniform",
                {"low": 0, "high": 1},
                constraints=[{"operator": "lt", "value": 1, "column": "x"}],
            ),
            "one of them",
        ),
    ],
)
def test_bad_new_sampler_configs_are_config_errors(column: dict[str, Any], message: str) -> None:
    with pytest.raises(WorkflowConfigError, match=re.escape(message)):
        _rows([column], 1)


def test_impossible_constraint_names_the_row() -> None:
    from dd_assets.errors import GenerationError

    column = _sampler(
        "s", "uniform", {"low": 0, "high": 1}, constraints=[{"operator": "gt", "value": 5}]
    )
    with pytest.raises(
        GenerationError, match=r"sampler column 's'.*rejected 1001 draws in a row for row 0"
    ):
        _rows([column], 2)
