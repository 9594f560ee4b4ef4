"""Cylinder searches against a brute-force all-pairs search on a small periodic box."""

from __future__ import annotations

import numpy as np
import pytest

from features.cylinder import CylinderSpec, LineOfSightSpec, redshift_space, search_axis, search_direction, wrap
from pipeline.cosmology import MDPL2
from pipeline.errors import ConfigError
from pipeline.snapshot import Snapshot

BOX = 200.0
SNAP = Snapshot(BOX, 0.8951, MDPL2)
H = SNAP.hubble_per_comoving()
SPEC = CylinderSpec(r_aperture=3.0, v_cut=2500.0)
D = SPEC.half_depth(SNAP)


def _universe(seed=0, n_gal=30000, n_hosts=60):
    rng = np.random.default_rng(seed)
    gal_x = rng.uniform(0, BOX, (n_gal, 3))
    gal_v = rng.normal(0, 600, (n_gal, 3))
    host_x = rng.uniform(0, BOX, (n_hosts, 3))
    # hosts straddling every face and corner of the box
    host_x[:8] = [[0.2, 50, 50], [BOX - 0.1, 60, 70], [80, 0.5, 90], [70, BOX - 1, 10], [40, 40, 0.3],
                  [30, 30, BOX - 0.4], [0.1, BOX - 0.2, 0.3], [BOX - 0.5, 0.4, BOX - 0.6]]
    host_v = rng.normal(0, 300, (n_hosts, 3))
    # dense clumps of galaxies around the edge hosts, so the wrap really matters
    clump = np.repeat(host_x[:8], 200, axis=0) + rng.normal(0, 1.5, (1600, 3))
    gal_x = np.vstack([gal_x, np.mod(clump, BOX)])
    gal_v = np.vstack([gal_v, np.repeat(host_v[:8], 200, axis=0) + rng.normal(0, 800, (1600, 3))])
    return host_x, host_v, gal_x, gal_v


def _brute(host_x, host_v, gal_x, gal_v, n_hat, r_ap, v_cut):
    out = []
    for hx, hv in zip(host_x, host_v, strict=True):
        d = wrap(gal_x - hx, BOX)
        along = d @ n_hat
        r = np.sqrt(np.maximum((d * d).sum(1) - along**2, 0))
        v = H * along + (gal_v - hv) @ n_hat
        sel = np.flatnonzero((r < r_ap) & (np.abs(v) < v_cut))
        out.append((sel, r[sel], v[sel]))
    return out


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_axis_search_equals_brute_force(axis):
    host_x, host_v, gal_x, gal_v = _universe(seed=axis)
    i, j = [a for a in range(3) if a != axis]
    m = search_axis(
        host_x[:, [i, j]], redshift_space(host_x[:, axis], host_v[:, axis], H, BOX),
        gal_x[:, [i, j]], redshift_space(gal_x[:, axis], gal_v[:, axis], H, BOX),
        r_aperture=SPEC.r_aperture, half_depth=D, hubble=H, period_xy=(BOX, BOX), period_s=BOX,
    )
    expected = _brute(host_x, host_v, gal_x, gal_v, np.eye(3)[axis], SPEC.r_aperture, SPEC.v_cut)
    total = 0
    for h, (sel, r, v) in enumerate(expected):
        got = m.index[m.offsets[h] : m.offsets[h + 1]]
        np.testing.assert_array_equal(got, sel)
        np.testing.assert_allclose(m.r_proj[m.offsets[h] : m.offsets[h + 1]], r, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(m.v_los[m.offsets[h] : m.offsets[h + 1]], v, rtol=1e-5, atol=1e-2)
        total += len(sel)
    assert total > 1000
    assert all(len(expected[h][0]) > 20 for h in range(8))  # the edge clumps were found across the wrap


def test_direction_search_equals_brute_force():
    host_x, host_v, gal_x, gal_v = _universe(seed=5, n_gal=15000)
    for n_hat in LineOfSightSpec(extra_directions=3, seed=2).directions():
        hs = np.mod(host_x + np.outer(host_v @ n_hat / H, n_hat), BOX)
        gs = np.mod(gal_x + np.outer(gal_v @ n_hat / H, n_hat), BOX)
        m = search_direction(hs, gs, n_hat, r_aperture=SPEC.r_aperture, half_depth=D, hubble=H, box_size=BOX)
        expected = _brute(host_x, host_v, gal_x, gal_v, n_hat, SPEC.r_aperture, SPEC.v_cut)
        for h, (sel, r, v) in enumerate(expected):
            np.testing.assert_array_equal(m.index[m.offsets[h] : m.offsets[h + 1]], sel)
            np.testing.assert_allclose(m.v_los[m.offsets[h] : m.offsets[h + 1]], v, rtol=1e-5, atol=1e-2)
            np.testing.assert_allclose(m.r_proj[m.offsets[h] : m.offsets[h + 1]], r, rtol=1e-5, atol=1e-5)


def test_axis_directions_agree_with_general_search():
    host_x, host_v, gal_x, gal_v = _universe(seed=9, n_gal=8000)
    n_hat = np.array([0.0, 0.0, 1.0])
    a = search_axis(host_x[:, :2], redshift_space(host_x[:, 2], host_v[:, 2], H, BOX), gal_x[:, :2],
                    redshift_space(gal_x[:, 2], gal_v[:, 2], H, BOX), r_aperture=3.0, half_depth=D, hubble=H,
                    period_xy=(BOX, BOX), period_s=BOX)
    hs = np.mod(host_x + np.outer(host_v[:, 2] / H, n_hat), BOX)
    gs = np.mod(gal_x + np.outer(gal_v[:, 2] / H, n_hat), BOX)
    b = search_direction(hs, gs, n_hat, r_aperture=3.0, half_depth=D, hubble=H, box_size=BOX)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.index, b.index)


def test_cylinder_deeper_than_half_the_box_is_refused():
    small = Snapshot(100.0, 0.8951, MDPL2)
    with pytest.raises(ConfigError, match=r"deeper than half the 100 Mpc/h box"):
        CylinderSpec(v_cut=2500.0).check(small)
    CylinderSpec(v_cut=1000.0).check(small)
    with pytest.raises(ConfigError, match="r_aperture must be a positive length"):
        CylinderSpec(r_aperture=-1)
    with pytest.raises(ConfigError, match="axes"):
        LineOfSightSpec(axes=(0, 0))
