"""Asset checks of a stage, as pure functions over the partition store and the stage plan (no
Dagster here): `dd_assets.dagster.asset_checks` wraps them as Dagster asset checks, `dd-assets check`
runs those. Each check looks at the whole stage (every row group of the current fingerprint).

Footers are read here directly, not through `PartitionStore.completed()`: the store refuses a
stage with a foreign or unreadable file (CorruptStageError), while a check must report such a file
by name and go on checking the others.

Blocking checks (severity ERROR, `dd-assets check` exits 1 when one fails) say the dataset is
incomplete, not what the config describes, or short of more rows than allowed:
`row_groups_complete`, `row_groups_current`, `schema_matches_config`,
`footer_fingerprint_matches`, `pages_intact`, `uuid_columns_unique`, `rows_within_drop_budget`
(the same test `dd-assets materialize` turns into exit code 5, so the two always agree). Warnings
(severity WARN, exit 0) describe a dataset that is otherwise acceptable: `llm_failure_rate` (the
endpoint's health), `profile_drift`.

`check_row_group` is the row-group-local part of them (footer, schema, drop budget) for one file:
the Dagster assets record it per partition for each row group a run writes (one check, so one
event).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dd_assets.config.columns import SamplerColumnConfig
from dd_assets.config.drift import category_columns
from dd_assets.config.workflow import FileSeed, StageConfig, StageSeed, column_output_name
from dd_assets.engine.images import image_columns
from dd_assets.engine.schema import joined_schema, stage_schema
from dd_assets.errors import EXIT_DROP_BUDGET, RunError, StoreError
from dd_assets.runners.finalize import needed_row_groups
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.plan import StagePlan
from dd_assets.runners.profile import stage_profile
from dd_assets.store import files, parquet
from dd_assets.store.footer import FileFooter, is_done
from dd_assets.store.layout import batch_name, key_ranges, partition_key
from dd_assets.store.partition_store import PartitionStore
from dd_assets.store.seed_files import file_source

HEAD = 10  # how many row groups / files a check names in its numbers and description
UUID_BATCH_ROWS = 65_536
ROW_GROUP_CHECK = "row_group_valid"
ROW_GROUP_CHECK_DESCRIPTION = (
    "This row group on its own: its footer names the stage's fingerprint and row group and its"
    " schema is the config's (ERROR otherwise); a WARN when it alone dropped more rows than"
    " run.max_drop_rate (the stage's total decides: rows_within_drop_budget). Recorded for each"
    " row group a run materializes."
)


@dataclass(frozen=True)
class CheckOutcome:
    name: str
    passed: bool
    blocking: bool
    description: str
    numbers: dict[str, Any] = field(default_factory=dict)

    @property
    def severity(self) -> str:
        """Dagster's AssetCheckSeverity name: a blocking check fails as ERROR, the others WARN."""
        return "ERROR" if self.blocking else "WARN"


@dataclass(frozen=True)
class CheckSpec:
    name: str
    blocking: bool
    description: str
    applies: Callable[[StagePlan], bool]
    run: Callable[[StageFiles], CheckOutcome]


# ---- what is on disk ---------------------------------------------------------------------------


class StageFiles:
    """Every row-group file of a stage's current fingerprint folder, footers read once."""

    def __init__(self, plan: StagePlan, store: PartitionStore):
        self.plan = plan
        self.ref = plan.ref
        self.store = store
        self.files = store.footers(self.ref)

    @cached_property
    def belonging(self) -> list[FileFooter]:
        return [f for f in self.files if f.mismatch(self.ref) is None]

    @cached_property
    def complete(self) -> dict[int, FileFooter]:
        """Row groups that count as done: what `PartitionStore.completed()` would return."""
        return {f.row_group: f for f in self.belonging if is_done(self.ref, f.row_group, f.range())}


# ---- helpers -------------------------------------------------------------------------------------


def _keys(row_groups: Iterable[int]) -> str:
    return key_ranges(row_groups, HEAD)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def llm_columns(stage: StageConfig) -> list[str]:
    return [c.name for c in stage.columns if c.is_llm]


