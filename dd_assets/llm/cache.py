"""Request cache: every LLM answer is committed as soon as it arrives, keyed by where it is used
(stage, column, row) and by what was asked (`request_hash`). A crash mid row group, or a config edit
that leaves a column's prompts unchanged, therefore costs no repeat call. The cell runner
(llm/cells.py) reads a row group's entries in one query (`get_rows`) and commits answers from one
writer task, all that arrived during the previous commit in one transaction (`put_many`): the
cells never wait on the disk, and a kill loses at most the answers of one commit in progress.

SQLite in WAL mode with `synchronous=NORMAL`: a committed `put` survives the process being killed
(the WAL is in the OS page cache, which outlives the process); only a power loss or kernel crash
can drop the last few commits, which merely costs re-asking the provider. WAL also lets several
Dagster run workers read while one writes; writers wait on each other via the busy timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dd_assets.errors import LLMError

__all__ = [
    "CacheEntry",
    "RequestCache",
    "RequestCacheBase",
    "RequestCacheError",
    "RequestHasher",
    "cache_path",
    "request_hash",
]

SCHEMA_VERSION = 1
HASH_SCHEME = 1
_TABLE = "llm_responses"
_COLUMNS = ("stage", "column_name", "row", "request_hash", "response", "created_at")
_SECRET_KEYS = frozenset({"api_key", "apikey", "authorization", "api_key_value", "bearer"})


CACHE_DIR_ENV = "DD_ASSETS_LLM_CACHE_DIR"
CACHE_FILE = "llm-cache.sqlite"


def cache_path(root: str | os.PathLike[str], workflow: str) -> Path:
    """`<root>/<workflow>/llm-cache.sqlite`, or the same under $DD_ASSETS_LLM_CACHE_DIR: a
    node-local folder when the data root is a network filesystem, where one SQLite file must not
    be written by several machines. An object-store root (`s3://bucket/prefix`) cannot hold a
    SQLite file: its cache is node-local, `~/.cache/dd-assets/s3/bucket/prefix/` (under
    $XDG_CACHE_HOME if set); machines share answers through DD_ASSETS_LLM_CACHE=postgres."""
    base = os.environ.get(CACHE_DIR_ENV)
    if base:
        return Path(base).resolve() / workflow / CACHE_FILE
    text = str(root)
    if "://" in text and not text.startswith("file://"):
        scheme, _, rest = text.partition("://")
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return home / "dd-assets" / scheme / rest.strip("/") / workflow / CACHE_FILE
    return Path(text.removeprefix("file://")) / workflow / CACHE_FILE


class RequestCacheError(LLMError):
    """The cache file cannot be used as is. The file is never deleted for the user: it may be
    the only record of paid-for responses."""


@dataclass(frozen=True)
class CacheEntry:
    """One row for `put_many`."""

    stage: str
    column: str
    row: int
    request_hash: str
    response: Mapping[str, Any]


# Built once: `json.dumps` with these arguments builds a new encoder on every call (a third of
# what hashing a short request costs). Same output.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(obj: Any) -> str:
    return _CANONICAL.encode(obj)


def _check_no_secrets(obj: Any, where: str) -> None:
    """Structural guard: refuse anything shaped like a credential. The client never hands one
    over, so this only fires on a caller bug, before the secret reaches disk."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            for k, v in item.items():
                if isinstance(k, str) and k.lower() in _SECRET_KEYS:
                    raise ValueError(f"{where} must not contain credentials (found key {k!r})")
                stack.append(v)
        elif isinstance(item, list | tuple):
            stack.extend(item)


def request_hash(
    model_identity: Mapping[str, Any],
    messages: list[dict[str, Any]],
    response_format: Mapping[str, Any] | None,
    tools: list[dict[str, Any]] | None = None,
) -> str:
    """sha256 of canonical JSON of everything that decides the answer: the model identity
    (`ModelConfig.identity()`: endpoint, model, sampling params, never the key), the exact
    messages and the response format. Key order never changes the hash."""
    return RequestHasher(model_identity)(messages, response_format, tools)


