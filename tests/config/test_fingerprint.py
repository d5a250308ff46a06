"""Stage fingerprints (= Dagster code_version): exactly the edits that change a stage's content
change it, a change cascades downstream, and no secret ever reaches the hashed payload."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from dd_assets.config import WorkflowConfig, parse_workflow
from dd_assets.config.fingerprint import (
    SCHEME_VERSION,
    canonical_json,
    changed_fields,
    column_key,
    workflow_fingerprints,
)

BASE_YAML = """
name: fp
description: fingerprint fixture
models:
  writer:
    base_url: https://integrate.api.nvidia.com/v1
    model: meta/llama-3.1-8b-instruct
    api_key_env: DD_FP_TEST_KEY
    inference: {temperature: 0.7, top_p: 0.9, max_tokens: 256}
    max_parallel_requests: 8
    timeout_s: 30
    max_retries: 3
  other:
    base_url: http://localhost:8000/v1
    model: other-model
    inference: {temperature: 0.1}
stages:
  - name: gen
    description: the generating stage
    num_records: 100
    buffer_size: 10
    columns:
      - name: topic
        column_type: sampler
        sampler_type: category
        params: {values: [cats, dogs, birds], weights: [1, 2, 3]}
      - name: sub
        column_type: sampler
        sampler_type: subcategory
        params: {category: topic, values: {cats: [tabby], dogs: [pug, lab], birds: [owl]}}
      - name: n
        column_type: sampler
        sampler_type: uniform
        params: {low: 0, high: 10}
        convert_to: int
      - name: label
        column_type: expression
        expr: "{{ topic }}-{{ n }}"
      - name: text
        column_type: llm-text
        model_alias: writer
        prompt: "Write about {{ label }}"
    post_batch:
      - {processor_type: drop_columns, column_names: [n]}
    finalize:
      - {processor_type: dedupe, columns: [label]}
  - name: down
    num_records: 100
    buffer_size: 10
    seed: {stage: gen, mode: row_group}
    columns:
      - {name: shout, column_type: expression, expr: "{{ label | upper }}"}
  - name: sampled
    num_records: 30
    seed: {stage: gen, mode: sample, strategy: shuffle}
    columns:
      - {name: again, column_type: expression, expr: "{{ text }}"}
