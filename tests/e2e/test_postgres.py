"""The kill -9 + resume scenario of test_crash_resume.py, on a Dagster instance stored in PostgreSQL.

The test starts its own PostgreSQL server (initdb into a temp folder, 127.0.0.1 on a free port,
password auth over TCP) and points a temp DAGSTER_HOME's dagster.yaml at it with the `storage:
postgres:` block of docs/scaling.md, password read from the environment. Then a real
`dd-assets materialize` process is killed mid-run and run again, and the runs and per-partition
materializations are read back from PostgreSQL.

The PostgreSQL server binaries (initdb, postgres) must be installed: `apt-get install
postgresql` on Debian/Ubuntu. Without them the test fails, saying so; set
DD_ASSETS_SKIP_POSTGRES=1 to skip it deliberately."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from dd_assets.testing.workflows import (
    REPO,
    free_port,
    isolated_env,
    kill_after,
    people_config,
    run_materialize,
    snapshot,
    stage_table,
    temp_files,
    write_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

NUM_RECORDS = 6000
BUFFER = 300  # 20 row groups, ~0.1 s each: slow enough to land a kill between any two

PG_USER = "dagster"
PG_DB = "dagster_test"
ASSET = dg.AssetKey(["wf", "people"])
ROW_GROUPS = NUM_RECORDS // BUFFER  # 20
PER_RUN = 6  # runs of 6, 6, 6, 2 row groups


def _pg_bindir() -> Path | None:
    """Folder holding initdb and postgres of one PostgreSQL version: from PATH (the real file
    behind a symlink, so both come from the same version), else Debian's, newest version first."""
    candidates: list[Path] = []
    if os.environ.get("DD_ASSETS_PG_BINDIR"):
        candidates.append(Path(os.environ["DD_ASSETS_PG_BINDIR"]))
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).resolve().parent)
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    debian.sort(
        key=lambda p: [int(x) if x.isdigit() else 0 for x in Path(p).parent.name.split(".")]
    )
    candidates += [Path(p) for p in reversed(debian)]
    candidates += [Path("/usr/local/pgsql/bin"), Path("/usr/pgsql/bin")]
    for d in candidates:
        if (d / "initdb").is_file() and (d / "postgres").is_file():
            return d
    return None


@dataclass
class PgServer:
    port: int
    password: str
    log: Path


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[PgServer]:
    bindir = _pg_bindir()
    if bindir is None:
        if os.environ.get("DD_ASSETS_SKIP_POSTGRES") == "1":
            pytest.skip("DD_ASSETS_SKIP_POSTGRES=1: PostgreSQL test skipped on request")
        pytest.fail(
            "PostgreSQL server binaries (initdb, postgres) not found on PATH, in"
            " /usr/lib/postgresql/*/bin or in $DD_ASSETS_PG_BINDIR. Install them with"
            " `sudo apt-get install -y postgresql` (Debian/Ubuntu), or set"
            " DD_ASSETS_SKIP_POSTGRES=1 to skip this test deliberately.",
            pytrace=False,
        )

    # initdb and postgres refuse to run as root: then they run as an unprivileged user (the
    # `postgres` account the Debian package creates, else `nobody`) in a folder it owns.
    # pytest's tmp_path sits under a root-only folder, so that folder comes from tempfile.
    run_as: dict[str, object] = {}
    if os.geteuid() == 0:
        name = "postgres" if _has_user("postgres") else "nobody"
        pw = pwd.getpwnam(name)
        run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        base = Path(tempfile.mkdtemp(prefix="dd-assets-pg-"))
        os.chown(base, pw.pw_uid, pw.pw_gid)
    else:
        base = tmp_path / "pg"
        base.mkdir()
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    password = f"pw-{random.getrandbits(64):x}"
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if run_as:
        os.chown(pwfile, run_as["user"], run_as["group"])  # type: ignore[arg-type]
    proc: subprocess.Popen[bytes] | None = None
    try:
        init = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                f"--pwfile={pwfile}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=base,
            **run_as,  # type: ignore[arg-type]
        )
        assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"
        sockets.mkdir()
        if run_as:
            os.chown(sockets, run_as["user"], run_as["group"])  # type: ignore[arg-type]
        port = free_port()
        with open(log, "wb") as logf:
            proc = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D",
                    str(data),
                    "-p",
                    str(port),
                    "-k",
                    str(sockets),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=base,
                **run_as,  # type: ignore[arg-type]
            )
        _wait_ready(proc, port, password, log)
        conn = _connect(port, password, "postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {PG_DB}")
        conn.close()
        yield PgServer(port=port, password=password, log=log)
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: ends sessions, no recovery needed
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _connect(port: int, password: str, db: str = PG_DB):
    return psycopg2.connect(
        host="127.0.0.1", port=port, user=PG_USER, password=password, dbname=db, connect_timeout=5
    )