def uuid_columns(stage: StageConfig) -> list[str]:
    """Output names of the stage's own uuid sampler columns (dropped ones are not checked)."""
    out = []
    for c in stage.columns:
        if isinstance(c, SamplerColumnConfig) and c.sampler_type == "uuid":
            name = column_output_name(stage, c.name)
            if name is not None:
                out.append(name)
    return out


def schema_diff(expected: pa.Schema, actual: pa.Schema) -> list[tuple[str, str]]:
    """(column, difference) pairs, each sentence naming the column: extra, missing, type, order."""
    exp = {f.name: f for f in expected}
    act = {f.name: f for f in actual}
    out = [(n, f"extra column {n!r} ({act[n].type})") for n in act if n not in exp]
    out += [(n, f"missing column {n!r} ({exp[n].type})") for n in exp if n not in act]
    for n, f in exp.items():
        if n in act and not act[n].type.equals(f.type):
            out.append((n, f"column {n!r} is {act[n].type}, config says {f.type}"))
        elif n in act and act[n].nullable != f.nullable:
            out.append((n, f"column {n!r} nullable={act[n].nullable}, config says {f.nullable}"))
    if not out and actual.names != expected.names:
        first = next(a for a, e in zip(actual.names, expected.names, strict=True) if a != e)
        out.append((first, f"columns in order {actual.names}, config says {expected.names}"))
    return out


# ---- the checks --------------------------------------------------------------------------------


def check_row_groups_complete(sf: StageFiles) -> CheckOutcome:
    # A target_records stage needs only the row groups its final output took.
    total = needed_row_groups(sf.plan, sf.store)
    done = {rg: f for rg, f in sf.complete.items() if rg < total}
    missing = [rg for rg in range(total) if rg not in done]
    through = next((rg for rg in range(total) if rg not in done), total) - 1
    not_counted = [f for f in sf.files if f.row_group not in sf.complete]
    numbers: dict[str, Any] = {
        "done": len(done),
        "total": total,
        "missing": len(missing),
        "missing_head": [partition_key(rg) for rg in missing[:HEAD]],
        "contiguous_through": partition_key(through) if through >= 0 else None,
        "records": sum(f.rows for f in done.values()),
        "files_not_counted": len(not_counted),
    }
    if not missing:
        text = f"all {total} row groups present ({numbers['records']} records)"
        if total < sf.ref.num_row_groups:
            text += (
                f"; target_records reached with them, the other"
                f" {sf.ref.num_row_groups - total} are not needed"
            )
    else:
        text = f"{len(missing)} of {total} row groups missing: {_keys(missing)}"
    if not_counted:
        names = ", ".join(f.path.name for f in not_counted[:HEAD])
        text += (
            f"; {len(not_counted)} file(s) on disk not counted (foreign, unreadable, beyond"
            f" num_records or from a shorter num_records): {names}"
        )
    return CheckOutcome("row_groups_complete", not missing, True, text, numbers)


def check_rows_within_drop_budget(sf: StageFiles) -> CheckOutcome:
    """Rows dropped over rows planned, over the whole stage (the row groups on disk), within
    `run.max_drop_rate`. Per stage, not per row group: one bad row in a small row group is not
    a problem, a systematic one shows in the total."""
    budget = sf.plan.workflow.run.max_drop_rate
    worst: tuple[float, int] | None = None
    with_drops: list[int] = []
    dropped_total = planned_total = 0
    reasons: dict[str, int] = {}
    for rg, f in sorted(sf.complete.items()):
        stats = f.stats
        start, end = f.range() or (0, 0)
        planned = int(stats.get("planned_rows", end - start) or 0)
        dropped = int(stats.get("dropped_rows", 0) or 0)
        dropped_total += dropped
        planned_total += planned
        for reason, n in (stats.get("drop_reasons") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
        rate = dropped / planned if planned else 0.0
        if dropped:
            with_drops.append(rg)
        if worst is None or rate > worst[0]:
            worst = (rate, rg)
    rate = dropped_total / planned_total if planned_total else 0.0
    over = rate > budget
    top = dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:5])
    numbers: dict[str, Any] = {
        "row_groups_checked": len(sf.complete),
        "dropped_rows": dropped_total,
        "planned_rows": planned_total,
        "drop_rate": round(rate, 4),
        "budget": budget,
        "row_groups_with_drops": len(with_drops),
        "worst_row_group": partition_key(worst[1]) if worst else None,
        "worst_drop_rate": round(worst[0], 4) if worst else 0.0,
        "top_drop_reasons": top,
    }
    if worst is None:
        text = "no row groups to check"
    else:
        text = (
            f"{dropped_total} of {planned_total} planned rows dropped ({_pct(rate)});"
            f" {'over' if over else 'within'} run.max_drop_rate {_pct(budget)}"
        )
        if dropped_total:
            shown = ", ".join(f"{r} {n}" for r, n in top.items())
            text += (
                f"; in row group(s) {_keys(with_drops)} (worst {partition_key(worst[1])} at"
                f" {_pct(worst[0])}); reasons: {shown}"
            )
    return CheckOutcome("rows_within_drop_budget", not over, True, text, numbers)


