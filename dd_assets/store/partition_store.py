"""The partition store: row groups of each stage as parquet files, one per Dagster partition.

The filesystem is the truth for progress. A row group is done when its file exists under the
stage's fingerprint folder and its footer names that fingerprint, that row group and the row
range the current num_records gives it (`footer.is_done`); nothing else (no event log, no
counter) is trusted. Layout and names: `store.layout`.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dd_assets.config.fingerprint import describe_change
from dd_assets.config.run import ResumeMode
from dd_assets.config.workflow import final_output_name
from dd_assets.engine.drops import DROPS_SCHEMA
from dd_assets.errors import StoreError
from dd_assets.store import files, objects, parquet
from dd_assets.store.atomic import (
    atomic_write_json,
    file_lock,
    is_temp_name,
    sweep_temp_files,
)
from dd_assets.store.files import ObjectPath, StorePath
from dd_assets.store.footer import (
    META_PREFIX,
    FileFooter,
    RowGroupInfo,
    content_hash,
    is_done,
    legacy_data_version,
    read_footer,
)
from dd_assets.store.footer_index import (
    INT_KEYS,
    FolderStamp,
    FooterIndex,
    Stamp,
    decoded,
    stamp,
)
from dd_assets.store.images import FOOTER_KEY as IMAGES_FOOTER_KEY
from dd_assets.store.images import footer_value as images_footer_value
from dd_assets.store.images import (
    missing_image,
    remove_other_images,
    sweep_images,
    write_images,
)
from dd_assets.store.layout import (
    APPROVED_SUFFIX,
    BATCH_RE,
    DROPPED_COLUMNS_DIR,
    DROPS_DIR,
    FILES_DIR,
    FINAL_DATA,
    FINAL_DIR,
    FINAL_META,
    FOOTER_INDEX,
    LOCK_SUFFIX,
    PROFILE_DIR,
    REPLACED_MARK,
    STAGE_JSON,
    StageRef,
    batch_name,
    partition_key,
    side_name,
    side_prefix,
)

if TYPE_CHECKING:
    import pyarrow.dataset as pads

STORE_SCHEME = 1


class CorruptStageError(StoreError):
    """stage.json or a row-group file cannot be trusted; nothing was changed."""


class ConfigChangedError(StoreError):
    """--resume always, but the data on disk is of another fingerprint."""


class MissingRowGroupsError(StoreError):
    """Row groups a reader asked for are not on disk (yet): materialize them first."""


class StageSealedError(StoreError):
    """The stage is finalized; no row group may be written until it is unsealed."""


class FinalMissingError(StoreError):
    """A stage's final output does not exist, or was made by another config."""


class EmptyFinalError(StoreError):
    """Finalize kept no rows and the stage does not allow that."""


@dataclass(frozen=True)
class FingerprintFolder:
    """One `<fp12>` folder of a stage on disk (not those moved aside by `never`)."""

    fp12: str
    path: StorePath
    state: dict[str, Any]
    row_groups: int

    @property
    def identity(self) -> dict[str, Any]:
        return self.state.get("identity") or {}

    @property
    def updated_at(self) -> str:
        return str(self.state.get("updated_at", ""))


@dataclass(frozen=True)
class FinalOutput:
    """A stage's finalize output: the parquet file and what finalize recorded about it."""

    path: StorePath
    info: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.info.get("rows_out", 0))


# The footer keys a RowGroupInfo is made of, in _row_group_info's argument order.
INFO_KEYS = (*INT_KEYS, "stats", "data_version", "inputs", "dropped_columns", "drops")


def _row_group_info(
    folder: Path,
    name: str,
    fingerprint: str,
    row_group: int | None,
    rows: int | None,
    row_start: int | None,
    row_end: int | None,
    stats: Any,
    data_version: str | None,
    inputs: Any,
    dropped_columns: str | None,
    drops: str | None,
) -> RowGroupInfo:
    """A row group as its footer describes it: the decoded values of INFO_KEYS
    (footer_index.decoded), None where absent. KeyError or ValueError if they do not describe
    a row group."""
    if row_group is None or rows is None or row_start is None or row_end is None:
        raise KeyError(f"footer lacks one of {INT_KEYS}")
    if not isinstance(stats, dict | None):
        raise ValueError(f"stats is not a JSON object: {stats!r}")
    return RowGroupInfo(  # positional: made 100,000 times in a scan of a big stage
        row_group,
        folder,
        name,
        rows,
        row_start,
        row_end,
        fingerprint,
        stats or {},
        data_version or legacy_data_version(fingerprint, row_group, rows),
        inputs if isinstance(inputs, dict) else None,
        dropped_columns or None,
        drops or None,
    )


