"""What a stage run tells Dagster about its row groups (docs/decisions.md, "What Dagster is told").

Every row group of a run gets exactly one materialization of its partition, carrying its own
metadata (rows, drops, LLM usage, seconds, a preview), its own data version (the content hash in
its footer) and the provenance tags Dagster's staleness reads. How it gets there depends on
whether another step of the same run reads the asset:

- **live** (no other step of this run reads it: CLI chunks, per-wave backfill runs, leaf
  waves): each row group's materialization is logged the moment it lands, from a writer thread
  so the generation loop never waits on the event log. A run that fails later keeps them.
- **at the end** (a downstream step in the same run, e.g. "Materialize all" over several waves):
  Dagster skips a step whose input was never yielded, so the asset yields its `Output` once its
  row groups are done, with each partition's metadata attached through `add_asset_metadata`.
  Dagster carries one data version per asset per step there (dagster-io/dagster#34013): the
  run's row groups share a version hashed from their content hashes. If the step fails, the
  row groups that landed are logged before the error propagates.

Stages chained in one op follow their upstream: a stage whose in-op upstream is recorded at the
end is recorded at the end too, so its provenance points at the upstream's new events."""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluation,
    AssetCheckEvaluationTargetMaterializationData,
)
from dagster._core.definitions.data_version import (
    CODE_VERSION_TAG,
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    DEFAULT_DATA_VERSION,
    NULL_EVENT_POINTER,
    get_input_data_version_tag,
    get_input_event_pointer_tag,
)
from dagster._core.events import (
    DagsterEvent,
    DagsterEventBatchMetadata,
    DagsterEventType,
    generate_event_batch_id,
)

from dd_assets.dagster.asset_checks import RowGroupChecker
from dd_assets.dagster.names import asset_key, output_name
from dd_assets.runners.materialize import RowGroupOutcome
from dd_assets.runners.plan import StagePlan
from dd_assets.store import files
from dd_assets.store.layout import partition_key
from dd_assets.store.partition_store import PartitionStore

PREVIEW_ROWS = 5
# How long a landed row group's events may wait for others to share their write (the UI shows
# partitions filling in this much later; a SIGKILL may lose this much more of them).
BATCH_SECONDS = 0.2
MAT = DagsterEventType.ASSET_MATERIALIZATION


def row_group_version(outcome: RowGroupOutcome) -> str:
    """The row group's data version: the content hash its footer records (store M2), so data
    regenerated with other rows gets a new version (its descendants turn stale) and a resume,
    which reuses the file, keeps it."""
    return outcome.info.data_version


def range_version(outcomes: list[RowGroupOutcome]) -> str:
    """One version for a run's row groups of a stage (the at-the-end path): it changes when any
    of them does."""
    joined = ",".join(row_group_version(o) for o in outcomes)
    return hashlib.sha256(joined.encode()).hexdigest()[:32]


def preview_md(table: Any) -> str:
    rows = table.slice(0, PREVIEW_ROWS).to_pylist()
    if not rows:
        return "_no rows_"
    cols = list(rows[0])

    def cell(v: Any) -> str:
        text = str(v).replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= 60 else text[:59] + "…"

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _head(path: Any) -> Any:
    """The first rows of a row-group file: one batch, not the whole file (read again if an
    overlapping run's PUT replaced it meanwhile: files.read_with)."""

    def head(f: Any) -> Any:
        batch = next(f.iter_batches(batch_size=PREVIEW_ROWS), None)
        return batch if batch is not None else f.schema_arrow.empty_table()

    return files.read_with(path, head)


def partition_metadata(plan: StagePlan, outcome: RowGroupOutcome) -> dict[str, Any]:
    """A partition's materialization metadata: what its footer says about the row group."""
    stats = outcome.stats or {}
    md: dict[str, Any] = {
        "rows": outcome.info.rows,
        "planned_rows": stats.get("planned_rows", outcome.info.row_end - outcome.info.row_start),
        "dropped_rows": stats.get("dropped_rows", 0),
        "seconds": float(stats.get("seconds", 0.0)),
        "reused": outcome.reused,
        "path": dg.MetadataValue.path(str(outcome.info.path)),
        "fingerprint": plan.ref.fingerprint[:12],
    }
    if stats.get("drop_reasons"):
        md["drop_reasons"] = dg.MetadataValue.json(stats["drop_reasons"])
    if stats.get("llm"):
        md.update({f"llm_{k}": v for k, v in stats["llm"].items()})
    if not outcome.reused:
        md["preview"] = dg.MetadataValue.md(preview_md(_head(outcome.info.path)))
    return md


