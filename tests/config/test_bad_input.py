"""Bad config input, each case the way a user (or an attacker) writes it: a clean
WorkflowConfigError with the YAML line, never another exception, a hang or unbounded memory."""

from __future__ import annotations

import os
import resource
import sys
import time
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

import dd_assets.config as config_pkg
from dd_assets.config import WorkflowConfigError, load_workflow, loads_workflow
from dd_assets.config.limits import (
    MAX_CONFIG_BYTES,
    MAX_NUM_RECORDS,
    MAX_ROW_GROUPS,
    MAX_YAML_DEPTH,
    MAX_YAML_NODES,
)
from dd_assets.testing.workflows import deadline

BASE = """\
name: w
stages:
  - name: s
    num_records: 10
    buffer_size: 5
    columns:
      - name: a
        column_type: sampler
        sampler_type: category
        params: {values: [x, y]}
"""


def error(text: str) -> str:
    with pytest.raises(WorkflowConfigError) as info:
        loads_workflow(text, source="wf.yaml")
    return str(info.value)


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    text = BASE.replace("    buffer_size: 5\n", "    buffer_size: 5\n    buffer_size: 6\n")
    assert "wf.yaml:6: <root>: not valid YAML: duplicate key 'buffer_size' (first on line 5)" in (
        error(text)
    )


def test_a_merge_key_may_be_overridden_explicitly() -> None:
    text = BASE.replace(
        "        params: {values: [x, y]}",
        "        params: &p {values: [x, y]}\n      - name: b\n        column_type: sampler\n"
        "        sampler_type: category\n        params: {<<: *p, values: [z]}",
    )
    wf = loads_workflow(text)
    assert wf.stages[0].columns[1].params.values == ["z"]  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("field", "value", "got"),
    [
        ("buffer_size", "true", "a boolean"),
        ("num_records", "10.0", "a number with a fraction"),
        ("num_records", "'10'", "a string"),
    ],
)
def test_numbers_are_strict(field: str, value: str, got: str) -> None:
    line = "    num_records: 10\n" if field == "num_records" else "    buffer_size: 5\n"
    text = BASE.replace(line, f"    {field}: {value}\n")
    assert f"stages[0].{field}: Input should be a valid integer; got {got}" in error(text)


def test_flags_and_floats_are_strict() -> None:
    text = BASE.replace("params: {values: [x, y]}", "params: {values: [x, y], weights: [.nan, 1]}")
    assert (
        "wf.yaml:10: stages[0].columns[0].params.weights[0]: Input should be a finite number"
        in (error(text))
    )
    bad_flag = BASE.replace("      - name: a\n", "      - name: a\n        drop: 1\n")
    assert "stages[0].columns[0].drop: Input should be a valid boolean; got an integer" in error(
        bad_flag
    )


def test_every_config_number_and_flag_is_strict() -> None:
    """A field added later (by anyone) must use base.Int / Float / Bool, not plain int."""
    loose: list[str] = []

    def walk(tp: object, metadata: list[object], where: str) -> None:
        if tp in (int, float, bool):
            names = {type(m).__name__ for m in metadata}
            if "Strict" not in names or (tp is float and "AllowInfNan" not in names):
                loose.append(where)
            return
        if typing.get_origin(tp) is typing.Annotated:
            args = typing.get_args(tp)
            walk(args[0], [*metadata, *args[1:]], where)
            return
        if typing.get_origin(tp) is typing.Literal:
            return
        for arg in typing.get_args(tp):
            walk(arg, [], where)

    models = {
        obj
        for mod in sys.modules.values()
        if getattr(mod, "__name__", "").startswith(config_pkg.__name__ + ".")
        for obj in vars(mod).values()
        if isinstance(obj, type) and issubclass(obj, BaseModel) and obj.__module__ == mod.__name__
    }
    assert len(models) > 20
    for model in models:
        for name, field in model.model_fields.items():
            walk(field.annotation, list(field.metadata), f"{model.__name__}.{name}")
    assert loose == []


def test_a_stage_name_ending_in_a_newline_is_refused() -> None:
    text = BASE.replace("  - name: s\n", '  - name: "s\\n"\n')
    assert "wf.yaml:3: stages[0].name: stage name 's\\n' cannot be referenced" in error(text)


def test_a_stage_name_that_is_a_mapping_beside_a_broken_stage() -> None:
    """46 of 47 tracebacks in 3,000 mutations: the partial checks of the stages that parsed
    collected the other stages' names into a set."""
    text = BASE + "  - name: {x: 1}\n    num_records: [1]\n"
    msg = error(text)
    assert "wf.yaml:11: stages[1].name: Input should be a valid string; got a mapping" in msg
    assert "wf.yaml:12: stages[1].num_records: Input should be a valid integer; got a list" in msg