def _infos_of_index(
    index: FooterIndex, folder: Path, fingerprint: str
) -> list[RowGroupInfo | None]:
    """Per footer index entry, the row group it describes (None if it does not describe one)."""
    out: list[RowGroupInfo | None] = []
    append = out.append
    for name, rg, rows, start, end, stats, version, inputs, dropped, drops in index.values(
        INFO_KEYS
    ):
        # the common case inline (a big stage has 100,000 entries); the rest as a footer's
        plain = type(rg) is int and type(rows) is int and start is not None and end is not None
        if plain and version and type(stats) is dict and type(inputs) in (dict, type(None)):
            info = RowGroupInfo(
                rg, folder, name, rows, start, end, fingerprint, stats, version, inputs,
                dropped or None, drops or None,
            )  # fmt: skip
            append(info)
            continue
        try:
            info = _row_group_info(
                folder, name, fingerprint, rg, rows, start, end, stats, version, inputs, dropped,
                drops,
            )  # fmt: skip
        except (KeyError, TypeError, ValueError):
            info = None
        append(info)
    return out


def _unreadable(path: StorePath, exc: Exception) -> CorruptStageError:
    return CorruptStageError(
        f"{path} cannot be read back intact ({type(exc).__name__}: {exc}); nothing was changed."
        " Move the file out of the folder and materialize again: that row group is regenerated"
        " (its LLM answers come from the cache)"
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class PartitionStore:
    """The store of one data root: a local folder, or an object store (`s3://bucket/prefix`
    and the others `store.objects` knows). Local roots take the same code path as always;
    where an object root needs another mechanism (no rename, no flock) the method says so."""

    def __init__(self, root: str | os.PathLike[str] | StorePath):
        self.root: StorePath = files.root_path(root)
        self.objects = files.is_object(self.root)
        files.check_root(self.root)
        # Footer reads keyed by (path, inode, size, mtime, ctime): status polls and asset checks
        # list thousands of files, and a replaced file (os.replace of a new temp) always has a new
        # inode, even when written within the same mtime tick with the same size. On an object
        # store by (path, ETag, size), the ETags coming with the folder listing (_etags).
        self._footers: dict[tuple[Any, ...], tuple[RowGroupInfo, dict[str, Any] | None]] = {}
        self._etags: dict[str, tuple[str, int]] = {}
        # stage.json changes `prepare` decided, written under the lock at the stage's first
        # commit in this process (`_unsealed`): a run that commits nothing leaves no trace.
        self._pending: dict[StorePath, dict[str, Any]] = {}

    # ---- paths -------------------------------------------------------------------------------

    def stage_base(self, workflow: str, stage: str) -> StorePath:
        return self.root / workflow / stage

    def stage_dir(self, ref: StageRef) -> StorePath:
        return self.stage_base(ref.workflow, ref.stage) / ref.fp12

    def files_dir(self, ref: StageRef) -> StorePath:
        return self.stage_dir(ref) / FILES_DIR

    def batch_path(self, ref: StageRef, row_group: int) -> StorePath:
        return self.files_dir(ref) / batch_name(row_group)

    def final_dir(self, ref: StageRef) -> StorePath:
        return self.stage_dir(ref) / FINAL_DIR

    def profile_dir(self, ref: StageRef) -> StorePath:
        return self.stage_dir(ref) / PROFILE_DIR

    def dropped_columns_dir(self, ref: StageRef) -> StorePath:
        return self.stage_dir(ref) / DROPPED_COLUMNS_DIR

    def drops_dir(self, ref: StageRef) -> StorePath:
        return self.stage_dir(ref) / DROPS_DIR

    def _lock(self, ref: StageRef) -> contextlib.AbstractContextManager[None]:
        # Beside the fingerprint folder, not inside it: `never` moves that folder aside, and a
        # lock file moving with it would let waiters on the old inode and newcomers on a new one
        # hold "the" lock at the same time.
        path = self.stage_base(ref.workflow, ref.stage) / f".{ref.fp12}{LOCK_SUFFIX}"
        if isinstance(path, ObjectPath):
            return objects.lease_lock(path)
        return file_lock(path)

    # ---- stage.json --------------------------------------------------------------------------

    def state(self, ref: StageRef) -> dict[str, Any]:
        """stage.json of the stage ({} when there is none yet)."""
        return self._read_state(self.stage_dir(ref) / STAGE_JSON, ref)

    @staticmethod
    def _read_state(path: StorePath, ref: StageRef | None = None) -> dict[str, Any]:
        if isinstance(path, Path):
            try:
                text: str | bytes = path.read_text()
            except FileNotFoundError:
                return {}
        else:
            found = files.read_bytes(path)
            if found is None:
                return {}
            text = found
        return PartitionStore._check_state(path, text, ref)

    @staticmethod
    def _check_state(path: StorePath, text: str | bytes, ref: StageRef | None) -> dict[str, Any]:
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
        """Apply `changes` to stage.json. Locally under the caller's flock; on an object store
        a conditional write (If-Match on the ETag read), re-applied to a fresh read when another
        writer got in first, so no concurrent change is lost."""
        path = self.stage_dir(ref) / STAGE_JSON
        if isinstance(path, ObjectPath):
            out = objects.update_json(
                path,
                lambda current: self._changed_state(
                    ref,
                    self._check_state(path, json.dumps(current), ref) if current else {},
                    changes,
                ),
            )
            assert out is not None
            return out
        state = self._changed_state(ref, self._read_state(path, ref), changes)
        atomic_write_json(path, state)
        return state

    @staticmethod
    def _changed_state(
        ref: StageRef, state: dict[str, Any], changes: dict[str, Any]
    ) -> dict[str, Any]:
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
        return state

    # ---- prepare (resume modes) --------------------------------------------------------------

    def prepare(
        self, ref: StageRef, mode: ResumeMode | str, token: str | None = None
    ) -> dict[str, Any]:
        """Check that row groups may be written under `mode` (or explain why not) and return
        the stage.json on disk ({} if none).

        Nothing is created here: folders appear with the first row group written, stage.json at
        its commit, so a run that fails before committing one leaves no trace in the data root.
        Only `never` changes the disk here, moving the old data aside as asked.

        `token` identifies one logical materialization (a CLI call or a backfill), which Dagster
        may split over many runs: under `never`, only the first of them moves old data aside."""
        mode = ResumeMode(mode)
        folder = self.stage_dir(ref)
        self._pending[folder] = {"fresh_start_token": token} if mode == ResumeMode.NEVER else {}
        if not files.is_dir(folder):
            # Nothing of this fingerprint: nothing to sweep, move or shrink, no lock needed.
            if mode == ResumeMode.ALWAYS:
                self._refuse_changed_config(ref)
            return {}
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
                    return {}
                return state
            state = self._read_state(folder / STAGE_JSON, ref)
            if mode == ResumeMode.ALWAYS and not self._has_data(ref):
                self._refuse_changed_config(ref)
            self._refuse_shrink(ref, state)
            return state

    def _has_data(self, ref: StageRef) -> bool:
        has_files = any(BATCH_RE.match(n) for n in files.names(self.files_dir(ref)))
        return has_files or files.is_dir(self.final_dir(ref))

    def _move_aside(self, ref: StageRef) -> StorePath:
        folder = self.stage_dir(ref)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = folder.with_name(f"{folder.name}{REPLACED_MARK}{stamp}")
        files.move_aside(folder, target)
        return target

    def _refuse_changed_config(self, ref: StageRef) -> None:
        newest = self.newest_other_fingerprint(ref)
        if newest is None:
            return
        shown = describe_change(newest.identity, ref.identity) if ref.identity else "unknown"
        raise ConfigChangedError(
            f"stage {ref.stage!r}: --resume always found no data for the current fingerprint"
            f" {ref.fp12} but {newest.row_groups} row group(s) under fingerprint {newest.fp12}"
            f" ({newest.path}); the config changed"
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
                partition_key(i.row_group) for i in sorted(beyond, key=lambda i: i.row_group)[:5]
            )
            raise StoreError(
                f"stage {ref.stage!r}: num_records is {ref.num_records} but {self.files_dir(ref)}"
                f" already holds records up to row {rows} (row groups {ids}"
                f"{' ...' if len(beyond) > 5 else ''}); nothing was deleted. Set num_records to at"
                f" least {rows}, or export the first {ref.num_records} rows, or run with --resume"
                " never to move this data aside and regenerate"
            )

    # ---- row groups --------------------------------------------------------------------------

    def _footer(self, path: StorePath, ref: StageRef) -> RowGroupInfo:
        if isinstance(path, ObjectPath):
            tag = self._etags.get(str(path))
            if tag is None:
                found = objects.head(path)
                tag = (found.e_tag, found.size) if found else ("", 0)
            return self._read_footer(path, ref, tag)[0]
        return self._read_footer(path, ref, stamp(path.stat()))[0]

    def _read_footer(
        self, path: StorePath, ref: StageRef, file_stamp: tuple[Any, ...]
    ) -> tuple[RowGroupInfo, dict[str, Any] | None]:
        """The file's footer as a RowGroupInfo (and its decoded key-values), read from the file."""
        key = (str(path), *file_stamp)
        cached = self._footers.get(key)
        if cached is not None:
            return cached
        # An object's stamp is the (ETag, size) it is cached by: its footer is read from that
        # version, with no HEAD of its own.
        version = (str(file_stamp[0]), int(file_stamp[1])) if isinstance(path, ObjectPath) else None
        f = read_footer(path, version)
        try:
            if f.error:
                raise ValueError(f.error)
            kv = decoded(f.kv or {})
            fingerprint = kv.pop("fingerprint")
            info = _row_group_info(
                path.parent, path.name, fingerprint, *(kv.get(k) for k in INFO_KEYS)
            )
        except (KeyError, TypeError, ValueError) as exc:
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
        self._footers[key] = (info, kv)
        return info, kv

    def batch_paths(self, ref: StageRef) -> list[StorePath]:
        """Committed row-group files in the stage's folder (temp files left by a crash are not;
        an object store lists an object only once its PUT completed)."""
        folder = self.files_dir(ref)
        if isinstance(folder, ObjectPath):
            entries = [e for e in objects.listing(folder)[0] if BATCH_RE.match(e.name)]
            for e in entries:
                self._etags[str(e.path)] = (e.e_tag, e.size)
            return sorted((e.path for e in entries), key=lambda p: p.name)
        if not folder.is_dir():
            return []
        return sorted(
            Path(e.path)
            for e in os.scandir(folder)
            if BATCH_RE.match(e.name) and not is_temp_name(e.name)
        )

    def footers(self, ref: StageRef) -> list[FileFooter]:
        """Every row-group file's footer, problems included rather than raised (for the checks)."""
        return [read_footer(p) for p in self.batch_paths(ref)]

    def _scan(self, ref: StageRef) -> dict[int, RowGroupInfo]:
        """Every committed row-group file's footer, by row group: listed now, taken from the
        footer index (store.footer_index) for files it describes, read from the file otherwise.
        (A scan may list 100,000 files: per file, one stat and a few lookups, no Path.)
        On an object store: one listing (with ETags), footers cached by ETag, no index."""
        folder = self.files_dir(ref)
        if isinstance(folder, ObjectPath):
            found = (self._footer(p, ref) for p in self.batch_paths(ref))
            return {info.row_group: info for info in found}
        try:
            folder_stamp = FolderStamp.of(folder)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        # Every file is listed and stat'ed here, even when the index stands for the folder (as
        # `footer_table` trusts it): a file rewritten in place moves no folder stamp, and the
        # runs and checks that call this must see it (a truncated row group is not done).
        index = FooterIndex(self.stage_dir(ref) / FOOTER_INDEX, ref.fingerprint)
        trusted = index.describes(folder_stamp)
        try:
            listed = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            return {}
        names = sorted(n for n in listed if BATCH_RE.match(n) and not is_temp_name(n))
        entries = index.entries() if names else {}
        from_index: list[RowGroupInfo | None] | None = None  # per index entry, made when needed
        footers = self._footers
        out = {}
        seen: list[tuple[str, Stamp, dict[str, Any] | None]] = []
        read = 0
        prefix = f"{folder}{os.sep}"
        for name in names:
            try:
                st = os.stat(prefix + name)
            except FileNotFoundError:  # removed since the listing
                continue
            file_stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            key = (prefix + name, *file_stamp)
            found = footers.get(key)
            if found is None:
                entry = entries.get(name)
                if entry is not None and entry[0] == file_stamp:
                    if from_index is None:
                        from_index = _infos_of_index(index, folder, ref.fingerprint)
                    info = from_index[entry[1]]
                    if info is not None:  # else: the entry does not describe a row group; read
                        found = footers[key] = (info, None)
                elif entry is not None and trusted:
                    # Rewritten in place: the index would go on standing for the old bytes in
                    # `footer_table` (status); retired, status reads the footers as this does.
                    index.retire()
                    trusted = False
            if found is None:
                found = self._read_footer(folder / name, ref, file_stamp)
                read += 1
            seen.append((name, file_stamp, found[1]))
            out[found[0].row_group] = found[0]
        if index.worth_saving(len(seen), read, folder_stamp):
            self._save_index(index, seen, folder_stamp)
        return out

    @staticmethod
    def _save_index(
        index: FooterIndex,
        seen: list[tuple[str, Stamp, dict[str, Any] | None]],
        folder_stamp: FolderStamp,
    ) -> None:
        """The scan's files into the index; those this process had from an index take their
        key-values from the one just loaded (if it no longer has them: no save)."""
        entries = []
        for name, file_stamp, kv in seen:
            if kv is None:
                i = index.lookup(name, file_stamp)
                if i is None:
                    return
                kv = index.kv(i)
            entries.append((name, file_stamp, kv))
        index.save(entries, folder_stamp)

    def footer_table(self, ref: StageRef) -> pa.Table | None:
        """The footers of the stage's row-group files as columns, for readers that compute over
        a whole stage at once (runners/status_columns.py): the footer index's Arrow table (one
        row per file; a column per footer key, JSON undecoded, and its STAT_COLUMNS) when it
        stands for the folder as it is now. None when it does not, or on an object store: then
        `completed` is the way (and its scan rewrites the index). No folder: no rows."""
        folder = self.files_dir(ref)
        if isinstance(folder, ObjectPath):
            return None
        try:
            now = FolderStamp.of(folder)
        except (FileNotFoundError, NotADirectoryError):
            # Not pa.table / pa.array: they import pandas when it is installed (~0.4 s of a status).
            return pa.Table.from_batches([], pa.schema([("name", pa.string())]))
        index = FooterIndex(self.stage_dir(ref) / FOOTER_INDEX, ref.fingerprint)
        return index.table_if_describes(now)

    def completed(self, ref: StageRef) -> dict[int, RowGroupInfo]:
        """Row groups on disk whose footer matches the current row ranges, by id.

        A file whose range differs (the last, short row group before num_records grew) is not
        complete: it is regenerated, with the same sampler values and cached LLM answers."""
        return {
            rg: info
            for rg, info in self._scan(ref).items()
            if is_done(ref, rg, (info.row_start, info.row_end))
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
        self,
        ref: StageRef,
        row_group: int,
        table: pa.Table,
        stats: dict[str, Any] | None = None,
        inputs: dict[str, str] | None = None,
        dropped_columns: pa.Table | None = None,
        drops: pa.Table | None = None,
        images: list[str] | None = None,
    ) -> RowGroupInfo:
        """Checkpoint one row group: atomically, with its identity in the footer: fingerprint,
        range, its content's data version and the data versions of what it was built from.

        Side tables go first, each committed and named in the footer, so a committed row group
        always has them: `dropped_columns` (row for row with `table`), and `drops`, its dropped
        rows (engine.DROPS_SCHEMA; no file when there are none). The base64 images of the
        `images` columns are written as files first too, their cells then holding the files'
        paths (store/images.py)."""
        if not 0 <= row_group < ref.num_row_groups:
            raise StoreError(
                f"stage {ref.stage!r} has row groups 00000-{ref.num_row_groups - 1:05d}; got {row_group}"
            )
        self._refuse_if_sealed(ref)  # early, before the file is written
        if len(set(table.column_names)) != len(table.column_names):
            raise StoreError(
                f"stage {ref.stage!r}, row group {partition_key(row_group)}: columns"
                f" {table.column_names} repeat a name; nothing was written"
            )
        write_id = uuid.uuid4().hex[:16]
        side = None
        if dropped_columns is not None:
            side = side_name("dropped", row_group, write_id)
            with files.atomic_path(self.dropped_columns_dir(ref) / side) as tmp:
                parquet.write_table(dropped_columns.replace_schema_metadata(None), tmp)
        drops_file = None
        if drops is not None and drops.num_rows:
            drops_file = side_name("drops", row_group, write_id)
            with files.atomic_path(self.drops_dir(ref) / drops_file) as tmp:
                parquet.write_table(drops.cast(DROPS_SCHEMA), tmp)
        image_counts = None
        if images:
            table, image_counts = write_images(self.stage_dir(ref), row_group, table, images)
        start, end = ref.row_range(row_group)
        kv = {
            "fingerprint": ref.fingerprint,
            "row_group": str(row_group),
            "row_start": str(start),
            "row_end": str(end),
            "rows": str(table.num_rows),
            "stats": json.dumps(stats or {}, sort_keys=True, default=str),
            "written_at": _now(),
            "data_version": content_hash(table),
            "inputs": json.dumps(inputs or {}, sort_keys=True),
        }
        if side is not None:
            kv["dropped_columns"] = side
        if drops_file is not None:
            kv["drops"] = drops_file
        if image_counts is not None:
            kv[IMAGES_FOOTER_KEY] = images_footer_value(image_counts)
        # A seed read from another stage's file may carry that file's footer keys: never inherit.
        meta = {
            k: v for k, v in (table.schema.metadata or {}).items() if not k.startswith(META_PREFIX)
        }
        meta.update({META_PREFIX + k.encode(): v.encode() for k, v in kv.items()})
        table = table.replace_schema_metadata(meta)
        path = self.batch_path(ref, row_group)
        with files.atomic_path(path, commit=lambda: self._unsealed(ref, path)) as tmp:
            parquet.write_table(table, tmp)
        self._remove_other_sides(self.dropped_columns_dir(ref), "dropped", row_group, keep=side)
        self._remove_other_sides(self.drops_dir(ref), "drops", row_group, keep=drops_file)
        if images:
            remove_other_images(self.stage_dir(ref), row_group, table, images)
        # The ETag a listing saw before this write is the old object's: asked again, not reused
        # (it would return the replaced row group's footer).
        self._etags.pop(str(path), None)
        return self._footer(path, ref)

    def missing_image(self, ref: StageRef, path: StorePath, columns: list[str]) -> str | None:
        """The first image file (of `columns`) a row group's cells name that is not on disk,
        as a path under the stage folder; None when all are."""
        return missing_image(self.stage_dir(ref), path, columns)

    @staticmethod
    def _remove_other_sides(folder: StorePath, kind: str, row_group: int, keep: str | None) -> None:
        """Side tables of the row group that its (new) footer does not name: an earlier
        write's, or one a crash left before its row group committed. Nothing reads them."""
        prefix = side_prefix(kind, row_group)
        if isinstance(folder, ObjectPath):
            for name in files.names(folder):
                if name.startswith(prefix) and name != keep:
                    files.remove(folder / name)
            return
        if not folder.is_dir():
            return
        for entry in os.scandir(folder):
            if (
                entry.name.startswith(prefix)
                and entry.name != keep
                and not is_temp_name(entry.name)
            ):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)

    def dropped_columns(self, ref: StageRef, info: RowGroupInfo) -> pa.Table | None:
        """The dropped columns of a committed row group, row for row (None: it was written
        without them, before run.keep_dropped_columns was on)."""
        if info.dropped_columns is None:
            return None
        path = self.dropped_columns_dir(ref) / info.dropped_columns
        try:
            return files.read_table(path)
        except (OSError, pa.ArrowException) as exc:
            raise CorruptStageError(
                f"{path}, the dropped columns of row group {partition_key(info.row_group)} of"
                f" stage {ref.stage!r}, is missing or unreadable ({type(exc).__name__}); nothing"
                f" was deleted. Move {info.path} out of the folder and rerun materialize to"
                " regenerate the row group with its side table"
            ) from exc

    def drops(self, ref: StageRef, info: RowGroupInfo) -> pa.Table:
        """Every dropped row of a committed row group (engine.DROPS_SCHEMA; empty if none)."""
        if info.drops is None:
            return DROPS_SCHEMA.empty_table()
        path = self.drops_dir(ref) / info.drops
        try:
            return files.read_table(path).cast(DROPS_SCHEMA)
        except (OSError, pa.ArrowException) as exc:
            raise CorruptStageError(
                f"{path}, the drops table of row group {partition_key(info.row_group)} of stage"
                f" {ref.stage!r}, is missing or unreadable ({type(exc).__name__}); nothing was"
                f" deleted. Move {info.path} out of the folder and rerun materialize to regenerate"
                " the row group with its drops"
            ) from exc

    def iter_drops(self, ref: StageRef) -> Iterator[pa.RecordBatch]:
        """The drops of every completed row group, in row order (for `export --drops`)."""
        for _, info in sorted(self.completed(ref).items()):
            if info.drops is not None:
                yield from self.drops(ref, info).to_batches()

    @contextlib.contextmanager
    def _unsealed(self, ref: StageRef, path: StorePath) -> Iterator[None]:
        """Hold the stage lock while a row group is committed, refusing if the stage got sealed
        meanwhile: a finalize that began while the file was being written must not miss it.

        On an object store a PUT cannot be conditional on another object: the row group is
        PUT, then stage.json read again; if finalize started meanwhile the object is removed
        and the write refused. Finalize lists the row groups after it set `started`, so with
        S3's read-after-write consistency either its listing saw the row group or the writer
        sees `started` and takes it back: never a row group outside the final output."""
        if isinstance(path, ObjectPath):
            self._refuse_if_sealed(ref)
            pending = self._pending.pop(self.stage_dir(ref), None)
            if pending is not None or not self.state(ref):
                self._write_state(ref, **(pending or {}))
            yield
            try:
                self._refuse_if_sealed(ref)
            except StageSealedError:
                files.remove(path)
                raise
            return
        with self._lock(ref):
            self._refuse_if_sealed(ref)
            pending = self._pending.pop(self.stage_dir(ref), None)
            if pending is not None or not (self.stage_dir(ref) / STAGE_JSON).exists():
                self._write_state(ref, **(pending or {}))
            yield

    def read_row_group(self, ref: StageRef, row_group: int) -> pa.Table:
        info = self.completed(ref).get(row_group)
        if info is None:
            raise StoreError(
                f"stage {ref.stage!r} (fingerprint {ref.fp12}) has no row group"
                f" {partition_key(row_group)} in {self.files_dir(ref)}; materialize that"
                " partition first"
            )
        return self.read(info)

    def read(self, info: RowGroupInfo) -> pa.Table:
        """The rows of a row group the caller already located (no folder scan); a file that
        cannot be read back intact is named."""
        try:
            return files.read_table(info.path)
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(info.path, exc) from None

    def dataset(self, ref: StageRef, row_groups: list[int] | None = None) -> pads.Dataset:
        """A lazy dataset over the given (default: all completed) row groups, in row order."""
        done = self.completed(ref)
        wanted = sorted(done) if row_groups is None else row_groups
        missing = [rg for rg in wanted if rg not in done]
        if missing:
            raise MissingRowGroupsError(
                f"stage {ref.stage!r} (fingerprint {ref.fp12}) lacks row group(s)"
                f" {[partition_key(rg) for rg in missing[:10]]} in {self.files_dir(ref)};"
                " materialize them first (backfill the missing partitions)"
            )
        return files.dataset([done[rg].path for rg in wanted])

    def missing(self, ref: StageRef) -> list[int]:
        """Row groups of the stage not on disk for its fingerprint."""
        done = self.completed(ref)
        return [rg for rg in range(ref.num_row_groups) if rg not in done]

    def iter_batches(
        self, ref: StageRef, batch_size: int = parquet.BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """All completed rows in row order, one record batch at a time (export, finalize); a
        file that cannot be read back intact is named."""
        for _, info in sorted(self.completed(ref).items()):
            yield from self.batches(info, batch_size)

    def batches(
        self, info: RowGroupInfo, batch_size: int = parquet.BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """One committed row group's rows, a record batch at a time; a file that cannot be read
        back intact is named."""
        try:
            yield from files.iter_batches(info.path, batch_size=batch_size)
        except (OSError, pa.ArrowException) as exc:
            raise _unreadable(info.path, exc) from None

    # ---- fingerprints on disk ----------------------------------------------------------------

    def fingerprint_names(self, workflow: str, stage: str) -> list[str]:
        """The fp12 of every fingerprint folder of a stage, as `fingerprints` lists them, without
        counting their row groups (status lists the others; counting the current one's 100,000
        files costs more than the rest of its status)."""
        base = self.stage_base(workflow, stage)
        return sorted(
            name
            for name in files.subfolders(base)
            if REPLACED_MARK not in name and APPROVED_SUFFIX not in name
        )

    def fingerprints(self, workflow: str, stage: str) -> list[FingerprintFolder]:
        """Every fingerprint folder of a stage (not those moved aside by `never`), for status and
        for telling a user what changed."""
        base = self.stage_base(workflow, stage)
        if isinstance(base, ObjectPath):
            return self._object_fingerprints(base)
        if not base.is_dir():
            return []
        out: list[FingerprintFolder] = []
        for entry in sorted(os.scandir(base), key=lambda e: e.name):
            if not entry.is_dir() or REPLACED_MARK in entry.name or APPROVED_SUFFIX in entry.name:
                continue
            try:
                state = self._read_state(Path(entry.path) / STAGE_JSON)
            except CorruptStageError:
                state = {}
            files = Path(entry.path) / FILES_DIR
            n = sum(1 for e in os.scandir(files) if BATCH_RE.match(e.name)) if files.is_dir() else 0
            out.append(FingerprintFolder(entry.name, Path(entry.path), state, n))
        return out

    def _object_fingerprints(self, base: ObjectPath) -> list[FingerprintFolder]:
        out: list[FingerprintFolder] = []
        for name in sorted(files.subfolders(base)):
            if REPLACED_MARK in name or APPROVED_SUFFIX in name:
                continue
            try:
                state = self._read_state(base / name / STAGE_JSON)
            except CorruptStageError:
                state = {}
            n = sum(1 for f in files.names(base / name / FILES_DIR) if BATCH_RE.match(f))
            out.append(FingerprintFolder(name, base / name, state, n))
        return out

    def newest_other_fingerprint(self, ref: StageRef) -> FingerprintFolder | None:
        """The most recently written other fingerprint folder of the stage that holds row
        groups: what the data on disk was made by before the config changed."""
        with_data = [
            f
            for f in self.fingerprints(ref.workflow, ref.stage)
            if f.fp12 != ref.fp12 and f.row_groups
        ]
        return max(with_data, key=lambda f: f.updated_at) if with_data else None

    # ---- finalize ----------------------------------------------------------------------------

    def final_paths(self, ref: StageRef) -> tuple[StorePath, StorePath]:
        """(final/data.parquet, final/final.json) of a stage."""
        folder = self.final_dir(ref)
        return folder / FINAL_DATA, folder / FINAL_META

    def final_output(self, ref: StageRef, final_fingerprint: str) -> FinalOutput:
        """The stage's final output, checked to be complete and made by the current finalize
        config (`final_fingerprint`); a stale or half-made one is never handed out."""
        data, meta = self.final_paths(ref)
        state = self.state(ref)
        try:
            info = json.loads(files.read_bytes(meta) or b"{}")
        except (OSError, ValueError):
            info = {}
        if (
            state.get("finalize_state") != "complete"
            or not files.exists(data)
            or not isinstance(info, dict)
            or info.get("final_fingerprint") != final_fingerprint
        ):
            raise FinalMissingError(
                f"stage {ref.stage!r} has no complete final output for its current config under"
                f" {self.final_dir(ref)}; materialize the asset"
                f" {ref.workflow}/{final_output_name(ref.stage)}"
                " first"
            )
        return FinalOutput(data, info)

    def begin_finalize(self, ref: StageRef) -> None:
        with self._lock(ref):
            self._write_state(ref, finalize_state="started", finalized_at=_now())

    def complete_finalize(self, ref: StageRef) -> None:
        with self._lock(ref):
            self._write_state(ref, finalize_state="complete", finalized_at=_now())

    def unseal(self, ref: StageRef) -> StorePath | None:
        """Invalidate the final output (moved aside, not deleted) so row groups may be written again."""
        with self._lock(ref):
            final = self.final_dir(ref)
            moved = None
            if files.is_dir(final):
                moved = final.with_name(
                    f"{FINAL_DIR}.invalidated-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
                )
                files.move_aside(final, moved)
            self._write_state(ref, finalize_state=None, finalized_at=None)
            return moved

    # ---- housekeeping ------------------------------------------------------------------------

    def sweep(self, ref: StageRef) -> list[Path]:
        """Remove temp files of dead writers: what a crash mid-write leaves behind (an object
        store has none: a file is uploaded whole from a local temp file)."""
        removed: list[Path] = []
        if self.objects:
            return removed
        for folder in (
            self.stage_dir(ref),
            self.files_dir(ref),
            self.dropped_columns_dir(ref),
            self.drops_dir(ref),
            self.final_dir(ref),
            self.profile_dir(ref),
        ):
            removed += sweep_temp_files(folder)
        return removed + sweep_images(self.stage_dir(ref))
