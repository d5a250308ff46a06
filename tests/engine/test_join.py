"""Join seeds without Dagster: what the config accepts (and the errors for what it does not), the
columns a join provides, its fingerprint, and the row-group join itself."""

from __future__ import annotations

import copy
from typing import Any

import pyarrow as pa
import pytest

from dd_assets.config import WorkflowConfigError, loads_workflow, seed_columns_of
from dd_assets.config.fingerprint import workflow_fingerprints
from dd_assets.config.workflow import JoinSeed, column_origins
from dd_assets.engine import join_row_group
from dd_assets.engine.schema import stage_schema
from dd_assets.errors import GenerationError
from dd_assets.runners.plan import plan_workflow


def _expr(name: str, expr: str) -> dict[str, Any]:
    return {"name": name, "column_type": "expression", "expr": expr}


DIAMOND: dict[str, Any] = {
    "name": "w",
    "stages": [
        {
            "name": "people",
            "num_records": 40,
            "buffer_size": 10,
            "columns": [
                {"name": "pid", "column_type": "sampler", "sampler_type": "uuid"},
                {
                    "name": "city",
                    "column_type": "sampler",
                    "sampler_type": "category",
                    "params": {"values": ["Lyon", "Oslo"]},
                },
            ],
        },
        {
            "name": "bios",
            "num_records": 40,
            "buffer_size": 10,
            "seed": {"stage": "people"},
            "columns": [_expr("bio", "{{ pid }} lives in {{ city }}")],
        },
        {
            "name": "tags",
            "num_records": 40,
            "buffer_size": 10,
            "seed": {"stage": "people"},
            "columns": [_expr("tag", "#{{ city }}")],
        },
        {
            "name": "cards",
            "num_records": 40,
            "buffer_size": 10,
            "seed": {"stages": ["bios", "tags"], "keys": "pid"},
            "columns": [_expr("card", "{{ bio }} {{ tag }}")],
        },
    ],
}


