"""The kill -9 + resume scenario of test_crash_resume.py, on a Dagster instance stored in PostgreSQL.

The test starts its own PostgreSQL server (initdb into a temp folder, 127.0.0.1 on a free port,
password auth over TCP) and points a temp DAGSTER_HOME's dagster.yaml at it with the `storage:
postgres:` block of docs/scaling.md, password read from the environment. Then a real
`dd-assets materialize` process is killed mid-run and run again, and the runs and per-partition
materializations are read back from PostgreSQL.

The PostgreSQL server binaries (initdb, postgres) must be installed: `apt-get install
postgresql` on Debian/Ubuntu. Without them the test fails, saying so; set
DD_ASSETS_SKIP_POSTGRES=1 to skip it deliberately (the `postgres` fixture, tests/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path

import dagster as dg
import pytest

from dd_assets.testing.postgres import PgServer
from dd_assets.testing.workflows import (
    REPO,
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

ASSET = dg.AssetKey(["wf", "people"])
ROW_GROUPS = NUM_RECORDS // BUFFER  # 20
PER_RUN = 6  # a backfill's runs; `dd-assets materialize` runs a wave in one run regardless


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
    env.update(postgres.template_env())
    for k in ("DAGSTER_HOME", *postgres.template_env()):
        monkeypatch.setenv(k, env[k])

    kill_at = random.Random(os.getpid()).choice(range(1, ROW_GROUPS - 4))
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
        # One run for the wave (not one per partitions_per_run: no drain of the request budget
        # between runs), over every row group: the reused ones are reported, not regenerated.
        assert len(resumed) == 1
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in resumed)
        ranges = [
            (
                r.tags["dagster/asset_partition_range_start"],
                r.tags["dagster/asset_partition_range_end"],
            )
            for r in resumed
        ]
        assert ranges == [("00000", f"{ROW_GROUPS - 1:05d}")]

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
        contextlib.closing(postgres.connect()) as conn,
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
