"""The plan of a workflow: each stage compiled, fingerprinted and placed in the store, and the
stages grouped into waves. Computed once per command (seed files are hashed once) and handed to
everything that runs, shows or checks stages."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from dd_assets.config import FileSeed, WorkflowConfig, pairs_row_groups, seed_upstreams
from dd_assets.config.fingerprint import StageFingerprint, workflow_fingerprints
from dd_assets.config.loader import check_seed_file_columns
from dd_assets.config.processors import DropColumnsProcessorConfig
from dd_assets.engine.compiled import CompiledStage, compile_stage
from dd_assets.errors import unknown_stages
from dd_assets.store.layout import StageRef


@dataclass(frozen=True)
class StagePlan:
    """Everything about one stage that a run needs."""

    workflow: WorkflowConfig
    compiled: CompiledStage
    fingerprint: StageFingerprint
    ref: StageRef
    upstreams: tuple[StagePlan, ...]  # what the seed reads: none, one, or the stages of a join

    @property
    def name(self) -> str:
        return self.compiled.stage.name

    @property
    def pairs_row_groups(self) -> bool:
        return pairs_row_groups(self.compiled.stage)

    @property
    def finalizes(self) -> bool:
        return bool(self.compiled.stage.finalize)

    @property
    def keeps_dropped_columns(self) -> bool:
        """run.keep_dropped_columns is on and the stage drops columns (`drop: true` or a
        post_batch drop_columns): each row group then has a side table of them."""
        stage = self.compiled.stage
        drops = any(c.drop for c in stage.columns) or any(
            isinstance(p, DropColumnsProcessorConfig) for p in stage.post_batch
        )
        return self.workflow.run.keep_dropped_columns and drops


@dataclass(frozen=True)
class WorkflowPlan(Mapping[str, StagePlan]):
    """Stage name -> StagePlan, in config order, plus the waves."""

    workflow: WorkflowConfig
    stages: dict[str, StagePlan]
    waves: tuple[tuple[str, ...], ...]

    @property
    def name(self) -> str:
        return self.workflow.name

    def __getitem__(self, stage: str) -> StagePlan:
        try:
            return self.stages[stage]
        except KeyError:
            raise unknown_stages({stage}, list(self.stages), self.name) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.stages)

    def __len__(self) -> int:
        return len(self.stages)

    def select(self, names: list[str] | None) -> list[StagePlan]:
        """The named stages (all when None) in config order; unknown names are an error."""
        if names is None:
            return list(self.stages.values())
        unknown = set(names) - set(self.stages)
        if unknown:
            raise unknown_stages(unknown, list(self.stages), self.name)
        return [p for n, p in self.stages.items() if n in names]

    def wave_of(self, stage: str) -> tuple[str, ...]:
        return next(w for w in self.waves if stage in w)

    def descendants(self, stage: str) -> list[str]:
        """Every stage below `stage` (seeded from it, directly or not), in config order."""
        self[stage]  # unknown names are an error
        below = {stage}
        grew = True
        while grew:  # config order need not put upstreams first
            more = {n for n, p in self.stages.items() if any(u.name in below for u in p.upstreams)}
            grew = not more <= below
            below |= more
        return [n for n in self.stages if n in below and n != stage]


def waves(workflow: WorkflowConfig) -> tuple[tuple[str, ...], ...]:
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
    return tuple(tuple(g) for g in groups)


def plan_workflow(workflow: WorkflowConfig) -> WorkflowPlan:
    """Plan a loaded workflow; seed files are hashed and their columns checked against the
    config here (every command plans first, so `validate` catches what they reveal)."""
    file_seeded = [s for s in workflow.stages if isinstance(s.seed, FileSeed)]
    digests: dict[str, str] = {}
    if file_seeded:
        # Imported here: the seed-file module loads pyarrow, which `validate` or `status` of a
        # workflow without seed files need not pay for.
        from dd_assets.store.seed_files import file_digest, file_schema

        digests = {s.name: file_digest(s.seed.path) for s in file_seeded}  # type: ignore[union-attr]
        check_seed_file_columns(
            workflow,
            {s.name: file_schema(s.seed.path).names for s in file_seeded},  # type: ignore[union-attr]
        )
    fps = workflow_fingerprints(workflow, digests)
    plans: dict[str, StagePlan] = {}

    def visit(name: str) -> StagePlan:
        if name in plans:
            return plans[name]
        stage = workflow.stage(name)
        ups = tuple(visit(up.name) for up in workflow.upstreams_of(stage))
        fp = fps[name]
        ref = StageRef(
            workflow=workflow.name,
            stage=name,
            fingerprint=fp.hex,
            buffer_size=stage.buffer_size,
            num_records=stage.num_records,
            identity=fp.payload,
        )
        plans[name] = StagePlan(workflow, compile_stage(workflow, name, fp.hex), fp, ref, ups)
        return plans[name]

    for s in workflow.stages:
        visit(s.name)
    ordered = {s.name: plans[s.name] for s in workflow.stages}
    return WorkflowPlan(workflow, ordered, waves(workflow))
