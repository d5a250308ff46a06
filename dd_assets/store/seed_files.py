"""Seed files (parquet, csv, jsonl) as seed sources: read by index, hashed for the fingerprint.

A seed file must be a regular file: the path is resolved (symlinks first) and opened without
blocking, so a FIFO, a device (a `.csv` symlink to /dev/zero) or a directory is refused at once
with its name instead of hanging `validate` or `materialize`."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from dd_assets.config.regular_files import NotRegularFile, open_regular
from dd_assets.engine.seeds import SeedSource
from dd_assets.errors import StoreError
from dd_assets.store import files
from dd_assets.store.files import StorePath

_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}


class SeedFileError(StoreError):
    """A seed file is missing, unreadable or empty; the message names the file."""


def _open(path: str | Path) -> tuple[int, Path]:
    """(fd, real path) of a seed file that is a regular file; SeedFileError otherwise."""
    real = Path(path).resolve()
    shown = f"{path} (-> {real})" if str(real) != str(path) else str(path)
    try:
        fd, _ = open_regular(real)
    except FileNotFoundError:
        raise SeedFileError(
            f"seed file {shown} not found; fix `seed.path` in the config (relative paths are"
            " relative to the config file)"
        ) from None
    except NotRegularFile as exc:
        raise SeedFileError(
            f"seed file {shown} is {exc.kind}; a seed must be a regular .parquet, .csv or .jsonl"
            " file"
        ) from None
    except OSError as exc:
        raise SeedFileError(f"seed file {shown} cannot be opened: {exc.strerror}") from None
    return fd, real


def _regular(path: str | Path) -> Path:
    fd, real = _open(path)
    os.close(fd)
    return real


def file_digest(path: str | Path) -> str:
    """sha256 of the seed file's bytes: part of the fingerprint, so an edited file is a new dataset."""
    fd, real = _open(path)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as exc:
        raise SeedFileError(f"seed file {real} cannot be read: {exc.strerror}") from None
    return h.hexdigest()


def file_schema(path: str | Path) -> pa.Schema:
    """The columns a seed file provides, reading as little as the format allows (a parquet
    footer; the first block of a csv or jsonl file), so `validate` can check names against it."""
    fmt = _FORMATS[Path(path).suffix.lower()]
    real = _regular(path)
    try:
        if fmt == "parquet":
            return pq.read_schema(real).remove_metadata()
        import pyarrow.dataset as pads  # here: it imports pandas when installed (~0.5 s)

        return pads.dataset(str(real), format=fmt).schema.remove_metadata()
    except (OSError, pa.ArrowException) as exc:
        raise SeedFileError(f"seed file {path} could not be read as {fmt}: {exc}") from None


def file_source(path: str | StorePath) -> SeedSource:
    """A seed file of the config (local, a regular file), or a finalized upstream's final output
    (in the data root, which may be an object store)."""
    path = _regular(path) if isinstance(path, str | Path) else path
    fmt = _FORMATS[path.suffix.lower()]
    try:
        dataset = files.dataset([path], format=fmt)
        if fmt != "parquet":
            # csv/jsonl have no row index: a take would rescan the file for every row group.
            # Seed files of this kind are small; hold them once.
            import pyarrow.dataset as pads

            dataset = pads.dataset(dataset.to_table())
        n = dataset.count_rows()
    except (OSError, pa.ArrowException) as exc:
        raise SeedFileError(f"seed file {path} could not be read as {fmt}: {exc}") from None
    if n == 0:
        raise SeedFileError(f"seed file {path} has no rows; a stage cannot sample from it")
    return SeedSource(
        str(path), n, lambda idx: dataset.take(pa.array(idx)), dataset.schema.remove_metadata()
    )
