"""The runs dd-assets commands record on the instance: runs of the code location's own jobs (so
the UI shows their job and can re-execute them), never left "Started" when their process dies,
and a new instance that six commands starting at once all survive."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.dagster.build import build_definitions
from dd_assets.dagster.dead_runs import process_tags, sweep_dead_runs
from dd_assets.dagster.instance import get_instance
from dd_assets.dagster.names import HOST_TAG, LOCATION_NAME, PID_START_TAG, PID_TAG
from dd_assets.runners.plan import plan_workflow
from dd_assets.testing.workflows import (
    BIN,
    batch_files,
    default_signals,
    isolated_env,
    people_config,
    write_config,
)

pytestmark = [pytest.mark.slow]


def _chain() -> dict:
    """people (finalized) -> notes (row group by row group), and picked sampling people_final."""
    # partitions_per_run sizes a backfill's runs; `materialize` runs a wave in one run anyway.
    cfg = people_config(num_records=400, buffer_size=100, downstream=True, partitions_per_run=2)
    cfg["stages"][0]["finalize"] = [{"processor_type": "filter", "expr": "{{ city != 'Oslo' }}"}]
    cfg["stages"].append(
        {
            "name": "picked",
            "num_records": 60,
            "buffer_size": 30,
            "seed": {"stage": "people", "mode": "sample"},
            "columns": [{"name": "tag", "column_type": "expression", "expr": "{{ city }}"}],
        }
    )
    return cfg


def _runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return list(reversed(instance.get_runs()))  # oldest first


def test_cli_runs_are_runs_of_the_code_locations_jobs(data_root: Path, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _chain())
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    assert cli.main(["materialize", str(cfg), "--no-progress", "--stage", "notes"]) == 0
    assert cli.main(["check", str(cfg), "--stage", "picked"]) == 0

    defs = build_definitions([plan_workflow(load_workflow(cfg))], root=str(data_root))
    jobs = {j.name for j in defs.resolve_all_job_defs()}
    runs = _runs(dg.DagsterInstance.get())
    seen = [(r.job_name, sorted(k.to_user_string() for k in r.asset_selection or ())) for r in runs]
    assert seen == [
        ("wf__people__job", ["wf/notes", "wf/people"]),  # row groups 0-3: one run, not 2 x 2
        ("wf__people_final__job", ["wf/people_final"]),
        ("wf__picked__job", ["wf/picked"]),
        ("wf__people__job", ["wf/notes"]),  # --stage notes: a subset of the wave's job
        ("wf__checks_job", []),
    ]
    checks = runs[-1].asset_check_selection or set()
    assert checks and {c.asset_key for c in checks} == {dg.AssetKey(["wf", "picked"])}
    for run in runs:
        assert run.job_name in jobs and not run.job_name.startswith("dd_assets_cli")
        assert run.status == dg.DagsterRunStatus.SUCCESS
        origin = run.remote_job_origin
        assert origin is not None and origin.location_name == LOCATION_NAME
        assert origin.repository_origin.repository_name == "__repository__"
        assert run.tags[PID_TAG] == str(os.getpid()) and run.tags[HOST_TAG]
        assert PID_START_TAG in run.tags
    assert runs[0].tags["dagster/asset_partition_range_start"] == "00000"
    assert runs[0].tags["dagster/asset_partition_range_end"] == "00003"


def test_the_sweep_marks_only_unfinished_runs_of_dead_dd_assets_processes_of_this_host(
    data_root: Path,
) -> None:
    instance = get_instance()
    dead = _exited_pid()
    me = process_tags()
    parent = create_run_for_test(instance, job_name="wf__people__job", tags=me).run_id
    cases = {
        "dead": ({**me, PID_TAG: str(dead)}, None, True),
        "pid reused": ({**me, PID_START_TAG: "1"}, None, True),
        "alive": (me, None, False),
        "other host": ({**me, HOST_TAG: "elsewhere", PID_TAG: str(dead)}, None, False),
        # A re-execution from the UI copies its parent's tags but runs in a daemon's worker.
        "re-execution": ({**me, PID_TAG: str(dead)}, parent, False),
    }
    runs = {
        name: create_run_for_test(
            instance,
            job_name="wf__people__job",
            status=dg.DagsterRunStatus.STARTED,
            tags=tags,
            parent_run_id=parent,
            root_run_id=parent,
        )
        for name, (tags, parent, _) in cases.items()
    }
    swept = sweep_dead_runs(instance)
    assert sorted(swept) == sorted(runs[n].run_id for n, (*_, dies) in cases.items() if dies)
    for name, (*_, dies) in cases.items():
        status = instance.get_run_by_id(runs[name].run_id).status  # type: ignore[union-attr]
        assert status == (dg.DagsterRunStatus.FAILURE if dies else dg.DagsterRunStatus.STARTED)
    assert sweep_dead_runs(instance) == []


def _exited_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_an_interrupted_run_is_ended_by_dagster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (a supervisor, `docker stop`): Dagster ends the run. Ctrl-C takes the same path
    inside Dagster (one handler for both), so one signal is tested."""
    cfg = write_config(
        tmp_path / "wf.yaml",
        people_config(num_records=6000, buffer_size=300, partitions_per_run=20),
    )
    env = isolated_env(tmp_path, cfg)
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    proc = subprocess.Popen(
        [str(BIN / "dd-assets"), "materialize", str(cfg), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=default_signals,
    )
    deadline = time.monotonic() + 120
    while len(batch_files(tmp_path / "dd-data")) < 2:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "no row group within 120 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert len(batch_files(tmp_path / "dd-data")) < 20, "the signal came too late to test"
    (run,) = dg.DagsterInstance.get().get_runs()
    # Dagster's own answer to an interrupt inside a run: failed, and why.
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags.get("dagster/failure_reason") == "UNEXPECTED_TERMINATION"


def test_six_commands_at_once_on_a_fresh_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Creating a SQLite instance is not safe across processes (tables created and schema
    versions stamped by each); the instance lock makes the first use of a fresh home safe."""
    home = tmp_path / "fresh_home"  # does not exist yet: the first command creates it
    env = isolated_env(tmp_path) | {"DAGSTER_HOME": str(home)}
    procs = []
    for i in range(6):
        cfg = write_config(
            tmp_path / f"wf{i}.yaml", people_config(name=f"wf{i}", num_records=100, buffer_size=100)
        )
        procs.append(
            subprocess.Popen(
                [str(BIN / "dd-assets"), "materialize", str(cfg), "--no-progress"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    runs = dg.DagsterInstance.get().get_runs()
    assert len(runs) == 6 and {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
