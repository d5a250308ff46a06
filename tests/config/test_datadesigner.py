"""DataDesigner configs as they come out of its `write_config()` (fixtures written by
DataDesigner 0.9.7 itself, tests/fixtures/datadesigner/README.md): referenced by `data_designer:`
they validate and generate, as YAML or JSON they get one fingerprint, defaults never enter it,
`import` writes a native workflow that gives the same rows, and every feature dd-assets lacks
is one error naming it."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml

from dd_assets.config import WorkflowConfigError, load_workflow, parse_workflow
from dd_assets.config.datadesigner import import_datadesigner, parse_provider_option
from dd_assets.engine import compile_stage, generate_rows
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.preview import preview_stage
from dd_assets.testing.workflows import write_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "datadesigner"
RUNNABLE = ["samplers", "samplers_no_person", "llm", "seeded", "seeded_partition"]
MOCK_PROVIDER = {"endpoint": "http://127.0.0.1:9/v1", "api_key": "DD_TEST_MOCK_KEY"}


def _workflow(dd: Any, *, name: str = "s", providers: dict | None = None, **stage: Any) -> dict:
    return {
        "name": "dd",
        "providers": providers if providers is not None else {"mock": MOCK_PROVIDER},
        "stages": [
            {"name": name, "num_records": 12, "buffer_size": 5, "data_designer": dd, **stage}
        ],
    }


def _load(tmp_path: Path, dd: Any, **kw: Any):
    return load_workflow(write_config(tmp_path / "wf.yaml", _workflow(dd, **kw)))


def _fingerprint(tmp_path: Path, dd: Any) -> str:
    return plan_workflow(_load(tmp_path, dd))["s"].fingerprint.hex


@pytest.mark.parametrize("fixture", RUNNABLE)
def test_fixture_yaml_and_json_load_with_one_fingerprint(tmp_path: Path, fixture: str) -> None:
    a = _fingerprint(tmp_path, str(FIXTURES / f"{fixture}.yaml"))
    b = _fingerprint(tmp_path, str(FIXTURES / f"{fixture}.json"))
    assert a == b
    # Inline (the mapping under data_designer:) is the same stage too.
    inline = yaml.safe_load((FIXTURES / f"{fixture}.yaml").read_text())["data_designer"]
    if fixture.startswith("seeded"):  # a relative seed path is relative to the workflow then
        inline["seed_config"]["source"]["path"] = str(FIXTURES / "seed_products.parquet")
    assert _fingerprint(tmp_path, inline) == a


_DEFAULTS = {
    "drop": False,
    "skip": None,
    "propagate_skip": True,
    "conditional_params": {},
    "convert_to": None,
    "system_prompt": None,
    "multi_modal_context": None,
    "tool_alias": None,
    "with_trace": "none",
    "extract_reasoning_content": False,
    "weights": None,
    "prefix": None,
    "decimal_places": None,
}


def _strip_defaults(value: Any) -> Any:
    """The config without what DataDesigner writes as defaults (params' copy of sampler_type
    included), i.e. what a user might write by hand."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "sampler_type" and "column_type" not in value:
                continue
            if k in _DEFAULTS and v == _DEFAULTS[k]:
                continue
            out[k] = _strip_defaults(v)
        return out
    if isinstance(value, list):
        return [_strip_defaults(v) for v in value]
    return value


@pytest.mark.parametrize("fixture", ["samplers_no_person", "llm", "seeded"])
def test_ignored_defaults_do_not_enter_the_fingerprint(tmp_path: Path, fixture: str) -> None:
    full = yaml.safe_load((FIXTURES / f"{fixture}.yaml").read_text())["data_designer"]
    if fixture == "seeded":
        full["seed_config"]["source"]["path"] = str(FIXTURES / "seed_products.parquet")
    short = _strip_defaults(copy.deepcopy(full))
    for key in ("tool_configs", "constraints", "profilers", "processors", "model_configs"):
        if not short.get(key):
            short.pop(key, None)
    assert short != full
    assert _fingerprint(tmp_path, short) == _fingerprint(tmp_path, full)


