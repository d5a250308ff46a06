"""Custom columns: DataDesigner's extras_custom fixture (a bare generator_function name) runs once
`functions:` binds the name; cell_by_cell and full_column functions with DataDesigner's
signature; a failing row is dropped; the fingerprint follows the function's source."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.config.fingerprint import workflow_fingerprints
from dd_assets.engine.compiled import compile_stage
from dd_assets.engine.rowgroup import generate_rows
from dd_assets.testing.workflows import write_config

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "datadesigner"
STOCK_LABEL = f"{FIXTURES / 'custom_functions.py'}:stock_label"


def _referencing(tmp_path: Path, suffix: str, functions: dict | None) -> Path:
    wf: dict = {
        "name": "dd",
        "stages": [
            {
                "name": "custom",
                "num_records": 12,
                "buffer_size": 6,
                "data_designer": str(FIXTURES / f"extras_custom{suffix}"),
            }
        ],
    }
    if functions is not None:
        wf["functions"] = functions
    return write_config(tmp_path / "wf.yaml", wf)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_extras_custom_runs_once_functions_binds_the_bare_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # Unbound: one error line naming the column and the fix.
    cfg = _referencing(tmp_path, suffix, None)
    assert cli.main(["validate", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "custom column 'stock_label'" in err
    assert "functions: {stock_label: 'package.module:stock_label'}" in err
    assert "Traceback" not in err

    binding = {"function": STOCK_LABEL, "dtype": {"stock_flag": "bool"}}
    cfg = _referencing(tmp_path, suffix, {"stock_label": binding})
    assert cli.main(["validate", str(cfg)]) == 0
    assert cli.main(["preview", str(cfg), "-n", "6"]) == 0
    assert "stock_flag" in capsys.readouterr().out
    wf = load_workflow(cfg)
    col = wf.stage("custom").column("stock_label")
    # The decorator's metadata: the column reads in_stock and makes stock_flag too.
    assert (col.input_columns, col.side_effect_columns) == (["in_stock"], ["stock_flag"])
    rows = generate_rows(compile_stage(wf, "custom"), 0, 12).table.to_pylist()
    assert list(rows[0]) == ["in_stock", "stock_label", "stock_flag"]
    assert {r["in_stock"] for r in rows} == {0, 1, 2}
    for r in rows:  # DataDesigner's values and types: a str column, a bool side column
        assert r["stock_label"] == f"stock={r['in_stock']}"
        assert r["stock_flag"] is (r["in_stock"] > 0)

    # dd-assets import --function writes a workflow giving the same rows as the referenced form.
    plain = _referencing(tmp_path, suffix, {"stock_label": STOCK_LABEL})
    shown = generate_rows(compile_stage(load_workflow(plain), "custom"), 0, 12).table
    assert shown.column("stock_flag").to_pylist()[0] in ("true", "false")  # JSON text by default
    out = tmp_path / "native.yaml"
    args = ["import", str(FIXTURES / f"extras_custom{suffix}"), "-o", str(out), "--name", "dd"]
    assert cli.main([*args, "--function", f"stock_label={STOCK_LABEL}"]) == 0
    native = yaml.safe_load(out.read_text())
    assert native["functions"] == {"stock_label": STOCK_LABEL}
    native["stages"][0].update(name="custom", num_records=12, buffer_size=6)
    out.write_text(yaml.safe_dump(native, sort_keys=False))
    again = generate_rows(compile_stage(load_workflow(out), "custom"), 0, 12).table
    assert again.equals(shown)
    assert (
        workflow_fingerprints(load_workflow(out))["custom"].hex
        == workflow_fingerprints(load_workflow(plain))["custom"].hex
    )


FUNCTIONS = """
def scaled(df, generator_params):
    df["scaled"] = df["n"] * generator_params["k"]
    return df


def label(row):
    if row["n"] == 2:
        raise ValueError("two is not allowed")
    row["label"] = {"n": row["n"], "scaled": row["scaled"]}
    return row
