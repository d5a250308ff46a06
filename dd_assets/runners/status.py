"""`dd-assets status`: what is on disk for each stage, read from the store alone (no Dagster
instance needed, so it also works on a machine that only sees the shared store)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dd_assets.config.fingerprint import stale_reason
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.plan import WorkflowPlan
from dd_assets.store.layout import key_ranges
from dd_assets.store.partition_store import PartitionStore


@dataclass
class StageStatus:
    stage: str
    fingerprint: str
    total: int
    done: int
    missing: list[int]
    records: int
    stale: bool
    stale_reason: str | None
    finalize_state: str | None
    other_fingerprints: list[str] = field(default_factory=list)
    # Row groups on disk built from upstream data regenerated since: row group -> reason.
    stale_row_groups: dict[int, str] = field(default_factory=dict)

    @property
    def missing_text(self) -> str:
        if not self.missing:
            return "-"
        return f"{len(self.missing)}: {key_ranges(self.missing, 4)}"


def workflow_status(plan: WorkflowPlan, store: PartitionStore) -> list[StageStatus]:
    """Per stage: what is done, missing, stale and why. Stale is either half of the same
    question, "does what is on disk still follow from the config and the upstream data?": the
    config changed (another fingerprint has the data), or row groups were built from upstream
    data regenerated since (runners/lineage.py)."""
    lineage = Lineage(store)
    out = []
    for name, sp in plan.stages.items():
        ref = sp.ref
        done = lineage.completed(sp)
        total = ref.num_row_groups
        state = store.state(ref)
        others = [f.fp12 for f in store.fingerprints(ref.workflow, ref.stage) if f.fp12 != ref.fp12]
        stale, reason = False, None
        if not done:
            newest = store.newest_other_fingerprint(ref)
            if newest is not None:
                stale = True
                ups = [up.name for up in sp.upstreams]
                why = stale_reason(newest.identity, ref.identity, ups)
                reason = f"{why} since {newest.fp12}"
        stale_rgs = lineage.stale(sp)
        if stale_rgs:
            stale = True
            why = sorted(set(stale_rgs.values()))
            reason = (
                f"{len(stale_rgs)} row group(s) ({key_ranges(stale_rgs, 4)}) {'; '.join(why)};"
                " materialize the stage to regenerate exactly those"
            )
        out.append(
            StageStatus(
                stage=name,
                fingerprint=ref.fp12,
                total=total,
                done=len(done),
                missing=[rg for rg in range(total) if rg not in done],
                records=sum(i.rows for i in done.values()),
                stale=stale,
                stale_reason=reason,
                finalize_state=state.get("finalize_state"),
                other_fingerprints=others,
                stale_row_groups=stale_rgs,
            )
        )
    return out