def _rows(wf, stage: str = "s", n: int = 12) -> pa.Table:
    plan = plan_workflow(wf)[stage]
    return preview_stage(plan, n).table


@pytest.mark.parametrize(
    "fixture", ["samplers", "samplers_no_person", "seeded", "seeded_partition"]
)
def test_import_gives_the_same_rows_as_the_referenced_form(tmp_path: Path, fixture: str) -> None:
    referenced = _load(tmp_path, str(FIXTURES / f"{fixture}.json"), name=fixture)
    native, notes = import_datadesigner(
        FIXTURES / f"{fixture}.yaml", tmp_path / "native.yaml", name="dd", num_records=12
    )
    assert notes and all(n.status in ("same", "mapped", "lost") for n in notes)
    # The referenced workflow is named dd with stage `fixture`; rename the import the same way.
    native["stages"][0]["name"] = fixture
    native["stages"][0]["buffer_size"] = 5
    path = tmp_path / "native.yaml"
    path.write_text(yaml.safe_dump(native, sort_keys=False))
    text = path.read_text()
    assert "data_designer" not in text and "library_version" not in text
    imported = load_workflow(path)
    a, b = plan_workflow(referenced)[fixture], plan_workflow(imported)[fixture]
    assert a.fingerprint.hex == b.fingerprint.hex
    assert _rows(referenced, fixture).equals(_rows(imported, fixture))


def test_import_writes_seed_paths_relative_to_the_output(tmp_path: Path) -> None:
    native, _ = import_datadesigner(FIXTURES / "seeded.yaml", FIXTURES / "out.yaml")
    assert native["stages"][0]["seed"]["path"] == "seed_products.parquet"
    elsewhere, _ = import_datadesigner(FIXTURES / "seeded.yaml", tmp_path / "out.yaml")
    assert Path(elsewhere["stages"][0]["seed"]["path"]).is_absolute()


