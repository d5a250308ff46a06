"""Atomic writes on real files: a reader sees the old file or the whole new one, a crash leaves at
most a recognisable temp file, the sweeper only removes temp files of dead writers of this host,
and file_lock excludes other processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dd_assets.store.atomic import (
    TEMP_MARK,
    _host,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    file_lock,
    is_temp_name,
    sweep_temp_files,
)

REPO = Path(__file__).resolve().parents[2]


def run_py(code: str, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
        check=False,
    )


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if is_temp_name(p.name))


# ---- success ---------------------------------------------------------------------------------


def test_atomic_write_bytes_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "data.bin"  # parent is created
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    atomic_write_bytes(target, b"two, longer")
    assert target.read_bytes() == b"two, longer"
    assert [p.name for p in target.parent.iterdir()] == ["data.bin"]


def test_atomic_write_json_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    atomic_write_json(target, {"b": 1, "a": [1, 2]})
    assert json.loads(target.read_text()) == {"a": [1, 2], "b": 1}
    assert target.read_text().endswith("\n")
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_path_writes_through_temp_in_same_folder(tmp_path: Path) -> None:
    target = tmp_path / "batch_00000.parquet"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path
        assert is_temp_name(tmp.name) and TEMP_MARK in tmp.name
        assert tmp.name.startswith("batch_00000.parquet")
        tmp.write_bytes(b"payload")
        assert not target.exists()  # nobody sees it before the block ends
    assert target.read_bytes() == b"payload"
    assert temps(tmp_path) == []


def test_atomic_path_refuses_when_nothing_written(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    with pytest.raises(FileNotFoundError, match="nothing was written"), atomic_path(target):
        pass
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_temp_names_unique_across_threads(tmp_path: Path) -> None:
    """Row groups are written from worker threads; two temps for one target must not collide."""
    names: list[str] = []
    lock = threading.Lock()

    def grab() -> None:
        for _ in range(200):
            with atomic_path(tmp_path / "same.bin") as tmp:
                with lock:
                    names.append(tmp.name)
                tmp.write_bytes(b"x")

    threads = [threading.Thread(target=grab) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == len(set(names)) == 800
    assert temps(tmp_path) == []


# ---- crash -----------------------------------------------------------------------------------


def test_exception_mid_write_keeps_old_content(tmp_path: Path) -> None:
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old content")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old content"
    # at most a temp file, and only one the store recognises as such
    assert all(is_temp_name(n) for n in os.listdir(tmp_path) if n != "data.bin")


def test_process_killed_mid_write_keeps_old_content_and_leaves_sweepable_temp(
    tmp_path: Path,
) -> None:
    target = tmp_path / "data.bin"
    atomic_write_bytes(target, b"old content")
    proc = run_py(
        "import os, sys\n"
        "from dd_assets.store.atomic import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_bytes(b'half of the new')\n"
        "    os._exit(0)  # a crash: no cleanup runs\n",
        str(target),
    )
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == b"old content"
    left = temps(tmp_path)
    assert len(left) == 1 and left[0].startswith("data.bin" + TEMP_MARK)
    assert sorted(os.listdir(tmp_path)) == sorted(["data.bin", *left])
    # the writer is dead, so the sweeper takes it
    assert [p.name for p in sweep_temp_files(tmp_path)] == left
    assert os.listdir(tmp_path) == ["data.bin"]


# ---- sweep -----------------------------------------------------------------------------------


def dead_pid(tmp_path: Path) -> tuple[int, Path]:
    """A temp file created by a subprocess that has exited (its pid is dead)."""
    proc = run_py(
        "import os, sys\n"
        "from pathlib import Path\n"
        "from dd_assets.store.atomic import _temp_path\n"
        "p = _temp_path(Path(sys.argv[1]))\n"
        "p.write_bytes(b'left over')\n"
        "print(os.getpid(), p)\n",
        str(tmp_path / "dead.bin"),
    )
    assert proc.returncode == 0, proc.stderr
    pid, path = proc.stdout.split()
    return int(pid), Path(path)


def test_sweep_removes_only_dead_writers_of_this_host(tmp_path: Path) -> None:
    pid, dead = dead_pid(tmp_path)
    assert dead.exists() and is_temp_name(dead.name)
    assert f".{_host()}.{pid}." in dead.name
    host = _host()
    mine = tmp_path / f"mine.bin{TEMP_MARK}{host}.{os.getpid()}.7"
    other_host = tmp_path / f"remote.bin{TEMP_MARK}otherhost.{pid}.1"  # dead pid, other host
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        live = tmp_path / f"live.bin{TEMP_MARK}{host}.{sleeper.pid}.1"
        final = tmp_path / "final.bin"
        not_ours = tmp_path / "notes.dd-tmp.txt"  # has the mark but not the shape
        for p in (mine, other_host, live, final, not_ours):
            p.write_bytes(b"x")
        removed = sweep_temp_files(tmp_path)
        assert removed == [dead]
        assert not dead.exists()
        for p in (mine, other_host, live, final, not_ours):
            assert p.exists(), p.name
        # once the live writer is gone, its temp goes too
        sleeper.kill()
        sleeper.wait()
        assert sweep_temp_files(tmp_path) == [live]
        assert mine.exists() and other_host.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sweep_missing_folder_is_a_no_op(tmp_path: Path) -> None:
    assert sweep_temp_files(tmp_path / "nope") == []


def test_is_temp_name() -> None:
    assert is_temp_name(f"batch_00001.parquet{TEMP_MARK}h.1.2")
    assert not is_temp_name("batch_00001.parquet")
    assert not is_temp_name("stage.json")


# ---- lock ------------------------------------------------------------------------------------


TRY_LOCK = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
    "try:\n"
    "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "except BlockingIOError:\n"
    "    print('busy')\n"
    "else:\n"
    "    print('got it')\n"
)


def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / "locks" / ".stage.lock"  # parent created
    with file_lock(lock):
        assert run_py(TRY_LOCK, str(lock)).stdout.strip() == "busy"
    assert run_py(TRY_LOCK, str(lock)).stdout.strip() == "got it"
    assert lock.exists()  # never deleted: deleting would split the lock over two inodes


def test_file_lock_blocks_a_second_holder_until_released(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    marker = tmp_path / "acquired"
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dd_assets.store.atomic import file_lock\n"
        "with file_lock(sys.argv[1]):\n"
        "    Path(sys.argv[2]).write_text('yes')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with file_lock(lock):
        proc = subprocess.Popen([sys.executable, "-c", code, str(lock), str(marker)], env=env)
        try:
            time.sleep(0.5)  # ample time to start and reach the lock
            assert proc.poll() is None and not marker.exists()
        except BaseException:
            proc.kill()
            raise
    assert proc.wait(timeout=10) == 0
    assert marker.read_text() == "yes"
