"""Mergeable summaries of one column's values, small enough to keep one per row group.

Each summary is a function of the multiset of values it saw: merging the summaries of row groups,
in any order and however the rows were split, gives the summary of all their rows. That is what
makes a stage profile after a kill -9 and a resume equal to the profile of an uninterrupted run.

- `NumericSketch`: count, min, max, mean and variance (Chan's merge), and a *dyadic histogram*:
  bins of width 2**k aligned on multiples of 2**k, k the smallest level at which the values' range
  spans fewer than `BINS` bins (never finer than 1 for integers and datetimes, nor than the float
  spacing of the largest value). Levels nest, so a histogram is re-binned to a coarser level
  exactly, and the level of merged summaries is the level the union would choose on its own.
  Quantiles read from it are exact when the bins have width 1 (integers and datetimes whose range
  is under `BINS` units), otherwise within one bin width (`resolution`): about range/256.
- `DistinctSketch`: the exact set of 64-bit value hashes while there are at most `EXACT_DISTINCT`
  of them, else a HyperLogLog (2**14 registers, relative standard error 0.81%, Ertl's 2017
  estimator: no bias tables). Register-wise max is the union, so merging stays exact-as-a-set.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

BINS = 512  # a level is chosen so that the values span fewer bins than this
EXACT_DISTINCT = 256  # distinct values counted exactly (and, in partials, value counts kept)
HLL_P = 14
HLL_M = 1 << HLL_P
HLL_RSE = 1.04 / math.sqrt(HLL_M)  # relative standard error of the HyperLogLog estimate
_Q = 64 - HLL_P


# ---- numeric --------------------------------------------------------------------------------


def _floor_div_pow2(x: int | float, k: int) -> int:
    """floor(x / 2**k), exactly, for a Python int or a finite float."""
    if isinstance(x, int):
        return x >> k if k >= 0 else x << -k
    return math.floor(math.ldexp(x, -k))


def level(lo: float | int, hi: float | int, integral: bool) -> int:
    """The histogram level (bin width 2**k) for values in [lo, hi]: the smallest k, not below the
    values' own resolution, at which they span fewer than BINS bins. Monotone in the range, so
    the level of a union is at least that of each part."""
    if integral:
        floor_k = 0
    else:
        biggest = max(abs(lo), abs(hi))
        floor_k = math.frexp(biggest)[1] - 53 if biggest > 0 else -1074
    k = floor_k
    if hi > lo:
        k = max(floor_k, math.ceil(math.log2((hi - lo) / BINS)) - 1)
    while _floor_div_pow2(hi, k) - _floor_div_pow2(lo, k) >= BINS:
        k += 1
    return k


@dataclass
class NumericSketch:
    integral: bool  # integers and datetimes (bins never finer than 1); floats otherwise
    n: int = 0
    lo: float | int = 0
    hi: float | int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean
    k: int = 0
    base: int = 0  # bin index of counts[0]
    counts: np.ndarray | None = None  # int64, one per bin from `base`

    @classmethod
    def of(cls, values: np.ndarray, integral: bool) -> NumericSketch:
        """From finite values (int64 for integral, float64 otherwise)."""
        s = cls(integral)
        if not len(values):
            return s
        s.n = len(values)
        if integral:
            s.lo, s.hi = int(values.min()), int(values.max())
            as_float = values.astype(np.float64)
        else:
            s.lo, s.hi = float(values.min()), float(values.max())
            as_float = values
        s.mean = float(as_float.mean())
        s.m2 = float(((as_float - s.mean) ** 2).sum())
        s.k = level(s.lo, s.hi, integral)
        idx = values >> s.k if integral else np.floor(np.ldexp(values, -s.k)).astype(np.int64)
        s.base = int(idx.min())
        s.counts = np.bincount(idx - s.base).astype(np.int64)
        return s

    def _at(self, k: int) -> tuple[int, np.ndarray]:
        assert self.counts is not None and k >= self.k
        if k == self.k:
            return self.base, self.counts
        idx = (np.arange(len(self.counts), dtype=np.int64) + self.base) >> (k - self.k)
        base = int(idx[0])
        return base, np.bincount(idx - base, weights=self.counts).astype(np.int64)

    def merge(self, other: NumericSketch) -> NumericSketch:
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        out = NumericSketch(self.integral, n, min(self.lo, other.lo), max(self.hi, other.hi))
        out.mean = self.mean + delta * other.n / n
        out.m2 = self.m2 + other.m2 + delta * delta * self.n * other.n / n
        out.k = max(self.k, other.k, level(out.lo, out.hi, self.integral))
        (b1, c1), (b2, c2) = self._at(out.k), other._at(out.k)
        out.base = min(b1, b2)
        counts = np.zeros(max(b1 + len(c1), b2 + len(c2)) - out.base, np.int64)
        counts[b1 - out.base : b1 - out.base + len(c1)] += c1
        counts[b2 - out.base : b2 - out.base + len(c2)] += c2
        out.counts = counts
        return out

    @property
    def resolution(self) -> float:
        """Bin width: how far a quantile read from the histogram can be from the exact one."""
        return math.ldexp(1.0, self.k) if self.n else 0.0

    @property
    def exact_quantiles(self) -> bool:
        return self.integral and self.k == 0

    def stddev(self) -> float | None:
        """Sample standard deviation (n - 1), as pandas' Series.std()."""
        return math.sqrt(self.m2 / (self.n - 1)) if self.n > 1 else None

    def quantile(self, q: float) -> float | int | None:
        """The value of rank floor(q * (n - 1)) in sorted order (numpy's method="lower"): exact
        when `exact_quantiles`, else within `resolution` of it."""
        if not self.n or self.counts is None:
            return None
        rank = math.floor(q * (self.n - 1))
        if rank <= 0:
            return self.lo
        if rank >= self.n - 1:
            return self.hi
        cum = np.cumsum(self.counts)
        i = int(np.searchsorted(cum, rank, side="right"))
        before = int(cum[i - 1]) if i else 0
        lo = math.ldexp(self.base + i, self.k) if not self.integral else (self.base + i) << self.k
        if self.exact_quantiles:
            return lo
        width = self.resolution
        value = lo + width * (rank - before + 0.5) / int(self.counts[i])
        value = min(max(value, self.lo), self.hi)
        return round(value) if self.integral else value

    def histogram(self, max_bins: int = 40) -> tuple[list[float | int], list[int]]:
        """(edges, counts) with at most max_bins bins: the sketch's bins grouped by a power of
        two, so each count is exact for its [edge, next edge) (the last bin includes the max)."""
        if not self.n or self.counts is None:
            return [], []
        k = self.k
        base, counts = self.base, self.counts
        while len(counts) > max_bins:
            k += 1
            base, counts = self._at(k)
        first = int(np.flatnonzero(counts)[0])
        last = int(np.flatnonzero(counts)[-1])
        counts = counts[first : last + 1]
        base += first

        def edge(i: int) -> float | int:
            return (i << k) if self.integral and k >= 0 else math.ldexp(i, k)

        edges = [edge(base + i) for i in range(len(counts) + 1)]
        return edges, [int(c) for c in counts]

    def to_json(self) -> dict[str, Any]:
        if not self.n:
            return {"integral": self.integral, "n": 0}
        return {
            "integral": self.integral,
            "n": self.n,
            "lo": self.lo,
            "hi": self.hi,
            "mean": self.mean,
            "m2": self.m2,
            "k": self.k,
            "base": self.base,
            "counts": self.counts.tolist() if self.counts is not None else [],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NumericSketch:
        s = cls(bool(d["integral"]))
        if not d.get("n"):
            return s
        s.n, s.lo, s.hi = int(d["n"]), d["lo"], d["hi"]
        s.mean, s.m2, s.k, s.base = float(d["mean"]), float(d["m2"]), int(d["k"]), int(d["base"])
        s.counts = np.asarray(d["counts"], dtype=np.int64)
        return s


# ---- distinct values ------------------------------------------------------------------------

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that spreads bits (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


def value_hashes(values: pa.Array) -> np.ndarray:
    """Sorted unique 64-bit hashes of the distinct non-null values: stable across processes and
    machines (no Python hash()), so summaries written by one run merge with another's."""
    values = values.drop_null()
    t = values.type
    if pa.types.is_floating(t):
        f = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64) + 0.0  # -0.0 -> 0.0
        h = _mix64(np.unique(f).view(np.uint64))
    elif pa.types.is_integer(t) or pa.types.is_temporal(t) or pa.types.is_boolean(t):
        ints = (
            pc.cast(values, pa.int64()) if not pa.types.is_temporal(t) else values.view(pa.int64())
        )
        h = _mix64(
            np.unique(np.asarray(ints.to_numpy(zero_copy_only=False), dtype=np.int64)).view(
                np.uint64
            )
        )
    else:
        uniq = pc.unique(values).to_pylist()
        h = np.fromiter(
            (
                int.from_bytes(
                    hashlib.blake2b(
                        v if isinstance(v, bytes) else str(v).encode(), digest_size=8
                    ).digest(),
                    "little",
                )
                for v in uniq
            ),
            dtype=np.uint64,
            count=len(uniq),
        )
    return np.unique(h)


def _registers(hashes: np.ndarray) -> np.ndarray:
    regs = np.zeros(HLL_M, np.uint8)
    if len(hashes):
        idx = (hashes >> np.uint64(_Q)).astype(np.int64)
        rest = (hashes & np.uint64((1 << _Q) - 1)).astype(np.float64)  # exact: < 2**53
        bit_length = np.where(rest > 0, np.frexp(rest)[1], 0)
        rank = (_Q - bit_length + 1).astype(np.uint8)
        np.maximum.at(regs, idx, rank)
    return regs


def _sigma(x: float) -> float:
    if x == 1.0:
        return math.inf
    y, z = 1.0, x
    while True:
        x *= x
        z_old = z
        z += x * y
        y += y
        if z == z_old:
            return z


def _tau(x: float) -> float:
    if x in (0.0, 1.0):
        return 0.0
    y, z = 1.0, 1.0 - x
    while True:
        x = math.sqrt(x)
        z_old = z
        y *= 0.5
        z -= (1.0 - x) ** 2 * y
        if z == z_old:
            return z / 3.0


def hll_estimate(regs: np.ndarray) -> float:
    """Ertl, "New cardinality estimation algorithms for HyperLogLog sketches" (2017), the
    improved raw estimator: unbiased over the whole range without empirical corrections."""
    m = float(HLL_M)
    c = np.bincount(regs, minlength=_Q + 2).astype(np.float64)
    z = m * _tau(1.0 - c[_Q + 1] / m)
    for k in range(_Q, 0, -1):
        z = 0.5 * (z + c[k])
    z += m * _sigma(c[0] / m)
    return (m * m / (2.0 * math.log(2.0))) / z


@dataclass
class DistinctSketch:
    exact: np.ndarray | None = None  # sorted unique hashes while <= EXACT_DISTINCT
    regs: np.ndarray | None = None  # HyperLogLog registers otherwise

    @classmethod
    def of(cls, hashes: np.ndarray) -> DistinctSketch:
        if len(hashes) <= EXACT_DISTINCT:
            return cls(exact=hashes)
        return cls(regs=_registers(hashes))

    @property
    def is_exact(self) -> bool:
        return self.exact is not None

    def count(self) -> int:
        if self.exact is not None:
            return len(self.exact)
        assert self.regs is not None
        return round(hll_estimate(self.regs))

    def merge(self, other: DistinctSketch) -> DistinctSketch:
        if self.exact is not None and other.exact is not None:
            return DistinctSketch.of(np.union1d(self.exact, other.exact))
        a = self.regs if self.regs is not None else _registers(self.exact)  # type: ignore[arg-type]
        b = other.regs if other.regs is not None else _registers(other.exact)  # type: ignore[arg-type]
        return DistinctSketch(regs=np.maximum(a, b))

    def to_json(self) -> dict[str, Any]:
        if self.exact is not None:
            return {"exact": base64.b64encode(self.exact.astype("<u8").tobytes()).decode()}
        assert self.regs is not None
        nz = np.flatnonzero(self.regs).astype("<u2")
        packed = nz.tobytes() + self.regs[nz].astype(np.uint8).tobytes()
        return {"hll": base64.b64encode(packed).decode()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DistinctSketch:
        if "exact" in d:
            return cls(exact=np.frombuffer(base64.b64decode(d["exact"]), "<u8").astype(np.uint64))
        raw = base64.b64decode(d["hll"])
        n = len(raw) // 3
        idx = np.frombuffer(raw[: 2 * n], "<u2").astype(np.int64)
        regs = np.zeros(HLL_M, np.uint8)
        regs[idx] = np.frombuffer(raw[2 * n :], np.uint8)
        return cls(regs=regs)
