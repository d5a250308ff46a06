"""The code location serves what DD_ASSETS_CONFIG names (a file or a folder of workflows), and
nothing else ever reads that variable: a command that names its config is unaffected by it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dagster as dg
import pytest
import yaml

from dd_assets.testing.workflows import BIN, REPO, isolated_env, people_config, write_config

pytestmark = [pytest.mark.slow]


def _load(monkeypatch: pytest.MonkeyPatch, target: Path | None) -> dg.Definitions:
    from dd_assets.dagster import definitions

    if target is None:
        monkeypatch.delenv("DD_ASSETS_CONFIG", raising=False)
    else:
        monkeypatch.setenv("DD_ASSETS_CONFIG", str(target))
    return definitions.defs()


def test_a_folder_of_workflows_is_one_code_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    write_config(folder / "a.yaml", people_config(name="alpha", num_records=200))
    write_config(folder / "b.yml", people_config(name="beta", num_records=300, downstream=True))
    (folder / "notes.txt").write_text("not a workflow")
    monkeypatch.setenv("DD_ASSETS_ROOT", str(tmp_path / "data"))
    graph = _load(monkeypatch, folder).resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups == {
        "alpha/people": "alpha",
        "beta/people": "beta",
        "beta/notes": "beta",
    }


def test_two_workflows_with_one_name_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "workflows"
    folder.mkdir()
    write_config(folder / "a.yaml", people_config(name="same"))
    write_config(folder / "b.yaml", people_config(name="same"))
    from dd_assets.errors import ConfigError

    with pytest.raises(ConfigError, match="'same' used by more than one config"):
        _load(monkeypatch, folder)


def test_unset_config_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from dd_assets.errors import ConfigError

    with pytest.raises(ConfigError, match="DD_ASSETS_CONFIG is not set"):
        _load(monkeypatch, None)


def test_a_broken_dd_assets_config_does_not_affect_a_named_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In this process (cli.main, what the command runs, the environment set as for it): three
    process start-ups would add nothing the variable could reach."""
    from dd_assets import cli

    broken = tmp_path / "not-this-one.yaml"
    broken.write_text("name: broken\nstages: [{name: x, num_records: -1}]\n")
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=200, buffer_size=100))
    env = isolated_env(tmp_path, broken)
    for k in ("DAGSTER_HOME", "DD_ASSETS_ROOT", "DD_ASSETS_CONFIG"):
        monkeypatch.setenv(k, env[k])
    for cmd in (
        ["materialize", str(cfg), "--no-progress"],
        ["check", str(cfg)],
        ["status", str(cfg)],
    ):
        capsys.readouterr()
        code = cli.main(cmd)
        out = capsys.readouterr()
        assert code == 0, (cmd, out.out + out.err)
        assert "not-this-one" not in out.out + out.err and "error" not in out.err


def test_a_new_instance_has_telemetry_off_and_shows_no_banner(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=100, buffer_size=100))
    env = isolated_env(tmp_path, cfg)
    home = tmp_path / "fresh_home"
    env["DAGSTER_HOME"] = str(home)
    out = subprocess.run(
        [str(BIN / "dd-assets"), "materialize", str(cfg), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "telemetry:\n  enabled: false" in (home / "dagster.yaml").read_text()
    assert "Telemetry" not in out.stdout + out.stderr and "telemetry" not in out.stderr


def test_workspace_yaml_and_dd_assets_ui_serve_the_location_under_one_name() -> None:
    """CLI runs record the location LOCATION_NAME as their origin; both ways of serving it must
    use that name, or the UI cannot find (nor re-execute) their jobs."""
    from dd_assets.dagster.names import LOCATION_NAME
    from dd_assets.dagster.workspace import workspace

    repo = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert repo == workspace()
    assert repo["load_from"][0]["python_module"]["location_name"] == LOCATION_NAME


def test_the_repository_instance_is_the_one_dd_assets_would_create() -> None:
    """./.env points Dagster's tools here at ./.dagster_home, which the repository ships (so a
    fresh clone's `dagster dev -w workspace.yaml` finds it) with dd-assets' own dagster.yaml."""
    from dd_assets.dagster.instance import NEW_INSTANCE_YAML

    assert (REPO / ".dagster_home" / "dagster.yaml").read_text() == NEW_INSTANCE_YAML
    assert "DAGSTER_HOME=${PWD}/.dagster_home" in (REPO / ".env").read_text().splitlines()


def test_a_folder_of_workflow_components_is_one_code_location(tmp_path: Path) -> None:
    """A dg project whose defs/ holds one `defs.yaml` per workflow (dd_assets.dagster.component):
    loaded with `dagster` alone, all workflows in one location, validated by Dagster's CLI."""
    project = tmp_path / "proj"
    defs = project / "proj" / "defs"
    for name, cfg in (
        ("alpha", people_config(name="alpha", num_records=200)),
        ("beta", people_config(name="beta", num_records=300, downstream=True)),
    ):
        (defs / name).mkdir(parents=True)
        write_config(defs / name / f"{name}.yaml", cfg)
        (defs / name / "defs.yaml").write_text(
            f"type: dd_assets.dagster.component.Workflow\nattributes:\n  config: {name}.yaml\n"
        )
    for pkg in (project / "proj", defs):
        (pkg / "__init__.py").write_text("")
    (project / "proj" / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n"
        "defs = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    (project / "pyproject.toml").write_text(
        '[tool.dg]\ndirectory_type = "project"\n\n[tool.dg.project]\nroot_module = "proj"\n'
        'code_location_name = "dd-assets"\n'
    )
    env = isolated_env(tmp_path) | {"PYTHONPATH": str(project)}
    listing = subprocess.run(
        [
            str(BIN / "python"),
            "-c",
            "from proj.definitions import defs\n"
            "g = defs.resolve_asset_graph()\n"
            "print(sorted((k.to_user_string(), g.get(k).group_name)"
            " for k in g.get_all_asset_keys()))\n"
            "print(sorted(j.name for j in defs.resolve_all_job_defs()))\n",
        ],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert listing.returncode == 0, listing.stderr
    assets, jobs = listing.stdout.splitlines()
    assert assets == str(
        [("alpha/people", "alpha"), ("beta/notes", "beta"), ("beta/people", "beta")]
    )
    for job in ("alpha__people__job", "beta__people__job", "beta__checks_job"):
        assert repr(job) in jobs
    validated = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate"],
        env=env,
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert (
        "Validation successful for code location dd-assets" in validated.stdout + validated.stderr
    )