@dataclass(frozen=True)
class _Logged:
    """A materialization this run logged: what its children's provenance points at."""

    storage_id: int | None
    data_version: str


class StageEvents:
    """Records a wave op's row groups in Dagster as they land (see the module docstring)."""

    def __init__(
        self,
        context: dg.AssetExecutionContext,
        plans: list[StagePlan],
        store: PartitionStore,
        partitions: list[str],
        stage_metadata: Callable[[StagePlan], dict[str, Any]] = lambda _: {},
    ) -> None:
        self.context = context
        self.stage_metadata = stage_metadata
        self.instance = context.instance
        self.plans = plans
        self.partitions = partitions
        layer = context.job_def.asset_layer
        self.graph = layer.asset_graph
        keys = {asset_key(p) for p in plans}
        read_here = {
            asset_key(p): any(
                c in layer.selected_asset_keys and c not in keys
                for c in self.graph.get(asset_key(p)).child_keys
            )
            for p in plans
        }
        # Plans come in wave order (upstreams first), so an in-op upstream is decided first.
        self.at_end: set[str] = set()
        for p in plans:
            if read_here[asset_key(p)] or any(up.name in self.at_end for up in p.upstreams):
                self.at_end.add(p.name)
        checked = {
            k.asset_key for k in context.selected_asset_check_keys if k.name == RowGroupChecker.name
        }
        self.checker = {p.name: RowGroupChecker(p, store) for p in plans if asset_key(p) in checked}
        written = {p.name for p in plans}
        # Children need the storage id of a row group's event (their provenance points at it).
        self.pointed_at = {up.name for p in plans for up in p.upstreams if up.name in written}
        self.logged: dict[tuple[dg.AssetKey, str], _Logged] = {}
        self.landed: dict[str, list[RowGroupOutcome]] = {p.name: [] for p in plans}
        self.logged_count = {p.name: 0 for p in plans}
        self.by_name = {p.name: p for p in plans}
        self.parents = {
            asset_key(p): sorted(self.graph.get(asset_key(p)).parent_keys, key=str) for p in plans
        }
        self.before = self._prefetch({asset_key(p) for p in plans})
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dd-assets-events")
        self.pending: list[Future[None]] = []
        self.queue: list[tuple[StagePlan, RowGroupOutcome]] = []
        self.queue_lock = threading.Lock()
        self.queued_at = 0.0  # when the oldest row group of the queue landed
        self.draining = threading.Event()

    # ---- provenance ------------------------------------------------------------------------

    def _prefetch(self, written: set[dg.AssetKey]) -> dict[Any, tuple[int | None, str]]:
        """Where the parents not written by this run stand now, read once per run: per partition
        for a parent with the same partitions (identity), else its latest materialization."""
        out: dict[Any, tuple[int | None, str]] = {}
        store = self.instance.event_log_storage
        seen = set(written)
        for key, parents in self.parents.items():
            for parent in parents:
                if parent in seen:
                    continue
                seen.add(parent)
                mapping = self.graph.get_partition_mapping(key, parent)
                if self.graph.get(parent).is_partitioned and isinstance(
                    mapping, dg.IdentityPartitionMapping
                ):
                    sids = store.get_latest_storage_id_by_partition(
                        parent, MAT, set(self.partitions)
                    )
                    versions = store.get_latest_tags_by_partition(
                        parent, MAT, [DATA_VERSION_TAG], asset_partitions=self.partitions
                    )
                    for pk in self.partitions:
                        version = versions.get(pk, {}).get(DATA_VERSION_TAG)
                        out[(parent, pk)] = (sids.get(pk), version or DEFAULT_DATA_VERSION.value)
                else:
                    records = self.instance.fetch_materializations(
                        dg.AssetRecordsFilter(asset_key=parent), limit=1
                    ).records
                    if records:
                        tags = records[0].event_log_entry.tags or {}
                        version = tags.get(DATA_VERSION_TAG, DEFAULT_DATA_VERSION.value)
                        out[parent] = (records[0].storage_id, version)
                    else:
                        out[parent] = (None, DEFAULT_DATA_VERSION.value)
        return out

    def _pointer(self, parent: dg.AssetKey, pk: str) -> tuple[int | None, str]:
        logged = self.logged.get((parent, pk))
        if logged is not None:
            return logged.storage_id, logged.data_version
        if (parent, pk) in self.before:
            return self.before[(parent, pk)]
        return self.before.get(parent, (None, DEFAULT_DATA_VERSION.value))

    def _tags(self, plan: StagePlan, pk: str, version: str) -> dict[str, str]:
        """The tags Dagster itself writes on a materialization (execute_step.py,
        _build_data_version_tags): code version, data version, and for every parent the data
        version and event it was built from. Without the input tags Dagster reads a partition as
        having "a new dependency"; with them it compares event pointers per partition."""
        tags = {
            CODE_VERSION_TAG: plan.ref.fingerprint,
            DATA_VERSION_TAG: version,
            DATA_VERSION_IS_USER_PROVIDED_TAG: "true",
        }
        for parent in self.parents[asset_key(plan)]:
            sid, parent_version = self._pointer(parent, pk)
            tags[get_input_data_version_tag(parent)] = parent_version
            tags[get_input_event_pointer_tag(parent)] = str(sid) if sid else NULL_EVENT_POINTER
        return tags

    # ---- recording -------------------------------------------------------------------------

    def on_done(self, stage: str, outcome: RowGroupOutcome) -> None:
        """materialize_wave's callback, in the generation loop: queue, never block."""
        self.landed[stage].append(outcome)
        if stage not in self.at_end:
            with self.queue_lock:
                if not self.queue:
                    self.queued_at = time.monotonic()
                self.queue.append((self.by_name[stage], outcome))
            self.pending.append(self.writer.submit(self._flush))

    def _flush(self) -> None:
        """The writer thread: everything that landed since its last write, as one batch, written
        once the oldest has waited BATCH_SECONDS (or the step ends): a batch's fixed cost (two
        transactions per kind of event) is then shared by the row groups landing meanwhile."""
        wait = self.queued_at + BATCH_SECONDS - time.monotonic()
        if wait > 0:
            self.draining.wait(wait)
        with self.queue_lock:
            items, self.queue = self.queue, []
        if items:
            self._log(items)

    def _log(self, items: list[tuple[StagePlan, RowGroupOutcome]]) -> None:
        """Each row group's materialization, then (its target known) its `row_group_valid`
        evaluation: one batched write per stage and kind, stages in wave order so that a child's
        provenance points at its parent's events written just before."""
        for plan in self.plans:
            done = [o for p, o in items if p.name == plan.name]
            if not done:
                continue
            key = asset_key(plan)
            materializations = []
            for o in done:
                pk = partition_key(o.row_group)
                version = row_group_version(o)
                metadata = partition_metadata(plan, o)
                self.logged_count[plan.name] += 1
                if self.logged_count[plan.name] == len(self.partitions):  # the run's last
                    metadata.update(self.stage_metadata(plan))
                materializations.append(
                    dg.AssetMaterialization(
                        asset_key=key,
                        partition=pk,
                        metadata=metadata,
                        tags=self._tags(plan, pk, version),
                    )
                )
                self.logged[(key, pk)] = _Logged(None, version)
            # here: Dagster's SQLite storage costs ~0.8 s of CPU to import; a process that
            # only loads the definitions (a code server) never writes an event
            from dd_assets.dagster.sqlite_storage import DdSqliteEventLogStorage

            store = self.instance.event_log_storage
            ours = isinstance(store, DdSqliteEventLogStorage)
            if ours:
                store.take_stored()  # from here: what this write stores, with storage ids
            self._write(materializations)
            if plan.name in self.pointed_at or plan.name in self.checker:
                targets = self._targets(plan, done, store.take_stored() if ours else [])
                for pk, target in targets.items():
                    self.logged[(key, pk)] = _Logged(
                        target.storage_id, self.logged[(key, pk)].data_version
                    )
                self._check(plan, done, targets)

    def _targets(
        self,
        plan: StagePlan,
        done: list[RowGroupOutcome],
        stored: list[tuple[Any, int]] | None = None,
    ) -> dict[str, AssetCheckEvaluationTargetMaterializationData]:
        """This run's materialization of each row group: what children's provenance and the
        `row_group_valid` evaluation point at. From what dd-assets' storage says it just stored
        (`stored`: entries and storage ids), else read back (one query)."""
        key, run_id = asset_key(plan), self.context.run.run_id
        targets: dict[str, AssetCheckEvaluationTargetMaterializationData] = {}
        for entry, storage_id in stored or []:
            event = entry.get_dagster_event()
            if entry.run_id == run_id and event.asset_key == key and event.partition:
                targets[event.partition] = AssetCheckEvaluationTargetMaterializationData(
                    run_id=run_id, storage_id=storage_id, timestamp=entry.timestamp
                )
        wanted = [partition_key(o.row_group) for o in done]
        if all(pk in targets for pk in wanted):
            return targets
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=wanted),
            limit=2 * len(done),
        ).records
        targets = {}
        for r in records:  # newest first: this run's
            pk = r.asset_materialization.partition if r.asset_materialization else None
            if pk is not None and r.run_id == self.context.run.run_id and pk not in targets:
                targets[pk] = AssetCheckEvaluationTargetMaterializationData(
                    run_id=r.run_id, storage_id=r.storage_id, timestamp=r.timestamp
                )
        return targets

    def _check(
        self,
        plan: StagePlan,
        done: list[RowGroupOutcome],
        targets: dict[str, AssetCheckEvaluationTargetMaterializationData],
    ) -> None:
        checker = self.checker.get(plan.name)
        if checker is not None:
            self._write(
                [checker.evaluate(o, targets.get(partition_key(o.row_group))) for o in done]
            )

    def _write(self, events: list[dg.AssetMaterialization] | list[AssetCheckEvaluation]) -> None:
        """Log events as one batch (`DAGSTER_EVENT_BATCH_SIZE`: one transaction per database on
        dd-assets' SQLite storage, sqlite_storage.py; written one by one elsewhere), each as
        `context.log_event` would log it."""
        step = self.context.op_execution_context.get_step_execution_context()
        batch = generate_event_batch_id()
        for i, event in enumerate(events):
            end = DagsterEventBatchMetadata(batch, i == len(events) - 1)
            if isinstance(event, dg.AssetMaterialization):
                DagsterEvent.asset_materialization(step, event, end)
            else:
                DagsterEvent.from_step(
                    DagsterEventType.ASSET_CHECK_EVALUATION,
                    step,
                    event,
                    message=f"Asset check '{event.check_name}' on"
                    f" '{event.asset_key.to_user_string()}' "
                    + ("passed." if event.passed else "did not pass."),
                    batch_metadata=end,
                )

    def record_checks(self) -> None:
        """`row_group_valid` of the row groups of stages recorded at the end, once their
        Outputs' materializations are in the instance (each evaluation targets its partition's
        materialization of this run, so the UI shows it current). Live stages were checked as
        they were logged."""
        for p in self.plans:
            if p.name in self.at_end and p.name in self.checker and self.landed[p.name]:
                done = sorted(self.landed[p.name], key=lambda o: o.row_group)
                self._check(p, done, self._targets(p, done))

    def _drain(self) -> None:
        self.draining.set()
        pending, self.pending = self.pending, []
        for f in pending:
            f.result()

    def failed(self) -> None:
        """The step is failing: finish the live events, then log the row groups that landed for
        the assets recorded at the end (upstreams first), so the instance has every row group
        that is on disk before the run is marked failed. Never raises: the step's own error is
        what the run reports."""
        try:
            self._drain()
            self._log(
                [(p, o) for p in self.plans if p.name in self.at_end for o in self.landed[p.name]]
            )
        except Exception as exc:
            self.context.log.warning(f"row groups on disk not all recorded in Dagster: {exc}")
        finally:
            self.writer.shutdown(wait=True)

    def finish(self) -> Iterator[dg.Output]:
        """The step succeeded: wait for the live events, then yield the Outputs of the assets
        recorded at the end (each partition's metadata attached)."""
        self._drain()
        self.writer.shutdown(wait=True)
        for p in self.plans:
            if p.name not in self.at_end:
                continue
            key = asset_key(p)
            done = sorted(self.landed[p.name], key=lambda o: o.row_group)
            for o in done:
                metadata = partition_metadata(p, o)
                if o is done[-1]:
                    metadata.update(self.stage_metadata(p))
                self.context.add_asset_metadata(
                    metadata,
                    asset_key=key,
                    partition_key=partition_key(o.row_group),
                )
            with warnings.catch_warnings():  # Output.data_version is beta (pinned minor)
                warnings.simplefilter("ignore", dg.BetaWarning)
                output = dg.Output(
                    None,
                    output_name=output_name(p),
                    data_version=dg.DataVersion(range_version(done)),
                )
            yield output

    def summary(self, seconds: float) -> str:
        """One log line for the run (not one per row group: each would be another event)."""
        parts = []
        for p in self.plans:
            done = self.landed[p.name]
            reused = sum(o.reused for o in done)
            how = "at the end" if p.name in self.at_end else "live"
            parts.append(
                f"{p.name}: {len(done)} row group(s) ({len(done) - reused} generated,"
                f" {reused} reused, {sum(o.info.rows for o in done)} rows; recorded {how})"
            )
        return "; ".join(parts) + f" in {seconds:.2f} s"
