"""The partition store: row groups of each stage as parquet files, one per Dagster partition.

The filesystem is the truth for progress. A row group is done when its file exists under the
stage's fingerprint folder and its footer names that fingerprint, that row group and the row
range the current num_records gives it; nothing else (no event log, no counter) is trusted.

    <root>/<workflow>/<stage>/<fp12>/stage.json
                                     parquet-files/batch_00000.parquet
                                     final/ ...
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from dd_assets.config import ResumeMode
from dd_assets.fingerprint import changed_fields
from resources.atomic import (
    atomic_path,
    atomic_write_json,
    file_lock,
    fsync_dir,
    is_temp_name,
    sweep_temp_files,
)

STAGE_JSON = "stage.json"
FILES_DIR = "parquet-files"
FINAL_DIR = "final"
FINAL_DATA = "data.parquet"  # final/<FINAL_DATA>: a stage's finalize output
FINAL_META = "final.json"  # final/<FINAL_META>: rows in/out per step, final fingerprint
LOCK_SUFFIX = ".lock"
REPLACED_MARK = ".replaced-"
STORE_SCHEME = 1
_BATCH_RE = re.compile(r"^batch_(\d{5,})\.parquet$")
_META_PREFIX = b"dd_assets."


class StoreError(Exception):
    """A problem with what is on disk; the message says which path and what to do."""


class CorruptStageError(StoreError):
    pass


class ConfigChangedError(StoreError):
    pass


class MissingRowGroupsError(StoreError, FileNotFoundError):
    """Row groups a reader asked for are not on disk (yet): materialize them first."""


class StageSealedError(StoreError):
    pass


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class StageRef:
    """Which dataset a stage writes: its identity (fingerprint) and how it is cut into row groups."""

    workflow: str
    stage: str
    fingerprint: str
    buffer_size: int
    num_records: int
    identity: dict[str, Any] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def fp12(self) -> str:
        return self.fingerprint[:12]

    @property
    def num_row_groups(self) -> int:
        return math.ceil(self.num_records / self.buffer_size)

    def row_range(self, row_group: int) -> tuple[int, int]:
        start = row_group * self.buffer_size
        return start, min(self.num_records, start + self.buffer_size)

    @staticmethod
    def partition_key(row_group: int) -> str:
        return f"{row_group:05d}"

    @classmethod
    def keys_head(cls, row_groups: list[int], n: int = 5) -> str:
        """The first n partition keys of a list, for messages: `00003, 00007 ...`."""
        head = ", ".join(cls.partition_key(rg) for rg in row_groups[:n])
        return head + (" ..." if len(row_groups) > n else "")

    @classmethod
    def key_ranges(cls, row_groups: Iterable[int], n: int) -> str:
        """Row groups as runs of keys, the first n runs: `00003-00009, 00012 …`."""
        items = sorted(row_groups)
        ranges: list[str] = []
        i = 0
        while i < len(items):
            j = i
            while j + 1 < len(items) and items[j + 1] == items[j] + 1:
                j += 1
            a, b = cls.partition_key(items[i]), cls.partition_key(items[j])
            ranges.append(a if i == j else f"{a}-{b}")
            i = j + 1
        return ", ".join(ranges[:n]) + (" …" if len(ranges) > n else "")

    @staticmethod
    def row_group_of(partition_key: str) -> int:
        if not partition_key.isdigit():
            raise ValueError(f"partition key {partition_key!r} is not a row-group id like '00042'")
        return int(partition_key)


@dataclass(frozen=True)
class RowGroupInfo:
    """What a row-group file's footer says about it (read without touching data pages)."""

    row_group: int
    path: Path
    rows: int
    row_start: int
    row_end: int
    fingerprint: str
    stats: dict[str, Any] = field(default_factory=dict, compare=False)


_FOOTER_KEYS = ("fingerprint", "row_group", "row_start", "row_end", "rows")


@dataclass
class FileFooter:
    """One `batch_*.parquet` of a stage folder, as far as its footer can be read. The store's scan
    refuses a file with a problem; the asset checks report it and go on."""

    path: Path
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


