"""The Dagster instance dd-assets commands use: DAGSTER_HOME, or ./.dagster_home when unset,
created with telemetry off (no banner, nothing sent) and SQLite storage unless its dagster.yaml
says otherwise (resources/dagster/ has templates for PostgreSQL and queued runs)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

DEFAULT_DAGSTER_HOME = ".dagster_home"
NEW_INSTANCE_YAML = (
    "# Written by dd-assets for a new instance: SQLite storage under this folder.\n"
    "# See resources/dagster/ in the dd-assets repository for PostgreSQL and queued runs.\n"
    "telemetry:\n"
    "  enabled: false\n"
)


def ensure_dagster_home() -> str:
    """Make DAGSTER_HOME exist (default ./.dagster_home) and point the environment at it."""
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        # Never overwritten: an operator's dagster.yaml (PostgreSQL, run coordinator) is theirs.
        tmp = home / f".dagster.yaml.{os.getpid()}.tmp"
        tmp.write_text(NEW_INSTANCE_YAML)
        os.replace(tmp, config)
    os.environ["DAGSTER_HOME"] = str(home)
    return str(home)


def get_instance() -> dg.DagsterInstance:
    ensure_dagster_home()
    return dg.DagsterInstance.get()