class DropBudgetError(RunError):
    """Every row group is there, but a stage dropped more rows than run.max_drop_rate allows."""

    exit_code = EXIT_DROP_BUDGET


def drop_budget_error(
    plans: Iterable[StagePlan], store: PartitionStore, config: str = "CONFIG"
) -> DropBudgetError | None:
    """The error `dd-assets materialize` ends with when a stage is over its drop budget: the
    rows_within_drop_budget check itself, so the exit code and `dd-assets check` agree."""
    over = []
    for plan in plans:
        (outcome,) = run_checks(plan, store, ["rows_within_drop_budget"])
        if not outcome.passed:
            over.append((plan.name, outcome.description))
    if not over:
        return None
    first = over[0][0]
    return DropBudgetError(
        "over the drop budget: "
        + "; ".join(f"stage {name}: {text}" for name, text in over)
        + f". List them with `dd-assets export {config} --stage {first} --drops -o drops.jsonl`;"
        " ask them again with `dd-assets materialize --retry-dropped` once the cause is fixed,"
        " or raise run.max_drop_rate"
    )


def parquet_schema(schema: pa.Schema) -> pa.Schema:
    """The schema a file written with this schema reads back with (the store writes with
    pq.write_table's defaults; parquet has no second unit, so timestamp[s] reads back as [ms])."""
    sink = pa.BufferOutputStream()
    parquet.write_table(schema.empty_table(), sink)
    return pq.read_schema(pa.BufferReader(sink.getvalue()))


def expected_schema(plan: StagePlan, store: PartitionStore) -> pa.Schema:
    """stage_schema with the seed's columns resolved where only data can tell: a seed file's
    schema, a finalized upstream's final output, recursively up the chain."""
    seed = plan.compiled.stage.seed
    seed_schema: pa.Schema | None = None
    if isinstance(seed, FileSeed):
        seed_schema = file_source(seed.path).schema
    elif (
        isinstance(seed, StageSeed)
        and seed.mode == "sample"
        and plan.upstreams[0].compiled.stage.finalize
    ):
        final, _ = store.final_paths(plan.upstreams[0].ref)
        seed_schema = (
            files.parquet_file(final).schema_arrow.remove_metadata()
            if files.exists(final)
            else None
        )
    elif plan.upstreams:
        seed_schema = joined_schema([expected_schema(up, store) for up in plan.upstreams])
    return stage_schema(plan.workflow, plan.name, seed_schema)


def check_schema_matches_config(sf: StageFiles) -> CheckOutcome:
    expected = parquet_schema(expected_schema(sf.plan, sf.store))
    mismatches: dict[str, list[str]] = {}
    columns: set[str] = set()
    checked = 0
    for f in sf.belonging:
        if f.schema is None:
            continue
        checked += 1
        diff = schema_diff(expected, f.schema)
        if diff:
            mismatches[f.path.name] = [text for _, text in diff]
            columns.update(col for col, _ in diff)
    numbers: dict[str, Any] = {
        "files_checked": checked,
        "mismatches": len(mismatches),
        "mismatched_columns": sorted(columns),
        "first_mismatches": {k: v for k, v in list(mismatches.items())[:HEAD]},
        "expected_columns": expected.names,
    }
    if not mismatches:
        text = f"{checked} file(s) match the config's {len(expected)} columns"
    else:
        name, diff = next(iter(mismatches.items()))
        text = (
            f"{len(mismatches)} of {checked} file(s) differ from the config (columns:"
            f" {', '.join(sorted(columns))}); {name}: {'; '.join(diff)}"
        )
    return CheckOutcome("schema_matches_config", not mismatches, True, text, numbers)


