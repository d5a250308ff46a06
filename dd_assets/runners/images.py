"""Image files for commands: reading the files multi_modal_context cells name, finding a row
group whose image files are gone, and carrying images along with an export."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa

from dd_assets.engine.images import LoadImage, image_columns
from dd_assets.errors import StoreError
from dd_assets.runners.plan import StagePlan
from dd_assets.store import files
from dd_assets.store.files import StorePath
from dd_assets.store.footer import RowGroupInfo
from dd_assets.store.partition_store import PartitionStore


def image_loader(store: PartitionStore | None, plan: StagePlan) -> LoadImage:
    """Reads an image file a cell names (`data_type: null`): a relative path under the folder of
    an upstream stage or the stage itself (where image columns' files are), then, as DataDesigner
    does, the path itself, from the working directory."""
    folders: list[StorePath] = []
    if store is not None:
        folders = [store.stage_dir(up.ref) for up in plan.upstreams] + [store.stage_dir(plan.ref)]

    def load(value: str) -> bytes | None:
        if not Path(value).is_absolute() and ".." not in Path(value).parts:
            for folder in folders:
                found = files.read_bytes(folder / value)
                if found is not None:
                    return found
        try:
            return Path(value).read_bytes() if Path(value).is_file() else None
        except OSError:
            return None

    return load


def without_missing_images(
    plan: StagePlan, store: PartitionStore, done: dict[int, RowGroupInfo]
) -> dict[int, RowGroupInfo]:
    """`done` less the row groups whose image files are not all on disk: those are missing
    data (status shows them missing, materialize makes them again, from the request cache)."""
    columns = image_columns(plan.compiled.stage)
    if not columns:
        return done
    return {
        rg: info
        for rg, info in done.items()
        if store.missing_image(plan.ref, info.path, columns) is None
    }


def image_paths(batches: Iterable[pa.RecordBatch], columns: list[str]) -> Iterator[str]:
    for batch in batches:
        for name in columns:
            if name in batch.schema.names:
                for cell in batch.column(name).to_pylist():
                    yield from cell or []


def copy_images(plan: StagePlan, store: PartitionStore, paths: Iterable[str], to: StorePath) -> int:
    """Copy the image files `paths` names (relative to the stage folder) to the same relative
    paths under `to`; StoreError naming the first one not on disk. Returns how many."""
    base = store.stage_dir(plan.ref)
    n = 0
    for rel in dict.fromkeys(paths):
        data = files.read_bytes(base / rel)
        if data is None:
            raise StoreError(
                f"image file {base / rel} of stage {plan.name!r} is missing; nothing was exported."
                " Run `dd-assets materialize` for the stage: row groups with missing images are"
                " made again (their answers come from the request cache)"
            )
        files.write_bytes(to / rel, data)
        n += 1
    return n
