"""The Dagster code location (workspace.yaml; `dd-assets ui` starts `dagster dev` on it): every
workflow named by DD_ASSETS_CONFIG, a workflow YAML file or a folder of them, each workflow its
own asset group. A leaf: nothing in dd-assets imports it, and the config is read only when
Dagster loads the definitions (`@dg.definitions`), never at import."""

from __future__ import annotations

import os

import dagster as dg

from dd_assets.config import load_workflows
from dd_assets.dagster.build import build_definitions
from dd_assets.dagster.names import CONFIG_ENV
from dd_assets.errors import ConfigError
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.layout import default_root


@dg.definitions
def defs() -> dg.Definitions:
    target = os.environ.get(CONFIG_ENV)
    if not target:
        raise ConfigError(
            f"{CONFIG_ENV} is not set: set it to a workflow YAML file or a folder of them"
            " (`dd-assets ui CONFIG` sets it for you)"
        )
    plans = [plan_workflow(wf) for wf in load_workflows(target)]
    return build_definitions(plans, root=default_root())
