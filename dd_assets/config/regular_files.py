"""Opening a file a user named (a config, a seed file) only if it is a regular file.

A FIFO would block the command until something writes to it, /dev/zero never ends, a directory
fails deep inside a reader with an unrelated message. The path is opened without blocking
(O_NONBLOCK makes opening a FIFO return at once) and the open file is what gets checked, so a
path swapped between a check and the open cannot slip through."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class NotRegularFile(OSError):
    """The path exists but is a directory, FIFO, device or socket (`kind` says which)."""

    def __init__(self, path: Path, kind: str):
        super().__init__(f"{path} is {kind}, not a regular file")
        self.kind = kind


def file_kind(mode: int) -> str:
    """'a directory', 'a FIFO (named pipe)' ...: what a path that should be a file is instead."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """(fd, its stat) of a regular file, symlinks followed; raises FileNotFoundError,
    NotRegularFile or another OSError. The caller closes the fd."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(path, file_kind(st.st_mode))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st
