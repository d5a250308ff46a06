"""Counter-based randomness: a value is a pure function of (column key, stream, global row index).

No generator state is carried from row to row, so a row's values are the same whatever the buffer
size, the order row groups run in, or how often a run was interrupted."""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser; uint64 arithmetic wraps, which is the point.
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def bits(key: int, rows: np.ndarray, stream: int = 0) -> np.ndarray:
    """64 random bits per row."""
    k = np.uint64(key & 0xFFFFFFFFFFFFFFFF)
    s = np.uint64((stream * 0xD1B54A32D192ED03) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) * _GOLDEN + (k ^ s)
        return _mix(_mix(z) + k)


def uniform(key: int, rows: np.ndarray, stream: int = 0) -> np.ndarray:
    """Floats in [0, 1) with 53 random bits."""
    return (bits(key, rows, stream) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def row_range(start: int, end: int) -> np.ndarray:
    return np.arange(start, end, dtype=np.uint64)


def subkey(key: int, n: int) -> int:
    """The key of the n-th redraw of a column (rejection sampling): independent bits, still a
    function of (column key, n) only. n = 0 is the key itself."""
    if n == 0:
        return key
    return int(bits(key, np.asarray([n], dtype=np.uint64), stream=0x5EED)[0])
