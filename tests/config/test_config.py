"""Workflow config: YAML loading, every column and sampler type, and the errors a user sees
(every one at once, each with its YAML path and line)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

from dd_assets.config import (
    LLMCodeColumnConfig,
    LLMJudgeColumnConfig,
    LLMStructuredColumnConfig,
    LLMTextColumnConfig,
    ModelConfig,
    SamplerColumnConfig,
    StageConfig,
    WorkflowConfig,
    WorkflowConfigError,
    load_workflow,
    loads_workflow,
)
from dd_assets.config.samplers import (
    BernoulliSamplerParams,
    CategorySamplerParams,
    DatetimeSamplerParams,
    GaussianSamplerParams,
    PersonFromFakerSamplerParams,
    PoissonSamplerParams,
    SubcategorySamplerParams,
    UniformSamplerParams,
    UUIDSamplerParams,
)

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
DD_ASSETS = str(Path(sys.executable).with_name("dd-assets"))


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing `needle`."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} not in the test YAML"
    return hits[occurrence - 1]


def errors_of(text: str) -> WorkflowConfigError:
    with pytest.raises(WorkflowConfigError) as info:
        loads_workflow(text, source="wf.yaml")
    return info.value


def one_stage(columns_yaml: str, models_yaml: str = "") -> str:
    """A one-stage workflow around an indented `columns:` body."""
    head = "name: w\n" + models_yaml + "stages:\n  - name: s\n    num_records: 10\n    columns:\n"
    return head + textwrap.indent(textwrap.dedent(columns_yaml).strip("\n"), "      ") + "\n"


MODELS = """models:
  writer:
    base_url: https://integrate.api.nvidia.com/v1
    model: meta/llama-3.1-8b-instruct
    api_key_env: NVIDIA_API_KEY
