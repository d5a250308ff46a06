"""One truth in a project folder: `dd-assets` and a plain `dagster dev -w workspace.yaml`, started
in the same folder (with the repository's .env and workspace.yaml), use one instance, even with
another DAGSTER_HOME exported; a CLI run killed with -9 is marked failed by the next command that
opens the instance (not by `status`, which reads the store only), and
the UI re-executes it "from failure" (GraphQL, as the button does) to completion, reusing the row
groups the killed run had checkpointed."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest

from dd_assets import cli
from dd_assets.dagster.asset_checks import CURRENT_CHECK
from dd_assets.dagster.names import LOCATION_NAME, PID_TAG
from dd_assets.runners.checks import ROW_GROUP_CHECK
from dd_assets.testing.workflows import (
    REPO,
    batch_files,
    graphql,
    isolated_env,
    kill_after,
    people_config,
    running_dagster_dev,
    snapshot,
    write_config,
)

pytestmark = [pytest.mark.slow]

# 12 row groups per stage, the killed run's one range: the run killed after 6 of its 24 files,
# its re-execution making the other 18 (it made 54 of 60 with 30 per stage, for the same checks).
ROW_GROUPS = 12

RUNS = """{ runsOrError { ... on Runs { results { runId status jobName
  repositoryOrigin { repositoryLocationName repositoryName } } } } }"""
JOB = """query($s: PipelineSelector!) { pipelineOrError(params: $s) { __typename } }"""
REEXECUTE = """mutation($p: ReexecutionParams) { launchPipelineReexecution(reexecutionParams: $p) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""
RUN = """query($id: ID!) { runOrError(runId: $id) { ... on Run { status
  tags { key value } assetSelection { path } assetCheckSelection { name } } } }"""


def test_cli_and_dagster_dev_share_one_instance_and_the_ui_reexecutes_a_killed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in (".env", "workspace.yaml"):
        shutil.copy(REPO / name, project / name)
    cfg = write_config(
        project / "wf.yaml",
        people_config(
            num_records=ROW_GROUPS * 100,
            buffer_size=100,
            partitions_per_run=ROW_GROUPS,
            downstream=True,
        ),
    )
    exported = tmp_path / "exported_home"  # ./.env wins over it, for dd-assets as for Dagster
    env = isolated_env(tmp_path) | {"DAGSTER_HOME": str(exported), "DD_ASSETS_CONFIG": "wf.yaml"}
    del env["DD_ASSETS_ROOT"]  # ./dd-data of the project folder
    data = project / "dd-data"

    kill_after(cfg, env, data, 6, cwd=project)
    before = snapshot(data)
    home = project / ".dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    instance = dg.DagsterInstance.get()

    def dd_assets(*args: str) -> str:
        """A command in this process (cli.main, what `dd-assets` runs), in the project folder
        with the same environment as the killed run's process; returns its stderr."""
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(project)
            for k in ("DAGSTER_HOME", "DD_ASSETS_CONFIG"):
                mp.setenv(k, env[k])
            mp.delenv("DD_ASSETS_ROOT", raising=False)
            capsys.readouterr()
            cli.main(list(args))
            err = capsys.readouterr().err
        assert "Traceback" not in err, err
        return err

    # `status` reads the store only: the killed run is still "Started" (nothing ended it) ...
    dd_assets("status", "wf.yaml")
    (killed,) = instance.get_runs()
    assert killed.status == dg.DagsterRunStatus.STARTED
    # ... until the next command that opens the instance marks it failed, saying why.
    checked = dd_assets("check", "wf.yaml")
    assert "replaces the exported DAGSTER_HOME" in checked
    assert (home / "dagster.yaml").is_file() and not exported.exists()
    killed, check_run = sorted(instance.get_runs(), key=lambda r: r.job_name, reverse=True)
    assert (killed.job_name, killed.status) == ("wf__people__job", dg.DagsterRunStatus.FAILURE)
    assert check_run.job_name == "wf__checks_job"
    (failure,) = instance.all_logs(killed.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert f"dd-assets process {killed.tags[PID_TAG]}" in (failure.message or "")

    with running_dagster_dev(env, project) as (port, log):
        # The webserver reads the CLI's instance: it lists the CLI's runs, from its location.
        runs = {r["runId"]: r for r in graphql(port, RUNS)["runsOrError"]["results"]}
        assert set(runs) == {killed.run_id, check_run.run_id}, log.read_text()[-3000:]
        for r in runs.values():
            assert r["repositoryOrigin"] == {
                "repositoryLocationName": LOCATION_NAME,
                "repositoryName": "__repository__",
            }
        selector = {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": "__repository__",
            "pipelineName": killed.job_name,
        }
        assert graphql(port, JOB, {"s": selector})["pipelineOrError"]["__typename"] == "Pipeline"

        launched = graphql(
            port, REEXECUTE, {"p": {"parentRunId": killed.run_id, "strategy": "FROM_FAILURE"}}
        )["launchPipelineReexecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        child = launched["run"]["runId"]
        deadline = time.monotonic() + 300
        while (run := graphql(port, RUN, {"id": child})["runOrError"])["status"] not in (
            "SUCCESS",
            "FAILURE",
            "CANCELED",
        ):
            assert time.monotonic() < deadline, f"re-execution still {run['status']} after 300 s"
            time.sleep(1)
        assert run["status"] == "SUCCESS", log.read_text()[-3000:]
        tags = {t["key"]: t["value"] for t in run["tags"]}
        assert tags["dagster/parent_run_id"] == killed.run_id
        assert (
            tags["dagster/asset_partition_range_start"],
            tags["dagster/asset_partition_range_end"],
        ) == ("00000", f"{ROW_GROUPS - 1:05d}")
        assert sorted(a["path"][1] for a in run["assetSelection"]) == ["notes", "people"]
        # Like its parent: the stage job's per-row-group checks, not the whole-stage ones.
        assert sorted(c["name"] for c in run["assetCheckSelection"]) == sorted(
            [CURRENT_CHECK, ROW_GROUP_CHECK] * 2
        )

    after = snapshot(data)
    assert len(batch_files(data)) == 2 * ROW_GROUPS
    assert {k: after[k] for k in before} == before, "the re-execution regenerated a row group"
    assert len(instance.get_materialized_partitions(dg.AssetKey(["wf", "people"]))) == ROW_GROUPS
