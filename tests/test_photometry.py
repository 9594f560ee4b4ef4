"""Optical photometry of the synthetic galaxies: g-r colours, Bell+03 mass-to-light ratios, r-band magnitudes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

import ingest.synth.box as box_module
from ingest.catalog import read_galaxies
from ingest.schema import GALAXIES
from ingest.synth.box import SynthConfig, generate_box
from ingest.synth.photometry import (
    GR_MAX,
    GR_MIN,
    MAG_R_SCATTER,
    absolute_magnitude_r,
    log_luminosity_r,
    log_mass_to_light_r,
    mean_gr_colour,
    sample_gr_colour,
    sample_photometry,
)
from ingest.synth.starformation import quenched_fraction, sample_star_formation, sample_star_formation_state
from ingest.synth.synthesize import synthesize
from pipeline.cosmology import MDPL2
from pipeline.errors import InputError

SMALL = SynthConfig(box_size=40.0, seed=1)


@pytest.fixture(scope="module")
def small_box():
    return generate_box(SMALL)


def test_mass_to_light_matches_bell03_by_hand():
    # Bell et al. 2003, Table 7, g-r / r band: a = -0.306, b = 1.097 (diet Salpeter); -0.1 dex to Chabrier
    for gr in (0.2, 0.5, 0.7, 0.95):
        assert log_mass_to_light_r(gr) == pytest.approx(-0.306 + 1.097 * gr - 0.1, abs=1e-12)
    assert log_luminosity_r(1e10, 0.7) == pytest.approx(10.0 - (-0.406 + 1.097 * 0.7), abs=1e-12)
    # redder galaxies have more mass per unit light
    assert np.all(np.diff(log_mass_to_light_r(np.linspace(0.1, 1.0, 10))) > 0)


def test_magnitude_from_stellar_mass_and_colour():
    expected = 4.65 - 2.5 * (10.0 - (-0.406 + 1.097 * 0.7))
    assert absolute_magnitude_r(1e10, 0.7) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(-19.445, abs=1e-3)
    # ten times the stellar mass at fixed colour: 2.5 mag brighter
    assert absolute_magnitude_r(1e11, 0.7) == pytest.approx(expected - 2.5, abs=1e-9)
    # at fixed mass, redder means fainter (higher M/L)
    assert absolute_magnitude_r(1e10, 0.8) > absolute_magnitude_r(1e10, 0.4)


def test_red_sequence_is_redder_than_blue_cloud_at_fixed_mass():
    log_sm = np.linspace(9.0, 12.0, 31)
    red = mean_gr_colour(log_sm, np.ones(31, bool))
    blue = mean_gr_colour(log_sm, np.zeros(31, bool))
    assert np.all(red > blue)
    assert mean_gr_colour(10.5, True) == pytest.approx(0.76)
    assert mean_gr_colour(10.0, False) == pytest.approx(0.50)
    # both get (mildly) redder with mass
    assert np.all(np.diff(red) > 0) and np.all(np.diff(blue) > 0)

    rng = np.random.default_rng(4)
    n = 20_000
    for m in (9.5, 10.5, 11.5):
        lsm = np.full(n, m)
        r = sample_gr_colour(rng, lsm, np.ones(n, bool))
        b = sample_gr_colour(rng, lsm, np.zeros(n, bool))
        assert np.median(r) > np.median(b) + 0.1, m
        assert np.std(r) == pytest.approx(0.03, rel=0.05) and np.std(b) < 0.08 * 1.05
        assert r.min() >= GR_MIN and b.min() >= GR_MIN and r.max() <= GR_MAX and b.max() <= GR_MAX


def test_photometric_scatter_and_draw_count():
    n = 50_000
    sm = 10 ** np.random.default_rng(0).uniform(9.0, 12.0, n)
    quenched = np.arange(n) % 2 == 0
    rng = np.random.default_rng(7)
    phot = sample_photometry(rng, sm, quenched)
    assert set(phot) == {"g_r", "mag_r"}
    resid = phot["mag_r"] - absolute_magnitude_r(sm, phot["g_r"])
    assert np.std(resid) == pytest.approx(MAG_R_SCATTER, rel=0.03)
    assert abs(np.mean(resid)) < 0.002
    # exactly 2n standard normals drawn
    ref = np.random.default_rng(7)
    ref.standard_normal(2 * n)
    assert rng.random() == ref.random()


def test_star_formation_state_is_the_quenching_draw():
    rng = np.random.default_rng(3)
    n = 20_000
    sm = 10 ** rng.uniform(9.0, 12.0, n)
    is_sat = rng.random(n) < 0.3
    host = 10 ** rng.uniform(12.0, 15.0, n)
    z = 0.117
    columns, quenched = sample_star_formation_state(np.random.default_rng(5), sm, is_sat, host, MDPL2, z)
    # the same draws sample_star_formation makes: ra, then the quenching uniforms
    again = np.random.default_rng(5)
    again.standard_normal(n)
    drawn = again.random(n) < quenched_fraction(np.log10(sm), is_sat, host)
    assert np.array_equal(quenched, drawn)
    assert 0.2 < drawn.mean() < 0.8
    plain = sample_star_formation(np.random.default_rng(5), sm, is_sat, host, MDPL2, z)
    assert all(np.array_equal(plain[k], columns[k]) for k in plain)


def test_generated_box_has_photometry_consistent_with_stellar_mass(small_box):
    g = small_box.galaxies
    assert len(g["galaxy_id"]) > 500
    for col in ("mag_r", "g_r"):
        assert g[col].dtype == GALAXIES[col].numpy_dtype == np.float32
        assert np.all(np.isfinite(g[col])), col
    assert np.all((g["g_r"] >= GR_MIN) & (g["g_r"] <= GR_MAX))
    assert -26.0 < g["mag_r"].min() and g["mag_r"].max() < -14.0
    rho = spearmanr(-g["mag_r"].astype(np.float64), np.log10(g["obs_sm"].astype(np.float64))).statistic
    assert rho > 0.9
    # quenched (low specific SFR) galaxies are redder than star-forming ones
    ssfr = np.log10(g["sfr"].astype(np.float64) / g["sm"])
    passive = ssfr < -11.0
    assert 0.05 < passive.mean() < 0.95
    assert np.median(g["g_r"][passive]) > np.median(g["g_r"][~passive]) + 0.1


def test_photometry_is_drawn_after_everything_else(monkeypatch, small_box):
    """Replacing the photometry by one that draws nothing leaves every other column of the box unchanged."""

    def no_draws(rng, sm, quenched):
        return {"g_r": np.full(len(sm), np.nan), "mag_r": np.full(len(sm), np.nan)}

    monkeypatch.setattr(box_module, "sample_photometry", no_draws)
    other = generate_box(SMALL)
    for col in small_box.halos:
        assert np.array_equal(other.halos[col], small_box.halos[col]), col
    for col in small_box.galaxies:
        if col not in ("mag_r", "g_r"):
            assert np.array_equal(other.galaxies[col], small_box.galaxies[col]), col


def test_hdf5_keeps_photometry_and_native_format_goes_without(tmp_path, small_box):
    expected = small_box.galaxies
    h5 = synthesize(tmp_path / "h5", SMALL, fmt="hdf5")
    cat = read_galaxies(h5.galaxies)
    assert cat.units["mag_r"] == "mag" and cat.units["g_r"] == "mag"
    frame = cat.frame.compute()
    for col in ("mag_r", "g_r", "obs_sm"):
        np.testing.assert_array_equal(frame[col].to_numpy(), expected[col], err_msg=col)

    native = synthesize(tmp_path / "native", SMALL, fmt="native")
    assert native.galaxies.suffix == ".bin"
    assert native.galaxies.stat().st_size == 128 * len(expected["galaxy_id"])
    cat = read_galaxies(native.galaxies)
    frame = cat.frame.compute()
    assert "mag_r" not in frame.columns and "g_r" not in frame.columns
    for col in ("galaxy_id", "obs_sm", "sfr", "obs_uv"):
        np.testing.assert_array_equal(frame[col].to_numpy(), expected[col], err_msg=col)
    with pytest.raises(InputError, match="mag_r"):
        read_galaxies(native.galaxies, columns=["mag_r"])
