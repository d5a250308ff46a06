"""Row-group engine: sampler types and values, determinism (per global row, whatever the buffer
size, the run or the process), what decides a column's randomness, expression columns, post_batch
processors, row-group ranges, and memory that stays O(one row group) while iterating."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import tracemalloc
import uuid
from collections import Counter
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dd_assets.config import WorkflowConfigError, loads_workflow, output_columns, parse_workflow
from dd_assets.engine import (
    CompiledStage,
    compile_stage,
    generate_row_group,
    generate_rows,
)
from dd_assets.engine.schema import PERSON_FIELDS, PERSON_TYPE
from dd_assets.errors import GenerationError

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------
# helpers


def sampler(name: str, sampler_type: str, params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "column_type": "sampler",
        "sampler_type": sampler_type,
        "params": params,
        **extra,
    }


def expression(name: str, expr: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "column_type": "expression", "expr": expr, **extra}


def stage_of(
    columns: list[dict[str, Any]],
    *,
    num_records: int = 100,
    buffer_size: int | None = None,
    workflow: str = "w",
    stage: str = "s",
    **extra: Any,
) -> CompiledStage:
    wf = parse_workflow(
        {
            "name": workflow,
            "stages": [
                {
                    "name": stage,
                    "num_records": num_records,
                    "buffer_size": buffer_size or num_records,
                    "columns": columns,
                    **extra,
                }
            ],
        }
    )
    return compile_stage(wf, stage)


def rows_of(cs: CompiledStage, n: int | None = None) -> pa.Table:
    return generate_rows(cs, 0, n or cs.stage.num_records).table


def assert_no_nulls(table: pa.Table) -> None:
    for name in table.column_names:
        col = table.column(name)
        assert col.null_count == 0, f"{name} has {col.null_count} nulls"
        if pa.types.is_struct(col.type):
            for i in range(col.type.num_fields):
                child = pa.chunked_array([c.field(i) for c in col.chunks], col.type.field(i).type)
                assert child.null_count == 0, f"{name}.{col.type.field(i).name} has nulls"


# Every sampler type (and the conversions a column can ask for), with the Arrow type the docs give.
ALL_SAMPLERS: list[tuple[dict[str, Any], pa.DataType]] = [
    (sampler("cat", "category", {"values": ["a", "b", "c"], "weights": [1, 2, 7]}), pa.string()),
    (sampler("cat_int", "category", {"values": [10, 20, 30]}), pa.int64()),
    (sampler("cat_float", "category", {"values": [0.5, 1.5]}), pa.float64()),
    (sampler("cat_bool", "category", {"values": [True, False]}), pa.bool_()),
    (sampler("cat_mixed", "category", {"values": [1, "x", 2.5]}), pa.string()),
    (
        sampler(
            "sub", "subcategory", {"category": "cat", "values": {"a": ["a1", "a2"], "b": ["b1"], "c": ["c1", "c2", "c3"]}}
        ),
        pa.string(),
    ),
    (
        sampler("sub_int", "subcategory", {"category": "cat_int", "values": {10: [1, 2], 20: [3], 30: [4, 5]}}),
        pa.int64(),
    ),
    (sampler("u_int", "uniform", {"low": 1, "high": 6}, convert_to="int"), pa.int64()),
    (sampler("u_float", "uniform", {"low": -2.5, "high": 7.5}), pa.float64()),
    (sampler("u_round", "uniform", {"low": 0, "high": 1, "decimal_places": 2}), pa.float64()),
    (sampler("u_str", "uniform", {"low": 0, "high": 1}, convert_to="str"), pa.string()),
    (sampler("gauss", "gaussian", {"mean": 10, "stddev": 2}), pa.float64()),
    (sampler("gauss_int", "gaussian", {"mean": 10, "stddev": 2}, convert_to="int"), pa.int64()),
    (sampler("bern", "bernoulli", {"p": 0.3}), pa.int64()),
    (sampler("pois", "poisson", {"mean": 4}), pa.int64()),
    (sampler("id", "uuid", {}), pa.string()),
    (sampler("id_short", "uuid", {"prefix": "T-", "short_form": True, "uppercase": True}), pa.string()),
    (sampler("when", "datetime", {"start": "2026-01-01", "end": "2026-03-31", "unit": "h"}), pa.timestamp("s")),
    (
        sampler("day", "datetime", {"start": "2026-01-01", "end": "2026-12-31"}, convert_to="%Y-%m-%d"),
        pa.string(),
    ),
    (sampler("who", "person", {"age_range": [20, 30]}), PERSON_TYPE),
]  # fmt: skip
ALL_SAMPLER_COLUMNS = [c for c, _ in ALL_SAMPLERS]

N_STATS = 10_000


@lru_cache(maxsize=1)
def big_table() -> pa.Table:
    """10k rows of every non-person sampler (people are slow; they get their own test)."""
    cols = [c for c in ALL_SAMPLER_COLUMNS if c["sampler_type"] != "person"]
    return rows_of(stage_of(cols, num_records=N_STATS, buffer_size=4096))


def column(name: str) -> list[Any]:
    return big_table().column(name).to_pylist()


# ---------------------------------------------------------------------------------------------
# types, ranges, nulls


def test_every_sampler_has_the_documented_arrow_type_and_no_nulls() -> None:
    cs = stage_of(ALL_SAMPLER_COLUMNS, num_records=50)
    table = rows_of(cs)
    assert table.num_rows == 50
    assert table.schema == pa.schema([(c["name"], t) for c, t in ALL_SAMPLERS])
    assert_no_nulls(table)


def test_types_come_from_the_config_even_for_a_single_row() -> None:
    # One row of a 3-valued mixed category draws one value; the type still is the config's.
    table = rows_of(stage_of(ALL_SAMPLER_COLUMNS, num_records=1))
    assert table.schema == pa.schema([(c["name"], t) for c, t in ALL_SAMPLERS])


def test_big_table_has_no_nulls() -> None:
    assert big_table().num_rows == N_STATS
    assert_no_nulls(big_table())


def test_category_values_only_and_weights_roughly_respected() -> None:
    counts = Counter(column("cat"))
    assert set(counts) == {"a", "b", "c"}
    for value, weight in {"a": 0.1, "b": 0.2, "c": 0.7}.items():
        assert abs(counts[value] / N_STATS - weight) < 0.02, counts
    # Unweighted: uniform over the values.
    counts = Counter(column("cat_int"))
    assert set(counts) == {10, 20, 30}
    assert all(abs(n / N_STATS - 1 / 3) < 0.02 for n in counts.values()), counts
    assert set(column("cat_float")) == {0.5, 1.5}
    assert set(column("cat_bool")) == {True, False}
    assert set(column("cat_mixed")) == {"1", "x", "2.5"}


def test_category_weight_zero_never_drawn() -> None:
    cs = stage_of([sampler("c", "category", {"values": ["x", "y", "z"], "weights": [0, 1, 0]})])
    assert set(rows_of(cs).column("c").to_pylist()) == {"y"}


def test_subcategory_is_consistent_with_its_parent() -> None:
    subs = {"a": {"a1", "a2"}, "b": {"b1"}, "c": {"c1", "c2", "c3"}}
    pairs = list(zip(column("cat"), column("sub"), strict=True))
    assert all(s in subs[p] for p, s in pairs)
    # every child of every parent shows up in 10k rows
    assert {s for _, s in pairs} == set().union(*subs.values())
    int_subs = {10: {1, 2}, 20: {3}, 30: {4, 5}}
    assert all(s in int_subs[p] for p, s in zip(column("cat_int"), column("sub_int"), strict=True))


def test_subcategory_accepts_yaml_number_and_bool_keys() -> None:
    # In YAML `1:` and `true:` are int / bool keys; they name the parent's int / bool values.
    wf = loads_workflow(
        textwrap.dedent(
            """\
            name: w
            stages:
              - name: s
                num_records: 200
                columns:
                  - {name: level, column_type: sampler, sampler_type: category, params: {values: [1, 2]}}
                  - name: label
                    column_type: sampler
                    sampler_type: subcategory
                    params: {category: level, values: {1: [low], 2: [high, top]}}
                  - {name: ok, column_type: sampler, sampler_type: category, params: {values: [true, false]}}
                  - name: word
                    column_type: sampler
                    sampler_type: subcategory
                    params: {category: ok, values: {true: [yes_], false: [no_]}}
            """
        )
    )
    table = rows_of(compile_stage(wf, "s"))
    allowed = {1: {"low"}, 2: {"high", "top"}}
    assert all(b in allowed[a] for a, b in zip(table["level"].to_pylist(), table["label"].to_pylist(), strict=True))  # fmt: skip
    assert all({True: "yes_", False: "no_"}[a] == b for a, b in zip(table["ok"].to_pylist(), table["word"].to_pylist(), strict=True))  # fmt: skip
    with pytest.raises(WorkflowConfigError, match="given twice"):
        stage_of(
            [
                sampler("level", "category", {"values": [1]}),
                sampler("label", "subcategory", {"category": "level", "values": {1: ["a"], "1": ["b"]}}),
            ]
        )  # fmt: skip


def test_uniform_int_covers_its_inclusive_bounds() -> None:
    values = column("u_int")
    assert all(isinstance(v, int) for v in values)
    assert set(values) == {1, 2, 3, 4, 5, 6}
    counts = Counter(values)
    assert all(abs(n / N_STATS - 1 / 6) < 0.02 for n in counts.values()), counts


def test_uniform_int_with_fractional_bounds_stays_inside() -> None:
    cs = stage_of([sampler("x", "uniform", {"low": 0.5, "high": 3.5}, convert_to="int")])
    assert set(rows_of(cs).column("x").to_pylist()) == {1, 2, 3}
    cs = stage_of([sampler("x", "uniform", {"low": 0.2, "high": 0.7}, convert_to="int")])
    with pytest.raises(GenerationError, match=r"'x'.*no integer"):
        rows_of(cs)


def test_uniform_float_within_bounds_and_rounding() -> None:
    values = column("u_float")
    assert all(-2.5 <= v < 7.5 for v in values)
    assert min(values) < -2.4 and max(values) > 7.4
    assert abs(sum(values) / N_STATS - 2.5) < 0.15
    rounded = column("u_round")
    assert all(0 <= v <= 1 and abs(v * 100 - round(v * 100)) < 1e-9 for v in rounded)
    assert all(0 <= float(v) < 1 for v in column("u_str"))


def test_gaussian_moments() -> None:
    values = column("gauss")
    mean = sum(values) / N_STATS
    sd = (sum((v - mean) ** 2 for v in values) / N_STATS) ** 0.5
    assert abs(mean - 10) < 0.1
    assert abs(sd - 2) < 0.1
    # convert_to int floors
    ints = column("gauss_int")
    assert all(isinstance(v, int) for v in ints)
    assert abs(sum(ints) / N_STATS - 9.5) < 0.15


def test_bernoulli_and_poisson() -> None:
    bern = column("bern")
    assert set(bern) == {0, 1}
    assert abs(sum(bern) / N_STATS - 0.3) < 0.03
    pois = column("pois")
    assert all(isinstance(v, int) and v >= 0 for v in pois)
    mean = sum(pois) / N_STATS
    var = sum((v - mean) ** 2 for v in pois) / N_STATS
    assert abs(mean - 4) < 0.15
    assert abs(var - 4) < 0.5


def test_uuids_well_formed_and_unique() -> None:
    ids = column("id")
    assert len(set(ids)) == N_STATS
    for v in ids[:500]:
        u = uuid.UUID(v)
        assert str(u) == v and u.version == 4 and u.variant == uuid.RFC_4122
    shorts = column("id_short")
    assert len(set(shorts)) == N_STATS
    assert all(
        s.startswith("T-") and len(s) == 18 and s[2:] == s[2:].upper() and int(s[2:], 16) >= 0
        for s in shorts
    )


def test_datetimes_within_bounds_at_the_unit() -> None:
    values = column("when")
    lo, hi = dt.datetime(2026, 1, 1), dt.datetime(2026, 3, 31)
    assert all(lo <= v <= hi for v in values)
    assert all(v.minute == 0 and v.second == 0 for v in values)
    assert len(set(values)) > 1000  # hours, not a handful of days
    days = column("day")
    parsed = [dt.datetime.strptime(d, "%Y-%m-%d") for d in days]
    assert all(dt.datetime(2026, 1, 1) <= d <= dt.datetime(2026, 12, 31) for d in parsed)
    assert {d.month for d in parsed} == set(range(1, 13))


def test_datetime_start_not_on_a_unit_boundary_rounds_up() -> None:
    cs = stage_of(
        [sampler("m", "datetime", {"start": "2026-01-15", "end": "2026-04-10", "unit": "M"})]
    )
    assert set(rows_of(cs).column("m").to_pylist()) == {
        dt.datetime(2026, 2, 1),
        dt.datetime(2026, 3, 1),
        dt.datetime(2026, 4, 1),
    }


def test_person_sampler() -> None:
    cs = stage_of(
        [
            sampler("who", "person", {"age_range": [20, 30]}),
            sampler("man", "person", {"sex": "Male", "city": "Springfield", "age_range": [40, 40]}),
        ],
        num_records=600,
    )
    table = rows_of(cs)
    assert table.schema.field("who").type == PERSON_TYPE
    assert_no_nulls(table)
    people = table.column("who").to_pylist()
    assert all(set(p) == set(PERSON_FIELDS) for p in people)
    assert all(20 <= p["age"] <= 30 for p in people)
    assert {p["sex"] for p in people} == {"Female", "Male"}
    assert all(p["first_name"] and p["last_name"] and "@" in p["email_address"] for p in people)
    assert all(p["locale"] == "en_US" for p in people)
    assert len({p["uuid"] for p in people}) == 600
    assert len({(p["first_name"], p["last_name"]) for p in people}) > 300
    ref = dt.date(2026, 1, 1)
    for p in people:
        born = dt.date.fromisoformat(p["birth_date"])
        age = ref.year - born.year - ((ref.month, ref.day) < (born.month, born.day))
        assert abs(age - p["age"]) <= 1
    men = table.column("man").to_pylist()
    assert all(m["sex"] == "Male" and m["city"] == "Springfield" and m["age"] == 40 for m in men)


# ---------------------------------------------------------------------------------------------
# determinism


DET_COLUMNS = [
    *ALL_SAMPLER_COLUMNS,
    expression("summary", "{{ who.first_name }} {{ cat }}/{{ sub }} {{ u_int * 2 }}"),
    expression("doubled", "{{ u_int * 2 }}", dtype="int"),
]
DET_N = 200


@cache
def det_stage(buffer_size: int) -> CompiledStage:
    return stage_of(DET_COLUMNS, num_records=DET_N, buffer_size=buffer_size)


def rows_via_row_groups(cs: CompiledStage, start: int, end: int) -> pa.Table:
    b = cs.stage.buffer_size
    groups = range(start // b, (end - 1) // b + 1)
    parts = [generate_row_group(cs, g) for g in groups]
    for g, part in zip(groups, parts, strict=True):
        assert part.row_group == g
        assert (part.row_start, part.row_end) == cs.stage.row_group_bounds(g)
    table = pa.concat_tables([p.table for p in parts])
    offset = start - groups[0] * b
    return table.slice(offset, end - start)


@settings(max_examples=25, deadline=None)
@given(
    b1=st.integers(1, 32),
    b2=st.integers(1, 32),
    start=st.integers(0, DET_N - 1),
    length=st.integers(1, 40),
)
@pytest.mark.slow
def test_rows_identical_across_buffer_sizes(b1: int, b2: int, start: int, length: int) -> None:
    end = min(DET_N, start + length)
    via_b1 = rows_via_row_groups(det_stage(b1), start, end)
    via_b2 = rows_via_row_groups(det_stage(b2), start, end)
    direct = generate_rows(det_stage(b1), start, end).table
    assert via_b1.num_rows == end - start
    assert via_b1.to_pylist() == via_b2.to_pylist()
    assert direct.to_pylist() == via_b1.to_pylist()
    assert direct.schema == via_b2.schema


@settings(max_examples=25, deadline=None)
@given(
    start=st.integers(0, 150),
    cut=st.integers(0, 40),
    length=st.integers(1, 40),
)
@pytest.mark.slow
def test_a_range_split_anywhere_gives_the_same_rows(start: int, cut: int, length: int) -> None:
    cs = det_stage(16)
    end = start + length
    mid = min(start + cut, end)
    whole = generate_rows(cs, start, end).table
    parts = [generate_rows(cs, a, b).table for a, b in ((start, mid), (mid, end)) if b > a]
    assert pa.concat_tables(parts).to_pylist() == whole.to_pylist()
    # and again, later in the same process: no state carried from one call to the next
    assert generate_rows(cs, start, end).table.equals(whole)


def test_rows_do_not_depend_on_the_order_row_groups_run_in() -> None:
    cs = det_stage(25)
    forward = [generate_row_group(cs, g).table for g in range(cs.stage.num_row_groups)]
    backward = [generate_row_group(cs, g).table for g in reversed(range(cs.stage.num_row_groups))]
    assert [t.to_pylist() for t in forward] == [t.to_pylist() for t in reversed(backward)]


def table_digest(table: pa.Table) -> str:
    text = json.dumps(table.to_pylist(), default=str, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.slow
def test_rows_identical_in_another_process_with_another_hash_seed() -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_engine import det_stage, rows_via_row_groups, table_digest
        print(table_digest(rows_via_row_groups(det_stage(7), 30, 90)))
        """
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == table_digest(rows_via_row_groups(det_stage(13), 30, 90))


