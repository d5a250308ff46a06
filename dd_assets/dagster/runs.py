"""How dd-assets runs Dagster from a command: in-process runs of the code location's own jobs (the
wave, final and checks jobs of dagster/build.py) on the real instance (DAGSTER_HOME). Each run is
recorded as coming from the code location `LOCATION_NAME`, as a run launched from the UI would
be, so the UI shows its job and can re-execute it ("Re-execute all", "From failure"). A failed
step re-raises the user's own exception (a `DdAssetsError` for any problem written for users),
so the CLI prints its message and exit code, never a class name.

Every run is tagged with the process that runs it (dead_runs.process_tags), so that the next
command can mark it failed if that process is killed. A run interrupted by SIGINT or SIGTERM is
ended by Dagster itself (FAILURE, `dagster/failure_reason: UNEXPECTED_TERMINATION`)."""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Mapping
from typing import Any

import dagster as dg
import sqlalchemy.exc
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.definitions.repository_definition import SINGLETON_REPOSITORY_NAME
from dagster._core.execution.api import create_execution_plan, execute_run
from dagster._core.remote_origin import (
    ManagedGrpcPythonEnvCodeLocationOrigin,
    RemoteJobOrigin,
    RemoteRepositoryOrigin,
)
from dagster._core.snap import snapshot_from_execution_plan
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from dd_assets.dagster.dead_runs import process_tags
from dd_assets.dagster.instance import storage_error
from dd_assets.dagster.names import CODE_LOCATION_ATTRIBUTE, CODE_LOCATION_MODULE, LOCATION_NAME

# The CLI prints its own progress and results; Dagster's per-event lines (and a failed step's
# stack) would bury them. Everything is still in the instance's event log (and the UI).
QUIET_LOGGERS = {"console": {"config": {"log_level": "CRITICAL"}}}


def _origin(job_name: str) -> RemoteJobOrigin:
    """Where the UI looks for a run's job: the code location named LOCATION_NAME. Only the
    location, repository and job names are used to find it (and to re-execute)."""
    target = LoadableTargetOrigin(
        executable_path=sys.executable,
        module_name=CODE_LOCATION_MODULE,
        attribute=CODE_LOCATION_ATTRIBUTE,
        working_directory=os.getcwd(),
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, location_name=LOCATION_NAME)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, SINGLETON_REPOSITORY_NAME), job_name)


def run_job(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    *,
    assets: Collection[dg.AssetKey] | None = None,
    checks: Collection[dg.AssetCheckKey] | None = None,
    ops: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.ExecutionResult:
    """Run a code-location job once, in this process: exactly the given assets and checks (the
    whole job when neither is given); a failed step raises its exception (the run is recorded as
    failed)."""
    run_config: dict[str, Any] = {"loggers": QUIET_LOGGERS}
    if ops:
        run_config["ops"] = dict(ops)
    run_tags = {**job.run_tags, **(tags or {}), **process_tags()}
    asset_selection = check_selection = None
    if assets is not None or checks is not None:
        # Explicitly empty, not None: Dagster reads a None check selection of an asset subset
        # as "the selected assets' checks", which a stage job leaves out on purpose.
        asset_selection, check_selection = frozenset(assets or ()), frozenset(checks or ())
    subset = InMemoryJob(job).get_subset(
        asset_selection=asset_selection, asset_check_selection=check_selection
    )
    subset_def = subset.get_definition()
    plan = create_execution_plan(
        subset, run_config=run_config, instance_ref=instance.get_ref(), tags=run_tags
    )
    try:
        run = instance.create_run(
            job_name=job.name,
            run_id=None,
            run_config=run_config,
            status=None,
            tags=run_tags,
            root_run_id=None,
            parent_run_id=None,
            step_keys_to_execute=plan.step_keys_to_execute,
            execution_plan_snapshot=snapshot_from_execution_plan(
                plan, subset_def.get_job_snapshot_id()
            ),
            job_snapshot=subset_def.get_job_snapshot(),
            parent_job_snapshot=subset_def.get_parent_job_snapshot(),
            asset_selection=asset_selection,
            asset_check_selection=check_selection,
            resolved_op_selection=None,
            op_selection=None,
            remote_job_origin=_origin(job.name),
            job_code_origin=None,
            asset_graph=subset_def.asset_layer.asset_graph,
        )
        return execute_run(subset, run, instance, raise_on_error=True)
    except sqlalchemy.exc.DBAPIError as exc:
        raise storage_error(exc) from exc  # a locked or read-only instance database
    except dg.DagsterExecutionInterruptedError as exc:
        # Ctrl-C / SIGTERM inside the step (Dagster turns both into this, and has ended the run
        # as failed): the Python way to say so, for the CLI to answer with one line and 130 / 143.
        raise KeyboardInterrupt from exc
