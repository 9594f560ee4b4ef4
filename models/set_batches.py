"""Observations as sets of members: scaled per-member inputs, the member cap, random thinning, and padded batches
in size buckets (pure numpy).

A set model reads each observation's members directly (:class:`features.members.Members`: ragged arrays cut by
``offsets``). Here they become :class:`SetData` (ragged scaled inputs, one context row and one target per
observation) and then :class:`SetBatch` es: ``(B, W, C)`` member arrays with a ``(B, W)`` mask, where ``W`` is the
*bucket width* of the batch's observations, the smallest of :func:`bucket_widths` (8, 16, 32, ..., ``cap``) that
holds them, so that no observation is padded to the largest cluster and a jitted step compiles once per width.

Member inputs (:data:`MEMBER_SCALES`): projected radius ``r_proj / (1 Mpc/h)`` (comoving), line-of-sight velocity
``v_los / (1000 km/s)`` (relative to the host: Hubble flow + peculiar), and for the ``full`` set
``(log10 M* - 10.5) / 0.5`` (M* in Msun, no h). Fixed scales rather than fitted ones: they need no stored state,
and every input is of order one over the cylinders this project observes (r_proj < 1.6 Mpc/h, |v_los| < 2500 km/s,
log10 M* in 9.5-12).

The cap (:data:`DEFAULT_CAP` members per observation): an observation with more members keeps a random subsample
of ``cap`` (:func:`cap_sets`, seeded). Counts are read before capping, so a model given the member count (the
``full`` set's ``log10 n``) still sees the true richness. Thinning (:func:`thin_sets`) is
:func:`models.stage.thinned_table`'s rule for the ``dynamics`` set, on the same ``[train] members_kept`` key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from features.members import Members

#: member columns each feature set's set model reads (the ``dynamics`` set: no stellar mass, no count)
MEMBER_INPUTS: dict[str, tuple[str, ...]] = {
    "full": ("r_proj", "v_los", "log10_mstar"),
    "dynamics": ("r_proj", "v_los"),
}
#: per-member input -> (centre, scale): the network sees ``(value - centre) / scale``; r_proj in comoving Mpc/h,
#: v_los in km/s, log10_mstar in dex(Msun)
MEMBER_SCALES: dict[str, tuple[float, float]] = {
    "r_proj": (0.0, 1.0),
    "v_los": (0.0, 1000.0),
    "log10_mstar": (10.5, 0.5),
}
#: members per observation above which a random subsample is kept (:func:`cap_sets`). On the default run the
#: richest cylinders hold a few hundred members and >99% of observations hold fewer than 256; bench/bench_set.py
#: measures what the cap costs.
DEFAULT_CAP = 256
#: the narrowest bucket (members per padded set)
SMALLEST_WIDTH = 8


def member_inputs(members: Members, columns: Sequence[str]) -> np.ndarray:
    """Scaled per-member inputs (n_members_total, C) float32, one column per name of ``columns``
    (:data:`MEMBER_SCALES`; the unit of each is in the module docstring)."""
    unknown = [c for c in columns if c not in MEMBER_SCALES]
    if unknown or not columns:
        raise ValueError(f"member inputs: expected names from {list(MEMBER_SCALES)}, got {list(columns)}")
    cols = [(np.asarray(getattr(members, c), np.float64) - MEMBER_SCALES[c][0]) / MEMBER_SCALES[c][1]
            for c in columns]
    return np.column_stack(cols).astype(np.float32) if cols[0].size else np.empty((0, len(columns)), np.float32)


@dataclass(frozen=True)
class SetData:
    """Observations as member sets.

    offsets : (N+1,) int64, observation ``i`` owns ``inputs[offsets[i]:offsets[i+1]]``
    inputs : (M, C) float32 scaled member inputs (:func:`member_inputs`)
    context : (N, F) float32 per-observation inputs joined to the pooled set (standardised summary features,
        ``log10 n``...; F may be 0)
    y : (N,) float32 standardised targets (zeros where only predictions are wanted)
    """

    offsets: np.ndarray
    inputs: np.ndarray
    context: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets, dtype=np.int64)
        object.__setattr__(self, "offsets", offsets)
        n = len(offsets) - 1
        if n < 0 or offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != len(self.inputs):
            raise ValueError("set data: offsets must start at 0, be non-decreasing and end at the member count")
        if self.inputs.ndim != 2 or self.context.ndim != 2 or self.context.shape[0] != n or self.y.shape != (n,):
            raise ValueError(f"set data: expected inputs (M, C), context ({n}, F), y ({n},); got "
                             f"{self.inputs.shape}, {self.context.shape}, {self.y.shape}")

    @classmethod
    def build(cls, members: Members, columns: Sequence[str], *, context: np.ndarray | None = None,
              y: np.ndarray | None = None) -> SetData:
        """From ragged ``members`` (one set per observation): scaled ``columns`` (:func:`member_inputs`),
        ``context`` (N, F) (default: none) and ``y`` (N,) (default: zeros)."""
        n = members.n_obs
        ctx = np.zeros((n, 0), np.float32) if context is None else np.asarray(context, np.float32).reshape(n, -1)
        yy = np.zeros(n, np.float32) if y is None else np.asarray(y, np.float32)
        return cls(np.asarray(members.offsets, np.int64), member_inputs(members, columns), ctx, yy)

    @property
    def n_obs(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def with_members(self, keep: np.ndarray) -> SetData:
        """The same observations keeping only the members where ``keep`` (M,) is True."""
        owner = np.repeat(np.arange(self.n_obs), self.counts)
        kept = np.bincount(owner[keep], minlength=self.n_obs)
        offsets = np.concatenate(([0], np.cumsum(kept))).astype(np.int64)
        return SetData(offsets, self.inputs[keep], self.context, self.y)

    def take(self, rows: np.ndarray) -> SetData:
        """The observations ``rows`` (an integer index or boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        counts = self.counts[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        idx = np.repeat(self.offsets[:-1][rows] - offsets[:-1], counts) + np.arange(offsets[-1], dtype=np.int64)
        return SetData(offsets, self.inputs[idx], self.context[rows], self.y[rows])

    def __len__(self) -> int:
        """The number of observations (so that block iteration treats a SetData like rows of features)."""
        return self.n_obs

    def __getitem__(self, rows: slice) -> SetData:
        """The observations of a slice, e.g. ``data[start:start + chunk]`` (a block of rows)."""
        if not isinstance(rows, slice):
            raise TypeError(f"SetData rows: expected a slice (use take() for an index), got {type(rows).__name__}")
        return self.take(np.arange(self.n_obs)[rows])


# -- the cap and thinning ---------------------------------------------------------------------------------------
def cap_keep(counts: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask over members (sum(counts),): every member of an observation with at most ``cap`` members; a
    uniformly random subset of exactly ``cap`` members (without replacement) of a larger one, drawn from ``rng``."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1 member, got {cap}")
    counts = np.asarray(counts, np.int64)
    keep = np.ones(int(counts.sum()), dtype=bool)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    for i in np.flatnonzero(counts > cap):
        drop = np.ones(counts[i], dtype=bool)
        drop[rng.choice(counts[i], size=cap, replace=False)] = False
        keep[starts[i]:starts[i] + counts[i]] = ~drop
    return keep


def set_keyed_cap_keep(data: SetData, cap: int, seed: int) -> np.ndarray:
    """Boolean mask over members like :func:`cap_keep`, but each large set's subsample is a function of the set
    alone: drawn from a stream seeded by ``seed`` and a digest of its members' inputs taken in a canonical (sorted)
    order. The same members give the same subsample whatever their order in the list, whatever other observations
    are evaluated with them (`clustermass query` on one cluster and a row of `infer` agree), and on every run."""
    if cap < 1:
        raise ValueError(f"cap must be >= 1 member, got {cap}")
    keep = np.ones(len(data.inputs), dtype=bool)
    for i in np.flatnonzero(data.counts > cap):
        start, stop = int(data.offsets[i]), int(data.offsets[i + 1])
        rows = np.ascontiguousarray(data.inputs[start:stop], np.float32)
        order = np.lexsort(rows.T[::-1])  # canonical order: by the first input, then the next...
        digest = hashlib.blake2b(rows[order].tobytes(), digest_size=8).digest()
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0x5E7, int.from_bytes(digest, "little"))))
        chosen = order[rng.choice(stop - start, size=cap, replace=False)]
        block = np.zeros(stop - start, dtype=bool)
        block[chosen] = True
        keep[start:stop] = block
    return keep