# ---------------------------------------------------------------------------------------------
# what decides a column's values: its column key (docs/config.md: workflow, stage, the column's
# config, its sampler parents, global row index), never the buffer size or the whole fingerprint

KEY_COLUMNS = [
    sampler("product", "category", {"values": ["laptop", "phone", "tablet"]}),
    sampler("issue", "subcategory", {"category": "product", "values": {"laptop": ["battery", "screen"], "phone": ["signal", "camera"], "tablet": ["charging"]}}),
    sampler("score", "uniform", {"low": 1, "high": 100}, convert_to="int"),
    sampler("id", "uuid", {}),
    sampler("wait", "poisson", {"mean": 12}),
    expression("line", "{{ product }}:{{ score }}"),
    expression("plain", "{{ id }}!"),
]  # fmt: skip


def key_table(columns: list[dict[str, Any]] = KEY_COLUMNS, **kw: Any) -> pa.Table:
    return rows_of(stage_of(columns, num_records=300, **kw))


def with_params(name: str, **params: Any) -> list[dict[str, Any]]:
    return [
        {**c, "params": {**c["params"], **params}} if c["name"] == name else c for c in KEY_COLUMNS
    ]


def changed(a: pa.Table, b: pa.Table) -> set[str]:
    return {n for n in a.column_names if a.column(n).to_pylist() != b.column(n).to_pylist()}