"""


def _native(folder: Path, source: str = FUNCTIONS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fns.py").write_text(source)
    return write_config(
        folder / "wf.yaml",
        {
            "name": "w",
            "functions": {
                "scaled": {"function": "fns.py:scaled", "dtype": "int"},
                "label": "fns.py:label",
            },
            "stages": [
                {
                    "name": "s",
                    "num_records": 20,
                    "buffer_size": 20,
                    "columns": [
                        {
                            "name": "n",
                            "column_type": "sampler",
                            "sampler_type": "category",
                            "params": {"values": [1, 2, 3]},
                        },
                        {
                            "name": "scaled",
                            "column_type": "custom",
                            "generator_function": "scaled",
                            "generation_strategy": "full_column",
                            "generator_params": {"k": 10},
                            "skip": {"when": "{{ n == 3 }}", "value": -1},
                        },
                        {"name": "label", "column_type": "custom", "generator_function": "label"},
                    ],
                }
            ],
        },
    )


def test_full_column_and_cell_functions_with_params_skips_and_dropped_rows(
    tmp_path: Path,
) -> None:
    wf = load_workflow(_native(tmp_path / "a"))
    result = generate_rows(compile_stage(wf, "s"), 0, 20)
    rows = result.table.to_pylist()
    assert rows and all(r["n"] != 2 for r in rows)
    for r in rows:
        assert r["scaled"] == (-1 if r["n"] == 3 else 10)  # skipped where n == 3
        assert yaml.safe_load(r["label"]) == {"n": r["n"], "scaled": r["scaled"]}  # JSON text
    assert result.drops and {(d.column, d.kind) for d in result.drops} == {("label", "custom")}
    assert "ValueError: two is not allowed" in result.drops[0].message


def test_the_fingerprint_follows_the_function_source(tmp_path: Path) -> None:
    def fp(folder: str, source: str = FUNCTIONS) -> str:
        return workflow_fingerprints(load_workflow(_native(tmp_path / folder, source)))["s"].hex

    same = fp("a")
    assert fp("b") == same  # the same function text elsewhere: the same dataset
    assert (
        fp("c", FUNCTIONS.replace('* generator_params["k"]', '* generator_params["k"] + 1')) != same
    )


def test_a_binding_that_does_not_load_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _native(tmp_path / "a", "def scaled(frame):\n    return frame\n")
    assert cli.main(["validate", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "fns.py:scaled must take (row) or (df)" in err
    assert "has no function 'label'" in err


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_local_callable_validator_of_the_fixture_gives_datadesigner_reports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    fixture = FIXTURES / f"extras_local_callable{suffix}"
    wf: dict = {
        "name": "dd",
        "stages": [
            {"name": "v", "num_records": 9, "buffer_size": 9, "data_designer": str(fixture)}
        ],
    }
    cfg = write_config(tmp_path / "wf.yaml", wf)
    assert cli.main(["validate", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "local_callable validator of column 'stock_valid'" in err
    assert "functions: {check_stock: 'package.module:check_stock'}" in err

    where = f"{FIXTURES / 'custom_functions.py'}:check_stock"
    wf["functions"] = {"check_stock": {"function": where, "dtype": {"units": "int"}}}
    cfg = write_config(tmp_path / "wf.yaml", wf)
    assert cli.main(["validate", str(cfg)]) == 0
    assert cli.main(["preview", str(cfg), "-n", "3"]) == 0
    rows = generate_rows(compile_stage(load_workflow(cfg), "v"), 0, 9).table.to_pylist()
    # DataDesigner's preview of the same config: the report is the function's row.
    theirs = [
        yaml.safe_load(line) for line in (FIXTURES / "extras_local_callable_preview.jsonl").open()
    ]
    for r in [*rows, *theirs]:
        assert r["stock_valid"] == {"is_valid": r["in_stock"] > 0, "units": r["in_stock"] * 10}
    assert {r["in_stock"] for r in rows} == {0, 1, 2}

    out = tmp_path / "native.yaml"
    args = ["import", str(fixture), "-o", str(out), "--name", "dd", "--function"]
    assert cli.main([*args, f"check_stock={where}"]) == 0
    native = yaml.safe_load(out.read_text())
    native["functions"] = wf["functions"]  # the dtype mapping is the binding's, as above
    native["stages"][0].update(name="v", num_records=9, buffer_size=9)
    out.write_text(yaml.safe_dump(native, sort_keys=False))
    again = generate_rows(compile_stage(load_workflow(out), "v"), 0, 9).table.to_pylist()
    assert again == rows


def test_unknown_keys_in_custom_and_validator_columns_are_named_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "fns.py").write_text("def f(row):\n    return row\n\ndef g(df):\n    return df\n")
    col = {"column_type": "validation", "target_columns": ["n"], "validator_type": "local_callable"}
    cfg = write_config(
        tmp_path / "wf.yaml",
        {
            "name": "w",
            "functions": {"f": "fns.py:f", "g": "fns.py:g"},
            "stages": [
                {
                    "name": "s",
                    "num_records": 2,
                    "buffer_size": 2,
                    "columns": [
                        {"name": "n", "column_type": "sampler", "sampler_type": "category",
                         "params": {"values": [1]}},
                        {"name": "c", "column_type": "custom", "generator_function": "f",
                         "generation_strategy": "sideways"},
                        {"name": "v", **col, "validator_params": {"validation_function": "g",
                                                                  "bogus": 1}},
                        {"name": "e", "column_type": "embedding", "target_column": "n",
                         "model_alias": "m", "colour": "red"},
                    ],
                }
            ],
        },
    )  # fmt: skip
    assert cli.main(["validate", str(cfg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "stages[0].columns[1].generation_strategy: Input should be" in err
    assert "stages[0].columns[2].validator_params.bogus: unknown key" in err
    assert "stages[0].columns[3].colour: unknown key" in err
