"""A dd-assets workflow as a Dagster component: in a `dg` project, a folder under `defs/` whose
`defs.yaml` reads

    type: dd_assets.dagster.component.Workflow
    attributes:
      config: reviews.yaml        # the workflow YAML, relative to this defs.yaml

serves that workflow (its assets, checks and jobs, as `build_definitions` makes them), so
`dg dev`, or `dagster dev` on `dg.load_from_defs_folder(...)`, serves a folder of workflows. It
needs nothing beyond `dagster` itself (dagster-dg-cli only adds the `dg` commands). Every
workflow's store and IO manager are the same objects (one data root: DD_ASSETS_ROOT), which is
what lets Dagster merge the components into one code location. See docs/dagster.md."""

from __future__ import annotations

import dagster as dg

from dd_assets.config import load_workflow
from dd_assets.dagster.build import build_definitions
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.layout import default_root


class Workflow(dg.Component, dg.Model, dg.Resolvable):
    """One workflow YAML file: its stages as assets, their checks, and the jobs the CLI runs."""

    config: str

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        path = (context.path / self.config).resolve()
        return build_definitions([plan_workflow(load_workflow(path))], root=default_root())