class RequestHasher:
    """`request_hash` for one model: its identity is checked and encoded once, not per request
    (the cell runner keeps one per model). The text hashed is exactly the canonical JSON of
    {"messages", "model", "response_format", "scheme"[, "tools"]}: those keys in sorted order,
    each value canonical, so the hashes of existing cache entries are unchanged."""

    def __init__(self, model_identity: Mapping[str, Any]) -> None:
        _check_no_secrets(model_identity, "model_identity")
        self._model = f',"model":{_canonical(model_identity)},"response_format":'
        self._scheme = f',"scheme":{_canonical(HASH_SCHEME)}'

    def __call__(
        self,
        messages: list[dict[str, Any]],
        response_format: Mapping[str, Any] | None,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        text = (
            f'{{"messages":{_canonical(messages)}{self._model}{_canonical(response_format)}'
            f"{self._scheme}" + (f',"tools":{_canonical(tools)}' if tools else "") + "}"
            # only when offered: requests without tools keep their keys
        )
        return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RequestCacheBase:
    """What every cache backend offers (SQLite here, PostgreSQL in `llm/pg_cache.py`): sync
    methods safe from any thread, each `put` committed before it returns, and async twins that
    run them in a worker thread so the event loop never waits on disk or network."""

    def get(self, stage: str, column: str, row: int, request_hash: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        """Several entries in one transaction (one commit); returns how many were written."""
        raise NotImplementedError

    def get_rows(
        self, stage: str, columns: Iterable[str], start: int, end: int
    ) -> dict[tuple[str, int, str], dict[str, Any]]:
        """Every entry of `columns` of a stage for rows start <= row < end, keyed by (column,
        row, request_hash): one query for a row group's cells instead of one per cell."""
        raise NotImplementedError

    def count(self, stage: str | None = None) -> int:
        """Entries in the cache, optionally of one stage."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def put(
        self, stage: str, column: str, row: int, request_hash: str, response: Mapping[str, Any]
    ) -> None:
        """Insert or replace, committed before returning."""
        self.put_many([CacheEntry(stage, column, row, request_hash, response)])

    def __enter__(self) -> RequestCacheBase:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def aget(
        self, stage: str, column: str, row: int, request_hash: str
    ) -> dict[str, Any] | None:
        return await asyncio.to_thread(self.get, stage, column, row, request_hash)

    async def aput(
        self, stage: str, column: str, row: int, request_hash: str, response: Mapping[str, Any]
    ) -> None:
        await asyncio.to_thread(self.put, stage, column, row, request_hash, response)

    async def aput_many(self, entries: Iterable[CacheEntry]) -> int:
        return await asyncio.to_thread(self.put_many, list(entries))

    async def aget_rows(
        self, stage: str, columns: Iterable[str], start: int, end: int
    ) -> dict[tuple[str, int, str], dict[str, Any]]:
        return await asyncio.to_thread(self.get_rows, stage, list(columns), start, end)


def encode_entries(entries: Iterable[CacheEntry]) -> list[tuple[str, str, int, str, str, float]]:
    """Rows to store, (stage, column, row, request_hash, canonical JSON response, time); refuses
    anything shaped like a credential before it reaches any backend."""
    now = time.time()
    rows = []
    for e in entries:
        _check_no_secrets(e.response, "a cached response")
        rows.append((e.stage, e.column, int(e.row), e.request_hash, _canonical(e.response), now))
    return rows


def decode_response(text: str, where: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RequestCacheError(f"request cache {where}: unreadable entry: {exc}") from exc
    return value if isinstance(value, dict) else None


def decode_rows(
    found: Iterable[tuple[str, int, str, str]], where: Callable[[str, int], str]
) -> dict[tuple[str, int, str], dict[str, Any]]:
    """`get_rows`' answer from its (column, row, request hash, response) rows, for both
    backends; `where(column, row)` names an entry whose response cannot be decoded."""
    out: dict[tuple[str, int, str], dict[str, Any]] = {}
    for column, row, digest, text in found:
        value = decode_response(text, where(column, row))
        if value is not None:
            out[(column, int(row), digest)] = value
    return out


class RequestCache(RequestCacheBase):
    """One SQLite connection shared by threads under a lock (`check_same_thread=False`)."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        if self.path.exists() and not self.path.is_file():
            raise RequestCacheError(f"request cache {self.path} exists but is not a file")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=busy_timeout_s,
                isolation_level=None,  # autocommit: each INSERT is its own durable transaction
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise RequestCacheError(f"cannot open request cache {self.path}: {exc}") from exc
        try:
            self._init_schema(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise RequestCacheError(
                f"request cache {self.path} is not a usable SQLite database ({exc}); the file was"
                " left untouched: move it aside to start with an empty cache (responses in it"
                " would be asked again)"
            ) from exc
        self._conn = conn

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.DatabaseError(f"could not enable WAL journal mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {_TABLE} ("
            " stage TEXT NOT NULL,"
            " column_name TEXT NOT NULL,"
            " row INTEGER NOT NULL,"
            " request_hash TEXT NOT NULL,"
            " response TEXT NOT NULL,"
            " created_at REAL NOT NULL,"
            " PRIMARY KEY (stage, column_name, row, request_hash)"
            ") WITHOUT ROWID"
        )
        cols = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({_TABLE})"))
        if cols != _COLUMNS:
            raise sqlite3.DatabaseError(
                f"table {_TABLE} has columns {cols}, expected {_COLUMNS} (written by another tool"
                " or version?)"
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version}, this dd-assets understands {SCHEMA_VERSION}"
            )

    def __repr__(self) -> str:
        return f"RequestCache({str(self.path)!r})"

    def __enter__(self) -> RequestCache:
        return self

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RequestCacheError(f"request cache {self.path} is closed")
        return self._conn

    # -- sync API

    def get(self, stage: str, column: str, row: int, request_hash: str) -> dict[str, Any] | None:
        with self._lock:
            found = (
                self._db()
                .execute(
                    f"SELECT response FROM {_TABLE}"
                    " WHERE stage=? AND column_name=? AND row=? AND request_hash=?",
                    (stage, column, int(row), request_hash),
                )
                .fetchone()
            )
        if found is None:
            return None
        return decode_response(
            found[0], f"{self.path} (stage {stage!r}, column {column!r}, row {row})"
        )

    def get_rows(
        self, stage: str, columns: Iterable[str], start: int, end: int
    ) -> dict[tuple[str, int, str], dict[str, Any]]:
        columns = list(columns)
        if not columns:
            return {}
        marks = ",".join("?" * len(columns))
        with self._lock:
            found = (
                self._db()
                .execute(
                    f"SELECT column_name, row, request_hash, response FROM {_TABLE}"
                    f" WHERE stage=? AND column_name IN ({marks}) AND row>=? AND row<?",
                    (stage, *columns, int(start), int(end)),
                )
                .fetchall()
            )
        return decode_rows(
            found,
            lambda column, row: f"{self.path} (stage {stage!r}, column {column!r}, row {row})",
        )

    def put_many(self, entries: Iterable[CacheEntry]) -> int:
        rows = encode_entries(entries)
        if not rows:
            return 0
        with self._lock:
            db = self._db()
            if len(rows) == 1:
                db.execute(f"INSERT OR REPLACE INTO {_TABLE} VALUES (?,?,?,?,?,?)", rows[0])
            else:
                db.execute("BEGIN IMMEDIATE")
                try:
                    db.executemany(f"INSERT OR REPLACE INTO {_TABLE} VALUES (?,?,?,?,?,?)", rows)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
        return len(rows)

    def count(self, stage: str | None = None) -> int:
        with self._lock:
            if stage is None:
                return int(self._db().execute(f"SELECT COUNT(*) FROM {_TABLE}").fetchone()[0])
            return int(
                self._db()
                .execute(f"SELECT COUNT(*) FROM {_TABLE} WHERE stage=?", (stage,))
                .fetchone()[0]
            )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()
