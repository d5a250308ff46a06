"""The request cache in PostgreSQL, shared by every machine of a deployment: a row group retried
on another machine (its run killed, its pod evicted) gets the cells it had answered from here
instead of asking again. The SQLite file (`llm/cache.py`) stays the default on one machine.

One table, `dd_assets_llm_cache`, keyed like the SQLite cache plus the workflow (one SQLite file
is one workflow's; one database serves many), in whatever database the URL names: the Dagster
instance's own by default (see docs/scaling.md). Every `put` is its own committed statement
(autocommit) before it returns, so a run killed the next moment loses no answer it had got.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from dd_assets.llm.cache import (
    CacheEntry,
    RequestCacheBase,
    RequestCacheError,
    decode_response,
    decode_rows,
    encode_entries,
)
from dd_assets.llm.postgres import connect, libpq_url, safe_url, scrub

__all__ = ["TABLE", "PostgresRequestCache"]

TABLE = "dd_assets_llm_cache"
_COLUMNS = (
    "workflow",
    "stage",
    "column_name",
    "row",
    "request_hash",
    "response",
    "created_at",
)
# Two processes creating the table at once can both fail on the catalog's unique index; a
# transaction-scoped advisory lock (released at COMMIT) lets one create it and the others see it.
_SCHEMA_LOCK = 0x64644C43  # "ddLC"


class PostgresRequestCache(RequestCacheBase):
    """One connection per process shared by threads under a lock; same interface as the SQLite
    `RequestCache`, scoped to one workflow."""

    def __init__(self, url: str, *, workflow: str) -> None:
        self._url = libpq_url(url)
        self.workflow = workflow
        self._lock = threading.Lock()
        self._conn: Any = connect(self._url, "the LLM request cache", RequestCacheError)
        try:
            self._init_schema()
        except BaseException:
            self._conn.close()
            raise

    def __repr__(self) -> str:
        return f"PostgresRequestCache({safe_url(self._url)!r}, workflow={self.workflow!r})"

    def __enter__(self) -> PostgresRequestCache:
        return self

    def _run(self, sql: str, args: Any = None, *, fetch: bool = False) -> Any:
        import psycopg2

        with self._lock:
            if self._conn is None:
                raise RequestCacheError(f"{self!r} is closed")
            try:
                with self._conn.cursor() as cur:
                    cur.execute(sql, args)
                    return cur.fetchall() if fetch else None
            except psycopg2.Error as exc:
                raise RequestCacheError(
                    f"request cache in PostgreSQL at {safe_url(self._url)} failed:"
                    f" {scrub(str(exc).strip(), self._url)}"
                ) from None

    def _init_schema(self) -> None:
        self._conn.autocommit = False
        try:
            with self._conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                cur.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                    " workflow TEXT NOT NULL,"
                    " stage TEXT NOT NULL,"
                    " column_name TEXT NOT NULL,"
                    " row BIGINT NOT NULL,"
                    " request_hash TEXT NOT NULL,"
                    " response TEXT NOT NULL,"
                    " created_at DOUBLE PRECISION NOT NULL,"
                    " PRIMARY KEY (workflow, stage, column_name, row, request_hash))"
                )
                cur.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_name = %s AND table_schema = current_schema()"
                    " ORDER BY ordinal_position",
                    (TABLE,),
                )
                cols = tuple(r[0] for r in cur.fetchall())
            self._conn.commit()
        except Exception as exc:
            self._conn.rollback()
            raise RequestCacheError(
                f"cannot set up the request cache table {TABLE} in PostgreSQL at"
                f" {safe_url(self._url)}: {scrub(str(exc).strip(), self._url)}"
            ) from None
        finally:
            self._conn.autocommit = True
        if cols != _COLUMNS:
            raise RequestCacheError(
                f"table {TABLE} in PostgreSQL at {safe_url(self._url)} has columns {cols},"
                f" expected {_COLUMNS} (made by another tool or version?); it was left untouched"
            )

    def get(self, stage: str, column: str, row: int, request_hash: str) -> dict[str, Any] | None:
        found = self._run(
            f"SELECT response FROM {TABLE} WHERE workflow = %s AND stage = %s"
            " AND column_name = %s AND row = %s AND request_hash = %s",
            (self.workflow, stage, column, int(row), request_hash),
            fetch=True,
        )
        if not found:
            return None
        return decode_response(
            found[0][0],
            f"{TABLE} at {safe_url(self._url)} (workflow {self.workflow!r}, stage {stage!r},"
            f" column {column!r}, row {row})",
        )

    def get_rows(
        self, stage: str, columns: Iterable[str], start: int, end: int
    ) -> dict[tuple[str, int, str], dict[str, Any]]:
        columns = list(columns)
        if not columns:
            return {}
        found = self._run(
            f"SELECT column_name, row, request_hash, response FROM {TABLE} WHERE workflow = %s"
            " AND stage = %s AND column_name = ANY(%s) AND row >= %s AND row < %s",
            (self.workflow, stage, columns, int(start), int(end)),
            fetch=True,
        )
        return decode_rows(
            found,
            lambda column, row: (
                f"{TABLE} at {safe_url(self._url)} (workflow {self.workflow!r},"
                f" stage {stage!r}, column {column!r}, row {row})"
            ),
        )

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        # The last entry of a key wins, as with SQLite's INSERT OR REPLACE (one statement may not
        # update a row twice).
        rows = list({r[:4]: (self.workflow, *r) for r in encode_entries(entries)}.values())
        if not rows:
            return 0
        # One statement: committed as a whole (autocommit), however many rows.
        values = ",".join(["(%s,%s,%s,%s,%s,%s,%s)"] * len(rows))
        self._run(
            f"INSERT INTO {TABLE} VALUES {values}"
            " ON CONFLICT (workflow, stage, column_name, row, request_hash)"
            " DO UPDATE SET response = EXCLUDED.response, created_at = EXCLUDED.created_at",
            [v for r in rows for v in r],
        )
        return len(rows)

    def count(self, stage: str | None = None) -> int:
        if stage is None:
            found = self._run(
                f"SELECT count(*) FROM {TABLE} WHERE workflow = %s", (self.workflow,), fetch=True
            )
        else:
            found = self._run(
                f"SELECT count(*) FROM {TABLE} WHERE workflow = %s AND stage = %s",
                (self.workflow, stage),
                fetch=True,
            )
        return int(found[0][0])

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
