"""Mock observations end to end on a small synthetic box, against a brute-force all-pairs search."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.balance import BalanceSpec, balanced_hosts
from features.centring import CentringSpec, centre_offsets, perpendicular_basis
from features.cylinder import CylinderSpec, LineOfSightSpec, wrap
from features.definitions import FEATURE_NAMES, compute_features
from features.io import read_members, read_observations, write_observations
from features.observe import ObservationSpec, make_observations, select_hosts
from ingest.catalog import read_galaxies, read_halos
from ingest.synth.box import SynthConfig
from ingest.synth.synthesize import synthesize
from ingest.writers import write_catalog
from pipeline.errors import ClusterMassError, ConfigError, InputError

LOS = LineOfSightSpec(extra_directions=2, extra_log10_m200c_min=13.9, seed=3)


@pytest.fixture(scope="module")
def box(tiny_box):
    """The session's tiny 110 Mpc/h box (tests/conftest.py), read."""
    return read_halos(tiny_box / "halos.h5"), read_galaxies(tiny_box / "galaxies.h5")


@pytest.fixture(scope="module")
def observed(box):
    return make_observations(*box, ObservationSpec(los=LOS, regions_per_side=3))


def _brute(halos, galaxies, spec: CylinderSpec, los: LineOfSightSpec, centring: CentringSpec | None = None,
           balance: BalanceSpec | None = None):
    """Every (host, line of sight)'s members by an all-pairs search around its centre: the halo's position moved
    by the centring error in the plane of the sky, its velocity along the line of sight (``centring``'s draws;
    default: :class:`CentringSpec`'s, the default observations'), for the hosts above the cut that the
    mass-balanced sample keeps (``balance``; default: :class:`BalanceSpec`'s)."""
    centring = CentringSpec() if centring is None else centring
    balance = BalanceSpec() if balance is None else balance
    snap = halos.snapshot
    L, H = snap.box_size, snap.hubble_per_comoving()
    hosts = select_hosts(halos, spec.host_log10_m200c_min)
    keep, _ = balanced_hosts(np.log10(hosts.m200c.to_numpy()), hosts.halo_id.to_numpy(), balance,
                             log10_m_min=spec.host_log10_m200c_min)
    hosts = hosts[keep]
    g = galaxies.frame.compute()
    g = g[g.obs_sm >= 10**spec.log10_mstar_min]
    gx = g[["x", "y", "z"]].to_numpy(np.float64)
    gv = g[["vx", "vy", "vz"]].to_numpy(np.float64)
    dirs = list(np.eye(3)[list(los.axes)]) + list(los.directions())
    out = {}
    for _, h in hosts.iterrows():
        hx = h[["x", "y", "z"]].to_numpy(np.float64)
        hv = h[["vx", "vy", "vz"]].to_numpy(np.float64)
        for k, n in enumerate(dirs):
            if k >= 3 and np.log10(h.m200c) < los.extra_log10_m200c_min:
                continue
            off = centre_offsets(centring, np.array([h.halo_id]), k, np.array([h.m200c]), snap)
            sky = np.eye(3)[[a for a in range(3) if a != k]] if k < 3 else np.vstack(perpendicular_basis(n))
            centre = hx + off.projected()[0] @ sky
            d = wrap(gx - centre, L)
            along = d @ n
            r = np.sqrt(np.maximum((d * d).sum(1) - along**2, 0))
            v = H * along + (gv - hv) @ n - off.dv[0]
            sel = (r < spec.r_aperture) & (np.abs(v) < spec.v_cut)
            out[(int(h.halo_id), k)] = (set(g.galaxy_id.to_numpy()[sel].tolist()), r[sel], v[sel],
                                        np.log10(g.obs_sm.to_numpy()[sel]))
    return hosts, out


