"""Dagster definitions for one or more planned workflows: per workflow, a partitioned asset per
stage (stages chained row group by row group share one op), a `final` asset per stage with
finalize processors, the stages' asset checks and a job per wave; one store resource and one IO
manager for all of them (they live under one data root)."""

from __future__ import annotations

import dagster as dg

from dd_assets.dagster.asset_checks import stage_checks
from dd_assets.dagster.assets import final_asset, wave_asset
from dd_assets.dagster.io_manager import StageIOManager
from dd_assets.dagster.names import asset_key, checks_job_name, job_name
from dd_assets.dagster.resources import IO_MANAGER_KEY, STORE_KEY, StoreResource
from dd_assets.errors import ConfigError
from dd_assets.runners.plan import WorkflowPlan

# What the code location serves: a workflow YAML file or a folder of them.
CONFIG_ENV = "DD_ASSETS_CONFIG"


def workflow_definitions(plan: WorkflowPlan) -> dg.Definitions:
    """The assets, checks and jobs of one workflow (no resources: see build_definitions)."""
    stages = plan.stages
    wave_plans = [[stages[s] for s in wave] for wave in plan.waves]
    assets = [wave_asset(w, plan.workflow.run) for w in wave_plans]
    assets += [final_asset(p) for p in stages.values() if p.finalizes]
    jobs = [
        dg.define_asset_job(
            job_name(w),
            # Without the checks: they look at the whole stage, and a run covering a few row
            # groups would only fail completeness (`dd-assets check` / the checks job run them).
            selection=dg.AssetSelection.assets(*(asset_key(p) for p in w)).without_checks(),
            description=f"Materialize stage(s) {', '.join(p.name for p in w)} row group by row"
            " group.",
        )
        for w in wave_plans
    ]
    jobs.append(
        dg.define_asset_job(
            checks_job_name(plan),
            selection=dg.AssetSelection.checks_for_assets(*(asset_key(p) for p in stages.values())),
            description="Run every stage's asset checks over the whole stage (what"
            " `dd-assets check` runs).",
        )
    )
    return dg.Definitions(
        assets=assets, asset_checks=[stage_checks(p) for p in stages.values()], jobs=jobs
    )


def build_definitions(plans: list[WorkflowPlan], *, root: str) -> dg.Definitions:
    """Every workflow in one code location, each its own asset group, sharing the resources."""
    names = [p.name for p in plans]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(
            f"workflow name(s) {', '.join(map(repr, dupes))} used by more than one config in one"
            " code location; give each workflow its own `name:`"
        )
    return dg.Definitions.merge(
        *(workflow_definitions(p) for p in plans),
        dg.Definitions(
            resources={
                STORE_KEY: StoreResource(root=root),
                IO_MANAGER_KEY: StageIOManager(root=root),
            }
        ),
    )