def test_mixed_timezone_datetimes() -> None:
    text = BASE.replace(
        "sampler_type: category\n        params: {values: [x, y]}",
        "sampler_type: datetime\n        params: {start: 2024-01-01T00:00:00Z, end: 2024-02-01}",
    )
    assert "must both have a time zone" in error(text)


def test_an_unknown_faker_locale_is_a_config_error() -> None:
    """The fuzz test found `locale: '0'` reaching Faker, whose AttributeError was a traceback."""
    person = "sampler_type: person_from_faker\n        params: {locale: %s}"
    text = BASE.replace("sampler_type: category\n        params: {values: [x, y]}", person)
    assert "stages[0].columns[0].params.locale: unknown Faker locale '0'" in error(text % "'0'")
    assert loads_workflow(text % "de_DE", source="wf.yaml").stages[0].columns[0].params.locale == (
        "de_DE"
    )


def test_a_recursive_alias() -> None:
    assert "recursive alias" in error("name: &a [*a]\nstages: []\n")


def test_an_alias_bomb_fails_fast_in_bounded_memory() -> None:
    """Nine levels of nine aliases: 9**9 (387 million) values once expanded, 300 bytes of text.
    Refused while the node graph is composed, before any Python object is built."""
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{cur}: &{cur} [{', '.join([f'*{prev}'] * 9)}]")
    text = "\n".join(levels) + "\nname: w\n"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    msg = error(text)
    assert time.perf_counter() - t0 < 1.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50_000  # KiB
    assert f"expands to more than {MAX_YAML_NODES} values" in msg
    assert "wf.yaml:6:" in msg  # the first node that crosses the limit


def test_deep_nesting() -> None:
    text = "name: " + "[" * (MAX_YAML_DEPTH + 5) + "]" * (MAX_YAML_DEPTH + 5) + "\n"
    assert f"nested more than {MAX_YAML_DEPTH} levels deep" in error(text)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("a: 1" + "0" * 5000, "is not a valid int"),
        ("a: 2024-13-45", "'2024-13-45' is not a valid timestamp: month must be in 1..12"),
        ("a: !!binary aGk=", "tag !!binary is not allowed in a workflow config"),
        ("a: !!python/object:os.system x", "is not allowed in a workflow config"),
        ("a: !!bool maybe", "'maybe' is not a valid bool"),
        ("a: \x07", "control characters are not allowed"),
    ],
)
def test_scalars_yaml_cannot_build_are_config_errors(snippet: str, expected: str) -> None:
    assert expected in error(f"name: w\n{snippet}\n")


def test_num_records_and_buffer_size_have_documented_bounds() -> None:
    huge = BASE.replace("num_records: 10", "num_records: 1" + "0" * 400)
    assert f"Input should be less than or equal to {MAX_NUM_RECORDS}" in error(huge)
    too_many = BASE.replace("num_records: 10", f"num_records: {MAX_ROW_GROUPS * 5 + 1}")
    msg = error(too_many)
    assert f"makes {MAX_ROW_GROUPS + 1} row groups (partitions); at most {MAX_ROW_GROUPS}" in msg
    assert "raise buffer_size to at least 6" in msg


def test_a_non_utf8_byte_names_its_line(tmp_path: Path) -> None:
    cfg = tmp_path / "wf.yaml"
    cfg.write_bytes(BASE.encode().replace(b"  - name: s", b"  - name: s\xff"))
    with pytest.raises(WorkflowConfigError, match=r"wf\.yaml:3: <root>: not UTF-8: byte 0xff at"):
        load_workflow(cfg)


def test_a_config_over_the_size_limit_is_refused_by_its_size(tmp_path: Path) -> None:
    cfg = tmp_path / "big.yaml"
    with open(cfg, "wb") as fh:
        fh.truncate(100 * 1024 * 1024)  # sparse: 100 MB without writing them
    t0 = time.perf_counter()
    with pytest.raises(WorkflowConfigError, match=f"at most {MAX_CONFIG_BYTES} bytes"):
        load_workflow(cfg)
    assert time.perf_counter() - t0 < 0.5


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_a_config_that_is_not_a_regular_file(tmp_path: Path, kind: str) -> None:
    cfg = tmp_path / "wf.yaml"
    if kind == "fifo":
        os.mkfifo(cfg)
    elif kind == "directory":
        cfg.mkdir()
    else:
        cfg.symlink_to("/dev/zero")
    with deadline(10), pytest.raises(WorkflowConfigError) as info:  # a FIFO must not block
        load_workflow(cfg)
    label = {"fifo": "a FIFO", "directory": "a directory", "device": "a character device"}[kind]
    assert f"wf.yaml is {label}" in str(info.value)
    assert "name a workflow YAML file" in str(info.value)
