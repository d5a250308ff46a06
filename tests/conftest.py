"""Fixtures shared by the integration tests."""

from __future__ import annotations

import json
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


# --- Scheduling on several workers (tests/run: pytest-xdist, --dist worksteal) -----------------
# worksteal hands each worker an equal COUNT of tests, in collection order, then lets an idle
# worker take the tail of the longest queue. In file order the long end-to-end tests cluster
# (tests/e2e, tests/dagster), so one worker got most of them and the suite ended on a long tail
# with the other worker idle. With the recorded durations (tests/durations.json, rewritten by
# `pytest --record-durations`), the long tests are dealt out longest first over the workers
# (each to the worker with the least recorded time so far) and start first on each; the short
# ones fill each worker's share in file order, at the tail where stealing balances the rest.
# Tests whose module-scoped fixtures start servers (a deployment, PostgreSQL) stay together on
# one worker: split, each worker would start its own. One process (-n 0): file order unchanged.

DURATIONS = Path(__file__).parent / "durations.json"
LONG_S = 1.0  # tests recorded at or above this are scheduled; the rest fill in file order


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        action="store_true",
        help=f"rewrite {DURATIONS.name} with this run's per-test durations (tests >= {LONG_S} s)",
    )


def _unit_key(item: pytest.Item) -> str:
    """Tests sharing a module-scoped fixture are one unit (one server start); others are alone."""
    defs = getattr(item, "_fixtureinfo", None)
    scopes = [d.scope for ds in (defs.name2fixturedefs.values() if defs else ()) for d in ds]
    return item.module.__name__ if "module" in scopes and item.module else item.nodeid


@pytest.hookimpl(trylast=True)  # after -m / -k deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers < 2 or not DURATIONS.is_file():
        return
    recorded: dict[str, float] = json.loads(DURATIONS.read_text())
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        units.setdefault(_unit_key(item), []).append(item)
    cost = {k: sum(recorded.get(i.nodeid, 0.0) for i in us) for k, us in units.items()}
    long_units = sorted((k for k in units if cost[k] >= LONG_S), key=lambda k: -cost[k])
    # xdist's first distribution: worker w gets the next len(pending) // (workers - w) tests.
    share, left = [], len(items)
    for w in range(workers):
        share.append(left // (workers - w))
        left -= share[-1]
    bins: list[list[pytest.Item]] = [[] for _ in range(workers)]
    load = [0.0] * workers
    for k in long_units:
        fits = [w for w in range(workers) if len(bins[w]) + len(units[k]) <= share[w]]
        w = min(fits or range(workers), key=lambda w: load[w])
        bins[w] += units[k]
        load[w] += cost[k]
    scheduled = set(long_units)
    position = {id(item): n for n, item in enumerate(items)}
    rest = sorted(
        (i for k, us in units.items() if k not in scheduled for i in us),
        key=lambda i: position[id(i)],
    )
    for w in range(workers):
        take = max(0, share[w] - len(bins[w]))
        bins[w] += rest[:take]
        rest = rest[take:]
    bins[-1] += rest
    items[:] = [i for b in bins for i in b]


_durations: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not session.config.getoption("record_durations") or hasattr(session.config, "workerinput"):
        return
    long = {k: round(v, 1) for k, v in sorted(_durations.items()) if v >= LONG_S}
    DURATIONS.write_text(json.dumps(long, indent=1) + "\n")
