"""Seed files (parquet, csv, jsonl) as seed sources: read by index, hashed for the fingerprint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from dd_assets.engine.seeds import SeedSource
from dd_assets.errors import StoreError
from dd_assets.store import files
from dd_assets.store.files import StorePath

_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}


class SeedFileError(StoreError):
    """A seed file is missing, unreadable or empty; the message names the file."""


def file_digest(path: str | Path) -> str:
    """sha256 of the seed file's bytes: part of the fingerprint, so an edited file is a new dataset."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise SeedFileError(
            f"seed file {path} not found; fix `seed.path` in the config (relative paths are"
            " relative to the config file)"
        ) from None
    return h.hexdigest()


def file_source(path: str | StorePath) -> SeedSource:
    """A seed file of the config (local), or a finalized upstream's final output (in the data
    root, which may be an object store)."""
    path = Path(path) if isinstance(path, str) else path
    fmt = _FORMATS[path.suffix.lower()]
    try:
        dataset = files.dataset([path], format=fmt)
        if fmt != "parquet":
            # csv/jsonl have no row index: a take would rescan the file for every row group.
            # Seed files of this kind are small; hold them once.
            dataset = pads.dataset(dataset.to_table())
        n = dataset.count_rows()
    except (OSError, pa.ArrowException) as exc:
        raise SeedFileError(f"seed file {path} could not be read as {fmt}: {exc}") from None
    if n == 0:
        raise SeedFileError(f"seed file {path} has no rows; a stage cannot sample from it")
    return SeedSource(
        str(path), n, lambda idx: dataset.take(pa.array(idx)), dataset.schema.remove_metadata()
    )
