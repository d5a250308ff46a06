"""What each row group was built from, and whether that is still what is on disk.

A row group's footer records `inputs`: the data version of each upstream row group it read
(row_group seeds, joins), or of the whole upstream it sampled (its row groups' versions, or its
final output's). It is stale when an upstream's version now differs: its rows were built from
data that has since been regenerated, and keeping it would silently mix two generations.

Data versions are content hashes (store.footer.content_hash), so regenerating identical data
makes nothing stale, and a resume, which reuses files, never does. Files written before inputs
were recorded say nothing, so they are never called stale. The config side of staleness (the
fingerprint changed) is the other half, in status.

An approved output (review gate, runners/approve.py) is what its stage hands downstream instead
of its generated rows: its versions are the ones descendants record, so approving, re-approving
or clearing makes exactly the row groups built from other data stale."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

from dd_assets.errors import RunError
from dd_assets.runners.images import without_missing_images
from dd_assets.runners.plan import StagePlan
from dd_assets.store.approvals import Approval, read_approval
from dd_assets.store.footer import RowGroupInfo
from dd_assets.store.partition_store import FinalMissingError, PartitionStore


class BuiltFrom(Protocol):
    """A row group as its footer describes it (RowGroupInfo, or FileFooter for the checks)."""

    @property
    def row_group(self) -> int: ...

    @property
    def inputs(self) -> dict[str, str] | None: ...


class Lineage:
    """The current data versions of a run's stages, read once and kept up to date as row groups
    land (so a pipelined downstream stage compares against the row group that just landed)."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self._completed: dict[str, dict[int, RowGroupInfo]] = {}
        self._approvals: dict[str, Approval | None] = {}

    def approval(self, plan: StagePlan) -> Approval | None:
        """The stage's approved output, if any (read once per Lineage)."""
        if plan.name not in self._approvals:
            self._approvals[plan.name] = read_approval(self.store, plan.ref)
        return self._approvals[plan.name]

    def assume_approval(self, plan: StagePlan, approval: Approval) -> None:
        """Answer as if `plan` had this approval (to refuse one before storing it)."""
        self._approvals[plan.name] = approval

    def row_group_approval(self, plan: StagePlan) -> Approval | None:
        """The approval a `mode: row_group` / join descendant reads row group by row group: that
        of a stage without finalize steps (a finalized stage's approval stands in for its final
        output, which only `mode: sample` descendants read)."""
        approval = self.approval(plan)
        return approval if approval is not None and approval.replaces == "row_groups" else None

    def approved_above(self, plan: StagePlan) -> str | None:
        """The nearest stage at or above `plan`, through row_group links, whose approved rows its
        row groups are cut from (None: they come from generated row groups only)."""
        if self.row_group_approval(plan) is not None:
            return plan.name
        if plan.pairs_row_groups:
            cuts = {self.approved_above(up) for up in plan.upstreams}
            if len(cuts) == 1:
                return cuts.pop()
            return " + ".join(sorted(c or "(generated)" for c in cuts))  # mixed: refused to run
        return None

    def refuse_mixed_join(self, plan: StagePlan) -> None:
        """A join pairs row group i of each stage by key. An approved table is cut into row
        groups by position, so a joined stage cut from it and one that is not (or cut from
        another approval) may hold a key's two halves in different row groups: rows would be
        lost without a word. Refuse instead."""
        if not (plan.pairs_row_groups and len(plan.upstreams) > 1):
            return
        cuts = {up.name: self.approved_above(up) for up in plan.upstreams}
        if len(set(cuts.values())) > 1:
            shown = ", ".join(
                f"{name!r} ({f'cut from the approved output of {c!r}' if c else 'generated'})"
                for name, c in cuts.items()
            )
            approved = sorted({c for c in cuts.values() if c})
            raise RunError(
                f"stage {plan.name!r} joins {shown}: an approved output is cut into row groups"
                " by position, so a key's partner may sit in another row group and the join"
                " would lose rows silently; nothing was written. Approve a stage below the"
                " join instead, seed the join's stages from the approved stage alike, or clear"
                " the approval (`dd-assets approve CONFIG " + " / ".join(approved) + " --clear`)"
            )

    def handed_down(self, plan: StagePlan, row_group: int) -> str | None:
        """The data version of row group `row_group` as `plan` hands it to a row_group
        descendant: of its approved rows there, or of its generated row group (None: not on
        disk)."""
        approval = self.row_group_approval(plan)
        if approval is not None:
            if approval.rows > plan.ref.num_records:
                raise RunError(
                    f"the approved output of stage {plan.name!r} has {approval.rows} rows, more"
                    f" than its num_records ({plan.ref.num_records}); a `mode: row_group`"
                    " descendant reads it row group by row group and would not see rows"
                    f" {plan.ref.num_records} onward. Raise num_records of {plan.name!r} and"
                    " its row_group descendants, or approve a shorter file"
                )
            return approval.row_group_version(row_group)
        return self.generated_version(plan, row_group)

    def generated_version(self, plan: StagePlan, row_group: int) -> str | None:
        """The data version of a completed row group on disk (None: not there). With
        `generated_versions`, the one place lineage reads row groups' versions (status reads
        them from columns instead: runners/status_columns.py)."""
        info = self.completed(plan).get(row_group)
        return info.data_version if info is not None else None

    def generated_versions(self, plan: StagePlan) -> list[str] | None:
        """The data versions of all the stage's row groups in order; None while one is not on
        disk."""
        done = self.completed(plan)
        if any(rg not in done for rg in range(plan.ref.num_row_groups)):
            return None
        return [done[rg].data_version for rg in sorted(done)]

    def completed(self, plan: StagePlan) -> dict[int, RowGroupInfo]:
        if plan.name not in self._completed:
            # A row group whose image files are gone is missing data (runners/images.py).
            self._completed[plan.name] = without_missing_images(
                plan, self.store, self.store.completed(plan.ref)
            )
        return self._completed[plan.name]

    def landed(self, plan: StagePlan, info: RowGroupInfo) -> None:
        self.completed(plan)[info.row_group] = info

    def stage_version(self, plan: StagePlan) -> str | None:
        """One version for a whole stage (what a `mode: sample` stage reads): its final
        output's when it has finalize steps, else its row groups' in order, or its approved
        output's when it has one; None while any part is missing."""
        approval = self.approval(plan)
        if approval is not None and approval.replaces == "final":
            return approval.data_version
        if approval is not None:  # as generated row groups': the same rows are no change
            versions = (approval.row_group_version(rg) for rg in range(plan.ref.num_row_groups))
            return _joined(versions)
        if plan.finalizes:
            try:
                final = self.store.final_output(plan.ref, plan.fingerprint.final_hex or "")
            except FinalMissingError:
                return None
            return str(final.info.get("data_version") or plan.fingerprint.final_hex)
        versions = self.generated_versions(plan)
        return None if versions is None else _joined(versions)

    def inputs(self, plan: StagePlan, row_group: int) -> dict[str, str] | None:
        """Data versions row group `row_group` of `plan` is built from now ({} for a stage
        without an upstream); None when an upstream part is missing."""
        out: dict[str, str] = {}
        for up in plan.upstreams:
            if plan.pairs_row_groups:
                version = self.handed_down(up, row_group)
            else:
                version = self.stage_version(up)
            if version is None:
                return None
            out[up.name] = version
        return out

    def stale_reason(self, plan: StagePlan, info: BuiltFrom) -> str | None:
        """Why a row group on disk no longer matches its upstreams (None: it does, or it cannot
        be told because the inputs were not recorded or an upstream part is missing)."""
        if info.inputs is None or not plan.upstreams:
            return None
        now = self.inputs(plan, info.row_group)
        if now is None:
            return None
        changed = [up for up, version in now.items() if info.inputs.get(up) != version]
        if not changed:
            return None
        names = " and ".join(map(repr, changed))
        approved = [up.name for up in plan.upstreams if up.name in changed and self.approval(up)]
        if approved:
            which = " and ".join(map(repr, approved))
            return f"built from data of {names} that changed since ({which}: now approved output)"
        return f"built from data of {names} that was regenerated since"

    def reusable(self, plan: StagePlan, info: RowGroupInfo) -> bool:
        """A row group on disk is kept unless it is stale, or lacks the side table of dropped
        columns that run.keep_dropped_columns asks for (regenerated: the same rows, its LLM
        answers from the cache)."""
        if self.stale_reason(plan, info) is not None:
            return False
        return not (plan.keeps_dropped_columns and info.dropped_columns is None)

    def current(self, plan: StagePlan) -> dict[int, RowGroupInfo]:
        """Row groups on disk that a run would keep (completed and reusable)."""
        return {rg: i for rg, i in self.completed(plan).items() if self.reusable(plan, i)}

    def stale(self, plan: StagePlan) -> dict[int, str]:
        """Row groups of a stage on disk that are stale, with the reason."""
        out = {}
        for rg, info in sorted(self.completed(plan).items()):
            reason = self.stale_reason(plan, info)
            if reason is not None:
                out[rg] = reason
        return out


def _joined(versions: Iterable[str]) -> str:
    """One version for row groups' versions in order (a whole stage's)."""
    return hashlib.sha256(",".join(versions).encode()).hexdigest()[:32]
