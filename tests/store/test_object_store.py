"""The partition store on an object-store root (`s3://`), against a local S3-compatible server
(moto, one per session; a fresh bucket per test): the same guarantees as on a local folder,
by other means (store/objects.py): one PUT per finished file, conditional writes of stage.json,
the seal re-checked after a row group's PUT, a lease lock for prepare."""

from __future__ import annotations

import json
import threading
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from dd_assets.store import files, objects
from dd_assets.store.footer import read_footer
from dd_assets.store.objects import Conflict, ObjectPath, ObjectReplacedError, ObjectStoreError
from dd_assets.store.partition_store import (
    ConfigChangedError,
    PartitionStore,
    StageSealedError,
)
from dd_assets.testing.s3 import S3Server

from .test_store import drops_for, fill, make_ref, rows_for

pytestmark = [pytest.mark.slow, pytest.mark.s3]


@pytest.fixture
def store(s3_root: str) -> PartitionStore:
    return PartitionStore(s3_root)


def bucket_keys(server: S3Server, store: PartitionStore) -> list[str]:
    assert isinstance(store.root, ObjectPath)
    return server.keys(store.root.bucket)


def test_row_groups_round_trip_with_side_tables_and_no_temp_objects(
    store: PartitionStore, s3_server: S3Server
) -> None:
    ref = make_ref()
    store.prepare(ref, "if_possible")
    fill(store, ref, [0, 2])
    drops = drops_for([15], 1)
    keep = pa.table({"hidden": [f"h{i}" for i in range(10, 20)]})
    store.write_row_group(ref, 1, rows_for(ref, 1), drops=drops, dropped_columns=keep)

    done = store.completed(ref)
    assert sorted(done) == [0, 1, 2] and store.missing(ref) == []
    assert (
        str(done[1].path)
        == f"{store.root}/support/tickets/{ref.fp12}/parquet-files/batch_00001.parquet"
    )
    assert store.read_row_group(ref, 1).column("id").to_pylist() == list(range(10, 20))
    assert store.dataset(ref).to_table().num_rows == 25
    assert sum(b.num_rows for b in store.iter_batches(ref)) == 25
    assert store.drops(ref, done[1]).to_pylist() == drops.to_pylist()
    assert store.dropped_columns(ref, done[1]).equals(keep)  # type: ignore[union-attr]
    assert [f.mismatch(ref) for f in store.footers(ref)] == [None, None, None]
    state = store.state(ref)
    assert state["fingerprint"] == ref.fingerprint and state["num_records"] == 25

    # Regenerating row group 1 without drops removes the old side tables (footer names none).
    store.write_row_group(ref, 1, rows_for(ref, 1))
    keys = bucket_keys(s3_server, store)
    prefix = f"data/support/tickets/{ref.fp12}/"
    assert sorted(k.removeprefix(prefix) for k in keys if "parquet-files" in k) == [
        f"parquet-files/batch_{i:05d}.parquet" for i in range(3)
    ]
    assert not [k for k in keys if "/drops/" in k or "/dropped-columns/" in k]
    assert not [k for k in keys if ".dd-tmp." in k or k.endswith(".lock")]
    # Each object is a whole parquet file, as the store wrote it.
    raw = objects.get(done[0].path)  # type: ignore[arg-type]
    assert raw is not None
    assert pq.read_table(pa.BufferReader(raw[0])).num_rows == 10


