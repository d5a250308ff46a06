"""Fixtures shared by the integration tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from dd_assets.testing.workflows import isolated_env


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own Dagster instance (SQLite under tmp_path) and data root, set in the
    environment for in-process CLI runs; returns the data root."""
    e = isolated_env(tmp_path)
    for k in ("DAGSTER_HOME", "DD_ASSETS_ROOT"):
        monkeypatch.setenv(k, e[k])
    monkeypatch.chdir(tmp_path)
    return Path(e["DD_ASSETS_ROOT"])
