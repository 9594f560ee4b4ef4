"""Physics of the synthetic MultiDark-style box (ingest/synth), checked against independent computations.

Small boxes keep the file fast; every check compares with a quantity computed here from the published
relations (colossus for the mass function), so a unit slip (Msun vs Msun/h, kpc vs Mpc, physical vs
comoving) or a wrong formula makes it fail.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats
from scipy.optimize import brentq
from scipy.spatial import cKDTree
from scipy.special import digamma

from ingest.schema import GALAXIES, HALOS
from ingest.synth.box import (
    SynthConfig,
    cell_count,
    generate_box,
    generate_box_with_hosts,
    generate_cell,
    generate_cells,
)
from ingest.synth.galaxy_physics import rms
from ingest.synth.geometry import wrap_positions
from ingest.synth.hod import ZHENG07_MR20, ZHENG07_MR21, Zheng07HOD
from ingest.synth.massfunction import MassFunctionTable
from ingest.synth.nfw import radius_quantile
from pipeline.cosmology import G_MPC_KMS2_MSUN, MDPL2, colossus_cosmology
from pipeline.errors import ConfigError

A = 0.8951
Z = 1.0 / A - 1.0
RHO_C = MDPL2.critical_density(Z)  # (Msun/h) / (Mpc/h)^3, physical
#: A HOD with many satellites per host (dispersions and occupations measured precisely) whose central
#: occupation still modulates the satellites over the mass range of the test box.
RICH_HOD = Zheng07HOD(13.0, 0.3, 11.5, 12.5, 1.0, name="test_rich")


def nfw_mu(x):
    return np.log1p(x) - x / (1.0 + x)


def r_delta(m, delta):
    """Comoving radius (Mpc/h) of mass m (Msun/h) at Delta x critical, computed independently."""
    return (3.0 * m / (4.0 * math.pi * delta * RHO_C)) ** (1.0 / 3.0) * (1.0 + Z)


def delta_vir():
    om = MDPL2.Om0 * (1 + Z) ** 3 / (MDPL2.Om0 * (1 + Z) ** 3 + 1 - MDPL2.Om0)
    x = om - 1.0
    return 18 * math.pi**2 + 82 * x - 39 * x * x


@pytest.fixture(scope="module")
def rich_with_hosts():
    """200 Mpc/h, distinct haloes above 10^12.5 Msun/h, every galaxy kept (no stellar-mass cut); the per-host galaxy
    physics drawn from its default ranges, except the satellite abundance (fixed, so the HOD is exact)."""
    config = SynthConfig(box_size=200.0, seed=7, log10_mmin=12.5, hod=RICH_HOD, min_log10_mstar=None,
                         cells_per_side=2, satellite_abundance=1.0)
    box, hosts = generate_box_with_hosts(config)
    return config, box, hosts


@pytest.fixture(scope="module")
def rich(rich_with_hosts):
    config, box, _ = rich_with_hosts
    return config, box


def _host_rows(hosts, host_ids):
    """Rows of the per-host table (ingest.synth.galaxy_physics.HOST_PHYSICS) of the given host halo ids."""
    order = np.argsort(hosts["halo_id"])
    rows = order[np.searchsorted(hosts["halo_id"], host_ids, sorter=order)]
    assert np.array_equal(hosts["halo_id"][rows], host_ids)
    return rows


@pytest.fixture(scope="module")
def default_small():
    """The default physics (haloes from 10^11 Msun/h, obs_sm >= 10^9.5 Msun) in a 60 Mpc/h box, 8 cells."""
    config = SynthConfig(box_size=60.0, seed=3, cells_per_side=2)
    return config, generate_box(config)


def _hosts_and_satellites(halos, galaxies):
    """Distinct-halo rows, and for each satellite galaxy the row of its host among them."""
    distinct = np.flatnonzero(halos["upid"] == -1)
    order = np.argsort(halos["halo_id"][distinct])
    ids = halos["halo_id"][distinct][order]
    sat = np.flatnonzero(galaxies["upid"] != -1)
    host_row = distinct[order[np.searchsorted(ids, galaxies["upid"][sat])]]
    assert np.array_equal(halos["halo_id"][host_row], galaxies["upid"][sat])
    return distinct, sat, host_row


# ---- (a) mass function --------------------------------------------------------------------------------


def test_halo_counts_follow_tinker08(rich):
    config, (halos, _) = rich
    m = halos["m200c"][halos["upid"] == -1].astype(np.float64)
    edges = np.array([12.5, 12.75, 13.0, 13.25, 13.5, 13.75, 14.0, 14.25, 14.5, 14.75, 16.0])
    observed, _ = np.histogram(np.log10(m), edges)
    volume = config.box_size**3
    from colossus.lss import mass_function

    with colossus_cosmology(MDPL2):
        def dn_dlog10m(logm):
            return math.log(10) * float(
                mass_function.massFunction(10**logm, Z, mdef="200c", model="tinker08", q_out="dndlnM")
            )

        expected = np.array([volume * integrate.quad(dn_dlog10m, lo, hi, epsrel=1e-6)[0]
                             for lo, hi in itertools.pairwise(edges)])
    assert np.all(np.abs(observed - expected) < 3.5 * np.sqrt(expected) + 1), (observed, expected)
    chi2 = float(np.sum((observed - expected) ** 2 / expected))
    assert stats.chi2.sf(chi2, len(expected)) > 1e-3, (chi2, observed, expected)


def test_mass_function_table_matches_colossus_integral():
    table = MassFunctionTable.build(MDPL2, Z, 11.0, 16.0)
    from colossus.lss import mass_function

    with colossus_cosmology(MDPL2):
        def dn(lnm):
            return float(mass_function.massFunction(math.exp(lnm), Z, mdef="200c", model="tinker08",
                                                    q_out="dndlnM"))

        for lo, hi in [(1e11, 1e12), (1e13, 1e14), (1e14, 1e15)]:
            truth = integrate.quad(dn, math.log(lo), math.log(hi), epsrel=1e-8)[0]
            assert table.expected_number(1.0, lo, hi) == pytest.approx(truth, rel=1e-4)
    # sampling: the Poisson total and the inverse CDF reproduce n(>M)
    rng = np.random.default_rng(0)
    masses = table.sample(rng, 1.0e7)
    assert abs(len(masses) - 1e7 * table.n_total) < 4 * math.sqrt(1e7 * table.n_total)
    frac = np.mean(masses > 1e13)
    assert frac == pytest.approx(table.cumulative(1e13) / table.n_total, rel=0.02)


# ---- (b) NFW radial profile -----------------------------------------------------------------------------


def test_satellite_radii_follow_host_nfw_profile(rich_with_hosts):
    _, (halos, galaxies), hosts = rich_with_hosts
    _, sat, host = _hosts_and_satellites(halos, galaxies)
    # satellites fill an NFW profile out to Rvir (the radius UniverseMachine counts members in) whose concentration
    # is the host's times the satellite concentration ratio recorded for that host
    ratio = hosts["satellite_concentration"][_host_rows(hosts, galaxies["upid"][sat])].astype(np.float64)
    assert ratio.min() < 0.6 and ratio.max() > 1.4  # drawn per host from the default range (0.5, 1.5)
    rvir = r_delta(halos["mvir"][host].astype(np.float64), delta_vir())
    c = ratio * rvir / halos["rs"][host]
    x = galaxies["uparent_dist"][sat] / rvir
    assert np.all((x > 0) & (x <= 1.0 + 1e-4))
    # each radius mapped through its own host's NFW CDF must be uniform on [0, 1]
    u = nfw_mu(c * x) / nfw_mu(c)
    assert len(u) > 5000
    assert stats.kstest(u, "uniform").pvalue > 0.01
    # ... and it is not uniform in radius (the test can tell NFW from a flat profile), nor the dark matter's profile
    assert stats.kstest(x, "uniform").pvalue < 1e-6
    c_dm = rvir / halos["rs"][host]
    u_dm = nfw_mu(c_dm * x) / nfw_mu(c_dm)
    for sel in (ratio < 0.7, ratio > 1.3):  # less / more concentrated than the dark matter, host by host
        assert stats.kstest(u_dm[sel], "uniform").pvalue < 1e-6
        assert stats.kstest(u[sel], "uniform").pvalue > 0.001
    assert np.mean(u_dm[ratio < 0.7]) > 0.5 > np.mean(u_dm[ratio > 1.3])
    # uparent_dist is the periodic distance between the galaxy and its host
    box = 200.0
    d = np.column_stack([galaxies[k][sat] - halos[k][host] for k in ("x", "y", "z")]).astype(np.float64)
    d -= box * np.round(d / box)
    assert np.allclose(np.sqrt((d**2).sum(1)), galaxies["uparent_dist"][sat], atol=2e-4)


def test_concentrations_follow_duffy08(rich):
    _, (halos, _) = rich
    d = halos["upid"] == -1
    m = halos["m200c"][d].astype(np.float64)
    c = r_delta(m, 200.0) / halos["rs"][d]
    resid = np.log10(c / (5.71 * (m / 2e12) ** -0.084 * (1 + Z) ** -0.47))
    assert abs(np.mean(resid)) < 0.006
    assert np.std(resid) == pytest.approx(0.15, abs=0.01)


def test_radius_quantile_inverts_nfw_cdf_at_fixed_concentration():
    rng = np.random.default_rng(1)
    for c in (2.0, 7.0, 25.0):
        x = radius_quantile(rng.random(20000), c)
        def cdf(r, c=c):
            return nfw_mu(c * np.clip(r, 0, 1)) / nfw_mu(c)

        assert stats.kstest(x, cdf).pvalue > 0.01
        half = brentq(lambda r, c=c: nfw_mu(c * r) / nfw_mu(c) - 0.5, 1e-6, 1.0)
        assert np.median(x) == pytest.approx(half, rel=0.03)


# ---- (c) velocity dispersion ------------------------------------------------------------------------------


def test_satellite_dispersion_follows_biased_evrard08(rich_with_hosts):
    _, (halos, galaxies), hosts = rich_with_hosts
    _, sat, host = _hosts_and_satellites(halos, galaxies)
    dv2 = sum((galaxies[f"v{k}"][sat].astype(np.float64) - halos[f"v{k}"][host]) ** 2 for k in "xyz")
    rows, inverse, n_sat = np.unique(host, return_inverse=True, return_counts=True)
    s2 = np.bincount(inverse, dv2) / (3.0 * n_sat)
    ok = n_sat >= 10
    assert ok.sum() > 200
    k = 3.0 * n_sat[ok]
    # E[ln s] for s^2 ~ sigma^2 chi2_k / k
    ln_s = 0.5 * np.log(s2[ok]) - 0.5 * (digamma(k / 2) - np.log(k / 2))
    ln_m = np.log(halos["m200c"][rows[ok]].astype(np.float64))
    slope, _ = np.polyfit(ln_m, ln_s, 1)
    assert slope == pytest.approx(0.3361, abs=0.03)
    # normalisation: the host's b_v x Evrard+08 x its merger boost (both recorded per host), in Msun/h via
    # h(z) M[Msun] = E(z) M[Msun/h]
    ez = math.sqrt(MDPL2.Om0 * (1 + Z) ** 3 + 1 - MDPL2.Om0)
    rec = _host_rows(hosts, halos["halo_id"][rows[ok]])
    b_v = hosts["velocity_bias"][rec].astype(np.float64)
    boost = hosts["merger_boost_dex"][rec].astype(np.float64)
    model = np.log(b_v * 1082.9 * (ez * np.exp(ln_m) / 1e15) ** 0.3361) + math.log(10) * boost
    assert np.mean(ln_s - model) == pytest.approx(0.0, abs=0.01)
    # the per-host b_v is what the satellites move with: residuals do not correlate with it (slope -1 if they did)
    assert abs(np.polyfit(np.log(b_v), ln_s - model, 1)[0]) < 0.4
    assert np.ptp(b_v) > 0.15 and np.mean(boost > 0) == pytest.approx(0.1, abs=0.05)
    # vrms of the distinct haloes is sqrt(3) x their own 1-D dispersion (about Evrard's)
    d = halos["upid"] == -1
    m = halos["m200c"][d].astype(np.float64)
    ratio = halos["vrms"][d] / (math.sqrt(3) * 1082.9 * (ez * m / 1e15) ** 0.3361)
    assert np.median(np.log(ratio)) == pytest.approx(0.0, abs=0.01)


# ---- (d) occupation ---------------------------------------------------------------------------------------


def test_satellite_occupation_follows_hod(rich):
    config, (halos, galaxies) = rich
    distinct, sat, host = _hosts_and_satellites(halos, galaxies)
    m = halos["m200c"][distinct].astype(np.float64)
    counts = np.zeros(len(halos["m200c"]), dtype=np.int64)
    np.add.at(counts, host, 1)
    counts = counts[distinct]
    expected = config.hod.mean_nsat(m)
    # independent HOD formula
    logm = np.log10(m)
    ncen = 0.5 * (1 + np.vectorize(math.erf)((logm - 13.0) / 0.3))
    assert np.allclose(expected, ncen * np.clip((m - 10**11.5) / 10**12.5, 0, None) ** 1.0)
    edges = np.arange(12.5, 15.01, 0.25)
    idx = np.digitize(logm, edges)
    chi2, dof = 0.0, 0
    for b in range(1, len(edges)):
        sel = idx == b
        e = expected[sel].sum()
        if e < 20:
            continue
        o = counts[sel].sum()
        assert abs(o - e) < 4 * math.sqrt(e), (edges[b - 1], o, e)
        chi2 += (o - e) ** 2 / e
        dof += 1
    assert dof >= 6
    assert stats.chi2.sf(chi2, dof) > 1e-3
    # every distinct halo hosts exactly one central, carrying its id; subhaloes host satellites only
    cen = galaxies["upid"] == -1
    assert np.array_equal(np.sort(galaxies["galaxy_id"][cen]), np.sort(halos["halo_id"][distinct]))
    assert len(sat) == int((halos["upid"] != -1).sum())


def test_hod_presets_and_formulae():
    assert (ZHENG07_MR20.log_mmin, ZHENG07_MR20.sigma_logm, ZHENG07_MR20.log_m0, ZHENG07_MR20.log_m1,
            ZHENG07_MR20.alpha) == (12.02, 0.26, 11.38, 13.31, 1.06)
    assert (ZHENG07_MR21.log_mmin, ZHENG07_MR21.sigma_logm, ZHENG07_MR21.log_m0, ZHENG07_MR21.log_m1,
            ZHENG07_MR21.alpha) == (12.79, 0.39, 11.92, 13.94, 1.15)
    assert ZHENG07_MR20.mean_ncen(10**12.02) == pytest.approx(0.5)
    assert ZHENG07_MR20.mean_nsat(10**11.38) == 0.0
    m = 1e15
    assert ZHENG07_MR20.mean_nsat(m) == pytest.approx(
        ZHENG07_MR20.mean_ncen(m) * ((m - 10**11.38) / 10**13.31) ** 1.06)


def test_default_smhm_is_moster13_within_its_published_errors():
    from ingest.synth.smhm import MOSTER13, MOSTER13_SHAM

    errors = {"m10": 0.236, "n10": 0.0058, "beta10": 0.153, "gamma10": 0.059}  # Moster+13 Table 1
    assert MOSTER13.m10 == 11.590 and MOSTER13.n10 == 0.0351 and MOSTER13.beta10 == 1.376
    for key, err in errors.items():
        assert abs(getattr(MOSTER13_SHAM, key) - getattr(MOSTER13, key)) <= 1.2 * err, key
    for key in ("m11", "n11", "beta11", "gamma11"):  # the redshift evolution is the published one
        assert getattr(MOSTER13_SHAM, key) == getattr(MOSTER13, key)


def test_central_stellar_mass_follows_moster13():
    config = SynthConfig(box_size=80.0, seed=2, min_log10_mstar=None, cells_per_side=1)
    halos, galaxies = generate_box(config)
    cen = np.flatnonzero(galaxies["upid"] == -1)
    order = np.argsort(halos["halo_id"])
    row = order[np.searchsorted(halos["halo_id"][order], galaxies["galaxy_id"][cen])]
    m_h = halos["m200c"][row].astype(np.float64)
    m_msun = m_h / MDPL2.h  # Moster+13 masses are without h
    s = Z / (1 + Z)  # the published redshift evolution, around the box's z = 0 parameters
    p = config.smhm
    m1 = 10 ** (p.m10 + 1.195 * s)
    n, beta, gamma = p.n10 - 0.0247 * s, p.beta10 - 0.826 * s, p.gamma10 + 0.329 * s
    moster = m_msun * 2 * n / ((m_msun / m1) ** -beta + (m_msun / m1) ** gamma)
    resid = np.log10(galaxies["sm"][cen] / moster)
    for lo, hi in ((11.0, 11.3), (11.3, 12.0), (12.0, 13.0), (13.0, 15.0)):
        sel = (np.log10(m_h) >= lo) & (np.log10(m_h) < hi)
        assert sel.sum() > 100
        assert abs(np.median(resid[sel])) < 4 * 0.15 / math.sqrt(sel.sum()) + 0.005, (lo, hi)
    # a mixture of lognormals, the scatter drawn per host: sqrt(E[scatter^2]) in all
    assert np.std(resid) == pytest.approx(rms(config.smhm_scatter_dex), abs=0.01)
    obs = np.log10(galaxies["obs_sm"] / galaxies["sm"])
    assert abs(np.mean(obs)) < 0.005
    assert np.std(obs) == pytest.approx(config.obs_sm_scatter_dex, abs=0.005)


# ---- (e) determinism ---------------------------------------------------------------------------------------


def test_same_seed_same_box_other_seed_other_box():
    config = SynthConfig(box_size=100.0, seed=11, log10_mmin=12.0, cells_per_side=2)
    a, b = generate_box(config), generate_box(config)
    for table_a, table_b in zip(a, b, strict=True):
        assert table_a.keys() == table_b.keys()
        for key in table_a:
            assert np.array_equal(table_a[key], table_b[key]), key
    # a cell does not depend on the others nor on the order of generation
    cells = list(generate_cells(config))
    assert len(cells) == cell_count(config) == 8
    lone = generate_cell(config, 5)
    for key in HALOS.names:
        assert np.array_equal(lone.halos[key], cells[5].halos[key])
    other = generate_box(SynthConfig(box_size=100.0, seed=12, log10_mmin=12.0, cells_per_side=2))
    assert len(other.halos["m200c"]) != len(a.halos["m200c"]) or not np.array_equal(
        other.halos["m200c"], a.halos["m200c"])
    assert not np.array_equal(other.halos["x"][:100], a.halos["x"][:100])


# ---- (f) ids, links, dtypes, positions ------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rich", "default_small"])
def test_ids_links_dtypes_and_positions(which, request):
    config, (halos, galaxies) = request.getfixturevalue(which)
    assert list(halos) == HALOS.names and list(galaxies) == GALAXIES.names
    for schema, table in ((HALOS, halos), (GALAXIES, galaxies)):
        for col in schema.columns:
            assert table[col.name].dtype == col.numpy_dtype, col.name
        n = {len(v) for v in table.values()}
        assert len(n) == 1
    ids = halos["halo_id"]
    assert np.all(ids > 0) and len(np.unique(ids)) == len(ids)
    assert np.array_equal(halos["pid"], halos["upid"])
    distinct = halos["upid"] == -1
    assert np.all(np.isin(halos["upid"][~distinct], ids[distinct]))
    assert np.all(halos["desc_id"] == -1)
    # galaxies live in haloes; satellites point at their host, centrals at nothing
    assert len(np.unique(galaxies["galaxy_id"])) == len(galaxies["galaxy_id"])
    assert np.all(np.isin(galaxies["galaxy_id"], ids))
    gal_sat = galaxies["upid"] != -1
    assert np.all(np.isin(galaxies["upid"][gal_sat], ids[distinct]))
    assert np.all(galaxies["uparent_dist"][~gal_sat] == 0)
    assert np.all(galaxies["flags"] & 16 == 0)
    for table in (halos, galaxies):
        for k in "xyz":
            assert np.all((table[k] >= 0) & (table[k].astype(np.float64) < config.box_size)), k
        for k in table:
            if table[k].dtype.kind == "f":
                assert np.all(np.isfinite(table[k])), k
    assert np.all(halos["mpeak"] >= halos["mvir"])
    assert np.all(galaxies["mp"] >= galaxies["m"])
    assert np.allclose(galaxies["lvmp"], np.log10(galaxies["vmp"]), atol=1e-5)
    for k in ("mvir", "m200c", "m200b", "m500c", "mpeak", "rvir", "rs", "vmax", "sm", "obs_sm"):
        table = halos if k in halos else galaxies
        assert np.all(table[k] > 0), k
    sub = ~distinct
    host_mass = dict(zip(ids[distinct].tolist(), halos["m200c"][distinct].tolist(), strict=True))
    hm = np.array([host_mass[i] for i in halos["upid"][sub].tolist()])
    assert np.all(halos["m200c"][sub] <= hm * (1 + 1e-5))  # a subhalo is lighter than its host
    if which == "rich":  # no stellar-mass cut: one galaxy per halo
        assert config.min_log10_mstar is None and len(galaxies["obs_sm"]) == len(ids)
    else:  # the default cut, obs_sm >= 10^9.5 Msun, removes galaxies
        assert config.min_log10_mstar == 9.5
        assert np.all(galaxies["obs_sm"] >= np.float32(10**9.5)) and len(galaxies["obs_sm"]) < len(ids)


def test_wrap_positions_never_returns_the_box_size():
    p = np.array([-1e-9, -1e-12, 1000.0, 999.99999999, 2000.0 - 1e-10, 3.5])
    w = wrap_positions(p, 1000.0)
    assert w.dtype == np.float32
    assert np.all((w >= 0) & (w.astype(np.float64) < 1000.0))
    assert w[-1] == np.float32(3.5)


def test_stellar_mass_cut_selects_centrals_by_halo_mass(default_small):
    _, (halos, galaxies) = default_small
    distinct = halos["upid"] == -1
    has_central = np.isin(halos["halo_id"][distinct], galaxies["galaxy_id"][galaxies["upid"] == -1])
    logm = np.log10(halos["m200c"][distinct])
    low, high = has_central[logm < 11.1].mean(), has_central[(logm > 11.6) & (logm < 12.0)].mean()
    assert low < 0.6 and high > 0.98


# ---- (g) units -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["rich", "default_small"])
def test_radii_are_comoving_mpc_h_and_consistent_with_masses(which, request):
    _, (halos, _) = request.getfixturevalue(which)
    mvir = halos["mvir"].astype(np.float64)
    # rvir from mvir with the Bryan & Norman overdensity, comoving Mpc/h (a kpc/h or physical slip fails)
    assert np.allclose(halos["rvir"], r_delta(mvir, delta_vir()), rtol=1e-5)
    d = halos["upid"] == -1
    m200c, m200b, m500c = (halos[k][d].astype(np.float64) for k in ("m200c", "m200b", "m500c"))
    # Delta_500c > Delta_200c > Delta_vir (~112 x critical) > Delta_200b (~76 x critical) at z = 0.117
    assert np.all((m500c < m200c) & (m200c < mvir[d]) & (mvir[d] < m200b))
    # NFW conversions against a direct root-find, for a few haloes
    c = r_delta(m200c, 200.0) / halos["rs"][d]
    for i in np.random.default_rng(0).choice(d.sum(), 20, replace=False):
        for delta, mass in ((500.0, m500c[i]), (delta_vir(), mvir[d][i]),
                            (200.0 * MDPL2.omega_m(Z), m200b[i])):
            x = brentq(lambda x, i=i, delta=delta: 200 * nfw_mu(c[i] * x) / nfw_mu(c[i]) / x**3 - delta,
                       0.05, 20.0)
            assert mass / m200c[i] == pytest.approx(nfw_mu(c[i] * x) / nfw_mu(c[i]), rel=1e-3)
    # vmax of distinct haloes: NFW peak of the circular velocity, V200 from G M / R (physical radius)
    r200_phys = r_delta(m200c, 200.0) / (1 + Z)
    v200 = np.sqrt(G_MPC_KMS2_MSUN * m200c / r200_phys)
    vmax = v200 * np.sqrt(0.2162165 * c / nfw_mu(c))
    assert np.allclose(halos["vmax"][d], vmax, rtol=1e-3)
    # Milky-Way-like haloes (both boxes hold hundreds within 0.05 dex of 10^12 Msun/h): rvir 0.204-0.221 comoving
    # Mpc/h (0.212 at 10^12, by hand from Delta_vir = 112 x critical at z = 0.117), not 212 (kpc/h) or 0.19 (physical)
    near = np.abs(np.log10(mvir) - 12.0) < 0.05
    assert near.sum() >= 20
    assert np.all((halos["rvir"][near] > 0.203) & (halos["rvir"][near] < 0.222)), halos["rvir"][near]


# ---- clustering: the infall regions --------------------------------------------------------------------


def test_infall_relocation_moves_small_haloes_next_to_clusters():
    base = dict(box_size=150.0, seed=5, log10_mmin=11.5, min_log10_mstar=None, cells_per_side=1,
                hod=ZHENG07_MR21)
    results = {}
    for frac in (0.0, 0.3):
        halos, _ = generate_box(SynthConfig(infall_fraction=frac, **base))
        d = halos["upid"] == -1
        m = halos["m200c"][d].astype(np.float64)
        pos = np.column_stack([halos[k][d] for k in "xyz"]).astype(np.float64)
        vel = np.column_stack([halos[f"v{k}"][d] for k in "xyz"]).astype(np.float64)
        results[frac] = (m, pos, vel)
    # relocation moves haloes, it does not change the mass function
    assert np.array_equal(results[0.0][0], results[0.3][0])
    counts, vr = {}, {}
    for frac, (m, pos, vel) in results.items():
        tree = cKDTree(pos, boxsize=150.0)
        big = np.flatnonzero(m >= 10**13.5)
        small = m < 10**12.5
        r200 = r_delta(m[big], 200.0)
        n_in, v_in = 0, []
        for h, r in zip(big, r200, strict=True):
            near = np.array(tree.query_ball_point(pos[h], 5 * r), dtype=np.int64)
            sep = pos[near] - pos[h]
            sep -= 150.0 * np.round(sep / 150.0)
            dist = np.sqrt((sep**2).sum(1))
            sel = small[near] & (dist > r)
            n_in += sel.sum()
            v_in.append(((vel[near[sel]] - vel[h]) * sep[sel]).sum(1) / dist[sel])
        counts[frac] = n_in
        vr[frac] = np.concatenate(v_in)
    assert counts[0.3] > 2 * counts[0.0]
    # infalling: mean radial peculiar velocity towards the host, none without relocation
    assert np.mean(vr[0.3]) < -100.0
    assert abs(np.mean(vr[0.0])) < 5 * np.std(vr[0.0]) / math.sqrt(len(vr[0.0]))


# ---- configuration --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [dict(box_size=-1.0), dict(box_size=float("nan")), dict(seed=-1), dict(seed=1.5), dict(scale_factor=1.5),
     dict(log10_mmin=14.0, log10_mmax=13.0), dict(velocity_bias=0.0), dict(merger_fraction=2.0),
     dict(infall_fraction=1.0), dict(cells_per_side=0), dict(min_log10_mstar=float("inf")),
     dict(hod="zheng07_mr20")],
)
def test_bad_configuration_raises_config_error(bad):
    args = {"box_size": 100.0, **bad}
    with pytest.raises(ConfigError):
        SynthConfig(**args)


def test_config_round_trip_and_snapshot():
    config = SynthConfig(box_size=250, seed=4, hod=ZHENG07_MR21, min_log10_mstar=None)
    assert SynthConfig.from_dict(config.to_dict()) == config
    snap = config.snapshot
    assert snap.box_size == 250.0 and snap.scale_factor == A and snap.cosmology == MDPL2
    assert SynthConfig.from_dict({"box_size": 250, "seed": 4, "hod": "zheng07_mr21",
                                  "min_log10_mstar": None}) == config
    with pytest.raises(ConfigError):
        SynthConfig.from_dict({"box_size": 1.0, "bogus": 1})
    # the automatic cell count keeps cells near 1e6 haloes: an MDPL2-sized box is cut in 4^3
    assert cell_count(SynthConfig(box_size=1000.0)) == 64
    assert cell_count(SynthConfig(box_size=250.0)) == 1