"""

BASE: dict[str, Any] = yaml.safe_load(BASE_YAML)


def build(edit: Callable[[dict[str, Any]], None] | None = None) -> WorkflowConfig:
    data = copy.deepcopy(BASE)
    if edit is not None:
        edit(data)
    return parse_workflow(data)


def stage(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in data["stages"] if s["name"] == name)


def col(data: dict[str, Any], stage_name: str, name: str) -> dict[str, Any]:
    return next(c for c in stage(data, stage_name)["columns"] if c["name"] == name)


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *head, last = path.split(".")
        node: Any = data
        for part in head:
            node = (
                stage(data, part)
                if part in ("gen", "down", "sampled") and node is data
                else node[part]
            )
        node[last] = value

    return edit


def _both_buffers(data: dict[str, Any]) -> None:
    stage(data, "gen")["buffer_size"] = 20
    stage(data, "down")["buffer_size"] = 20


def _swap_columns(data: dict[str, Any]) -> None:
    cols = stage(data, "gen")["columns"]
    cols[2], cols[3] = cols[3], cols[2]


# edit -> (stages whose fingerprint changes, a dotted path changed_fields names for `gen` or
# the first changed stage)
CHANGES: dict[str, tuple[Callable[[dict[str, Any]], None], set[str], str]] = {
    "category values": (
        lambda d: (
            col(d, "gen", "topic")["params"].update(values=["cats", "dogs", "fish"]),
            col(d, "gen", "sub")["params"]["values"].update(fish=["cod"]),
        ),
        {"gen", "down", "sampled"},
        "columns[0].params.values[2]",
    ),
    "category weights": (
        lambda d: col(d, "gen", "topic")["params"].update(weights=[1, 2, 4]),
        {"gen", "down", "sampled"},
        "columns[0].params.weights[2]",
    ),
    "uniform params": (
        lambda d: col(d, "gen", "n")["params"].update(high=11),
        {"gen", "down", "sampled"},
        "columns[2].params.high",
    ),
    "convert_to": (
        lambda d: col(d, "gen", "n").update(convert_to="float"),
        {"gen", "down", "sampled"},
        "columns[2].convert_to",
    ),
    "column order": (_swap_columns, {"gen", "down", "sampled"}, "columns[2].name"),
    "expr text": (
        lambda d: col(d, "gen", "label").update(expr="{{ topic }}/{{ n }}"),
        {"gen", "down", "sampled"},
        "columns[3].expr",
    ),
    "dtype": (
        lambda d: col(d, "gen", "label").update(dtype="int"),
        {"gen", "down", "sampled"},
        "columns[3].dtype",
    ),
    "prompt": (
        lambda d: col(d, "gen", "text").update(prompt="About {{ label }}"),
        {"gen", "down", "sampled"},
        "columns[4].prompt",
    ),
    "drop flag": (
        lambda d: col(d, "gen", "sub").update(drop=True),
        {"gen", "down", "sampled"},
        "columns[1].drop",
    ),
    "model name": (
        lambda d: d["models"]["writer"].update(model="meta/llama-3.3-70b-instruct"),
        {"gen", "down", "sampled"},
        "models.writer.model",
    ),
    "temperature": (
        lambda d: d["models"]["writer"]["inference"].update(temperature=0.2),
        {"gen", "down", "sampled"},
        "models.writer.inference.temperature",
    ),
    "max_tokens": (
        lambda d: d["models"]["writer"]["inference"].update(max_tokens=512),
        {"gen", "down", "sampled"},
        "models.writer.inference.max_tokens",
    ),
    "base_url host": (
        lambda d: d["models"]["writer"].update(base_url="https://api.openai.com/v1"),
        {"gen", "down", "sampled"},
        "models.writer.base_url",
    ),
    "model alias swapped": (
        lambda d: col(d, "gen", "text").update(model_alias="other"),
        {"gen", "down", "sampled"},
        "models.other",
    ),
    "buffer_size": (_both_buffers, {"gen", "down", "sampled"}, "buffer_size"),
    "post_batch": (
        lambda d: stage(d, "gen").update(
            post_batch=[{"processor_type": "rename", "mapping": {"n": "number"}}]
        ),
        {"gen", "down", "sampled"},
        "post_batch[0].mapping",
    ),
    "seed mode of down": (
        lambda d: stage(d, "down").update(seed={"stage": "gen", "mode": "sample"}),
        {"down"},
        "seed.mode",
    ),
    "seed strategy of sampled": (
        lambda d: stage(d, "sampled").update(
            seed={"stage": "gen", "mode": "sample", "strategy": "ordered"}
        ),
        {"sampled"},
        "seed.strategy",
    ),
    "downstream column": (
        lambda d: col(d, "down", "shout").update(expr="{{ label }}!"),
        {"down"},
        "columns[0].expr",
    ),
    # A stage seeded by `mode: sample` reads gen's final output: finalize changes it, not gen/down.
    "finalize": (
        lambda d: stage(d, "gen").update(
            finalize=[{"processor_type": "dedupe", "columns": ["topic"]}]
        ),
        {"sampled"},
        "seed.upstream_fingerprint",
    ),
}


@pytest.mark.parametrize("name", list(CHANGES), ids=list(CHANGES))
def test_edit_changes_fingerprint(name: str) -> None:
    edit, changed, field = CHANGES[name]
    old = workflow_fingerprints(build())
    new = workflow_fingerprints(build(edit))
    actually = {s for s in old if old[s].hex != new[s].hex}
    assert actually == changed
    first = next(s for s in ("gen", "down", "sampled") if s in changed)
    fields = changed_fields(old[first].payload, new[first].payload)
    assert field in fields, fields
    # Downstream of a changed stage, what changed is the upstream fingerprint, named as such.
    if first == "gen":
        assert "seed.upstream_fingerprint" in changed_fields(
            old["down"].payload, new["down"].payload
        )
        assert new["down"].payload["seed"]["upstream_fingerprint"] == new["gen"].hex


UNCHANGED: dict[str, Callable[[dict[str, Any]], None]] = {
    "num_records": lambda d: [
        stage(d, s).update(num_records=5000) for s in ("gen", "down", "sampled")
    ],
    "stage description": _set("gen.description", "something else"),
    "workflow description": lambda d: d.update(description="other"),
    "max_parallel_requests": lambda d: d["models"]["writer"].update(max_parallel_requests=64),
    "timeout_s": lambda d: d["models"]["writer"].update(timeout_s=600),
    "max_retries": lambda d: d["models"]["writer"].update(max_retries=0),
    "api_key_env name": lambda d: d["models"]["writer"].update(api_key_env="ANOTHER_VAR"),
    "base_url trailing slash": lambda d: d["models"]["writer"].update(
        base_url="https://integrate.api.nvidia.com/v1/"
    ),
    "unrelated model": lambda d: d["models"]["other"].update(
        model="x", inference={"temperature": 1.5}
    ),
    "model added": lambda d: d["models"].update(third={"base_url": "http://h/v1", "model": "m"}),
    "run settings": lambda d: d.update(run={"partitions_per_run": 2, "row_groups_in_flight": 1}),
}


@pytest.mark.parametrize("name", list(UNCHANGED), ids=list(UNCHANGED))
def test_edit_leaves_fingerprint(name: str) -> None:
    old = workflow_fingerprints(build())
    new = workflow_fingerprints(build(UNCHANGED[name]))
    for s in old:
        assert old[s].hex == new[s].hex, s
        assert old[s].final_hex == new[s].final_hex, s
        assert changed_fields(old[s].payload, new[s].payload) == []


def test_finalize_changes_only_final_hex() -> None:
    old = workflow_fingerprints(build())
    new = workflow_fingerprints(build(CHANGES["finalize"][0]))
    assert old["gen"].hex == new["gen"].hex
    assert old["gen"].final_hex is not None and new["gen"].final_hex is not None
    assert old["gen"].final_hex != new["gen"].final_hex
    assert old["down"].final_hex is None  # no finalize processors, no final asset
    # down pairs row groups with gen's raw row groups: the final output does not matter to it.
    assert old["down"].hex == new["down"].hex
    assert new["sampled"].payload["seed"]["upstream_fingerprint"] == new["gen"].final_hex


def test_file_seed_content_is_part_of_the_fingerprint() -> None:
    def with_file_seed(d: dict[str, Any]) -> None:
        stage(d, "sampled")["seed"] = {"path": "seed.parquet"}
        col(d, "sampled", "again")["expr"] = "{{ anything }}"

    wf = build(with_file_seed)
    a = workflow_fingerprints(wf, {"sampled": "a" * 64})["sampled"]
    b = workflow_fingerprints(wf, {"sampled": "b" * 64})["sampled"]
    assert a.hex != b.hex
    assert changed_fields(a.payload, b.payload) == ["seed.sha256"]


def test_payload_shape() -> None:
    fps = workflow_fingerprints(build())
    p = fps["gen"].payload
    assert p["scheme"] == SCHEME_VERSION
    assert set(p["models"]) == {"writer"}  # only models the stage uses
    assert p["models"]["writer"] == {
        "base_url": "https://integrate.api.nvidia.com/v1",
        "model": "meta/llama-3.1-8b-instruct",
        "inference": {"temperature": 0.7, "top_p": 0.9, "max_tokens": 256},
    }
    assert "num_records" not in canonical_json(p)
    assert len(fps["gen"].hex) == 64 and fps["gen"].short == fps["gen"].hex[:12]
    assert len({f.hex for f in fps.values()}) == 3


def test_api_key_value_never_reaches_the_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "nvapi-THIS-IS-A-SECRET-VALUE-123"
    monkeypatch.setenv("DD_FP_TEST_KEY", secret)
    fps = workflow_fingerprints(build())
    for fp in fps.values():
        text = canonical_json(fp.payload)
        assert secret not in text and secret not in fp.hex
        assert "DD_FP_TEST_KEY" not in text  # not even the variable's name
    # And the value does not influence the hash either.
    monkeypatch.setenv("DD_FP_TEST_KEY", "another-value")
    assert {s: f.hex for s, f in workflow_fingerprints(build()).items()} == {
        s: f.hex for s, f in fps.items()
    }


def test_base_url_port_and_path_are_part_of_identity() -> None:
    a = workflow_fingerprints(
        build(lambda d: d["models"]["writer"].update(base_url="http://localhost:8000/v1"))
    )
    b = workflow_fingerprints(
        build(lambda d: d["models"]["writer"].update(base_url="http://localhost:8001/v1"))
    )
    assert a["gen"].hex != b["gen"].hex
    assert changed_fields(a["gen"].payload, b["gen"].payload) == ["models.writer.base_url"]


_SUBPROCESS = """
import json, sys, yaml
from dd_assets.config import parse_workflow
from dd_assets.config.fingerprint import column_key, workflow_fingerprints
wf = parse_workflow(yaml.safe_load(sys.stdin.read()))
fps = workflow_fingerprints(wf)
st = wf.stage("gen")
print(json.dumps({
    "hex": {s: f.hex for s, f in fps.items()},
    "final": {s: f.final_hex for s, f in fps.items()},
    "keys": {c.name: column_key(wf, st, c.name) for c in st.columns},
}))
"""


@pytest.mark.slow
def test_deterministic_across_processes() -> None:
    here = workflow_fingerprints(build())
    wf = build()
    st = wf.stage("gen")
    expected = {
        "hex": {s: f.hex for s, f in here.items()},
        "final": {s: f.final_hex for s, f in here.items()},
        "keys": {c.name: column_key(wf, st, c.name) for c in st.columns},
    }
    for hashseed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hashseed}
        proc = subprocess.run(
            [sys.executable, "-c", _SUBPROCESS],
            input=BASE_YAML,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=True,
        )
        assert json.loads(proc.stdout) == expected


def test_changed_fields_paths() -> None:
    assert changed_fields({"a": {"b": [1, 2]}}, {"a": {"b": [1, 3]}}) == ["a.b[1]"]
    assert changed_fields({"a": [1]}, {"a": [1, 2]}) == ["a"]
    assert changed_fields({"a": 1}, {"b": 1}) == ["a", "b"]
    assert changed_fields(1, 2) == ["<root>"]
    assert changed_fields({"x": None}, {"x": None}) == []


# --------------------------------------------------------------------------------------------
# Column keys


def _keys(wf: WorkflowConfig) -> dict[str, int]:
    """Keys of the sampler columns: the only ones whose key seeds randomness."""
    st = wf.stage("gen")
    return {c.name: column_key(wf, st, c.name) for c in st.columns if c.column_type == "sampler"}


def test_column_keys_are_distinct_and_64_bit() -> None:
    keys = _keys(build())
    assert set(keys) == {"topic", "sub", "n"}
    assert len(set(keys.values())) == len(keys)
    assert all(0 <= k < 2**64 for k in keys.values())


def test_editing_a_column_changes_only_its_key_and_its_subcategory_children() -> None:
    base = _keys(build())
    # Uniform column n: nothing else moves.
    k = _keys(build(lambda d: col(d, "gen", "n")["params"].update(high=99)))
    assert {c for c in base if base[c] != k[c]} == {"n"}
    # An expression or LLM column never feeds a sampler's randomness.
    k = _keys(build(lambda d: col(d, "gen", "label").update(expr="{{ n }}")))
    assert k == base
    k = _keys(build(CHANGES["prompt"][0]))
    assert k == base
    # The subcategory's parent: the child follows (its draw depends on the parent's values).
    k = _keys(build(lambda d: col(d, "gen", "topic")["params"].update(weights=[3, 2, 1])))
    assert {c for c in base if base[c] != k[c]} == {"topic", "sub"}
    # The child alone: the parent stays.
    k = _keys(
        build(lambda d: col(d, "gen", "sub")["params"]["values"].update(cats=["tabby", "siamese"]))
    )
    assert {c for c in base if base[c] != k[c]} == {"sub"}
    # Moving a column, or editing a model, changes no key.
    assert _keys(build(_swap_columns)) == base
    assert _keys(build(CHANGES["temperature"][0])) == base


# ---- fingerprints and values of existing configs never change by accident --------------------
# Recorded with the release that wrote them. A change here means every user's data under these
# configs would turn stale (or, for values, that a resumed dataset would mix two generations):
# bump SCHEME_VERSION on purpose instead, and say so in docs/decisions.md.

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
QUICKSTART_50_ROWS_DIGEST = "3ddf3d090f7aae6b"

GOLDEN_FINGERPRINTS = {
    "quickstart": {"tickets": ("be6da9e367cdd600", None)},
    "chain": {
        "reviews": ("0d853255778288d3", "d537d1748f3738b5"),
        "replies": ("4ae682d198ebe0df", None),
        "moods": ("5e3033a3c843b3ed", None),
        "threads": ("e90344214f07b5ee", None),
        "digest": ("cdc72687b81d10d9", None),
    },
    "llm-chain": {"questions": ("d34bfcd0ff49d07a", None), "polished": ("47057afbadb75b41", None)},
}


@pytest.mark.parametrize("example", sorted(GOLDEN_FINGERPRINTS))
def test_example_fingerprints_are_stable(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from dd_assets.config import load_workflow
    from dd_assets.runners.plan import plan_workflow

    for var in ("DD_LLM_BASE_URL", "DD_LLM_MODEL"):
        monkeypatch.delenv(var, raising=False)
    plan = plan_workflow(load_workflow(EXAMPLES / f"{example}.yaml"))
    got = {
        name: (p.fingerprint.hex[:16], p.fingerprint.final_hex and p.fingerprint.final_hex[:16])
        for name, p in plan.items()
    }
    assert got == GOLDEN_FINGERPRINTS[example]


def test_quickstart_values_are_stable() -> None:
    """The first rows of the quickstart, digested: sampler and expression output never changes
    under an unchanged fingerprint."""
    from dd_assets.config import load_workflow
    from dd_assets.engine import compile_stage, generate_rows

    wf = load_workflow(EXAMPLES / "quickstart.yaml")
    table = generate_rows(compile_stage(wf, "tickets"), 0, 50).table
    text = json.dumps(table.to_pylist(), default=str, sort_keys=True)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == QUICKSTART_50_ROWS_DIGEST