def test_editing_one_column_changes_only_it_and_what_depends_on_it() -> None:
    base = key_table()
    # `score` is independent: product, issue, id, wait and `plain` keep their values.
    edited = key_table(with_params("score", high=99))
    assert changed(base, edited) == {"score", "line"}
    # `product` is a subcategory parent: the child (and the expression over product) follow.
    edited = key_table(with_params("product", values=["laptop", "phone", "tablet"], weights=[1, 1, 2]))  # fmt: skip
    assert changed(base, edited) == {"product", "issue", "line"}


def test_buffer_size_and_fingerprint_do_not_change_values() -> None:
    a = stage_of(KEY_COLUMNS, num_records=300, buffer_size=300)
    b = stage_of(KEY_COLUMNS, num_records=300, buffer_size=7)
    assert a.fingerprint != b.fingerprint  # buffer_size is in the fingerprint...
    assert rows_of(a).equals(rows_of(b))  # ...but a row's values do not depend on it
    other_fp = compile_stage(a.workflow, "s", fingerprint="0" * 64)
    assert other_fp.keys == a.keys
    assert rows_of(other_fp).equals(rows_of(a))


def test_workflow_and_stage_names_seed_the_values() -> None:
    base = key_table()
    renamed_wf = key_table(workflow="other")
    renamed_stage = key_table(stage="other")
    samplers_ = {"product", "issue", "score", "id", "wait"}
    assert samplers_ <= changed(base, renamed_wf)
    assert samplers_ <= changed(base, renamed_stage)
    assert changed(renamed_wf, renamed_stage) >= samplers_


