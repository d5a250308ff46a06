"""What each row group was built from, and whether that is still what is on disk.

A row group's footer records `inputs`: the data version of each upstream row group it read
(row_group seeds, joins), or of the whole upstream it sampled (its row groups' versions, or its
final output's). It is stale when an upstream's version now differs: its rows were built from
data that has since been regenerated, and keeping it would silently mix two generations.

Data versions are content hashes (store.footer.content_hash), so regenerating identical data
makes nothing stale, and a resume, which reuses files, never does. Files written before inputs
were recorded say nothing, so they are never called stale. The config side of staleness (the
fingerprint changed) is the other half, in status."""

from __future__ import annotations

import hashlib
from typing import Protocol

from dd_assets.runners.plan import StagePlan
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

    def completed(self, plan: StagePlan) -> dict[int, RowGroupInfo]:
        if plan.name not in self._completed:
            self._completed[plan.name] = self.store.completed(plan.ref)
        return self._completed[plan.name]

    def landed(self, plan: StagePlan, info: RowGroupInfo) -> None:
        self.completed(plan)[info.row_group] = info

    def stage_version(self, plan: StagePlan) -> str | None:
        """One version for a whole stage (what a `mode: sample` stage reads): its final
        output's when it has finalize steps, else its row groups' in order; None while any
        part is missing."""
        if plan.finalizes:
            try:
                final = self.store.final_output(plan.ref, plan.fingerprint.final_hex or "")
            except FinalMissingError:
                return None
            return str(final.info.get("data_version") or plan.fingerprint.final_hex)
        done = self.completed(plan)
        if any(rg not in done for rg in range(plan.ref.num_row_groups)):
            return None
        joined = ",".join(done[rg].data_version for rg in sorted(done))
        return hashlib.sha256(joined.encode()).hexdigest()[:32]

    def inputs(self, plan: StagePlan, row_group: int) -> dict[str, str] | None:
        """Data versions row group `row_group` of `plan` is built from now ({} for a stage
        without an upstream); None when an upstream part is missing."""
        out: dict[str, str] = {}
        for up in plan.upstreams:
            if plan.pairs_row_groups:
                info = self.completed(up).get(row_group)
                version = info.data_version if info is not None else None
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
        return f"built from data of {names} that was regenerated since"

    def stale(self, plan: StagePlan) -> dict[int, str]:
        """Row groups of a stage on disk that are stale, with the reason."""
        out = {}
        for rg, info in sorted(self.completed(plan).items()):
            reason = self.stale_reason(plan, info)
            if reason is not None:
                out[rg] = reason
        return out
