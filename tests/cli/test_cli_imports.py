"""Commands that run no Dagster never import it (it costs seconds at every start): each is run
with Dagster made unimportable, on a store with data in it, and must succeed without having tried.
And the commands that must answer at once print their first line before the heavy part:
`validate` never loads numpy, pyarrow or Faker, `status` prints its title before loading them,
`preview` its title before the engine (docs/speed.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dd_assets.cli.main import build_parser
from dd_assets.config import load_workflow
from dd_assets.runners.materialize import materialize_wave
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.partition_store import PartitionStore

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
DAGSTER_COMMANDS = {"materialize", "check", "ui"}

BLOCK_DAGSTER = textwrap.dedent(
    """
    import json, sys

    class NoDagster:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("dagster", "dagster_webserver"):
                raise ImportError(f"dagster is blocked in this test ({name})")
            return None

    class FirstWrite:  # stdout, noting what a command imported before it first wrote to it

        def __init__(self, real):
            self.real, self.before, self.first = real, set(), None

        def write(self, text):
            if self.first is None and text:
                self.first = sorted(set(sys.modules) - self.before)
            return self.real.write(text)

        def __getattr__(self, name):
            return getattr(self.real, name)

    sys.meta_path.insert(0, NoDagster())
    from dd_assets.cli import main
    codes, before_first_output = {}, {}
    out = sys.stdout = FirstWrite(sys.stdout)
    for argv in json.loads(sys.argv[1]):
        out.before, out.first = set(sys.modules), None
        codes[argv[0]] = main(argv)
        before_first_output[argv[0]] = out.first
    sys.stdout = out.real
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("dagster", "dagster_webserver"))
    result = {"codes": codes, "dagster_modules": loaded, "before_first_output": before_first_output}
    print(json.dumps(result))
    """
)


def test_every_command_is_listed() -> None:
    """A new command is added to this file's list (or to DAGSTER_COMMANDS, if it runs Dagster)."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {argv[0] for argv in _commands(Path("x"))} | DAGSTER_COMMANDS


def _commands(tmp: Path) -> list[list[str]]:
    q = str(QUICKSTART)
    return [
        ["validate", q],  # first: nothing heavy is loaded before it, nor by it
        ["status", q],  # then: numpy and pyarrow are not loaded yet either
        ["preview", q, "-n", "3"],
        ["export", q, "--format", "jsonl", "-o", str(tmp / "out.jsonl")],
        ["report", q, "--format", "text"],
        ["approve", q, "tickets", str(tmp / "out.jsonl")],
        ["unseal", q, "tickets"],
        ["import", str(ROOT / "tests" / "fixtures" / "datadesigner" / "samplers_no_person.yaml"), "-o", str(tmp / "imported.yaml")],
    ]  # fmt: skip


