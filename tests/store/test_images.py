"""An image column's files (store/images.py): written before their row group commits and named by
content, so a crash before the commit leaves only files nothing names (removed by the next write)
and a rewrite with the same images keeps the data version; a missing file is found and named;
the same on an object-store root."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dd_assets.engine.schema import IMAGE_TYPE
from dd_assets.store import files
from dd_assets.store.atomic import TEMP_MARK, _host
from dd_assets.store.images import write_images
from dd_assets.store.layout import StageRef
from dd_assets.store.partition_store import PartitionStore
from dd_assets.testing.mock_openai import mock_png

from .test_store import dead_pid, make_ref


def _rows(ref: StageRef, rg: int, tag: str) -> pa.Table:
    start, end = ref.row_range(rg)
    pics = [[base64.b64encode(mock_png(tag, str(i))).decode()] for i in range(start, end)]
    pics[0] = None  # a skipped cell has no image
    pics[1] = pics[1] * 2  # the same image twice: one file
    return pa.table(
        {"id": pa.array(range(start, end), pa.int64()), "pic": pa.array(pics, IMAGE_TYPE)}
    )


def _check_round_trip(store: PartitionStore, ref: StageRef) -> None:
    store.prepare(ref, "if_possible")
    info = store.write_row_group(ref, 1, _rows(ref, 1, "a"), images=["pic"])
    base = store.stage_dir(ref)
    cells = store.read(info).column("pic").to_pylist()
    assert cells[0] is None and cells[1][0] == cells[1][1]
    assert all(
        p.startswith("images/pic/00001/") and p.endswith(".png") for c in cells[1:] for p in c
    )
    assert files.read_bytes(base / cells[2][0]) == mock_png("a", "12")
    kv = {f.row_group: f.kv for f in store.footers(ref)}[1]
    assert json.loads(kv["images"]) == {"pic": 9}  # type: ignore[index]
    assert store.missing_image(ref, info.path, ["pic"]) is None

    # Written again with the same images: the same paths, so the same data version.
    again = store.write_row_group(ref, 1, _rows(ref, 1, "a"), images=["pic"])
    assert again.data_version == info.data_version
    # A crash after other images were written, before their row group committed: the
    # committed row group is untouched and whole; the next write removes what nothing names.
    write_images(base, 1, _rows(ref, 1, "b"), ["pic"])
    assert len(files.names(base / "images/pic/00001")) == 18
    assert store.missing_image(ref, info.path, ["pic"]) is None
    other = store.write_row_group(ref, 1, _rows(ref, 1, "c"), images=["pic"])
    assert other.data_version != info.data_version
    assert len(files.names(base / "images/pic/00001")) == 9

    gone = store.read(other).column("pic").to_pylist()[5][0]
    files.remove(base / gone)
    assert store.missing_image(ref, other.path, ["pic"]) == gone


def test_image_files_local(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "dd-data")
    ref = make_ref()
    _check_round_trip(store, ref)
    folder = store.stage_dir(ref) / "images/pic/00001"
    assert isinstance(folder, Path)
    dead = folder / f"x.png{TEMP_MARK}{_host()}.{dead_pid()}.1"
    dead.write_bytes(b"half an image")
    assert dead in store.sweep(ref)
    # the parquet file itself holds paths, not images
    assert pq.read_table(store.batch_path(ref, 1)).column("pic").type == IMAGE_TYPE


@pytest.mark.slow
@pytest.mark.s3
def test_image_files_on_an_object_root(s3_root: str) -> None:
    _check_round_trip(PartitionStore(s3_root), make_ref())
