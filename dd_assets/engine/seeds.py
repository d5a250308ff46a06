"""Which seed row each generated row gets, as a pure function of (seed identity, row index).

`ordered` takes seed row i mod N; `shuffle` takes position i mod N of a permutation drawn per
pass over the seed (pass = i // N). So a regenerated row group gets exactly the rows it had, and
asking for more rows than the seed has cycles through it again (in a new order under `shuffle`).
Where the rows come from (a file, an upstream stage) is the store's and the runners' business:
a `SeedSource` only has to fetch rows by index."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pyarrow as pa

from dd_assets.config.workflow import SeedRows, SeedShard
from dd_assets.errors import GenerationError


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


def selection_bounds(
    rows: SeedRows | None, shard: SeedShard | None, n: int, name: str
) -> tuple[int, int]:
    """[start, stop) of the seed rows a file seed's `rows` / `shard` selects out of n, with
    DataDesigner's rules: an index range includes both ends; shard i of k is the i-th block of
    n // k rows, the last one running to the end."""
    if rows is not None:
        if rows.last >= n:
            raise GenerationError(
                f"seed {name} has {n} rows (0..{n - 1}); seed.rows.last ({rows.last}) is past the"
                " end"
            )
        return rows.first, rows.last + 1
    if shard is not None:
        if shard.count > n:
            raise GenerationError(
                f"seed {name} has {n} rows, fewer than seed.shard.count ({shard.count}) shards"
            )
        size = n // shard.count
        start = shard.index * size
        return start, n if shard.index == shard.count - 1 else start + size
    return 0, n


def select_rows(source: SeedSource, start: int, stop: int) -> SeedSource:
    """The rows [start, stop) of a source, as a source of its own (indices shifted)."""
    if (start, stop) == (0, source.num_rows):
        return source
    base = source.take
    return SeedSource(
        f"{source.name} (rows {start}..{stop - 1})",
        stop - start,
        lambda idx: base(np.asarray(idx, dtype=np.int64) + start),
        source.schema,
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
