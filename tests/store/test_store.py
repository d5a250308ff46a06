"""The partition store on real files (real parquet via pyarrow): layout, footers, resume modes,
corrupt metadata, num_records changes, finalize sealing, concurrent writers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from dd_assets.config import ResumeMode
from dd_assets.engine import DROPS_SCHEMA
from dd_assets.store.atomic import TEMP_MARK, _host
from dd_assets.store.layout import partition_key, row_group_of
from dd_assets.store.partition_store import (
    ConfigChangedError,
    CorruptStageError,
    PartitionStore,
    StageRef,
    StageSealedError,
    StoreError,
)

REPO = Path(__file__).resolve().parents[2]
FP_A = "a1b2c3d4e5f6" + "0" * 52
FP_B = "b2c3d4e5f6a1" + "1" * 52
IDENTITY = {"columns": [{"name": "topic", "prompt": "Write about {{ x }}"}], "buffer_size": 10}


def make_ref(
    fp: str = FP_A,
    num_records: int = 25,
    buffer_size: int = 10,
    identity: dict[str, Any] | None = None,
    stage: str = "tickets",
) -> StageRef:
    return StageRef(
        workflow="support",
        stage=stage,
        fingerprint=fp,
        buffer_size=buffer_size,
        num_records=num_records,
        identity=dict(IDENTITY if identity is None else identity),
    )


def rows_for(ref: StageRef, rg: int, n: int | None = None) -> pa.Table:
    start, end = ref.row_range(rg)
    ids = list(range(start, end if n is None else start + n))
    return pa.table({"id": pa.array(ids, pa.int64()), "text": [f"row {i}" for i in ids]})


def fill(store: PartitionStore, ref: StageRef, groups: list[int] | None = None) -> None:
    for rg in range(ref.num_row_groups) if groups is None else groups:
        store.write_row_group(ref, rg, rows_for(ref, rg), stats={"dropped": 0})


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative path -> bytes), to prove nothing changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def store(tmp_path: Path) -> PartitionStore:
    return PartitionStore(tmp_path / "dd-data")


# ---- layout ----------------------------------------------------------------------------------


def test_layout_stage_json_and_footer(store: PartitionStore) -> None:
    ref = make_ref()
    store.prepare(ref, ResumeMode.IF_POSSIBLE)
    info = store.write_row_group(ref, 0, rows_for(ref, 0), stats={"dropped": 1, "why": "x"})

    folder = store.root / "support" / "tickets" / FP_A[:12]
    assert store.stage_dir(ref) == folder
    batch = folder / "parquet-files" / "batch_00000.parquet"
    assert batch.is_file() and info.path == batch
    assert store.batch_path(ref, 0) == batch

    state = json.loads((folder / "stage.json").read_text())
    assert state["workflow"] == "support"
    assert state["stage"] == "tickets"
    assert state["fingerprint"] == FP_A
    assert state["buffer_size"] == 10
    assert state["num_records"] == 25
    assert state["original_num_records"] == 25
    assert state["identity"] == IDENTITY
    assert state["finalize_state"] is None
    assert isinstance(state["store_scheme"], int)
    assert state["created_at"] and state["updated_at"]
    assert store.state(ref) == state

    meta = pq.read_metadata(batch).metadata
    kv = {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"dd_assets.")}
    assert {
        "dd_assets.fingerprint",
        "dd_assets.row_group",
        "dd_assets.row_start",
        "dd_assets.row_end",
        "dd_assets.rows",
        "dd_assets.stats",
    } <= set(kv)
    assert kv["dd_assets.fingerprint"] == FP_A
    assert kv["dd_assets.row_group"] == "0"
    assert (kv["dd_assets.row_start"], kv["dd_assets.row_end"]) == ("0", "10")
    assert kv["dd_assets.rows"] == "10"
    assert json.loads(kv["dd_assets.stats"]) == {"dropped": 1, "why": "x"}
    assert (info.row_group, info.rows, info.row_start, info.row_end) == (0, 10, 0, 10)
    assert info.fingerprint == FP_A and info.stats == {"dropped": 1, "why": "x"}
    # nothing but the stage files: no temp left behind
    assert sorted(os.listdir(folder)) == ["parquet-files", "stage.json"]
    assert os.listdir(folder / "parquet-files") == ["batch_00000.parquet"]


def test_write_without_prepare_creates_stage_json(store: PartitionStore) -> None:
    ref = make_ref()
    store.write_row_group(ref, 1, rows_for(ref, 1))
    assert store.state(ref)["fingerprint"] == FP_A
    assert list(store.completed(ref)) == [1]


def test_row_group_ids_and_ranges() -> None:
    ref = make_ref(num_records=25, buffer_size=10)
    assert ref.fp12 == FP_A[:12]
    assert ref.num_row_groups == 3
    assert [ref.row_range(i) for i in range(3)] == [(0, 10), (10, 20), (20, 25)]
    assert partition_key(7) == "00007"
    assert row_group_of("00042") == 42
    with pytest.raises(StoreError, match="row-group id"):
        row_group_of("abc")


def test_write_out_of_range_row_group_refused(store: PartitionStore) -> None:
    ref = make_ref()
    with pytest.raises(StoreError, match="00000-00002; got 3"):
        store.write_row_group(ref, 3, rows_for(ref, 2))
    assert not store.files_dir(ref).exists()


# ---- row groups ------------------------------------------------------------------------------


def test_completed_ignores_temp_files_and_prepare_sweeps_dead_ones(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0, 1])
    files = store.files_dir(ref)
    dead = files / f"batch_00002.parquet{TEMP_MARK}{_host()}.{dead_pid()}.1"
    live = files / f"batch_00002.parquet{TEMP_MARK}{_host()}.{os.getpid()}.99"
    dead.write_bytes(b"half a parquet file")
    live.write_bytes(b"someone is writing this")
    assert sorted(store.completed(ref)) == [0, 1]
    assert [f.row_groups for f in store.fingerprints("support", "tickets")] == [2]

    store.prepare(ref, "if_possible")
    assert not dead.exists()
    assert live.exists()  # its writer (this process) is alive
    assert sorted(store.completed(ref)) == [0, 1]


def test_read_row_group_dataset_and_iter_batches(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [2, 0, 1])  # written out of order, read in row order

    t1 = store.read_row_group(ref, 1)
    assert t1.column("id").to_pylist() == list(range(10, 20))
    assert t1.schema.metadata[b"dd_assets.row_group"] == b"1"

    ds = store.dataset(ref)
    assert isinstance(ds, pads.FileSystemDataset)  # lazy: files, not an in-memory table
    assert [Path(f).name for f in ds.files] == [
        "batch_00000.parquet",
        "batch_00001.parquet",
        "batch_00002.parquet",
    ]
    assert ds.count_rows() == 25
    assert ds.to_table(columns=["id"]).column("id").to_pylist() == list(range(25))
    assert ds.to_table(filter=pads.field("id") >= 23).num_rows == 2

    sub = store.dataset(ref, [2])
    assert sub.to_table().column("id").to_pylist() == list(range(20, 25))

    batches = list(store.iter_batches(ref, batch_size=4))
    assert all(b.num_rows <= 4 for b in batches)
    ids = [i for b in batches for i in b.column("id").to_pylist()]
    assert ids == list(range(25))


def test_reading_missing_row_groups_is_a_clear_error(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0])
    with pytest.raises(StoreError, match=r"no row group 00001 .*materialize"):
        store.read_row_group(ref, 1)
    with pytest.raises(StoreError, match=r"lacks row group\(s\) \['00002'\]"):
        store.dataset(ref, [0, 2])


def test_zero_row_group_is_written_and_complete(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0])
    empty = rows_for(ref, 1).slice(0, 0)
    info = store.write_row_group(ref, 1, empty, stats={"dropped": 10})
    assert info.path.is_file()
    assert info.rows == 0 and (info.row_start, info.row_end) == (10, 20)
    assert sorted(store.completed(ref)) == [0, 1]
    assert store.read_row_group(ref, 1).num_rows == 0
    assert store.dataset(ref).count_rows() == 10
    assert sum(b.num_rows for b in store.iter_batches(ref)) == 10


# ---- resume modes ----------------------------------------------------------------------------


def test_if_possible_reuses_row_groups(store: PartitionStore) -> None:
    ref = make_ref()
    store.prepare(ref, "if_possible")
    fill(store, ref, [0, 1])
    before = snapshot(store.files_dir(ref))
    state = store.prepare(ref, "if_possible")
    assert state["fingerprint"] == FP_A
    assert sorted(store.completed(ref)) == [0, 1]
    assert snapshot(store.files_dir(ref)) == before


def test_if_possible_after_config_change_starts_new_fingerprint_keeps_old(
    store: PartitionStore,
) -> None:
    old = make_ref(FP_A)
    fill(store, old)
    new = make_ref(FP_B)
    store.prepare(new, "if_possible")
    assert store.completed(new) == {}
    assert sorted(store.completed(old)) == [0, 1, 2]


def test_always_with_data_only_under_another_fingerprint_raises(store: PartitionStore) -> None:
    old = make_ref(FP_A)
    fill(store, old, [0, 1])
    changed = {"columns": [{"name": "topic", "prompt": "Write briefly about {{ x }}"}]}
    changed["buffer_size"] = 10
    new = make_ref(FP_B, identity=changed)
    with pytest.raises(ConfigChangedError) as err:
        store.prepare(new, ResumeMode.ALWAYS)
    msg = str(err.value)
    assert FP_A[:12] in msg and FP_B[:12] in msg
    assert "columns[0].prompt" in msg
    assert "2 row group(s)" in msg
    assert sorted(store.completed(old)) == [0, 1]  # nothing touched


def test_always_with_nothing_anywhere_starts_fresh(store: PartitionStore) -> None:
    ref = make_ref()
    assert store.prepare(ref, "always") == {}
    assert not store.root.exists()  # nothing until the first row group commits
    fill(store, ref, [0])
    assert store.state(ref)["fingerprint"] == FP_A
    # and with data of the current fingerprint it resumes
    store.prepare(ref, "always")
    assert list(store.completed(ref)) == [0]


def test_always_ignores_other_fingerprints_without_data(store: PartitionStore) -> None:
    a = make_ref(FP_A)
    fill(store, a, [0])
    store.batch_path(a, 0).unlink()  # folder + stage.json, no row groups
    store.prepare(make_ref(FP_B), "always")


REPLACED_RE = re.compile(rf"^{FP_A[:12]}\.replaced-\d{{8}}T\d{{12}}Z$")


def replaced_dirs(store: PartitionStore, ref: StageRef) -> list[Path]:
    base = store.stage_base(ref.workflow, ref.stage)
    return sorted(p for p in base.iterdir() if ".replaced-" in p.name)


def test_never_moves_current_fingerprint_aside_once_per_token(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref)
    before = snapshot(store.stage_dir(ref))

    store.prepare(ref, "never", token="run-1")
    [aside] = replaced_dirs(store, ref)
    assert REPLACED_RE.match(aside.name), aside.name
    # nothing deleted: the old files are all there, byte for byte
    assert snapshot(aside) == before
    assert store.completed(ref) == {}
    assert not store.stage_dir(ref).exists()  # recreated by the first commit

    # later runs of the same materialization (a backfill split over runs) keep what it wrote
    fill(store, ref, [0])
    assert store.state(ref)["fresh_start_token"] == "run-1"
    store.prepare(ref, "never", token="run-1")
    assert len(replaced_dirs(store, ref)) == 1
    assert list(store.completed(ref)) == [0]

    # a new materialization moves aside again
    store.prepare(ref, "never", token="run-2")
    assert len(replaced_dirs(store, ref)) == 2
    assert store.completed(ref) == {}


def test_never_without_token_after_if_possible_run_moves_aside(store: PartitionStore) -> None:
    ref = make_ref()
    store.prepare(ref, "if_possible")
    fill(store, ref)  # stage.json with fresh_start_token absent (None)
    store.prepare(ref, "never")
    assert len(replaced_dirs(store, ref)) == 1
    assert store.completed(ref) == {}


def test_never_without_data_moves_nothing(store: PartitionStore) -> None:
    ref = make_ref()
    store.prepare(ref, "never", token="t")
    store.prepare(ref, "never", token="u")
    assert not store.root.exists()


def test_never_is_the_way_out_of_a_corrupt_stage_json(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref)
    stage_json = store.stage_dir(ref) / "stage.json"
    stage_json.write_text('{"fingerprint": "a1b2')
    before = snapshot(store.stage_dir(ref))
    store.prepare(ref, "never", token="t")
    [aside] = replaced_dirs(store, ref)
    assert snapshot(aside) == before
    assert store.state(ref) == {}
    fill(store, ref, [0])
    assert store.state(ref)["fingerprint"] == FP_A


# ---- corrupt metadata: clear error, nothing deleted ------------------------------------------


def test_corrupt_stage_json_is_an_error_and_nothing_changes(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref)
    stage_json = store.stage_dir(ref) / "stage.json"
    stage_json.write_bytes(stage_json.read_bytes()[:37])  # truncated JSON
    before = snapshot(store.stage_dir(ref))
    for mode in ("if_possible", "always"):
        with pytest.raises(CorruptStageError) as err:
            store.prepare(ref, mode)
        msg = str(err.value)
        assert str(stage_json) in msg
        assert "nothing was changed" in msg
        assert "--resume never" in msg and "aside" in msg
    with pytest.raises(CorruptStageError, match=re.escape(str(stage_json))):
        store.state(ref)
    with pytest.raises(CorruptStageError, match=re.escape(str(stage_json))):
        store.write_row_group(ref, 0, rows_for(ref, 0))
    assert snapshot(store.stage_dir(ref)) == before


def test_stage_json_that_is_not_an_object_is_corrupt(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0])
    (store.stage_dir(ref) / "stage.json").write_text("[1, 2]\n")
    with pytest.raises(CorruptStageError, match="not a JSON object"):
        store.prepare(ref, "if_possible")


def test_corrupt_parquet_footer_is_an_error_and_nothing_deleted(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref)
    bad = store.batch_path(ref, 1)
    bad.write_bytes(bad.read_bytes()[:-20])  # footer cut off
    before = snapshot(store.stage_dir(ref))
    for call in (
        lambda: store.prepare(ref, "if_possible"),
        lambda: store.completed(ref),
        lambda: store.dataset(ref),
    ):
        with pytest.raises(CorruptStageError) as err:
            call()
        assert str(bad) in str(err.value)
        assert "nothing was deleted" in str(err.value)
    assert snapshot(store.stage_dir(ref)) == before


def test_footer_of_another_fingerprint_is_an_error(store: PartitionStore) -> None:
    ref, other = make_ref(FP_A), make_ref(FP_B)
    fill(store, ref, [0])
    fill(store, other, [1])
    stray = store.batch_path(ref, 1)
    stray.write_bytes(store.batch_path(other, 1).read_bytes())
    before = snapshot(store.stage_dir(ref))
    with pytest.raises(CorruptStageError) as err:
        store.completed(ref)
    msg = str(err.value)
    assert str(stray) in msg and FP_B[:12] in msg and "nothing was deleted" in msg
    with pytest.raises(CorruptStageError):
        store.prepare(ref, "if_possible")
    assert snapshot(store.stage_dir(ref)) == before


def test_footer_of_another_row_group_is_an_error(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0])
    misplaced = store.batch_path(ref, 1)
    misplaced.write_bytes(store.batch_path(ref, 0).read_bytes())
    with pytest.raises(CorruptStageError, match=re.escape(str(misplaced))):
        store.completed(ref)
    assert misplaced.exists()


def test_footer_without_dd_assets_metadata_is_an_error(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0])
    foreign = store.batch_path(ref, 1)
    pq.write_table(rows_for(ref, 1), foreign)
    with pytest.raises(CorruptStageError, match=re.escape(str(foreign))):
        store.completed(ref)
    assert foreign.exists()


def test_stage_json_of_another_fingerprint_is_an_error(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0])
    path = store.stage_dir(ref) / "stage.json"
    state = json.loads(path.read_text())
    state["fingerprint"] = FP_B
    path.write_text(json.dumps(state))
    with pytest.raises(CorruptStageError, match="does not match the stage"):
        store.prepare(ref, "if_possible")


# ---- buffer and num_records changes ----------------------------------------------------------


def test_buffer_mismatch_is_a_clear_error(store: PartitionStore) -> None:
    ref = make_ref(buffer_size=10)
    fill(store, ref)
    before = snapshot(store.stage_dir(ref))
    same_fp_other_buffer = make_ref(buffer_size=20)
    with pytest.raises(CorruptStageError) as err:
        store.prepare(same_fp_other_buffer, "if_possible")
    msg = str(err.value)
    assert "buffer_size 10 on disk != 20 in the config" in msg
    assert str(store.stage_dir(ref) / "stage.json") in msg
    assert snapshot(store.stage_dir(ref)) == before


def test_shrinking_num_records_below_disk_is_refused(store: PartitionStore) -> None:
    ref = make_ref(num_records=25)
    fill(store, ref)
    before = snapshot(store.stage_dir(ref))
    with pytest.raises(StoreError) as err:
        store.prepare(make_ref(num_records=15), "if_possible")
    msg = str(err.value)
    assert "num_records is 15" in msg
    assert "records up to row 25" in msg
    assert "00001, 00002" in msg
    assert "nothing was deleted" in msg
    assert snapshot(store.stage_dir(ref)) == before
    # shrinking exactly to a row-group boundary still on disk is fine
    store.prepare(make_ref(num_records=25), "if_possible")


def test_growing_num_records_regenerates_the_old_short_last_group(store: PartitionStore) -> None:
    small = make_ref(num_records=25)
    fill(store, small)  # groups 0-1 full, group 2 short (20-25)
    old_2 = store.batch_path(small, 2).read_bytes()

    big = make_ref(num_records=35)
    state = store.prepare(big, "if_possible")
    assert state["num_records"] == 25  # stage.json as on disk: updated by the next commit
    done = store.completed(big)
    assert sorted(done) == [0, 1]  # 2 has range 20-25, not 20-30
    assert store.batch_path(big, 2).read_bytes() == old_2  # not deleted, just not complete
    with pytest.raises(StoreError, match="no row group 00002"):
        store.read_row_group(big, 2)

    fill(store, big, [2, 3])
    assert sorted(store.completed(big)) == [0, 1, 2, 3]
    assert store.completed(big)[2].row_end == 30
    assert store.dataset(big).to_table().column("id").to_pylist() == list(range(35))


# ---- finalize --------------------------------------------------------------------------------


def test_finalize_seals_and_unseal_reopens(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0, 1])

    store.begin_finalize(ref)
    state = store.state(ref)
    assert state["finalize_state"] == "started" and state["finalized_at"]
    with pytest.raises(StageSealedError) as err:
        store.write_row_group(ref, 2, rows_for(ref, 2))
    msg = str(err.value)
    assert "'tickets'" in msg and state["finalized_at"] in msg and "dd-assets unseal" in msg
    assert not store.batch_path(ref, 2).exists()

    final = store.final_dir(ref)
    final.mkdir()
    (final / "data.parquet").write_bytes(b"final output")
    store.complete_finalize(ref)
    state = store.state(ref)
    assert state["finalize_state"] == "complete"
    with pytest.raises(StageSealedError, match=re.escape(state["finalized_at"])):
        store.write_row_group(ref, 2, rows_for(ref, 2))
    # finalize state survives a resume: prepare does not reopen the stage
    store.prepare(ref, "if_possible")
    assert store.state(ref)["finalize_state"] == "complete"

    moved = store.unseal(ref)
    assert moved is not None and moved.parent == store.stage_dir(ref)
    assert re.match(r"^final\.invalidated-\d{8}T\d{12}Z$", moved.name), moved.name
    assert (moved / "data.parquet").read_bytes() == b"final output"  # moved, not deleted
    assert not final.exists()
    assert store.state(ref)["finalize_state"] is None
    store.write_row_group(ref, 2, rows_for(ref, 2))
    assert sorted(store.completed(ref)) == [0, 1, 2]
    assert store.unseal(ref) is None  # nothing left to invalidate


def test_a_finalize_beginning_while_a_row_group_is_written_refuses_the_commit(
    store: PartitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seal is checked again under the stage lock at the rename: a row group written while
    another process started finalize never lands in the sealed stage (finalize would miss it)."""
    ref = make_ref()
    fill(store, ref, [0, 1])
    real_write = pq.write_table

    def write_then_finalize_starts(table: pa.Table, where: Any, **kw: Any) -> None:
        real_write(table, where, **kw)
        store.begin_finalize(ref)  # what a concurrent finalize does, while this file is written

    monkeypatch.setattr(pq, "write_table", write_then_finalize_starts)  # store/parquet.py calls it
    with pytest.raises(StageSealedError, match="'tickets' is finalized"):
        store.write_row_group(ref, 2, rows_for(ref, 2))
    assert not store.batch_path(ref, 2).exists()
    assert [p.name for p in store.files_dir(ref).iterdir() if TEMP_MARK in p.name] == []
    assert sorted(store.completed(ref)) == [0, 1]


