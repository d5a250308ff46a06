"""Stages chained row group by row group run as one pipeline: downstream row groups start as
their upstream row groups land, sharing one LLM client and its parallelism limit."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dd_assets.config import load_workflow
from dd_assets.errors import GenerationError
from dd_assets.runners.materialize import materialize, materialize_wave
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.mock_openai import MockOpenAI
from dd_assets.testing.workflows import write_config


def _chain(url: str) -> dict:
    llm = {"column_type": "llm-text", "model_alias": "gen"}
    return {
        "name": "chain",
        "models": {"gen": {"base_url": url, "model": "m", "max_parallel_requests": 6}},
        "stages": [
            {
                "name": "a",
                "num_records": 80,
                "buffer_size": 10,
                "columns": [
                    {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                    {**llm, "name": "q", "prompt": "Q {{ rid }}"},
                ],
            },
            {
                "name": "b",
                "num_records": 80,
                "buffer_size": 10,
                "seed": {"stage": "a", "mode": "row_group"},
                "columns": [{**llm, "name": "r", "prompt": "R {{ q }}"}],
            },
        ],
    }


@pytest.mark.slow
def test_downstream_row_groups_start_before_the_upstream_stage_ends(tmp_path: Path) -> None:
    with MockOpenAI(latency_s=0.02) as mock:
        cfg = write_config(tmp_path / "wf.yaml", _chain(mock.url))
        plans = plan_workflow(load_workflow(cfg))
        store = PartitionStore(tmp_path / "dd-data")
        order: list[tuple[str, int]] = []
        out = materialize_wave(
            [plans["a"], plans["b"]],
            store,
            range(8),
            in_flight=2,
            on_done=lambda stage, o: order.append((stage, o.row_group)),
        )
        peak = mock.peak_concurrency
    assert [o.info.rows for o in out["b"]] == [10] * 8
    assert order.index(("b", 0)) < order.index(("a", 7)), order
    for rg in range(8):  # never before its own upstream row group
        assert order.index(("a", rg)) < order.index(("b", rg))
    assert peak <= 6  # one client: the limit holds across both stages
    b = store.dataset(plans["b"].ref).to_table()
    a = store.dataset(plans["a"].ref).to_table()
    assert b.column("rid").to_pylist() == a.column("rid").to_pylist()


def test_wave_reuses_what_is_on_disk(tmp_path: Path) -> None:
    with MockOpenAI() as mock:
        cfg = write_config(tmp_path / "wf.yaml", _chain(mock.url))
        plans = plan_workflow(load_workflow(cfg))
        store = PartitionStore(tmp_path / "dd-data")
        materialize(plans["a"], store, range(4))
        sent = mock.requests
        out = materialize_wave([plans["a"], plans["b"]], store, range(8))
        assert mock.requests - sent == 4 * 10 + 8 * 10  # a's 4 new groups, all of b
    assert [o.reused for o in out["a"]] == [True] * 4 + [False] * 4


def test_downstream_alone_needs_its_upstream_row_group(tmp_path: Path) -> None:
    with MockOpenAI() as mock:
        cfg = write_config(tmp_path / "wf.yaml", _chain(mock.url))
        plans = plan_workflow(load_workflow(cfg))
        store = PartitionStore(tmp_path / "dd-data")
        materialize(plans["a"], store, range(1))
        with pytest.raises(GenerationError, match=r"00001 of stage 'b'.*not on disk.*'a' first"):
            materialize_wave([plans["b"]], store, range(2))


@pytest.mark.slow
def test_a_wave_started_ahead_writes_only_once_claimed_and_matches_a_plain_run(
    tmp_path: Path,
) -> None:
    """`dd-assets materialize` starts a wave before its Dagster step (runners/materialize_ahead):
    requests go out, but no row group is written until the step claims and attaches; a claim for
    other work stops it (nothing written, answers cached: the step's own run asks nothing
    again); the claimed wave's row groups, reported in order, equal a plain run's."""
    from dd_assets.config import ResumeMode
    from dd_assets.runners.materialize_ahead import WaveAhead

    with MockOpenAI(latency_s=0.01) as mock:
        cfg = write_config(tmp_path / "wf.yaml", _chain(mock.url))
        plans = plan_workflow(load_workflow(cfg))
        wave = [plans["a"], plans["b"]]
        store = PartitionStore(tmp_path / "dd-data")
        work = {"resume": ResumeMode.IF_POSSIBLE, "token": "t", "retry_dropped": False}

        def files() -> int:
            return sum(len(store.completed(p.ref)) for p in wave)

        ahead = WaveAhead(wave, store, range(4), in_flight=2, **work).start()
        while mock.requests < 2 * 10:  # a's first two row groups (in flight: 2) answered
            time.sleep(0.005)
        time.sleep(0.2)
        # Held until a step claims it, and so is b (its upstream row groups have not landed).
        assert files() == 0 and mock.requests == 2 * 10
        other = WaveAhead.claim(ahead.id, wave, [0, 1, 2], **work)  # not what it runs
        assert other is None and WaveAhead.claim(ahead.id, wave, [0, 1, 2, 3], **work) is None
        assert files() == 0

        ahead = WaveAhead(wave, store, range(4), in_flight=2, **work).start()
        claimed = WaveAhead.claim(ahead.id, wave, [0, 1, 2, 3], **work)
        assert claimed is ahead
        order: list[tuple[str, int]] = []
        ahead.attach(lambda stage, o: order.append((stage, o.row_group)))
        ahead.result()
        ahead.close()
        assert files() == 8
        assert mock.requests == 4 * 10 * 2  # what was answered before is not asked again
        assert sorted(order) == [(s, rg) for s in ("a", "b") for rg in range(4)]
        for rg in range(4):
            assert order.index(("a", rg)) < order.index(("b", rg))

        plain = PartitionStore(tmp_path / "plain")
        materialize_wave(wave, plain, range(4), in_flight=2)
    for p in wave:
        assert store.dataset(p.ref).to_table().equals(plain.dataset(p.ref).to_table())