def _yaml(cfg: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(cfg, sort_keys=False)


def _with(**seed: Any) -> dict[str, Any]:
    cfg = copy.deepcopy(DIAMOND)
    cfg["stages"][3]["seed"] = seed
    return cfg


def _issues(cfg: dict[str, Any] | str) -> list[tuple[str, str]]:
    with pytest.raises(WorkflowConfigError) as exc:
        loads_workflow(cfg if isinstance(cfg, str) else _yaml(cfg))
    return [(i.path, i.message) for i in exc.value.issues]


def test_a_diamond_validates_and_its_join_provides_both_branches() -> None:
    wf = loads_workflow(_yaml(DIAMOND))
    cards = wf.stage("cards")
    assert isinstance(cards.seed, JoinSeed) and cards.seed.keys == ["pid"]
    assert [s.name for s in wf.upstreams_of(cards)] == ["bios", "tags"]
    # The first stage's columns, then the later stages' new ones.
    assert seed_columns_of(wf, cards) == ["pid", "city", "bio", "tag"]
    assert column_origins(wf, cards) == {
        "pid": "people",
        "city": "people",
        "bio": "bios",
        "tag": "tags",
        "card": "cards",
    }
    assert stage_schema(wf, "cards").names == ["pid", "city", "bio", "tag", "card"]


def test_join_fingerprint_covers_every_joined_stage_and_their_order() -> None:
    base = workflow_fingerprints(loads_workflow(_yaml(DIAMOND)))
    edited = copy.deepcopy(DIAMOND)
    edited["stages"][2]["columns"][0]["expr"] = "#{{ city }}!"
    changed = workflow_fingerprints(loads_workflow(_yaml(edited)))
    assert changed["tags"].hex != base["tags"].hex
    assert changed["cards"].hex != base["cards"].hex  # the cascade reaches the join
    assert changed["bios"].hex == base["bios"].hex
    assert base["cards"].payload["seed"]["upstream_fingerprints"] == [
        base["bios"].hex,
        base["tags"].hex,
    ]
    swapped = workflow_fingerprints(
        loads_workflow(_yaml(_with(stages=["tags", "bios"], keys="pid")))
    )
    assert swapped["cards"].hex != base["cards"].hex  # row order follows the first stage


@pytest.mark.parametrize(
    ("seed", "path", "needle"),
    [
        ({"stages": ["bios"], "keys": "pid"}, "stages[3].seed.stages", "at least two stages"),
        ({"stages": ["bios", "bios"], "keys": "pid"}, "stages[3].seed.stages", "more than once"),
        ({"stages": ["bios", "tags"], "keys": []}, "stages[3].seed.keys", "at least 1"),
        (
            {"stages": ["bios", "tags"], "keys": "pid", "mode": "sample"},
            "stages[3].seed.mode",
            "its mode is row_group",
        ),
        (
            {"stages": ["bios", "ghost"], "keys": "pid"},
            "stages[3].seed.stages[1]",
            "unknown stage 'ghost'",
        ),
        (
            {"stages": ["bios", "cards"], "keys": "pid"},
            "stages[3].seed.stages[1]",
            "cannot seed itself",
        ),
        (
            {"stages": ["bios", "tags"], "keys": "bio"},
            "stages[3].seed.keys",
            "join key 'bio' is not a column of stage 'tags'",
        ),
        (
            {"stages": ["bios", "tags"], "keys": "pid", "typo": 1},
            "stages[3].seed.typo",
            "unknown key",
        ),
    ],
)
def test_join_config_errors_name_the_field_and_the_fix(seed: dict, path: str, needle: str) -> None:
    issues = _issues(_with(**seed))
    assert any(p == path and needle in m for p, m in issues), issues


def test_yaml_on_key_is_explained() -> None:
    text = _yaml(_with(stages=["bios", "tags"], keys="pid")).replace("keys: pid", "on: pid")
    issues = _issues(text)
    assert any(p == "stages[3].seed" and "unquoted on/off/yes/no" in m for p, m in issues), issues


def test_join_keys_and_shared_columns_must_come_from_one_stage() -> None:
    cfg = copy.deepcopy(DIAMOND)
    # Both branches make their own `city` and their own uuid: neither can pair rows.
    cfg["stages"][1]["columns"].append(_expr("city", "Paris"))
    cfg["stages"][2]["columns"].append(
        {"name": "tid", "column_type": "sampler", "sampler_type": "uuid"}
    )
    cfg["stages"][1]["columns"].append(
        {"name": "tid", "column_type": "sampler", "sampler_type": "uuid"}
    )
    cfg["stages"][3]["seed"] = {"stages": ["bios", "tags"], "keys": ["pid", "tid"]}
    issues = _issues(cfg)
    assert any(
        p == "stages[3].seed.keys"
        and "join key 'tid' is made separately in stages 'bios' and 'tags'" in m
        for p, m in issues
    ), issues
    assert any(
        p == "stages[3].seed.stages"
        and "column 'city'" in m
        and "'bios' and 'people'" in m
        and "post_batch" in m
        for p, m in issues
    ), issues
    # Dropping the second copy in one branch mends it.
    cfg["stages"][1]["post_batch"] = [
        {"processor_type": "drop_columns", "column_names": ["city", "tid"]}
    ]
    cfg["stages"][3]["seed"]["keys"] = ["pid"]
    loads_workflow(_yaml(cfg))


def test_sampled_branch_cannot_be_joined_on_a_key_from_above() -> None:
    cfg = copy.deepcopy(DIAMOND)
    cfg["stages"][2]["seed"] = {"stage": "people", "mode": "sample"}  # draws its own rows
    issues = _issues(cfg)
    assert any(
        "join key 'pid' is made separately in stages 'people' and 'tags'" in m for _, m in issues
    ), issues


def test_join_sizes_and_cycles() -> None:
    cfg = copy.deepcopy(DIAMOND)
    cfg["stages"][3]["num_records"] = 50
    assert any(
        p == "stages[3].num_records" and "must equal 'bios''s (40)" in m and "mode: sample" not in m
        for p, m in _issues(cfg)
    )
    cfg = copy.deepcopy(DIAMOND)
    cfg["stages"][1]["seed"] = {
        "stages": ["people", "cards"],
        "keys": "pid",
    }  # bios <- cards <- bios
    issues = _issues(cfg)
    assert any(p.endswith(".seed") and "cycle" in m for p, m in issues), issues


# ---------------------------------------------------------------------------------------------
# The row-group join


def _t(**cols: list) -> pa.Table:
    return pa.table(cols)


def test_inner_join_keeps_the_first_stages_order_and_adds_new_columns() -> None:
    a = _t(k=["x", "y", "z", "w"], v=[1, 2, 3, 4], a=["ax", "ay", "az", "aw"])
    b = _t(k=["w", "z", "x"], v=[4, 3, 1], b=[True, False, True])  # "y" dropped in b
    out = join_row_group([("a", a), ("b", b)], ["k"], "here")
    assert out.column_names == ["k", "v", "a", "b"]
    assert out.to_pylist() == [
        {"k": "x", "v": 1, "a": "ax", "b": True},
        {"k": "z", "v": 3, "a": "az", "b": False},
        {"k": "w", "v": 4, "a": "aw", "b": True},
    ]


def test_join_on_several_keys_of_three_stages() -> None:
    a = _t(k1=[1, 1, 2], k2=["p", "q", "p"], a=[10, 11, 12])
    b = _t(k2=["p", "p", "q"], k1=[2, 1, 1], b=["B2p", "B1p", "B1q"])
    c = _t(k1=[1, 2], k2=["q", "p"], c=[0.5, 0.25])
    out = join_row_group([("a", a), ("b", b), ("c", c)], ["k1", "k2"], "here")
    assert out.to_pylist() == [
        {"k1": 1, "k2": "q", "a": 11, "b": "B1q", "c": 0.5},
        {"k1": 2, "k2": "p", "a": 12, "b": "B2p", "c": 0.25},
    ]


def test_struct_columns_ride_along_and_empty_inputs_join_to_empty() -> None:
    person = pa.array([{"first": "Ada"}, {"first": "Bo"}])
    a = pa.table({"k": [1, 2], "person": person})
    b = pa.table(
        {"k": [2, 1], "person": pa.array([{"first": "Bo"}, {"first": "Ada"}]), "n": [2, 1]}
    )
    out = join_row_group([("a", a), ("b", b)], ["k"], "here")
    assert out.column("person").to_pylist() == [{"first": "Ada"}, {"first": "Bo"}]
    assert out.column("n").to_pylist() == [1, 2]
    empty = join_row_group([("a", a.slice(0, 0)), ("b", b)], ["k"], "here")
    assert empty.num_rows == 0 and empty.column_names == ["k", "person", "n"]


@pytest.mark.parametrize(
    ("a", "b", "needle"),
    [
        (_t(k=["x", "x"]), _t(k=["x"]), "join key 'x' appears twice in stage 'a' (rows 0 and 1)"),
        (_t(k=["x", None]), _t(k=["x"]), "row 1 of stage 'a' has a null join key"),
        (_t(k=["x"]), _t(j=["x"]), "stage 'b' has no join key column 'k'"),
        (
            _t(k=["x", "y"], v=[1, 2]),
            _t(k=["y", "x"], v=[2, 9]),
            "column 'v' is in stages 'a' and 'b' with different values",
        ),
        (_t(k=["x"], v=[1]), _t(k=["x"], v=["1"]), "column 'v' is in stages 'a' and 'b'"),
        (
            pa.table({"k": pa.array([[1]])}),
            pa.table({"k": pa.array([[1]])}),
            "join on scalar columns",
        ),
    ],
)
def test_join_refuses_what_would_pair_rows_by_luck(a: pa.Table, b: pa.Table, needle: str) -> None:
    with pytest.raises(GenerationError, match=r"^stage 'j', row group 00003: ") as exc:
        join_row_group([("a", a), ("b", b)], ["k"], "stage 'j', row group 00003")
    assert needle in str(exc.value)


def test_preview_of_a_join_says_what_to_preview_instead() -> None:
    from dd_assets.runners.preview import preview_stage

    with pytest.raises(GenerationError, match="seeded from stages 'bios' and 'tags'"):
        preview_stage(plan_workflow(loads_workflow(_yaml(DIAMOND)))["cards"])
    assert (
        preview_stage(plan_workflow(loads_workflow(_yaml(DIAMOND)))["people"], 3).table.num_rows
        == 3
    )
