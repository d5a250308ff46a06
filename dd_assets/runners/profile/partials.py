"""Where profile partials come from: a cache file per row group (`profile/` beside the row
groups, named by the row group's data version), written when the row group lands and recomputed
from the parquet file whenever it is missing, unreadable, of another data version or of an older
profile scheme. A partial is a function of the row group's content, so whichever run wrote it
(or whether a kill -9 came between the row group and its partial) the stage profile is the same.

The stage's partial is the merge, in row-group order, of its completed row groups' partials:
one small file read per row group, never the rows themselves (except to fill the cache). That
merge is a left fold, so its state after the first k row groups is kept too (`merged.json`,
with how many row groups and a digest of their numbers and data versions): the next run, which
profiles the stage again as its last event, folds in only the row groups after that prefix
instead of reading one file per row group on disk (a stage of 100,000 row groups took seconds
per run). Any other change (a row group regenerated, a hole filled) folds from the start."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import pyarrow as pa

from dd_assets.runners.profile.partial import TablePartial
from dd_assets.store import files
from dd_assets.store.files import StorePath
from dd_assets.store.footer import RowGroupInfo
from dd_assets.store.layout import StageRef, profile_name
from dd_assets.store.partition_store import FinalOutput, PartitionStore

PROFILE_SCHEME = 1  # bump when a partial's content changes meaning: old files are recomputed
MERGED = "merged.json"  # the fold of a prefix of the row groups (not a row group's name)
BATCH_ROWS = 65_536  # rows read at a time when a partial is computed from a file


def _read(path: StorePath, data_version: str) -> TablePartial | None:
    try:
        d = json.loads(files.read_bytes(path) or b"{}")
        if d.get("scheme") != PROFILE_SCHEME or d.get("data_version") != data_version:
            return None
        return TablePartial.from_json(d["partial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a cache: anything unreadable is recomputed


def _write(path: StorePath, data_version: str, partial: TablePartial) -> None:
    payload = {"scheme": PROFILE_SCHEME, "data_version": data_version, "partial": partial.to_json()}
    # Compact and in column order (sort_keys would reorder the columns).
    files.write_bytes(path, json.dumps(payload, separators=(",", ":")).encode())
    # Partials of earlier contents of this row group (same prefix, other data version).
    prefix = path.name.split(".", 1)[0] + "."
    for name in files.names(path.parent):
        if name.startswith(prefix) and name != path.name:
            files.remove(path.parent / name)


def of_batches(batches: Iterable[pa.RecordBatch], schema: pa.Schema) -> TablePartial:
    """One partial over batches in order (an empty table's partial has the schema's columns)."""
    total: TablePartial | None = None
    for batch in batches:
        part = TablePartial.of(batch)
        total = part if total is None else total.merge(part)
    return total if total is not None else TablePartial.of(schema.empty_table())


def _of_file(path: StorePath) -> TablePartial:
    return files.read_with(
        path, lambda f: of_batches(f.iter_batches(batch_size=BATCH_ROWS), f.schema_arrow)
    )


def record_row_group(
    store: PartitionStore, ref: StageRef, info: RowGroupInfo, table: pa.Table
) -> TablePartial:
    """Profile a row group that just landed, from the rows still in memory."""
    partial = of_batches(table.to_batches(max_chunksize=BATCH_ROWS), table.schema)
    _write(
        store.profile_dir(ref) / profile_name(info.row_group, info.data_version),
        info.data_version,
        partial,
    )
    return partial


def row_group_partial(store: PartitionStore, ref: StageRef, info: RowGroupInfo) -> TablePartial:
    path = store.profile_dir(ref) / profile_name(info.row_group, info.data_version)
    partial = _read(path, info.data_version)
    if partial is None:
        partial = _of_file(info.path)
        _write(path, info.data_version, partial)
    return partial


def stage_partial(
    store: PartitionStore, ref: StageRef, infos: dict[int, RowGroupInfo]
) -> TablePartial | None:
    """The merge of the completed row groups' partials in row-group order, folding on from the
    kept fold of a prefix when it is one of this list (exactly what a fold from the start gives:
    the kept state is the fold's own, through the same JSON as each row group's partial)."""
    order = sorted(infos)
    keys = [f"{rg}:{infos[rg].data_version}\n".encode() for rg in order]
    path = store.profile_dir(ref) / MERGED
    total, start = None, 0
    kept = _read_merged(path)
    if kept is not None and 0 < kept[0] <= len(order):
        h = hashlib.sha256()
        for key in keys[: kept[0]]:
            h.update(key)
        if h.hexdigest() == kept[1]:
            total, start = kept[2], kept[0]
    for rg in order[start:]:
        part = row_group_partial(store, ref, infos[rg])
        total = part if total is None else total.merge(part)
    if total is not None and start < len(order):
        h = hashlib.sha256()
        for key in keys:
            h.update(key)
        payload = {
            "scheme": PROFILE_SCHEME,
            "row_groups": len(order),
            "digest": h.hexdigest(),
            "partial": total.to_json(),
        }
        files.write_bytes(path, json.dumps(payload, separators=(",", ":")).encode())
    return total


def _read_merged(path: StorePath) -> tuple[int, str, TablePartial] | None:
    try:
        d = json.loads(files.read_bytes(path) or b"{}")
        if d.get("scheme") != PROFILE_SCHEME:
            return None
        return int(d["row_groups"]), str(d["digest"]), TablePartial.from_json(d["partial"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a cache: anything unreadable is folded again


def final_partial(store: PartitionStore, ref: StageRef, final: FinalOutput) -> TablePartial:
    """The final output's partial, cached under its data version (final.json)."""
    version = str(final.info.get("data_version") or "")
    path = store.profile_dir(ref) / profile_name(None, version or "unversioned")
    partial = _read(path, version) if version else None
    if partial is None:
        partial = _of_file(final.path)
        if version:
            _write(path, version, partial)
    return partial