@pytest.mark.slow
def test_commands_without_dagster_never_import_it(tmp_path: Path) -> None:
    root = tmp_path / "dd-data"
    plan = plan_workflow(load_workflow(QUICKSTART))
    materialize_wave(list(plan.stages.values()), PartitionStore(root), range(2))
    commands = _commands(tmp_path)
    out = subprocess.run(
        [sys.executable, "-c", BLOCK_DAGSTER, json.dumps(commands)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "DD_ASSETS_ROOT": str(root), "COLUMNS": "120"},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["dagster_modules"] == []
    # They ran (an error exit would still prove nothing about imports, but say so).
    assert all(code == 0 for code in result["codes"].values()), (result, out.stderr[-3000:])
    # The first line comes before the heavy part (docs/speed.md: a command answers at once).
    first = {cmd: _heavy(mods) for cmd, mods in result["before_first_output"].items()}
    assert first["validate"] == set()
    assert first["status"] == set() and "dd_assets.runners.status" not in result["before_first_output"]["status"]  # fmt: skip
    assert first["preview"] == set()  # numpy and pyarrow were loaded by status; Faker was not
    assert not any(m.startswith("dd_assets.engine.") and m != "dd_assets.engine.compiled" for m in result["before_first_output"]["preview"])  # fmt: skip


def _heavy(modules: list[str]) -> set[str]:
    """numpy, pyarrow and Faker: what costs a command ~0.2-0.5 s to import."""
    return {m.split(".")[0] for m in modules} & {"numpy", "pyarrow", "faker"}


@pytest.mark.slow
def test_what_status_loads_after_its_title(tmp_path: Path) -> None:
    """`status` where no footer has to be read (here: nothing on disk yet; a big stage: its
    footer index stands for its folder) loads, after its title, no pyarrow.parquet (with
    pyarrow.fs and ssl), dataset or compute, no pandas (pa.array and pa.table import it), and not
    the finalize runner: each costs a status ~0.05-0.4 s (docs/speed.md)."""
    code = (
        "import json, sys; from dd_assets.cli.main import main; before = set(sys.modules);"
        f" code = main(['status', {str(QUICKSTART)!r}]);"
        " print(json.dumps([code, sorted(set(sys.modules) - before)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "DD_ASSETS_ROOT": str(tmp_path / "empty")},
    )
    code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert code == 0
    assert {"numpy", "pyarrow", "dd_assets.runners.status_columns"} <= set(loaded)  # it ran
    unwanted = {
        "pyarrow.parquet",
        "pyarrow.fs",
        "pyarrow.dataset",
        "pyarrow.compute",
        "pandas",
        "ssl",
        "dd_assets.runners.finalize",
        "dd_assets.engine.finalize",
    }
    assert sorted(set(loaded) & unwanted) == []


def test_status_and_validate_as_the_program_leave_their_objects_to_the_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """cli/main.py QUICK_EXIT: run as the program (argv from sys.argv), `status` and `validate`
    freeze what they loaded, so Python's exit does not collect it all again (~0.05-0.15 s);
    called with argv (in process, as tests do) and for other commands, the collector is left
    alone."""
    import gc

    from dd_assets.cli.main import main

    monkeypatch.setenv("DD_ASSETS_ROOT", str(tmp_path))
    gc.unfreeze()
    try:
        assert main(["status", str(QUICKSTART)]) == 0
        assert gc.get_freeze_count() == 0
        monkeypatch.setattr(sys, "argv", ["dd-assets", "unseal", str(QUICKSTART), "tickets"])
        assert main() == 0
        assert gc.get_freeze_count() == 0
        for command in ("status", "validate"):
            monkeypatch.setattr(sys, "argv", ["dd-assets", command, str(QUICKSTART)])
            assert main() == 0
            assert gc.get_freeze_count() > 0
            gc.unfreeze()
    finally:
        gc.unfreeze()
    assert "quickstart: status" in capsys.readouterr().out


@pytest.mark.slow
def test_what_materialize_and_the_code_location_import(tmp_path: Path) -> None:
    """Every `dd-assets materialize`, run worker and code server imports the Dagster layer, so
    what only some of them use is imported where it is used (docs/speed.md, "process start-up"):
    the LLM client (aiohttp) by a wave with LLM cells, Faker by person samplers, jsonschema by
    structured answers, Dagster's SQLite storage by an instance that has it (never by a code
    server), pyarrow.dataset and pandas by readers; and nothing of Dagster's webserver or
    PostgreSQL storage. A wave without LLM cells still imports no aiohttp. And `dd-assets ui`,
    which only opens the instance before it execs `dagster dev`, imports no assets."""
    code = textwrap.dedent(
        f"""
        import json, sys
        import dd_assets.dagster.instance, dd_assets.dagster.names, dd_assets.dagster.workspace
        ui = sorted(sys.modules)
        import dd_assets.dagster.definitions, dd_assets.dagster.materialize
        at_import = sorted(sys.modules)
        from dd_assets.config import load_workflow
        from dd_assets.runners.materialize import materialize_wave
        from dd_assets.runners.plan import plan_workflow
        from dd_assets.store.partition_store import PartitionStore
        plan = plan_workflow(load_workflow({str(QUICKSTART)!r}))
        materialize_wave(list(plan.stages.values()), PartitionStore({str(tmp_path)!r}), [0])
        print(json.dumps([ui, at_import, sorted(sys.modules)]))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    ui, at_import, after_wave = (set(m) for m in json.loads(out.stdout.strip().splitlines()[-1]))
    assert "dagster" in ui and not {"dd_assets.dagster.build", "numpy", "pyarrow"} & ui
    assert {"dagster", "dd_assets.dagster.assets", "dd_assets.runners.materialize"} <= at_import
    assert {"faker", "pandas"} <= after_wave  # the wave ran (person samplers; pa.array)
    unwanted = {
        "aiohttp",
        "dd_assets.llm.client",
        "faker",
        "jsonschema",
        "dd_assets.dagster.sqlite_storage",
        "dagster._core.storage.event_log.sqlite",
        "dagster._core.storage.runs.sqlite",
        "pyarrow.dataset",
        "pandas",
        "dagster_webserver",
        "dagster_graphql",
        "dagster_postgres",
    }
    assert sorted(at_import & unwanted) == []
    assert sorted(after_wave & {"aiohttp", "dd_assets.llm.client", "jsonschema"}) == []
