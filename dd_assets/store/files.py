"""The store's file operations for both kinds of data root: a local folder (`Path`, the fast
path, exactly the calls the store always made) or an object store (`ObjectPath`, through
`store.objects`). Every reader and writer of data-root files goes through here, so nothing
above the store needs to know which kind of root it has."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dd_assets.store import objects, parquet
from dd_assets.store.atomic import atomic_path as _local_atomic_path
from dd_assets.store.atomic import fsync_dir, is_temp_name
from dd_assets.store.objects import ObjectPath, ObjectStoreError

if TYPE_CHECKING:
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

StorePath = Path | ObjectPath


def root_path(root: str | os.PathLike[str]) -> StorePath:
    """A data root as given (`DD_ASSETS_ROOT`, the store resource): a local folder, `file://`
    (a local folder too), or an object-store URL (`s3://bucket/prefix`, gs://, az://)."""
    if isinstance(root, Path | ObjectPath):
        return root
    text = os.fspath(root)
    if text.startswith("file://"):
        return Path(text[len("file://") :])
    if "://" in text:
        return objects.parse_root(text)
    return Path(text)


def is_object(path: StorePath) -> bool:
    return isinstance(path, ObjectPath)


def check_root(root: StorePath) -> None:
    """Fail early and clearly when an object root cannot be used (a no-op for local roots)."""
    if isinstance(root, ObjectPath):
        objects.check_root(root)


# ---- reading ---------------------------------------------------------------------------------


def parquet_file(path: StorePath) -> pq.ParquetFile:
    """A parquet file whose pages are checksum-verified as they are read (store/parquet.py)."""
    if isinstance(path, ObjectPath):
        import pyarrow.parquet as pq  # here: store/parquet.py says why

        fs = objects.filesystem(path)
        with _readable(path):
            return pq.ParquetFile(
                fs.open_input_file(objects.fs_path(path)), page_checksum_verification=True
            )
    return parquet.open_file(path)


# An object's footer is read from its last FOOTER_READ bytes (the whole footer of a row group,
# but for thousands of columns); a bigger one takes a second GET, of the same version.
FOOTER_READ = 64 * 1024
FOOTER_ATTEMPTS = 5


def parquet_footer(path: StorePath, version: tuple[str, int] | None = None) -> pq.FileMetaData:
    """The file's footer (key-value metadata, schema), no data page read. An object's is read
    from one version of it: its ETag and size (`version`, as a listing gave them, else a HEAD),
    then its last bytes by range GETs pinned to that ETag (If-Match), started over from a HEAD
    if another PUT replaced the object meanwhile. pyarrow's own reads (the size, then ranges)
    could take the length of one PUT and the bytes of the next when overlapping runs write the
    same row group (docs/scaling.md): "unreadable parquet", and a failed run."""
    if not isinstance(path, ObjectPath):
        f = parquet.open_file(path)
        try:
            return f.metadata
        finally:
            f.close()
    import pyarrow.parquet as pq  # here: store/parquet.py says why

    for _ in range(FOOTER_ATTEMPTS):
        if version is None or not version[0]:
            entry = objects.head(path)
            if entry is None:
                raise FileNotFoundError(str(path))
            version = (entry.e_tag, entry.size)
        e_tag, size = version
        try:
            data = objects.read_range(path, max(0, size - FOOTER_READ), size, e_tag)
            need = 8 + int.from_bytes(data[-8:-4], "little") if len(data) >= 8 else 0
            if len(data) < need <= size:
                data = objects.read_range(path, size - need, size, e_tag)
        except objects.Changed:
            version = None
            continue
        return pq.read_metadata(pa.BufferReader(data))
    raise OSError(f"{path} was replaced {FOOTER_ATTEMPTS} times while its footer was read")


def read_table(path: StorePath) -> pa.Table:
    if isinstance(path, ObjectPath):
        import pyarrow.parquet as pq  # here: store/parquet.py says why

        # One GET, so one version of the object. pyarrow's S3 reads are ranges (the footer, then
        # the pages): when an overlapping run replaces the row group between them, the footer of
        # one PUT was applied to the bytes of the next ("magic bytes not found"), seen in
        # tests/e2e/test_scale_out.py's overlapping backfills. A row group is read whole anyway.
        found = objects.get(path)
        if found is None:
            raise FileNotFoundError(str(path))
        return pq.read_table(pa.BufferReader(found[0]), page_checksum_verification=True)
    return parquet.read_table(path)


def iter_batches(
    path: StorePath, columns: list[str] | None = None, batch_size: int = parquet.BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    f = parquet_file(path)
    try:
        yield from f.iter_batches(batch_size=batch_size, columns=columns)
    finally:
        f.close()


def verify_pages(path: StorePath) -> str | None:
    """Why a file's pages cannot be read back intact (None: they can). Reads (and so decodes)
    every page once with checksum verification on: the cheapest full check pyarrow offers."""
    try:
        for _ in iter_batches(path):
            pass
    except (OSError, pa.ArrowException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def dataset(paths: list[StorePath], format: str = "parquet") -> pads.Dataset:
    """A lazy dataset over files of one root (all local or all objects); parquet pages are
    checksum-verified."""
    import pyarrow.dataset as pads  # here: it costs ~0.1 s to import, and only readers need it

    fmt = parquet.verifying_format() if format == "parquet" else format
    if paths and isinstance(paths[0], ObjectPath):
        first = paths[0]
        return pads.dataset(
            [objects.fs_path(p) for p in paths],  # type: ignore[arg-type]
            format=fmt,
            filesystem=objects.filesystem(first),
        )
    return pads.dataset([str(p) for p in paths], format=fmt)


@contextlib.contextmanager
def _readable(path: ObjectPath) -> Iterator[None]:
    """pyarrow reports a missing object as an OSError/FileNotFoundError like a local file; a
    failure of the store itself becomes the root's error."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        if "not found" in str(exc).lower():
            raise FileNotFoundError(str(path)) from exc
        raise


def read_bytes(path: StorePath) -> bytes | None:
    """The file's content; None when it does not exist."""
    if isinstance(path, ObjectPath):
        found = objects.get(path)
        return None if found is None else found[0]
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def exists(path: StorePath) -> bool:
    if isinstance(path, ObjectPath):
        return objects.head(path) is not None
    return path.exists()


def is_dir(folder: StorePath) -> bool:
    """Local: a directory. Objects: any object under the prefix (folders are not objects)."""
    if isinstance(folder, ObjectPath):
        entries, subs = objects.listing(folder)
        return bool(entries or subs)
    return folder.is_dir()


def names(folder: StorePath) -> list[str]:
    """Names of the committed files directly in `folder` (no temp files); [] if none."""
    if isinstance(folder, ObjectPath):
        return [e.name for e in objects.listing(folder)[0]]
    if not folder.is_dir():
        return []
    return [e.name for e in os.scandir(folder) if e.is_file() and not is_temp_name(e.name)]


def subfolders(folder: StorePath) -> list[str]:
    if isinstance(folder, ObjectPath):
        return objects.listing(folder)[1]
    if not folder.is_dir():
        return []
    return [e.name for e in os.scandir(folder) if e.is_dir()]


def signature(folder: StorePath) -> object:
    """Something that changes when a file in `folder` is added, replaced or removed (a
    sensor's cursor): the folder's mtime locally, the names and ETags of its objects."""
    if isinstance(folder, ObjectPath):
        return sorted(f"{e.name}:{e.e_tag}" for e in objects.listing(folder)[0])
    return folder.stat().st_mtime_ns if folder.is_dir() else 0


# ---- writing ---------------------------------------------------------------------------------


def atomic_path(
    target: StorePath,
    commit: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> contextlib.AbstractContextManager[Path]:
    """Yield a local path to write; on success it becomes `target` whole (a rename locally, one
    PUT of the finished file on an object store), inside `commit()`."""
    if isinstance(target, ObjectPath):
        return objects.upload(target, commit)
    return _local_atomic_path(target, commit)


def write_bytes(target: StorePath, data: bytes) -> None:
    if isinstance(target, ObjectPath):
        objects.put(target, data)
        return
    with _local_atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_json(target: StorePath, payload: Any) -> None:
    write_bytes(
        target, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode()
    )


def remove(path: StorePath) -> None:
    """Delete a file if it is there."""
    if isinstance(path, ObjectPath):
        objects.delete(path)
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def mkdir(folder: StorePath) -> None:
    """Locally a folder must exist before a file goes in; object stores have no folders."""
    if isinstance(folder, Path):
        folder.mkdir(parents=True, exist_ok=True)


def move_aside(src: StorePath, dst: StorePath) -> None:
    """Move a folder to a new name in the same parent: a rename locally; a copy of every object
    and then their deletion on an object store (see objects.move_tree)."""
    if isinstance(src, ObjectPath):
        assert isinstance(dst, ObjectPath)
        objects.move_tree(src, dst)
        return
    os.replace(src, dst)  # type: ignore[arg-type]
    fsync_dir(src.parent)


__all__ = ["ObjectPath", "ObjectStoreError", "StorePath"]
