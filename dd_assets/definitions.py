"""Dagster code location: `defs` built from the workflow named by DD_ASSETS_CONFIG
(default: examples/quickstart.yaml). workspace.yaml points here."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from dd_assets.asset_checks import checks_job_name, stage_checks
from dd_assets.assets import IO_MANAGER_KEY, final_asset, wave_asset
from dd_assets.config import WorkflowConfig, load_workflow, pairs_row_groups, seed_upstreams
from dd_assets.stage_runner import StagePlan, plan_workflow
from resources.io_manager import StageIOManager
from resources.store_resource import StoreResource, default_root

CONFIG_ENV = "DD_ASSETS_CONFIG"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"


def waves(workflow: WorkflowConfig) -> list[list[str]]:
    """Groups of stages that share partitions and can run together, upstream groups first.

    A `mode: row_group` stage joins its upstream's group (row group i of both in one run), and so
    does a join whose stages are all in one group; a stage that samples the whole upstream, or
    joins stages of different groups, starts a new group after them."""
    group_of: dict[str, int] = {}
    groups: list[list[str]] = []
    pending = list(workflow.stages)
    while pending:
        for stage in pending:
            ups = seed_upstreams(stage)
            if any(up not in group_of for up in ups):
                continue
            up_groups = {group_of[up] for up in ups}
            if pairs_row_groups(stage) and len(up_groups) == 1:
                gi = up_groups.pop()
                groups[gi].append(stage.name)
            else:
                gi = len(groups)
                groups.append([stage.name])
            group_of[stage.name] = gi
            pending.remove(stage)
            break
    return groups


def job_name(workflow: WorkflowConfig, wave: list[str]) -> str:
    # Not "<workflow>__<stage>": that is the op name of the wave's asset, and Dagster wants them
    # distinct.
    return f"{workflow.name}__{wave[0]}__job"


def build_definitions(workflow: WorkflowConfig, *, root: str | None = None) -> dg.Definitions:
    root = root or default_root()
    plans: dict[str, StagePlan] = plan_workflow(workflow)
    assets = [wave_asset([plans[s] for s in wave], workflow.run) for wave in waves(workflow)]
    assets += [final_asset(plans[s.name]) for s in workflow.stages if s.finalize]
    checks = [stage_checks(plans[s.name]) for s in workflow.stages]
    keys = [dg.AssetKey([workflow.name, s.name]) for s in workflow.stages]
    jobs = [
        dg.define_asset_job(
            job_name(workflow, wave),
            # Without the checks: they look at the whole stage, and a run covering a few row
            # groups would only fail completeness (`dd-assets check` / the checks job run them).
            selection=dg.AssetSelection.assets(
                *(dg.AssetKey([workflow.name, s]) for s in wave)
            ).without_checks(),
            description=f"Materialize stage(s) {', '.join(wave)} row group by row group.",
        )
        for wave in waves(workflow)
    ]
    jobs.append(
        dg.define_asset_job(
            checks_job_name(workflow),
            selection=dg.AssetSelection.checks_for_assets(*keys),
            description="Run every stage's asset checks over the whole stage (what"
            " `dd-assets check` runs).",
        )
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=checks,
        jobs=jobs,
        resources={"dd_store": StoreResource(root=root), IO_MANAGER_KEY: StageIOManager(root=root)},
    )


def _load() -> dg.Definitions:
    return build_definitions(load_workflow(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG))


defs = _load()