def test_members_equal_brute_force_for_every_line_of_sight(box, observed):
    spec = observed.config.cylinder
    assert observed.config.centring.enabled  # the default: every cylinder centred with a centring error
    hosts, expected = _brute(*box, spec, LOS, observed.config.centring)
    assert len(hosts) >= 20 and observed.n_hosts == len(hosts)
    kept = {(int(c), int(k)): i for i, (c, k) in enumerate(zip(observed.table.cluster_id, observed.table.los,
                                                               strict=True))}
    n_dropped = 0
    for key, (ids, _, v, _) in expected.items():
        if len(ids) < spec.min_members:
            n_dropped += 1
            assert key not in kept
            continue
        i = kept.pop(key)
        a, b = observed.members.offsets[i], observed.members.offsets[i + 1]
        assert set(observed.members.galaxy_id[a:b].tolist()) == ids
        np.testing.assert_allclose(np.sort(observed.members.v_los[a:b]), np.sort(v), atol=0.05)
    assert not kept  # nothing found that brute force did not
    assert observed.dropped["total"] == n_dropped
    assert set(observed.table.los) == {0, 1, 2, 3, 4}


def test_features_are_those_of_the_members(observed):
    m = observed.members
    feats = compute_features(m.offsets, m.r_proj, m.v_los, m.log10_mstar,
                             r_aperture=observed.config.cylinder.r_aperture)
    for name in FEATURE_NAMES:
        np.testing.assert_allclose(observed.table[name].to_numpy(), feats[name], rtol=1e-6, equal_nan=True)
    assert (observed.table.n_members.to_numpy() == m.counts).all()
    assert (observed.table.n_true_members <= observed.table.n_members).all()
    assert observed.table.n_true_members.sum() == m.is_true_member.sum()
    # the pure dispersion is the standard deviation of the true members' v_los, per observation
    row = int(np.argmax(observed.table.n_true_members.to_numpy()))
    lo, hi = m.offsets[row], m.offsets[row + 1]
    expected = np.std(m.v_los[lo:hi][m.is_true_member[lo:hi]].astype(np.float64), ddof=1)
    assert observed.table.sigma_v_true_std.iloc[row] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("regions", [1, 2, 5])
def test_regions_do_not_change_the_result(box, observed, regions):
    other = make_observations(*box, ObservationSpec(los=LOS, regions_per_side=regions), num_workers=1)
    pd.testing.assert_frame_equal(other.table, observed.table)
    np.testing.assert_array_equal(other.members.galaxy_id, observed.members.galaxy_id)
    assert other.dropped == observed.dropped


def test_table_is_sorted_and_has_truth(observed):
    t = observed.table
    keys = list(zip(t.cluster_id, t.los, strict=True))
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    assert (t.log10_m200c_true >= CylinderSpec().host_log10_m200c_min).all() and (t.n_members >= 10).all()
    assert (t.log10_mvir_true > t.log10_m200c_true).mean() > 0.95  # Mvir > M200c for NFW halos


def test_write_and_read_back(tmp_path, observed):
    obs_dir, _ = write_observations(tmp_path, observed, rows_per_part=50)
    frame, meta = read_observations(tmp_path)
    assert frame.npartitions == len(list(obs_dir.glob("part-*.parquet"))) >= 2
    back = frame.compute().reset_index(drop=True)
    pd.testing.assert_frame_equal(back, observed.table)
    assert meta["units"]["sigma_v_biweight"] == "km/s" and meta["dropped"] == observed.dropped
    members = read_members(tmp_path)
    np.testing.assert_array_equal(members.offsets, observed.members.offsets)
    np.testing.assert_array_equal(members.v_los, observed.members.v_los)
    assert not list(tmp_path.glob(".*"))


def test_empty_selection_is_an_error(box):
    with pytest.raises(InputError, match=r"empty selection: no distinct halo .* M200c >= 10\^16"):
        make_observations(*box, ObservationSpec(cylinder=CylinderSpec(host_log10_m200c_min=16.0)))
    with pytest.raises(ClusterMassError, match=r"empty selection: all .* fewer than 100000 members"):
        make_observations(*box, ObservationSpec(cylinder=CylinderSpec(min_members=100000)))


