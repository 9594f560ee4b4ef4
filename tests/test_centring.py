"""Centring errors of mock observations (issue 19.5): the published distributions, members measured from the
displaced centre, ``none`` as before, determinism, the configuration, and ``validate --centring``."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from conftest import fake_table
from scipy import stats
from test_observe import LOS, _brute

from clustermass.cli import main
from features.centring import (
    LAUER14_VELOCITY_SCALE,
    ZHANG19_CENTRED_FRACTION,
    ZHANG19_TAU,
    CentringSpec,
    centre_offsets,
    hash_uniforms,
    r_lambda,
    richness,
)
from features.config import ObserveSection
from features.cylinder import CylinderSpec, LineOfSightSpec, ObservationSpec
from features.io import load_plan, read_observations, save_plan, write_observations
from features.observe import make_observations, plan_observations, remove_buckets
from ingest.catalog import read_galaxies, read_halos
from ingest.schema import GALAXIES, HALOS
from ingest.synth.nfw import MassConversion, duffy08_concentration
from ingest.synth.velocity import evrard08_sigma_dm
from ingest.writers import write_catalog
from pipeline.errors import ConfigError
from pipeline.snapshot import Snapshot

ON = CentringSpec()
NONE = CentringSpec(model="none")
#: each statistical check below fails a correct implementation with probability <= 1e-6 (a 5-sigma bound on a
#: mean or fraction: 5.7e-7 two-sided; a Kolmogorov-Smirnov p-value below 1e-6) — for any seed of the draws
P_FALSE_ALARM = 1e-6
Z = 5.0


@pytest.fixture(scope="module")
def box(tiny_box):
    return read_halos(tiny_box / "halos.h5"), read_galaxies(tiny_box / "galaxies.h5")


@pytest.fixture(scope="module")
def draws(box):
    """Centring errors of 60,000 hosts of 1e14 Msun/h along the three axes (180,000 observations)."""
    snap = box[0].snapshot
    ids = np.arange(1, 60_001, dtype=np.int64) * 13
    m = np.full(len(ids), 1e14)
    offs = [centre_offsets(ON, ids, los, m, snap) for los in range(3)]
    r = np.concatenate([o.r_mis for o in offs])
    phi = np.concatenate([o.phi for o in offs])
    dv = np.concatenate([o.dv for o in offs])
    return {"x": r / r_lambda(richness(m[:1], snap), snap.redshift)[0], "phi": phi,
            "v": dv / evrard08_sigma_dm(1e14, snap.cosmology, snap.redshift)}


def test_fraction_well_centred_is_zhang19s(draws):
    centred = draws["x"] == 0.0
    n = len(centred)
    se = np.sqrt(ZHANG19_CENTRED_FRACTION * (1 - ZHANG19_CENTRED_FRACTION) / n)
    assert abs(centred.mean() - 0.75) < Z * se, (centred.mean(), se)


def test_miscentred_offsets_follow_zhang19s_gamma_distribution(draws):
    x = draws["x"][draws["x"] > 0]
    se = np.sqrt(2.0) * ZHANG19_TAU / np.sqrt(len(x))  # Gamma(2, tau): mean 2 tau, sd sqrt(2) tau
    assert abs(x.mean() - 2 * 0.18) < Z * se, (x.mean(), se)
    assert stats.kstest(x, stats.gamma(a=2.0, scale=0.18).cdf).pvalue > P_FALSE_ALARM
    assert stats.kstest(draws["phi"][draws["x"] > 0] / (2 * np.pi), "uniform").pvalue > P_FALSE_ALARM


def test_velocity_offsets_follow_lauer14s_exponential(draws):
    v = draws["v"]
    assert LAUER14_VELOCITY_SCALE == 0.39
    se = 0.39 / np.sqrt(len(v))
    assert abs(np.abs(v).mean() - 0.39) < Z * se, (np.abs(v).mean(), se)
    assert stats.kstest(np.abs(v), stats.expon(scale=0.39).cdf).pvalue > P_FALSE_ALARM
    assert abs((v > 0).mean() - 0.5) < Z * 0.5 / np.sqrt(len(v))  # a random sign
    # drawn independently of the position's offset
    mis = draws["x"] > 0
    assert abs(np.corrcoef(draws["x"][mis], np.abs(v[mis]))[0, 1]) < Z / np.sqrt(mis.sum())


def test_richness_radius_and_its_units(box):
    snap = box[0].snapshot
    z = snap.redshift
    assert r_lambda(np.array([100.0]), 0.0)[0] == pytest.approx(1.0)  # Rykoff et al. 2014: 1.0 h^-1 Mpc
    assert r_lambda(np.array([100.0 * 2**5]), z)[0] == pytest.approx(2.0 * (1 + z))  # physical -> comoving
    m200c = np.array([1e14, 1e15])
    c = duffy08_concentration(m200c, z)
    m200m = MassConversion.build(snap.cosmology, z, ("200m",)).mass(m200c, c, "200m")
    assert ((m200m / m200c > 1.1) & (m200m / m200c < 1.6)).all()
    # Simet et al. 2017 inverted: log10 M200m = 14.344 + 1.33 log10(lambda / 40)
    np.testing.assert_allclose(14.344 + 1.33 * np.log10(richness(m200c, snap) / 40), np.log10(m200m), atol=1e-3)
    assert 20 < richness(m200c, snap)[0] < 35 and 120 < richness(m200c, snap)[1] < 190


# -- members are measured from the displaced centre: one host, galaxies placed by hand -----------------------------
SNAP_120 = Snapshot.from_dict({"name": "hand", "box_size": 120.0, "scale_factor": 0.8951,
                               "cosmology": {"name": "mdpl2"}})


def _hand_case(tmp_path):
    """One host of 10^14.5 Msun/h at the box centre with a centring error of at least 0.3 Mpc/h and 300 km/s along
    the x axis, and five galaxies placed relative to its centre (see the test)."""
    snap = SNAP_120
    hubble = snap.hubble_per_comoving()
    m = 10**14.5
    ids = np.arange(1, 5000, dtype=np.int64)
    off = centre_offsets(ON, ids, 0, np.full(len(ids), m), snap)
    pick = int(np.flatnonzero((off.r_mis > 0.3) & (np.abs(off.dv) > 300))[0])
    host_id, r_mis, phi, dv = int(ids[pick]), off.r_mis[pick], off.phi[pick], off.dv[pick]
    halos = fake_table(HALOS, 1, box=120.0)
    halos.update(halo_id=np.array([host_id]), upid=np.array([-1]), pid=np.array([-1]), m200c=np.array([m]),
                 mvir=np.array([1.2 * m]), x=np.array([60.0]), y=np.array([60.0]), z=np.array([60.0]),
                 vx=np.array([120.0]), vy=np.array([-40.0]), vz=np.array([10.0]))
    centre_yz = np.array([60.0, 60.0]) + r_mis * np.array([np.cos(phi), np.sin(phi)])
    unit = np.array([np.cos(phi), np.sin(phi)])  # from the halo towards the displaced centre
    v_centre = 120.0 + dv
    s = np.sign(dv)
    #            projected (y, z)                         line-of-sight velocity vx    measured (r, v) or None
    placed = {
        "A": (centre_yz + np.array([0.5, 0.0]), v_centre + 300.0, (0.5, 300.0)),  # in both; measured from the centre
        "B": (np.array([60.0, 60.0]) - 1.55 * unit, v_centre, None),           # in the halo's cylinder only
        "C": (centre_yz + 1.55 * unit, v_centre, (1.55, 0.0)),                 # in the displaced cylinder only
        "D": (centre_yz, 120.0 - s * (2500.0 - abs(dv) / 2), None),            # in the halo's velocity window only
        "E": (centre_yz, v_centre + s * 2490.0, (0.0, s * 2490.0)),            # in the centre's window only
    }
    n = len(placed)
    gal = fake_table(GALAXIES, n, box=120.0, seed=3)
    gal.update(galaxy_id=np.arange(n, dtype=np.int64) + 10_000, upid=np.full(n, host_id),
               x=np.full(n, 60.0), y=np.array([p[0][0] for p in placed.values()]),
               z=np.array([p[0][1] for p in placed.values()]), vx=np.array([p[1] for p in placed.values()]),
               vy=np.zeros(n), vz=np.zeros(n), obs_sm=np.full(n, 1e10), sm=np.full(n, 1e10), flags=np.zeros(n, int))
    h = write_catalog(tmp_path / "halos.h5", halos, kind="halo", fmt="hdf5", snapshot=snap)
    g = write_catalog(tmp_path / "galaxies.h5", gal, kind="galaxy", fmt="hdf5", snapshot=snap)
    names = dict(zip(gal["galaxy_id"].tolist(), placed, strict=True))
    return read_halos(h), read_galaxies(g), names, placed, hubble


def test_members_are_measured_from_the_displaced_centre(tmp_path):
    halos, galaxies, names, placed, _ = _hand_case(tmp_path)
    spec = ObservationSpec(cylinder=CylinderSpec(min_members=1), los=LineOfSightSpec(axes=(0,)), regions_per_side=1)
    obs = make_observations(halos, galaxies, spec)
    m = obs.members
    got = {names[int(i)]: (float(r), float(v)) for i, r, v in zip(m.galaxy_id, m.r_proj, m.v_los, strict=True)}
    expected = {k: p[2] for k, p in placed.items() if p[2] is not None}
    assert set(got) == set(expected) == {"A", "C", "E"}
    for k, (r, v) in expected.items():
        assert got[k][0] == pytest.approx(r, abs=1e-4) and got[k][1] == pytest.approx(v, abs=0.05), k
    assert obs.table.n_members.tolist() == [3]
    # from the true centre, the other way round: B and D are in, C and E out
    plain = make_observations(halos, galaxies, dataclasses.replace(spec, centring=NONE))
    assert {names[int(i)] for i in plain.members.galaxy_id} == {"A", "B", "D"}


# -- "none" reproduces the observations from the true halo centres -------------------------------------------------
def test_none_observes_from_the_true_halo_centres(box):
    spec = ObservationSpec(los=LOS, regions_per_side=3, centring=NONE)
    obs = make_observations(*box, spec)
    _, expected = _brute(*box, spec.cylinder, LOS, NONE)
    _, shifted = _brute(*box, spec.cylinder, LOS, ON)
    rows = {(int(c), int(k)): i for i, (c, k) in enumerate(zip(obs.table.cluster_id, obs.table.los, strict=True))}
    differ = 0
    for key, (ids, r, v, _) in expected.items():
        if len(ids) < spec.cylinder.min_members:
            assert key not in rows
            continue
        a, b = obs.members.offsets[rows[key]], obs.members.offsets[rows[key] + 1]
        assert set(obs.members.galaxy_id[a:b].tolist()) == ids
        np.testing.assert_allclose(np.sort(obs.members.r_proj[a:b]), np.sort(r), atol=1e-4)
        np.testing.assert_allclose(np.sort(obs.members.v_los[a:b]), np.sort(v), atol=0.05)
        differ += ids != shifted[key][0]
    assert differ > len(expected) / 4  # and the centring errors would have changed many member lists
    # the spec of a set of observations written before centring existed reads back as "none"
    legacy = {k: v for k, v in spec.to_dict().items() if k != "centring"}
    assert ObservationSpec.from_dict(legacy).centring == NONE


# -- determinism: a function of (seed, host, line of sight) alone --------------------------------------------------
def test_draws_do_not_depend_on_the_other_hosts_or_their_order(box):
    snap = box[0].snapshot
    ids = np.arange(1, 2001, dtype=np.int64) * 7
    m = 10 ** np.linspace(13.5, 15.2, len(ids))
    full = centre_offsets(ON, ids, 4, m, snap)
    order = np.random.default_rng(0).permutation(len(ids))[:300]
    part = centre_offsets(ON, ids[order], 4, m[order], snap)
    for name in ("r_mis", "phi", "dv"):
        np.testing.assert_array_equal(getattr(part, name), getattr(full, name)[order])
    assert not np.array_equal(centre_offsets(CentringSpec(seed=1), ids, 4, m, snap).dv, full.dv)
    assert not np.array_equal(centre_offsets(ON, ids, 5, m, snap).dv, full.dv)  # each line of sight its own
    u = hash_uniforms(0, ids, 0, 0)
    assert u.min() > 0 and u.max() < 1


def test_observations_do_not_depend_on_partitions_regions_or_the_hosts_observed_with_them(box, tmp_path):
    halos, galaxies = box
    spec = ObservationSpec(los=LOS, regions_per_side=3)
    whole = make_observations(halos, galaxies, spec)
    repartitioned = dataclasses.replace(galaxies, frame=galaxies.frame.repartition(npartitions=7))
    other = make_observations(halos, repartitioned, dataclasses.replace(spec, regions_per_side=2), num_workers=1)
    pd.testing.assert_frame_equal(other.table, whole.table)
    np.testing.assert_array_equal(other.members.galaxy_id, whole.members.galaxy_id)
    np.testing.assert_array_equal(other.members.v_los, whole.members.v_los)
    some = whole.table.cluster_id.unique()[::4]
    subset = make_observations(halos, galaxies, spec, host_ids=some)
    rows = whole.table.cluster_id.isin(some).to_numpy()
    pd.testing.assert_frame_equal(subset.table, whole.table[rows].reset_index(drop=True))
    np.testing.assert_array_equal(subset.members.r_proj, whole.members.take(rows).r_proj)
    # the flow's plan file keeps the centring
    plan = plan_observations(halos, galaxies, dataclasses.replace(spec, centring=CentringSpec(seed=5)),
                             tmp_path / "plan")
    save_plan(plan)
    assert load_plan(tmp_path / "plan").config == plan.config
    remove_buckets(tmp_path / "plan")


# -- the configuration, recorded with the observations and the models ----------------------------------------------
def test_the_observe_section_turns_centring_on_by_default_and_records_it(box, tmp_path):
    section = ObserveSection()
    assert section.centring == "zhang19-lauer14" and section.observation_spec().centring == ON
    assert ObserveSection(centring="none", centring_seed=3).observation_spec().centring == CentringSpec("none", 3)
    with pytest.raises(ConfigError, match="expected one of"):
        ObserveSection(centring="bcg")
    assert "centring" in section.science_dict()  # the features stage's cache key sees it
    obs = make_observations(*box, ObservationSpec(cylinder=CylinderSpec(host_log10_m200c_min=14.0),
                                                  los=LineOfSightSpec(axes=(2,))))
    write_observations(tmp_path, obs)
    meta = read_observations(tmp_path)[1]
    assert meta["config"]["centring"] == {"model": "zhang19-lauer14", "seed": 0}
    assert ObservationSpec.from_dict(meta["config"]) == obs.config


# -- clustermass validate --centring ---------------------------------------------------------------------------------
def test_validate_scores_the_held_out_hosts_observed_again_without_centring_errors(tiny_box, tmp_path, capsys):
    """On observations with centring errors, ``validate --centring none`` gives exactly what validating the same
    model on observations made without them gives (the same held-out hosts, observed again from the catalogs)."""
    cats = ["--halos", str(tiny_box / "halos.h5"), "--galaxies", str(tiny_box / "galaxies.h5")]
    (tmp_path / "none.toml").write_text('[observe]\ncentring = "none"\nmin_members = 3\n')
    (tmp_path / "on.toml").write_text('[observe]\nmin_members = 3\n')
    for name in ("on", "none"):
        assert main(["observe", *cats, "--out", str(tmp_path / name), "--quiet", "--config",
                     str(tmp_path / f"{name}.toml")]) == 0
    assert main(["train", "--observations", str(tmp_path / "on"), "--out", str(tmp_path / "model"), "--kind", "flow",
                 "--ensemble", "1", "--max-epochs", "1", "--quiet"]) == 0
    common = ["validate", "--model", str(tmp_path / "model"), "--prior", "training"]
    assert main([*common, "--observations", str(tmp_path / "none"), "--out", str(tmp_path / "v-none")]) == 0
    assert main([*common, "--observations", str(tmp_path / "on"), "--out", str(tmp_path / "v-again"),
                 "--centring", "none", *cats]) == 0
    out = capsys.readouterr().out
    assert "centring none, observed again" in out
    a = json.loads((tmp_path / "v-none" / "metrics.json").read_text())
    b = json.loads((tmp_path / "v-again" / "metrics.json").read_text())
    assert a.pop("centring") == {"observations": "none", "scored": "none", "reobserved": False}
    assert b.pop("centring") == {"observations": "zhang19-lauer14", "scored": "none", "reobserved": True}
    assert a == b
    # ... which is not what the observations with centring errors give
    on, none = (read_observations(tmp_path / name)[0].compute() for name in ("on", "none"))
    assert not np.array_equal(on.sigma_v_biweight, none.sigma_v_biweight)
    # without the catalogs (no --halos/--galaxies, no run.json), one line and status 2
    assert main([*common, "--observations", str(tmp_path / "on"), "--out", str(tmp_path / "v-x"), "--centring",
                 "none"]) == 2
    err = capsys.readouterr().err
    assert "give --halos and --galaxies" in err and err.count("\n") == 1
    # a run directory's run.json names them
    outputs = {"halos": str(tiny_box / "halos.h5"), "galaxies": str(tiny_box / "galaxies.h5")}
    (tmp_path / "on" / "run.json").write_text(json.dumps({"outputs": outputs}))
    assert main([*common, "--observations", str(tmp_path / "on"), "--out", str(tmp_path / "v-run"), "--centring",
                 "none"]) == 0
    c = json.loads((tmp_path / "v-run" / "metrics.json").read_text())
    assert c.pop("centring")["reobserved"] and c == b
