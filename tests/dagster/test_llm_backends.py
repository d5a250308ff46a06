"""Which shared request slots and request cache a run uses (dd_assets/dagster/llm_backends.py),
from DD_ASSETS_LLM_SLOTS / DD_ASSETS_LLM_CACHE and the instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from dd_assets.dagster.llm_backends import (
    CACHE_ENV,
    SLOTS_ENV,
    open_request_slots,
    request_cache_url,
    request_slots,
)
from dd_assets.llm.cache import RequestCacheError
from dd_assets.llm.slots import FileSlots, RequestSlotsError


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral(tempdir=str(tmp_path)) as inst:
        yield inst


def test_default_on_a_sqlite_instance_is_lock_files_in_dagster_home(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SLOTS_ENV, raising=False)
    with request_slots(instance, needed=True) as slots:
        assert isinstance(slots, FileSlots)
        assert slots.folder == Path(instance.root_directory) / "llm-slots"
    with request_slots(instance, needed=False) as slots:
        assert slots is None  # no LLM column in the run: nothing opened


def test_the_setting_picks_a_folder_or_none_and_refuses_postgres_without_it(
    instance: dg.DagsterInstance, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SLOTS_ENV, str(tmp_path / "shared"))
    slots = open_request_slots(instance)
    assert isinstance(slots, FileSlots) and slots.folder == tmp_path / "shared"
    slots.close()
    monkeypatch.setenv(SLOTS_ENV, "off")
    assert open_request_slots(instance) is None
    monkeypatch.setenv(SLOTS_ENV, "postgres")
    with pytest.raises(RequestSlotsError, match="not stored in PostgreSQL"):
        open_request_slots(instance)


def test_the_request_cache_is_sqlite_unless_postgres_is_asked_for(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    for value in ("", "sqlite"):
        monkeypatch.setenv(CACHE_ENV, value)
        assert request_cache_url(instance) is None
    monkeypatch.setenv(CACHE_ENV, "postgresql://u@db.internal:5432/cache")
    assert request_cache_url(instance) == "postgresql://u@db.internal:5432/cache"
    monkeypatch.setenv(CACHE_ENV, "postgres")
    with pytest.raises(RequestCacheError, match="not stored in PostgreSQL"):
        request_cache_url(instance)
    monkeypatch.setenv(CACHE_ENV, "postgress://u:hunter2@db/x")  # a typo must not echo the password
    with pytest.raises(RequestCacheError) as err:
        request_cache_url(instance)
    assert "hunter2" not in str(err.value)