def test_never_moves_a_finalized_stage_aside_and_reopens_it(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0])
    store.begin_finalize(ref)
    store.prepare(ref, "never", token="t")
    assert store.state(ref).get("finalize_state") is None
    store.write_row_group(ref, 0, rows_for(ref, 0))
    assert store.state(ref)["finalize_state"] is None


# ---- fingerprints on disk --------------------------------------------------------------------


def test_fingerprints_lists_folders_and_skips_replaced(store: PartitionStore) -> None:
    a, b = make_ref(FP_A), make_ref(FP_B)
    fill(store, a, [0, 1])
    store.prepare(a, "never", token="t")  # leaves <fpA>.replaced-<ts>
    fill(store, a, [0])
    fill(store, b)
    fps = store.fingerprints("support", "tickets")
    assert [f.fp12 for f in fps] == [FP_A[:12], FP_B[:12]]
    assert [f.row_groups for f in fps] == [1, 3]
    assert fps[0].state["fingerprint"] == FP_A
    assert fps[1].path == store.stage_dir(b)
    assert any(".replaced-" in p.name for p in store.stage_base("support", "tickets").iterdir())
    assert store.fingerprints("support", "nope") == []


def test_fingerprints_tolerates_a_corrupt_stage_json(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0])
    (store.stage_dir(ref) / "stage.json").write_text("{")
    [f] = store.fingerprints("support", "tickets")
    assert f.state == {} and f.row_groups == 1


