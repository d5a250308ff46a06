"""Dagster's SQLite storage, same files, cheaper writes (issue 17: Dagster overhead per partition).

Dagster's own SQLite storage opens a new SQLAlchemy engine for every statement block
(`create_engine(..., poolclass=NullPool)` in `_connect`), so each event write pays an engine, a
connection, a cold statement compile (SQLAlchemy's compiled cache lives on the engine) and a
commit with `synchronous=FULL`; and it has no batched write (`store_event_batch` stores events one
by one). Profiled on a 40-row-group run: ~20 ms of CPU and several fsyncs per event, most of a
partition's cost.

This storage keeps Dagster's classes, schema and file layout (`history/runs.db`,
`history/runs/<run id>.db` and `index.db`, `schedules/`: an instance can switch to it and back
and keep its history) and changes only how they are opened:

- one engine per database file, kept, so statements compile once per process;
- every database keeps a pooled connection; a run's own event log is checkpointed (its WAL
  copied into `<run id>.db`, whose modification is what the webserver watches to stream a run's
  logs) when the run's status changes and otherwise at most every 0.5 s (`_Checkpoints`);
- `PRAGMA synchronous=NORMAL` (the databases are in WAL mode already): a commit no longer waits for
  an fsync; a process crash loses nothing, a power loss may lose the last transactions, never
  corrupts the database (https://www.sqlite.org/pragma.html#pragma_synchronous);
- `store_event_batch` writes a batch of asset and asset-check events in one transaction per
  database (each event serialized once, check evaluations as one executemany), and
  `DAGSTER_EVENT_BATCH_SIZE` (Dagster's switch for batched writes, read per event) defaults to
  on where this storage is used, so a run's "planned" events (one per partition) are one write;
  it tells the writing thread the storage ids of the materializations it stored (`take_stored`).

dd-assets writes it into the dagster.yaml of every instance it creates (instance.py);
docs/dagster.md says how an existing instance opts in."""

from __future__ import annotations

import atexit
import os
import shutil
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluation,
    AssetCheckEvaluationPlanned,
)
from dagster._core.events import (
    ASSET_CHECK_EVENTS,
    ASSET_EVENTS,
    EVENT_TYPE_TO_PIPELINE_RUN_STATUS,
    DagsterEventType,
)
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import (
    AssetCheckExecutionsTable,
    AssetKeyTable,
    SqlEventLogStorageTable,
)
from dagster._core.storage.event_log.sqlite.sqlite_event_log import (
    INDEX_SHARD_NAME,
    SqliteEventLogStorage,
)
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData, serialize_value
from dagster.version import __version__ as dagster_version
from sqlalchemy import bindparam
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool, QueuePool

MATERIALIZATION = DagsterEventType.ASSET_MATERIALIZATION
BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
BATCH_SIZE = "10000"
RUN_ENGINES_KEPT = 8  # run event logs this process wrote last (one per run, in practice)
# How long a run's events may wait in its log's WAL before they reach `<run id>.db` (what the
# webserver watches to stream a run's logs); a change of the run's status is checkpointed at once.
CHECKPOINT_SECONDS = 0.5


