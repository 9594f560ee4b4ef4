"""Generic helpers for ragged ("segmented") arrays: many variable-length groups stored back to back.

A ragged array is a flat array ``values`` plus ``offsets`` (int64, length ``n_seg + 1``, ``offsets[0] == 0``,
non-decreasing, ``offsets[-1] == len(values)``): segment ``i`` is ``values[offsets[i]:offsets[i + 1]]``.
Empty segments are allowed everywhere. Nothing here loops over segments in Python; :func:`segment_sort`
loops only over the *distinct segment lengths* (at most ``sqrt(2 * len(values)) + 1`` of them).

These helpers are unit-agnostic: results carry the units of ``values``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "check_offsets",
    "segment_counts",
    "segment_ids",
    "segment_last",
    "segment_local_index",
    "segment_mean",
    "segment_median",
    "segment_quantile",
    "segment_sort",
    "segment_sum",
    "subset_offsets",
]


def check_offsets(offsets: np.ndarray, n_values: int, *, name: str = "offsets") -> np.ndarray:
    """Validate ragged ``offsets`` for ``n_values`` flat values and return them as a C-contiguous int64 array.

    Raises ``ValueError`` with an ``expected ... got ...`` message when ``offsets`` is not a 1-D integer array
    with at least one element, does not start at 0, decreases anywhere, or does not end at ``n_values``.
    """
    arr = np.asarray(offsets)
    if arr.ndim != 1:
        raise ValueError(f"expected 1-D {name}, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"expected {name} of length n_obs + 1 >= 1 starting with 0, got an empty array")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"expected integer {name}, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    if arr[0] != 0:
        raise ValueError(f"expected {name}[0] == 0, got {name}[0] = {arr[0]}")
    steps = np.diff(arr)
    if steps.size and steps.min() < 0:
        i = int(np.flatnonzero(steps < 0)[0])
        raise ValueError(f"expected non-decreasing {name}, got {name}[{i}] = {arr[i]} > {name}[{i + 1}] = {arr[i + 1]}")
    if arr[-1] != n_values:
        raise ValueError(f"expected {name}[-1] == number of values ({n_values}), got {name}[-1] = {arr[-1]}")
    return arr


def segment_counts(offsets: np.ndarray) -> np.ndarray:
    """Number of values in each segment (int64, length ``n_seg``)."""
    return np.diff(offsets)


def segment_ids(offsets: np.ndarray) -> np.ndarray:
    """Segment index of every flat value (int64, length ``offsets[-1]``): ``np.repeat(arange(n_seg), counts)``."""
    n_seg = len(offsets) - 1
    return np.repeat(np.arange(n_seg, dtype=np.int64), np.diff(offsets))


def segment_local_index(offsets: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Position of every flat value inside its own segment (0 for the first value of each segment)."""
    return np.arange(len(seg), dtype=np.int64) - offsets[:-1][seg]


def subset_offsets(mask: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    """Offsets of the ragged array ``values[mask]`` (order-preserving selection keeps segments contiguous)."""
    counts = np.bincount(seg[mask], minlength=n_seg)
    out = np.zeros(n_seg + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def segment_sum(weights: np.ndarray, seg: np.ndarray, n_seg: int) -> np.ndarray:
    """Sum of ``weights`` in each segment (float64; 0 for empty segments). Sums in flat order."""
    return np.bincount(seg, weights=weights, minlength=n_seg).astype(np.float64, copy=False)


def segment_mean(values: np.ndarray, seg: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Arithmetic mean per segment (float64; NaN for empty segments, without warnings)."""
    total = segment_sum(values, seg, len(counts))
    out = np.full(len(counts), np.nan)
    np.divide(total, counts, out=out, where=counts > 0)
    return out


def segment_sort(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Sort ``values`` ascending within each segment; returns a new float64 flat array with the same layout.

    Segments are grouped by length; each group of ``k`` segments of length ``c`` is gathered into a dense
    ``(k, c)`` block and sorted along its rows, so the only Python loop is over distinct lengths. The result
    depends only on the multiset of values in each segment, never on their order in the input.
    """
    values = np.asarray(values, dtype=np.float64)
    out = np.empty(len(values), dtype=np.float64)
    counts = np.diff(offsets)
    if len(counts) == 0:
        return out
    by_count = np.argsort(counts, kind="stable")
    sorted_counts = counts[by_count]
    lengths, starts = np.unique(sorted_counts, return_index=True)
    stops = np.append(starts[1:], len(by_count))
    starts_of_seg = offsets[:-1]
    for c, a, b in zip(lengths.tolist(), starts.tolist(), stops.tolist(), strict=True):
        if c == 0:
            continue
        first = starts_of_seg[by_count[a:b]]
        if c == 1:
            out[first] = values[first]
            continue
        idx = first[:, None] + np.arange(c, dtype=np.int64)
        block = values[idx]
        block.sort(axis=1)
        out[idx] = block
    return out


def segment_last(sorted_values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Last value of each segment (the maximum when sorted); NaN for empty segments."""
    counts = np.diff(offsets)
    out = np.full(len(counts), np.nan)
    ok = counts > 0
    out[ok] = sorted_values[offsets[1:][ok] - 1]
    return out


def segment_median(sorted_values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Median of each segment of a segment-sorted array, as ``np.median`` computes it; NaN for empty segments.

    Odd length: the middle value; even length: ``(a + b) / 2`` of the two middle values.
    """
    counts = np.diff(offsets)
    out = np.full(len(counts), np.nan)
    ok = counts > 0
    n = counts[ok]
    base = offsets[:-1][ok]
    lo = sorted_values[base + (n - 1) // 2]
    hi = sorted_values[base + n // 2]
    out[ok] = np.where(n % 2 == 1, lo, (lo + hi) / 2.0)
    return out


def segment_quantile(sorted_values: np.ndarray, offsets: np.ndarray, q: float) -> np.ndarray:
    """Quantile ``q`` in [0, 1] of each segment of a segment-sorted array; NaN for empty segments.

    Linear interpolation between order statistics at virtual index ``q * (n - 1)``, as numpy's default
    ``np.quantile(x, q)`` / ``np.percentile(x, 100 * q)`` (including its two-sided interpolation formula).
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"expected a quantile in [0, 1], got {q}")
    counts = np.diff(offsets)
    out = np.full(len(counts), np.nan)
    ok = counts > 0
    n = counts[ok]
    base = offsets[:-1][ok]
    pos = q * (n - 1).astype(np.float64)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    t = pos - lo
    a = sorted_values[base + lo]
    b = sorted_values[base + hi]
    diff = b - a
    out[ok] = np.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)
    return out
