"""`dd-assets validate` and `dd-assets preview`: in-process through `main([...])`, and once each as
a real subprocess. Validate reports every error at once with its YAML path and line; preview prints
a table, writes nothing and needs no Dagster."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dd_assets.cli import main
from dd_assets.cli.render import print_table
from dd_assets.config import load_workflow
from dd_assets.config.fingerprint import workflow_fingerprints
from dd_assets.engine import compile_stage, generate_rows
from dd_assets.runners.plan import plan_workflow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
_SCRIPT = Path(sys.executable).with_name("dd-assets")
CLI = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dd_assets.cli"]

GOOD = textwrap.dedent(
    """\
    name: shop
    stages:
      - name: orders
        num_records: 40
        buffer_size: 15
        columns:
          - name: order_id
            column_type: sampler
            sampler_type: uuid
            params: {prefix: "ID-", short_form: true}
          - name: qty
            column_type: sampler
            sampler_type: uniform
            params: {low: 1, high: 9}
            convert_to: int
          - name: label
            column_type: expression
            expr: "{{ qty }} pcs"
      - name: flags
        num_records: 5
        columns:
          - name: flag
            column_type: sampler
            sampler_type: bernoulli
            params: {p: 0.5}
    """
)

# Four kinds of error at once: an unknown key (a structural error, so pydantic fails first and
# the semantic checks run on what parsed), a duplicate column, an unknown reference, a cycle.
BAD_WITH_UNKNOWN_KEY = textwrap.dedent(
    """\
    name: bad
    stages:
      - name: s
        num_records: 10
        colour: red
        columns:
          - name: a
            column_type: sampler
            sampler_type: uniform
            params: {low: 0, high: 1}
          - name: a
            column_type: sampler
            sampler_type: bernoulli
            params: {p: 0.5}
          - name: b
            column_type: expression
            expr: "{{ missing_col }}"
          - name: c
            column_type: expression
            expr: "{{ d }}"
          - name: d
            column_type: expression
            expr: "{{ c }}"
    """
)
# (text on the reported line, its occurrence, YAML path, message fragment)
EXPECTED_WITH_UNKNOWN_KEY = [
    ("colour: red", 1, "stages[0].colour", "unknown key"),
    ("- name: a", 2, "stages[0].columns[1].name", "duplicate column name 'a'"),
    ("- name: b", 1, "stages[0].columns[2]", "unknown column 'missing_col'"),
    ("columns:", 1, "stages[0].columns", "columns ['c', 'd'] depend on each other in a cycle"),
]

# Semantic errors only (pydantic passes, the cross-field checks collect), in two stages, plus a
# bad field value in a third column.
BAD_SEMANTIC = textwrap.dedent(
    """\
    name: bad2
    stages:
      - name: first
        num_records: 10
        columns:
          - name: x
            column_type: expression
            expr: "{{ y }}"
          - name: y
            column_type: expression
            expr: "{{ x }}"
      - name: second
        num_records: 10
        columns:
          - name: k
            column_type: sampler
            sampler_type: uuid
            params: {}
          - name: k
            column_type: expression
            expr: "{{ ghost }}"
    """
)
EXPECTED_SEMANTIC = [
    ("columns:", 1, "stages[0].columns", "columns ['x', 'y'] depend on each other in a cycle"),
    ("- name: k", 2, "stages[1].columns[1].name", "duplicate column name 'k'"),
    ("- name: k", 2, "stages[1].columns[1]", "unknown column 'ghost'"),
]


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[occurrence - 1]


def expected_lines(
    text: str, source: Path, expected: list[tuple[str, int, str, str]]
) -> list[tuple[str, str]]:
    """(`file:line: path: ` prefix, message fragment) per expected error."""
    return [
        (f"{source}:{line_of(text, needle, occurrence)}: {path}: ", fragment)
        for needle, occurrence, path, fragment in expected
    ]


def assert_reported(stderr: str, expected: list[tuple[str, str]]) -> None:
    lines = stderr.splitlines()
    for prefix, fragment in expected:
        hits = [ln for ln in lines if ln.strip().startswith(prefix) and fragment in ln]
        assert hits, f"no line starting {prefix!r} with {fragment!r} in:\n{stderr}"
    m = re.search(r"(\d+) errors? in workflow config", stderr)
    assert m and int(m.group(1)) == len(expected), stderr


def tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.fixture
def good(tmp_path: Path) -> Path:
    cfg = tmp_path / "good.yaml"
    cfg.write_text(GOOD)
    return cfg


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


# ---------------------------------------------------------------------------------------------
# validate


def test_validate_good_config(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(good)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "ok" in out and "'shop'" in out and "2 stage(s)" in out
    fps = workflow_fingerprints(load_workflow(good))
    assert f"orders: 3 column(s), 40 records in 3 row group(s) of 15, fingerprint {fps['orders'].short}" in out  # fmt: skip
    assert f"flags: 1 column(s), 5 records in 1 row group(s) of 1000, fingerprint {fps['flags'].short}" in out  # fmt: skip


def test_validate_shows_seeds_and_the_fingerprints_runs_use(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A file-seeded stage's fingerprint covers the file's content: validate must print that one
    (the one its data lives under), not one computed without the file."""
    cfg = QUICKSTART.parent / "chain.yaml"
    assert main(["validate", str(cfg)]) == 0
    out = capsys.readouterr().out
    plans = plan_workflow(load_workflow(cfg))
    without_file = workflow_fingerprints(load_workflow(cfg))
    assert plans["reviews"].fingerprint.short != without_file["reviews"].short
    for name, seed in [
        ("reviews", "seed file products.csv"),
        ("replies", "seed reviews (row_group)"),
        ("threads", "joins replies + moods on review_id"),
        ("digest", "seed reviews (sample)"),
    ]:
        assert f"{seed}, fingerprint {plans[name].fingerprint.short}" in out, out