"""


# --------------------------------------------------------------------------------------------
# Loading


def test_quickstart_loads() -> None:
    wf = load_workflow(QUICKSTART)
    assert wf.name == "quickstart"
    assert [s.name for s in wf.stages] == ["tickets"]
    st = wf.stage("tickets")
    assert (st.num_records, st.buffer_size, st.num_row_groups) == (2000, 250, 8)
    assert st.row_group_bounds(7) == (1750, 2000)
    types = {c.name: (c.column_type, getattr(c, "sampler_type", None)) for c in st.columns}
    assert types == {
        "ticket_id": ("sampler", "uuid"),
        "product": ("sampler", "category"),
        "issue": ("sampler", "subcategory"),
        "customer": ("sampler", "person_from_faker"),
        "wait_minutes": ("sampler", "poisson"),
        "satisfaction": ("sampler", "uniform"),
        "is_priority": ("sampler", "bernoulli"),
        "opened_at": ("sampler", "datetime"),
        "summary": ("expression", None),
        "escalate": ("expression", None),
    }
    assert st.column("summary").required_columns == {"customer", "issue", "product"}
    assert st.column("escalate").dtype == "bool"
    assert st.column("issue").required_columns == {"product"}
    with pytest.raises(KeyError, match="no stage 'nope'"):
        wf.stage("nope")
    with pytest.raises(IndexError):
        st.row_group_bounds(8)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(WorkflowConfigError, match="config file not found"):
        load_workflow(tmp_path / "absent.yaml")


def test_invalid_yaml_reports_line() -> None:
    err = errors_of("name: w\nstages:\n  - name: [unclosed\n")
    assert len(err.issues) == 1
    assert "not valid YAML" in err.issues[0].message
    assert err.issues[0].line is not None


SAMPLERS = [
    (
        "category",
        "params: {values: [a, b, c], weights: [1, 2.5, 0]}",
        CategorySamplerParams,
        {"values": ["a", "b", "c"], "weights": [1.0, 2.5, 0.0]},
    ),
    (
        "uniform",
        "params: {low: -2, high: 7.5, decimal_places: 2}",
        UniformSamplerParams,
        {"low": -2.0, "high": 7.5, "decimal_places": 2},
    ),
    (
        "gaussian",
        "params: {mean: 10, stddev: 3}",
        GaussianSamplerParams,
        {"mean": 10.0, "stddev": 3.0},
    ),
    ("bernoulli", "params: {p: 0.25}", BernoulliSamplerParams, {"p": 0.25}),
    ("poisson", "params: {mean: 4.5}", PoissonSamplerParams, {"mean": 4.5}),
    (
        "uuid",
        "params: {prefix: 'X-', short_form: true, uppercase: true}",
        UUIDSamplerParams,
        {"prefix": "X-", "short_form": True, "uppercase": True},
    ),
    (
        "datetime",
        "params: {start: '2026-01-01', end: '2026-03-01T12:00:00', unit: h}",
        DatetimeSamplerParams,
        {"start": dt.datetime(2026, 1, 1), "end": dt.datetime(2026, 3, 1, 12), "unit": "h"},
    ),
    (
        "person_from_faker",
        "params: {locale: en_GB, sex: Female, age_range: [30, 40], city: Leeds}",
        PersonFromFakerSamplerParams,
        {"locale": "en_GB", "sex": "Female", "age_range": (30, 40), "city": "Leeds"},
    ),
    (
        "person",
        "params: {age_range: [20, 21]}",
        PersonFromFakerSamplerParams,
        {"age_range": (20, 21), "locale": "en_US"},
    ),
]


@pytest.mark.parametrize(
    ("sampler_type", "params", "cls", "expected"), SAMPLERS, ids=[s[0] for s in SAMPLERS]
)
def test_every_sampler_type(sampler_type: str, params: str, cls: type, expected: dict) -> None:
    wf = loads_workflow(
        one_stage(
            f"- name: c\n  column_type: sampler\n  sampler_type: {sampler_type}\n  {params}\n"
        )
    )
    col = wf.stages[0].columns[0]
    assert isinstance(col, SamplerColumnConfig)
    assert isinstance(col.params, cls)
    # `person` (DataDesigner's managed-dataset sampler) is an alias of person_from_faker.
    assert col.sampler_type == ("person_from_faker" if sampler_type == "person" else sampler_type)
    for key, value in expected.items():
        assert getattr(col.params, key) == value, key


def test_unquoted_yaml_dates_are_accepted() -> None:
    wf = loads_workflow(
        one_stage(
            "- {name: d, column_type: sampler, sampler_type: datetime, params: {start: 2026-01-01, end: 2026-02-01}}"
        )
    )
    assert wf.stages[0].columns[0].params.start == dt.datetime(2026, 1, 1)


def test_subcategory_params() -> None:
    wf = loads_workflow(
        one_stage(
            """
            - {name: p, column_type: sampler, sampler_type: category, params: {values: [a, b]}}
            - name: c
              column_type: sampler
              sampler_type: subcategory
              params: {category: p, values: {a: [x, y], b: [z]}}
            """
        )
    )
    col = wf.stages[0].column("c")
    assert isinstance(col.params, SubcategorySamplerParams)
    assert col.params.category == "p"
    assert col.params.values == {"a": ["x", "y"], "b": ["z"]}
    assert col.required_columns == {"p"}


def test_datadesigner_snake_case_column_types_are_normalised() -> None:
    wf = loads_workflow(
        one_stage(
            """
            - {name: a, column_type: sampler, sampler_type: uuid, params: {}}
            - {name: t, column_type: llm_text, model_alias: writer, prompt: "about {{ a }}"}
            - {name: k, column_type: llm_code, model_alias: writer, prompt: "code for {{ t }}", code_lang: python}
            """,
            MODELS,
        )
    )
    cols = wf.stages[0].columns
    assert [c.column_type for c in cols] == ["sampler", "llm-text", "llm-code"]
    assert isinstance(cols[1], LLMTextColumnConfig)


def test_every_llm_column_type_validates_with_a_model_alias() -> None:
    wf = loads_workflow(
        one_stage(
            """
            - {name: topic, column_type: sampler, sampler_type: category, params: {values: [cats, dogs]}}
            - name: text
              column_type: llm-text
              model_alias: writer
              system_prompt: "You write about {{ topic }}."
              prompt: "Write about {{ topic }}."
            - name: code
              column_type: llm-code
              model_alias: writer
              code_lang: sql:sqlite
              prompt: "A query about {{ topic }}"
            - name: info
              column_type: llm-structured
              model_alias: writer
              prompt: "Facts on {{ text }}"
              output_format:
                type: object
                properties: {legs: {type: integer}}
            - name: verdict
              column_type: llm-judge
              model_alias: writer
              prompt: "Judge {{ text }} and {{ code }}"
              scores:
                - name: accuracy
                  description: Is it right?
                  options: {1: wrong, 2: mostly, 3: right}
            """,
            MODELS,
        )
    )
    st = wf.stages[0]
    assert isinstance(st.column("text"), LLMTextColumnConfig)
    assert isinstance(st.column("code"), LLMCodeColumnConfig)
    assert isinstance(st.column("info"), LLMStructuredColumnConfig)
    assert isinstance(st.column("verdict"), LLMJudgeColumnConfig)
    assert st.column("verdict").scores[0].options == {1: "wrong", 2: "mostly", 3: "right"}
    assert st.model_aliases == {"writer"}
    assert all(c.is_llm for c in st.columns[1:]) and not st.columns[0].is_llm
    # Dependencies come from both the prompt and the system prompt.
    assert st.column("text").required_columns == {"topic"}
    assert st.column("verdict").required_columns == {"text", "code"}
    assert wf.models["writer"].api_key_env == "NVIDIA_API_KEY"


# --------------------------------------------------------------------------------------------
# Errors: path + line, one case at a time


def _col_body(n: int) -> str:
    return "".join(
        f"      - {{name: c{i}, column_type: sampler, sampler_type: uniform, params: {{low: 0, high: 1}}}}\n"
        for i in range(n)
    )


ERROR_CASES = {
    "unknown key in a column": (
        one_stage(
            """
            - {name: a, column_type: sampler, sampler_type: uuid, params: {}}
            - name: b
              column_type: expression
              expresion: "{{ a }}"
            """
        ),
        "stages[0].columns[1].expresion",
        "expresion:",
        "unknown key",
    ),
    "unknown top-level key": (
        "nmae: x\n"
        + one_stage("- {name: a, column_type: sampler, sampler_type: uuid, params: {}}"),
        "nmae",
        "nmae:",
        "unknown key",
    ),
    "unknown column reference": (
        one_stage(
            """
            - {name: a, column_type: sampler, sampler_type: uuid, params: {}}
            - {name: b, column_type: sampler, sampler_type: uuid, params: {}}
            - {name: c, column_type: expression, expr: "{{ a }} {{ bb }}"}
            """
        ),
        "stages[0].columns[2]",
        "name: c,",
        "unknown column 'bb'",
    ),
    "cycle": (
        one_stage(
            """
            - {name: a, column_type: expression, expr: "{{ b }}"}
            - {name: b, column_type: expression, expr: "{{ a }}"}
            """
        ),
        "stages[0].columns",
        "columns:",
        "cycle",
    ),
    "duplicate column name": (
        one_stage(
            """
            - {name: a, column_type: sampler, sampler_type: uuid, params: {}}
            - {name: a, column_type: sampler, sampler_type: bernoulli, params: {p: 0.5}}
            """
        ),
        "stages[0].columns[1].name",
        "bernoulli",
        "duplicate column name 'a'",
    ),
    "duplicate stage name": (
        "name: w\nstages:\n"
        "  - name: s\n    num_records: 1\n    columns:\n"
        + _col_body(1)
        + "  - name: s\n    num_records: 1\n    columns:\n"
        + _col_body(1),
        "stages[1].name",
        ("name: s", 2),
        "duplicate stage name 's'",
    ),
    "stage named like another stage's final output": (
        "name: w\nstages:\n"
        "  - name: s\n    num_records: 1\n    columns:\n"
        + _col_body(1)
        + "    finalize: [{processor_type: dedupe, columns: [c0]}]\n"
        + "  - name: s_final\n    num_records: 1\n    columns:\n"
        + _col_body(1),
        "stages[1].name",
        "name: s_final",
        "stage name 's_final' is the name of stage 's''s final output",
    ),
    "unknown model alias": (
        one_stage(
            """
            - {name: a, column_type: sampler, sampler_type: uuid, params: {}}
            - name: t
              column_type: llm-text
              prompt: "{{ a }}"
              model_alias: wrtier
            """,
            MODELS,
        ),
        "stages[0].columns[1].model_alias",
        "model_alias: wrtier",
        "unknown model alias 'wrtier'",
    ),
    "unknown seed stage": (
        "name: w\nstages:\n  - name: s\n    num_records: 1\n    seed:\n      stage: ghost\n    columns:\n"
        + _col_body(1),
        "stages[0].seed.stage",
        "stage: ghost",
        "unknown stage 'ghost'",
    ),
    "subcategory parent not a category": (
        one_stage(
            """
            - {name: p, column_type: sampler, sampler_type: uniform, params: {low: 0, high: 1}}
            - name: c
              column_type: sampler
              sampler_type: subcategory
              params:
                category: p
                values: {a: [x]}
            """
        ),
        "stages[0].columns[1].params.category",
        "category: p",
        "must be a sampler with sampler_type: category",
    ),
    "weights length": (
        one_stage(
            """
            - name: p
              column_type: sampler
              sampler_type: category
              params:
                values: [a, b]
                weights: [1]
            """
        ),
        "stages[0].columns[0].params",
        "params:",
        "weights has 1 entries but values has 2",
    ),
    "negative weights": (
        one_stage(
            "- {name: p, column_type: sampler, sampler_type: category, params: {values: [a, b], weights: [1, -1]}}"
        ),
        "stages[0].columns[0].params",
        "weights: [1, -1]",
        "non-negative",
    ),
    "bad subcategory parent field type keeps its own path": (
        one_stage(
            """
            - {name: p, column_type: sampler, sampler_type: category, params: {values: [a]}}
            - name: c
              column_type: sampler
              sampler_type: subcategory
              params:
                category: [p]
                values: {a: [x]}
            """
        ),
        "stages[0].columns[1].params.category",
        "category: [p]",
        "valid string",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_error_names_yaml_path_and_line(case: str) -> None:
    text, path, marker, message = ERROR_CASES[case]
    needle, occurrence = marker if isinstance(marker, tuple) else (marker, 1)
    err = errors_of(text)
    hits = [i for i in err.issues if i.path == path]
    assert hits, f"no issue at {path}; got {[(i.path, i.message) for i in err.issues]}"
    assert any(message in i.message for i in hits), [i.message for i in hits]
    assert hits[0].line == line_of(text, needle, occurrence)
    # The rendered error names the file, line and path, as `dd-assets validate` prints it.
    assert f"wf.yaml:{hits[0].line}: {path}: " in str(err)


MULTI = """\
name: bad
models:
  writer:
    base_url: https://api.example.com/v1
    model: some-model
