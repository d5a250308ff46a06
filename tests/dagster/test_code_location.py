"""The code location serves what DD_ASSETS_CONFIG names (a file or a folder of workflows), and
nothing else ever reads that variable: a command that names its config is unaffected by it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dagster as dg
import pytest

from dd_assets.testing.workflows import BIN, isolated_env, people_config, write_config

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


def test_a_broken_dd_assets_config_does_not_affect_a_named_config(tmp_path: Path) -> None:
    broken = tmp_path / "not-this-one.yaml"
    broken.write_text("name: broken\nstages: [{name: x, num_records: -1}]\n")
    cfg = write_config(tmp_path / "wf.yaml", people_config(num_records=200, buffer_size=100))
    env = isolated_env(tmp_path, broken)
    for cmd in (
        ["materialize", str(cfg), "--no-progress"],
        ["check", str(cfg)],
        ["status", str(cfg)],
    ):
        out = subprocess.run(
            [str(BIN / "dd-assets"), *cmd], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, (cmd, out.stdout + out.stderr)
        assert "not-this-one" not in out.stdout + out.stderr and "error" not in out.stderr


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