def test_sampler_formats_match_datadesigner_preview(tmp_path: Path) -> None:
    """Not the values (DataDesigner's RNG is unseeded), but everything deterministic about
    them: the columns, each value's JSON type, lengths, value sets and ranges."""
    theirs = [json.loads(line) for line in (FIXTURES / "samplers_preview.jsonl").open()]
    wf = _load(tmp_path, str(FIXTURES / "samplers_no_person.yaml"), num_records=200)
    ours = _rows(wf, n=200).to_pylist()
    assert list(ours[0]) == [
        c for c in _columns_in_config_order("samplers_no_person") if c in theirs[0]
    ]
    assert set(ours[0]) == set(theirs[0])

    def kinds(rows: list[dict]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in rows:
            for k, v in r.items():
                out.setdefault(k, set()).add(type(v).__name__)
        return out

    # refund_amount: 0.0 or an exponential draw, float either way in both.
    assert kinds(ours) == kinds(theirs)
    for rows in (ours, theirs):
        for r in rows:
            assert re.fullmatch(r"ORD-[0-9A-F]{8}", r["order_id"])
            assert re.fullmatch(r"[0-9a-f]{32}", r["row_uuid"])
            assert 2 <= r["quantity"] <= 10  # scalar constraint ge 2
            assert r["sale_price"] < r["price"]  # column constraint
            assert re.fullmatch(r"2024-\d\d-\d\dT00:00:00", r["order_date"])
            assert re.fullmatch(r"2024-01-01 \d\d:\d\d", r["order_time"])
            assert re.fullmatch(r"20\d\d-\d\d-\d\d", r["delivery_date"])
            assert r["is_member"] in (0, 1) and 0 <= r["num_defects"] <= 10
            assert r["label"] == f"{r['category'].upper()}/{r['subcategory']}"
            lo, hi = (
                (0.5, 0.6)
                if r["quantity"] > 8
                else (0.2, 0.3)
                if r["category"] == "electronics"
                else (0.0, 0.1)
            )
            assert lo <= r["discount"] <= hi, r
            assert list(r["customer_faker"]) == list(theirs[0]["customer_faker"])
            assert r["customer_faker"]["city"] in ("Austin", "Boston")
            assert 21 <= r["customer_faker"]["age"] <= 65
    # DataDesigner's int rounding: the end values come up about half as often as the others.
    counts = {q: sum(r["quantity"] == q for r in ours) for q in range(2, 11)}
    assert counts[10] < counts[5]


def _columns_in_config_order(fixture: str) -> list[str]:
    dd = yaml.safe_load((FIXTURES / f"{fixture}.yaml").read_text())["data_designer"]
    return [c["name"] for c in dd["columns"] if not c["drop"]]


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_unsupported_features_are_named(tmp_path: Path, suffix: str) -> None:
    with pytest.raises(WorkflowConfigError) as exc:
        _load(tmp_path, str(FIXTURES / f"extras{suffix}"))
    text = str(exc.value)
    # The one thing extras lacks: the MCP server its tool_configs name (given beside the config).
    for expected in ("MCP provider 'doc-search-mcp' of tool_alias 'search-tools' is not defined",):
        assert expected in text
    assert "unknown key" not in text
    dd = yaml.safe_load((FIXTURES / "extras.yaml").read_text())
    valid = next(c for c in dd["data_designer"]["columns"] if c["name"] == "sql_valid")
    valid["validator_type"] = "remote"
    with pytest.raises(WorkflowConfigError, match=r"remote validators .* on column 'sql_valid'"):
        _load(tmp_path, dd)


def test_an_unknown_key_is_named_with_its_column(tmp_path: Path) -> None:
    dd = yaml.safe_load((FIXTURES / "samplers_no_person.yaml").read_text())
    dd["data_designer"]["columns"][0]["colour"] = "red"
    with pytest.raises(
        WorkflowConfigError, match=r"unknown DataDesigner key 'colour' on column 'category'"
    ):
        _load(tmp_path, dd)


def test_literal_api_key_is_refused_without_echoing_it(tmp_path: Path) -> None:
    secret = "nvapi-THIS-IS-A-SECRET-123"
    providers = {"mock": {"endpoint": "http://127.0.0.1:9/v1", "api_key": secret}}
    with pytest.raises(WorkflowConfigError) as exc:
        _load(tmp_path, str(FIXTURES / "llm.yaml"), providers=providers)
    assert "providers.mock.api_key" in str(exc.value)
    assert "NAME of an environment variable" in str(exc.value)
    assert secret not in str(exc.value)


def test_providers_resolve_models_as_a_list_too(tmp_path: Path) -> None:
    providers = [{"name": "mock", **MOCK_PROVIDER, "provider_type": "openai", "extra_body": None}]
    wf = _load(tmp_path, str(FIXTURES / "llm.yaml"), providers=providers)
    assert wf.models["mock-text"].base_url == "http://127.0.0.1:9/v1"
    assert wf.models["mock-text"].api_key_env == "DD_TEST_MOCK_KEY"
    # nvidia is DataDesigner's built-in provider.
    assert wf.models["nvidia-text"].base_url == "https://integrate.api.nvidia.com/v1"
    assert wf.models["nvidia-text"].extra_body == {
        "chat_template_kwargs": {"enable_thinking": False}
    }
    with pytest.raises(WorkflowConfigError, match=r"names provider 'mock', which is not defined"):
        _load(tmp_path, str(FIXTURES / "llm.yaml"), providers={})


def test_stage_keys_next_to_data_designer(tmp_path: Path) -> None:
    with pytest.raises(WorkflowConfigError, match="columns comes from the DataDesigner config"):
        _load(tmp_path, str(FIXTURES / "samplers.yaml"), columns=[])
    with pytest.raises(WorkflowConfigError, match="give one seed, not two"):
        _load(tmp_path, str(FIXTURES / "seeded.yaml"), seed={"path": "x.parquet"})
    with pytest.raises(WorkflowConfigError, match="DataDesigner config not found"):
        _load(tmp_path, "nope.yaml")


def test_provider_option() -> None:
    assert parse_provider_option("mock=http://h/v1,api_key_env=K") == (
        "mock",
        {"endpoint": "http://h/v1", "api_key": "K"},
    )
    with pytest.raises(ValueError, match="expected NAME=BASE_URL"):
        parse_provider_option("mock")


def test_seeded_fixture_selects_like_datadesigner(tmp_path: Path) -> None:
    """IndexRange(2, 7) and PartitionBlock(1 of 3) pick the seed rows DataDesigner's preview
    picked (P002..P007, P003..P005); `ordered` cycles through them in order like theirs."""
    for fixture, want in (("seeded", range(2, 8)), ("seeded_partition", range(3, 6))):
        theirs = [json.loads(line) for line in (FIXTURES / f"{fixture}_preview.jsonl").open()]
        ours = _rows(_load(tmp_path, str(FIXTURES / f"{fixture}.yaml"))).to_pylist()
        ids = {f"P{i:03d}" for i in want}
        assert {r["product_id"] for r in ours} == ids == {r["product_id"] for r in theirs}
        if fixture == "seeded_partition":
            assert [r["product_id"] for r in ours] == [r["product_id"] for r in theirs][:12]


def test_nested_schema_transform_renders_like_datadesigner(tmp_path: Path) -> None:
    from dd_assets.engine.finalize import Finalizer

    wf = _load(tmp_path, str(FIXTURES / "seeded_partition.yaml"))
    stage = wf.stage("s")
    rows = _rows(wf)
    out = Finalizer(stage).process(rows).to_pylist()
    theirs = [
        json.loads(line)
        for line in (FIXTURES / "seeded_partition_preview.processor.chat_format.jsonl").open()
    ]
    assert [list(r) for r in out[:1]] == [sorted(theirs[0])]
    for ours_row, their_row in zip(out, theirs, strict=False):
        assert ours_row["literal_bool"] is True and ours_row["literal_number"] == 5
        assert ours_row["literal_null"] is None
        assert ours_row["meta"]["in_stock"] in ("true", "false")
        assert [m["role"] for m in ours_row["messages"]] == ["user", "assistant"]
        assert ours_row["meta"]["tags"][1] == "seed"
        assert ours_row["meta"]["id"] == their_row["meta"]["id"]  # ordered: same seed rows


def test_native_workflow_written_by_import_validates_through_cli(tmp_path: Path, capsys) -> None:
    from dd_assets import cli

    out = tmp_path / "wf.yaml"
    assert (
        cli.main(
            [
                "import",
                str(FIXTURES / "llm.json"),
                "--provider",
                "mock=http://127.0.0.1:9/v1,api_key_env=K",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "answer__trace" in printed and "nvidia" in printed
    assert "lost" in printed
    assert cli.main(["validate", str(out)]) == 0
    assert cli.main(["import", str(FIXTURES / "extras.yaml"), "-o", str(tmp_path / "x.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "names provider 'mock', which is not defined" in err
    assert not (tmp_path / "x.yaml").exists()


def test_parse_workflow_inline_without_wrapper() -> None:
    dd = yaml.safe_load((FIXTURES / "samplers_no_person.yaml").read_text())["data_designer"]
    wf = parse_workflow(_workflow(dd))
    stage = wf.stage("s")
    assert generate_rows(compile_stage(wf, "s"), 0, 5).table.num_rows == 5
    quantity = next(c for c in stage.columns if c.name == "quantity")
    assert quantity.int_rounding == "half_even" and quantity.constraints[0].value == 2.0