stages:
  - name: a
    num_records: 10
    colour: red
    columns:
      - name: x
        column_type: sampler
        sampler_type: category
        params: {values: [p, q]}
      - name: y
        column_type: expression
        expr: "{{ missing }}"
      - name: z1
        column_type: expression
        expr: "{{ z2 }}"
      - name: z2
        column_type: expression
        expr: "{{ z1 }}"
      - name: t
        column_type: llm-text
        model_alias: nope
        prompt: "hi {{ x }}"
      - name: x
        column_type: sampler
        sampler_type: uuid
        params: {}
  - name: a
    num_records: 10
    seed: {stage: ghost}
    columns:
      - {name: k, column_type: sampler, sampler_type: uniform, params: {low: 0, high: 1}}
  - name: c
    num_records: 10
    columns:
      - name: w
        column_type: sampler
        sampler_type: category
        params: {values: [p, q], weights: [1, -1]}
      - name: sub
        column_type: sampler
        sampler_type: subcategory
        params: {category: k2, values: {p: [1]}}
      - name: k2
        column_type: sampler
        sampler_type: uniform
        params: {low: 0, high: 1}
      - {name: e, column_type: expression, expr: "{{ undefined_thing }}"}
  - name: d
    num_records: 10
    seed: {stage: c}
    columns:
      - {name: f, column_type: expression, expr: "{{ w }} {{ also_missing }}"}