# ---- concurrency -----------------------------------------------------------------------------


WRITER = """
import os, sys, time
import pyarrow as pa
from dd_assets.store.partition_store import PartitionStore, StageRef
root, fp, parity, go = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ref = StageRef("support", "tickets", fp, buffer_size=5, num_records=200, identity={"k": 1})
store = PartitionStore(root)
deadline = time.time() + 20
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.002)
store.prepare(ref, "if_possible")
for rg in range(parity, 40, 2):
    store.write_row_group(ref, rg, pa.table({"id": list(range(rg * 5, rg * 5 + 5))}))
    if rg % 6 == parity:
        store.prepare(ref, "if_possible")  # more read-modify-writes of stage.json
print(len(store.completed(ref)))
"""


@pytest.mark.slow
def test_two_processes_write_one_stage_at_once(store: PartitionStore, tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(store.root), FP_A, str(parity), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for parity in (0, 1)
    ]
    try:
        time.sleep(0.2)
        go.touch()  # both start (after their imports) as close together as possible
        ref = StageRef("support", "tickets", FP_A, buffer_size=5, num_records=200)
        stage_json = store.stage_dir(ref) / "stage.json"
        # a reader polling meanwhile never sees a partial stage.json
        while any(p.poll() is None for p in procs):
            if stage_json.exists():
                assert isinstance(json.loads(stage_json.read_text()), dict)
            time.sleep(0.001)
        outs = [p.communicate(timeout=30) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    assert sorted(store.completed(ref)) == list(range(40))
    state = json.loads(stage_json.read_text())
    assert state["fingerprint"] == FP_A and state["num_records"] == 200
    ids = store.dataset(ref).to_table().column("id").to_pylist()
    assert ids == list(range(200))
    leftovers = [n for n in os.listdir(store.files_dir(ref)) if TEMP_MARK in n]
    assert leftovers == []


# ---- drops tables ------------------------------------------------------------------------------


def drops_for(rows: list[int], rg: int) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"row_group": rg, "row": r, "column": "a", "reason": "rejected", "status": 400,
             "message": f"row {r} is too long"}
            for r in rows
        ],
        schema=DROPS_SCHEMA,
    )  # fmt: skip


