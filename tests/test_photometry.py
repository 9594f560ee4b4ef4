"""Optical photometry of the synthetic galaxies: g-r colours, Bell+03 mass-to-light ratios, r-band magnitudes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats
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
from ingest.synth.starformation import quenched_fraction, sample_star_formation_state
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


def _galaxies(seed: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stellar mass [Msun], is satellite, host mass [Msun/h]) of ``n`` galaxies spread over the ranges that matter."""
    rng = np.random.default_rng(seed)
    return 10 ** rng.uniform(9.0, 12.0, n), rng.random(n) < 0.3, 10 ** rng.uniform(12.0, 15.0, n)


def test_star_formation_state_is_the_quenching_draw():
    n = 20_000
    sm, is_sat, host = _galaxies(3, n)
    z = 0.117
    _, quenched = sample_star_formation_state(np.random.default_rng(5), sm, is_sat, host, MDPL2, z)
    # the draws it makes first: ra, then the quenching uniforms
    again = np.random.default_rng(5)
    again.standard_normal(n)
    drawn = again.random(n) < quenched_fraction(np.log10(sm), is_sat, host)
    assert np.array_equal(quenched, drawn)
    assert 0.2 < drawn.mean() < 0.8
    # the fraction itself, by hand: Phi((log m* - 10.5) / 0.4) for centrals; satellites of a 10^12.5 host are in
    # addition quenched with probability 0.5 Phi(0) = 0.25
    np.testing.assert_allclose(quenched_fraction(np.array([10.5, 10.9, 10.5]), np.array([False, False, True]),
                                                 np.array([1e14, 1e14, 10**12.5])),
                               [0.5, 0.841344746, 1.0 - 0.5 * 0.75], rtol=1e-8)


def test_star_formation_follows_the_published_recipes():
    """Speagle+14 main sequence, the quenched offset, ``ra`` as the SFR scatter, Kennicutt's UV conversion, dust.

    Every constant here is typed from the papers (or derived by hand), not read from the module.
    """
    n = 40_000
    sm, is_sat, host = _galaxies(8, n)
    z = 0.117
    sf, quenched = sample_star_formation_state(np.random.default_rng(6), sm, is_sat, host, MDPL2, z)
    assert 0.2 < quenched.mean() < 0.8  # both populations well sampled
    # the age of MDPL2's flat Lambda-CDM universe at z, by quadrature: t = int_z^inf dz / ((1 + z) H(z))
    h, om = 0.6777, 0.307115
    hubble_time_gyr = 977.792221680789 / (100.0 * h)  # 1 / H0 in Gyr
    age = hubble_time_gyr * integrate.quad(lambda x: 1.0 / ((1 + x) * np.sqrt(om * (1 + x) ** 3 + 1 - om)),
                                           z, np.inf)[0]
    log_sm = np.log10(sm)
    main_sequence = (0.84 - 0.026 * age) * log_sm - (6.51 - 0.11 * age)  # Speagle+14, eq. 28
    log_sfr = np.log10(sf["sfr"])
    # star-forming: 0.3 dex about the main sequence; quenched: 1.5 dex below it with 0.4 dex; ra is that scatter
    np.testing.assert_allclose((log_sfr - main_sequence)[~quenched] / 0.3, sf["ra"][~quenched], atol=1e-9)
    np.testing.assert_allclose((log_sfr - main_sequence + 1.5)[quenched] / 0.4, sf["ra"][quenched], atol=1e-9)
    assert abs(np.mean(sf["ra"])) < 0.02 and np.std(sf["ra"]) == pytest.approx(1.0, abs=0.02)
    np.testing.assert_allclose(sf["rarank"], stats.norm.cdf(sf["ra"]), rtol=1e-12)
    # observed SFR: 0.1 dex log-normal scatter about the true one
    scatter = np.log10(sf["obs_sfr"] / sf["sfr"])
    assert abs(np.mean(scatter)) < 0.002 and np.std(scatter) == pytest.approx(0.1, rel=0.02)
    # UV magnitude: Kennicutt 1998, SFR = 1.4e-28 L_nu [erg/s/Hz]; AB magnitudes at 10 pc, M = -2.5 log10 f_nu - 48.60
    ten_pc_cm = 10.0 * 3.0856775814913673e18
    m_uv = -2.5 * np.log10(sf["obs_sfr"] / 1.4e-28 / (4.0 * np.pi * ten_pc_cm**2)) - 48.60
    np.testing.assert_allclose(sf["obs_uv"] - sf["a_uv"], m_uv, atol=1e-3)
    # dust: A_UV = 1 + 0.7 (log m* - 10) + N(0, 0.3) for star-forming galaxies, 0.2 + N(0, 0.1) for quenched ones,
    # clipped to [0, 4.5]
    assert np.all((sf["a_uv"] >= 0.0) & (sf["a_uv"] <= 4.5))
    unclipped = ~quenched & (log_sm > 10.0)  # mean A_UV >= 1: the clip at 0 is more than 3 sigma away
    dust = (sf["a_uv"] - 1.0 - 0.7 * (log_sm - 10.0))[unclipped]
    assert abs(np.mean(dust)) < 0.012 and np.std(dust) == pytest.approx(0.3, rel=0.03)
    assert np.median(sf["a_uv"][quenched]) == pytest.approx(0.2, abs=0.005)
    assert np.std(sf["a_uv"][quenched]) == pytest.approx(0.1, rel=0.05)
    # rank1, rank2: independent standard normals
    for key in ("rank1", "rank2"):
        assert abs(np.mean(sf[key])) < 0.02 and np.std(sf[key]) == pytest.approx(1.0, abs=0.02), key
        assert abs(np.corrcoef(sf[key], sf["ra"])[0, 1]) < 0.02, key


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