def test_changing_the_column_key_changes_that_column_only() -> None:
    cs = stage_of(KEY_COLUMNS, num_records=300)
    reseeded = dataclasses.replace(cs, keys={**cs.keys, "id": cs.keys["id"] ^ 1})
    assert changed(rows_of(cs), rows_of(reseeded)) == {"id", "plain"}
    reseeded = dataclasses.replace(cs, keys={**cs.keys, "score": cs.keys["score"] + 1})
    assert changed(rows_of(cs), rows_of(reseeded)) == {"score", "line"}


def test_same_config_under_two_column_names_draws_different_values() -> None:
    cols = [sampler(n, "uniform", {"low": 0, "high": 1}) for n in ("a", "b")]
    table = rows_of(stage_of(cols))
    assert table["a"].to_pylist() != table["b"].to_pylist()


# ---------------------------------------------------------------------------------------------
# expression columns


def test_expressions_render_over_other_columns() -> None:
    cs = stage_of(
        [
            sampler("who", "person", {}),
            sampler("product", "category", {"values": ["laptop", "phone"]}),
            sampler("n", "uniform", {"low": 1, "high": 9}, convert_to="int"),
            # refers to a column defined after it: dependency order, not config order
            expression("msg", "{{ who.first_name }} ({{ who.age }}) wants {{ n }} x {{ product }}; {{ shout }}"),
            expression("shout", "{{ product | upper }}"),
        ],
        num_records=50,
    )  # fmt: skip
    table = rows_of(cs)
    for r in table.to_pylist():
        w = r["who"]
        assert r["shout"] == r["product"].upper()
        assert r["msg"] == f"{w['first_name']} ({w['age']}) wants {r['n']} x {r['product']}; {r['shout']}"  # fmt: skip


