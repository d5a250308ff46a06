"""Every name dd-assets gives Dagster: the code location, asset keys, op, output, job, check and
tag names. One home, so the code location, the CLI's runs and the tests can never disagree."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import dagster as dg

from dd_assets.config.workflow import final_output_name
from dd_assets.runners.plan import StagePlan, WorkflowPlan
from dd_assets.store.layout import partition_key

# The code location's name, pinned in workspace.yaml and in the workspace `dd-assets ui` starts:
# a CLI run records it as its origin, so the UI finds the run's job ("View job", re-execute).
LOCATION_NAME = "dd-assets"
CODE_LOCATION_MODULE = "dd_assets.dagster.definitions"
CODE_LOCATION_ATTRIBUTE = "defs"
# What the code location serves: a workflow YAML file or a folder of them.
CONFIG_ENV = "DD_ASSETS_CONFIG"

# Tags of every run a dd-assets command starts: which process runs it, so the next command can
# tell a run whose process was killed (left "Started" forever) from one still going.
HOST_TAG = "dd-assets/host"
PID_TAG = "dd-assets/pid"
PID_START_TAG = "dd-assets/pid-start"  # the process's start time: a reused pid is not the same run


def asset_key(plan: StagePlan) -> dg.AssetKey:
    return dg.AssetKey([plan.workflow.name, plan.name])


def final_key(plan: StagePlan) -> dg.AssetKey:
    """`[workflow, <stage>_final]`: recognisable in the lineage graph and the catalog, where only
    the last part of a key is shown."""
    return dg.AssetKey([plan.workflow.name, final_output_name(plan.name)])


def output_name(plan: StagePlan) -> str:
    return plan.name


def op_name(wave: Sequence[StagePlan]) -> str:
    """`<workflow>__<first stage>`: the key of the launchpad's run config (`ops:`)."""
    return "__".join(asset_key(wave[0]).path)


def final_op_name(plan: StagePlan) -> str:
    return "__".join(final_key(plan).path)


def job_name(wave: Sequence[StagePlan]) -> str:
    # Not "<workflow>__<stage>": that is the op name of the wave's asset, and Dagster wants them
    # distinct.
    return f"{op_name(wave)}__job"


def final_job_name(plan: StagePlan) -> str:
    return f"{final_op_name(plan)}__job"


def checks_name(plan: StagePlan) -> str:
    return "__".join([*asset_key(plan).path, "checks"])


def checks_job_name(plan: WorkflowPlan) -> str:
    return f"{plan.name}__checks_job"


def partition_keys(plan: StagePlan) -> list[str]:
    return [partition_key(rg) for rg in range(plan.ref.num_row_groups)]


def partitions_def(plan: StagePlan) -> dg.StaticPartitionsDefinition:
    """A stage's partitions (one per row group), built once per size: Dagster validates every key
    when the definition is made (~0.1 s at 100,000 row groups)."""
    return _partitions_def(plan.ref.num_row_groups)


@functools.lru_cache(maxsize=64)
def _partitions_def(num_row_groups: int) -> dg.StaticPartitionsDefinition:
    return dg.StaticPartitionsDefinition([partition_key(rg) for rg in range(num_row_groups)])


class RowGroupPartitions(dg.StaticPartitionsDefinition):
    """The same partitions, for reading Dagster's partition status cache on every run: the
    answers Dagster computes there over every key (a sha1 of all keys as JSON, a set of all keys)
    are computed once, so a run's cost does not grow with the stage's size. Not used in the asset
    definitions: serialized subsets carry their definition's class name."""

    def __init__(self, keys: list[str]) -> None:
        super().__init__(keys)
        self._key_set = frozenset(keys)
        self._identifier = super().get_serializable_unique_identifier()

    def get_serializable_unique_identifier(self) -> str:
        return self._identifier

    def filter_valid_partition_keys(self, partition_keys: set[str]) -> frozenset[str]:
        return self._key_set & partition_keys

    def has_partition_key(self, partition_key: str) -> bool:
        return partition_key in self._key_set


@functools.lru_cache(maxsize=64)
def status_partitions(num_row_groups: int) -> RowGroupPartitions:
    """RowGroupPartitions of a stage's size, built once."""
    return RowGroupPartitions([partition_key(rg) for rg in range(num_row_groups)])


def current_sensor_name(plan: WorkflowPlan) -> str:
    return f"{plan.name}__materializations_current"
