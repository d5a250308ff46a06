"""Mutated configs never reach a traceback: `dd-assets validate` (and `preview`, for what
validates) answers exit 0, or exit 1 with exactly one `error:` line, and writes nothing.

Hypothesis mutates the example workflows: values replaced by nasty ones (wrong types, huge
numbers, names with newlines, templates that blow up), keys dropped or added, list items
duplicated; and, on the text, flipped bytes, duplicated lines and truncation. Everything runs
in-process (cli.main), so thousands of examples take seconds; a few subprocess runs check the
real command's line and exit code in test_bad_input.py."""

from __future__ import annotations

import copy
import datetime as dt
import io
import os
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from dd_assets import cli
from dd_assets.config import load_workflow, seed_upstreams

REPO = Path(__file__).resolve().parents[2]
BASES = {
    name: yaml.safe_load((REPO / "examples" / name).read_text())
    for name in ("quickstart.yaml", "chain.yaml", "llm-chain.yaml")
}
for _dd in ("samplers_no_person", "llm"):  # the `data_designer:` stage form, inline
    BASES[_dd] = {
        "name": "dd",
        "providers": {"mock": {"endpoint": "http://127.0.0.1:9/v1", "api_key": "DD_FUZZ_KEY"}},
        "stages": [
            {
                "name": "s",
                "num_records": 12,
                "buffer_size": 5,
                "data_designer": yaml.safe_load(
                    (REPO / "tests" / "fixtures" / "datadesigner" / f"{_dd}.yaml").read_text()
                )["data_designer"],
            }
        ],
    }
# 1,000 per run: the suite's longest test at 2,000 (412-544 s at load 10-15, a fifth of the
# suite's time), for the CI time bound (docs/decisions.md). Each run draws new examples (no fixed
# seed), so CI runs add up to thousands; a failure prints its example and how to reproduce it.
# DD_FUZZ_EXAMPLES=20000 for a long hunt.
EXAMPLES = int(os.environ.get("DD_FUZZ_EXAMPLES", "1000"))

# libyaml's emitter: the pure-Python one was half of each example's time (same YAML, other
# line breaks at most).
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

NAMES = ["tickets", "reviews", "replies", "moods", "threads", "digest", "questions", "a", "b"]
TEMPLATES = [
    "{{ a }}",
    "{{ 'x' * 300000000 }}",
    "{{ 10 ** 10 ** 10 }}",
    "{% for i in range(100000000) %}x{% endfor %}",
    "{{ ",
    "{{ unknown_col }}",
    "{{ stars }}",
    "{{ product }}",
    "{{ review_id }}",
    "{{ ''.__class__ }}",
]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**18, max_value=10**400),
    st.integers(min_value=-(10**12), max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(NAMES),
    st.sampled_from([n + "\n" for n in NAMES] + ["a b", "é", "1x", "", "*", "stars"]),
    st.sampled_from(TEMPLATES),
    st.sampled_from(
        [
            "sampler",
            "expression",
            "llm-text",
            "category",
            "uuid",
            "datetime",
            "row_group",
            "sample",
            "rename",
            "dedupe",
            "filter",
            "drop_columns",
            "schema_transform",
            "seeds/products.csv",
            "seeds",
            "/dev/zero",
            "missing.parquet",
        ]
    ),
    st.datetimes(
        min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=st.none()
    ),
    st.datetimes(
        min_value=dt.datetime(1, 1, 2),
        max_value=dt.datetime(9999, 12, 30),
        timezones=st.just(dt.UTC),
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(NAMES), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*path, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    only = os.environ.get("DD_FUZZ_BASES")  # e.g. "llm,samplers_no_person" to focus a run
    base = draw(st.sampled_from(sorted(only.split(",") if only else BASES)))
    data = copy.deepcopy(BASES[base])
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(data)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "add", "duplicate"]))
        if not path:
            if op == "replace":
                data = draw(values)
            continue
        parent, key = _get(data, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = draw(values)
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.sampled_from([*NAMES, "buffer_size", "seed", "columns", "name"]))] = (
                draw(values)
            )
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
    text = yaml.dump(data, Dumper=DUMPER, sort_keys=False, allow_unicode=True).encode()
    edit = draw(st.sampled_from(["none", "none", "flip", "dupline", "truncate"]))
    if edit == "flip" and text:
        i = draw(st.integers(0, len(text) - 1))
        text = text[:i] + bytes([draw(st.integers(0, 255))]) + text[i + 1 :]
    elif edit == "dupline":
        lines = text.splitlines(keepends=True)
        i = draw(st.integers(0, len(lines) - 1))
        text = b"".join([*lines[: i + 1], lines[i], *lines[i + 1 :]])
    elif edit == "truncate":
        text = text[: draw(st.integers(0, len(text)))]
    return base, text


def _generation_type_mapping() -> tuple[str, bytes]:
    """A case the fuzz once found, checked every run: a model config's generation_type given as
    a mapping reached a TypeError (unhashable) in the DataDesigner mapping."""
    data = copy.deepcopy(BASES["llm"])
    for model in data["stages"][0]["data_designer"]["model_configs"]:
        model.setdefault("inference_parameters", {})["generation_type"] = {"a": 1}
    return "llm", yaml.dump(data, Dumper=DUMPER, sort_keys=False, allow_unicode=True).encode()


def _line_breaks_in_a_name(where: str) -> tuple[str, bytes]:
    """A case the fuzz once found: a `\\r` in a `data_designer:` file path printed the error on
    two lines; the same for other line breaks, and in a column name."""
    data = copy.deepcopy(BASES["quickstart.yaml"])
    stage = data["stages"][0]
    if where == "path":
        stage["data_designer"] = "dd\rconfig\x85.yaml"
        del stage["columns"]
    else:
        stage["columns"][0]["name"] = "a\u2028b\nc\rd"
    return "quickstart.yaml", yaml.dump(data, Dumper=DUMPER, sort_keys=False).encode()


def _run(argv: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    return code, err.getvalue()


@pytest.mark.slow
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=mutated())
@example(case=_generation_type_mapping())
@example(case=_line_breaks_in_a_name("path"))
@example(case=_line_breaks_in_a_name("column"))
def test_mutated_configs_fail_with_one_error_line_and_write_nothing(
    case: tuple[str, bytes], fuzz_dir: Path
) -> None:
    _, text = case
    cfg = fuzz_dir / "wf.yaml"
    cfg.write_bytes(text)
    code, err = _run(["validate", str(cfg)])
    assert code in (0, 1), err
    if code == 1:
        assert [line for line in err.splitlines() if not line.startswith("  ")] == [
            err.splitlines()[0]
        ], err
        assert err.startswith("error: "), err
    else:
        # What validates must also generate (or fail cleanly): preview runs the engine.
        for stage in load_workflow(cfg).stages:
            if stage.model_aliases or seed_upstreams(stage):
                continue  # no endpoint here; stage seeds need data on disk
            code, err = _run(["preview", str(cfg), "--stage", stage.name, "-n", "3"])
            assert code in (0, 1), err
            if code == 1:
                assert err.startswith("error: ") and err.count("\nerror:") == 0, err
    assert "Traceback" not in err
    assert sorted(p.name for p in fuzz_dir.iterdir()) == ["data", "seeds", "wf.yaml"]
    assert not any((fuzz_dir / "data").iterdir())


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Any:
    d = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(REPO / "examples" / "seeds", d / "seeds")
    (d / "data").mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("DD_ASSETS_ROOT", str(d / "data"))
    mp.setenv("DAGSTER_HOME", str(d / "dagster"))
    yield d
    mp.undo()
