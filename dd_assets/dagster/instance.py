"""The Dagster instance dd-assets commands use: DAGSTER_HOME, or ./.dagster_home when unset (the
CLI applies ./.env first, as Dagster's tools do: cli/project_env.py), created with telemetry off
(no banner, nothing sent) and SQLite storage unless its dagster.yaml says otherwise
(resources/dagster/ has templates for PostgreSQL and queued runs).

Creating a SQLite instance creates its tables and stamps their schema version, with no
coordination between processes: two commands starting at once on a fresh home corrupt it
("table ... already exists", then "more than one head" on every later command). So the first
`DagsterInstance.get()` of a DAGSTER_HOME runs under an exclusive file lock in it, and leaves a
marker file saying the instance exists; later openings take no lock (a lock around every opening,
which takes seconds on a loaded machine, would serialize concurrent commands).

An instance that cannot be created, opened or written (a read-only or misplaced DAGSTER_HOME, a
broken dagster.yaml, a SQLite database locked by another process, a full disk) is an
`InstanceError` naming DAGSTER_HOME and what to do, never sqlalchemy's stack."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import dagster as dg
import sqlalchemy.exc
import yaml

from dd_assets.dagster.dead_runs import sweep_dead_runs
from dd_assets.errors import RunError
from dd_assets.store.atomic import atomic_write_bytes, file_lock


class InstanceError(RunError):
    """The Dagster instance (DAGSTER_HOME) cannot be used; the message says why and what to do."""


DEFAULT_DAGSTER_HOME = ".dagster_home"
LOCK_FILE = ".dd-assets-instance.lock"
READY_FILE = ".dd-assets-instance.ready"  # the instance exists: no lock needed to open it
NEW_INSTANCE_YAML = (
    "# Written by dd-assets for a new instance: SQLite storage under this folder.\n"
    "# See resources/dagster/ in the dd-assets repository for PostgreSQL and queued runs.\n"
    "telemetry:\n"
    "  enabled: false\n"
    "# Dagster's SQLite storage (same files), with cheaper writes: dd_assets/dagster/sqlite_storage.py\n"
    "storage:\n"
    "  custom:\n"
    "    module: dd_assets.dagster.sqlite_storage\n"
    "    class: DdSqliteStorage\n"
    "    config:\n"
    "      base_dir:\n"
    "        env: DAGSTER_HOME\n"
)


def ensure_dagster_home() -> str:
    """Make DAGSTER_HOME exist (default ./.dagster_home) and point the environment at it."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        # Never overwritten: an operator's dagster.yaml (PostgreSQL, run coordinator) is theirs.
        atomic_write_bytes(config, NEW_INSTANCE_YAML.encode())
    os.environ["DAGSTER_HOME"] = str(home)
    return str(home)


def get_instance() -> dg.DagsterInstance:
    """The instance, created safely if it is new, with runs of killed dd-assets processes (left
    "Started" forever otherwise) marked failed (dead_runs.py)."""
    where = os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME
    try:
        home = Path(ensure_dagster_home())
    except OSError as exc:
        raise InstanceError(
            f"DAGSTER_HOME {where} cannot be created or written ({exc.strerror}:"
            f" {exc.filename}); point DAGSTER_HOME at a writable folder"
        ) from exc
    try:
        instance = _open(home)
        sweep_dead_runs(instance, guard=lambda: file_lock(home / LOCK_FILE))
        return instance
    except (OSError, yaml.YAMLError, dg.DagsterInvalidConfigError) as exc:
        raise InstanceError(
            f"the Dagster instance in {home} cannot be opened ({type(exc).__name__}:"
            f" {_first_line(exc)}); fix its dagster.yaml and folders, or point DAGSTER_HOME at"
            " another folder"
        ) from exc
    except sqlalchemy.exc.DBAPIError as exc:
        raise storage_error(exc) from exc


def _open(home: Path) -> dg.DagsterInstance:
    """`DagsterInstance.get()` (which creates a new instance's databases), under the lock while
    the home has no marker yet."""
    ready = home / READY_FILE
    if not ready.exists():
        with file_lock(home / LOCK_FILE):
            if not ready.exists():
                from dd_assets.dagster.sqlite_storage import DdSqliteEventLogStorage

                instance = dg.DagsterInstance.get()
                storage = instance.event_log_storage
                if isinstance(storage, DdSqliteEventLogStorage):
                    storage.run_log_template()
                atomic_write_bytes(ready, b"created by dd-assets under the instance lock\n")
                return instance
    return dg.DagsterInstance.get()


# SQLite result codes (primary, `code & 0xff`) that say the database file or its disk cannot be
# used right now: the environment's problem, not a bug. Anything else is re-raised as is.
_LOCKED = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED}
_UNUSABLE = {
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_FULL,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_PERM,
    sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_CORRUPT,
}


def storage_error(exc: sqlalchemy.exc.DBAPIError) -> BaseException:
    """An InstanceError for a SQLite instance database that is locked or unusable; `exc`
    itself for anything else (a bug keeps its traceback)."""
    orig = exc.orig
    if not isinstance(orig, sqlite3.Error):
        return exc
    code = getattr(orig, "sqlite_errorcode", 0) & 0xFF
    home = os.environ.get("DAGSTER_HOME", DEFAULT_DAGSTER_HOME)
    name = getattr(orig, "sqlite_errorname", "SQLITE_ERROR")
    if code in _LOCKED:
        return InstanceError(
            f"the Dagster instance's SQLite database in {home} is locked by another process"
            f" ({name}: {orig}); wait for that dd-assets or dagster process to finish (or stop"
            " it) and rerun: row groups already written are kept"
        )
    if code in _UNUSABLE:
        return InstanceError(
            f"the Dagster instance's SQLite database in {home} cannot be used ({name}: {orig});"
            " check that DAGSTER_HOME is a writable folder on a disk with space, or point"
            " DAGSTER_HOME at another folder"
        )
    return exc


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]
