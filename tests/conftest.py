"""Fixtures shared by the integration tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dd_assets.testing.postgres import PgServer, PostgresUnavailable, running_postgres
from dd_assets.testing.s3 import S3Server, running_s3
from dd_assets.testing.workflows import isolated_env


@pytest.fixture(autouse=True)
def own_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in a folder of its own, as a user runs dd-assets in a project folder: the
    repository's ./.env (DAGSTER_HOME=./.dagster_home) must not reach a test's commands, which
    read it as Dagster's tools do, nor their subprocesses, which inherit the working directory."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own Dagster instance (SQLite under tmp_path) and data root, set in the
    environment for in-process CLI runs; returns the data root."""
    e = isolated_env(tmp_path)
    for k in ("DAGSTER_HOME", "DD_ASSETS_ROOT"):
        monkeypatch.setenv(k, e[k])
    monkeypatch.chdir(tmp_path)
    return Path(e["DD_ASSETS_ROOT"])


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgServer]:
    """A PostgreSQL server for the tests of one module (dd_assets/testing/postgres.py); fails
    saying how to install it when the binaries are missing, unless DD_ASSETS_SKIP_POSTGRES=1."""
    try:
        with running_postgres(tmp_path_factory.mktemp("pg")) as server:
            yield server
    except PostgresUnavailable as exc:
        if os.environ.get("DD_ASSETS_SKIP_POSTGRES") == "1":
            pytest.skip("DD_ASSETS_SKIP_POSTGRES=1: PostgreSQL test skipped on request")
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One local S3-compatible server (moto) for the whole session; tests take a fresh bucket
    each (`s3_root`)."""
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def s3_root(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """`s3://<fresh bucket>/data` on the session's server, its environment set for this test."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    return f"s3://{s3_server.create_bucket()}/data"
