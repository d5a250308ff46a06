"""The footer index (store/footer_index.py): a cache that spares scans the parquet footers of
files it describes, and never decides anything the files on disk do not say."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import dd_assets.store.footer_index as footer_index
import dd_assets.store.partition_store as partition_store
from dd_assets.store.footer import RowGroupInfo
from dd_assets.store.layout import FOOTER_INDEX
from dd_assets.store.partition_store import CorruptStageError, PartitionStore, StageRef

FP_A = "a1b2c3d4e5f6" + "0" * 52
FP_B = "b2c3d4e5f6a1" + "1" * 52


def make_ref(fp: str = FP_A, num_records: int = 50) -> StageRef:
    return StageRef(
        workflow="w", stage="s", fingerprint=fp, buffer_size=10, num_records=num_records
    )


def rows(ref: StageRef, rg: int, tag: str = "") -> pa.Table:
    start, end = ref.row_range(rg)
    return pa.table(
        {"id": list(range(start, end)), "text": [f"{tag}{i}" for i in range(start, end)]}
    )


def fill(store: PartitionStore, ref: StageRef) -> None:
    for rg in range(ref.num_row_groups):
        store.write_row_group(ref, rg, rows(ref, rg), stats={"rg": rg}, inputs={"up": f"v{rg}"})


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The footers the store reads from files."""
    seen: list[Path] = []
    real = partition_store.read_footer

    def counting(path: Path, version: Any = None) -> Any:
        seen.append(path)
        return real(path, version)

    monkeypatch.setattr(partition_store, "read_footer", counting)
    return seen


def test_a_second_scan_reads_no_footer_and_sees_the_same(tmp_path: Path, reads: list[Path]) -> None:
    ref = make_ref()
    fill(PartitionStore(tmp_path), ref)
    reads.clear()
    first = PartitionStore(tmp_path).completed(ref)  # a new process, say: reads every footer
    assert len(reads) == 5
    assert (PartitionStore(tmp_path).stage_dir(ref) / FOOTER_INDEX).exists()
    reads.clear()
    second = PartitionStore(tmp_path).completed(ref)
    assert reads == []
    assert second == first
    for rg in first:  # every field, those left out of == too
        for f in dataclasses.fields(RowGroupInfo):
            assert getattr(second[rg], f.name) == getattr(first[rg], f.name), f.name
    assert [second[rg].inputs for rg in range(5)] == [{"up": f"v{rg}"} for rg in range(5)]
    assert [i.data_version for i in second.values()] == [i.data_version for i in first.values()]
    assert second[3].stats == {"rg": 3}


def test_the_files_on_disk_decide_not_the_index(tmp_path: Path, reads: list[Path]) -> None:
    ref = make_ref()
    store = PartitionStore(tmp_path)
    fill(store, ref)
    PartitionStore(tmp_path).completed(ref)  # writes the index
    # A row group regenerated with other rows (a new file in its place), one removed, one
    # added: each shows as it is on disk.
    store.write_row_group(ref, 1, rows(ref, 1, tag="new"), stats={}, inputs={"up": "w1"})
    store.batch_path(ref, 2).unlink()
    reads.clear()
    now = PartitionStore(tmp_path).completed(ref)
    assert sorted(now) == [0, 1, 3, 4]
    assert now[1].inputs == {"up": "w1"}
    assert reads == [store.batch_path(ref, 1)]
    # A file written over in place (same inode) is read again too.
    path = store.batch_path(ref, 4)
    with open(path, "r+b") as f:
        f.seek(-8, os.SEEK_END)  # the footer's length and magic
        f.write(b"XXXXXXXX")
    with pytest.raises(CorruptStageError, match="batch_00004"):
        PartitionStore(tmp_path).completed(ref)


def test_a_bad_file_is_refused_on_every_scan(tmp_path: Path) -> None:
    ref, other = make_ref(FP_A), make_ref(FP_B)
    store = PartitionStore(tmp_path)
    fill(store, ref)
    fill(store, other)
    PartitionStore(tmp_path).completed(ref)
    shutil.copy(store.batch_path(other, 2), store.batch_path(ref, 2))  # a foreign file
    for _ in range(2):
        with pytest.raises(CorruptStageError, match="belongs elsewhere"):
            PartitionStore(tmp_path).completed(ref)


