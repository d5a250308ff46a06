"""A diamond as users run it: one stage branches into two (one of them an LLM stage that drops
rows), and a join stage merges them back on a key, through `dd-assets materialize` on a real
Dagster instance and a mock OpenAI server over HTTP. Also a join of stages from different waves,
the pipeline order inside one wave, and a join that refuses to guess."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dd_assets import cli
from dd_assets.config import load_workflow
from dd_assets.dagster.build import build_definitions
from dd_assets.llm import client as llm_client
from dd_assets.runners.materialize import materialize_wave
from dd_assets.runners.plan import plan_workflow, waves
from dd_assets.runners.status import workflow_status
from dd_assets.store.layout import default_root
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import batch_files, people_config, snapshot, write_config

pytestmark = [pytest.mark.slow]

N, BUFFER = 200, 50


def _diamond(url: str, *, tag_expr: str = "#{{ city }}-{{ score }}") -> dict[str, Any]:
    cfg = people_config(num_records=N, buffer_size=BUFFER, partitions_per_run=2)
    cfg["models"] = {
        "gen": {"base_url": url, "model": "m", "max_retries": 6, "max_parallel_requests": 8}
    }
    cfg["run"]["early_stop"] = {"window": 1000, "max_failure_rate": 1.0}
    cfg["run"]["max_drop_rate"] = 0.5  # a third of the rows are dropped on purpose
    size = {"num_records": N, "buffer_size": BUFFER}
    cfg["stages"] += [
        {
            "name": "bios",
            **size,
            "seed": {"stage": "people", "mode": "row_group"},
            "columns": [
                {
                    "name": "bio",
                    "column_type": "llm-text",
                    "model_alias": "gen",
                    "prompt": "A bio of {{ customer.first_name }} from {{ city }}",
                }
            ],
        },
        {
            "name": "tags",
            **size,
            "seed": {"stage": "people", "mode": "row_group"},
            "columns": [{"name": "tag", "column_type": "expression", "expr": tag_expr}],
        },
        {
            "name": "cards",
            **size,
            "seed": {"stages": ["bios", "tags"], "keys": "person_id"},
            "columns": [
                {"name": "card", "column_type": "expression", "expr": "{{ bio }} {{ tag }}"}
            ],
        },
    ]
    return cfg


@pytest.fixture
def env(data_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(llm_client, "BACKOFF_BASE_S", 0.001)
    monkeypatch.setattr(llm_client, "BACKOFF_CAP_S", 0.005)
    return data_root


def _rows(store: PartitionStore, plan: Any) -> list[dict[str, Any]]:
    return store.dataset(plan.ref).to_table().to_pylist()


def test_diamond_joins_the_branches_on_the_key(env: Path, tmp_path: Path, capsys) -> None:
    # Transient 500s are retried (they delay, never shrink); a prompt over the context length
    # (HTTP 400, every Oslo row) is row-deterministic: those rows are dropped with a reason.
    with MockOpenAI(
        fail_rate=0.1,
        fail_statuses=[500],
        prompt_faults={"from Oslo": 400},
        content_template="bio<{prompt}>",
    ) as mock:
        cfg = write_config(tmp_path / "wf.yaml", _diamond(mock.url))
        wf = load_workflow(cfg)
        assert waves(wf) == (("people", "bios", "tags", "cards"),)  # one pipelined op
        assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
        out = capsys.readouterr().out
        sent = mock.requests

        plans = plan_workflow(wf)
        store = PartitionStore(env)
        people = {r["person_id"]: r for r in _rows(store, plans["people"])}
        bios = _rows(store, plans["bios"])
        tags = {r["person_id"]: r for r in _rows(store, plans["tags"])}
        cards = _rows(store, plans["cards"])
        assert len(people) == len(tags) == N
        assert 0 < len(bios) < N, "the over-long prompts drop some bios rows"
        assert {r["city"] for r in bios} == {"Lyon", "Lima"}
        assert f"cards: 4/4 row groups, {len(bios)} records" in out
        # Exactly the rows both branches kept, in the first stage's order, each put together
        # from its own key's rows.
        assert [r["person_id"] for r in cards] == [r["person_id"] for r in bios]
        for card, bio in zip(cards, bios, strict=True):
            pid = card["person_id"]
            assert card["bio"] == bio["bio"]
            assert (
                card["tag"] == tags[pid]["tag"] == f"#{people[pid]['city']}-{people[pid]['score']}"
            )
            assert card["card"] == f"{card['bio']} {card['tag']}"
            assert card["customer"] == people[pid]["customer"]
        assert list(cards[0]) == [
            "person_id",
            "city",
            "customer",
            "score",
            "line",
            "bio",
            "tag",
            "card",
        ]

        # Dagster sees the join: both branches upstream of it, every partition recorded.
        graph = build_definitions([plan_workflow(wf)], root=str(env)).resolve_asset_graph()
        key = dg.AssetKey(["wf", "cards"])
        assert graph.get(key).parent_keys == {
            dg.AssetKey(["wf", "bios"]),
            dg.AssetKey(["wf", "tags"]),
        }
        instance = dg.DagsterInstance.get()
        assert len(instance.get_materialized_partitions(key)) == 4

        # Every check passes, the join's schema included (drops are a warning, not a failure).
        assert cli.main(["check", str(cfg)]) == 0, capsys.readouterr().out
        capsys.readouterr()

        # Editing one branch makes the join stale and says which branch; the other branch and
        # its LLM answers stay as they are.
        write_config(cfg, _diamond(mock.url, tag_expr="{{ city }}/{{ score }}"))
        st = {
            s.stage: s
            for s in workflow_status(
                plan_workflow(load_workflow(cfg)), PartitionStore(default_root())
            )
        }
        assert not st["bios"].stale and st["bios"].done == 4
        assert st["tags"].stale and st["cards"].stale
        assert "upstream stage 'tags' changed" in (st["cards"].stale_reason or "")
        before = {k: v for k, v in snapshot(env).items() if "/bios/" in k}
        assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
        assert mock.requests == sent  # no LLM request made twice
        assert {k: v for k, v in snapshot(env).items() if "/bios/" in k} == before
        cards = _rows(store, plan_workflow(load_workflow(cfg))["cards"])
        assert [r["person_id"] for r in cards] == [r["person_id"] for r in bios]
        assert all(r["tag"] == f"{r['city']}/{r['score']}" for r in cards)


def test_join_row_groups_start_as_both_branches_land(tmp_path: Path) -> None:
    with MockOpenAI(latency_s=0.01) as mock:
        cfg = write_config(tmp_path / "wf.yaml", _diamond(mock.url))
        plans = plan_workflow(load_workflow(cfg))
        store = PartitionStore(tmp_path / "dd-data")
        order: list[tuple[str, int]] = []
        wave = [plans[s] for s in ("people", "bios", "tags", "cards")]
        materialize_wave(
            wave, store, range(4), on_done=lambda stage, o: order.append((stage, o.row_group))
        )
    for rg in range(4):
        assert order.index(("cards", rg)) > max(
            order.index(("bios", rg)), order.index(("tags", rg))
        )
    assert order.index(("cards", 0)) < order.index(("bios", 3)), order


def _file_join(tmp_path: Path) -> Path:
    ids = pa.table({"sku": [f"S{i:03d}" for i in range(100)], "price": list(range(100))})
    pq.write_table(ids, tmp_path / "skus.parquet")
    size = {"num_records": 100, "buffer_size": 25}
    expr = lambda n, e: {"name": n, "column_type": "expression", "expr": e}  # noqa: E731
    return write_config(
        tmp_path / "wf.yaml",
        {
            "name": "wf",
            "run": {"partitions_per_run": 2},
            "stages": [
                {
                    "name": "names",
                    **size,
                    "seed": {"path": "skus.parquet"},
                    "columns": [expr("title", "Item {{ sku }}")],
                },
                {
                    "name": "prices",
                    **size,
                    "seed": {"path": "skus.parquet"},
                    "columns": [expr("eur", "{{ price }} EUR")],
                },
                {
                    "name": "listing",
                    **size,
                    "seed": {"stages": ["names", "prices"], "keys": ["sku"]},
                    "columns": [expr("text", "{{ title }}: {{ eur }}")],
                },
            ],
        },
    )


def test_join_of_stages_from_different_waves(env: Path, tmp_path: Path, capsys) -> None:
    cfg = _file_join(tmp_path)
    wf = load_workflow(cfg)
    assert waves(wf) == (("names",), ("prices",), ("listing",))
    graph = build_definitions([plan_workflow(wf)], root=str(env)).resolve_asset_graph()
    listing = dg.AssetKey(["wf", "listing"])
    for up in ("names", "prices"):
        mapping = graph.get_partition_mapping(listing, dg.AssetKey(["wf", up]))
        assert isinstance(mapping, dg.IdentityPartitionMapping)

    # Run on its own first: refused, naming what to materialize, with nothing written.
    assert cli.main(["materialize", str(cfg), "--no-progress", "--stage", "listing"]) == 1
    assert "materialize 'names' first" in capsys.readouterr().err
    assert batch_files(env) == {}

    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    assert "listing: 4/4 row groups, 100 records" in capsys.readouterr().out
    rows = _rows(PartitionStore(env), plan_workflow(wf)["listing"])
    assert [r["text"] for r in rows[:2]] == ["Item S000: 0 EUR", "Item S001: 1 EUR"]
    assert cli.main(["check", str(cfg)]) == 0, capsys.readouterr().out


def test_a_key_that_repeats_fails_the_join_naming_it(env: Path, tmp_path: Path, capsys) -> None:
    cfg_data = _diamond("http://127.0.0.1:9")  # bios is left out below: no LLM needed
    cfg_data["stages"] = [s for s in cfg_data["stages"] if s["name"] != "bios"]
    cfg_data["stages"].insert(1, copy.deepcopy(cfg_data["stages"][1]) | {"name": "bios"})
    cfg_data["stages"][1]["columns"] = [{"name": "bio", "column_type": "expression", "expr": "b"}]
    cfg_data["stages"][-1]["seed"]["keys"] = "city"  # one stage's column, but not unique
    cfg = write_config(tmp_path / "wf.yaml", cfg_data)
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert re.search(
        r"stage 'cards', row group \d{5}: join key '\w+' appears twice in stage 'bios'", err
    ), err[-2000:]
    assert not [k for k in batch_files(env) if "/cards/" in k]
    assert len([k for k in batch_files(env) if "/tags/" in k]) > 0  # the branches are kept