def test_expression_dtypes() -> None:
    cs = stage_of(
        [
            sampler("n", "uniform", {"low": 1, "high": 9}, convert_to="int"),
            expression("as_int", "{{ n * 3 }}", dtype="int"),
            expression("as_float", "{{ n / 4 }}", dtype="float"),
            expression("as_bool", "{{ n > 4 }}", dtype="bool"),
            expression("as_yes", "{{ 'yes' if n is odd else 'no' }}", dtype="bool"),
            expression("as_str", "{{ n }}"),
        ]
    )
    table = rows_of(cs)
    assert table.schema.types[1:] == [pa.int64(), pa.float64(), pa.bool_(), pa.bool_(), pa.string()]
    for r in table.to_pylist():
        n = r["n"]
        assert r["as_int"] == 3 * n
        assert r["as_float"] == n / 4
        assert r["as_bool"] is (n > 4)
        assert r["as_yes"] is (n % 2 == 1)
        assert r["as_str"] == str(n)


def test_a_failing_row_is_dropped_with_its_reason() -> None:
    cs = stage_of(
        [
            sampler("x", "uniform", {"low": 1, "high": 5}, convert_to="int"),
            expression("inv", "{{ 10 // (x - 3) }}", dtype="int"),
            expression("num", "{{ 'many' if x == 5 else x }}", dtype="int"),
        ],
        num_records=200,
    )
    result = generate_rows(cs, 0, 200)
    xs = rows_of(stage_of([sampler("x", "uniform", {"low": 1, "high": 5}, convert_to="int")], num_records=200))["x"].to_pylist()  # fmt: skip
    assert result.table["x"].to_pylist() == [x for x in xs if x not in (3, 5)]
    assert result.dropped == {"inv: expression": xs.count(3), "num: expression": xs.count(5)}
    assert result.stats()["dropped_rows"] == xs.count(3) + xs.count(5)
    # Every dropped row is recorded, in row order, with its column and message.
    drops = result.drops_table().to_pylist()
    assert [d["row"] for d in drops] == [i for i, x in enumerate(xs) if x in (3, 5)]
    for d in drops:
        if xs[d["row"]] == 3:
            assert d["column"] == "inv"
            assert d["message"] == "ZeroDivisionError: integer division or modulo by zero"
        else:
            assert (d["column"], d["message"]) == ("num", "cannot convert 'many' to int")
        assert (d["reason"], d["status"], d["row_group"]) == ("expression", None, -1)


