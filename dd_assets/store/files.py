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
from typing import TYPE_CHECKING, Any, TypeVar

import pyarrow as pa

from dd_assets.store import objects, parquet
from dd_assets.store.atomic import atomic_path as _local_atomic_path
from dd_assets.store.atomic import fsync_dir, is_temp_name
from dd_assets.store.objects import ObjectPath, ObjectStoreError

if TYPE_CHECKING:
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

StorePath = Path | ObjectPath
T = TypeVar("T")


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


def parquet_file(path: StorePath, version: tuple[str, int] | None = None) -> pq.ParquetFile:
    """A parquet file whose pages are checksum-verified as they are read (store/parquet.py).
    An object's is one version of it (store/object_reads.py): `version` (ETag, size, as a
    listing gave them) or a HEAD's; its footer is read again from a new HEAD when the object
    was replaced meanwhile, and a later read of a replaced object raises
    `ObjectReplacedError`, never another version's pages."""
    if isinstance(path, ObjectPath):
        return _one_version(path, version, lambda v: _object_file(path, v))
    return parquet.open_file(path)


def _object_file(path: ObjectPath, version: tuple[str, int]) -> pq.ParquetFile:
    import pyarrow.parquet as pq  # here: store/parquet.py says why

    from dd_assets.store import object_reads

    return pq.ParquetFile(object_reads.open_version(path, version), page_checksum_verification=True)


# An object's footer is read from its last FOOTER_READ bytes (the whole footer of a row group,
# but for thousands of columns); a bigger one takes a second GET, of the same version.
FOOTER_READ = 64 * 1024
# Reads of an object started over on its new version before giving up (ObjectReplacedError).
READ_ATTEMPTS = 5


def _one_version(
    path: ObjectPath,
    version: tuple[str, int] | None,
    read: Callable[[tuple[str, int]], T],
) -> T:
    """`read(version)` of one version of the object, `version` if given, else a HEAD's; started
    over from a new HEAD when another PUT replaced the object during it (READ_ATTEMPTS times)."""
    for _ in range(READ_ATTEMPTS):
        if version is None or not version[0]:
            version = objects.version(path)
        try:
            return read(version)
        except objects.ObjectReplacedError:
            version = None
    raise objects.ObjectReplacedError(path, f", {READ_ATTEMPTS} times in a row")


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

    def footer(version: tuple[str, int]) -> pq.FileMetaData:
        e_tag, size = version
        data = objects.read_range(path, max(0, size - FOOTER_READ), size, e_tag)
        need = 8 + int.from_bytes(data[-8:-4], "little") if len(data) >= 8 else 0
        if len(data) < need <= size:
            data = objects.read_range(path, size - need, size, e_tag)
        return pq.read_metadata(pa.BufferReader(data))

    return _one_version(path, version, footer)


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
    """The file's rows a batch at a time. An object's come from one version of it: replaced
    before the first batch was handed on (a row group's pages are all read for its first
    batch), the read starts over on the new version; after, `ObjectReplacedError`."""
    if not isinstance(path, ObjectPath):
        yield from _batches(parquet.open_file(path), columns, batch_size)
        return
    for _ in range(READ_ATTEMPTS):
        handed = False
        try:
            for batch in _batches(_object_file(path, objects.version(path)), columns, batch_size):
                handed = True
                yield batch
            return
        except objects.ObjectReplacedError:
            if handed:
                raise
    raise objects.ObjectReplacedError(path, f", {READ_ATTEMPTS} times in a row")


def _batches(
    f: pq.ParquetFile, columns: list[str] | None = None, batch_size: int = parquet.BATCH_ROWS
) -> Iterator[pa.RecordBatch]:
    try:
        yield from f.iter_batches(batch_size=batch_size, columns=columns)
    finally:
        f.close()


def read_with(path: StorePath, read: Callable[[pq.ParquetFile], T]) -> T:
    """`read(f)` of the parquet file, which is closed after: for a reader that hands nothing on
    before it returns (a profile, a preview, a check). An object's file is one version of it,
    and the whole `read` starts over on the new version when another run's PUT replaced the
    object meanwhile (READ_ATTEMPTS times), where `parquet_file` could only raise."""

    def run(f: pq.ParquetFile) -> T:
        try:
            return read(f)
        finally:
            f.close()

    if isinstance(path, ObjectPath):
        return _one_version(path, None, lambda v: run(_object_file(path, v)))
    return run(parquet.open_file(path))


def verify_pages(path: StorePath) -> str | None:
    """Why a file's pages cannot be read back intact (None: they can). Reads (and so decodes)
    every page once with checksum verification on: the cheapest full check pyarrow offers.
    An object replaced during the read is read again, whole, on its new version: a replaced
    object is not a corrupt one."""

    def read_all(f: pq.ParquetFile) -> None:
        for _ in f.iter_batches(batch_size=parquet.BATCH_ROWS):
            pass

    try:
        read_with(path, read_all)
    except (OSError, pa.ArrowException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def dataset(paths: list[StorePath], format: str = "parquet") -> pads.Dataset:
    """A lazy dataset over files of one root (all local or all objects); parquet pages are
    checksum-verified. Over objects, each object is read at one version, the one its first
    open found (store/object_reads.PinnedObjects): a scan that meets an object replaced since
    raises `ObjectReplacedError`, never mixes two versions' bytes."""
    import pyarrow.dataset as pads  # here: it costs ~0.1 s to import, and only readers need it

    fmt = parquet.verifying_format() if format == "parquet" else format
    if paths and isinstance(paths[0], ObjectPath):
        from dd_assets.store import object_reads

        objs = [p for p in paths if isinstance(p, ObjectPath)]
        return pads.dataset(
            [object_reads.fs_path(p) for p in objs],
            format=fmt,
            filesystem=object_reads.filesystem(objs),
        )
    return pads.dataset([str(p) for p in paths], format=fmt)


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
