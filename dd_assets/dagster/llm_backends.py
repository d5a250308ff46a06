"""Where a run's LLM calls share state with other runs: the request slots that hold each model's
`max_parallel_requests` across every run of the deployment, and the request cache. Chosen here,
from the environment and the Dagster instance, because only this layer knows the instance; the
llm layer gets an opened object or a database URL.

`DD_ASSETS_LLM_SLOTS`:
- unset: PostgreSQL advisory locks on the instance's own database when the instance is stored in
  PostgreSQL (runs on many machines share it), else lock files in `$DAGSTER_HOME/llm-slots/`
  (every run of one machine shares DAGSTER_HOME);
- `postgres`: the instance's database (an error if the instance is not in PostgreSQL);
- `postgresql://user@host:port/db`: another database (password from the URL or libpq's
  PGPASSWORD / ~/.pgpass; the URL is never logged);
- a folder path: lock files there;
- `off`: each run keeps only its own limit.

`DD_ASSETS_LLM_CACHE`:
- unset or `sqlite`: the workflow's SQLite file (`llm/cache.py`: under the data root, or
  `$DD_ASSETS_LLM_CACHE_DIR`), one machine;
- `postgres`: the table `dd_assets_llm_cache` in the instance's database, shared by every machine;
- `postgresql://user@host:port/db`: that table in another database.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg

from dd_assets.llm.cache import RequestCacheError
from dd_assets.llm.slots import FileSlots, PostgresSlots, RequestSlots, RequestSlotsError

SLOTS_ENV = "DD_ASSETS_LLM_SLOTS"
CACHE_ENV = "DD_ASSETS_LLM_CACHE"
SLOTS_FOLDER = "llm-slots"
_PG_SCHEMES = ("postgresql://", "postgres://", "postgresql+")


def instance_database_url(instance: dg.DagsterInstance) -> str | None:
    """The PostgreSQL URL of the instance's run storage (with its password: keep it in memory)."""
    url = getattr(instance.run_storage, "postgres_url", None)
    return url if isinstance(url, str) else None


def open_request_slots(instance: dg.DagsterInstance) -> RequestSlots | None:
    setting = os.environ.get(SLOTS_ENV, "").strip()
    if setting == "off":
        return None
    if setting.startswith(_PG_SCHEMES):
        return PostgresSlots(setting)
    if setting == "postgres":
        url = instance_database_url(instance)
        if url is None:
            raise RequestSlotsError(
                f"{SLOTS_ENV}=postgres but the Dagster instance in {instance.root_directory} is"
                " not stored in PostgreSQL; use its storage: postgres: block"
                " (resources/dagster/postgres.yaml), a postgresql:// URL, or a folder"
            )
        return PostgresSlots(url)
    if setting:
        return FileSlots(Path(setting).expanduser().resolve())
    url = instance_database_url(instance)
    if url is not None:
        return PostgresSlots(url)
    return FileSlots(Path(instance.root_directory) / SLOTS_FOLDER)


@contextlib.contextmanager
def request_slots(instance: dg.DagsterInstance, needed: bool) -> Iterator[RequestSlots | None]:
    """The run's request slots while it runs (None when no stage of it calls an LLM)."""
    slots = open_request_slots(instance) if needed else None
    try:
        yield slots
    finally:
        if slots is not None:
            slots.close()


def request_cache_url(instance: dg.DagsterInstance) -> str | None:
    """The PostgreSQL URL of the shared request cache, or None for the SQLite file."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting in ("", "sqlite"):
        return None
    if setting.startswith(_PG_SCHEMES):
        return setting
    if setting == "postgres":
        url = instance_database_url(instance)
        if url is None:
            raise RequestCacheError(
                f"{CACHE_ENV}=postgres but the Dagster instance in {instance.root_directory} is"
                " not stored in PostgreSQL; use its storage: postgres: block"
                " (resources/dagster/postgres.yaml) or a postgresql:// URL"
            )
        return url
    raise RequestCacheError(
        f"{CACHE_ENV} must be sqlite, postgres or a postgresql:// URL (got a value of"
        f" {len(setting)} characters, not shown); see docs/scaling.md"
    )