def _files_outcome(
    name: str, sf: StageFiles, bad: dict[str, str], checked: int, ok_text: str, problem: str
) -> CheckOutcome:
    """The file-level checks name the same things the same way: how many files, the first few by
    name with what is wrong, and the one fix (move them out and regenerate)."""
    if not bad:
        text = ok_text
    else:
        shown = "; ".join(f"{n}: {e}" for n, e in list(bad.items())[:3])
        text = (
            f"{len(bad)} of {checked} file(s) in {sf.store.files_dir(sf.ref)} {problem}"
            f" ({shown}{' …' if len(bad) > 3 else ''}); move them out of the folder and rerun"
            " materialize to regenerate those row groups"
        )
    return CheckOutcome(name, not bad, True, text, {})


def check_footer_fingerprint_matches(sf: StageFiles) -> CheckOutcome:
    bad = {f.path.name: p for f in sf.files if (p := f.mismatch(sf.ref)) is not None}
    outcome = _files_outcome(
        "footer_fingerprint_matches",
        sf,
        bad,
        len(sf.files),
        f"{len(sf.files)} file footer(s) carry fingerprint {sf.ref.fp12}",
        f"do not belong to fingerprint {sf.ref.fp12}",
    )
    outcome.numbers.update(
        files=len(sf.files),
        mismatches=len(bad),
        fingerprint=sf.ref.fp12,
        first_mismatches=dict(list(bad.items())[:HEAD]),
    )
    return outcome


def check_pages_intact(sf: StageFiles) -> CheckOutcome:
    """Every page of every file whose footer reads, read back with checksum verification: a page
    corrupted under an intact footer passes every footer-only check and decodes into different
    values (or fails only in finalize). Files whose footer does not read are the fingerprint
    check's to report."""
    readable = [f for f in sf.files if f.error is None]
    bad = {f.path.name: err for f in readable if (err := files.verify_pages(f.path)) is not None}
    outcome = _files_outcome(
        "pages_intact",
        sf,
        bad,
        len(readable),
        f"every page of {len(readable)} file(s) reads back intact",
        "have pages that do not read back intact",
    )
    outcome.numbers.update(
        files_checked=len(readable), corrupt=len(bad), first_corrupt=dict(list(bad.items())[:HEAD])
    )
    return outcome


def check_image_files_present(sf: StageFiles) -> CheckOutcome:
    """Every image file the row groups' image cells name is on disk (store/images.py): a row
    group without its images is missing data, whatever its parquet file says."""
    columns = image_columns(sf.plan.compiled.stage)
    lacking = {
        rg: rel
        for rg, f in sorted(sf.complete.items())
        if (rel := sf.store.missing_image(sf.ref, f.path, columns)) is not None
    }
    numbers: dict[str, Any] = {
        "row_groups_checked": len(sf.complete),
        "row_groups_lacking_images": len(lacking),
        "first_missing": [
            str(sf.store.stage_dir(sf.ref) / r) for r in list(lacking.values())[:HEAD]
        ],
    }
    if not lacking:
        text = f"every image file of {len(sf.complete)} row group(s) is on disk"
    else:
        rg, rel = next(iter(lacking.items()))
        text = (
            f"{len(lacking)} row group(s) ({_keys(lacking)}) lack image files, e.g."
            f" {sf.store.stage_dir(sf.ref) / rel} (row group {partition_key(rg)}); they count as"
            " missing: rerun materialize to make them again (answers come from the request cache)"
        )
    return CheckOutcome("image_files_present", not lacking, True, text, numbers)