def test_cylinder_deeper_than_half_the_box(tmp_path):
    small = synthesize(tmp_path, SynthConfig(box_size=40.0, seed=1, log10_mmin=12.0), fmt="hdf5")
    with pytest.raises(ConfigError, match="deeper than half the 40 Mpc/h box"):
        make_observations(read_halos(small.halos), read_galaxies(small.galaxies))


def test_bad_galaxy_values_name_file_column_and_row(tmp_path, box):
    halos, galaxies = box
    g = galaxies.frame.compute()
    cols = {c: g[c].to_numpy().copy() for c in g.columns}
    cols["vx"][17] = np.nan
    path = write_catalog(tmp_path / "g.h5", cols, kind="galaxy", fmt="hdf5", snapshot=galaxies.snapshot)
    with pytest.raises(InputError, match=r"g\.h5: column 'vx', row 18: expected a finite number"):
        make_observations(halos, read_galaxies(path))
    cols["vx"][17] = 0.0
    cols["obs_sm"] = np.log10(cols["obs_sm"])
    path = write_catalog(tmp_path / "g2.h5", cols, kind="galaxy", fmt="hdf5", snapshot=galaxies.snapshot)
    with pytest.raises(InputError, match=r"column 'obs_sm': stellar masses look like log10"):
        make_observations(halos, read_galaxies(path))


def test_plan_region_jobs_and_combine_reproduce_make_observations(tmp_path, box, observed):
    """The flow's three steps — plan (buckets), one job per region through files, combine — equal one call."""
    from features.io import load_plan, read_region, save_plan, write_region
    from features.observe import combine_observations, observe_region, plan_observations, remove_buckets

    plan = plan_observations(*box, ObservationSpec(los=LOS, regions_per_side=3), tmp_path / "plan")
    save_plan(plan)
    reloaded = load_plan(tmp_path / "plan")
    assert reloaded.jobs == plan.jobs and sorted({j.los for j in plan.jobs}) == [0, 1, 2, 3, 4]
    pd.testing.assert_frame_equal(reloaded.hosts, plan.hosts)
    parts = [read_region(write_region(tmp_path / "regions" / f"{k}.npz", *observe_region(reloaded, job)))
             for k, job in enumerate(reloaded.jobs)]
    combined = combine_observations(reloaded, parts)
    pd.testing.assert_frame_equal(combined.table, observed.table)
    np.testing.assert_array_equal(combined.members.offsets, observed.members.offsets)
    np.testing.assert_array_equal(combined.members.galaxy_id, observed.members.galaxy_id)
    assert combined.dropped == observed.dropped
    remove_buckets(tmp_path / "plan")
    assert not list((tmp_path / "plan").glob("bucket-*.bin"))
    with pytest.raises(InputError, match="bucket file missing"):
        observe_region(reloaded, reloaded.jobs[0])


def test_a_magnitude_limited_survey_observes_only_galaxies_brighter_than_the_limit(box, observed):
    """[observe] r_limit: at the snapshot's redshift r < 17.77 reaches M_r ~ -20.3 (h = 0.68), so cylinders keep
    the bright members of the stellar-mass-selected ones and nothing fainter."""
    from features.sky import absolute_limit, distance_modulus

    halos, galaxies = box
    snap = galaxies.snapshot
    limited = make_observations(halos, galaxies, ObservationSpec(cylinder=CylinderSpec(r_limit=17.77),
                                                                   los=LOS, regions_per_side=3))
    limit = absolute_limit(17.77, snap.redshift, snap.cosmology)
    assert distance_modulus(snap.redshift, snap.cosmology) == pytest.approx(
        snap.cosmology.to_astropy().distmod(snap.redshift).value, abs=0.01)
    g = galaxies.frame[["galaxy_id", "mag_r"]].compute().set_index("galaxy_id")
    kept = limited.members.galaxy_id
    assert len(kept) > 0 and np.all(g.loc[kept, "mag_r"].to_numpy() <= limit)
    assert set(kept.tolist()) < set(observed.members.galaxy_id.tolist())
    assert (limited.members.counts.sum() < observed.members.counts.sum())
    with pytest.raises(ConfigError, match="r_limit"):
        CylinderSpec(r_limit=5.0)
