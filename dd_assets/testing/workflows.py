"""Shared by the integration tests: small workflow configs on disk, an isolated Dagster home and
data root, and snapshots of what the store holds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

PEOPLE_COLUMNS: list[dict[str, Any]] = [
    {
        "name": "person_id",
        "column_type": "sampler",
        "sampler_type": "uuid",
        "params": {"prefix": "P-", "short_form": True},
    },
    {
        "name": "city",
        "column_type": "sampler",
        "sampler_type": "category",
        "params": {"values": ["Lyon", "Oslo", "Lima"]},
    },
    {
        "name": "customer",
        "column_type": "sampler",
        "sampler_type": "person",
        "params": {"locale": "en_US"},
    },
    {
        "name": "score",
        "column_type": "sampler",
        "sampler_type": "uniform",
        "params": {"low": 1, "high": 10},
        "convert_to": "int",
    },
    {
        "name": "line",
        "column_type": "expression",
        "expr": "{{ customer.first_name }} from {{ city }} scored {{ score }}",
    },
]


def people_config(
    *,
    name: str = "wf",
    num_records: int = 1000,
    buffer_size: int = 100,
    partitions_per_run: int = 4,
    downstream: bool = False,
    score_high: int = 10,
) -> dict[str, Any]:
    columns = [dict(c) for c in PEOPLE_COLUMNS]
    columns[3] = {**columns[3], "params": {"low": 1, "high": score_high}}
    stages: list[dict[str, Any]] = [
        {
            "name": "people",
            "num_records": num_records,
            "buffer_size": buffer_size,
            "columns": columns,
        }
    ]
    if downstream:
        stages.append(
            {
                "name": "notes",
                "num_records": num_records,
                "buffer_size": buffer_size,
                "seed": {"stage": "people", "mode": "row_group"},
                "columns": [
                    {
                        "name": "note",
                        "column_type": "expression",
                        "expr": "note for {{ person_id }}",
                    }
                ],
            }
        )
    return {
        "name": name,
        "run": {"partitions_per_run": partitions_per_run, "row_groups_in_flight": 2},
        "stages": stages,
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def isolated_env(tmp_path: Path, config: Path | None = None) -> dict[str, str]:
    """Environment for a subprocess (or monkeypatched in-process) run with its own instance/store."""
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    from dd_assets.dagster.instance import NEW_INSTANCE_YAML  # what a user's new instance gets

    (home / "dagster.yaml").write_text(NEW_INSTANCE_YAML)
    env = dict(os.environ)
    env.update(
        DAGSTER_HOME=str(home),
        DD_ASSETS_ROOT=str(tmp_path / "dd-data"),
        PYTHONUNBUFFERED="1",
    )
    if config is not None:
        env["DD_ASSETS_CONFIG"] = str(config)
    return env


def batch_files(root: Path) -> dict[str, Path]:
    """Every committed row-group file under a data root (current fingerprints, not moved-aside)."""
    out = {}
    for p in sorted(root.rglob("batch_*.parquet")):
        if ".replaced-" in str(p) or ".dd-tmp." in p.name:
            continue
        out[str(p.relative_to(root))] = p
    return out


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) per row-group file: a regenerated file gets a new inode via os.replace."""
    return {k: (p.stat().st_ino, p.stat().st_mtime_ns) for k, p in batch_files(root).items()}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".dd-tmp." in p.name]


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (TimeoutError) instead of hanging when the block blocks longer than `seconds`: an
    alarm interrupts even a blocking open() of a FIFO. Main thread only."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_signals() -> None:
    """preexec_fn for a process a test will signal: SIGINT and SIGTERM as a shell gives them.
    A parent that ignores them (a background job, some CI runners) would pass that on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """One query against a Dagster webserver's GraphQL API (what the UI sends); its `data`."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = json.loads(resp.read())
    assert "errors" not in body, body
    return body["data"]


@contextlib.contextmanager
def serving(cmd: list[str], env: dict[str, str], cwd: Path) -> Iterator[tuple[int, Path]]:
    """A Dagster webserver command (`cmd` + `--port N`) on a free port; yields (port, log file)
    once it answers, and stops the whole process group."""
    port = free_port()
    log_path = cwd / "ui.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            env={**env, "PWD": str(cwd)},
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=default_signals,
        )
        try:
            # 180 s as for the deployment's webserver (testing/deployment.py): 90 s was too short
            # at load 15-40 on 2 cores (both browser tests failed so, with nothing else wrong).
            deadline = time.monotonic() + 180
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                    break
                except OSError:
                    assert proc.poll() is None, log_path.read_text()
                    assert time.monotonic() < deadline, "webserver did not start in 180 s"
                    time.sleep(0.5)
            yield port, log_path
        finally:
            with contextlib.suppress(ProcessLookupError):  # the group may be gone already
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)