def check_llm_failure_rate(sf: StageFiles) -> CheckOutcome:
    """Failed LLM cells over LLM cells, from footer stats. A cell that fails for good (refused,
    too large, unusable) drops its row with the reason `<column>: <kind>`, so failed cells = rows
    dropped for an LLM column; every kept row has one answered cell per LLM column. Cells of rows
    dropped for another reason are not counted (the rate errs high, never low). Transient faults
    never reach a saved row group (their row group is not saved). Same measure as the early
    stop, over the whole stage."""
    threshold = sf.plan.workflow.run.early_stop.max_failure_rate
    llm_cols = llm_columns(sf.plan.compiled.stage)
    prefixes = tuple(f"{c}: " for c in llm_cols)
    failed = ok = 0
    usage: dict[str, int] = {}
    for f in sf.complete.values():
        stats = f.stats
        failed += sum(
            int(n) for r, n in (stats.get("drop_reasons") or {}).items() if r.startswith(prefixes)
        )
        ok += f.rows * len(llm_cols)
        for k, v in (stats.get("llm") or {}).items():
            if k in ("llm_requests", "llm_retries", "llm_failures", "llm_cache_hits") and v:
                usage[k] = usage.get(k, 0) + int(v)
    cells = failed + ok
    rate = failed / cells if cells else 0.0
    numbers: dict[str, Any] = {
        "cells": cells,
        "failed_cells": failed,
        "failure_rate": round(rate, 4),
        "threshold": threshold,
        "llm_columns": llm_cols,
        **{k: usage.get(k, 0) for k in ("llm_requests", "llm_retries", "llm_failures")},
        "llm_cache_hits": usage.get("llm_cache_hits", 0),
    }
    passed = rate < threshold
    text = (
        f"{failed} of {cells} LLM cells failed ({_pct(rate)}; threshold {_pct(threshold)})"
        if cells
        else "no LLM cells on disk yet"
    )
    return CheckOutcome("llm_failure_rate", passed, False, text, numbers)


def _column(sf: StageFiles, column: str) -> Iterator[pa.Array]:
    """A column of every complete file, one batch at a time. A file without it is the schema
    check's to name, a file whose pages do not read back is pages_intact's."""
    for f in sorted(sf.complete.values(), key=lambda f: f.row_group):
        if f.schema is None or column not in f.schema.names:
            continue
        with contextlib.suppress(OSError, pa.ArrowException):
            for batch in files.iter_batches(f.path, [column], UUID_BATCH_ROWS):
                yield batch.column(0)


def _hashes(sf: StageFiles, column: str) -> tuple[np.ndarray, int]:
    """64-bit hashes of a column's non-null values, one column and one batch at a time."""
    chunks: list[np.ndarray] = []
    nulls = 0
    for values in _column(sf, column):
        nulls += values.null_count
        chunks.append(
            np.fromiter((hash(v) for v in values.drop_null().to_pylist()), dtype=np.int64)
        )
    return (np.concatenate(chunks) if chunks else np.empty(0, np.int64)), nulls


def _duplicates(sf: StageFiles, column: str) -> tuple[int, int, int, list[Any]]:
    """(rows, distinct, nulls, sample duplicated values), exact: hashes (8 bytes a row) find
    candidates, a second streaming pass counts the candidate values themselves, so a hash
    collision never reports a duplicate that is not one."""
    hashes, nulls = _hashes(sf, column)
    hashes.sort()
    same = hashes[1:] == hashes[:-1]
    if not same.any():
        return len(hashes), len(hashes), nulls, []
    candidates = set(hashes[1:][same].tolist())
    counts: dict[Any, int] = {}
    for values in _column(sf, column):
        for v in values.drop_null().to_pylist():
            if hash(v) in candidates:
                counts[v] = counts.get(v, 0) + 1
    extra = sum(n - 1 for n in counts.values())
    sample = [v for v, n in counts.items() if n > 1][:5]
    return len(hashes), len(hashes) - extra, nulls, sample


def check_uuid_columns_unique(sf: StageFiles) -> CheckOutcome:
    cols = uuid_columns(sf.plan.compiled.stage)
    per_column: dict[str, dict[str, Any]] = {}
    samples: dict[str, list[Any]] = {}
    for c in cols:
        rows, distinct, nulls, sample = _duplicates(sf, c)
        per_column[c] = {
            "rows": rows,
            "distinct": distinct,
            "duplicates": rows - distinct,
            "nulls": nulls,
        }
        if sample:
            samples[c] = sample
    dup = sum(v["duplicates"] for v in per_column.values())
    numbers: dict[str, Any] = {
        "columns": cols,
        "rows": max((v["rows"] for v in per_column.values()), default=0),
        "distinct": min((v["distinct"] for v in per_column.values()), default=0),
        "duplicates": dup,
        "per_column": per_column,
        "duplicate_samples": samples,
    }
    if dup:
        bad = [
            f"{c} ({v['duplicates']} duplicate(s))"
            for c, v in per_column.items()
            if v["duplicates"]
        ]
        text = f"{dup} duplicate id(s) across the stage: {', '.join(bad)}"
    else:
        text = f"{', '.join(cols)}: {numbers['rows']} ids, all distinct"
    return CheckOutcome("uuid_columns_unique", not dup, True, text, numbers)


