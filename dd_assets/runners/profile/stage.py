"""A stage's profile: what its rows look like, column by column, with DataDesigner's names
(`num_records`, `target_num_records`, `percent_complete`, `column_statistics` with `num_null`,
`num_unique`, `percent_unique`, `distribution_type`, `most_common_value` ...), plus what the
footers say about the run (rows planned and dropped by reason, LLM usage) and the drift check.

Built from the row groups' cached partials (runners/profile/partials.py), or from the final
output when the stage is finalized, so asking for it costs one small file read per row group."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from dd_assets.config.columns import (
    LLMCodeColumnConfig,
    LLMJudgeColumnConfig,
    LLMTextColumnConfig,
    SamplerColumnConfig,
)
from dd_assets.config.drift import category_columns
from dd_assets.config.workflow import StageConfig, column_output_name
from dd_assets.runners.plan import StagePlan
from dd_assets.runners.profile.partial import ColumnPartial, TablePartial
from dd_assets.runners.profile.partials import final_partial, stage_partial
from dd_assets.runners.profile.sketch import HLL_RSE, NumericSketch
from dd_assets.store.footer import RowGroupInfo
from dd_assets.store.partition_store import FinalMissingError, PartitionStore

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
TOP_VALUES = 10
CATEGORICAL_MAX = 20  # a string or int column with at most this many values is shown as categories
NOISE_SIGMAS = 3.0  # drift: sampling noise allowed on top of the tolerance, in standard errors
_UNIT = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


# ---- values as a person reads them --------------------------------------------------------


def _round(x: float | None, digits: int = 6) -> float | None:
    if x is None or not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}")


def _display(kind: str, v: float | int | None) -> Any:
    """A sketch value in the column's own terms: datetimes as ISO text."""
    if v is None:
        return None
    if kind.startswith("timestamp["):
        unit = _UNIT[kind[len("timestamp[") : -1]]
        return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=v / unit)).strftime(
            "%Y-%m-%dT%H:%M:%S"
        )
    if kind == "date":
        return (date(1970, 1, 1) + timedelta(days=round(v))).isoformat()
    if isinstance(v, float):
        return _round(v)
    return v


def numeric_summary(s: NumericSketch, kind: str) -> dict[str, Any]:
    """min/max/mean/stddev/median (DataDesigner's NumericalDistribution), quantiles and a
    histogram whose counts are exact for its edges."""
    if not s.n:
        return {}
    edges, counts = s.histogram()
    temporal = kind.startswith("timestamp[") or kind == "date"
    out = {
        "min": _display(kind, s.lo),
        "max": _display(kind, s.hi),
        "mean": _display(kind, s.mean),
        "stddev": None if temporal else _round(s.stddev()),
        "median": _display(kind, s.quantile(0.5)),
        "quantiles": {f"p{round(q * 100):02d}": _display(kind, s.quantile(q)) for q in QUANTILES},
        # how far a quantile may be from the exact one (0: exact), in the column's unit
        "quantile_error": 0 if s.exact_quantiles else _round(s.resolution),
        "histogram": {"edges": [_display(kind, e) for e in edges], "counts": counts},
    }
    if temporal:
        out["quantile_error_unit"] = kind[len("timestamp[") : -1] if kind != "date" else "days"
    return out


# ---- the profile --------------------------------------------------------------------------


@dataclass
class DriftFinding:
    column: str
    check: str  # "share" (a category's share vs its weight) or "judge_mean"
    value: Any  # the category, or the score name
    observed: float
    expected: float
    allowed: float  # |observed - expected| allowed (share) or the minimum (judge_mean)
    message: str