def test_a_row_group_replaced_while_it_is_read_is_read_as_one_version(
    store: PartitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Overlapping runs may both write a shared row group (docs/scaling.md); a reader (the next
    stage's seed) must get one PUT's bytes whole, never one PUT's footer over the next's pages."""
    ref = make_ref()
    fill(store, ref, [0])
    info = store.completed(ref)[0]
    bigger = pa.table({"id": list(range(1000)), "text": ["x" * 50] * 1000})
    real_get = objects.get

    def get_then_replaced(path: ObjectPath) -> Any:
        found = real_get(path)
        if path == info.path:  # another run's PUT lands right after this read began
            buf = pa.BufferOutputStream()
            pq.write_table(bigger, buf)
            objects.put(path, buf.getvalue().to_pybytes())
        return found

    monkeypatch.setattr(objects, "get", get_then_replaced)
    assert store.read(info).column("id").to_pylist() == list(range(10))
    monkeypatch.undo()
    assert store.read(info).num_rows == 1000


def test_a_footer_read_while_its_object_is_replaced_is_one_versions_footer(
    store: PartitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A footer bigger than the first GET's bytes takes a second GET, pinned (as the first) to
    the ETag the HEAD saw: when another run's PUT lands in between, the read starts over on the
    new version instead of taking one PUT's footer length and the next one's bytes (which said
    "unreadable parquet" and failed an overlapping backfill's run)."""
    ref = make_ref()
    fill(store, ref, [0])
    info = store.completed(ref)[0]
    monkeypatch.setattr(files, "FOOTER_READ", 16)  # every footer needs the second GET
    found = objects.get(info.path)
    assert found is not None
    meta = pq.read_metadata(pa.BufferReader(found[0])).metadata
    bigger = pa.table({"id": list(range(1000)), "text": ["x" * 50] * 1000})
    replaced: list[str] = []
    real_read = objects.read_range

    def read_then_replaced(path: ObjectPath, start: int, end: int, e_tag: str) -> bytes:
        got = real_read(path, start, end, e_tag)
        if path == info.path and not replaced:  # another run's PUT lands after the first GET
            buf = pa.BufferOutputStream()
            pq.write_table(bigger.replace_schema_metadata(meta), buf)
            replaced.append(objects.put(path, buf.getvalue().to_pybytes()))
        return got

    monkeypatch.setattr(objects, "read_range", read_then_replaced)
    footer = read_footer(info.path)
    assert replaced and footer.error is None, footer.error
    assert footer.schema is not None and footer.schema.names == ["id", "text"]  # the new PUT's


def parquet_bytes(table: pa.Table) -> bytes:
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, write_page_checksum=True)
    return buf.getvalue().to_pybytes()


def test_pages_read_while_their_object_is_replaced_are_one_versions_pages(
    store: PartitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """iter_batches and verify_pages (the checks, export, profiles, previews) read an object's
    footer, then the pages it names. Another run's PUT landing in between (overlapping
    backfills) starts the read over on the new version: its rows whole, and no page checksum
    error taken for corruption; a PUT landing after rows were handed on is ObjectReplacedError,
    never the rest of another version's rows."""
    ref = make_ref()
    fill(store, ref, [0])
    info = store.completed(ref)[0]
    path = info.path
    bigger = pa.table({"id": list(range(1000)), "text": ["x" * 50] * 1000})
    replacing: list[bytes] = []
    real = pq.ParquetFile

    class ReplacedOnceOpened(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)  # the footer is read
            if replacing:
                objects.put(path, replacing.pop())  # type: ignore[arg-type]

    monkeypatch.setattr(pq, "ParquetFile", ReplacedOnceOpened)
    replacing.append(parquet_bytes(bigger))
    got = pa.Table.from_batches(list(store.batches(info)))
    assert not replacing and got.column("id").to_pylist() == list(range(1000))
    replacing.append(parquet_bytes(bigger.slice(0, 7)))
    assert files.verify_pages(path) is None and not replacing
    assert files.parquet_file(path).read().num_rows == 7

    # Read lazily (pyarrow pre-buffers a file's column chunks up to 32 MiB at once, so only a
    # bigger file is read after its first batch), a PUT landing after rows were handed on ends
    # the read: restarting would repeat them, continuing would mix two versions.
    buf = pa.BufferOutputStream()
    pq.write_table(bigger.slice(0, 30), buf, row_group_size=10, write_page_checksum=True)
    objects.put(path, buf.getvalue().to_pybytes())  # type: ignore[arg-type]

    class Lazy(real):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "pre_buffer": False})

    monkeypatch.setattr(pq, "ParquetFile", Lazy)
    batches = files.iter_batches(path, batch_size=10)
    assert next(batches).column("id").to_pylist() == list(range(10))
    objects.put(path, parquet_bytes(bigger))  # type: ignore[arg-type]
    with pytest.raises(ObjectReplacedError, match=r"batch_00000\.parquet was replaced"):
        next(batches)