def test_drops_are_committed_beside_their_row_group_and_named_by_its_footer(
    store: PartitionStore,
) -> None:
    ref = make_ref()
    store.prepare(ref, ResumeMode.IF_POSSIBLE)
    stats = {"dropped_rows": 2, "drop_reasons": {"a: rejected (HTTP 400)": 2}}
    info = store.write_row_group(ref, 0, rows_for(ref, 0, 8), stats, drops=drops_for([3, 7], 0))
    name = info.drops
    assert re.fullmatch(r"drops_00000\.[0-9a-f]{16}\.parquet", name)
    # Outside parquet-files/: whatever reads that folder as the dataset never sees them.
    assert (store.stage_dir(ref) / "drops" / name).is_file()
    assert [p.name for p in store.files_dir(ref).iterdir()] == ["batch_00000.parquet"]
    assert store.drops(ref, info).to_pylist() == drops_for([3, 7], 0).to_pylist()
    # A row group without drops has no file and an empty drops table.
    clean = store.write_row_group(
        ref, 1, rows_for(ref, 1), {"dropped_rows": 0}, drops=drops_for([], 1)
    )
    assert clean.drops is None and store.drops(ref, clean).num_rows == 0
    assert [b.num_rows for b in store.iter_drops(ref)] == [2]