def check_row_groups_current(sf: StageFiles) -> CheckOutcome:
    """Row groups built from upstream data that was regenerated since mix two generations."""
    lineage = Lineage(sf.store)
    try:
        stale = {
            rg: reason
            for rg, f in sorted(sf.complete.items())
            if (reason := lineage.stale_reason(sf.plan, f)) is not None
        }
    except StoreError as exc:  # an upstream folder the store refuses: say so, do not guess
        return CheckOutcome(
            "row_groups_current", False, True, f"cannot compare with the upstream data: {exc}"
        )
    numbers: dict[str, Any] = {
        "row_groups_checked": len(sf.complete),
        "stale": len(stale),
        "stale_head": [partition_key(rg) for rg in list(stale)[:HEAD]],
        "upstreams": [up.name for up in sf.plan.upstreams],
    }
    if not stale:
        text = (
            f"{len(sf.complete)} row group(s) match the upstream data they were built from"
            if sf.plan.upstreams
            else "no upstream stage: nothing to compare"
        )
    else:
        reasons = "; ".join(sorted(set(stale.values())))
        text = (
            f"{len(stale)} row group(s) ({_keys(stale)}) {reasons}; materialize"
            f" {sf.plan.name!r} to regenerate exactly those"
        )
    return CheckOutcome("row_groups_current", not stale, True, text, numbers)


def check_profile_drift(sf: StageFiles) -> CheckOutcome:
    """The profile's drift findings (runners/profile/stage.py, thresholds under the stage's
    `drift:`): category shares far from their weights, judge means under their minimum."""
    try:
        prof = stage_profile(sf.plan, sf.store)
    except StoreError as exc:
        return CheckOutcome("profile_drift", False, False, f"cannot profile the stage: {exc}")
    numbers: dict[str, Any] = {
        "records": prof.num_records,
        "source": prof.source,
        "checked": prof.drift_checked,
        "findings": len(prof.drift),
        "first_findings": [f.message for f in prof.drift[:HEAD]],
    }
    if prof.drift:
        text = f"{len(prof.drift)} drift finding(s): " + "; ".join(
            f.message for f in prof.drift[:3]
        )
        text += " …" if len(prof.drift) > 3 else ""
    elif prof.drift_checked:
        text = f"within the configured thresholds: {', '.join(prof.drift_checked)}"
    else:
        text = "no rows to check yet"
    return CheckOutcome("profile_drift", not prof.drift, False, text, numbers)


def drift_applies(plan: StagePlan) -> bool:
    stage = plan.compiled.stage
    return bool(category_columns(stage.columns) or stage.drift.judge_min_mean)


def check_row_group(plan: StagePlan, footer: FileFooter, expected: pa.Schema) -> CheckOutcome:
    """One row group on its own: its footer names the stage's fingerprint and its row group, its
    schema is the config's (`expected`: `parquet_schema(expected_schema(...))`, computed once per
    run), and it dropped no more rows than the budget. The first two fail as ERROR; the budget
    only warns here, since the stage's total is what `rows_within_drop_budget` judges."""
    budget = plan.workflow.run.max_drop_rate
    problems: list[str] = []
    mismatch = footer.mismatch(plan.ref)
    if mismatch:
        problems.append(mismatch)
    if footer.schema is not None:
        problems += [text for _, text in schema_diff(expected, footer.schema)]
    stats = footer.stats
    start, end = footer.range() or (0, 0)
    planned = int(stats.get("planned_rows", end - start) or 0)
    dropped = int(stats.get("dropped_rows", 0) or 0)
    rate = dropped / planned if planned else 0.0
    numbers: dict[str, Any] = {
        "rows": footer.rows,
        "planned_rows": planned,
        "dropped_rows": dropped,
        "drop_rate": round(rate, 4),
        "budget": budget,
    }
    if problems:
        numbers["problems"] = problems
        return CheckOutcome(ROW_GROUP_CHECK, False, True, "; ".join(problems), numbers)
    if rate > budget:
        text = f"{dropped} of {planned} rows dropped ({_pct(rate)}, budget {_pct(budget)})"
        return CheckOutcome(ROW_GROUP_CHECK, False, False, text, numbers)
    text = f"{footer.rows} rows, schema and footer as configured, {_pct(rate)} dropped"
    return CheckOutcome(ROW_GROUP_CHECK, True, False, text, numbers)


