"""A cache of the footers of a fingerprint folder's row-group files (`footer-index.arrow`), so that
scanning a stage of 100,000 row groups lists and stats the files and reads one file, instead of
opening 100,000 parquet footers (~0.3 ms each: 30 s).

The filesystem stays the truth. A row group counts only if its file is listed now; an entry is
used only for a file whose (inode, size, mtime, ctime) are those of the file the entry was read
from, and any other file's footer is read, exactly as without the cache. A file written in place
of another (`os.replace` of a new temp file) has a new inode and times, so it is read again.
Entries are made only for files whose footer passed the store's checks for the folder's
fingerprint, so an unreadable or foreign file is read (and refused) on every scan.

The cache is written by scans, never by the writers of row groups: a writer pays nothing, and no
lock is needed, since each scan writes a complete, valid cache atomically (the last one wins).
It is rewritten when the footers a scan had to read cost more than rewriting it would (a store on
a read-only mount just reads footers). Deleting it costs one full read of the footers.

The index also records the folder's own stamp (inode, mtime, ctime), taken before the scan
listed it; every file created, renamed or removed in the folder moves that stamp. For `status`
alone (PartitionStore.footer_table), an index whose folder has not changed stands for the files
with no stat of each (a stat of 100,000 files alone takes ~0.3 s quiet, seconds under load). Only
a folder that had been still for SETTLE_NS before that listing counts, so a change within the same
timestamp tick as the recorded one cannot go unseen. What the folder stamp does not see is a file's
bytes rewritten in place under the same name (dd-assets never does that; `cp` or a crashed copy
onto an existing row-group file would). So every other reader (materialize, check, finalize,
export: PartitionStore._scan) stats each file, and the first of them to find a file that differs
from its entry under an unchanged folder removes the index (`retire`): from then on `status`
reads what they read.

On disk it is an Arrow IPC file, one row per file: name and stamp, then one column per footer
key (every key: one added to the footer later is cached without a change here), text as in the
footer, except the integer keys, kept as integers. Loading 100,000 rows takes milliseconds; the
JSON keys (stats, inputs) are decoded in one pass. The stats that `status` adds up are also kept
as columns of their own (STAT_COLUMNS), so a reader of the columns (runners/status_columns.py)
decodes no JSON at all: an index without them (written before they were) is rewritten by the
next scan that lists the folder, and meanwhile such readers decode the stats.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat as stat_module
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from dd_assets.store.atomic import atomic_path

INDEX_SCHEME = b"1"
# Rewrite the index when the footers read in one scan are at least this share of its entries:
# a footer read costs ~300x what writing one entry does.
REWRITE_SHARE = 1 / 300
JSON_KEYS = ("stats", "inputs")  # footer keys whose values are JSON text
INT_KEYS = ("row_group", "rows", "row_start", "row_end")  # footer keys whose values are integers
# Stats kept as columns of their own as well: column name -> (stats key, integer or JSON text).
# A stat absent or empty is null; an index whose stats do not fit (a non-integer count) has none
# of these columns, and its readers decode the stats.
STAT_COLUMNS = {
    "stats.planned_rows": ("planned_rows", "int"),
    "stats.dropped_rows": ("dropped_rows", "int"),
    "stats.drop_reasons": ("drop_reasons", "json"),
}
_STAMP = ("ino", "size", "mtime_ns", "ctime_ns")
SETTLE_NS = 2_000_000_000  # a folder still for this long before a listing is taken as settled

Stamp = tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns


def stamp(st: os.stat_result) -> Stamp:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass(frozen=True)
class FolderStamp:
    """A folder's stamp, taken just before it is listed, and when that was."""

    ino: int
    mtime_ns: int
    ctime_ns: int
    listed_at_ns: int

    @classmethod
    def of(cls, folder: Path) -> FolderStamp:
        """FileNotFoundError or NotADirectoryError if the folder is not there."""
        listed_at = time.time_ns()
        st = os.stat(folder)
        if not stat_module.S_ISDIR(st.st_mode):
            raise NotADirectoryError(folder)
        return cls(st.st_ino, st.st_mtime_ns, st.st_ctime_ns, listed_at)

    @property
    def settled(self) -> bool:
        """The folder had not changed for SETTLE_NS before it was listed."""
        return max(self.mtime_ns, self.ctime_ns) < self.listed_at_ns - SETTLE_NS

    def text(self) -> bytes:
        return f"{self.ino},{self.mtime_ns},{self.ctime_ns},{self.listed_at_ns}".encode()

    def same_folder_state(self, other: FolderStamp | None) -> bool:
        return other is not None and (self.ino, self.mtime_ns, self.ctime_ns) == (
            other.ino,
            other.mtime_ns,
            other.ctime_ns,
        )

    @classmethod
    def parse(cls, text: bytes | None) -> FolderStamp | None:
        try:
            ino, mtime, ctime, listed_at = (int(x) for x in (text or b"").split(b","))
        except ValueError:
            return None
        return cls(ino, mtime, ctime, listed_at)