def test_a_dataset_reads_each_object_at_one_version(
    store: PartitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dataset (a `mode: sample` seed counts its rows, then takes some; the IO manager's
    readers) reopens each object for every scan and reuses the footer it cached: each object is
    read at the version its first open found, and a scan meeting a replaced object, between
    scans or within one, raises ObjectReplacedError instead of reading one PUT's pages by the
    other's footer. A new dataset reads the new version."""
    ref = make_ref()
    fill(store, ref, [0, 1])
    path = store.completed(ref)[1].path
    bigger = pa.table({"id": list(range(1000)), "text": ["x" * 50] * 1000})
    bigger = bigger.replace_schema_metadata(files.parquet_footer(path).metadata)
    sample = store.dataset(ref)
    assert sample.count_rows() == 20
    objects.put(path, parquet_bytes(bigger))  # type: ignore[arg-type]
    with pytest.raises(ObjectReplacedError, match=r"batch_00001\.parquet was replaced"):
        sample.take(pa.array([15]))
    with pytest.raises(ObjectReplacedError, match=r"batch_00001\.parquet was replaced"):
        sample.to_table()

    fresh = store.dataset(ref)
    real_read = objects.read_range
    reads: list[int] = []

    def read_then_replaced(p: ObjectPath, start: int, end: int, e_tag: str) -> bytes:
        got = real_read(p, start, end, e_tag)
        if p == path and not reads:  # another run's PUT lands after the footer's read
            reads.append(start)
            objects.put(p, parquet_bytes(bigger.slice(0, 3)))
        return got

    monkeypatch.setattr(objects, "read_range", read_then_replaced)
    with pytest.raises(ObjectReplacedError, match=r"batch_00001\.parquet was replaced"):
        fresh.to_table()
    monkeypatch.undo()
    assert store.dataset(ref).to_table().column("id").to_pylist() == [*range(10), 0, 1, 2]


def test_a_scan_reads_each_footer_by_the_listings_etag_with_no_head(
    s3_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan of an object folder lists it (ETags and sizes come with the listing) and reads
    each footer pinned to the listed ETag: one ranged GET per row group, no HEAD of its own."""
    ref = make_ref()
    fill(PartitionStore(s3_root), ref, [0, 1, 2])
    heads: list[ObjectPath] = []
    real_head = objects.head

    def counted(path: ObjectPath) -> Any:
        heads.append(path)
        return real_head(path)

    monkeypatch.setattr(objects, "head", counted)
    assert sorted(PartitionStore(s3_root).completed(ref)) == [0, 1, 2]
    assert heads == []


def test_stage_json_updates_of_concurrent_writers_are_all_kept(store: PartitionStore) -> None:
    """8 writers change stage.json 5 times each, at once: with If-Match every change lands."""
    ref = make_ref()
    store.prepare(ref, "if_possible")
    path = store.stage_dir(ref) / "stage.json"
    assert isinstance(path, ObjectPath)

    def writer(i: int) -> None:
        for j in range(5):
            objects.update_json(path, lambda s, i=i, j=j: {**(s or {}), f"w{i}_{j}": True})

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    state = store.state(ref)
    assert {f"w{i}_{j}" for i in range(8) for j in range(5)} <= set(state)
    # and the mechanism itself: a write with a stale ETag is refused
    raw = objects.get(path)
    assert raw is not None
    # (S3's ETag of a single PUT is the content's MD5: a changed content, a new ETag)
    objects.put(path, raw[0] + b" ", mode={"e_tag": raw[1]})
    with pytest.raises(Conflict):
        objects.put(path, raw[0], mode={"e_tag": raw[1]})
    with pytest.raises(Conflict):
        objects.put(path, raw[0], mode="create")


def test_a_finalize_beginning_while_a_row_group_is_written_takes_the_row_group_back(
    store: PartitionStore, monkeypatch: pytest.MonkeyPatch, s3_server: S3Server
) -> None:
    ref = make_ref()
    fill(store, ref, [0, 1])
    real_put = objects.put

    def put_then_finalize_starts(path: ObjectPath, data: Any, mode: Any = None) -> str:
        tag = real_put(path, data, mode)
        if path.name == "batch_00002.parquet":
            store.begin_finalize(ref)  # what a concurrent finalize does during this PUT
        return tag

    monkeypatch.setattr(objects, "put", put_then_finalize_starts)
    with pytest.raises(StageSealedError, match="'tickets' is finalized"):
        store.write_row_group(ref, 2, rows_for(ref, 2))
    assert sorted(store.completed(ref)) == [0, 1]
    assert not [k for k in bucket_keys(s3_server, store) if k.endswith("batch_00002.parquet")]
    with pytest.raises(StageSealedError):  # and before writing, once sealed
        store.write_row_group(ref, 2, rows_for(ref, 2))


def test_finalize_unseal_never_and_resume_modes(store: PartitionStore) -> None:
    ref = make_ref()
    fill(store, ref, [0, 1, 2])
    store.begin_finalize(ref)
    data, meta = store.final_paths(ref)
    files.write_bytes(data, b"final output")
    files.write_json(meta, {"final_fingerprint": "f"})
    store.complete_finalize(ref)
    assert store.final_output(ref, "f").path == data
    moved = store.unseal(ref)
    assert moved is not None and moved.name.startswith("final.invalidated-")
    assert files.read_bytes(moved / "data.parquet") == b"final output"  # moved, not deleted
    assert not files.exists(data) and store.state(ref)["finalize_state"] is None

    # never: the fingerprint folder is moved aside once per token, whole
    store.prepare(ref, "never", token="t1")
    assert store.completed(ref) == {}
    aside = [
        f for f in files.subfolders(store.stage_base("support", "tickets")) if ".replaced-" in f
    ]
    assert len(aside) == 1
    fill(store, ref, [0])
    store.prepare(ref, "never", token="t1")  # the same materialization: nothing moved
    assert sorted(store.completed(ref)) == [0]
    assert [f.fp12 for f in store.fingerprints("support", "tickets")] == [ref.fp12]

    # always, with data only under another fingerprint: refused, as on a local root
    other = make_ref(fp="b" * 64)
    with pytest.raises(ConfigChangedError):
        store.prepare(other, "always")


def test_bad_object_roots_are_one_clear_error(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ObjectStoreError, match=r"unknown scheme 'ftp://'.*DD_ASSETS_ROOT"):
        PartitionStore("ftp://host/data")
    with pytest.raises(
        ObjectStoreError, match=r"s3://no-such-bucket/data: bucket 'no-such-bucket' does not exist"
    ):
        PartitionStore("s3://no-such-bucket/data")
    bucket = s3_server.create_bucket()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    # obstore then asks the instance metadata service: a closed port here, so the test never
    # waits on a network without one
    monkeypatch.setenv("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9")
    objects._clients.clear()
    try:
        with pytest.raises(ObjectStoreError, match=r"no credentials.*AWS_ACCESS_KEY_ID"):
            PartitionStore(f"s3://{bucket}/nocreds")
    finally:
        objects._clients.clear()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    objects._clients.clear()
    try:
        with pytest.raises(ObjectStoreError, match=r"cannot be reached; check AWS_ENDPOINT_URL"):
            PartitionStore(f"s3://{bucket}/unreachable")
    finally:
        objects._clients.clear()
    # file:// is a local folder
    assert not files.is_object(files.root_path("file:///tmp/x"))


def test_local_roots_take_no_object_store_path(tmp_path: Any) -> None:
    store = PartitionStore(tmp_path / "root")
    assert not store.objects and not files.is_object(store.root)
    ref = make_ref()
    fill(store, ref, [0])
    assert json.loads((store.stage_dir(ref) / "stage.json").read_text())["num_records"] == 25  # type: ignore[operator]


CHAIN = {
    "name": "objchain",
    "stages": [
        {
            "name": "reviews",
            "num_records": 40,
            "buffer_size": 10,
            "columns": [
                {"name": "rid", "column_type": "sampler", "sampler_type": "uuid"},
                {
                    "name": "stars",
                    "column_type": "sampler",
                    "sampler_type": "category",
                    "params": {"values": [1, 2, 3, 4, 5]},
                },
            ],
            "finalize": [{"processor_type": "filter", "expr": "{{ stars >= 3 }}"}],
        },
        {
            "name": "replies",
            "num_records": 40,
            "buffer_size": 10,
            "seed": {"stage": "reviews", "mode": "row_group"},
            "columns": [{"name": "reply", "column_type": "expression", "expr": "re {{ rid }}"}],
        },
        {
            "name": "digest",
            "num_records": 10,
            "buffer_size": 5,
            "seed": {"stage": "reviews", "mode": "sample", "strategy": "shuffle"},
            "columns": [{"name": "hi", "column_type": "expression", "expr": "{{ stars }}*"}],
        },
    ],
}


def test_cli_materialize_status_check_export_on_an_s3_root(
    s3_root: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands a user runs, on an s3:// root: seeds from upstream stages (row group and
    sample of a finalized stage), finalize, status, the asset checks, export, the IO manager.
    ~15 s: three
    Dagster runs (materialize's waves, check) are what it tests; rows equal to a local root's
    are the end-to-end test's (tests/e2e/test_scale_out.py)."""
    from dd_assets import cli
    from dd_assets.testing.workflows import isolated_env, write_config

    cfg = write_config(tmp_path / "objchain.yaml", CHAIN)
    env = isolated_env(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", env["DAGSTER_HOME"])
    monkeypatch.setenv("DD_ASSETS_ROOT", s3_root)
    assert cli.main(["materialize", str(cfg), "--no-progress"]) == 0
    assert cli.main(["status", str(cfg)]) == 0
    assert cli.main(["check", str(cfg)]) == 0
    out = tmp_path / "digest.parquet"
    assert (
        cli.main(["export", str(cfg), "--stage", "digest", "--format", "parquet", "-o", str(out)])
        == 0
    )
    assert pq.read_table(out).num_rows == 10
    printed = capsys.readouterr().out
    assert f"in {s3_root}/objchain/reviews/" in printed and "error:" not in printed

    # The IO manager serves downstream assets from the bucket: a stage's row groups, and a
    # finalized stage's final output.

    from dd_assets.config import load_workflow
    from dd_assets.dagster.build import build_definitions
    from dd_assets.runners.plan import plan_workflow

    seen: dict[str, int] = {}

    @dg.asset(
        ins={
            "replies": dg.AssetIn(key=dg.AssetKey(["objchain", "replies"])),
            "final": dg.AssetIn(key=dg.AssetKey(["objchain", "reviews_final"])),
        }
    )
    def consumer(replies: pads.Dataset, final: pads.Dataset) -> None:
        seen.update(replies=replies.count_rows(), final=final.count_rows())

    defs = build_definitions([plan_workflow(load_workflow(cfg))], root=s3_root)
    merged = dg.Definitions.merge(defs, dg.Definitions(assets=[consumer]))
    job = merged.resolve_implicit_global_asset_job_def()
    assert job.execute_in_process(asset_selection=[consumer.key]).success
    assert seen["replies"] == 40 and 0 < seen["final"] <= 40

    monkeypatch.setenv("DD_ASSETS_ROOT", "s3://no-such-bucket/x")
    capsys.readouterr()
    assert cli.main(["status", str(cfg)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: data root s3://no-such-bucket/x: bucket 'no-such-bucket' does not exist;"
        " create it or fix the root"
    ]


def test_lease_lock_excludes_and_is_taken_over_when_its_holder_died(
    store: PartitionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = store.root / "wf" / "stage" / ".abc.lock"
    assert isinstance(lock, ObjectPath)
    inside: list[int] = []
    most = [0]

    def worker() -> None:
        for _ in range(3):
            with objects.lease_lock(lock):
                inside.append(1)
                most[0] = max(most[0], len(inside))
                inside.pop()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1 and objects.get(lock) is None  # one holder at a time, released
    # A holder killed with SIGKILL leaves its lock object: taken over once the lease ran out.
    objects.put(lock, json.dumps({"owner": "dead", "expires": 0}).encode(), mode="create")
    with objects.lease_lock(lock, wait_s=5):
        raw = objects.get(lock)
        assert raw is not None and json.loads(raw[0])["owner"] != "dead"
    objects.put(lock, json.dumps({"owner": "alive", "expires": 2e9}).encode(), mode="create")
    with (
        pytest.raises(ObjectStoreError, match=r"held for more than 0 s.*delete that object"),
        objects.lease_lock(lock, wait_s=0.2),
    ):
        pass
