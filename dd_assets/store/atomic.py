"""Atomic file writes: a reader sees the old file or the whole new one, never a part.

Every write goes to a temp name in the target's own folder (so `os.replace` is a rename on one
filesystem), is fsynced, replaced, and the folder is fsynced so the rename itself survives a power
cut. A crash leaves at most a temp file, recognisable by its name, that readers ignore and
`sweep_temp_files` removes once the process that wrote it is gone."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

TEMP_MARK = ".dd-tmp."
# <name>.dd-tmp.<host>.<pid>.<n>: host and pid tell the sweeper whether the writer may still live.
_TEMP_RE = re.compile(r"^(?P<name>.+)\.dd-tmp\.(?P<host>[^.]+)\.(?P<pid>\d+)\.(?P<n>\d+)\Z")
_counter = itertools.count(1)  # next() is atomic: row groups are written from threads


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"


def is_temp_name(name: str) -> bool:
    return TEMP_MARK in name


def _temp_path(target: Path) -> Path:
    n = next(_counter)
    return target.with_name(f"{target.name}{TEMP_MARK}{_host()}.{os.getpid()}.{n}")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike[str],
    commit: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
) -> Iterator[Path]:
    """Yield a temp path to write; on success it becomes `target`, on error it is removed.

    For writers that want a path (pyarrow, csv), not a file object. `commit()` is entered around
    the rename only: a lock plus a last check that may still refuse, without holding the lock
    while the (slow) file is written."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} for {target}")
        _fsync_file(tmp)
        with commit():
            os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_json(target: str | os.PathLike[str], payload: Any) -> None:
    text = json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write_bytes(target, text.encode())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_temp_files(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove temp files left by dead writers of this host in `folder` (not recursive).

    Temp files of live processes, or of other hosts sharing the store, are left alone: we cannot
    tell whether those writers are still at work."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = _host()
    for entry in os.scandir(folder):
        m = _TEMP_RE.match(entry.name)
        if not m or m["host"] != host:
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """An exclusive advisory lock (flock) for read-modify-write of small shared files.

    The lock file is never deleted: deleting it would let two processes lock two different inodes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