def decoded(kv: dict[str, str]) -> dict[str, Any]:
    """Footer key-values (all text) as the store uses them: JSON keys decoded, integer keys as
    integers. ValueError if one is not what its key says."""
    out: dict[str, Any] = dict(kv)
    for k in JSON_KEYS:
        if k in out:
            out[k] = json.loads(out[k])
    for k in INT_KEYS:
        if k in out:
            out[k] = int(out[k])
    return out


class FooterIndex:
    """The cached, decoded footer key-values of one fingerprint folder's row-group files."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.fingerprint = fingerprint
        self._table: pa.Table | None = None
        self._read_done = False
        self._has_stat_columns = False
        self._written_from: FolderStamp | None = None  # the folder's stamp in the file
        self._columns: dict[str, list[Any]] | None = None
        self._entries: dict[str, tuple[Stamp, int]] | None = None  # made when asked for
        self.folder: FolderStamp | None = None  # the folder's, when the index was written

    def _read(self) -> pa.Table | None:
        """The index as stored, nothing decoded; None when there is none, it is unreadable or
        it is not this folder's."""
        if self._read_done:
            return self._table
        self._read_done = True
        try:
            with pa.memory_map(str(self.path)) as source:
                table = pa.ipc.open_file(source).read_all()
        except (OSError, pa.ArrowException):
            return None  # none yet, or unreadable: a cache, so read the footers
        meta = table.schema.metadata or {}
        if (
            meta.get(b"scheme") != INDEX_SCHEME
            or meta.get(b"fingerprint") != self.fingerprint.encode()
            or not {"name", *_STAMP} <= set(table.column_names)
        ):
            return None
        self._table = table
        self._written_from = FolderStamp.parse(meta.get(b"folder"))
        self._has_stat_columns = b"stat_columns" in meta  # tried (they may not have fitted)
        return table

    def table_if_describes(self, now: FolderStamp) -> pa.Table | None:
        """The index's Arrow table, its JSON undecoded, when it stands for the folder as it is
        now (as `describes`, for readers that compute from the columns)."""
        table = self._read()
        written = self._written_from
        if table is None or written is None or not written.settled:
            return None
        return table if now.same_folder_state(written) else None

    def _load(self) -> dict[str, list[Any]]:
        if self._columns is not None:
            return self._columns
        self._columns = {}
        table = self._read()
        if table is None:
            return self._columns
        columns = {name: table.column(name).to_pylist() for name in table.column_names}
        try:
            for k in JSON_KEYS:
                if k in columns:
                    # one parse for the column; a missing value (None) parses as null
                    columns[k] = json.loads("[" + ",".join(t or "null" for t in columns[k]) + "]")
        except (TypeError, ValueError):
            return self._columns
        self._columns = columns
        self.folder = self._written_from
        return self._columns

    def describes(self, now: FolderStamp) -> bool:
        """The index stands for the folder's files as they are now, unlisted: it was written from
        a listing of the folder while settled, and the folder has not changed since."""
        self._load()
        return (
            self.folder is not None and self.folder.settled and now.same_folder_state(self.folder)
        )

    def retire(self) -> None:
        """Remove the index from disk: it no longer stands for the folder it claims to (a file
        rewritten in place moved no folder stamp). Its loaded entries stay usable in memory,
        matched by each file's own stamp."""
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.path)

    def entries(self) -> dict[str, tuple[Stamp, int]]:
        """Per file name: the stamp its entry was read from, and the entry's number."""
        columns = self._load()
        if self._entries is None:
            stamps = zip(*(columns.get(c, ()) for c in _STAMP), strict=True)
            names = columns.get("name", ())
            self._entries = {n: (s, i) for i, (n, s) in enumerate(zip(names, stamps, strict=True))}
        return self._entries

    def lookup(self, name: str, file_stamp: Stamp) -> int | None:
        """The entry of this very file (same inode, size, mtime and ctime), if there is one."""
        entry = self.entries().get(name)
        return entry[1] if entry is not None and entry[0] == file_stamp else None

    def values(self, keys: tuple[str, ...]) -> list[tuple[Any, ...]]:
        """Per entry: its name, then its decoded values of these footer keys (None where a
        footer lacks one)."""
        columns = self._load()
        n = len(columns.get("name", ()))
        names = columns.get("name") or []
        return list(zip(names, *(columns.get(k) or [None] * n for k in keys), strict=True))

    def kv(self, i: int) -> dict[str, Any]:
        """Entry i's decoded footer key-values, the fingerprint aside."""
        assert self._columns is not None
        out = {}
        for key, column in self._columns.items():
            if key not in ("name", *_STAMP, *STAT_COLUMNS) and column[i] is not None:
                out[key] = column[i]
        return out

    def worth_saving(self, seen: int, read: int, folder: FolderStamp) -> bool:
        """Whether a scan that saw `seen` files and read `read` footers should rewrite the index:
        the reads cost more than the rewrite, or a settled folder is not the one it describes."""
        self._load()
        if read and read >= REWRITE_SHARE * seen:
            return True
        if seen and self._table is not None and not self._has_stat_columns:
            return True  # written before the stats had columns of their own
        return folder.settled and not folder.same_folder_state(self.folder)

    def save(self, seen: list[tuple[str, Stamp, dict[str, Any]]], folder: FolderStamp) -> None:
        """Rewrite the index with the files a scan saw (name, stamp, decoded key-values but the
        fingerprint) in the folder stamped `folder` before it was listed. Best effort: a failure
        to write leaves the footers to be read next time."""
        keys = sorted({k for _, _, kv in seen for k in kv})
        columns: dict[str, Any] = {"name": pa.array([n for n, _, _ in seen], pa.string())}
        for j, col in enumerate(_STAMP):
            columns[col] = pa.array([s[j] for _, s, _ in seen], pa.int64())
        with contextlib.suppress(OSError, TypeError, ValueError, pa.ArrowException):
            for k in keys:
                values = [kv.get(k) for _, _, kv in seen]
                if k in JSON_KEYS:
                    text = [None if v is None else json.dumps(v, allow_nan=False) for v in values]
                    columns[k] = pa.array(text, pa.string())
                elif k in INT_KEYS:
                    columns[k] = pa.array(values, pa.int64())
                else:
                    columns[k] = pa.array(values, pa.string())
            stat_columns = _stat_columns([kv.get("stats") for _, _, kv in seen])
            columns.update(stat_columns)
            table = pa.table(columns).replace_schema_metadata(
                {
                    b"scheme": INDEX_SCHEME,
                    b"fingerprint": self.fingerprint.encode(),
                    b"folder": folder.text(),
                    b"stat_columns": b"1" if stat_columns else b"0",
                }
            )
            with (
                atomic_path(self.path) as tmp,
                pa.OSFile(str(tmp), "wb") as sink,
                pa.ipc.new_file(sink, table.schema) as writer,
            ):
                writer.write_table(table)


def _stat_columns(stats: list[Any]) -> dict[str, pa.Array]:
    """STAT_COLUMNS of the entries' decoded stats; none at all if one does not fit."""
    out = {}
    for column, (key, kind) in STAT_COLUMNS.items():
        if any(isinstance(s, dict) and key in s and s[key] is None for s in stats):
            return {}  # a null count is not an absent one (status reads absent as the default)
        values = [s.get(key) if isinstance(s, dict) else None for s in stats]
        if kind == "int":
            if any(v is not None and type(v) is not int for v in values):
                return {}
            out[column] = pa.array(values, pa.int64())
        else:
            if any(v is not None and not isinstance(v, dict) for v in values):
                return {}
            text = [json.dumps(v, allow_nan=False) if v else None for v in values]
            out[column] = pa.array(text, pa.string())
    return out