def _engine(conn_string: str) -> Engine:
    engine = create_engine(
        conn_string,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
        poolclass=QueuePool,
        pool_size=1,
        max_overflow=8,
    )

    @sa_event.listens_for(engine, "connect")
    def _normal(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=NORMAL")

    return engine


class _Engines:
    """Engines by database, per process (a forked child opens its own: a SQLite connection must
    not cross a fork)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.by_name: OrderedDict[str, Engine] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, name: str, conn_string: str) -> tuple[Engine, bool]:
        with self.lock:
            if self.pid != os.getpid():
                self.pid, self.by_name = os.getpid(), OrderedDict()
            engine = self.by_name.get(name)
            if engine is not None:
                self.by_name.move_to_end(name)
                return engine, False
            engine = self.by_name[name] = _engine(conn_string)
            runs = [k for k in self.by_name if k != INDEX_SHARD_NAME]
            for old in runs[:-RUN_ENGINES_KEPT]:
                self.by_name.pop(old).dispose()
            return engine, True

    def dispose(self) -> None:
        with self.lock:
            for engine in self.by_name.values():
                engine.dispose()
            self.by_name.clear()


def _dispose_at_exit(engines: _Engines) -> None:
    """Close the kept connections when the process exits (the last connection to close
    checkpoints its WAL into the database file and removes it), without keeping them alive."""
    ref = weakref.ref(engines)

    def dispose() -> None:
        alive = ref()
        if alive is not None and alive.pid == os.getpid():
            alive.dispose()

    atexit.register(dispose)


class _Checkpoints:
    """When a run's event log moves from its WAL into `<run id>.db`. Dagster's storage closes
    the log's only connection after every statement block, and closing the last connection
    checkpoints the WAL and removes it (two fsyncs, a file created and deleted: most of what a
    batch of events cost, and a dozen times per run for its step and log events). The connection
    is kept instead, and the WAL checkpointed after an event that changes the run's status
    (start, success, failure: as Dagster does), after any other at most every
    CHECKPOINT_SECONDS (a timer catches the last of a burst), and when the process exits (the
    connection's close). Readers see the WAL either way (a crash loses nothing: the WAL is the
    database's); the checkpoint is for the webserver's watch on the file, which streams a running
    run's events."""

    def __init__(self, storage: DdSqliteEventLogStorage) -> None:
        self.storage = weakref.ref(storage)
        self.last: dict[str, float] = {}
        self.timers: dict[str, threading.Timer] = {}
        self.lock = threading.Lock()

    def wrote(self, shard: str, conn: Connection, urgent: bool) -> None:
        """After a committed write to `shard` (the storage's `_db_lock` held)."""
        now = time.monotonic()
        with self.lock:
            due = urgent or now - self.last.get(shard, -CHECKPOINT_SECONDS) >= CHECKPOINT_SECONDS
            if due:
                self.last[shard] = now
            elif shard not in self.timers:
                wait = CHECKPOINT_SECONDS - (now - self.last[shard])
                timer = self.timers[shard] = threading.Timer(wait, self._later, (shard,))
                timer.daemon = True
                timer.start()
        if due:
            _checkpoint(conn)

    def _later(self, shard: str) -> None:
        with self.lock:
            self.timers.pop(shard, None)
            self.last[shard] = time.monotonic()
        storage = self.storage()
        if storage is None:
            return
        with storage._db_lock:
            engine = storage._engines.by_name.get(shard)
            if engine is not None and storage._engines.pid == os.getpid():
                with engine.connect() as conn:
                    _checkpoint(conn)


def _checkpoint(conn: Connection) -> None:
    conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


class DdSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage with kept engines and batched asset-event writes."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        self._engines = _Engines()
        _dispose_at_exit(self._engines)
        self._checkpoints = _Checkpoints(self)
        self._batch = threading.local()
        self._schema_seen: set[str] = set()
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        held = getattr(self._batch, "index", None)
        if held is not None and shard == INDEX_SHARD_NAME:
            # Inside a batch's index transaction (this thread holds the lock): Dagster's own
            # helpers called from it (asset-check rows) write in that same transaction.
            yield held
            return
        with self._db_lock:
            engine, _ = self._engines.get(shard, self.conn_string_for_shard(shard))
            if shard not in self._initialized_dbs:
                if shard == INDEX_SHARD_NAME or not self._copy_template(shard):
                    self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                sqlite = conn.connection.dbapi_connection
                changes = sqlite.total_changes  # type: ignore[union-attr]
                with conn.begin():
                    yield conn
                if shard != INDEX_SHARD_NAME and sqlite.total_changes != changes:  # type: ignore[union-attr]
                    self._checkpoints.wrote(
                        shard, conn, urgent=not getattr(self._batch, "may_wait", False)
                    )

    def has_table(self, table_name: str) -> bool:
        """Dagster asks before every asset-event write (a new engine and a schema read each
        time); a table that exists stays (migrations only add), so a yes is kept."""
        if table_name in self._schema_seen:
            return True
        found = super().has_table(table_name)
        if found:
            self._schema_seen.add(table_name)
        return found

    def _has_asset_key_col_on_connection(self, conn: Connection, column_name: str) -> bool:
        """As `has_table`, for the asset-key columns Dagster checks on every asset event."""
        seen = f"asset_keys.{column_name}"
        if seen in self._schema_seen:
            return True
        found = super()._has_asset_key_col_on_connection(conn, column_name)
        if found:
            self._schema_seen.add(seen)
        return found

    def _copy_template(self, shard: str) -> bool:
        """A new run's event log as a copy of an empty one made once by Dagster's own `_initdb`
        (per Dagster version): creating the tables and stamping the schema version (alembic reads
        all its revision scripts) is most of a run's fixed cost otherwise. False when the file
        exists (another process made it: Dagster's `_initdb` checks it as usual)."""
        path = self.path_for_shard(shard)
        if os.path.exists(path):
            return False
        template = self.run_log_template()
        tmp = f"{path}.{os.getpid()}.tmp"
        shutil.copyfile(template, tmp)
        try:
            os.link(tmp, path)  # never over a log another process just created
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        return True

    def run_log_template(self) -> str:
        """The empty run log new runs copy, made if missing. A new instance makes it when it
        is created (dagster/instance.py), so its first run does not: that run's requests are
        already going out while Dagster starts it, and the 0.6 s of CPU would be theirs."""
        template = os.path.join(self._base_dir, f".dd-assets-run-log-{dagster_version}.sqlite")
        if not os.path.exists(template):
            tmp = f"{template}.{os.getpid()}.tmp"
            engine = create_engine(f"sqlite:///{tmp}", poolclass=NullPool)
            try:
                self._initdb(engine)
            finally:
                engine.dispose()  # the last connection: the WAL is checkpointed into the file
            os.replace(tmp, template)
        return template

    def store_event(self, event: EventLogEntry) -> None:
        """An asset or asset-check event alone goes the batch's way too (its storage id is then
        known to `take_stored`); anything else as Dagster stores it."""
        if _batchable(event):
            self._store_batch([event])
            return
        self._batch.may_wait = event.dagster_event_type not in EVENT_TYPE_TO_PIPELINE_RUN_STATUS
        try:
            super().store_event(event)
        finally:
            self._batch.may_wait = False

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Consecutive asset and asset-check events of one run in one transaction per database;
        anything else as Dagster stores it, in order."""
        chunk: list[EventLogEntry] = []
        for event in events:
            if _batchable(event) and (not chunk or chunk[0].run_id == event.run_id):
                chunk.append(event)
                continue
            self._store_batch(chunk)
            chunk = []
            if _batchable(event):
                chunk.append(event)
            else:
                self.store_event(event)
        self._store_batch(chunk)

    def take_stored(self) -> list[tuple[EventLogEntry, int]]:
        """The materializations this thread stored since it last asked, with their storage ids
        (what a check evaluation or a child's provenance points at, known without reading the
        events back). A thread's first call starts the recording: other threads keep none."""
        stored = getattr(self._batch, "stored", None) or []
        self._batch.stored = []
        return stored

    def _store_batch(self, events: list[EventLogEntry]) -> None:
        """What `store_event` does for asset and asset-check events (the run's log, then the
        index: the event, its tags and the asset's record, or the check's execution row), for
        several events at once: each event serialized once, the inserts as one executemany per
        database, and each asset's record updated once to what the events in order leave."""
        if not events:
            return
        rows = [self._event_to_row(e) for e in events]
        self._batch.may_wait = True  # _connect: a checkpoint may wait (_Checkpoints)
        try:
            with self.run_connection(events[0].run_id) as conn:
                conn.execute(SqlEventLogStorageTable.insert(), rows)
        finally:
            self._batch.may_wait = False
        insert = SqlEventLogStorageTable.insert().returning(
            SqlEventLogStorageTable.c.id, sort_by_parameter_order=True
        )
        with self.index_transaction() as conn:
            self._batch.index = conn
            try:
                ids = [row[0] for row in conn.execute(insert, rows)]
                assets = [
                    (e, i)
                    for e, i in zip(events, ids, strict=True)
                    if e.get_dagster_event().event_type not in ASSET_CHECK_EVENTS
                ]
                if assets:
                    self._store_asset_event_tags(
                        conn, [e for e, _ in assets], [i for _, i in assets]
                    )
                    self._store_asset_records(conn, assets)
                evaluations: list[tuple[EventLogEntry, int, str]] = []
                for event, event_id, row in zip(events, ids, rows, strict=True):
                    kind = event.get_dagster_event().event_type
                    if kind == DagsterEventType.ASSET_CHECK_EVALUATION:
                        evaluations.append((event, event_id, row["event"]))
                    elif kind in ASSET_CHECK_EVENTS:
                        self._store_check_evaluations(conn, evaluations)
                        evaluations = []
                        self.store_asset_check_event(event, event_id)
                self._store_check_evaluations(conn, evaluations)
            finally:
                self._batch.index = None
        stored = getattr(self._batch, "stored", None)
        if stored is not None:
            stored.extend((e, i) for e, i in assets if e.dagster_event_type == MATERIALIZATION)

    def _store_check_evaluations(
        self, conn: Connection, evaluations: list[tuple[EventLogEntry, int, str]]
    ) -> None:
        """Dagster's `_update_asset_check_evaluation` for partitioned evaluations of a run: its
        UPDATE of the row the planned event made, as one executemany, with each event's
        serialization from its event-log row (Dagster serializes it again). When not every
        evaluation found its row, each goes Dagster's own way (an UPDATE again is harmless;
        what is missing is inserted, as Dagster does)."""
        partitioned = [e for e in evaluations if _evaluation(e[0]).partition is not None]
        for event, event_id, _ in evaluations:
            if _evaluation(event).partition is None:
                self._update_asset_check_evaluation(event, event_id)
        if not partitioned:
            return
        t = AssetCheckExecutionsTable
        update = (
            t.update()
            .where(
                t.c.asset_key == bindparam("w_asset_key"),
                t.c.check_name == bindparam("w_check_name"),
                t.c.run_id == bindparam("w_run_id"),
                t.c.partition == bindparam("w_partition"),
            )
            .values(
                execution_status=bindparam("v_status"),
                evaluation_event=bindparam("v_event"),
                evaluation_event_timestamp=bindparam("v_timestamp"),
                evaluation_event_storage_id=bindparam("v_event_id"),
                materialization_event_storage_id=bindparam("v_target_id"),
                partition=bindparam("v_partition"),
            )
        )
        params = []
        for event, event_id, serialized in partitioned:
            ev = _evaluation(event)
            target = ev.target_materialization_data
            params.append(
                {
                    "w_asset_key": ev.asset_key.to_string(),
                    "w_check_name": ev.check_name,
                    "w_run_id": event.run_id,
                    "w_partition": ev.partition,
                    "v_status": (
                        AssetCheckExecutionRecordStatus.SUCCEEDED.value
                        if ev.passed
                        else AssetCheckExecutionRecordStatus.FAILED.value
                    ),
                    "v_event": serialized,
                    "v_timestamp": self._event_insert_timestamp(event),
                    "v_event_id": event_id,
                    "v_target_id": target.storage_id if target else None,
                    "v_partition": ev.partition,
                }
            )
        if conn.execute(update, params).rowcount != len(params):
            for event, event_id, _ in partitioned:
                self._update_asset_check_evaluation(event, event_id)

    def _store_asset_check_evaluation_planned(
        self, event: EventLogEntry, event_id: int | None
    ) -> None:
        """Dagster's rows (one per planned partition), with the event serialized once, not once
        per partition (the event holds the run's partition subset: quadratic in the run's
        partitions), and inserted as one executemany (a multi-row VALUES is compiled anew for
        every row count)."""
        planned = cast(AssetCheckEvaluationPlanned, event.get_dagster_event().event_specific_data)
        partition_keys = (
            planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        )
        common = {
            "asset_key": planned.asset_key.to_string(),
            "check_name": planned.check_name,
            "run_id": event.run_id,
            "execution_status": AssetCheckExecutionRecordStatus.PLANNED.value,
            "evaluation_event": serialize_value(event),
            "evaluation_event_timestamp": self._event_insert_timestamp(event),
            "evaluation_event_storage_id": event_id,
        }
        with self.index_connection() as conn:
            conn.execute(
                AssetCheckExecutionsTable.insert(),
                [{**common, "partition": pk} for pk in partition_keys],
            )

    def _store_asset_records(
        self, conn: Connection, events: list[tuple[EventLogEntry, int]]
    ) -> None:
        """`_store_asset_event` once per asset: the values the batch's events would leave one
        after the other (each event sets its columns; the last one of each kind wins)."""
        last: dict[tuple[str, Any], int] = {}
        for n, (event, _) in enumerate(events):
            dagster_event = event.get_dagster_event()
            last[(dagster_event.asset_key.to_string(), dagster_event.event_type)] = n
        has_index_cols = self._has_asset_key_index_cols_on_connection(conn)
        values: dict[str, dict[str, Any]] = {}
        for (key, _), n in sorted(last.items(), key=lambda kv: kv[1]):
            event, event_id = events[n]
            entry = self._get_asset_entry_values(event, event_id, has_index_cols)
            values.setdefault(key, {}).update(entry)
        for key, entry in values.items():
            if not entry:
                continue
            # Dagster inserts and, on the IntegrityError of an asset it knows (every batch but the
            # asset's first), updates: the same row, without an exception formatted each time.
            updated = conn.execute(
                AssetKeyTable.update().values(**entry).where(AssetKeyTable.c.asset_key == key)
            ).rowcount
            if not updated:
                conn.execute(AssetKeyTable.insert().values(asset_key=key, **entry))

    def dispose(self) -> None:
        super().dispose()
        self._engines.dispose()


def _evaluation(event: EventLogEntry) -> AssetCheckEvaluation:
    return cast(AssetCheckEvaluation, event.get_dagster_event().event_specific_data)


def _batchable(event: EventLogEntry) -> bool:
    if not event.is_dagster_event:
        return False
    kind = event.get_dagster_event().event_type
    if kind in ASSET_CHECK_EVENTS:
        return bool(event.run_id)  # a runless evaluation is stored another way
    return kind in ASSET_EVENTS and bool(event.get_dagster_event().asset_key)


class DdSqliteRunStorage(SqliteRunStorage):
    """SqliteRunStorage with one kept engine and a pooled connection."""

    def __init__(self, conn_string: str, inst_data: ConfigurableClassData | None = None) -> None:
        super().__init__(conn_string, inst_data)
        self._engines = _Engines()
        _dispose_at_exit(self._engines)

    @contextmanager
    def connect(self) -> Iterator[Connection]:
        engine, _ = self._engines.get("runs", self._conn_string)
        with engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        super().dispose()
        self._engines.dispose()


class DdSqliteStorage(DagsterSqliteStorage):
    """`storage: custom:` in dagster.yaml; config `base_dir` as Dagster's `storage: sqlite:`."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        os.environ.setdefault(BATCH_SIZE_ENV, BATCH_SIZE)
        self.base_dir = base_dir
        self._run_storage = DdSqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = DdSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(  # type: ignore[override]
        cls, inst_data: ConfigurableClassData, config_value: dict[str, Any]
    ) -> DdSqliteStorage:
        os.makedirs(config_value["base_dir"], exist_ok=True)
        return cls(config_value["base_dir"], inst_data=inst_data)
