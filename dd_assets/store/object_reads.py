"""Reading parquet objects one version at a time. pyarrow reads a parquet file in several
requests (its size, the footer, then the pages the footer names); when another run's PUT
replaces the object in between (overlapping backfills write the same row group,
docs/scaling.md), a reader over a plain object filesystem applies one PUT's footer to the next
one's bytes: "magic bytes not found", page checksum errors, a failed run. Here each open file
is one version of its object: the size and ETag of a HEAD (or of a listing), and every read a
range GET pinned to that ETag (If-Match), which raises `ObjectReplacedError` instead of
returning another version's bytes. Imported only for object roots (it loads pyarrow.fs)."""

from __future__ import annotations

import io
import threading
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs

from dd_assets.store import objects
from dd_assets.store.objects import ObjectPath


class VersionFile(io.RawIOBase):
    """One version of an object as a read-only, seekable file (for `pyarrow.PythonFile`): its
    size is the version's, every read one range GET pinned to its ETag. Nothing is buffered
    here: pyarrow asks for the footer and then whole column chunks, each one request."""

    def __init__(self, path: ObjectPath, version: tuple[str, int]) -> None:
        super().__init__()
        self.path = path
        self.e_tag, self.size = version
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        if end <= self._pos:
            return b""
        data = objects.read_range(self.path, self._pos, end, self.e_tag)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


def open_version(path: ObjectPath, version: tuple[str, int]) -> pa.PythonFile:
    """The object as a pyarrow file pinned to `version` (ETag, size): what a listing or a HEAD
    said (files._one_version, PinnedObjects)."""
    return pa.PythonFile(VersionFile(path, version), mode="r")


class PinnedObjects(pafs.FileSystemHandler):
    """A read-only pyarrow filesystem over given objects (paths `bucket/key`) for one dataset:
    the first open of an object pins it to the version a HEAD finds, and every later open of
    it reads that same version. pyarrow opens a file again for each scan and reuses the footer
    it cached on the fragment (count_rows, then take), so a dataset must never see two
    versions of an object: a replaced one raises `ObjectReplacedError` instead."""

    def __init__(self, paths: list[ObjectPath]) -> None:
        self.paths = {fs_path(p): p for p in paths}
        self.versions: dict[str, tuple[str, int]] = {}
        self._mutex = threading.Lock()

    def _version(self, path: str) -> tuple[ObjectPath, tuple[str, int]]:
        obj = self.paths.get(path)
        if obj is None:
            raise FileNotFoundError(path)
        with self._mutex:
            found = self.versions.get(path)
        if found is None:
            found = objects.version(obj)
            with self._mutex:
                found = self.versions.setdefault(path, found)
        return obj, found

    def get_type_name(self) -> str:
        return "dd-assets-pinned-objects"

    def normalize_path(self, path: str) -> str:
        return path

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        infos = []
        for path in paths:
            try:
                size = self._version(path)[1][1]
            except FileNotFoundError:
                infos.append(pafs.FileInfo(path, pafs.FileType.NotFound))
            else:
                infos.append(pafs.FileInfo(path, pafs.FileType.File, size=size))
        return infos

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        raise NotImplementedError("a dataset of given objects lists no folder")

    def open_input_file(self, path: str) -> pa.PythonFile:
        return open_version(*self._version(path))

    def open_input_stream(self, path: str) -> pa.PythonFile:
        return self.open_input_file(path)

    def _read_only(self, *_: Any) -> None:
        raise PermissionError("a dataset's objects are read-only")

    create_dir = delete_dir = delete_dir_contents = delete_file = _read_only
    delete_root_dir_contents = move = copy_file = _read_only
    open_output_stream = open_append_stream = _read_only


def filesystem(paths: list[ObjectPath]) -> pafs.PyFileSystem:
    """The filesystem of one dataset over `paths` (given to it as `fs_path`s)."""
    return pafs.PyFileSystem(PinnedObjects(paths))


def fs_path(path: ObjectPath) -> str:
    return f"{path.bucket}/{path.key}"