def _rewrite(index: Path, change: Any) -> None:
    """Read the index (an Arrow IPC file), change its table, write it back."""
    with pa.OSFile(str(index)) as src:  # read into memory: the file is written over below
        table = pa.ipc.open_file(src).read_all()
    table = change(table)
    with pa.OSFile(str(index), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _lie_about_rows(table: pa.Table) -> pa.Table:
    rows = table.column("rows").to_pylist()
    rows[0] = 999
    return table.set_column(table.column_names.index("rows"), "rows", pa.array(rows, pa.int64()))


def test_an_index_that_is_not_this_folders_is_ignored(tmp_path: Path, reads: list[Path]) -> None:
    ref = make_ref()
    store = PartitionStore(tmp_path)
    fill(store, ref)
    index = store.stage_dir(ref) / FOOTER_INDEX
    PartitionStore(tmp_path).completed(ref)
    # Lie about a file the index describes: a valid index of this folder is believed...
    _rewrite(index, _lie_about_rows)
    assert PartitionStore(tmp_path).completed(ref)[0].rows == 999
    # ...and no other: of another fingerprint, another scheme, or not an index at all.
    for change in [
        lambda t: t.replace_schema_metadata({b"scheme": b"1", b"fingerprint": FP_B.encode()}),
        lambda t: t.replace_schema_metadata({b"scheme": b"99", b"fingerprint": FP_A.encode()}),
        lambda t: t.drop_columns(["ctime_ns"]),
    ]:
        _rewrite(index, change)
        reads.clear()
        assert PartitionStore(tmp_path).completed(ref)[0].rows == 10
        assert len(reads) == 5  # every footer read again (and the index rewritten)
        _rewrite(index, _lie_about_rows)
    index.write_bytes(b"not an arrow file")
    reads.clear()
    assert PartitionStore(tmp_path).completed(ref)[0].rows == 10
    assert len(reads) == 5


def test_an_index_that_cannot_be_written_costs_only_footer_reads(
    tmp_path: Path, reads: list[Path]
) -> None:
    """A read-only store, say: here a folder stands where the index would be written."""
    ref = make_ref()
    store = PartitionStore(tmp_path)
    fill(store, ref)
    (store.stage_dir(ref) / FOOTER_INDEX).mkdir()
    for _ in range(2):
        reads.clear()
        assert sorted(PartitionStore(tmp_path).completed(ref)) == [0, 1, 2, 3, 4]
        assert len(reads) == 5


def test_the_index_is_beside_the_files_not_among_them(tmp_path: Path) -> None:
    """Readers of parquet-files/ as a dataset never see it."""
    ref = make_ref()
    store = PartitionStore(tmp_path)
    fill(store, ref)
    PartitionStore(tmp_path).completed(ref)
    assert (store.stage_dir(ref) / FOOTER_INDEX).exists()
    assert all(p.suffix == ".parquet" for p in store.files_dir(ref).iterdir())
    assert pq.read_table(store.files_dir(ref)).num_rows == 50


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders the store lists, with every folder counted as settled (footer_index.SETTLE_NS:
    a test cannot wait for a real folder to be still for two seconds)."""
    monkeypatch.setattr(footer_index, "SETTLE_NS", -(10**18))
    seen: list[str] = []
    real = os.listdir

    def counting(path: Any) -> list[str]:
        seen.append(str(path))
        return real(path)

    monkeypatch.setattr(partition_store.os, "listdir", counting)
    return seen


def test_a_settled_folder_spares_status_the_listing_but_not_the_runs(
    tmp_path: Path, reads: list[Path], listings: list[str]
) -> None:
    """`status` (footer_table) trusts an index whose folder has not changed; the runs and checks
    (completed) stat every file, so a file rewritten in place, which moves no folder stamp, is
    seen by them, and from then on by status too."""
    ref = make_ref()
    store = PartitionStore(tmp_path)
    fill(store, ref)
    first = PartitionStore(tmp_path).completed(ref)  # lists, and records the folder's stamp
    listings.clear()
    reads.clear()
    table = PartitionStore(tmp_path).footer_table(ref)
    assert table is not None and table.num_rows == 5
    assert (listings, reads) == ([], [])
    second = PartitionStore(tmp_path).completed(ref)
    assert len(listings) == 1 and reads == []  # listed and stat'ed, no footer read
    for rg in first:
        for f in dataclasses.fields(RowGroupInfo):
            assert getattr(second[rg], f.name) == getattr(first[rg], f.name), f.name
    # Every change to the folder's entries is seen: a file removed, one replaced, one added.
    folder = store.files_dir(ref)
    os.remove(folder / "batch_00004.parquet")
    assert sorted(PartitionStore(tmp_path).completed(ref)) == [0, 1, 2, 3]
    store.write_row_group(ref, 2, rows(ref, 2, tag="new"), stats={"rg": "new"})
    assert PartitionStore(tmp_path).completed(ref)[2].stats == {"rg": "new"}
    PartitionStore(tmp_path).completed(ref)  # the index stands for the folder as it is
    assert PartitionStore(tmp_path).footer_table(ref) is not None
    # Bytes rewritten in place (a crashed copy onto a row group): no folder stamp moves.
    victim = folder / "batch_00001.parquet"
    victim.write_bytes(victim.read_bytes()[:-30])
    with pytest.raises(CorruptStageError, match=r"batch_00001\.parquet"):
        PartitionStore(tmp_path).completed(ref)
    assert not (store.stage_dir(ref) / FOOTER_INDEX).exists()  # retired: status reads footers
    assert PartitionStore(tmp_path).footer_table(ref) is None
    pq.write_table(rows(ref, 0), folder / "batch_00004.parquet")  # no dd-assets footer: refused
    with pytest.raises(CorruptStageError):
        PartitionStore(tmp_path).completed(ref)


def test_a_folder_that_changed_just_before_its_listing_is_listed(
    tmp_path: Path, reads: list[Path]
) -> None:
    """Without SETTLE_NS of stillness, a change in the same timestamp tick could go unseen: the
    index still spares the footer reads, but the folder is listed and each file checked."""
    ref = make_ref()
    fill(PartitionStore(tmp_path), ref)
    PartitionStore(tmp_path).completed(ref)
    index = footer_index.FooterIndex(PartitionStore(tmp_path).stage_dir(ref) / FOOTER_INDEX, FP_A)
    now = footer_index.FolderStamp.of(PartitionStore(tmp_path).files_dir(ref))
    assert not now.settled and not index.describes(now)
    reads.clear()
    assert len(PartitionStore(tmp_path).completed(ref)) == 5
    assert reads == []
