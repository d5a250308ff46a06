"""`dd-assets status`: what is on disk for each stage, read from the store alone (no Dagster
instance needed, so it also works on a machine that only sees the shared store)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from dd_assets.config.fingerprint import stale_reason
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.plan import StagePlan, WorkflowPlan
from dd_assets.runners.status_columns import ColumnLineage, CompletedSummary, summary_of_columns
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
    # Sentences about the stage below the table: its approved output, its target_records.
    notes: list[str] = field(default_factory=list)
    dropped: int = 0  # rows dropped in the row groups on disk (refused, unusable, expression)
    drop_reasons: dict[str, int] = field(default_factory=dict)
    planned: int = 0

    @property
    def drops_text(self) -> str:
        shown = ", ".join(
            f"{reason} {n}"
            for reason, n in sorted(self.drop_reasons.items(), key=lambda kv: -kv[1])
        )
        rate = (
            f" ({100 * self.dropped / self.planned:.1f}% of {self.planned})" if self.planned else ""
        )
        return f"{self.dropped} rows dropped{rate}: {shown}"

    @property
    def missing_text(self) -> str:
        if not self.missing:
            return "-"
        return f"{len(self.missing)}: {key_ranges(self.missing, 4)}"


def summary_of_footers(plan: StagePlan, lineage: Lineage) -> CompletedSummary:
    """The stage's completed row groups summed up from one RowGroupInfo each (the per-footer
    path: an object store, a folder changed since its index was written)."""
    done = lineage.completed(plan)
    reasons: Counter[str] = Counter()
    for info in done.values():
        reasons.update({k: int(n) for k, n in (info.stats.get("drop_reasons") or {}).items()})
    return CompletedSummary(
        row_groups=set(done),
        records=sum(i.rows for i in done.values()),
        dropped=sum(int(i.stats.get("dropped_rows", 0) or 0) for i in done.values()),
        planned=sum(
            int(i.stats.get("planned_rows", i.row_end - i.row_start) or 0) for i in done.values()
        ),
        drop_reasons=reasons,
        stale=lineage.stale(plan),
    )


def _missing(needed: int, done: set[int]) -> list[int]:
    """Row groups 0..needed-1 not done. `needed` distinct row groups all in that range are all of
    them: then no pass over each (100,000 set lookups are half of a big status's own time)."""
    if len(done) == needed and (not done or (min(done) >= 0 and max(done) < needed)):
        return []
    return [rg for rg in range(needed) if rg not in done]


def workflow_status(
    plan: WorkflowPlan, store: PartitionStore, columns: bool = True
) -> list[StageStatus]:
    """Per stage: what is done, missing, stale and why. Stale is either half of the same
    question, "does what is on disk still follow from the config and the upstream data?": the
    config changed (another fingerprint has the data), or row groups were built from upstream
    data regenerated since (runners/lineage.py).

    Each stage is summed up from its footer index's columns (runners/status_columns.py) where
    the index stands for its folder, else from its footers; `columns=False` always reads the
    footers (the reference the tests compare with)."""
    lineage = ColumnLineage(store) if columns else Lineage(store)
    out = []
    for name, sp in plan.stages.items():
        ref = sp.ref
        done = None
        if isinstance(lineage, ColumnLineage):  # None for some stages (image columns)
            done = summary_of_columns(sp, lineage)
        if done is None:
            done = summary_of_footers(sp, lineage)
        total = ref.num_row_groups
        state = store.state(ref)
        others = [fp for fp in store.fingerprint_names(ref.workflow, ref.stage) if fp != ref.fp12]
        stale, reason = False, None
        if not done.row_groups:
            newest = store.newest_other_fingerprint(ref)
            if newest is not None:
                stale = True
                ups = [up.name for up in sp.upstreams]
                why = stale_reason(newest.identity, ref.identity, ups)
                reason = f"{why} since {newest.fp12}"
        stale_rgs = done.stale
        if stale_rgs:
            stale = True
            why = sorted(set(stale_rgs.values()))
            reason = (
                f"{len(stale_rgs)} row group(s) ({key_ranges(stale_rgs, 4)}) {'; '.join(why)};"
                " materialize the stage to regenerate exactly those"
            )
        notes = []
        approval = lineage.approval(sp)
        if approval is not None:
            what = "final output" if approval.replaces == "final" else "generated rows"
            notes.append(
                f"approved: {approval.rows} rows from {approval.info.get('source')} at"
                f" {approval.info.get('approved_at')} (version {approval.data_version[:12]}) are"
                f" what it hands downstream instead of its {what}; `dd-assets approve CONFIG"
                f" {name} --clear` reverts"
            )
        used, target = None, sp.compiled.stage.target_records
        if target is not None:
            # Here: runners.finalize loads pyarrow.parquet and the finalize engine (~0.05 s),
            # which a stage without target_records never needs.
            from dd_assets.runners.finalize import target_used

            used = target_used(sp, store)
            notes.append(
                f"target_records {target}: not finalized yet; row groups are generated in order"
                f" until {target} rows pass finalize (at most {total} row groups)"
                if used is None
                else f"target_records {target}: reached with row groups 00000-{used - 1:05d};"
                f" the {total - used} after them are not needed"
            )
        needed = total if used is None else used
        out.append(
            StageStatus(
                stage=name,
                fingerprint=ref.fp12,
                total=total,
                done=len(done.row_groups),
                missing=_missing(needed, done.row_groups),
                records=done.records,
                stale=stale,
                stale_reason=reason,
                finalize_state=state.get("finalize_state"),
                other_fingerprints=others,
                stale_row_groups=stale_rgs,
                notes=notes,
                dropped=done.dropped,
                drop_reasons=dict(done.drop_reasons),
                planned=done.planned,
            )
        )
    return out