def test_undefined_attribute_errors_name_the_column() -> None:
    cs = stage_of(
        [sampler("who", "person", {}), expression("bad_col", "{{ who.middle_name }}")],
        num_records=5,
    )
    with pytest.raises(GenerationError, match=r"'bad_col'.*middle_name"):
        rows_of(cs)


def test_unknown_name_is_a_config_error_naming_the_column() -> None:
    with pytest.raises(WorkflowConfigError) as info:
        stage_of([sampler("a", "uuid", {}), expression("greeting", "{{ a }} {{ nme }}")])
    text = str(info.value)
    assert "stages[0].columns[1]" in text and "'greeting'" in text and "'nme'" in text


@pytest.mark.parametrize(
    "expr",
    [
        "{{ ''.__class__ }}",
        "{{ a.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ a.__init__.__globals__ }}",
    ],
)
def test_sandbox_blocks_attribute_access(expr: str) -> None:
    cs = stage_of([sampler("a", "uuid", {}), expression("evil", expr)], num_records=3)
    with pytest.raises(GenerationError, match=r"'evil'.*(SecurityError|unsafe)"):
        rows_of(cs)


# ---------------------------------------------------------------------------------------------
# post_batch processors


def test_drop_flag_drop_columns_and_rename() -> None:
    columns = [
        sampler("secret", "uniform", {"low": 1, "high": 9}, convert_to="int", drop=True),
        sampler("tmp_a", "uuid", {}),
        sampler("tmp_b", "uuid", {}),
        sampler("keep", "category", {"values": ["k"]}),
        expression("uses_secret", "{{ secret * 2 }}", dtype="int"),
        expression("uses_tmp", "{{ tmp_a[:4] }}"),
    ]
    cs = stage_of(
        columns,
        post_batch=[
            {"processor_type": "drop_columns", "column_names": ["tmp_*"]},
            {"processor_type": "rename", "mapping": {"keep": "kept", "uses_secret": "double"}},
        ],
    )
    table = rows_of(cs)
    assert table.column_names == ["kept", "double", "uses_tmp"]
    assert table.column_names == output_columns(cs.stage, [])
    # The dropped columns still fed the templates. (An added column changes no other column's
    # values, so the same stage plus a copy of `secret` shows what it was.)
    plain = rows_of(stage_of([*columns, expression("secret_copy", "{{ secret }}", dtype="int")]))
    assert "secret" not in plain.column_names
    assert table["double"].to_pylist() == [2 * s for s in plain["secret_copy"].to_pylist()]
    assert table["uses_tmp"].to_pylist() == [t[:4] for t in plain["tmp_a"].to_pylist()]
    assert set(table["kept"].to_pylist()) == {"k"}


