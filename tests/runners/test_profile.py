"""Stage profiles: figures equal pyarrow/numpy computations on the same rows, partials merge to
the same profile in any order and whatever the cache holds, and the drift check."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dd_assets.config import WorkflowConfigError, load_workflow
from dd_assets.runners.checks import run_checks
from dd_assets.runners.finalize import finalize_stage
from dd_assets.runners.materialize import materialize
from dd_assets.runners.plan import plan_workflow
from dd_assets.runners.profile import stage_profile
from dd_assets.runners.profile.partial import TOKEN_PATTERN, TablePartial
from dd_assets.runners.profile.sketch import HLL_RSE
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.workflows import write_config

COLUMNS: list[dict[str, Any]] = [
    {"name": "rid", "column_type": "sampler", "sampler_type": "uuid", "params": {}},
    {
        "name": "topic",
        "column_type": "sampler",
        "sampler_type": "category",
        "params": {"values": ["math", "art", "law"], "weights": [0.5, 0.3, 0.2]},
    },
    {
        "name": "x",
        "column_type": "sampler",
        "sampler_type": "gaussian",
        "params": {"mean": 10, "stddev": 3},
    },
    {
        "name": "n",
        "column_type": "sampler",
        "sampler_type": "poisson",
        "params": {"mean": 4},
    },
    {
        "name": "when",
        "column_type": "sampler",
        "sampler_type": "datetime",
        "params": {"start": "2024-01-01", "end": "2024-03-01"},
    },
    {
        "name": "note",
        "column_type": "expression",
        "expr": "{% if n > 5 %}{{ topic }} note, {{ n }} items!{% elif n == 0 %}  {% endif %}",
    },
]


def _config(num_records: int = 4000, buffer_size: int = 1000, **stage: Any) -> dict[str, Any]:
    return {
        "name": "prof",
        "stages": [
            {
                "name": "s",
                "num_records": num_records,
                "buffer_size": buffer_size,
                "columns": COLUMNS,
                **stage,
            }
        ],
    }


def _run(tmp_path: Path, cfg: dict[str, Any]):
    tmp_path.mkdir(parents=True, exist_ok=True)
    plans = plan_workflow(load_workflow(write_config(tmp_path / "wf.yaml", cfg)))
    store = PartitionStore(tmp_path / "dd-data")
    p = plans["s"]
    materialize(p, store, range(p.ref.num_row_groups))
    return p, store


def _all_rows(store: PartitionStore, plan) -> pa.Table:
    return store.dataset(plan.ref).to_table()


def test_profile_figures_equal_pyarrow(tmp_path: Path) -> None:
    plan, store = _run(tmp_path, _config())
    prof = stage_profile(plan, store)
    t = _all_rows(store, plan)
    assert prof.num_records == t.num_rows == prof.target_num_records == 4000
    assert prof.percent_complete == 100.0
    assert (prof.row_groups_done, prof.row_groups_total) == (4, 4)
    assert [c["column_name"] for c in prof.column_statistics] == t.column_names

    # categorical: exact counts and shares, configured weights beside them
    topic = prof.column("topic")
    counts = {d["values"]: d["counts"] for d in pc.value_counts(t["topic"]).to_pylist()}
    assert topic["distribution_type"] == "categorical"
    assert {v["value"]: v["count"] for v in topic["top_values"]} == counts
    for v in topic["top_values"]:
        assert v["share"] == pytest.approx(counts[v["value"]] / t.num_rows, abs=1e-6)
    assert {v["value"]: v["expected_share"] for v in topic["top_values"]} == {
        "math": 0.5,
        "art": 0.3,
        "law": 0.2,
    }
    assert topic["num_unique"] == 3 and topic["num_unique_exact"]
    assert topic["most_common_value"] == max(counts, key=counts.get)

    # numeric: exact count/min/max/mean/stddev; quantiles within the reported error
    for name in ("x", "n"):
        col = prof.column(name)
        values = t[name].to_numpy()
        d = col["distribution"]
        assert col["num_null"] == t[name].null_count == 0
        assert d["min"] == pytest.approx(values.min()) and d["max"] == pytest.approx(values.max())
        assert d["mean"] == pytest.approx(values.mean(), rel=1e-5)
        assert d["stddev"] == pytest.approx(values.std(ddof=1), rel=1e-5)
        for key, q in (("p05", 0.05), ("p50", 0.5), ("p95", 0.95)):
            exact = np.quantile(values, q, method="lower")
            assert abs(d["quantiles"][key] - exact) <= d["quantile_error"] + 1e-9, (name, key)
        edges, hist = d["histogram"]["edges"], d["histogram"]["counts"]
        expected, _ = np.histogram(values, bins=edges)
        expected[-1] -= int(np.sum(values == edges[-1]))  # numpy closes the last bin; ours [lo, hi)
        assert hist == expected.tolist() and sum(hist) == t.num_rows
    n_col = prof.column("n")
    assert n_col["distribution"]["quantile_error"] == 0  # integers in a small range: exact
    assert n_col["num_unique"] == len(pc.unique(t["n"]))
    n_counts = {d["values"]: d["counts"] for d in pc.value_counts(t["n"]).to_pylist()}
    assert len(n_col["top_values"]) == min(10, len(n_counts))
    assert all(n_counts[v["value"]] == v["count"] for v in n_col["top_values"])
    assert n_col["top_values"][0]["count"] == max(n_counts.values())

    # datetime: min/max as ISO text, exact
    when = prof.column("when")
    assert when["distribution_type"] == "datetime"
    ts = t["when"].cast(pa.int64()).to_numpy()
    unit = t.schema.field("when").type.unit
    assert when["distribution"]["min"] == pc.min(t["when"]).as_py().strftime("%Y-%m-%dT%H:%M:%S")
    assert when["distribution"]["max"] == pc.max(t["when"]).as_py().strftime("%Y-%m-%dT%H:%M:%S")
    assert when["distribution"]["quantile_error_unit"] == unit
    assert when["num_unique"] == pytest.approx(len(np.unique(ts)), rel=4 * HLL_RSE)

    # high-cardinality text: HyperLogLog within 4 standard errors; exact lengths
    rid = prof.column("rid")
    assert not rid["num_unique_exact"]
    assert rid["num_unique"] == pytest.approx(t.num_rows, rel=4 * HLL_RSE)
    assert rid["percent_unique"] == pytest.approx(100 * rid["num_unique"] / t.num_rows, abs=0.01)
    assert rid["length"]["chars"]["mean"] == pytest.approx(
        pc.mean(pc.utf8_length(t["rid"])).as_py(), rel=1e-6
    )

    # empty share: "" and whitespace-only values
    note = prof.column("note")
    empties = pc.sum(pc.equal(pc.utf8_trim_whitespace(t["note"]), "")).as_py()
    assert empties > 0 and note["num_empty"] == empties
    assert note["percent_empty"] == round(100 * empties / t.num_rows, 2)
    assert note["num_unique"] == len(pc.unique(t["note"]))
    assert note["sample_values"] == t["note"].slice(0, 3).to_pylist()


def test_struct_list_and_text_fields_equal_pyarrow() -> None:
    rng = np.random.default_rng(3)
    n = 3000
    scores = rng.integers(1, 6, n)
    texts = [("" if k % 11 == 0 else f"Answer {k}: yes, really.") for k in range(n)]
    t = pa.table(
        {
            "judge": pa.array(
                [
                    None if k % 97 == 0 else {"helpful": {"score": int(s), "reasoning": texts[k]}}
                    for k, s in enumerate(scores)
                ]
            ),
            "answer": pa.array([None if k % 13 == 0 else texts[k] for k in range(n)]),
            "tags": pa.array([["a"] * (k % 4) for k in range(n)]),
        }
    )
    p = TablePartial.of(t)
    score = t["judge"].combine_chunks().flatten()[0].flatten()[0]
    sp = p.columns["judge.helpful.score"]
    assert sp.nulls == score.null_count == len(range(0, n, 97))
    assert sp.numeric.mean == pytest.approx(pc.mean(score).as_py())
    assert sp.values == {
        d["values"]: d["counts"] for d in pc.value_counts(score.drop_null()).to_pylist()
    }
    ans = t["answer"]
    ap = p.columns["answer"]
    assert ap.nulls == ans.null_count
    assert ap.empty == pc.sum(pc.equal(ans, "")).as_py()
    assert ap.chars.mean == pytest.approx(pc.mean(pc.utf8_length(ans)).as_py())
    assert ap.tokens.mean == pytest.approx(
        pc.mean(pc.count_substring_regex(ans, TOKEN_PATTERN)).as_py()
    )
    assert p.columns["tags"].items.mean == pytest.approx(
        pc.mean(pc.list_value_length(t["tags"])).as_py()
    )


def test_partials_merge_in_any_order_to_the_whole() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    t = pa.table(
        {
            "f": rng.normal(0, 1e3, n),
            "i": rng.integers(-50, 5000, n),
            "s": pa.array([f"v{k % 700}" for k in range(n)]),
        }
    )
    parts = [TablePartial.of(t.slice(o, 500)) for o in range(0, n, 500)]
    parts = [TablePartial.from_json(json.loads(json.dumps(p.to_json()))) for p in parts]
    forward, backward = parts[0], parts[-1]
    for p in parts[1:]:
        forward = forward.merge(p)
    for p in reversed(parts[:-1]):
        backward = p.merge(backward)
    whole = TablePartial.of(t)
    for name in t.column_names:
        a, b, w = forward.columns[name], backward.columns[name], whole.columns[name]
        assert a.distinct.count() == b.distinct.count() == w.distinct.count()
        for sketch in ("numeric", "chars"):
            sa, sw = getattr(a, sketch), getattr(w, sketch)
            if sa is not None:
                assert (sa.k, sa.base, sa.lo, sa.hi) == (sw.k, sw.base, sw.lo, sw.hi)
                assert sa.counts.tolist() == sw.counts.tolist()
                assert sa.counts.tolist() == getattr(b, sketch).counts.tolist()


def test_cache_is_only_a_cache(tmp_path: Path) -> None:
    plan, store = _run(tmp_path, _config(num_records=2000))
    first = stage_profile(plan, store).to_dict()
    folder = store.profile_dir(plan.ref)
    files = sorted(p for p in folder.iterdir() if p.name.startswith("rg_"))
    assert len(files) == 2  # one partial per row group, written as it landed
    (folder / "merged.json").unlink()  # the kept fold of both (else no partial is read)
    files[0].write_text("{not json")
    assert stage_profile(plan, store).to_dict() == first
    shutil.rmtree(folder)
    assert stage_profile(plan, store).to_dict() == first
    assert sorted(p.name[:8] for p in folder.iterdir()) == ["merged.j", "rg_00000", "rg_00001"]


def _drift(tmp_path: Path, finalize: list[dict[str, Any]], **drift: Any):
    cfg = _config(num_records=3000, finalize=finalize, drift=drift)
    plan, store = _run(tmp_path, cfg)
    finalize_stage(plan, store)
    return plan, store


@pytest.mark.slow
def test_drift_fires_on_a_skewed_sampler_and_not_on_a_fair_one(tmp_path: Path) -> None:
    # fair: a filter that ignores the topic keeps its shares
    plan, store = _drift(tmp_path / "fair", [{"processor_type": "filter", "expr": "{{ x > 8 }}"}])
    prof = stage_profile(plan, store)
    assert prof.source == "final" and prof.num_records < 3000
    assert prof.drift == [] and prof.drift_checked == ["topic (shares ±0.05)"]
    (check,) = run_checks(plan, store, names=["profile_drift"])
    assert check.passed and not check.blocking
    # skewed: "law" rows mostly lost (20% configured, ~6% observed)
    skew = [{"processor_type": "filter", "expr": "{{ topic != 'law' or n > 5 }}"}]
    plan, store = _drift(tmp_path / "skewed", skew)
    prof = stage_profile(plan, store)
    law = next(f for f in prof.drift if f.value == "law")
    assert law.check == "share" and law.expected == 0.2 and law.observed < 0.1
    (check,) = run_checks(plan, store, names=["profile_drift"])
    assert not check.passed and check.severity == "WARN" and "topic='law'" in check.description
    # a looser tolerance accepts the same rows
    plan, store = _drift(tmp_path / "loose", skew, column_tolerance={"topic": 0.2})
    assert stage_profile(plan, store).drift == []


def test_drift_thresholds_are_validated_and_stay_out_of_the_fingerprint(tmp_path: Path) -> None:
    plain = plan_workflow(load_workflow(write_config(tmp_path / "a.yaml", _config())))
    tuned = plan_workflow(
        load_workflow(
            write_config(
                tmp_path / "b.yaml",
                _config(drift={"share_tolerance": 0.01, "column_tolerance": {"topic": 0.02}}),
            )
        )
    )
    assert plain["s"].ref.fingerprint == tuned["s"].ref.fingerprint
    with pytest.raises(WorkflowConfigError) as exc:
        load_workflow(
            write_config(
                tmp_path / "c.yaml",
                _config(drift={"column_tolerance": {"x": 0.1}, "judge_min_mean": {"q.h": 3}}),
            )
        )
    text = str(exc.value)
    assert "stages[0].drift.column_tolerance.x" in text and "'x' is not a category sampler" in text
    assert "stages[0].drift.judge_min_mean.q.h" in text


def test_profile_reads_only_partials_once_cached(tmp_path: Path, monkeypatch) -> None:
    plan, store = _run(tmp_path, _config(num_records=2000))
    first = stage_profile(plan, store).to_dict()

    def no_reads(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a row-group file was read")

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", no_reads)
    assert stage_profile(plan, store).to_dict() == first
    assert math.isclose(first["percent_complete"], 100.0)


def test_a_kept_fold_of_a_prefix_gives_the_profile_a_fold_from_the_start_gives(
    tmp_path: Path, monkeypatch
) -> None:
    from dd_assets.runners.profile import partials

    plan, store = _run(tmp_path, _config(num_records=6000))
    merged_file = store.profile_dir(plan.ref) / partials.MERGED
    folded: list[int] = []
    real = partials.row_group_partial

    def counted(store_, ref, info):
        folded.append(info.row_group)
        return real(store_, ref, info)

    monkeypatch.setattr(partials, "row_group_partial", counted)

    def from_the_start() -> dict:
        merged_file.unlink(missing_ok=True)
        return stage_profile(plan, store).to_dict()

    def row_group_file(rg: int) -> Path:
        return store.completed(plan.ref)[rg].path

    # Row groups 4 and 5 not there yet, then made: the kept fold of 0-3 is folded on.
    for rg in (4, 5):
        row_group_file(rg).unlink()
    stage_profile(plan, store)
    materialize(plan, store, range(plan.ref.num_row_groups))
    folded.clear()
    resumed = stage_profile(plan, store).to_dict()
    assert folded == [4, 5]
    folded.clear()
    assert stage_profile(plan, store).to_dict() == resumed and folded == []
    assert resumed == from_the_start()
    # A hole in the middle filled (not a prefix of the kept fold): folded from the start.
    row_group_file(2).unlink()
    stage_profile(plan, store)
    materialize(plan, store, range(plan.ref.num_row_groups))
    folded.clear()
    assert stage_profile(plan, store).to_dict() == resumed and folded == [0, 1, 2, 3, 4, 5]
    # An unreadable kept fold is a cache miss, not an error.
    merged_file.write_text("{not json")
    assert stage_profile(plan, store).to_dict() == resumed