def test_validate_quickstart(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART)]) == 0
    assert "tickets: 10 column(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("text", "expected"),
    [(BAD_WITH_UNKNOWN_KEY, EXPECTED_WITH_UNKNOWN_KEY), (BAD_SEMANTIC, EXPECTED_SEMANTIC)],
    ids=["with-unknown-key", "semantic-only"],
)
def test_validate_reports_every_error_with_its_path(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str,
    expected: list[tuple[str, int, str, str]],
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["validate", str(cfg)]) == 1
    out, err = capsys.readouterr()
    assert "ok" not in out
    assert "Traceback" not in err
    assert_reported(err, expected_lines(text, cfg, expected))


def test_ui_checks_a_file_or_a_folder_of_workflows_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dd-assets ui FOLDER` serves a folder as one code location (as DD_ASSETS_CONFIG does), so
    it checks every workflow in it first; a bad one is one error naming its file, before any
    server starts (a good folder is served in tests/e2e/test_ui_browser.py)."""
    folder = tmp_path / "workflows"
    folder.mkdir()
    assert main(["ui", str(folder)]) == 1
    assert "no workflow configs (*.yaml, *.yml) in folder" in capsys.readouterr().err
    shutil.copy(QUICKSTART, folder / "quickstart.yaml")
    (folder / "broken.yaml").write_text("name: broken\nstages: 3\n")
    assert main(["ui", str(folder)]) == 1
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "broken.yaml" in err and "Traceback" not in err


@pytest.mark.parametrize("command", ["validate", "preview"])
def test_missing_config_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    missing = tmp_path / "does_not_exist.yaml"
    assert main([command, str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    assert f"config file not found: {missing}" in err
    assert not missing.exists()


# ---------------------------------------------------------------------------------------------
# preview


def preview_ids(text: str) -> list[str]:
    return re.findall(r"ID-[0-9a-f]{16}", text)


def test_preview_prints_a_table_and_writes_nothing(
    good: Path, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = tree(tmp_path)
    assert main(["preview", str(good), "--stage", "orders", "-n", "10"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "shop / orders: first 10 rows" in out
    header = next(ln for ln in out.splitlines() if "order_id" in ln)
    assert all(name in header for name in ("order_id", "qty", "label"))
    expected = generate_rows(compile_stage(load_workflow(good), "orders"), 0, 10).table
    assert preview_ids(out) == expected["order_id"].to_pylist()
    for row in expected.to_pylist():
        line = next(ln for ln in out.splitlines() if row["order_id"] in ln)
        assert f" {row['qty']} " in line and row["label"] in line
    assert tree(tmp_path) == before  # nothing written: no dd-data, no .dagster_home, no cache
    assert list(workdir.iterdir()) == []


def test_preview_defaults_and_caps(good: Path, workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # default stage is the first one, default n is 10
    assert main(["preview", str(good)]) == 0
    assert len(preview_ids(capsys.readouterr().out)) == 10
    # n beyond num_records shows every record
    assert main(["preview", str(good), "--stage", "flags", "-n", "50"]) == 0
    out = capsys.readouterr().out
    assert "shop / flags: first 5 rows" in out
    assert list(workdir.iterdir()) == []


def test_preview_wide_stage_prints_one_table_per_row(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["preview", str(QUICKSTART), "-n", "3"]) == 0
    out = capsys.readouterr().out
    assert "quickstart / tickets: first 3 rows" in out
    assert re.findall(r"^row (\d+)$", out, re.MULTILINE) == ["0", "1", "2"]
    for name in ("ticket_id", "product", "issue", "customer", "summary", "escalate"):
        assert out.count(f" {name} ") == 3
    assert list(workdir.iterdir()) == []


def test_preview_unknown_stage(good: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", str(good), "--stage", "nope"]) == 1
    err = capsys.readouterr().err
    assert "no stage 'nope'" in err and "orders, flags" in err


MARKUP = textwrap.dedent(
    """\
    name: mk
    stages:
      - name: s
        num_records: 30
        columns:
          - name: code
            column_type: sampler
            sampler_type: category
            params: {values: ["x = arr[i] + [bold]y", "[/]", "see [link=http://a]here"]}
          - name: n
            column_type: expression
            dtype: int
            expr: "{{ '[/red] oops' if code == '[/]' else 1 }}"
    """
)


def test_preview_shows_brackets_in_data_verbatim(
    tmp_path: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Generated text is data, never rich markup: `[/]` must not crash the table, `arr[i]` must
    not turn into italics and vanish, and drop reasons quoting data print as they are."""
    folder = tmp_path / "[old]"
    folder.mkdir()
    cfg = folder / "mk.yaml"
    cfg.write_text(MARKUP)
    assert main(["validate", str(cfg)]) == 0
    assert f"ok {cfg}:" in capsys.readouterr().out
    assert main(["preview", str(cfg), "-n", "30"]) == 0
    out, err = capsys.readouterr()
    assert "x = arr[i] + [bold]y" in out
    assert "see [link=http://a]here" in out
    result = generate_rows(compile_stage(load_workflow(cfg), "s"), 0, 30)
    kept = result.table["code"].to_pylist()
    dropped = 30 - len(kept)
    assert dropped > 0 and "[/]" not in kept
    assert out.count("arr[i]") == kept.count("x = arr[i] + [bold]y")
    assert f"{dropped} row(s) dropped" in err
    assert f"{dropped}x n: expression: cannot convert '[/red] oops' to int" in err


def test_print_table_without_rows_still_shows_the_header(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # every row of a preview can be dropped (failed LLM cells): the columns are still shown
    print_table([], "w / s: first 0 rows", ["alpha", "beta"])
    out = capsys.readouterr().out
    assert "w / s: first 0 rows" in out and "alpha" in out and "beta" in out


# ---------------------------------------------------------------------------------------------
# real subprocesses


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "120"}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.mark.slow
def test_subprocess_validate_and_preview(good: Path, workdir: Path, tmp_path: Path) -> None:
    before = tree(tmp_path)
    ok = run_cli("validate", str(good), cwd=workdir)
    assert ok.returncode == 0, ok.stderr
    assert "orders: 3 column(s)" in ok.stdout

    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_WITH_UNKNOWN_KEY)
    before.add("bad.yaml")
    failed = run_cli("validate", str(bad), cwd=workdir)
    assert failed.returncode == 1
    assert failed.stdout == ""
    assert_reported(failed.stderr, expected_lines(BAD_WITH_UNKNOWN_KEY, bad, EXPECTED_WITH_UNKNOWN_KEY))  # fmt: skip

    shown = run_cli("preview", str(good), "--stage", "orders", "-n", "10", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    assert "order_id" in shown.stdout and "label" in shown.stdout
    expected = generate_rows(compile_stage(load_workflow(good), "orders"), 0, 10).table
    assert preview_ids(shown.stdout) == expected["order_id"].to_pylist()

    missing = run_cli("preview", "nowhere.yaml", cwd=workdir)
    assert missing.returncode == 1
    assert "config file not found: nowhere.yaml" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert tree(tmp_path) == before
    assert list(workdir.iterdir()) == []


@pytest.mark.slow
def test_preview_runs_without_dagster(good: Path, workdir: Path) -> None:
    """Dagster made unimportable: preview still works (and never tried to import it)."""
    script = textwrap.dedent(
        """
        import sys

        class NoDagster:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("dagster", "dagster_webserver"):
                    raise ImportError(f"dagster is blocked in this test ({name})")
                return None

        sys.meta_path.insert(0, NoDagster())
        from dd_assets.cli import main
        rc = main(sys.argv[1:])
        assert not any(m.split(".")[0] == "dagster" for m in sys.modules), "dagster imported"
        sys.exit(rc)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "preview", str(good), "-n", "4"],
        capture_output=True,
        text=True,
        cwd=workdir,
        env={**os.environ, "COLUMNS": "120"},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert len(preview_ids(out.stdout)) == 4
    assert list(workdir.iterdir()) == []