@dataclass
class StageProfile:
    workflow: str
    stage: str
    fingerprint: str
    source: str  # "row_groups", or "final" (the finalize output)
    num_records: int  # rows profiled (of the final output when source is "final")
    target_num_records: int
    rows_in_row_groups: int
    row_groups_done: int
    row_groups_total: int
    planned_rows: int
    dropped_rows: int
    drop_reasons: dict[str, int]
    llm_usage: dict[str, Any]
    column_statistics: list[dict[str, Any]]
    judge_scores: list[dict[str, Any]]
    drift: list[DriftFinding] = field(default_factory=list)
    drift_checked: list[str] = field(default_factory=list)  # what the drift check looked at
    finalize: dict[str, Any] | None = None  # rows in/out per finalize step (source "final")

    @property
    def percent_complete(self) -> float:
        """Rows on disk over rows asked for (DataDesigner's percent_complete)."""
        if not self.target_num_records:
            return 100.0
        return round(100.0 * self.rows_in_row_groups / self.target_num_records, 2)

    def column(self, name: str) -> dict[str, Any]:
        return next(c for c in self.column_statistics if c["column_name"] == name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["percent_complete"] = self.percent_complete
        return d


def _config_columns(stage: StageConfig) -> dict[str, Any]:
    """Output column name -> its config column (a trace column -> that LLM column)."""
    out: dict[str, Any] = {}
    for c in stage.columns:
        name = column_output_name(stage, c.name)
        if name is None:
            continue
        out[name] = c
        for side in c.output_names[1:]:
            out[side] = c
    return out


def _column_type(name: str, configs: dict[str, Any]) -> tuple[str, Any]:
    """(config column type, config column) of an output column or a field of one; a column the
    stage does not make itself came with its seed."""
    c = configs.get(name) or configs.get(name.split(".", 1)[0])
    if c is None:
        return "seed", None
    if name in c.output_names[1:]:
        return "trace", c
    return c.column_type, c


def _expected_shares(c: SamplerColumnConfig) -> dict[Any, float]:
    values = list(c.params.values)  # type: ignore[union-attr]
    weights = c.params.weights or [1.0] * len(values)  # type: ignore[union-attr]
    total = float(sum(weights))
    out: dict[Any, float] = {}
    for v, w in zip(values, weights, strict=True):
        out[v] = out.get(v, 0.0) + w / total
    return out


def column_statistics(
    name: str, p: ColumnPartial, configs: dict[str, Any], expected: dict[Any, float] | None
) -> dict[str, Any]:
    column_type, c = _column_type(name, configs)
    n = p.n
    valid = n - p.nulls - p.nonfinite
    # an estimate never exceeds the values there are
    num_unique = min(p.distinct.count(), valid) if p.distinct is not None else None
    stats: dict[str, Any] = {
        "column_name": name,
        "column_type": column_type,
        "pyarrow_dtype": p.arrow_type,
        "simple_dtype": p.kind,
        "num_records": n,
        "num_null": p.nulls,
        "percent_null": round(100.0 * p.nulls / n, 2) if n else 0.0,
        "num_unique": num_unique,
        # exact below 257 distinct values, else a HyperLogLog estimate (±0.81% standard error)
        "num_unique_exact": bool(p.distinct and p.distinct.is_exact),
        "percent_unique": round(100.0 * num_unique / n, 2)
        if n and num_unique is not None
        else None,
    }
    if isinstance(c, SamplerColumnConfig) and name == c.name:
        stats["sampler_type"] = c.sampler_type
    if p.nonfinite:
        stats["num_nonfinite"] = p.nonfinite
    llm_text = isinstance(c, LLMTextColumnConfig | LLMCodeColumnConfig) or (
        isinstance(c, LLMJudgeColumnConfig) and name.endswith(".reasoning")
    )
    category = isinstance(c, SamplerColumnConfig) and c.sampler_type in ("category", "subcategory")
    if p.kind == "bool" or (category and name == c.name):
        dist = "categorical"
    elif p.kind in ("int", "float"):
        dist = "numerical"
    elif p.kind.startswith("timestamp[") or p.kind == "date":
        dist = "datetime"
    elif p.kind == "string":
        few = p.values is not None and len(p.values) <= CATEGORICAL_MAX
        dist = "categorical" if few and not llm_text and column_type != "trace" else "text"
    else:
        dist = "other"
    stats["distribution_type"] = dist
    if expected is not None and p.kind == "string":
        expected = {str(k): v for k, v in expected.items()}  # mixed-type values are written as text
    if p.values is not None and valid:
        ranked = sorted(p.values.items(), key=lambda kv: (-kv[1], repr(kv[0])))
        limit = CATEGORICAL_MAX if dist == "categorical" else TOP_VALUES
        top = []
        for v, cnt in ranked[:limit] if not expected else ranked:
            entry = {"value": _display(p.kind, v), "count": cnt, "share": round(cnt / valid, 6)}
            if expected is not None:
                entry["expected_share"] = round(expected.get(v, 0.0), 6)
            top.append(entry)
        for v, share in (expected or {}).items():
            if v not in p.values:  # a configured value never drawn
                top.append(
                    {"value": v, "count": 0, "share": 0.0, "expected_share": round(share, 6)}
                )
        stats["top_values"] = top
        if ranked:
            stats["most_common_value"] = _display(p.kind, ranked[0][0])
            stats["least_common_value"] = _display(p.kind, ranked[-1][0])
    if p.numeric is not None and p.numeric.n:
        stats["distribution"] = numeric_summary(p.numeric, p.kind)
    if p.kind == "string":
        stats["num_empty"] = p.empty
        stats["percent_empty"] = round(100.0 * p.empty / n, 2) if n else 0.0
        stats["length"] = {
            "chars": numeric_summary(p.chars, "int") if p.chars else {},
            "tokens": numeric_summary(p.tokens, "int") if p.tokens else {},
        }
        stats["sample_values"] = p.samples
    if p.items is not None and p.items.n:
        stats["items"] = numeric_summary(p.items, "int")
    return stats


def _footer_totals(infos: dict[int, RowGroupInfo]) -> dict[str, Any]:
    planned = dropped = 0
    reasons: dict[str, int] = {}
    usage: dict[str, int] = {}
    p50: list[tuple[float, int]] = []
    p95: list[tuple[float, int]] = []
    for info in infos.values():
        st = info.stats or {}
        planned += int(st.get("planned_rows", info.row_end - info.row_start) or 0)
        dropped += int(st.get("dropped_rows", 0) or 0)
        for r, k in (st.get("drop_reasons") or {}).items():
            reasons[r] = reasons.get(r, 0) + int(k)
        llm = st.get("llm") or {}
        for key in (
            "llm_requests",
            "llm_retries",
            "llm_failures",
            "llm_cache_hits",
            "llm_tokens_in",
            "llm_tokens_out",
            "llm_parse_retries",
        ):
            if llm.get(key):
                usage[key] = usage.get(key, 0) + int(llm[key])
        weight = int(llm.get("llm_requests") or 0)
        if weight and llm.get("llm_latency_p50_ms") is not None:
            p50.append((float(llm["llm_latency_p50_ms"]), weight))
        if weight and llm.get("llm_latency_p95_ms") is not None:
            p95.append((float(llm["llm_latency_p95_ms"]), weight))
    llm_usage: dict[str, Any] = dict(usage)
    if usage:
        # Footers keep each row group's p50/p95, not its latencies: the stage's figures are the
        # request-weighted median of the row groups' p50 and 95th percentile of their p95.
        llm_usage["llm_latency_p50_ms"] = _weighted_quantile(p50, 0.5)
        llm_usage["llm_latency_p95_ms"] = _weighted_quantile(p95, 0.95)
    return {
        "planned_rows": planned,
        "dropped_rows": dropped,
        "drop_reasons": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "llm_usage": llm_usage,
    }


def _weighted_quantile(pairs: list[tuple[float, int]], q: float) -> float | None:
    if not pairs:
        return None
    pairs = sorted(pairs)
    total = sum(w for _, w in pairs)
    acc = 0
    for v, w in pairs:
        acc += w
        if acc >= q * total:
            return v
    return pairs[-1][0]


def judge_scores(
    stage: StageConfig, partial: TablePartial, configs: dict[str, Any]
) -> list[dict[str, Any]]:
    """Per llm-judge score: its distribution over the options, mean (numeric scores) and the
    threshold the drift check holds it to."""
    out = []
    for name, c in configs.items():
        if not isinstance(c, LLMJudgeColumnConfig) or name != column_output_name(stage, c.name):
            continue
        for score in c.scores:
            p = partial.columns.get(f"{name}.{score.name}.score")
            if p is None:
                continue
            counts = {str(k): 0 for k in score.options}
            for v, k in (p.values or {}).items():
                counts[str(v)] = counts.get(str(v), 0) + k
            mean = p.numeric.mean if p.numeric is not None and p.numeric.n else None
            out.append(
                {
                    "column": name,
                    "score": score.name,
                    "num_scored": p.n - p.nulls,
                    "mean": _round(mean),
                    "counts": counts,
                    "min_mean": stage.drift.judge_min_mean.get(f"{c.name}.{score.name}"),
                }
            )
    return out


def drift_findings(stage: StageConfig, prof: StageProfile) -> tuple[list[DriftFinding], list[str]]:
    """Category shares outside tolerance + noise of their weights; judge means under their
    minimum. Noise = NOISE_SIGMAS standard errors of a share (sqrt(p(1-p)/n)), so a small
    stage is not flagged for the luck of its draw, while a large one is held to the tolerance."""
    found: list[DriftFinding] = []
    checked: list[str] = []
    by_name = {c["column_name"]: c for c in prof.column_statistics}
    for c in category_columns(stage.columns):
        name = column_output_name(stage, c.name)
        st = by_name.get(name or "")
        if st is None or "top_values" not in st:
            continue
        n = st["num_records"] - st["num_null"]
        if not n:
            continue
        tol = stage.drift.column_tolerance.get(c.name, stage.drift.share_tolerance)
        checked.append(f"{name} (shares ±{tol:g})")
        for entry in st["top_values"]:
            p = float(entry.get("expected_share", 0.0))
            allowed = tol + NOISE_SIGMAS * math.sqrt(p * (1 - p) / n)
            off = entry["share"] - p
            if abs(off) > allowed:
                found.append(
                    DriftFinding(
                        str(name),
                        "share",
                        entry["value"],
                        entry["share"],
                        p,
                        round(allowed, 6),
                        f"{name}={entry['value']!r}: {100 * entry['share']:.1f}% of {n} rows,"
                        f" configured {100 * p:.1f}% (allowed ±{100 * allowed:.1f} points)",
                    )
                )
    for j in prof.judge_scores:
        if j["min_mean"] is None:
            continue
        checked.append(f"{j['column']}.{j['score']} (mean >= {j['min_mean']:g})")
        if j["mean"] is not None and j["mean"] < j["min_mean"]:
            found.append(
                DriftFinding(
                    j["column"],
                    "judge_mean",
                    j["score"],
                    j["mean"],
                    j["min_mean"],
                    j["min_mean"],
                    f"{j['column']}.{j['score']}: mean score {j['mean']:g} over"
                    f" {j['num_scored']} rows is below the minimum {j['min_mean']:g}",
                )
            )
    return found, checked


def stage_profile(
    plan: StagePlan, store: PartitionStore, *, final: bool | None = None
) -> StageProfile:
    """The profile of a stage's row groups, or of its final output (`final`: True, False, or None
    = the final output when the stage has finalize processors and a current final output)."""
    ref = plan.ref
    stage = plan.compiled.stage
    infos = store.completed(ref)
    source = "row_groups"
    finalize_info = None
    if final is not False and plan.finalizes:
        try:
            out = store.final_output(ref, plan.fingerprint.final_hex or "")
        except FinalMissingError:
            if final:
                raise
        else:
            source = "final"
            partial = final_partial(store, ref, out)
            finalize_info = {
                "rows_in": out.info.get("rows_in"),
                "rows_out": out.info.get("rows_out"),
                "steps": out.info.get("steps", []),
            }
    if source == "row_groups":
        partial = stage_partial(store, ref, infos) or TablePartial()
    configs = _config_columns(stage)
    expected = {
        column_output_name(stage, c.name): _expected_shares(c)
        for c in category_columns(stage.columns)
    }
    columns = [
        column_statistics(name, p, configs, expected.get(name))
        for name, p in partial.columns.items()
    ]
    totals = _footer_totals(infos)
    prof = StageProfile(
        workflow=plan.workflow.name,
        stage=plan.name,
        fingerprint=ref.fp12,
        source=source,
        num_records=partial.rows,
        target_num_records=stage.num_records,
        rows_in_row_groups=sum(i.rows for i in infos.values()),
        row_groups_done=len(infos),
        row_groups_total=ref.num_row_groups,
        column_statistics=columns,
        judge_scores=judge_scores(stage, partial, configs),
        finalize=finalize_info,
        **totals,
    )
    prof.drift, prof.drift_checked = drift_findings(stage, prof)
    return prof


__all__ = ["HLL_RSE", "DriftFinding", "StageProfile", "numeric_summary", "stage_profile"]