def cap_sets(data: SetData, cap: int, rng: np.random.Generator) -> SetData:
    """``data`` with at most ``cap`` members per observation (:func:`cap_keep`). Only the members change: a
    context computed from all members (``log10 n``) is untouched."""
    if not np.any(data.counts > cap):
        return data
    return data.with_members(cap_keep(data.counts, cap, rng))


def thinning_keep(counts: np.ndarray, members_kept: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Boolean mask over members: random spectroscopic incompleteness as :func:`models.stage.thinned_table` draws
    it for the ``dynamics`` set (``[train] members_kept`` = ``(lo, hi)``). Each observation draws a target count
    log-uniformly in [lo, hi], independently of the host's mass, and keeps each of its n members with probability
    ``min(1, target / n)``; the kept count is binomial around the target (all members when n <= target). The
    draws come from ``rng`` in thinned_table's order (the targets, then one uniform per member), so the same
    generator state keeps the same members."""
    lo, hi = (float(v) for v in members_kept)
    if not 0 < lo <= hi:
        raise ValueError(f"members_kept must be 0 < lo <= hi, got {members_kept}")
    counts = np.asarray(counts, np.int64)
    wanted = np.exp(rng.uniform(np.log(lo), np.log(hi), len(counts)))
    completeness = np.minimum(1.0, wanted / np.maximum(counts, 1))
    return rng.random(int(counts.sum())) < np.repeat(completeness, counts)


def thin_sets(data: SetData, members_kept: tuple[float, float], rng: np.random.Generator) -> SetData:
    """``data`` after :func:`thinning_keep` (context and targets unchanged: the ``dynamics`` set has no count)."""
    return data.with_members(thinning_keep(data.counts, members_kept, rng))


# -- buckets and padded batches ---------------------------------------------------------------------------------
def bucket_widths(cap: int, smallest: int = SMALLEST_WIDTH) -> tuple[int, ...]:
    """Padded set widths: powers of two from ``smallest`` below ``cap``, then ``cap`` itself (members)."""
    if cap < 1 or smallest < 1:
        raise ValueError(f"cap and smallest width must be >= 1, got {cap}, {smallest}")
    widths = []
    w = smallest
    while w < cap:
        widths.append(w)
        w *= 2
    return (*widths, cap)


def bucket_index(counts: np.ndarray, widths: Sequence[int]) -> np.ndarray:
    """Index into ``widths`` of each observation's bucket: the narrowest width that holds all its members (an
    empty set goes to the narrowest). Raises when a count exceeds the widest (cap the sets first)."""
    counts = np.asarray(counts, np.int64)
    widths = np.asarray(widths, np.int64)
    if counts.size and counts.max() > widths[-1]:
        raise ValueError(f"a set of {int(counts.max())} members exceeds the widest bucket ({int(widths[-1])}): "
                         "cap the sets first")
    return np.searchsorted(widths, counts, side="left")


@dataclass(frozen=True)
class SetBatch:
    """A padded batch of ``B`` observations of one bucket width ``W``.

    rows : (B,) int64 observation index into the source :class:`SetData`; -1 for filler rows
    members : (B, W, C) float32 scaled inputs, zero where masked
    mask : (B, W) bool, True for real members
    context : (B, F) float32; y : (B,) float32 standardised targets
    weight : (B,) float32, 1 for real rows and 0 for filler rows (they only complete a fixed batch shape)
    """

    rows: np.ndarray
    members: np.ndarray
    mask: np.ndarray
    context: np.ndarray
    y: np.ndarray
    weight: np.ndarray

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


def pad_batch(data: SetData, rows: np.ndarray, width: int, size: int | None = None) -> SetBatch:
    """Observations ``rows`` of ``data`` padded to ``width`` members, and with filler rows (weight 0, no members)
    to ``size`` rows when given. Raises when a set has more than ``width`` members."""
    rows = np.asarray(rows, np.int64)
    size = len(rows) if size is None else size
    if len(rows) > size:
        raise ValueError(f"{len(rows)} rows do not fit a batch of {size}")
    counts = data.counts[rows]
    if counts.size and counts.max() > width:
        raise ValueError(f"a set of {int(counts.max())} members does not fit width {width}")
    n_feat = data.inputs.shape[1]
    members = np.zeros((size, width, n_feat), np.float32)
    mask = np.zeros((size, width), bool)
    slot = np.repeat(np.arange(len(rows)), counts)
    pos = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    src = np.repeat(data.offsets[:-1][rows], counts) + pos
    members[slot, pos] = data.inputs[src]
    mask[slot, pos] = True
    context = np.zeros((size, data.context.shape[1]), np.float32)
    context[: len(rows)] = data.context[rows]
    y = np.zeros(size, np.float32)
    y[: len(rows)] = data.y[rows]
    weight = np.zeros(size, np.float32)
    weight[: len(rows)] = 1.0
    return SetBatch(np.concatenate([rows, np.full(size - len(rows), -1, np.int64)]), members, mask, context, y,
                    weight)


def epoch_batches(data: SetData, *, widths: Sequence[int], batch_size: int,
                  rng: np.random.Generator) -> list[SetBatch]:
    """One training epoch: every observation exactly once, shuffled within its bucket and cut into batches of
    ``batch_size`` rows (a bucket's last batch completed with filler rows), the batches of all buckets in a random
    order. Every batch has shape (batch_size, W) for a W of ``widths``: one compilation per width."""
    bucket = bucket_index(data.counts, widths)
    batches = []
    for b, width in enumerate(widths):
        rows = rng.permutation(np.flatnonzero(bucket == b))
        batches.extend(pad_batch(data, rows[s:s + batch_size], width, batch_size)
                       for s in range(0, len(rows), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def ordered_batches(data: SetData, *, widths: Sequence[int], batch_size: int) -> Iterator[SetBatch]:
    """Every observation once, bucket by bucket in row order (evaluation and prediction; ``batch.rows`` says
    where each row goes back), batches of ``batch_size`` rows completed with filler rows."""
    bucket = bucket_index(data.counts, widths)
    for b, width in enumerate(widths):
        rows = np.flatnonzero(bucket == b)
        for s in range(0, len(rows), batch_size):
            yield pad_batch(data, rows[s:s + batch_size], width, batch_size)
