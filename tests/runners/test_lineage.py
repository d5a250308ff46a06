"""Data versions and inputs of row groups (runners/lineage.py, store footers), without Dagster."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dd_assets.config import parse_workflow
from dd_assets.runners.lineage import Lineage
from dd_assets.runners.materialize import materialize, materialize_wave
from dd_assets.runners.plan import plan_workflow
from dd_assets.store.footer import content_hash
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.workflows import people_config


def test_content_hash_follows_rows_not_layout() -> None:
    rows = {"x": [1, None, 3, 4], "s": ["a", "b", None, "dd"], "l": [[1], None, [], [2, 3]]}
    whole = pa.table(rows)
    padded = pa.table({k: [v[0], *v, v[-1]] for k, v in rows.items()}).slice(1, 4)
    chunked = pa.concat_tables([whole.slice(0, 1), whole.slice(1, 3)])
    # A slice at offset 0 still carries its parent's whole buffers (an approved table cut into
    # row groups, a final output cut at target_records).
    head = pa.table({k: [*v, v[-1], v[0]] for k, v in rows.items()}).slice(0, 4)
    assert content_hash(whole) == content_hash(padded) == content_hash(chunked)
    assert content_hash(head) == content_hash(whole)
    other = pa.table({**rows, "x": [1, None, 3, 5]})
    assert content_hash(other) != content_hash(whole)
    tagged = whole.replace_schema_metadata({b"k": b"v"})
    assert content_hash(tagged) == content_hash(whole)


def _chain(**kw: object) -> dict:
    cfg = people_config(num_records=300, buffer_size=100, downstream=True, **kw)
    cfg["stages"].append(
        {
            "name": "digest",
            "num_records": 20,
            "buffer_size": 10,
            "seed": {"stage": "notes", "mode": "sample"},
            "columns": [{"name": "d", "column_type": "expression", "expr": "[{{ note }}]"}],
        }
    )
    return cfg


def test_footers_record_what_each_row_group_was_built_from(tmp_path: Path) -> None:
    plan = plan_workflow(parse_workflow(_chain()))
    store = PartitionStore(tmp_path)
    materialize_wave([plan["people"], plan["notes"]], store, range(3))
    materialize(plan["digest"], store, range(2))
    people, notes, digest = (store.completed(plan[s].ref) for s in ("people", "notes", "digest"))
    assert all(i.inputs == {} for i in people.values())
    for rg, info in notes.items():
        assert info.inputs == {"people": people[rg].data_version}
    version = Lineage(store).stage_version(plan["notes"])
    assert version is not None
    assert all(i.inputs == {"notes": version} for i in digest.values())
    # The footer's version is the content hash of the rows in the file.
    for info in people.values():
        table = pq.read_table(info.path)
        assert info.data_version == content_hash(table)


def test_a_regenerated_upstream_row_group_makes_its_descendant_stale(tmp_path: Path) -> None:
    plan = plan_workflow(parse_workflow(_chain()))
    store = PartitionStore(tmp_path)
    materialize_wave([plan["people"], plan["notes"]], store, range(3))
    assert Lineage(store).stale(plan["notes"]) == {}
    # Row group 1 of people rewritten with other rows (as a config-identical regeneration with
    # other LLM answers would): notes' row group 1, and only it, no longer matches.
    ref = plan["people"].ref
    info = store.completed(ref)[1]
    table = pq.read_table(info.path)
    table = table.set_column(
        table.schema.get_field_index("line"), "line", pa.array(["changed"] * table.num_rows)
    )
    store.write_row_group(ref, 1, table, info.stats)
    stale = Lineage(store).stale(plan["notes"])
    assert list(stale) == [1] and "'people'" in stale[1]
    # materialize regenerates exactly that row group of notes.
    before = {rg: i.path.stat().st_ino for rg, i in store.completed(plan["notes"].ref).items()}
    outcomes = materialize(plan["notes"], store, range(3))
    assert [o.reused for o in outcomes] == [True, False, True]
    after = {rg: i.path.stat().st_ino for rg, i in store.completed(plan["notes"].ref).items()}
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    assert Lineage(store).stale(plan["notes"]) == {}


def test_files_without_recorded_inputs_are_never_called_stale(tmp_path: Path) -> None:
    """Data written before inputs were recorded cannot be judged: it must not turn stale."""
    plan = plan_workflow(parse_workflow(_chain()))
    store = PartitionStore(tmp_path)
    materialize_wave([plan["people"], plan["notes"]], store, range(3))
    for info in store.completed(plan["notes"].ref).values():
        pf = pq.ParquetFile(info.path)
        table = pf.read()
        meta = {k: v for k, v in pf.metadata.metadata.items() if k != b"dd_assets.inputs"}
        pf.close()
        pq.write_table(table.replace_schema_metadata(meta), info.path)
    ref = plan["people"].ref
    info = store.completed(ref)[0]
    store.write_row_group(ref, 0, pq.read_table(info.path).slice(1), info.stats)
    assert Lineage(PartitionStore(tmp_path)).stale(plan["notes"]) == {}


@pytest.mark.parametrize("key", ["data_version", "inputs"])
def test_a_seed_table_never_carries_its_upstream_footer_keys(tmp_path: Path, key: str) -> None:
    plan = plan_workflow(parse_workflow(_chain()))
    store = PartitionStore(tmp_path)
    materialize_wave([plan["people"], plan["notes"]], store, range(1))
    up = store.completed(plan["people"].ref)[0]
    down = store.completed(plan["notes"].ref)[0]
    kv = pq.ParquetFile(down.path).metadata.metadata
    assert kv[f"dd_assets.{key}".encode()] != pq.ParquetFile(up.path).metadata.metadata.get(
        f"dd_assets.{key}".encode()
    )
    assert json.loads(kv[b"dd_assets.inputs"]) == {"people": up.data_version}
