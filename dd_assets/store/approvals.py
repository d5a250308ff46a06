"""Approved outputs (review gates): a user-reviewed table that a stage hands downstream instead
of what it generated, stored beside the stage's fingerprint folder.

    <root>/<workflow>/<stage>/<fp12>.approved/approved-<version16>.parquet   the rows, copied
                                              approval.json                  the commit point

The parquet file is written first (atomically, named by its content hash), then approval.json
names it (atomically): a crash in between leaves a file nothing names, and the approval before
it (or none) stands. The rows are stored in parquet row groups of the stage's buffer_size, so
row group i of the approval (what a `mode: row_group` descendant reads) is one parquet row
group, and each has its data version recorded, as a generated row group's footer does. The
stage's own row groups are never touched. Clearing moves the folder aside, never deletes it.
Which table is approved, and whether it fits the stage, is decided in runners/approve.py."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from dd_assets.store import files, objects, parquet
from dd_assets.store.atomic import file_lock
from dd_assets.store.files import ObjectPath, StorePath
from dd_assets.store.footer import content_hash
from dd_assets.store.layout import APPROVAL_META, APPROVED_SUFFIX, LOCK_SUFFIX, StageRef
from dd_assets.store.partition_store import CorruptStageError, PartitionStore

CLEARED_MARK = ".cleared-"


@dataclass(frozen=True)
class Approval:
    """A stage's approved output as approval.json describes it."""

    path: StorePath  # the stored parquet
    info: dict[str, Any]

    @property
    def data_version(self) -> str:
        return str(self.info["data_version"])

    @property
    def rows(self) -> int:
        return int(self.info["rows"])

    @property
    def replaces(self) -> str:
        """What it stands in for: "row_groups", or "final" for a stage with finalize steps."""
        return str(self.info["replaces"])

    def row_group_version(self, row_group: int) -> str:
        versions = self.info["row_group_versions"]
        return str(versions[row_group] if row_group < len(versions) else self.info["empty_version"])

    def row_group(self, row_group: int) -> pa.Table:
        """Rows `row_group * buffer_size` onward, at most buffer_size of them (empty past the end)."""
        f = files.parquet_file(self.path)
        if row_group < f.metadata.num_row_groups:
            return f.read_row_group(row_group)
        return f.schema_arrow.empty_table()

    def read(self) -> pa.Table:
        return files.read_table(self.path)


def approval_dir(store: PartitionStore, ref: StageRef) -> StorePath:
    return store.stage_base(ref.workflow, ref.stage) / f"{ref.fp12}{APPROVED_SUFFIX}"


def _lock(store: PartitionStore, ref: StageRef) -> Any:
    # Beside the folder it guards, never deleted or moved (see PartitionStore._lock).
    path = store.stage_base(ref.workflow, ref.stage) / f".{ref.fp12}{APPROVED_SUFFIX}{LOCK_SUFFIX}"
    if isinstance(path, ObjectPath):
        return objects.lease_lock(path)
    return file_lock(path)


def read_approval(store: PartitionStore, ref: StageRef) -> Approval | None:
    """The stage's approval under its current fingerprint, or None."""
    folder = approval_dir(store, ref)
    meta = folder / APPROVAL_META
    try:
        text = files.read_bytes(meta)
        if text is None:
            raise FileNotFoundError(str(meta))
        info = json.loads(text)
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        keys = ("file", "data_version", "rows", "replaces", "row_group_versions", "empty_version")
        missing = [k for k in keys if k not in info]
        if missing:
            raise KeyError(f"lacks {missing}")
        path = folder / str(info["file"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as exc:
        raise CorruptStageError(
            f"{meta} is not a valid approval ({type(exc).__name__}: {exc}); nothing was changed."
            f" Approve the file again, or `dd-assets approve CONFIG {ref.stage} --clear` to move"
            " it aside"
        ) from exc
    if not files.exists(path):
        raise CorruptStageError(
            f"{meta} names {path.name}, which is not in {folder}; nothing was changed. Approve"
            f" the file again, or `dd-assets approve CONFIG {ref.stage} --clear` to move it aside"
        )
    return Approval(path, info)


def write_approval(
    store: PartitionStore,
    ref: StageRef,
    table: pa.Table,
    *,
    source: str,
    replaces: str,
) -> Approval:
    """Store `table` (already checked against the stage's schema) as the stage's approval."""
    table = table.replace_schema_metadata(None)
    version = content_hash(table)
    b = ref.buffer_size
    folder = approval_dir(store, ref)
    path = folder / f"approved-{version[:16]}.parquet"
    info = {
        "stage": ref.stage,
        "fingerprint": ref.fingerprint,
        "file": path.name,
        "data_version": version,
        "rows": table.num_rows,
        "replaces": replaces,
        "buffer_size": b,
        "row_group_versions": [
            content_hash(table.slice(start, b)) for start in range(0, table.num_rows, b)
        ],
        "empty_version": content_hash(table.schema.empty_table()),
        "source": source,
        "approved_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    with _lock(store, ref):
        with files.atomic_path(path) as tmp:
            parquet.write_table(table, tmp, row_group_size=b)
        files.write_json(folder / APPROVAL_META, info)
    return Approval(path, info)


def clear_approval(store: PartitionStore, ref: StageRef) -> StorePath | None:
    """Move the approval folder aside (`<fp12>.approved.cleared-<timestamp>`); None if there
    was none."""
    folder = approval_dir(store, ref)
    with _lock(store, ref):
        if not files.exists(folder / APPROVAL_META):
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = folder.with_name(f"{folder.name}{CLEARED_MARK}{stamp}")
        files.move_aside(folder, target)
        return target
