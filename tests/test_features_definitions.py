"""features.definitions / features.ragged against independent per-observation implementations."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from astropy.stats import biweight_scale
from scipy.stats import kurtosis

from features.definitions import (
    FEATURE_NAMES,
    FEATURES,
    biweight_scale_ragged,
    compute_features,
    features_markdown,
    gapper_ragged,
)
from features.ragged import segment_ids, segment_median, segment_quantile, segment_sort

R_AP = 1.6  # Mpc/h
V_CUT = 2500.0  # km/s


def make_observations(seed: int = 0, n_random: int = 400, max_n: int = 90):
    """Ragged random observations: sizes 0-3 several times, random sizes up to ``max_n``, one large one,
    some with tied (rounded) velocities, one with all velocities equal and one with MAD = 0."""
    rng = np.random.default_rng(seed)
    sizes = np.concatenate([[0, 1, 2, 3] * 5, rng.integers(4, max_n, n_random), [500, 7, 9]])
    perm = rng.permutation(len(sizes))
    sizes = sizes[perm]
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    n = int(offsets[-1])
    r = rng.uniform(0.0, R_AP, n)
    v = np.where(rng.uniform(size=n) < 0.7, rng.normal(0.0, 500.0, n), rng.uniform(-V_CUT, V_CUT, n))
    v = np.clip(v, -V_CUT + 1, V_CUT - 1)
    m = rng.uniform(9.5, 12.2, n)
    seg = np.repeat(np.arange(len(sizes)), sizes)
    # ties: round velocities of every 5th observation to 100 km/s
    v = np.where(seg % 5 == 0, np.round(v, -2), v)
    # the size-7 observation: all velocities equal; the size-9 one: more than half equal (MAD = 0)
    i7 = int(np.flatnonzero(perm == len(sizes) - 2)[0])
    v[offsets[i7] : offsets[i7 + 1]] = 250.0
    i9 = int(np.flatnonzero(perm == len(sizes) - 1)[0])
    v[offsets[i9] : offsets[i9 + 1]] = [-30.0, 5.0, 5.0, 5.0, 5.0, 5.0, 7.0, 800.0, -1200.0]
    return offsets, r, v, m


def naive_gapper(x: np.ndarray) -> float:
    n = len(x)
    if n < 2:
        return np.nan
    s = sorted(x.tolist())
    total = 0.0
    for i in range(1, n):
        total += i * (n - i) * (s[i] - s[i - 1])
    return np.sqrt(np.pi) / (n * (n - 1)) * total


def reference_features(x_r: np.ndarray, x_v: np.ndarray, x_m: np.ndarray, r_ap: float) -> dict[str, float]:
    """One observation, written independently of the ragged code (astropy, scipy, numpy per observation)."""
    n = len(x_v)
    nan = np.nan
    if n == 0:
        return {name: (0.0 if name == "n_members" else nan) for name in FEATURE_NAMES}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sbw = float(biweight_scale(x_v, c=9.0, modify_sample_size=False))
        kurt = float(kurtosis(x_v, fisher=True, bias=True))
    inner_v = x_v[x_r < r_ap / 2]
    absv = np.abs(x_v)
    return {
        "n_members": float(n),
        "log10_n_members": np.log10(n),
        "sigma_v_biweight": sbw,
        "sigma_v_gapper": naive_gapper(x_v),
        "sigma_v_std": np.std(x_v, ddof=1) if n >= 2 else nan,
        "abs_v_over_sigma_median": np.median(absv / sbw) if sbw > 0 else nan,
        "abs_v_over_sigma_p90": np.percentile(absv / sbw, 90) if sbw > 0 else nan,
        "v_kurtosis": kurt,
        "r_mean": np.mean(x_r),
        "r_p25": np.percentile(x_r, 25),
        "r_median": np.median(x_r),
        "r_p75": np.percentile(x_r, 75),
        "log10_mstar_total": np.log10(np.sum(10.0**x_m)),
        "log10_mstar_max": np.max(x_m),
        "log10_mstar_median": np.median(x_m),
        "log10_mstar_std": np.std(x_m, ddof=1) if n >= 2 else nan,
        "sigma_v_biweight_inner": float(biweight_scale(inner_v, c=9.0)) if len(inner_v) else sbw,
        "frac_inner": len(inner_v) / n,
    }


def compute_quietly(*args, **kwargs) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any RuntimeWarning (0/0, log10(0), ...) fails the test
        return compute_features(*args, **kwargs)


@pytest.fixture(scope="module")
def observations():
    return make_observations()


@pytest.fixture(scope="module")
def computed(observations):
    offsets, r, v, m = observations
    return compute_quietly(offsets, r, v, m, r_aperture=R_AP)


@pytest.fixture(scope="module")
def expected(observations):
    offsets, r, v, m = observations
    rows = [reference_features(r[a:b], v[a:b], m[a:b], R_AP) for a, b in itertools.pairwise(offsets)]
    return {name: np.array([row[name] for row in rows]) for name in FEATURE_NAMES}


@pytest.mark.parametrize("name", FEATURE_NAMES)
def test_feature_matches_reference(name, computed, expected):
    got, want = computed[name], expected[name]
    assert got.shape == want.shape
    assert got.dtype in (np.float32, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"NaN pattern of {name}")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9, equal_nan=True, err_msg=name)


def test_tiny_and_degenerate_cases(observations, computed):
    offsets, _, v, _ = observations
    counts = np.diff(offsets)
    f = computed
    empty = counts == 0
    assert np.all(f["n_members"][empty] == 0)
    for name in FEATURE_NAMES[1:]:
        assert np.all(np.isnan(f[name][empty])), name
    one = counts == 1
    assert np.all(f["sigma_v_biweight"][one] == 0)
    assert np.all(f["log10_n_members"][one] == 0)
    for name in ("sigma_v_gapper", "sigma_v_std", "log10_mstar_std", "v_kurtosis", "abs_v_over_sigma_median"):
        assert np.all(np.isnan(f[name][one])), name
    two = np.flatnonzero(counts == 2)
    gaps = np.abs(v[offsets[two] + 1] - v[offsets[two]])
    np.testing.assert_allclose(f["sigma_v_gapper"][two], np.sqrt(np.pi) / 2 * gaps, rtol=1e-12)
    np.testing.assert_allclose(f["v_kurtosis"][two][gaps > 0], -2.0, rtol=1e-12)
    # the all-equal and the MAD = 0 observations
    i7 = np.flatnonzero(counts == 7)
    i7 = [i for i in i7 if np.all(v[offsets[i] : offsets[i + 1]] == 250.0)]
    assert len(i7) == 1
    assert f["sigma_v_biweight"][i7[0]] == 0 and np.isnan(f["v_kurtosis"][i7[0]])
    assert f["sigma_v_std"][i7[0]] == 0 and f["sigma_v_gapper"][i7[0]] == 0
    i9 = [i for i in np.flatnonzero(counts == 9) if np.count_nonzero(v[offsets[i] : offsets[i + 1]] == 5.0) == 5]
    assert len(i9) == 1
    assert f["sigma_v_biweight"][i9[0]] == 0 and np.isnan(f["abs_v_over_sigma_p90"][i9[0]])


def permute_within(offsets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    seg = segment_ids(offsets)
    return np.lexsort((rng.uniform(size=len(seg)), seg))


def test_invariant_under_permutation_within_observations(observations, computed):
    offsets, r, v, m = observations
    rng = np.random.default_rng(42)
    for _ in range(3):
        p = permute_within(offsets, rng)
        assert not np.array_equal(p, np.arange(len(p)))
        again = compute_quietly(offsets, r[p], v[p], m[p], r_aperture=R_AP)
        for name in FEATURE_NAMES:
            np.testing.assert_array_equal(again[name], computed[name], err_msg=name)


def test_keys_order_and_lengths(observations, computed):
    offsets = observations[0]
    assert tuple(computed) == FEATURE_NAMES
    assert all(len(a) == len(offsets) - 1 for a in computed.values())


def test_table():
    assert len(FEATURES) >= 14
    assert FEATURE_NAMES == tuple(f.name for f in FEATURES)
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    for f in FEATURES:
        assert f.name.isidentifier() and f.description.strip()
        assert isinstance(f.unit, str) and f.unit == f.unit.strip()
    md = features_markdown()
    lines = md.strip().splitlines()
    assert lines[0].replace(" ", "") == "|name|unit|definition|"
    assert len(lines) == 2 + len(FEATURES)
    for f, line in zip(FEATURES, lines[2:], strict=True):
        cells = [c.strip() for c in line.replace("\\|", "").strip("|").split("|")]
        assert len(cells) == 3, line
        assert cells[0] == f"`{f.name}`"
        assert cells[1] == (f.unit or "dimensionless")
        assert cells[2]
    assert {"km/s", "Mpc/h"} <= {f.unit for f in FEATURES}


def test_empty_inputs():
    # one empty observation
    f = compute_quietly(np.array([0]), np.array([]), np.array([]), np.array([]), r_aperture=R_AP)
    assert all(len(a) == 0 for a in f.values())
    f = compute_quietly(np.array([0, 0]), np.array([]), np.array([]), np.array([]), r_aperture=R_AP)
    assert f["n_members"].tolist() == [0.0]
    assert all(np.isnan(f[name][0]) for name in FEATURE_NAMES[1:])
    # empty observations around a non-empty one
    f = compute_quietly(
        np.array([0, 0, 3, 3]),
        np.array([0.1, 0.2, 1.0]),
        np.array([10.0, -20.0, 35.0]),
        np.array([10.0, 11.0, 10.5]),
        r_aperture=R_AP,
    )
    assert f["n_members"].tolist() == [0.0, 3.0, 0.0]
    np.testing.assert_allclose(f["log10_mstar_total"][1], np.log10(10**10 + 10**11 + 10**10.5))
    assert f["frac_inner"][1] == pytest.approx(2 / 3)


def test_a_centre_off_the_cluster_leaves_every_feature_defined():
    """Issue 19: a list centred off its cluster (a real catalogue's centre; ``features.centring``'s mocks) can
    have no member inside r_aperture / 2, as two held-out rows of a run with centring errors had (52 and 23
    members, the nearest 0.83 and 0.86 Mpc/h from the centre): the inner dispersion is then all members', not
    NaN, which no network can read; an empty observation stays NaN throughout."""
    rng = np.random.default_rng(5)
    sizes = np.array([52, 0, 23, 30])
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    r = rng.uniform(0.83, R_AP, offsets[-1])
    r[offsets[3] : offsets[3] + 3] = [0.1, 0.3, 0.79]  # a centred one: three inner members
    v = rng.normal(0.0, 600.0, offsets[-1])
    f = compute_quietly(offsets, r, v, rng.uniform(9.5, 11.5, offsets[-1]), r_aperture=R_AP)
    off = [0, 2]
    assert np.all(f["frac_inner"][off] == 0)
    for name in FEATURE_NAMES:
        assert np.all(np.isfinite(f[name][[0, 2, 3]])), name
        assert np.isnan(f[name][1]) or name == "n_members", name
    np.testing.assert_array_equal(f["sigma_v_biweight_inner"][off], f["sigma_v_biweight"][off])
    inner3 = v[offsets[3] : offsets[3] + 3]
    assert f["sigma_v_biweight_inner"][3] == pytest.approx(float(biweight_scale(inner3, c=9.0)), rel=1e-12)


def test_accepts_float32_and_int32(observations, computed):
    offsets, r, v, m = observations
    f = compute_quietly(
        offsets.astype(np.int32), r.astype(np.float32), v.astype(np.float32), m.astype(np.float32), r_aperture=R_AP
    )
    np.testing.assert_allclose(f["sigma_v_std"], computed["sigma_v_std"], rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize(
    ("offsets", "lengths", "kwargs", "match"),
    [
        ([1, 3], (2, 2, 2), {}, r"expected offsets\[0\] == 0, got offsets\[0\] = 1"),
        ([0, 3, 2, 4], (4, 4, 4), {}, r"expected non-decreasing offsets, got offsets\[1\] = 3 > offsets\[2\] = 2"),
        ([0, 2, 3], (4, 4, 4), {}, r"expected offsets\[-1\] == number of values \(4\), got offsets\[-1\] = 3"),
        ([0, 2, 4], (4, 3, 4), {}, r"expected r_proj, v_los, log10_mstar of equal length, got 4, 3, 4"),
        ([0, 2, 4], (4, 4, 5), {}, r"expected .*equal length, got 4, 4, 5"),
        ([], (0, 0, 0), {}, r"expected offsets of length n_obs \+ 1 >= 1 .*got an empty array"),
        ([[0, 2]], (2, 2, 2), {}, r"expected 1-D offsets, got an array of shape \(1, 2\)"),
        ([0.0, 2.0], (2, 2, 2), {}, r"expected integer offsets, got dtype float64"),
        ([0, 2], (2, 2, 2), {"r_aperture": 0.0}, r"expected a finite r_aperture > 0 \(Mpc/h\), got 0.0"),
        ([0, 2], (2, 2, 2), {"r_aperture": np.nan}, r"expected a finite r_aperture > 0 .*got nan"),
    ],
)
def test_shape_errors(offsets, lengths, kwargs, match):
    arrays = [np.linspace(0.1, 1.0, k) for k in lengths]
    kwargs = {"r_aperture": R_AP, **kwargs}
    with pytest.raises(ValueError, match=match):
        compute_features(np.array(offsets), *arrays, **kwargs)


def test_member_array_errors():
    ok = np.array([0.1, 0.2])
    with pytest.raises(ValueError, match=r"expected finite v_los, got 1 non-finite value"):
        compute_features(np.array([0, 2]), ok, np.array([1.0, np.nan]), ok, r_aperture=R_AP)
    with pytest.raises(ValueError, match=r"expected 1-D r_proj, got an array of shape \(2, 1\)"):
        compute_features(np.array([0, 2]), ok[:, None], ok, ok, r_aperture=R_AP)


# ---------------------------------------------------------------------------------------------------------------
# generic ragged helpers


def test_segment_sort_median_quantile(observations):
    offsets, _, v, _ = observations
    s = segment_sort(v, offsets)
    med = segment_median(s, offsets)
    qs = (0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0)
    quant = {q: segment_quantile(s, offsets, q) for q in qs}
    for i, (a, b) in enumerate(itertools.pairwise(offsets)):
        np.testing.assert_array_equal(s[a:b], np.sort(v[a:b]))
        if b == a:
            assert np.isnan(med[i]) and all(np.isnan(quant[q][i]) for q in qs)
            continue
        assert med[i] == np.median(v[a:b])
        for q in qs:
            np.testing.assert_allclose(quant[q][i], np.quantile(v[a:b], q), rtol=1e-12, atol=1e-9)


def test_standalone_biweight_and_gapper():
    rng = np.random.default_rng(3)
    x = rng.normal(0, 300, 57)
    off = np.array([0, 57])
    s = segment_sort(x, off)
    assert biweight_scale_ragged(s, off)[0] == pytest.approx(biweight_scale(x, c=9.0), rel=1e-12)
    assert gapper_ragged(s, off)[0] == pytest.approx(naive_gapper(x), rel=1e-12)
