"""A throwaway PostgreSQL server for tests: initdb into a temp folder, listening on 127.0.0.1 on
a free port, password auth over TCP, one database created. Needs the server binaries (initdb,
postgres): `apt-get install postgresql` on Debian/Ubuntu, or $DD_ASSETS_PG_BINDIR."""

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
from typing import Any

from dd_assets.testing.workflows import free_port

PG_USER = "dagster"
PG_DB = "dagster_test"


class PostgresUnavailable(RuntimeError):
    """The server binaries are not installed."""


def pg_bindir() -> Path | None:
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
    user: str = PG_USER
    db: str = PG_DB

    def connect(self, db: str | None = None) -> Any:
        import psycopg2

        return psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db or self.db,
            connect_timeout=5,
        )

    @property
    def url(self) -> str:
        """libpq URL of the test database (with the password: for tests only)."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.db}"

    def template_env(self) -> dict[str, str]:
        """What resources/dagster/postgres.yaml (and queued-runs.yaml) read from the environment."""
        return {
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_DB": self.db,
            "DAGSTER_PG_PORT": str(self.port),
        }


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


@contextlib.contextmanager
def running_postgres(tmp_path: Path) -> Iterator[PgServer]:
    """Start a server, create PG_DB, yield it; stop it and remove its files afterwards."""
    bindir = pg_bindir()
    if bindir is None:
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, postgres) not found on PATH, in"
            " /usr/lib/postgresql/*/bin or in $DD_ASSETS_PG_BINDIR. Install them with"
            " `sudo apt-get install -y postgresql` (Debian/Ubuntu), or set"
            " DD_ASSETS_SKIP_POSTGRES=1 to skip the PostgreSQL tests deliberately."
        )
    # initdb and postgres refuse to run as root: then they run as an unprivileged user (the
    # `postgres` account the Debian package creates, else `nobody`) in a folder it owns.
    # pytest's tmp_path sits under a root-only folder, so that folder comes from tempfile.
    run_as: dict[str, Any] = {}
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
        os.chown(pwfile, run_as["user"], run_as["group"])
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
            **run_as,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        sockets.mkdir()
        if run_as:
            os.chown(sockets, run_as["user"], run_as["group"])
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
                    "-c",
                    "max_connections=200",
                ],
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=base,
                **run_as,
            )
        server = PgServer(port=port, password=password, log=log)
        _wait_ready(proc, server)
        conn = server.connect("postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {PG_DB}")
        conn.close()
        yield server
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # "fast" shutdown: ends sessions, no recovery needed
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)


def _wait_ready(proc: subprocess.Popen[bytes], server: PgServer) -> None:
    import psycopg2

    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"postgres exited with {proc.returncode}:\n{server.log.read_text()}")
        try:
            server.connect("postgres").close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"postgres not accepting connections after 30 s:\n{server.log.read_text()}"
                ) from None
            time.sleep(0.1)
