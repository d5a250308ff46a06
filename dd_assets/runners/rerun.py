"""`dd-assets materialize CONFIG --rerun-from STAGE`: regenerate a stage and everything below it.

A rerun is `--resume never` for exactly those stages: each one's fingerprint folder is moved
aside (never deleted; a finalized stage's final output goes with it, which unseals it) and every
LLM cell is asked again, the request cache being written but not read. Descendants are forced
too, not left to the data-version cascade: someone rerunning from a stage wants new answers all
the way down, and the cascade (`--resume never --stage X`, then `materialize`) remains for
regenerating only what really changed, with the cache. Stages above and beside are untouched."""

from __future__ import annotations

from dd_assets.errors import RunError
from dd_assets.runners.plan import WorkflowPlan
from dd_assets.store.approvals import read_approval
from dd_assets.store.partition_store import PartitionStore


def rerun_stages(plan: WorkflowPlan, store: PartitionStore, stage: str) -> list[str]:
    """The stage and its descendants, in config order; refused when one of them hands down an
    approved output, which the rerun would not change (its descendants read the approval)."""
    names = [plan[stage].name, *plan.descendants(stage)]
    approved = [n for n in names if read_approval(store, plan[n].ref) is not None]
    if approved:
        shown = ", ".join(map(repr, approved))
        raise RunError(
            f"--rerun-from {stage!r} would regenerate {shown}, whose approved output is what"
            " the stages below read, so the rerun would not reach them; nothing was run. Clear"
            " the approval first (`dd-assets approve CONFIG "
            + " / ".join(approved)
            + " --clear`), or rerun from a stage below it"
        )
    return names
