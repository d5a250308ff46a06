"""./.env is read by dd-assets as Dagster's tools read it (its values win, `${VAR}` expands,
`${PWD}` is this folder), for the duration of one command only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dd_assets import cli
from dd_assets.cli.project_env import project_env
from dd_assets.errors import ConfigError


def test_env_file_wins_for_one_command_then_the_environment_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", "/exported/home")
    monkeypatch.setenv("PWD", "/stale/parent")  # a parent that is not a shell
    monkeypatch.delenv("DD_ASSETS_CONFIG", raising=False)
    (tmp_path / ".env").write_text(
        "DAGSTER_HOME=${PWD}/.dagster_home\nDD_ASSETS_CONFIG=${DD_ASSETS_CONFIG:-examples}\n"
    )
    with project_env():
        assert os.environ["DAGSTER_HOME"] == f"{tmp_path}/.dagster_home"
        assert os.environ["DD_ASSETS_CONFIG"] == "examples"
    assert "replaces the exported DAGSTER_HOME=/exported/home" in capsys.readouterr().err
    assert os.environ["DAGSTER_HOME"] == "/exported/home"
    assert "DD_ASSETS_CONFIG" not in os.environ

    monkeypatch.setenv("DD_ASSETS_CONFIG", "mine.yaml")  # an exported default is kept
    with project_env():
        assert os.environ["DD_ASSETS_CONFIG"] == "mine.yaml"


def test_no_env_file_changes_nothing(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("DAGSTER_HOME", "/exported/home")
    before = dict(os.environ)
    with project_env():
        assert dict(os.environ) == before
    assert capsys.readouterr().err == ""


def test_a_relative_dagster_home_is_refused_as_dagster_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("DAGSTER_HOME", "/exported/home")
    (tmp_path / ".env").write_text("DAGSTER_HOME=.dagster_home\n")
    refused = pytest.raises(ConfigError, match=r"relative path.*\$\{PWD\}/\.dagster_home")
    with refused, project_env():
        pass
    assert os.environ["DAGSTER_HOME"] == "/exported/home"
    # Through the CLI: one `error:` line, exit 1.
    assert cli.main(["status", "nowhere.yaml"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "relative path" in err and len(err.splitlines()) == 1
