"""A chain as users run it: `dd-assets materialize` over a DAG of stages (row-group pipeline,
finalize, a stage sampling the final output, a branch), then growing a finalized stage (refused,
nothing written), `dd-assets unseal`, and export of the final output."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pyarrow.dataset as pads
import pytest

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.dagster.build import build_definitions
from dd_assets.runners.plan import plan_workflow
from dd_assets.testing.workflows import people_config, snapshot, write_config

pytestmark = [pytest.mark.slow]


def _config(n: int = 400) -> dict:
    cfg = people_config(num_records=n, buffer_size=100, downstream=True)  # people -> notes
    cfg["stages"][0]["finalize"] = [
        {"processor_type": "filter", "expr": "{{ city != 'Oslo' }}"},
        {"processor_type": "drop_columns", "column_names": ["line"]},
    ]
    cfg["stages"].append(
        {
            "name": "picked",
            "num_records": 120,
            "buffer_size": 40,
            "seed": {"stage": "people", "mode": "sample", "strategy": "shuffle"},
            "columns": [{"name": "tag", "column_type": "expression", "expr": "{{ city }}"}],
        }
    )
    return cfg


@pytest.fixture
def env(data_root: Path) -> Path:
    return data_root


def test_chain_finalize_sample_seal_unseal_export(env: Path, tmp_path: Path, capsys) -> None:
    cfg = write_config(tmp_path / "wf.yaml", _config())
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "people: 4/4 row groups, 400 records" in out
    assert "notes: 4/4 row groups" in out
    assert "people: final: " in out and "picked: 3/3 row groups, 120 records" in out

    instance = dg.DagsterInstance.get()
    assert instance.get_latest_materialization_event(dg.AssetKey(["wf", "people_final"]))
    assert len(instance.get_materialized_partitions(dg.AssetKey(["wf", "notes"]))) == 4

    # A user's Dagster asset downstream of the final asset gets it as a lazy pyarrow Dataset.
    seen: dict[str, object] = {}

    @dg.asset(ins={"final": dg.AssetIn(key=dg.AssetKey(["wf", "people_final"]))})
    def oslo_free(final: pads.Dataset) -> None:
        seen["rows"] = final.count_rows()
        seen["cities"] = set(final.to_table(columns=["city"]).column("city").to_pylist())
        seen["columns"] = final.schema.names

    defs = dg.Definitions.merge(
        build_definitions([plan_workflow(load_workflow(cfg))], root=str(env)),
        dg.Definitions(assets=[oslo_free]),
    )
    job = defs.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(asset_selection=[oslo_free.key], instance=instance).success
    final_rows = int(next(x for x in out.splitlines() if "people: final: " in x).split()[2])
    assert seen["rows"] == final_rows > 0
    assert "Oslo" not in seen["cities"] and "line" not in seen["columns"]

    # The sampled stage reads the final output: no Oslo, no dropped column.
    export = tmp_path / "picked.jsonl"
    assert cli.main(["export", str(cfg), "--stage", "picked", "-o", str(export)]) == 0
    rows = [json.loads(x) for x in export.read_text().splitlines()]
    assert len(rows) == 120 and {r["tag"] for r in rows} <= {"Lyon", "Lima"}
    assert "line" not in rows[0]
    # Exporting a finalized stage exports its final output.
    final_export = tmp_path / "people.jsonl"
    assert cli.main(["export", str(cfg), "--stage", "people", "-o", str(final_export)]) == 0
    people = [json.loads(x) for x in final_export.read_text().splitlines()]
    assert people and all(r["city"] != "Oslo" for r in people)

    # Growing a finalized stage is refused before anything is generated or written.
    before = snapshot(env)
    write_config(cfg, _config(n=600))
    capsys.readouterr()
    assert cli.main(["materialize", str(cfg), "--no-progress", "--stage", "people"]) == 1
    err = capsys.readouterr().err
    assert "'people' is finalized" in err and "dd-assets unseal" in err
    assert snapshot(env) == before

    assert cli.main(["unseal", str(cfg), "people"]) == 0
    assert "unsealed" in capsys.readouterr().out
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "people: 6/6 row groups, 600 records" in out and "people: final: " in out
    after = snapshot(env)
    assert {k: after[k] for k in before if "/people/" in k} == {
        k: v for k, v in before.items() if "/people/" in k
    }  # the four old row groups were reused


def test_empty_finalize_fails_then_allow_empty_skips_downstream(
    env: Path, tmp_path: Path, capsys
) -> None:
    cfg_data = _config()
    cfg_data["stages"][0]["finalize"] = [{"processor_type": "filter", "expr": "{{ false }}"}]
    cfg = write_config(tmp_path / "wf.yaml", cfg_data)
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 1
    assert "kept 0 of 400 rows" in capsys.readouterr().err

    cfg_data["stages"][0]["allow_empty"] = True
    # A stage behind the skipped one, row group by row group, is skipped too (not failed).
    cfg_data["stages"].append(
        {
            "name": "echo",
            "num_records": 120,
            "buffer_size": 40,
            "seed": {"stage": "picked", "mode": "row_group"},
            "columns": [{"name": "again", "column_type": "expression", "expr": "{{ tag }}"}],
        }
    )
    write_config(cfg, cfg_data)
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "people: final: 0 of 400 rows" in out
    assert "picked: skipped: its seed stage 'people' finalized to 0 rows" in out
    assert "echo: skipped: its seed stage 'picked' is skipped" in out
    assert "notes: 4/4 row groups" in out  # it reads people's row groups, not the final output
    assert not list((env / "wf" / "picked").rglob("batch_*.parquet"))
    assert not list((env / "wf" / "echo").rglob("batch_*.parquet"))


def test_example_chain_yaml_runs_end_to_end(env: Path, tmp_path: Path, capsys) -> None:
    """examples/chain.yaml (docs/workflows.md): file seed, a branch joined back, finalize, sample."""
    cfg = Path(__file__).resolve().parents[2] / "examples" / "chain.yaml"
    assert cli.main(["validate", str(cfg)]) == 0
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "reviews: 6/6 row groups, 1200 records" in out
    assert "replies: 6/6 row groups, 1200 records" in out
    assert "moods: 6/6 row groups, 1200 records" in out
    assert "threads: 6/6 row groups, 1200 records" in out
    assert "digest: 3/3 row groups, 30 records" in out
    final = next(line for line in out.splitlines() if line.startswith("reviews: final: "))
    kept = int(final.split()[2])
    assert 0 < kept <= 6 * 2  # dedupe on (product, stars) with stars >= 4: at most 12 rows
    # Every stage's checks pass, including the schema of stages whose seed columns come from a
    # file or from a finalized upstream.
    capsys.readouterr()
    assert cli.main(["check", str(cfg)]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.count("pass") >= 5 * 4
    threads = tmp_path / "threads.jsonl"
    assert cli.main(["export", str(cfg), "--stage", "threads", "-o", str(threads)]) == 0
    rows = [json.loads(x) for x in threads.read_text().splitlines()]
    assert len(rows) == 1200 and len({r["review_id"] for r in rows}) == 1200
    for r in rows[::50]:
        mood = "happy" if r["stars"] >= 4 else "neutral" if r["stars"] == 3 else "unhappy"
        assert r["thread"] == f"[{mood}] {r['text']} / {r['reply']}"


CHAIN = Path(__file__).resolve().parents[2] / "examples" / "chain.yaml"


def test_a_partition_range_never_runs_a_stage_whose_input_is_not_whole(
    env: Path, tmp_path: Path, capsys
) -> None:
    """--partitions 0-2 of examples/chain.yaml: the row-group stages make row groups 0-2; the
    digest, which samples the whole final output of reviews, is not run, said in one line; exit 0.
    Without --partitions, a stage that cannot run is an error before any run starts."""
    assert cli.main(["materialize", str(CHAIN), "--no-progress", "--partitions", "0-2"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and captured.err == ""
    for stage in ("reviews", "replies", "moods", "threads"):
        assert f"{stage}: 3/6 row groups, 600 records" in captured.out
    not_run = [line for line in captured.out.splitlines() if line.startswith("not run")]
    assert not_run == [
        "not run (input not whole in this --partitions run): digest: it reads all of"
        " reviews_final, and reviews has 3 of 6 row groups missing (00003-00005)"
    ]
    assert not list((env / "chain" / "digest").rglob("batch_*.parquet"))
    instance = dg.DagsterInstance.get()
    assert {r.job_name for r in instance.get_runs()} == {"chain__reviews__job"}

    # Asked for by name, the digest is an error: its input is not whole, and no run is started.
    assert cli.main(["materialize", str(CHAIN), "--no-progress", "--stage", "digest"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: stage 'digest' cannot run yet: it reads all of reviews_final")
    assert len(err.strip().splitlines()) == 1
    assert {r.job_name for r in instance.get_runs()} == {"chain__reviews__job"}

    # The rest of the row groups, then the final output, then the digest: all of it.
    assert cli.main(["materialize", str(CHAIN), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "digest: 3/3 row groups, 30 records" in out and "not run" not in out