"""

MULTI_EXPECTED = {
    ("stages[0].colour", "colour: red", 1, "unknown key"),
    ("stages[0].columns[1]", "name: y", 1, "unknown column 'missing'"),
    ("stages[0].columns", "columns:", 1, "['z1', 'z2'] depend on each other in a cycle"),
    ("stages[0].columns[4].model_alias", "model_alias: nope", 1, "unknown model alias 'nope'"),
    ("stages[0].columns[5].name", "name: x", 2, "duplicate column name 'x'"),
    ("stages[1].name", "name: a", 2, "duplicate stage name 'a'"),
    ("stages[1].seed.stage", "seed: {stage: ghost}", 1, "unknown stage 'ghost'"),
    ("stages[2].columns[0].params", "weights: [1, -1]", 1, "non-negative"),
    # Checked although column w of the same stage is structurally broken:
    (
        "stages[2].columns[1].params.category",
        "category: k2",
        1,
        "must be a sampler with sampler_type: category",
    ),
    ("stages[2].columns[3]", "undefined_thing", 1, "unknown column 'undefined_thing'"),
    # ... and so is stage d, seeded from that stage: its seed columns are still known.
    ("stages[3].columns[0]", "also_missing", 1, "unknown column 'also_missing'"),
}


def test_all_errors_reported_at_once() -> None:
    err = errors_of(MULTI)
    got = [(i.path, i.message, i.line) for i in err.issues]
    for path, needle, occ, message in MULTI_EXPECTED:
        match = [g for g in got if g[0] == path and message in g[1]]
        assert match, f"missing {path}: {message}; got {got}"
        assert match[0][2] == line_of(MULTI, needle, occ), (path, match[0])
    # Nothing else: in particular no made-up "unknown stage 'c'" for stage d, whose upstream
    # exists but failed structurally, and no second issue for the broken column w.
    assert len(got) == len(MULTI_EXPECTED), got
    assert str(err).startswith(f"{len(MULTI_EXPECTED)} errors in workflow config wf.yaml")


def test_duplicate_column_names_are_not_reported_as_a_cycle() -> None:
    err = errors_of(
        one_stage(
            """
            - {name: a, column_type: sampler, sampler_type: uuid, params: {}}
            - {name: a, column_type: sampler, sampler_type: uuid, params: {}}
            """
        )
    )
    assert [i.path for i in err.issues] == ["stages[0].columns[1].name"]


def test_self_reference_does_not_hide_a_cycle() -> None:
    err = errors_of(
        one_stage(
            """
            - {name: a, column_type: expression, expr: "{{ a }}"}
            - {name: b, column_type: expression, expr: "{{ c }}"}
            - {name: c, column_type: expression, expr: "{{ b }}"}
            """
        )
    )
    messages = [i.message for i in err.issues]
    assert any("'a' refers to itself" in m for m in messages)
    assert any("['b', 'c'] depend on each other in a cycle" in m for m in messages)


def test_broken_seed_elsewhere_keeps_reference_checks() -> None:
    text = (
        "name: w\nstages:\n"
        "  - name: up\n    num_records: 1\n    seed: {stage: ghost}\n    columns:\n" + _col_body(1)
        + "  - name: other\n    num_records: 1\n    columns:\n"
        "      - {name: e, column_type: expression, expr: '{{ nope }}'}\n"
    )  # fmt: skip
    paths = {i.path for i in errors_of(text).issues}
    assert paths == {"stages[0].seed.stage", "stages[1].columns[0]"}


def test_row_group_seed_must_match_buffer_and_records() -> None:
    text = (
        "name: w\nstages:\n"
        "  - name: a\n    num_records: 100\n    buffer_size: 10\n    columns:\n" + _col_body(1)
        + "  - name: b\n    num_records: 50\n    buffer_size: 10\n    seed: {stage: a, mode: row_group}\n"
        "    columns:\n      - {name: e, column_type: expression, expr: '{{ c0 }}'}\n"
    )  # fmt: skip
    err = errors_of(text)
    assert [(i.path, i.line) for i in err.issues] == [
        ("stages[1].num_records", line_of(text, "num_records: 50"))
    ]
    # mode: sample lifts the constraint, and seed columns are known to the downstream stage.
    wf = loads_workflow(text.replace("mode: row_group", "mode: sample"))
    assert [s.name for s in wf.upstreams_of(wf.stage("b"))] == ["a"]


def test_seed_cycle_is_reported() -> None:
    text = (
        "name: w\nstages:\n"
        "  - name: a\n    num_records: 1\n    seed: {stage: b, mode: sample}\n    columns:\n" + _col_body(1)
        + "  - name: b\n    num_records: 1\n    seed: {stage: a, mode: sample}\n    columns:\n" + _col_body(1)
    )  # fmt: skip
    err = errors_of(text)
    assert {i.path for i in err.issues} == {"stages[0].seed", "stages[1].seed"}
    assert all("cycle" in i.message for i in err.issues)


# --------------------------------------------------------------------------------------------
# CLI


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DD_ASSETS, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_cli_validate_bad_file_prints_every_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MULTI, encoding="utf-8")
    proc = _run("validate", str(bad), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    for path, needle, occ, message in MULTI_EXPECTED:
        assert f"{bad}:{line_of(MULTI, needle, occ)}: {path}: " in proc.stderr, (path, proc.stderr)
        assert message in proc.stderr
    assert f"{len(MULTI_EXPECTED)} errors" in proc.stderr


def test_cli_validate_good_file(tmp_path: Path) -> None:
    from dd_assets.config.fingerprint import workflow_fingerprints

    proc = _run("validate", str(QUICKSTART), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "ok" in proc.stdout and "tickets" in proc.stdout
    fp = workflow_fingerprints(load_workflow(QUICKSTART))["tickets"].short
    assert fp in proc.stdout
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Python-constructed configs


def _stage(name: str = "s", **kw: object) -> StageConfig:
    cols = kw.pop(
        "columns",
        [{"name": "a", "column_type": "sampler", "sampler_type": "uuid", "params": {}}],
    )
    return StageConfig(name=name, num_records=kw.pop("num_records", 10), columns=cols, **kw)


def test_python_config_gets_semantic_checks() -> None:
    ok = WorkflowConfig(name="w", stages=[_stage()])
    assert ok.stages[0].columns[0].sampler_type == "uuid"

    with pytest.raises(WorkflowConfigError) as info:
        WorkflowConfig(
            name="w",
            models={"m": ModelConfig(base_url="http://localhost:8000/v1", model="x")},
            stages=[
                _stage(
                    columns=[
                        {"name": "a", "column_type": "expression", "expr": "{{ b }}"},
                        {"name": "b", "column_type": "expression", "expr": "{{ a }}"},
                        {
                            "name": "t",
                            "column_type": "llm_text",
                            "model_alias": "other",
                            "prompt": "{{ zz }}",
                        },
                    ]
                ),
                _stage(),
                _stage("d", seed={"stage": "nowhere"}),
            ],
        )
    issues = {(i.path, i.line) for i in info.value.issues}
    assert issues == {
        ("stages[0].columns", None),
        ("stages[0].columns[2]", None),
        ("stages[0].columns[2].model_alias", None),
        ("stages[1].name", None),
        ("stages[2].seed.stage", None),
    }


def test_python_config_subcategory_parent_check() -> None:
    with pytest.raises(
        WorkflowConfigError,
        match=r"stages\[0\]\.columns\[1\]\.params\.values: no subcategory values",
    ):
        WorkflowConfig(
            name="w",
            stages=[
                _stage(
                    columns=[
                        {
                            "name": "p",
                            "column_type": "sampler",
                            "sampler_type": "category",
                            "params": {"values": ["a", "b"]},
                        },
                        {
                            "name": "c",
                            "column_type": "sampler",
                            "sampler_type": "subcategory",
                            "params": {"category": "p", "values": {"a": ["x"]}},
                        },
                    ]
                )
            ],
        )


def test_python_config_structural_errors_are_pydantic_errors() -> None:
    with pytest.raises(ValidationError, match="extra"):
        WorkflowConfig(name="w", stages=[_stage()], colour="red")  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------------
# Secrets


@pytest.mark.parametrize("name", ["NVIDIA_API_KEY", "_k", "OPENAI_API_KEY2"])
def test_api_key_env_accepts_variable_names(name: str) -> None:
    assert ModelConfig(base_url="https://h/v1", model="m", api_key_env=name).api_key_env == name


@pytest.mark.parametrize(
    "value", ["nvapi-Abc123SECRET", "sk-proj-SECRET", "1ABC", "", "has space", "ключ_SECRET"]
)
def test_api_key_env_rejects_keys_without_echoing_them(value: str) -> None:
    text = one_stage(
        "- {name: t, column_type: llm-text, model_alias: m, prompt: hi}",
        f"models:\n  m:\n    base_url: https://h/v1\n    model: x\n    api_key_env: '{value}'\n",
    )
    err = errors_of(text)
    assert [i.path for i in err.issues] == ["models.m.api_key_env"]
    assert err.issues[0].line == line_of(text, "api_key_env")
    if value:
        assert value not in str(err)
    with pytest.raises(ValidationError) as info:
        ModelConfig(base_url="https://h/v1", model="m", api_key_env=value)
    if value:
        assert value not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:SECRETPW@api.example.com/v1",
        "https://SECRETTOKEN@api.example.com/v1",
        "https://api.example.com/v1?api_key=SECRETQ",
        "ftp://user:SECRETPW@api.example.com/v1",
    ],
)
def test_base_url_with_credentials_is_rejected_without_echo(url: str) -> None:
    text = one_stage(
        "- {name: t, column_type: llm-text, model_alias: m, prompt: hi}",
        f"models:\n  m:\n    base_url: '{url}'\n    model: x\n",
    )
    err = errors_of(text)
    assert [i.path for i in err.issues] == ["models.m.base_url"]
    assert "credentials" in err.issues[0].message
    assert "SECRET" not in str(err)
    with pytest.raises(ValidationError) as info:
        WorkflowConfig(
            name="w",
            models={"m": {"base_url": url, "model": "x"}},
            stages=[_stage()],
        )
    assert "SECRET" not in str(info.value)


def test_base_url_without_credentials_is_kept() -> None:
    m = ModelConfig(base_url="http://localhost:8000/v1/", model="x")
    assert m.base_url == "http://localhost:8000/v1"
    assert m.identity()["base_url"] == "http://localhost:8000/v1"


def test_env_expansion_in_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DD_TEST_BASE", "http://127.0.0.1:9999/v1")
    text = one_stage(
        "- {name: t, column_type: llm-text, model_alias: m, prompt: hi}",
        "models:\n  m:\n    base_url: ${DD_TEST_BASE}\n    model: ${DD_TEST_MODEL:-fallback}\n",
    )
    wf = loads_workflow(text)
    assert wf.models["m"].base_url == "http://127.0.0.1:9999/v1"
    assert wf.models["m"].model == "fallback"
    monkeypatch.delenv("DD_TEST_BASE")
    err = errors_of(text)
    assert [(i.path, i.line) for i in err.issues] == [
        ("models.m.base_url", line_of(text, "base_url"))
    ]


def test_every_config_model_builds_its_validator_when_first_used() -> None:
    """config/base.py model_settings: a model built at class creation costs every command's start
    (docs/speed.md), though WorkflowConfig's validator holds them all. A new model that sets its
    own ConfigDict would bring that back."""
    import importlib
    import pkgutil

    from pydantic import BaseModel

    import dd_assets.config as config_pkg

    for info in pkgutil.iter_modules(config_pkg.__path__):
        importlib.import_module(f"{config_pkg.__name__}.{info.name}")
    models = {
        obj
        for name, mod in sys.modules.items()
        if name.startswith(config_pkg.__name__ + ".")
        for obj in vars(mod).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == name
    }
    assert len(models) > 40
    assert sorted(m.__name__ for m in models if not m.model_config.get("defer_build")) == []
