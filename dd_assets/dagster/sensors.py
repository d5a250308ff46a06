"""The workflow's sensor: keeps each stage's `materializations_current` check true to the store without
a run, so a config edit shows on the asset as soon as the code location reloads (Dagster alone
marks only each partition of a partitioned asset stale, never the asset).

Read-only and cheap: per stage and tick, one look at the latest materialization and a directory
listing; the check is re-evaluated only when one of them (or the fingerprint) changed, and
reported only when its result did. It starts running with `dd-assets ui` / `dagster dev`.

No `from __future__ import annotations`: Dagster reads the context annotation at runtime."""

import json

import dagster as dg

from dd_assets.dagster.asset_checks import current_evaluation
from dd_assets.dagster.names import asset_key, current_sensor_name
from dd_assets.dagster.resources import StoreResource
from dd_assets.runners.plan import StagePlan, WorkflowPlan
from dd_assets.store import files
from dd_assets.store.partition_store import PartitionStore

TICK_SECONDS = 15


def _state(plan: StagePlan, store: PartitionStore, instance: dg.DagsterInstance) -> list[object]:
    """What the check's result depends on: the fingerprint, Dagster's latest materialization of
    the stage, and the files of the current fingerprint folder."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key(plan)), limit=1
    ).records
    files_now = files.signature(store.files_dir(plan.ref))
    return [plan.ref.fingerprint, records[0].storage_id if records else 0, files_now]


def current_sensor(plan: WorkflowPlan) -> dg.SensorDefinition:
    @dg.sensor(
        name=current_sensor_name(plan),
        minimum_interval_seconds=TICK_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Keeps the `materializations_current` check of workflow {plan.name!r}'s stages"
        " true to the store (a config edit turns it red until the stage is materialized again)."
        " Reports check results only; launches no run.",
    )
    def _sensor(context: dg.SensorEvaluationContext, dd_store: StoreResource) -> dg.SensorResult:
        store = dd_store.get_store()
        cursor = json.loads(context.cursor or "{}")
        events = []
        for p in plan.stages.values():
            name = asset_key(p).to_user_string()
            state = _state(p, store, context.instance)
            if cursor.get(name, {}).get("state") == state:
                continue
            evaluation = current_evaluation(p, store, context.instance)
            reported = [evaluation.passed, evaluation.description]
            if cursor.get(name, {}).get("reported") != reported:
                events.append(evaluation)
            cursor[name] = {"state": state, "reported": reported}
        return dg.SensorResult(asset_events=events, cursor=json.dumps(cursor, sort_keys=True))

    return _sensor