def test_a_crash_between_the_drops_and_the_row_group_keeps_the_old_pair(
    store: PartitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regenerating a row group writes its new drops first; a crash before the row group commits
    leaves the old row group with its own drops (the new file is named by no footer, ignored,
    and removed when the row group is next written)."""
    ref = make_ref()
    store.prepare(ref, ResumeMode.IF_POSSIBLE)
    old = store.write_row_group(
        ref, 0, rows_for(ref, 0, 9), {"dropped_rows": 1}, drops=drops_for([4], 0)
    )
    real = pq.write_table

    def crash_on_the_row_group(table: pa.Table, where: Any, *a: Any, **kw: Any) -> None:
        if "batch_" in str(where):
            raise OSError("disk full")
        real(table, where, *a, **kw)

    monkeypatch.setattr(pq, "write_table", crash_on_the_row_group)
    with pytest.raises(OSError, match="disk full"):
        store.write_row_group(
            ref, 0, rows_for(ref, 0, 8), {"dropped_rows": 2}, drops=drops_for([4, 5], 0)
        )
    monkeypatch.setattr(pq, "write_table", real)
    assert len(list(store.drops_dir(ref).iterdir())) == 2  # the orphan is there...
    info = store.completed(ref)[0]
    assert (info.stats, info.drops) == (
        old.stats,
        old.drops,
    )  # ...the old row group still stands, with its own drops
    assert store.drops(ref, info).to_pylist() == drops_for([4], 0).to_pylist()
    # The next write of that row group (here: no drops) leaves no drops file of it behind.
    store.write_row_group(ref, 0, rows_for(ref, 0), {"dropped_rows": 0})
    assert list(store.drops_dir(ref).iterdir()) == []


def test_a_missing_drops_table_is_a_clear_error(store: PartitionStore) -> None:
    ref = make_ref()
    store.prepare(ref, ResumeMode.IF_POSSIBLE)
    info = store.write_row_group(
        ref, 0, rows_for(ref, 0, 9), {"dropped_rows": 1}, drops=drops_for([4], 0)
    )
    (store.drops_dir(ref) / info.drops).unlink()
    with pytest.raises(CorruptStageError, match=r"drops table of row group 00000.*missing"):
        store.drops(ref, info)
