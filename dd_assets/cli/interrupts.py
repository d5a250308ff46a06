"""Ctrl-C and SIGTERM: a command stops with one line and exit 130 (SIGINT) or 143 (SIGTERM).

SIGTERM is made to raise KeyboardInterrupt like Ctrl-C (unless something set its handler already,
or it is ignored), so both unwind the same way: a row group being written is committed or not
at all, and what is on disk is what a rerun resumes. Which signal it was cannot be told from the
exception (Dagster's in-process runs catch both with one handler), so the signal numbers are
also written to a wakeup pipe, which the kernel-level handler fills whatever Python handler is in
place."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType

EXIT_SIGINT = 128 + signal.SIGINT  # 130
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


class SignalLog:
    """Which of SIGINT / SIGTERM arrived while a command ran."""

    def __init__(self, read_fd: int | None) -> None:
        self._fd = read_fd
        self._seen = b""

    def exit_code(self) -> int:
        if self._fd is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                self._seen += os.read(self._fd, 256)
        return EXIT_SIGTERM if signal.SIGTERM in self._seen else EXIT_SIGINT


@contextlib.contextmanager
def watch_signals() -> Iterator[SignalLog]:
    if threading.current_thread() is not threading.main_thread():
        yield SignalLog(None)  # signal handlers belong to the main thread
        return
    old_term = signal.getsignal(signal.SIGTERM)
    if old_term == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        yield SignalLog(r)
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGTERM, old_term)
        os.close(r)
        os.close(w)
