"""`dd-assets status`: what is on disk for each stage, read from the store alone (no Dagster
instance needed, so it also works on a machine that only sees the shared store)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from dd_assets.config import WorkflowConfig
from dd_assets.fingerprint import changed_fields
from dd_assets.stage_runner import plan_workflow
from resources.store import PartitionStore, StageRef
from resources.store_resource import default_root


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

    @property
    def missing_text(self) -> str:
        if not self.missing:
            return "-"
        text = StageRef.key_ranges(self.missing, 4)
        return f"{len(self.missing)}: {text}"


def _stale_reason(old_identity: dict, new_identity: dict, upstreams: list[str]) -> str:
    changed = changed_fields(old_identity, new_identity)
    if changed and all(c.startswith("seed.upstream_fingerprint") for c in changed):
        # seed.upstream_fingerprint (one seed stage) or seed.upstream_fingerprints[k] (a join)
        which = [
            upstreams[int(m.group(1) or 0)]
            for c in changed
            if (m := re.fullmatch(r"seed\.upstream_fingerprints?(?:\[(\d+)\])?", c))
        ]
        if which and len(which) == len(changed):
            names = " and ".join(map(repr, dict.fromkeys(which)))
            return f"upstream stage{'s' if len(set(which)) > 1 else ''} {names} changed"
    shown = ", ".join(changed[:5]) + (" …" if len(changed) > 5 else "")
    return f"config changed ({shown})" if changed else "config changed"


def workflow_status(workflow: WorkflowConfig, root: str | None = None) -> list[StageStatus]:
    store = PartitionStore(root or default_root())
    out = []
    for name, plan in plan_workflow(workflow).items():
        ref = plan.ref
        done = store.completed(ref) if store.stage_dir(ref).exists() else {}
        total = ref.num_row_groups
        state = store.state(ref) if (store.stage_dir(ref) / "stage.json").exists() else {}
        others = [f for f in store.fingerprints(ref.workflow, ref.stage) if f["fp12"] != ref.fp12]
        stale, reason = False, None
        if not done:
            with_data = [f for f in others if f.get("row_groups")]
            if with_data:
                newest = max(
                    with_data, key=lambda f: (f.get("stage_json") or {}).get("updated_at", "")
                )
                stale = True
                old_identity = (newest.get("stage_json") or {}).get("identity") or {}
                ups = [up.name for up in plan.upstreams]
                reason = f"{_stale_reason(old_identity, ref.identity, ups)} since {newest['fp12']}"
        out.append(
            StageStatus(
                stage=name,
                fingerprint=ref.fp12,
                total=total,
                done=len([rg for rg in done if rg < total]),
                missing=[rg for rg in range(total) if rg not in done],
                records=sum(i.rows for i in done.values()),
                stale=stale,
                stale_reason=reason,
                finalize_state=state.get("finalize_state"),
                other_fingerprints=[f["fp12"] for f in others],
            )
        )
    return out
