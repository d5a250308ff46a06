"""How the CLI runs Dagster: in-process runs on the real instance (DAGSTER_HOME), so everything
`dd-assets materialize` and `dd-assets check` do shows in the UI as ordinary runs."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

DEFAULT_DAGSTER_HOME = ".dagster_home"

# The CLI prints its own progress and results; Dagster's per-event debug lines would bury them.
# Everything is still in the instance's event log (and the UI).
QUIET_LOGGERS = {"console": {"config": {"log_level": "WARNING"}}}


def ensure_dagster_home() -> str:
    home = Path(os.environ.get("DAGSTER_HOME") or DEFAULT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    # An empty dagster.yaml means "all defaults" (SQLite under DAGSTER_HOME); without one, every
    # Dagster process warns about it.
    (home / "dagster.yaml").touch(exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    return str(home)


@dataclass(frozen=True)
class CliJob:
    """A one-off asset job over the code location's definitions, resolved once and run as often
    as needed (one run per chunk of partitions)."""

    job: dg.JobDefinition
    instance: dg.DagsterInstance

    @classmethod
    def build(
        cls,
        defs: dg.Definitions,
        name: str,
        selection: dg.AssetSelection,
        instance: dg.DagsterInstance,
    ) -> CliJob:
        job = dg.define_asset_job(f"dd_assets_cli__{name}", selection=selection)
        resolved = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def(job.name)
        return cls(resolved, instance)

    def run(
        self, *, ops: dict[str, Any] | None = None, tags: dict[str, str] | None = None
    ) -> dg.ExecuteInProcessResult:
        run_config: dict[str, Any] = {"loggers": QUIET_LOGGERS}
        if ops:
            run_config["ops"] = ops
        return self.job.execute_in_process(
            instance=self.instance, run_config=run_config, tags=tags, raise_on_error=False
        )


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    """The first failed step and its error, unwrapped from Dagster's own wrapper."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            err = event.step_failure_data.error
            while err.cause is not None and err.cls_name in ("DagsterExecutionStepExecutionError",):
                err = err.cause
            return f"{event.step_key}: {err.cls_name}: {err.message.strip()}"
    return f"run {result.run_id} failed"
