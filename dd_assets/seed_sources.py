"""Where a sampled stage's seed rows come from: a file (parquet/csv/jsonl) or the whole dataset of
an upstream stage, and which seed row each generated row gets.

Row i's seed row is a pure function of (seed identity, i): `ordered` takes seed row i mod N,
`shuffle` takes position i mod N of a permutation drawn per pass over the seed (pass = i // N). So
a regenerated row group gets exactly the rows it had, and asking for more rows than the seed has
cycles through it again (in a new order under `shuffle`)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from dd_assets.engine import GenerationError
from resources.store import PartitionStore, StageRef

_FORMATS = {".parquet": "parquet", ".csv": "csv", ".jsonl": "json"}


def file_digest(path: str | Path) -> str:
    """sha256 of the seed file's bytes: part of the fingerprint, so an edited file is a new dataset."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"seed file {path} not found; fix `seed.path` in the config (relative paths are"
            " relative to the config file)"
        ) from None
    return h.hexdigest()


@dataclass
class SeedSource:
    """N rows that can be fetched by index without loading the others (parquet and stages)."""

    name: str
    num_rows: int
    take: Callable[[np.ndarray], pa.Table]
    schema: pa.Schema = field(default_factory=lambda: pa.schema([]))

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)


def file_source(path: str | Path) -> SeedSource:
    path = Path(path)
    fmt = _FORMATS[path.suffix.lower()]
    try:
        dataset = pads.dataset(str(path), format=fmt)
        if fmt != "parquet":
            # csv/jsonl have no row index: a take would rescan the file for every row group.
            # Seed files of this kind are small; hold them once.
            dataset = pads.dataset(dataset.to_table())
        n = dataset.count_rows()
    except (OSError, pa.ArrowException) as exc:
        raise GenerationError(f"seed file {path} could not be read as {fmt}: {exc}") from None
    if n == 0:
        raise GenerationError(f"seed file {path} has no rows; a stage cannot sample from it")
    return SeedSource(
        str(path), n, lambda idx: dataset.take(pa.array(idx)), dataset.schema.remove_metadata()
    )


def stage_source(store: PartitionStore, ref: StageRef) -> SeedSource:
    """The whole upstream stage; it must be complete, or the sample would depend on timing."""
    missing = store.missing(ref)
    if missing:
        raise GenerationError(
            f"stage {ref.stage!r} has {len(missing)} of {ref.num_row_groups} row groups missing"
            f" ({ref.keys_head(missing)}); a stage seeded with"
            f" `mode: sample` reads all of it. Materialize {ref.stage!r} first"
        )
    dataset = store.dataset(ref)
    n = dataset.count_rows()
    if n == 0:
        raise GenerationError(f"stage {ref.stage!r} has no rows; a stage cannot sample from it")
    return SeedSource(
        ref.stage, n, lambda idx: dataset.take(pa.array(idx)), dataset.schema.remove_metadata()
    )


def seed_key(*parts: str) -> int:
    return int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16], 16)


def sample_indices(key: int, start: int, end: int, n: int, strategy: str) -> np.ndarray:
    rows = np.arange(start, end, dtype=np.int64)
    pos = rows % n
    if strategy == "ordered":
        return pos
    passes = rows // n
    out = np.empty_like(pos)
    for p in np.unique(passes):
        sel = passes == p
        out[sel] = _permutation(key, int(p), n)[pos[sel]]
    return out


@lru_cache(maxsize=4)
def _permutation(key: int, pass_: int, n: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64([key, pass_])).permutation(n)


def sampled_rows(
    source: SeedSource, key: int, strategy: str, row_range: Callable[[int], tuple[int, int]]
) -> Callable[[int], pa.Table]:
    """A seed provider for the row-group engine: row group -> its seed rows, in row order."""

    def provide(rg: int) -> pa.Table:
        start, end = row_range(rg)
        idx = sample_indices(key, start, end, source.num_rows, strategy)
        table = source.take(idx)
        return table.replace_schema_metadata(None)

    return provide
