"""Where a stage's data lives and how it is cut into row groups: the one home for folder and file
names, partition keys and row ranges.

    <root>/<workflow>/<stage>/<fp12>/stage.json
                                     footer-index.arrow  (a cache of the files' footers)
                                     parquet-files/batch_00000.parquet
                                     dropped-columns/dropped_00000.<id>.parquet
                                     drops/drops_00000.<id>.parquet (its dropped rows)
                                     images/<column>/00000/<sha256/32>.<png|jpeg|...>
                                     final/data.parquet, final/final.json
                                     profile/rg_00000.<data version>.json, final.<...>.json
                              <fp12>.approved/approval.json, approved-<version16>.parquet

`profile/` holds a cache: each row group's profile partial (runners/profile), named by the data
version it describes, so a file for other rows is never read; deleting the folder costs one read
of the data.

Side tables (dropped columns, the drops table of dropped rows) live outside `parquet-files/`,
so that whatever reads that folder as the dataset (pyarrow, pandas, DuckDB globbing `*.parquet`)
never mixes them into the rows.
An image column's images are files under `images/`, one folder per column and row group,
each named by its content's hash; the row group's cells hold those paths relative to the
fingerprint folder (DataDesigner's dataset keeps `images/<column>/<name>` the same way).

An approval sits beside its fingerprint folder, not in it: `--resume never` moves the folder
aside to regenerate the stage's own row groups, and the approval is not theirs to move.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dd_assets.config.workflow import num_row_groups, row_range
from dd_assets.errors import StoreError

DEFAULT_ROOT = "./dd-data"
ROOT_ENV = "DD_ASSETS_ROOT"

STAGE_JSON = "stage.json"
FOOTER_INDEX = "footer-index.arrow"  # store/footer_index.py
FILES_DIR = "parquet-files"
FINAL_DIR = "final"
FINAL_DATA = "data.parquet"  # final/<FINAL_DATA>: a stage's finalize output
FINAL_META = "final.json"  # final/<FINAL_META>: rows in/out per step, final fingerprint
PROFILE_DIR = "profile"
DROPPED_COLUMNS_DIR = "dropped-columns"
APPROVED_SUFFIX = ".approved"  # <fp12>.approved/: a stage's approved output (review gate)
APPROVAL_META = "approval.json"
DROPS_DIR = "drops"
IMAGES_DIR = "images"
LOCK_SUFFIX = ".lock"
REPLACED_MARK = ".replaced-"
BATCH_RE = re.compile(r"^batch_(\d{5,})\.parquet\Z")


def default_root() -> str:
    """Absolute, so run workers started from another working directory write to the same place.
    An object-store URL (`s3://bucket/prefix`) is taken as it is."""
    root = os.environ.get(ROOT_ENV, DEFAULT_ROOT)
    if "://" in root and not root.startswith("file://"):
        return root
    return str(Path(root.removeprefix("file://")).resolve())


def batch_name(row_group: int) -> str:
    return f"batch_{row_group:05d}.parquet"


def profile_name(row_group: int | None, data_version: str) -> str:
    """The profile partial of a row group's content (None: of the final output)."""
    return f"{'final' if row_group is None else f'rg_{row_group:05d}'}.{data_version}.json"


def side_name(kind: str, row_group: int, write_id: str) -> str:
    """A side table of one write of a row group (`dropped_00003.<id>.parquet`). Named per write
    and named in that row group's footer, so a regenerated row group never shows another
    write's side table (a crash between the two commits leaves a file no footer names)."""
    return f"{side_prefix(kind, row_group)}{write_id}.parquet"


def side_prefix(kind: str, row_group: int) -> str:
    return f"{kind}_{row_group:05d}."


def image_folder(column: str, row_group: int) -> str:
    """The folder of one row group's images of one column, relative to the fingerprint folder
    (the column name is an identifier, so it is a safe folder name)."""
    return f"{IMAGES_DIR}/{column}/{row_group:05d}"


def image_name(digest: str, fmt: str) -> str:
    return f"{digest[:32]}.{fmt}"


def partition_key(row_group: int) -> str:
    return f"{row_group:05d}"


def row_group_of(key: str) -> int:
    if not key.isdigit():
        raise StoreError(f"partition key {key!r} is not a row-group id like '00042'")
    return int(key)


def keys_head(row_groups: list[int], n: int = 5) -> str:
    """The first n partition keys of a list, for messages: `00003, 00007 ...`."""
    head = ", ".join(partition_key(rg) for rg in row_groups[:n])
    return head + (" ..." if len(row_groups) > n else "")


def key_ranges(row_groups: Iterable[int], n: int) -> str:
    """Row groups as runs of keys, the first n runs: `00003-00009, 00012 …`."""
    items = sorted(row_groups)
    ranges: list[str] = []
    i = 0
    while i < len(items):
        j = i
        while j + 1 < len(items) and items[j + 1] == items[j] + 1:
            j += 1
        a, b = partition_key(items[i]), partition_key(items[j])
        ranges.append(a if i == j else f"{a}-{b}")
        i = j + 1
    return ", ".join(ranges[:n]) + (" …" if len(ranges) > n else "")


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
        return num_row_groups(self.num_records, self.buffer_size)

    def row_range(self, row_group: int) -> tuple[int, int]:
        return row_range(self.num_records, self.buffer_size, row_group)