def read_footer(path: Path) -> FileFooter:
    """The footer of a `batch_NNNNN.parquet` (no data pages read); never raises for a bad file."""
    m = _BATCH_RE.match(path.name)
    assert m is not None, path
    row_group = int(m[1])
    try:
        f = pq.ParquetFile(path)
        try:
            meta = f.metadata.metadata or {}
            schema = f.schema_arrow
        finally:
            f.close()
    except (OSError, pa.ArrowException) as exc:
        return FileFooter(
            path, row_group, error=f"unreadable parquet ({type(exc).__name__}: {exc})"
        )
    kv = {
        k[len(_META_PREFIX) :].decode(errors="replace"): v.decode(errors="replace")
        for k, v in meta.items()
        if k.startswith(_META_PREFIX)
    }
    missing = [k for k in _FOOTER_KEYS if k not in kv]
    if missing:
        return FileFooter(path, row_group, schema=schema, error=f"footer lacks {missing}")
    return FileFooter(path, row_group, kv=kv, schema=schema)


class PartitionStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        # Footer reads keyed by (path, inode, mtime, size): status polls and asset checks list
        # thousands of files, and a replaced file (os.replace of a new temp) always has a new inode,
        # even when written within the same mtime tick with the same size.
        self._footers: dict[tuple[str, int, int, int], RowGroupInfo] = {}

    # ---- paths -------------------------------------------------------------------------------

    def stage_base(self, workflow: str, stage: str) -> Path:
        return self.root / workflow / stage

    def stage_dir(self, ref: StageRef) -> Path:
        return self.stage_base(ref.workflow, ref.stage) / ref.fp12

    def files_dir(self, ref: StageRef) -> Path:
        return self.stage_dir(ref) / FILES_DIR

    def batch_path(self, ref: StageRef, row_group: int) -> Path:
        return self.files_dir(ref) / f"batch_{row_group:05d}.parquet"

    def final_dir(self, ref: StageRef) -> Path:
        return self.stage_dir(ref) / FINAL_DIR

    def _lock(self, ref: StageRef) -> contextlib.AbstractContextManager[None]:
        # Beside the fingerprint folder, not inside it: `never` moves that folder aside, and a
        # lock file moving with it would let waiters on the old inode and newcomers on a new one
        # hold "the" lock at the same time.
        return file_lock(self.stage_base(ref.workflow, ref.stage) / f".{ref.fp12}{LOCK_SUFFIX}")

    # ---- stage.json --------------------------------------------------------------------------

    def state(self, ref: StageRef) -> dict[str, Any]:
        """stage.json of the stage ({} when there is none yet)."""
        return self._read_state(self.stage_dir(ref) / STAGE_JSON, ref)

    @staticmethod
    def _read_state(path: Path, ref: StageRef | None = None) -> dict[str, Any]:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return {}
        try:
            state = json.loads(text)
            if not isinstance(state, dict):
                raise ValueError("not a JSON object")
        except ValueError as exc:
            raise CorruptStageError(
                f"{path} is not valid stage metadata ({exc}); nothing was changed. Move the folder"
                f" {path.parent} aside to keep its row groups for inspection, or run with"
                " `--resume never`, which moves it aside and regenerates the stage"
            ) from exc
        if ref is not None:
            problems = []
            if state.get("fingerprint") not in (None, ref.fingerprint):
                problems.append(f"fingerprint {state.get('fingerprint')!r} != {ref.fingerprint!r}")
            if state.get("buffer_size") not in (None, ref.buffer_size):
                problems.append(
                    f"buffer_size {state.get('buffer_size')} on disk != {ref.buffer_size} in the config"
                )
            if problems:
                raise CorruptStageError(
                    f"{path} does not match the stage it sits under ({'; '.join(problems)}); nothing"
                    " was changed. Restore the config that wrote it, or run with `--resume never`"
                    " to move this folder aside and regenerate"
                )
        return state

    def _write_state(self, ref: StageRef, **changes: Any) -> dict[str, Any]:
        path = self.stage_dir(ref) / STAGE_JSON
        state = self._read_state(path, ref)
        now = _now()
        if not state:
            state = {
                "store_scheme": STORE_SCHEME,
                "workflow": ref.workflow,
                "stage": ref.stage,
                "fingerprint": ref.fingerprint,
                "buffer_size": ref.buffer_size,
                "original_num_records": ref.num_records,
                "identity": ref.identity,
                "created_at": now,
                "finalize_state": None,
            }
        state.update(changes)
        state["num_records"] = ref.num_records
        state["updated_at"] = now
        if ref.identity:
            state["identity"] = ref.identity
        atomic_write_json(path, state)
        return state

    # ---- prepare (resume modes) --------------------------------------------------------------

    def prepare(
        self, ref: StageRef, mode: ResumeMode | str, token: str | None = None
    ) -> dict[str, Any]:
        """Make the stage folder ready for writing row groups under `mode`, or explain why not.

        `token` identifies one logical materialization (a CLI call or a backfill), which Dagster
        may split over many runs: under `never`, only the first of them moves old data aside."""
        mode = ResumeMode(mode)
        folder = self.stage_dir(ref)
        # The fingerprint folder itself is created only once the checks pass: a refused run
        # must not leave an empty folder that `status` would list as a stage with 0 row groups.
        folder.parent.mkdir(parents=True, exist_ok=True)
        with self._lock(ref):
            self.sweep(ref)
            if mode == ResumeMode.NEVER:
                # `never` is the way out of a corrupt or mismatched stage.json (the errors say so):
                # the folder is moved aside whole, nothing is deleted. Without a token every call
                # is its own materialization and starts fresh.
                try:
                    state, corrupt = self._read_state(folder / STAGE_JSON, ref), False
                except CorruptStageError:
                    state, corrupt = {}, True
                fresh = token is None or state.get("fresh_start_token") != token
                if corrupt or (fresh and self._has_data(ref)):
                    self._move_aside(ref)
                folder.mkdir(exist_ok=True)
                return self._write_state(ref, fresh_start_token=token)
            state = self._read_state(folder / STAGE_JSON, ref)
            if mode == ResumeMode.ALWAYS and not self._has_data(ref):
                self._refuse_changed_config(ref)
            self._refuse_shrink(ref, state)
            folder.mkdir(exist_ok=True)
            return self._write_state(ref)

    def _has_data(self, ref: StageRef) -> bool:
        files = self.files_dir(ref)
        has_files = files.is_dir() and any(_BATCH_RE.match(e.name) for e in os.scandir(files))
        return has_files or self.final_dir(ref).exists()

    def _move_aside(self, ref: StageRef) -> Path:
        folder = self.stage_dir(ref)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = folder.with_name(f"{folder.name}{REPLACED_MARK}{stamp}")
        os.replace(folder, target)
        fsync_dir(folder.parent)
        return target

    def _refuse_changed_config(self, ref: StageRef) -> None:
        others = [f for f in self.fingerprints(ref.workflow, ref.stage) if f["fp12"] != ref.fp12]
        with_data = [f for f in others if f["row_groups"]]
        if not with_data:
            return
        newest = max(with_data, key=lambda f: f["stage_json"].get("updated_at", ""))
        old_identity = newest["stage_json"].get("identity") or {}
        changed = changed_fields(old_identity, ref.identity) if ref.identity else []
        shown = (
            ", ".join(changed[:8]) + (" ..." if len(changed) > 8 else "") if changed else "unknown"
        )
        raise ConfigChangedError(
            f"stage {ref.stage!r}: --resume always found no data for the current fingerprint"
            f" {ref.fp12} but {newest['row_groups']} row group(s) under fingerprint {newest['fp12']}"
            f" ({self.stage_base(ref.workflow, ref.stage) / newest['fp12']}); the config changed"
            f" since that run (changed: {shown}). Restore the old config to resume it, or use"
            " --resume if_possible (start the new fingerprint, keep the old data) or --resume never"
        )

    def _refuse_shrink(self, ref: StageRef, state: dict[str, Any]) -> None:
        """Rows on disk beyond the new num_records would silently vanish from the dataset."""
        beyond: list[RowGroupInfo] = []
        for info in self._scan(ref).values():
            if info.row_end > ref.num_records:
                beyond.append(info)
        if beyond:
            rows = max(i.row_end for i in beyond)
            ids = ", ".join(
                ref.partition_key(i.row_group)
                for i in sorted(beyond, key=lambda i: i.row_group)[:5]
            )
            raise StoreError(
                f"stage {ref.stage!r}: num_records is {ref.num_records} but {self.files_dir(ref)}"
                f" already holds records up to row {rows} (row groups {ids}"
                f"{' ...' if len(beyond) > 5 else ''}); nothing was deleted. Set num_records to at"
                f" least {rows}, or export the first {ref.num_records} rows, or run with --resume"
                " never to move this data aside and regenerate"
            )

    # ---- row groups --------------------------------------------------------------------------

    def _footer(self, path: Path, ref: StageRef) -> RowGroupInfo:
        st = path.stat()
        key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._footers.get(key)
        if cached is not None:
            return cached
        f = read_footer(path)
        try:
            if f.error:
                raise ValueError(f.error)
            kv = f.kv or {}
            info = RowGroupInfo(
                row_group=int(kv["row_group"]),
                path=path,
                rows=int(kv["rows"]),
                row_start=int(kv["row_start"]),
                row_end=int(kv["row_end"]),
                fingerprint=kv["fingerprint"],
                stats=json.loads(kv.get("stats", "{}")),
            )
        except (KeyError, ValueError) as exc:
            raise CorruptStageError(
                f"{path} is not a readable dd-assets row group ({exc}); nothing was deleted. Move"
                " the file out of the folder and the row group will be regenerated on the next run"
            ) from exc
        if f.mismatch(ref):
            raise CorruptStageError(
                f"{path} belongs elsewhere: its footer says fingerprint {info.fingerprint[:12]},"
                f" row group {info.row_group}, but it sits in {ref.fp12}/row group {f.row_group};"
                " nothing was deleted. Move the file out of the folder and rerun"
            )
        self._footers[key] = info
        return info

    def batch_paths(self, ref: StageRef) -> list[Path]:
        """Committed row-group files in the stage's folder (temp files left by a crash are not)."""
        folder = self.files_dir(ref)
        if not folder.is_dir():
            return []
        return sorted(
            Path(e.path)
            for e in os.scandir(folder)
            if _BATCH_RE.match(e.name) and not is_temp_name(e.name)
        )

    def footers(self, ref: StageRef) -> list[FileFooter]:
        """Every row-group file's footer, problems included rather than raised (for the checks)."""
        return [read_footer(p) for p in self.batch_paths(ref)]

    def _scan(self, ref: StageRef) -> dict[int, RowGroupInfo]:
        out = {}
        for path in self.batch_paths(ref):
            info = self._footer(path, ref)
            out[info.row_group] = info
        return out

    def completed(self, ref: StageRef) -> dict[int, RowGroupInfo]:
        """Row groups on disk whose footer matches the current row ranges, by id.

        A file whose range differs (the last, short row group before num_records grew) is not
        complete: it is regenerated, with the same sampler values and cached LLM answers."""
        return {
            rg: info
            for rg, info in self._scan(ref).items()
            if rg < ref.num_row_groups and (info.row_start, info.row_end) == ref.row_range(rg)
        }

    def refuse_if_sealed(self, ref: StageRef) -> None:
        """Raise StageSealedError while the stage is finalized: checked before generating, so a
        refused extension costs no LLM call, and again before every write."""
        self._refuse_if_sealed(ref)

    def _refuse_if_sealed(self, ref: StageRef) -> None:
        state = self.state(ref)
        if state.get("finalize_state") in ("started", "complete"):
            raise StageSealedError(
                f"stage {ref.stage!r} is finalized (finalize_state {state['finalize_state']!r}"
                f" since {state.get('finalized_at')}); its row groups are sealed and nothing was"
                f" written. Run `dd-assets unseal CONFIG {ref.stage}` to invalidate the final output"
                " and allow new row groups, or materialize with --resume never to start fresh"
            )

    def write_row_group(
        self, ref: StageRef, row_group: int, table: pa.Table, stats: dict[str, Any] | None = None
    ) -> RowGroupInfo:
        """Checkpoint one row group: atomically, with its identity in the footer."""
        if not 0 <= row_group < ref.num_row_groups:
            raise StoreError(
                f"stage {ref.stage!r} has row groups 00000-{ref.num_row_groups - 1:05d}; got {row_group}"
            )
        self._refuse_if_sealed(ref)  # early, before the file is written
        start, end = ref.row_range(row_group)
        kv = {
            "fingerprint": ref.fingerprint,
            "row_group": str(row_group),
            "row_start": str(start),
            "row_end": str(end),
            "rows": str(table.num_rows),
            "stats": json.dumps(stats or {}, sort_keys=True, default=str),
            "written_at": _now(),
        }
        meta = dict(table.schema.metadata or {})
        meta.update({_META_PREFIX + k.encode(): v.encode() for k, v in kv.items()})
        table = table.replace_schema_metadata(meta)
        path = self.batch_path(ref, row_group)
        with atomic_path(path, commit=lambda: self._unsealed(ref)) as tmp:
            pq.write_table(table, tmp)
        return self._footer(path, ref)

    @contextlib.contextmanager
    def _unsealed(self, ref: StageRef) -> Iterator[None]:
        """Hold the stage lock while a row group is committed, refusing if the stage got sealed
        meanwhile: a finalize that began while the file was being written must not miss it."""
        with self._lock(ref):
            self._refuse_if_sealed(ref)
            if not (self.stage_dir(ref) / STAGE_JSON).exists():
                self._write_state(ref)
            yield

    def read_row_group(self, ref: StageRef, row_group: int) -> pa.Table:
        info = self.completed(ref).get(row_group)
        if info is None:
            raise StoreError(
                f"stage {ref.stage!r} (fingerprint {ref.fp12}) has no row group"
                f" {ref.partition_key(row_group)} in {self.files_dir(ref)}; materialize that"
                " partition first"
            )
        return pq.read_table(info.path)

    def dataset(self, ref: StageRef, row_groups: list[int] | None = None) -> pads.Dataset:
        """A lazy dataset over the given (default: all completed) row groups, in row order."""
        done = self.completed(ref)
        wanted = sorted(done) if row_groups is None else row_groups
        missing = [rg for rg in wanted if rg not in done]
        if missing:
            raise MissingRowGroupsError(
                f"stage {ref.stage!r} (fingerprint {ref.fp12}) lacks row group(s)"
                f" {[ref.partition_key(rg) for rg in missing[:10]]} in {self.files_dir(ref)};"
                " materialize them first (backfill the missing partitions)"
            )
        return pads.dataset([str(done[rg].path) for rg in wanted], format="parquet")

    def missing(self, ref: StageRef) -> list[int]:
        """Row groups of the stage not on disk for its fingerprint."""
        done = self.completed(ref)
        return [rg for rg in range(ref.num_row_groups) if rg not in done]

    def iter_batches(self, ref: StageRef, batch_size: int = 65_536) -> Iterator[pa.RecordBatch]:
        """All completed rows in row order, one record batch at a time (for streaming export)."""
        for _, info in sorted(self.completed(ref).items()):
            yield from pq.ParquetFile(info.path).iter_batches(batch_size=batch_size)

    # ---- fingerprints on disk ----------------------------------------------------------------

    def fingerprints(self, workflow: str, stage: str) -> list[dict[str, Any]]:
        """Every fingerprint folder of a stage (not those moved aside by `never`), for status and
        for telling a user what changed."""
        base = self.stage_base(workflow, stage)
        if not base.is_dir():
            return []
        out = []
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            if not entry.is_dir() or REPLACED_MARK in entry.name:
                continue
            try:
                state = self._read_state(Path(entry.path) / STAGE_JSON)
            except CorruptStageError:
                state = {}
            files = Path(entry.path) / FILES_DIR
            n = (
                sum(1 for e in os.scandir(files) if _BATCH_RE.match(e.name))
                if files.is_dir()
                else 0
            )
            out.append(
                {"fp12": entry.name, "stage_json": state, "row_groups": n, "path": entry.path}
            )
        return out

    # ---- finalize ----------------------------------------------------------------------------

    def begin_finalize(self, ref: StageRef) -> None:
        with self._lock(ref):
            self._write_state(ref, finalize_state="started", finalized_at=_now())

    def complete_finalize(self, ref: StageRef) -> None:
        with self._lock(ref):
            self._write_state(ref, finalize_state="complete", finalized_at=_now())

    def unseal(self, ref: StageRef) -> Path | None:
        """Invalidate the final output (moved aside, not deleted) so row groups may be written again."""
        with self._lock(ref):
            final = self.final_dir(ref)
            moved = None
            if final.exists():
                moved = final.with_name(
                    f"{FINAL_DIR}.invalidated-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
                )
                os.replace(final, moved)
                fsync_dir(final.parent)
            self._write_state(ref, finalize_state=None, finalized_at=None)
            return moved

    # ---- housekeeping ------------------------------------------------------------------------

    def sweep(self, ref: StageRef) -> list[Path]:
        """Remove temp files of dead writers: what a crash mid-write leaves behind."""
        removed: list[Path] = []
        for folder in (self.stage_dir(ref), self.files_dir(ref), self.final_dir(ref)):
            removed += sweep_temp_files(folder)
        return removed
