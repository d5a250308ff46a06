"""The request cache in PostgreSQL (dd_assets/llm/pg_cache.py): the SQLite cache's contract on a
database every machine shares, and a row group regenerated "on another machine" (a fresh data
root) answered from it without a request."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dd_assets.config import load_workflow
from dd_assets.llm.cache import CacheEntry, RequestCache, RequestCacheError
from dd_assets.llm.pg_cache import TABLE, PostgresRequestCache
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.postgres import PgServer
from dd_assets.testing.workflows import write_config

pytestmark = [pytest.mark.slow, pytest.mark.postgres]


@pytest.fixture
def fresh(postgres: PgServer) -> PgServer:
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE IF EXISTS {TABLE}")
    return postgres


def test_same_contract_as_the_sqlite_cache(fresh: PgServer, tmp_path: Path) -> None:
    entries = [
        ("s", "c", 0, "h", {"content": "one", "tokens_in": 3}),
        ("s", "c", 0, "h", {"content": "two", "tokens_in": 4}),  # replaces
        ("s", "c", 1, "h", {"content": "row1"}),
        ("s2", "c", 0, "h", {"content": "other stage"}),
    ]
    with (
        PostgresRequestCache(fresh.url, workflow="wf") as pg,
        RequestCache(tmp_path / "c.sqlite") as lite,
    ):
        for cache in (pg, lite):
            assert cache.get("s", "c", 0, "h") is None
            for e in entries:
                cache.put(*e)
            assert cache.get("s", "c", 0, "h") == {"content": "two", "tokens_in": 4}
            assert cache.get("s", "c", 0, "other-hash") is None
            assert (cache.count(), cache.count("s")) == (3, 2)
            assert cache.put_many([CacheEntry("b", "c", i, "h", {"content": i}) for i in range(50)])
            assert cache.count("b") == 50
            with pytest.raises(ValueError, match="credentials"):
                cache.put("s", "c", 9, "h", {"content": "x", "headers": {"Authorization": "k"}})

            async def many(c=cache) -> list:
                await asyncio.gather(
                    *(c.aput("a", "c", i, "h", {"content": str(i)}) for i in range(100))
                )
                return await asyncio.gather(*(c.aget("a", "c", i, "h") for i in range(100)))

            assert asyncio.run(many()) == [{"content": str(i)} for i in range(100)]
    # One database, many workflows: each sees only its own answers.
    with PostgresRequestCache(fresh.url, workflow="other") as other:
        assert other.get("s", "c", 1, "h") is None and other.count() == 0
    with PostgresRequestCache(fresh.url, workflow="wf") as again:
        assert again.get("s", "c", 1, "h") == {"content": "row1"}


def test_processes_creating_the_table_at_once_all_succeed(fresh: PgServer) -> None:
    code = (
        "import sys; from dd_assets.llm.pg_cache import PostgresRequestCache as C;"
        " c = C(sys.argv[1], workflow='w'); c.put('s', 'c', int(sys.argv[2]), 'h', {'content': 'x'})"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, fresh.url, str(i)], stderr=subprocess.PIPE)
        for i in range(6)
    ]
    assert [p.wait(60) for p in procs] == [0] * 6, [p.stderr.read() for p in procs if p.stderr]
    with PostgresRequestCache(fresh.url, workflow="w") as cache:
        assert cache.count() == 6


def test_errors_name_the_server_never_the_password(fresh: PgServer) -> None:
    with pytest.raises(RequestCacheError) as err:
        PostgresRequestCache(fresh.url.replace(f":{fresh.port}/", ":1/"), workflow="w")
    assert fresh.password not in str(err.value) and "127.0.0.1:1" in str(err.value)
    with pytest.raises(RequestCacheError) as err:
        PostgresRequestCache(fresh.url.replace(fresh.password, "wrong-pw"), workflow="w")
    assert "wrong-pw" not in str(err.value) and "password authentication failed" in str(err.value)
    with fresh.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {TABLE} (k TEXT)")
    with pytest.raises(RequestCacheError, match="left untouched"):
        PostgresRequestCache(fresh.url, workflow="w")


def test_a_row_group_regenerated_elsewhere_is_answered_from_the_shared_cache(
    fresh: PgServer, tmp_path: Path
) -> None:
    with MockOpenAI() as mock:
        cfg = write_config(
            tmp_path / "wf.yaml",
            {
                "name": "wf",
                "models": {"gen": {"base_url": mock.url, "model": "m"}},
                "stages": [
                    {
                        "name": "qa",
                        "num_records": 20,
                        "buffer_size": 10,
                        "columns": [
                            {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                            {
                                "name": "answer",
                                "column_type": "llm-text",
                                "model_alias": "gen",
                                "prompt": "about {{ rid }}",
                            },
                        ],
                    }
                ],
            },
        )
        plan = plan_workflow(load_workflow(cfg))["qa"]
        first = PartitionStore(tmp_path / "machine-a")
        materialize(plan, first, range(2), cache_url=fresh.url)
        assert mock.requests == 20
        # Machine B has its own data root (and no SQLite cache) but the same database.
        second = PartitionStore(tmp_path / "machine-b")
        threads = [
            threading.Thread(
                target=materialize, args=(plan, second, [rg]), kwargs={"cache_url": fresh.url}
            )
            for rg in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert mock.requests == 20, "a cached answer was asked again"
    a, b = (s.dataset(plan.ref).to_table() for s in (first, second))
    assert a.equals(b)
    assert not list((tmp_path / "machine-b").rglob("*.sqlite"))
