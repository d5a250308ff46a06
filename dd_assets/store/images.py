"""The image files of a row group: an image column's images, written beside the row group
before it commits, named by their content, its cells holding their paths (docs/decisions.md,
"Image columns").

Files go first and the row group's parquet last, as with the side tables: a committed row group
always has its images, and a crash before its commit leaves only files no footer names, which
the next write of that row group removes. Content names make a regenerated row group with the
same images write the same paths, so its data version does not change."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pyarrow as pa

from dd_assets.engine.images import decode_image
from dd_assets.errors import StoreError
from dd_assets.store import files
from dd_assets.store.atomic import sweep_temp_files
from dd_assets.store.files import StorePath
from dd_assets.store.layout import IMAGES_DIR, image_folder, image_name, partition_key

FOOTER_KEY = "images"  # {column: number of image files of the row group}


def write_images(
    stage_dir: StorePath, row_group: int, table: pa.Table, columns: list[str]
) -> tuple[pa.Table, dict[str, int]]:
    """Write the base64 images of `columns` as files; the table with those cells holding the
    files' paths (relative to `stage_dir`), and per column the number of files."""
    counts: dict[str, int] = {}
    for name in columns:
        i = table.schema.get_field_index(name)
        if i < 0:
            continue
        folder = image_folder(name, row_group)
        written: set[str] = set()
        cells: list[list[str] | None] = []
        for cell in table.column(i).to_pylist():
            if cell is None:
                cells.append(None)
                continue
            paths = []
            for b64 in cell:
                try:
                    raw, fmt = decode_image(b64)
                except ValueError as exc:  # the cell runner checked: only a bug gets here
                    raise StoreError(
                        f"column {name!r} of row group {partition_key(row_group)} holds no image"
                        f" ({exc}); nothing was written"
                    ) from None
                file = image_name(hashlib.sha256(raw).hexdigest(), fmt)
                if file not in written:
                    files.write_bytes(stage_dir / folder / file, raw)
                    written.add(file)
                paths.append(f"{folder}/{file}")
            cells.append(paths)
        field = table.schema.field(i)
        table = table.set_column(i, field, pa.array(cells, field.type))
        counts[name] = len(written)
    return table, counts


def footer_value(counts: dict[str, int]) -> str:
    return json.dumps(counts, sort_keys=True)


def footer_counts(kv: dict[str, str] | None) -> dict[str, int]:
    """What a footer says of its row group's image files ({} for a row group without)."""
    try:
        counts = json.loads((kv or {})[FOOTER_KEY])
    except (KeyError, ValueError):
        return {}
    return counts if isinstance(counts, dict) else {}


def remove_other_images(
    stage_dir: StorePath, row_group: int, table: pa.Table, columns: list[str]
) -> None:
    """After the row group committed: the files of its image folders its cells do not name (an
    earlier write's, or one a crash left before its commit)."""
    for name in columns:
        if name not in table.column_names:
            continue
        keep = {p.rsplit("/", 1)[1] for cell in table.column(name).to_pylist() for p in cell or []}
        folder = stage_dir / image_folder(name, row_group)
        for file in files.names(folder):
            if file not in keep:
                files.remove(folder / file)


def missing_image(stage_dir: StorePath, path: StorePath, columns: list[str]) -> str | None:
    """The first image file a row group's cells name that is not there (its path relative to
    `stage_dir`); None when all are. One folder listing per column, not one request per file."""

    def first_missing(f: Any) -> str | None:
        present = [c for c in columns if c in f.schema_arrow.names]
        if not present:
            return None
        listed: dict[str, set[str]] = {}
        for batch in f.iter_batches(columns=present):
            for column in batch.columns:
                for cell in column.to_pylist():
                    for rel in cell or []:
                        folder, _, file = rel.rpartition("/")
                        if folder not in listed:
                            listed[folder] = set(files.names(stage_dir / folder))
                        if file not in listed[folder]:
                            return rel
        return None

    return files.read_with(path, first_missing)


def sweep_images(stage_dir: StorePath) -> list[Any]:
    """Temp files of dead writers in the image folders (local roots only)."""
    removed: list[Any] = []
    base = stage_dir / IMAGES_DIR
    for column in files.subfolders(base):
        for rg in files.subfolders(base / column):
            removed += sweep_temp_files(base / column / rg)  # type: ignore[arg-type]
    return removed
