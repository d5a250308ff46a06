"""A row-group file's footer: its identity (fingerprint, row group, row range) and stats, read
without touching data pages. `is_done` is the one definition of "this row group is done"."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pyarrow as pa

from dd_assets.store.files import StorePath, parquet_footer
from dd_assets.store.layout import BATCH_RE, StageRef

META_PREFIX = b"dd_assets."
FOOTER_KEYS = ("fingerprint", "row_group", "row_start", "row_end", "rows")
DATA_VERSION_LEN = 32


def content_hash(table: pa.Table) -> str:
    """The data version of a row group: a hash of its content (the Arrow IPC stream of the
    table without schema metadata), so a row group regenerated with the same rows keeps its
    version and one regenerated with other rows gets a new one. The table is copied compact
    first: the same rows must hash the same however they were assembled (a slice, even one at
    offset 0, still carries its parent's whole buffers, and the IPC stream writes some of them
    whole). A copy of a table that is compact already streams to the same bytes."""
    table = table.replace_schema_metadata(None)
    table = table.take(pa.array(range(table.num_rows), pa.int64())).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()[:DATA_VERSION_LEN]


def legacy_data_version(fingerprint: str, row_group: int, rows: int) -> str:
    """For files written before data versions were recorded: stable, so old data never turns
    stale by itself (the same formula the Dagster assets used then)."""
    raw = f"{fingerprint}:{row_group}:{rows}"
    return hashlib.sha256(raw.encode()).hexdigest()[:DATA_VERSION_LEN]


@dataclass(frozen=True)
class RowGroupInfo:
    """What a row-group file's footer says about it (read without touching data pages)."""

    row_group: int
    folder: StorePath  # the stage's row-group files (`path` is folder / name, made when asked for)
    name: str
    rows: int
    row_start: int
    row_end: int
    fingerprint: str
    stats: dict[str, Any] = field(default_factory=dict, compare=False)
    data_version: str = ""  # content hash (footer.content_hash)
    # {upstream stage: data version it was built from}; None when not recorded (older files)
    inputs: dict[str, str] | None = field(default=None, compare=False)
    # the side table of its dropped columns (run.keep_dropped_columns), a file name; None: none
    dropped_columns: str | None = field(default=None, compare=False)
    # the drops table of its dropped rows, a file name; None: it dropped none
    drops: str | None = field(default=None, compare=False)

    @cached_property  # not a field: a scan of 100,000 files should not build 100,000 Paths
    def path(self) -> StorePath:
        return self.folder / self.name


@dataclass
class FileFooter:
    """One `batch_*.parquet` of a stage folder, as far as its footer can be read. The store's scan
    refuses a file with a problem; the asset checks report it and go on."""

    path: StorePath
    row_group: int  # from the file name
    kv: dict[str, str] | None = None  # dd_assets.* footer keys, None when unreadable
    schema: pa.Schema | None = None
    error: str | None = None

    @property
    def fingerprint(self) -> str | None:
        return (self.kv or {}).get("fingerprint")

    @cached_property  # read by several checks per file
    def stats(self) -> dict[str, Any]:
        try:
            stats = json.loads((self.kv or {}).get("stats") or "{}")
        except ValueError:
            return {}
        return stats if isinstance(stats, dict) else {}

    @property
    def rows(self) -> int:
        return int((self.kv or {}).get("rows", 0))

    @property
    def inputs(self) -> dict[str, str] | None:
        """What the row group was built from (RowGroupInfo.inputs); None when not recorded."""
        try:
            inputs = json.loads((self.kv or {})["inputs"])
        except (KeyError, ValueError):
            return None
        return inputs if isinstance(inputs, dict) else None

    def range(self) -> tuple[int, int] | None:
        try:
            return int(self.kv["row_start"]), int(self.kv["row_end"])  # type: ignore[index]
        except (KeyError, TypeError, ValueError):
            return None

    def mismatch(self, ref: StageRef) -> str | None:
        """Why the file is not a row group of `ref` (None: it is one)."""
        if self.error:
            return self.error
        if self.fingerprint != ref.fingerprint:
            return f"footer fingerprint {str(self.fingerprint)[:12]} != {ref.fp12}"
        if (self.kv or {}).get("row_group") != str(self.row_group):
            return f"footer row group {(self.kv or {}).get('row_group')} != {self.row_group} in its name"
        return None


def is_done(ref: StageRef, row_group: int, row_range: tuple[int, int] | None) -> bool:
    """A row group of `ref` is done when it is one of the stage's current row groups and its
    file holds exactly the row range the current num_records gives it. A file whose range
    differs (the last, short row group before num_records grew) is not done: it is regenerated,
    with the same sampler values and cached LLM answers."""
    return row_group < ref.num_row_groups and row_range == ref.row_range(row_group)


def read_footer(path: StorePath, version: tuple[str, int] | None = None) -> FileFooter:
    """The footer of a `batch_NNNNN.parquet` (no data pages read); never raises for a bad file.
    `version`: an object's (ETag, size) when known (files.parquet_footer)."""
    m = BATCH_RE.match(path.name)
    assert m is not None, path
    row_group = int(m[1])
    try:
        footer = parquet_footer(path, version)
        meta = footer.metadata or {}
        schema = footer.schema.to_arrow_schema()
    except (OSError, pa.ArrowException) as exc:
        return FileFooter(
            path, row_group, error=f"unreadable parquet ({type(exc).__name__}: {exc})"
        )
    kv = {
        k[len(META_PREFIX) :].decode(errors="replace"): v.decode(errors="replace")
        for k, v in meta.items()
        if k.startswith(META_PREFIX)
    }
    if len(set(schema.names)) != len(schema.names):
        dupes = sorted({n for n in schema.names if schema.names.count(n) > 1})
        return FileFooter(path, row_group, schema=schema, error=f"duplicate column name(s) {dupes}")
    missing = [k for k in FOOTER_KEYS if k not in kv]
    if missing:
        return FileFooter(path, row_group, schema=schema, error=f"footer lacks {missing}")
    return FileFooter(path, row_group, kv=kv, schema=schema)
