"""How dd-assets runs Dagster from a command: in-process runs on the real instance
(DAGSTER_HOME), so everything `dd-assets materialize` and `dd-assets check` do shows in the UI as
ordinary runs. A failed step re-raises the user's own exception (a `DdAssetsError` for any
problem written for users), so the CLI prints its message and exit code, never a class name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy.exc

from dd_assets.dagster.instance import storage_error

# The CLI prints its own progress and results; Dagster's per-event lines (and a failed step's
# stack) would bury them. Everything is still in the instance's event log (and the UI).
QUIET_LOGGERS = {"console": {"config": {"log_level": "CRITICAL"}}}


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
        """Run once; a failed step raises its exception (the run is recorded as failed)."""
        run_config: dict[str, Any] = {"loggers": QUIET_LOGGERS}
        if ops:
            run_config["ops"] = ops
        try:
            return self.job.execute_in_process(
                instance=self.instance, run_config=run_config, tags=tags, raise_on_error=True
            )
        except sqlalchemy.exc.DBAPIError as exc:
            raise storage_error(exc) from exc  # a locked or read-only instance database
        except dg.DagsterExecutionInterruptedError as exc:
            # Ctrl-C / SIGTERM inside the step (Dagster turns both into this): the Python way
            # to say so, for the CLI to answer with one line and 130 / 143.
            raise KeyboardInterrupt from exc