def test_post_batch_only_renames_and_drops_never_changes_values() -> None:
    columns = [sampler("a", "uuid", {}), sampler("b", "poisson", {"mean": 3})]
    bare = rows_of(stage_of(columns))
    renamed = rows_of(
        stage_of(columns, post_batch=[{"processor_type": "rename", "mapping": {"a": "z"}}])
    )
    assert renamed.column_names == ["z", "b"]
    assert renamed["z"].equals(bare["a"]) and renamed["b"].equals(bare["b"])


# ---------------------------------------------------------------------------------------------
# row-group ranges


def test_last_row_group_is_short() -> None:
    cs = stage_of(
        [sampler("x", "uniform", {"low": 0, "high": 1}), expression("y", "{{ x }}")],
        num_records=25,
        buffer_size=10,
    )
    assert cs.stage.num_row_groups == 3
    assert [cs.stage.row_group_bounds(g) for g in range(3)] == [(0, 10), (10, 20), (20, 25)]
    results = [generate_row_group(cs, g) for g in range(3)]
    assert [r.table.num_rows for r in results] == [10, 10, 5]
    assert [r.planned for r in results] == [10, 10, 5]
    assert results[2].stats()["rows"] == 5 and results[2].stats()["planned_rows"] == 5
    assert pa.concat_tables(r.table for r in results).equals(generate_rows(cs, 0, 25).table)
    for bad in (3, -1):
        with pytest.raises(IndexError, match="outside"):
            generate_row_group(cs, bad)