def _wait_ready(proc: subprocess.Popen[bytes], port: int, password: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            pytest.fail(f"postgres exited with {proc.returncode}:\n{log.read_text()}")
        try:
            _connect(port, password, "postgres").close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                pytest.fail(f"postgres not accepting connections after 30 s:\n{log.read_text()}")
            time.sleep(0.1)


def _template_env(port: int, password: str) -> dict[str, str]:
    """What resources/dagster/postgres.yaml reads from the environment."""
    return {
        "DAGSTER_PG_USER": PG_USER,
        "DAGSTER_PG_PASSWORD": password,
        "DAGSTER_PG_HOST": "127.0.0.1",
        "DAGSTER_PG_DB": PG_DB,
        "DAGSTER_PG_PORT": str(port),
    }


def test_kill9_then_resume_on_postgres_instance(
    tmp_path: Path, postgres: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = write_config(
        tmp_path / "wf.yaml",
        people_config(num_records=NUM_RECORDS, buffer_size=BUFFER, partitions_per_run=PER_RUN),
    )
    root = tmp_path / "dd-data"
    env = isolated_env(tmp_path, cfg)
    home = Path(env["DAGSTER_HOME"])
    # The template operators copy (resources/dagster/postgres.yaml), as shipped.
    shutil.copy(REPO / "resources" / "dagster" / "postgres.yaml", home / "dagster.yaml")
    assert postgres.password not in (home / "dagster.yaml").read_text()
    env.update(_template_env(postgres.port, postgres.password))
    for k in ("DAGSTER_HOME", *_template_env(0, "").keys()):
        monkeypatch.setenv(k, env[k])

    # Kill inside a run, not at a boundary between two runs (every PER_RUN-th file).
    kill_at = random.Random(os.getpid()).choice(
        [n for n in range(1, ROW_GROUPS - 4) if n % PER_RUN]
    )
    kill_after(cfg, env, root, kill_at)
    before = snapshot(root)
    assert kill_at <= len(before) < ROW_GROUPS

    with dg.DagsterInstance.get() as instance:
        # The instance the CLI used is the PostgreSQL one, not a SQLite fallback.
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        killed_runs = instance.get_runs()
        assert killed_runs, "the killed materialize recorded no run in PostgreSQL"
        # The run that was killed mid-way never reported an end: Dagster still has it STARTED.
        assert any(r.status == dg.DagsterRunStatus.STARTED for r in killed_runs), [
            r.status for r in killed_runs
        ]

    out = run_materialize(cfg, env)
    assert out.returncode == 0, out.stderr
    after = snapshot(root)
    assert len(after) == ROW_GROUPS
    assert {k: after[k] for k in before} == before, "a row group on disk was regenerated"
    assert temp_files(root) == []
    table = stage_table(root)
    assert table.num_rows == NUM_RECORDS
    assert len(set(table.column("person_id").to_pylist())) == NUM_RECORDS

    with dg.DagsterInstance.get() as instance:
        killed_ids = {r.run_id for r in killed_runs}
        resumed = [r for r in instance.get_runs() if r.run_id not in killed_ids]
        assert len(resumed) == -(-ROW_GROUPS // PER_RUN)  # 4 runs: 6 + 6 + 6 + 2 row groups
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in resumed)
        ranges = sorted(
            (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
            )
            for r in resumed
        )
        assert ranges == [
            ("00000", "00005"),
            ("00006", "00011"),
            ("00012", "00017"),
            ("00018", "00019"),
        ]

        # Every partition is materialized in the event log, and the resumed runs recorded which
        # row groups they reused from the killed run and which they generated.
        assert instance.get_materialized_partitions(ASSET) == {
            f"{i:05d}" for i in range(ROW_GROUPS)
        }
        reused: dict[str, bool] = {}
        for run in resumed:
            for rec in instance.all_logs(
                run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            ):
                mat = rec.asset_materialization
                assert mat is not None and mat.asset_key == ASSET
                if mat.partition is not None:
                    reused[mat.partition] = mat.metadata["reused"].value
        on_disk_before = {Path(k).name[len("batch_") : -len(".parquet")] for k in before}
        assert reused == {f"{i:05d}": f"{i:05d}" in on_disk_before for i in range(ROW_GROUPS)}
        n_runs = len(instance.get_runs())

    # The same rows, seen straight in the PostgreSQL database.
    with (
        contextlib.closing(_connect(postgres.port, postgres.password)) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == n_runs == len(killed_runs) + len(resumed)
        cur.execute(
            "SELECT count(DISTINCT partition) FROM event_logs"
            " WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = %s",
            (ASSET.to_string(),),
        )
        assert cur.fetchone()[0] == ROW_GROUPS
