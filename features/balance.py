"""A mass-balanced host sample: the abundant low-mass hosts subsampled so that the training set is flatter in mass.

Ho et al. (2019, ApJ 887, 25; their training code McWilliamsCenter/halo_cnn, ``../shared/REFERENCE.md`` §3) flattened
the training mass function by capping the hosts per mass bin (~126 per 0.02 dex in MDPL2's 1 h^-1 Gpc box) and gave
the rare massive hosts more lines of sight. A density network trained on such a sample learns q(M | x) under the
flatter p_train, which the interim-prior correction divides out (:mod:`models.prior`, :mod:`inference.posterior`):
nothing about the answer is biased by the choice, only the number of examples per mass changes.

Here the cap is relative, not a count, so that it means the same in any box: below ``below`` (log10 M200c,
h^-1 Msun), every ``bin_width``-dex bin keeps at most as many hosts as the bin ``[below, below + bin_width)`` holds
(a bin only partly above the host cut keeps at most that many times its covered fraction of the bin), and never
fewer than :data:`MIN_CAP` hosts per bin. Bins are
anchored at ``below``. Which hosts are kept is a pure function of (seed, host id): the hosts with the smallest
:func:`features.centring.hash_uniforms` draws of each bin, so the same host is kept whatever subset of the
catalog is observed, and the selection function of the kept sample is known exactly: the kept fraction of each bin,
returned with the mask (:func:`balanced_hosts`), 1 at and above ``below``. A catalog built from such a sample
records it (its provenance ``selection``), so a population analysis can divide it out
(:func:`inference.population.step_selection`).

Units: log10 M200c in dex of h^-1 Msun.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from features.centring import hash_uniforms
from pipeline.errors import ConfigError

#: width of the balancing bins, dex (Ho et al. 2019 capped per 0.02 dex; 0.1 dex keeps every bin of the default
#: box above a thousand hosts, so the cap is not set by counting noise)
BALANCE_BIN_WIDTH = 0.1
#: the least a capped bin keeps: in a small box the reference bin holds few hosts, and a cap set by its counting
#: noise would leave a handful of low-mass hosts (the default 800 h^-1 Mpc box's reference bin holds ~2,900)
MIN_CAP = 100
#: the hash stream of the subsampling draws (the centring errors use streams 0-5)
_STREAM = 0xBA1


@dataclass(frozen=True)
class BalanceSpec:
    """Mass-balanced subsampling of the hosts below ``below`` (log10 M200c [h^-1 Msun]; None: every host kept).

    bin_width : dex; seed : the draws' seed (>= 0).
    """

    below: float | None = 14.0
    bin_width: float = BALANCE_BIN_WIDTH
    seed: int = 0

    def __post_init__(self) -> None:
        if self.below is not None and not (isinstance(self.below, int | float) and math.isfinite(self.below)):
            raise ConfigError(f"balance: expected a finite log10 M200c [Msun/h] or none, got {self.below!r}")
        if not (math.isfinite(self.bin_width) and 0.0 < self.bin_width <= 1.0):
            raise ConfigError(f"balance: expected a bin width in (0, 1] dex, got {self.bin_width!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"balance: expected a non-negative integer seed, got {self.seed!r}")

    @property
    def enabled(self) -> bool:
        return self.below is not None

    def to_dict(self) -> dict:
        return asdict(self)


def every_host() -> dict:
    """The selection record of a sample that kept every host above its cut: no capped bin."""
    return {"edges": [], "fraction": []}


def bin_index(log10_m: np.ndarray, spec: BalanceSpec) -> np.ndarray:
    """Index of each mass's balancing bin, counted down from ``below``: 0 is ``[below - w, below)``, -1 the
    reference bin ``[below, below + w)``; masses at or above ``below + w`` get -2 (never capped)."""
    assert spec.below is not None
    k = np.floor((spec.below - np.asarray(log10_m, dtype=np.float64)) / spec.bin_width + 1e-9).astype(np.int64)
    return np.where(k < -1, -2, k)


def balanced_hosts(log10_m: np.ndarray, host_id: np.ndarray, spec: BalanceSpec, *,
                   log10_m_min: float) -> tuple[np.ndarray, dict]:
    """Which hosts a mass-balanced sample keeps, and its selection function.

    ``log10_m``: log10 M200c [h^-1 Msun] of every host (all at or above the host cut ``log10_m_min``);
    ``host_id``: their ids. Returns ``(keep, selection)``: a boolean mask, and ``{"edges": [...], "fraction":
    [...]}``, the kept fraction of the hosts of every capped bin (ascending edges from the lowest bin's lower edge,
    which is ``log10_m_min``, to ``below``; 1 above). Every host is kept when ``spec`` is disabled or when no bin
    below ``below`` holds more hosts than the reference bin (then ``edges`` and ``fraction`` are empty).
    """
    log10_m = np.asarray(log10_m, dtype=np.float64)
    host_id = np.asarray(host_id, dtype=np.int64)
    keep = np.ones(len(log10_m), dtype=bool)
    if not spec.enabled or not len(log10_m) or spec.below is None or spec.below <= log10_m_min:
        return keep, every_host()
    below, w = spec.below, spec.bin_width
    k = bin_index(log10_m, spec)
    cap = max(int(np.count_nonzero(k == -1)), MIN_CAP)
    u = hash_uniforms(spec.seed, host_id, 0, _STREAM)
    n_bins = math.ceil((below - log10_m_min) / w - 1e-9)
    edges, fraction = [], []
    for b in range(n_bins - 1, -1, -1):  # ascending in mass
        lo, hi = max(below - (b + 1) * w, log10_m_min), below - b * w
        rows = np.flatnonzero(k == b)
        allowed = math.floor(cap * (hi - lo) / w + 1e-9)
        if len(rows) > allowed:
            order = rows[np.argsort(u[rows], kind="stable")]
            keep[order[allowed:]] = False
        edges.append(lo)
        fraction.append(min(1.0, allowed / len(rows)) if len(rows) else 1.0)
    edges.append(below)
    return keep, {"edges": [round(e, 9) for e in edges], "fraction": fraction}