def test_exact_multiple_has_no_short_group() -> None:
    cs = stage_of([sampler("x", "uuid", {})], num_records=30, buffer_size=10)
    assert cs.stage.num_row_groups == 3
    assert generate_row_group(cs, 2).table.num_rows == 10


# ---------------------------------------------------------------------------------------------
# memory: row group by row group, O(row groups in flight), not O(rows)

MEM_ROWS, MEM_BUFFER = 60_000, 3_000


@pytest.mark.slow
def test_memory_stays_bounded_by_one_row_group() -> None:
    cs = stage_of(
        [
            sampler("cat", "category", {"values": ["a", "b", "c"], "weights": [1, 2, 3]}),
            sampler("x", "uniform", {"low": 0, "high": 100}, convert_to="int"),
            sampler("g", "gaussian", {"mean": 0, "stddev": 1}),
            expression("e", "{{ cat }}-{{ x }}"),
        ],
        num_records=MEM_ROWS,
        buffer_size=MEM_BUFFER,
    )
    groups = cs.stage.num_row_groups
    assert groups == 20
    generate_row_group(cs, 0)  # warm caches (compiled templates, imports) outside the trace
    gc.collect()
    arrow_base = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        first = generate_row_group(cs, 0)
        one_peak = tracemalloc.get_traced_memory()[1]
        one_table = first.table.nbytes
        del first
        tracemalloc.reset_peak()
        rows = 0
        arrow_after: list[int] = []
        for g in range(groups):
            result = generate_row_group(cs, g)
            rows += result.table.num_rows
            del result
            arrow_after.append(pa.total_allocated_bytes() - arrow_base)
        all_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == MEM_ROWS
    # Python-side peak over all 20 row groups is about that of one (2x: allocator noise).
    assert all_peak < 2 * one_peak, (all_peak, one_peak)
    # and far below what holding every row would take
    assert all_peak * 5 < one_peak * groups
    # Arrow buffers are released after each row group: nothing accumulates.
    assert max(arrow_after) < one_table, (arrow_after, one_table)