# dagster-daemon with its backfill loop every BACKFILL_TICK_S instead of Dagster's fixed 30 s
# (dagster._daemon.controller.DEFAULT_DAEMON_INTERVAL_SECONDS, not configurable in dagster.yaml):
# a backfill waits up to one tick to have its runs submitted and another to be marked done,
# which on one machine is most of a test's time and none of what it tests.
BACKFILL_TICK_S = 2
FAST_DAEMON = (
    "import sys; import dagster._daemon.controller as c;"
    f" c.DEFAULT_DAEMON_INTERVAL_SECONDS = {BACKFILL_TICK_S};"
    " from dagster._daemon.cli import main; sys.argv[0] = 'dagster-daemon'; sys.exit(main())"
)


def pids_naming(text: str) -> list[int]:
    """Processes (not this one) whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@contextlib.contextmanager
def running_webserver_and_fast_daemon(env: dict[str, str], cwd: Path) -> Iterator[tuple[int, Path]]:
    """What `dd-assets ui` starts, as two processes: dagster-webserver and dagster-daemon on the
    workspace it writes (the code location under its pinned name), the daemon's backfill loop
    ticking every BACKFILL_TICK_S. For backfills over several dependency levels, where each level
    waits for a tick: at Dagster's 30 s that is most of a test's time. Yields (port, log)."""
    import dagster as dg

    from dd_assets.dagster.workspace import write_workspace

    home = env["DAGSTER_HOME"]
    dg.DagsterInstance.from_config(home).dispose()  # created once, before the servers race
    workspace = str(write_workspace(home))
    with open(cwd / "daemon.log", "wb") as out:
        daemon = subprocess.Popen(
            [str(BIN / "python"), "-c", FAST_DAEMON, "run", "-w", workspace],
            env=env,
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stopping = False
    try:
        web = [str(BIN / "dagster-webserver"), "-w", workspace, "-h", "127.0.0.1"]
        with serving(web, env, cwd) as served:
            try:
                yield served
            finally:  # the daemon shuts down while the webserver does, not after it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(daemon.pid, signal.SIGTERM)
                    stopping = True
    finally:
        with contextlib.suppress(ProcessLookupError):
            if not stopping:
                os.killpg(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
        # Code servers the daemon started can outlive it (their own sessions); each names this
        # instance's folder on its command line.
        for pid in pids_naming(home):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def running_ui(
    workflow: Path, env: dict[str, str], cwd: Path
) -> contextlib.AbstractContextManager[tuple[int, Path]]:
    """`dd-assets ui` (= `dagster dev`: webserver and daemon), as a user starts it."""
    return serving([str(BIN / "dd-assets"), "ui", str(workflow)], env, cwd)


def running_dagster_dev(
    env: dict[str, str], cwd: Path
) -> contextlib.AbstractContextManager[tuple[int, Path]]:
    """Plain `dagster dev -w workspace.yaml` in a project folder, as a Dagster user starts it."""
    return serving(
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"], env, cwd
    )


def run_materialize(
    cfg: Path, env: dict[str, str], timeout: float = 180
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "dd-assets"), "materialize", str(cfg), "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def kill_after(
    cfg: Path, env: dict[str, str], root: Path, files: int, cwd: Path | None = None
) -> None:
    """Start `dd-assets materialize` (in `cwd`, default the current folder) and SIGKILL it once
    `files` row groups are on disk. Its stderr is kept (next to the config): a run that dies
    early must say why."""
    errlog = cfg.with_suffix(".killed.stderr")
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(
            [str(BIN / "dd-assets"), "materialize", str(cfg), "--no-progress"],
            env=env if cwd is None else {**env, "PWD": str(cwd)},
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while len(batch_files(root)) < files:
            assert proc.poll() is None, (
                f"materialize ended before the kill point:\n{errlog.read_text()[-4000:]}"
            )
            assert time.monotonic() < deadline, "no progress within 120 s"
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def flip_data_page_byte(path: Path, column: str) -> int:
    """Flip the last byte of a column's data (the payload of its last page), leaving the page
    headers and the footer intact, as a bad disk block would; returns the offset. Footer-only
    readers still see a good file."""
    meta = pq.ParquetFile(path).metadata
    rg = meta.row_group(0)
    chunk = next(
        rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema == column
    )
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    offset = start + chunk.total_compressed_size - 1
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    return offset


def stage_table(root: Path, stage: str = "people") -> pa.Table:
    files = {k: p for k, p in batch_files(root).items() if f"/{stage}/" in k}
    return pa.concat_tables(pq.read_table(files[k]) for k in sorted(files))


def sampler_rows(config: dict[str, Any], stage: str) -> list[dict[str, Any]]:
    """Every row of a stage as far as its sampler columns go, without an LLM call: what row i's
    prompts will contain (a sampler value depends on the column, not on the others)."""
    from dd_assets.config.loader import parse_workflow
    from dd_assets.engine import compile_stage, generate_rows

    wf = parse_workflow(config)
    st = wf.stage(stage)
    only = st.model_copy(update={"columns": [c for c in st.columns if c.column_type == "sampler"]})
    wf = wf.model_copy(update={"stages": [only if s.name == stage else s for s in wf.stages]})
    return generate_rows(compile_stage(wf, stage), 0, st.num_records).table.to_pylist()
