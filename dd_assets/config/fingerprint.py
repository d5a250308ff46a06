"""Stage fingerprints (= Dagster code_version) and the per-column keys that seed sampler randomness.

A fingerprint covers exactly what decides a stage's row groups; anything else (num_records, keys,
parallelism, timeouts, descriptions) is left out so that changing it neither re-generates data
nor mixes data made under different configs."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from dd_assets.config.base import fingerprint_dump
from dd_assets.config.functions import identity as function_identity
from dd_assets.config.workflow import FileSeed, JoinSeed, StageConfig, StageSeed, WorkflowConfig

SCHEME_VERSION = 1


def canonical_json(obj: Any) -> str:
    # No default= fallback: a value JSON cannot express must fail, never hash unpredictably.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256_hex(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StageFingerprint:
    stage: str
    hex: str
    payload: dict[str, Any]
    final_hex: str | None  # code_version of the [workflow, stage, final] asset, if any

    @property
    def short(self) -> str:
        return self.hex[:12]


def _dump(models: list[Any]) -> list[dict[str, Any]]:
    return [fingerprint_dump(m) for m in models]


def stage_payload(
    workflow: WorkflowConfig,
    stage: StageConfig,
    upstream_fingerprints: list[str],
    seed_file_digest: str | None = None,
) -> dict[str, Any]:
    """The JSON that is hashed; stored in stage.json so a later run can show which fields changed."""
    seed: dict[str, Any] | None = None
    if isinstance(stage.seed, StageSeed):
        seed = {
            **fingerprint_dump(stage.seed),
            "upstream_fingerprint": upstream_fingerprints[0],
        }
    elif isinstance(stage.seed, JoinSeed):
        # In the seed's order: the first stage's rows lead, so the order is part of the data.
        seed = {
            **fingerprint_dump(stage.seed),
            "upstream_fingerprints": upstream_fingerprints,
        }
    elif isinstance(stage.seed, FileSeed):
        # The content, not the path: an edited file must be a new dataset (the path alone would
        # silently mix old and new rows), and the same file at another path on another machine
        # is the same dataset.
        seed = {
            "format": PurePath(stage.seed.path).suffix.lower(),
            "strategy": stage.seed.strategy,
            "sha256": seed_file_digest,
        }
        # Only when set, so file seeds without a selection keep their fingerprints.
        for part in ("rows", "shard"):
            if getattr(stage.seed, part) is not None:
                seed[part] = getattr(stage.seed, part).model_dump(mode="json")
    payload = {
        "scheme": SCHEME_VERSION,
        "columns": _dump(stage.columns),
        "post_batch": _dump(stage.post_batch),
        "models": {a: workflow.models[a].identity() for a in sorted(stage.model_aliases)},
        "buffer_size": stage.buffer_size,
        "seed": seed,
    }
    # Only for stages that use them, so other stages keep their fingerprints.
    names = sorted({c.generator_function for c in stage.columns if c.column_type == "custom"})  # type: ignore[union-attr]
    if names:
        payload["functions"] = {n: function_identity(workflow.functions[n]) for n in names}
    aliases = sorted({a for c in stage.columns if (a := getattr(c, "tool_alias", None))})
    if aliases:
        payload["tools"] = {a: workflow.tools[a].identity(workflow.mcp_providers) for a in aliases}
    return payload


def workflow_fingerprints(
    workflow: WorkflowConfig, seed_file_digests: dict[str, str] | None = None
) -> dict[str, StageFingerprint]:
    """Fingerprints of every stage, upstream first so a change cascades down the DAG.

    A stage seeded from a stage that has `finalize` processors reads that stage's final output, so
    it depends on the final fingerprint (which also covers the finalize processors)."""
    digests = seed_file_digests or {}
    out: dict[str, StageFingerprint] = {}

    def visit(stage: StageConfig) -> StageFingerprint:
        if stage.name in out:
            return out[stage.name]
        upstream_fps = []
        for up in workflow.upstreams_of(stage):
            up_fp = visit(up)
            use_final = stage.seed.mode == "sample" and up_fp.final_hex is not None  # type: ignore[union-attr]
            upstream_fps.append(up_fp.final_hex if use_final else up_fp.hex)
        payload = stage_payload(workflow, stage, upstream_fps, digests.get(stage.name))
        hex_ = sha256_hex(payload)
        final_hex = None
        if stage.finalize:
            final: dict[str, Any] = {"stage": hex_, "finalize": _dump(stage.finalize)}
            # Only when set (an added field): other stages keep their final fingerprints.
            if stage.target_records is not None:
                final["target_records"] = stage.target_records
            final_hex = sha256_hex(final)
        fp = StageFingerprint(stage.name, hex_, payload, final_hex)
        out[stage.name] = fp
        return fp

    for s in workflow.stages:
        visit(s)
    return {s.name: out[s.name] for s in workflow.stages}


def changed_fields(old: Any, new: Any, path: str = "") -> list[str]:
    """Dotted paths where two payloads differ, to tell a user what changed since a run."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                out.append(sub)
            else:
                out += changed_fields(old[key], new[key], sub)
        return out
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        out = []
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            out += changed_fields(a, b, f"{path}[{i}]")
        return out
    return [] if old == new else [path or "<root>"]


def describe_change(old: Any, new: Any, limit: int = 8) -> str:
    """The changed fields of two identities, for a message: `columns[1].expr, buffer_size …`."""
    changed = changed_fields(old, new)
    if not changed:
        return "unknown"
    return ", ".join(changed[:limit]) + (" …" if len(changed) > limit else "")


def stale_reason(old: dict[str, Any], new: dict[str, Any], upstreams: list[str]) -> str:
    """Why data made under identity `old` is stale under `new`: the upstream stage(s) whose
    fingerprint changed when that is all, else the changed fields. The one wording of a stale
    reason, for `status` and the checks."""
    changed = changed_fields(old, new)
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
    return f"config changed ({describe_change(old, new, 5)})" if changed else "config changed"


def column_key(workflow: WorkflowConfig, stage: StageConfig, column: str) -> int:
    """64-bit key for a sampler column's randomness.

    It covers the column's own config and its sampler parents (subcategory), not the whole stage
    fingerprint: editing one column then leaves the other columns' values, and so the prompts
    built from them, unchanged, which is what lets the request cache avoid paying again."""
    by_name = {c.name: c for c in stage.columns}
    lineage = []
    todo = [column]
    while todo:
        name = todo.pop()
        col = by_name[name]
        lineage.append(fingerprint_dump(col))
        todo += sorted(d for d in col.required_columns if d in by_name)
    digest = sha256_hex(
        {
            "scheme": SCHEME_VERSION,
            "workflow": workflow.name,
            "stage": stage.name,
            "lineage": lineage,
        }
    )
    return int(digest[:16], 16)
