"""Per-observation features of mock cluster observations, vectorised over ragged member arrays.

One *observation* is the set of galaxies in a cylinder around a host halo along one line of sight (Ho et al. 2019):
projected distance to the host ``r_proj`` (comoving Mpc/h, in [0, r_aperture)), line-of-sight velocity relative
to the host ``v_los`` (km/s, Hubble flow plus peculiar) and ``log10_mstar`` (log10 of the stellar mass in Msun,
no h). Observations are stored ragged: ``offsets`` (int, length ``n_obs + 1``) delimits the members of each one.

:data:`FEATURES` is the documented table (name, unit, definition) in output column order; :func:`compute_features`
computes every feature for every observation at once (float64 internally and out, no Python loop over
observations), and :func:`features_markdown` renders the table for the README.

Small observations (the pipeline drops those with fewer than ~10 members, but nothing here warns or fails):

- an empty observation gives ``n_members = 0`` and NaN for every other feature;
- spreads that need two members (``sigma_v_gapper``, ``sigma_v_std``, ``log10_mstar_std``) are NaN for n = 1;
- ``sigma_v_biweight`` follows astropy: 0 when the median absolute deviation is 0 (n = 1, or more than half of
  the velocities equal), and then the ``abs_v_over_sigma_*`` ratios are NaN;
- ``v_kurtosis`` follows scipy: NaN when the variance is 0 (n = 1, all velocities equal); n = 2 gives -2;
- ``sigma_v_biweight_inner`` falls back to ``sigma_v_biweight`` (all members) when no member lies inside
  r_aperture / 2: a centre displaced from the cluster (real lists' centres, ``features.centring``) can leave
  the inner half empty, and a NaN there left such a cluster without a mass (issue 19).

Every feature depends only on the multiset of members of an observation: members are sorted within each
observation first and all sums run over the sorted values, so the output is bit-for-bit invariant under any
reordering of members within an observation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.ragged import (
    check_offsets,
    segment_ids,
    segment_last,
    segment_local_index,
    segment_mean,
    segment_median,
    segment_quantile,
    segment_sort,
    segment_sum,
    subset_offsets,
)

__all__ = [
    "BIWEIGHT_C",
    "FEATURES",
    "FEATURE_NAMES",
    "INNER_FRACTION",
    "FeatureDef",
    "biweight_scale_ragged",
    "compute_features",
    "features_markdown",
    "gapper_ragged",
]

BIWEIGHT_C = 9.0
"""Tuning constant c of the biweight scale (astropy's default)."""

INNER_FRACTION = 0.5
"""Members with ``r_proj < INNER_FRACTION * r_aperture`` count as *inner*."""


@dataclass(frozen=True)
class FeatureDef:
    """One documented feature: its column ``name``, its ``unit`` ("" for dimensionless) and a ``description``."""

    name: str
    unit: str
    description: str


FEATURES: tuple[FeatureDef, ...] = (
    FeatureDef("n_members", "", "Richness: number of members in the cylinder (a count; 0 for an empty observation)."),
    FeatureDef("log10_n_members", "", "log10 of n_members (0 for n = 1; NaN for n = 0)."),
    FeatureDef(
        "sigma_v_biweight",
        "km/s",
        "Biweight scale of v_los, exactly astropy.stats.biweight_scale(v, c=9.0): location M = median, "
        "u = (v - M) / (9 MAD), no iteration, n = all members (modify_sample_size=False); 0 when MAD = 0 "
        "(e.g. n = 1).",
    ),
    FeatureDef(
        "sigma_v_gapper",
        "km/s",
        "Gapper estimate of the velocity dispersion (Beers, Flynn & Gebhardt 1990): "
        "sqrt(pi) / (n (n - 1)) * sum_{i=1}^{n-1} i (n - i) g_i over the gaps g_i of the sorted v_los; NaN for n < 2.",
    ),
    FeatureDef(
        "sigma_v_std",
        "km/s",
        "Standard deviation of v_los over all members, ddof = 1 (the M-sigma baseline); NaN for n < 2.",
    ),
    FeatureDef(
        "abs_v_over_sigma_median",
        "",
        "Median of |v_los| / sigma_v_biweight (v_los relative to the host); NaN when sigma_v_biweight = 0.",
    ),
    FeatureDef(
        "abs_v_over_sigma_p90",
        "",
        "90th percentile (numpy linear interpolation) of |v_los| / sigma_v_biweight; NaN when sigma_v_biweight = 0.",
    ),
    FeatureDef(
        "v_kurtosis",
        "",
        "Excess kurtosis of v_los, Fisher definition, biased (scipy.stats.kurtosis default): m4 / m2^2 - 3 with "
        "central moments about the mean; NaN when the variance is 0 (e.g. n = 1).",
    ),
    FeatureDef("r_mean", "Mpc/h", "Mean projected distance r_proj of the members to the host (comoving)."),
    FeatureDef("r_p25", "Mpc/h", "25th percentile of r_proj (numpy linear interpolation; comoving)."),
    FeatureDef("r_median", "Mpc/h", "50th percentile of r_proj (numpy linear interpolation; comoving)."),
    FeatureDef("r_p75", "Mpc/h", "75th percentile of r_proj (numpy linear interpolation; comoving)."),
    FeatureDef(
        "log10_mstar_total",
        "dex(Msun)",
        "log10 of the summed stellar mass of all members, log10(sum 10^log10_mstar) (no h).",
    ),
    FeatureDef("log10_mstar_max", "dex(Msun)", "log10 stellar mass of the most massive member (no h)."),
    FeatureDef("log10_mstar_median", "dex(Msun)", "Median of log10_mstar over the members (no h)."),
    FeatureDef(
        "log10_mstar_std",
        "dex",
        "Standard deviation (ddof = 1) of log10_mstar over the members; NaN for n < 2.",
    ),
    FeatureDef(
        "sigma_v_biweight_inner",
        "km/s",
        "sigma_v_biweight (same definition) of the members with r_proj < r_aperture / 2; 0 when there is one; "
        "sigma_v_biweight of all members when there are none (a centre displaced from the cluster).",
    ),
    FeatureDef(
        "frac_inner",
        "",
        "Fraction of members with r_proj < r_aperture / 2; NaN for n = 0.",
    ),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


def features_markdown() -> str:
    """The feature table as Markdown (``name | unit | definition``), "dimensionless" for unit-less features."""
    lines = ["| name | unit | definition |", "|---|---|---|"]
    for f in FEATURES:
        unit = f.unit or "dimensionless"
        desc = f.description.replace("|", "\\|")
        lines.append(f"| `{f.name}` | {unit} | {desc} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------------------
# Ragged statistics


def _ratio(num: np.ndarray, den: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """``num / den`` where ``ok``, NaN elsewhere (no warnings)."""
    out = np.full(len(num), np.nan)
    np.divide(num, den, out=out, where=ok)
    return out


def biweight_scale_ragged(sorted_v: np.ndarray, offsets: np.ndarray, *, c: float = BIWEIGHT_C) -> np.ndarray:
    """Biweight scale of each segment of a segment-sorted array, with astropy.stats.biweight_scale semantics.

    ``M`` = median, ``MAD`` = median(|v - M|), ``u = (v - M) / (c MAD)``, and over ``|u| < 1``:
    ``sqrt(n * sum d^2 (1 - u^2)^4 / (sum (1 - u^2)(1 - 5 u^2))^2)`` with ``n`` the segment length
    (``modify_sample_size=False``, no iteration). Returns 0 where MAD = 0 (as astropy), NaN for empty segments.
    Units are those of ``sorted_v`` (km/s for velocities).
    """
    n_seg = len(offsets) - 1
    counts = np.diff(offsets)
    seg = segment_ids(offsets)
    med = segment_median(sorted_v, offsets)
    d = sorted_v - med[seg]
    mad = segment_median(segment_sort(np.abs(d), offsets), offsets)
    good = mad > 0  # False for empty segments (NaN) and MAD = 0
    scale = np.zeros(n_seg)
    scale[good] = c * mad[good]
    member_good = good[seg]
    u = np.zeros_like(d)
    np.divide(d, scale[seg], out=u, where=member_good)
    u2 = u * u
    keep = member_good & (u2 < 1.0)
    one_minus = 1.0 - u2
    f1 = segment_sum(np.where(keep, d * d * one_minus**4, 0.0), seg, n_seg)
    f2 = segment_sum(np.where(keep, one_minus * (1.0 - 5.0 * u2), 0.0), seg, n_seg) ** 2
    out = np.where(counts > 0, 0.0, np.nan)
    ok = good & (f2 > 0)
    out[ok] = np.sqrt(counts[ok] * f1[ok] / f2[ok])
    out[good & (f2 == 0)] = np.nan  # sum of (1 - u^2)(1 - 5u^2) exactly 0: undefined (astropy gives inf/nan)
    return out


def gapper_ragged(sorted_v: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Gapper scale of each segment of a segment-sorted array (Beers, Flynn & Gebhardt 1990, AJ 100, 32).

    ``sqrt(pi) / (n (n - 1)) * sum_{i=1}^{n-1} i (n - i) (x_{(i+1)} - x_{(i)})``; NaN for segments with n < 2.
    Units are those of ``sorted_v`` (km/s for velocities).
    """
    n_seg = len(offsets) - 1
    counts = np.diff(offsets)
    seg = segment_ids(offsets)
    if len(sorted_v) < 2:
        return np.full(n_seg, np.nan)
    local = segment_local_index(offsets, seg)[:-1]  # k = 0-based position of the lower value of each gap
    seg_lo = seg[:-1]
    same = seg_lo == seg[1:]
    n_lo = counts[seg_lo]
    weight = np.where(same, (local + 1) * (n_lo - local - 1), 0).astype(np.float64)
    total = segment_sum(weight * np.diff(sorted_v), seg_lo, n_seg)
    norm = (counts * (counts - 1)).astype(np.float64)
    return _ratio(np.sqrt(np.pi) * total, norm, counts >= 2)


def _std_ddof1(sorted_x: np.ndarray, seg: np.ndarray, counts: np.ndarray) -> np.ndarray:
    mean = segment_mean(sorted_x, seg, counts)
    d = sorted_x - mean[seg]
    ss = segment_sum(d * d, seg, len(counts))
    var = _ratio(ss, (counts - 1).astype(np.float64), counts >= 2)
    return np.sqrt(var)


def _kurtosis_fisher_biased(sorted_x: np.ndarray, seg: np.ndarray, counts: np.ndarray) -> np.ndarray:
    n_seg = len(counts)
    mean = segment_mean(sorted_x, seg, counts)
    d = sorted_x - mean[seg]
    d2 = d * d
    nonempty = counts > 0
    m2 = _ratio(segment_sum(d2, seg, n_seg), counts.astype(np.float64), nonempty)
    m4 = _ratio(segment_sum(d2 * d2, seg, n_seg), counts.astype(np.float64), nonempty)
    # scipy.stats.kurtosis: NaN where m2 <= (eps * mean)^2 (zero variance up to rounding)
    zero = np.zeros(n_seg, dtype=bool)
    zero[nonempty] = m2[nonempty] <= (np.finfo(np.float64).eps * mean[nonempty]) ** 2
    ok = nonempty & ~zero
    out = np.full(n_seg, np.nan)
    out[ok] = m4[ok] / m2[ok] ** 2 - 3.0
    return out


# --------------------------------------------------------------------------------------------------------------
# Entry point


def _member_array(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"expected 1-D {name}, got an array of shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"expected a real numeric {name}, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    bad = np.count_nonzero(~np.isfinite(arr))
    if bad:
        raise ValueError(f"expected finite {name}, got {bad} non-finite value(s)")
    return arr


def compute_features(
    offsets: np.ndarray,
    r_proj: np.ndarray,
    v_los: np.ndarray,
    log10_mstar: np.ndarray,
    *,
    r_aperture: float,
) -> dict[str, np.ndarray]:
    """Compute every feature of :data:`FEATURES` for every observation, vectorised over ragged members.

    Parameters
    ----------
    offsets
        Integer array of length ``n_obs + 1``: observation ``i`` owns members ``offsets[i]:offsets[i + 1]``;
        ``offsets[0] == 0``, non-decreasing, ``offsets[-1]`` = number of members. Empty observations are allowed.
    r_proj
        Projected comoving distance of each member to its host, Mpc/h, in [0, r_aperture).
    v_los
        Line-of-sight velocity of each member relative to its host (Hubble flow + peculiar), km/s.
    log10_mstar
        log10 of each member's stellar mass in Msun (no h).
    r_aperture
        Cylinder aperture radius, comoving Mpc/h; members with ``r_proj < r_aperture / 2`` are *inner*.

    Returns
    -------
    dict
        ``{name: float64 array of length n_obs}`` for every name of :data:`FEATURE_NAMES`, in that order; units
        as in :data:`FEATURES`.

    Raises
    ------
    ValueError
        ``expected ... got ...`` when the offsets or member arrays are malformed (see module docstring), when a
        member value is not finite, or when ``r_aperture`` is not a finite positive number.
    """
    r = _member_array(r_proj, "r_proj")
    v = _member_array(v_los, "v_los")
    m = _member_array(log10_mstar, "log10_mstar")
    if not (len(r) == len(v) == len(m)):
        raise ValueError(f"expected r_proj, v_los, log10_mstar of equal length, got {len(r)}, {len(v)}, {len(m)}")
    offsets = check_offsets(offsets, len(r))
    r_ap = float(r_aperture)
    if not (np.isfinite(r_ap) and r_ap > 0):
        raise ValueError(f"expected a finite r_aperture > 0 (Mpc/h), got {r_aperture!r}")

    n_obs = len(offsets) - 1
    counts = np.diff(offsets)
    nf = counts.astype(np.float64)
    nonempty = counts > 0
    seg = segment_ids(offsets)

    out: dict[str, np.ndarray] = {}
    out["n_members"] = nf
    log_n = np.full(n_obs, np.nan)
    np.log10(nf, out=log_n, where=nonempty)
    out["log10_n_members"] = log_n

    # velocities
    sv = segment_sort(v, offsets)
    sigma_bw = biweight_scale_ragged(sv, offsets)
    out["sigma_v_biweight"] = sigma_bw
    out["sigma_v_gapper"] = gapper_ragged(sv, offsets)
    out["sigma_v_std"] = _std_ddof1(sv, seg, counts)
    s_abs = segment_sort(np.abs(v), offsets)
    has_sigma = nonempty & (sigma_bw > 0)
    out["abs_v_over_sigma_median"] = _ratio(segment_quantile(s_abs, offsets, 0.5), sigma_bw, has_sigma)
    out["abs_v_over_sigma_p90"] = _ratio(segment_quantile(s_abs, offsets, 0.9), sigma_bw, has_sigma)
    out["v_kurtosis"] = _kurtosis_fisher_biased(sv, seg, counts)

    # projected radii
    sr = segment_sort(r, offsets)
    out["r_mean"] = segment_mean(sr, seg, counts)
    out["r_p25"] = segment_quantile(sr, offsets, 0.25)
    out["r_median"] = segment_quantile(sr, offsets, 0.5)
    out["r_p75"] = segment_quantile(sr, offsets, 0.75)

    # stellar masses
    sm = segment_sort(m, offsets)
    m_max = segment_last(sm, offsets)
    rel = np.power(10.0, sm - m_max[seg])  # in (0, 1]: no overflow
    total = segment_sum(rel, seg, n_obs)
    log_total = np.full(n_obs, np.nan)
    np.log10(total, out=log_total, where=nonempty)
    out["log10_mstar_total"] = m_max + log_total
    out["log10_mstar_max"] = m_max
    out["log10_mstar_median"] = segment_median(sm, offsets)
    out["log10_mstar_std"] = _std_ddof1(sm, seg, counts)

    # joint phase space: the inner half of the aperture
    inner = r < INNER_FRACTION * r_ap
    off_in = subset_offsets(inner, seg, n_obs)
    # no inner member (the given centre is off the cluster): the whole list's dispersion, not NaN (issue 19)
    sigma_inner = biweight_scale_ragged(segment_sort(v[inner], off_in), off_in)
    out["sigma_v_biweight_inner"] = np.where(np.diff(off_in) > 0, sigma_inner, sigma_bw)
    out["frac_inner"] = _ratio(np.diff(off_in).astype(np.float64), nf, nonempty)

    return {name: out[name] for name in FEATURE_NAMES}