def stage_files_present(plan: StagePlan, store: PartitionStore) -> bool:
    """Whether every row group of the stage has a file (a directory listing, no footer read): the
    cheap test of whether the whole-stage checks are worth running at the end of a run."""
    names = set(files.names(store.files_dir(plan.ref)))
    return all(batch_name(rg) in names for rg in range(plan.ref.num_row_groups))


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec(
        "row_groups_complete",
        True,
        "Every row group of the stage (partitions 00000 … last) is on disk for the current"
        " fingerprint with the row range the config gives it.",
        lambda plan: True,
        check_row_groups_complete,
    ),
    CheckSpec(
        "row_groups_current",
        True,
        "Every row group was built from the upstream data now on disk (not from data regenerated"
        " since): the stage does not mix two generations.",
        lambda plan: bool(plan.upstreams),
        check_row_groups_current,
    ),
    CheckSpec(
        "rows_within_drop_budget",
        True,
        "Rows dropped (refused or unusable LLM cells, expression errors) over rows planned, over"
        " the whole stage, stay within run.max_drop_rate.",
        lambda plan: True,
        check_rows_within_drop_budget,
    ),
    CheckSpec(
        "schema_matches_config",
        True,
        "Each file's Arrow schema equals the schema the config implies (column names, order,"
        " types).",
        lambda plan: True,
        check_schema_matches_config,
    ),
    CheckSpec(
        "footer_fingerprint_matches",
        True,
        "Every file's footer names the stage's fingerprint (the asset's code_version) and its own"
        " row group.",
        lambda plan: True,
        check_footer_fingerprint_matches,
    ),
    CheckSpec(
        "pages_intact",
        True,
        "Every data page of every file reads back with its checksum verified (a page corrupted"
        " under an intact footer fails here, naming the file).",
        lambda plan: True,
        check_pages_intact,
    ),
    CheckSpec(
        "image_files_present",
        True,
        "Every image file an image column's cells name is on disk beside its row group.",
        lambda plan: bool(image_columns(plan.compiled.stage)),
        check_image_files_present,
    ),
    CheckSpec(
        "llm_failure_rate",
        False,
        "LLM cells that failed for good over all LLM cells stays under"
        " run.early_stop.max_failure_rate.",
        lambda plan: bool(llm_columns(plan.compiled.stage)),
        check_llm_failure_rate,
    ),
    CheckSpec(
        "uuid_columns_unique",
        True,
        "uuid sampler columns hold no duplicate value across the whole stage.",
        lambda plan: bool(uuid_columns(plan.compiled.stage)),
        check_uuid_columns_unique,
    ),
    CheckSpec(
        "profile_drift",
        False,
        "The stage's profile stays near its config: each category sampler's shares within"
        " drift.share_tolerance (plus sampling noise) of its weights, each judge score's mean at"
        " or above drift.judge_min_mean.",
        drift_applies,
        check_profile_drift,
    ),
)


def checks_for(plan: StagePlan) -> list[CheckSpec]:
    """The checks that apply to a stage (LLM and uuid checks only where such columns exist)."""
    return [c for c in CHECKS if c.applies(plan)]


def run_checks(
    plan: StagePlan, store: PartitionStore, names: Iterable[str] | None = None
) -> list[CheckOutcome]:
    """Run the applicable checks (or those named) of one stage; footers are read once."""
    wanted = set(names) if names is not None else None
    specs = [c for c in checks_for(plan) if wanted is None or c.name in wanted]
    if not specs:
        return []
    files = StageFiles(plan, store)
    return [spec.run(files) for spec in specs]
