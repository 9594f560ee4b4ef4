"""`clustermass query`: one cluster's posterior from a members file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from clustermass.cli import main
from features.io import read_members, read_observations
from features.sky import C_KMS, angular_separation, comoving_distance, estimate_centre, project
from pipeline.cosmology import MDPL2

ZC, RAC, DECC = 0.117, 150.0, 2.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The module's one trained model: a 200 Mpc/h box (~740 hosts, ~2200 observations; 184 hosts held out), full
    and dynamics flows, one network each, trained in batches of 128 (~13 steps an epoch) for up to 100 epochs (early
    stopping); ~15 s. The calibration test judges its numbers; the tests of the commands' mechanics reuse it (a
    second, random-initialised model on the tiny box cost ~10 s more: compiling, not training, is the cost)."""
    d = tmp_path_factory.mktemp("q")
    assert main(["synth", "--out", str(d / "box"), "--box-size", "200", "--log10-mmin", "11.5", "--quiet",
                 "--workers", "1"]) == 0
    assert main(["observe", "--halos", str(d / "box" / "halos.h5"), "--galaxies", str(d / "box" / "galaxies.h5"),
                 "--out", str(d / "obs"), "--quiet", "--regions", "2"]) == 0
    assert main(["train", "--observations", str(d / "obs"), "--out", str(d / "model"), "--kind", "flow",
                 "--ensemble", "1", "--batch-size", "128", "--max-epochs", "100", "--quiet"]) == 0
    return d


def _clusters(d, n=12):
    table = read_observations(d / "obs")[0].compute().reset_index(drop=True)
    members = read_members(d / "obs")
    test_ids = set(json.loads((d / "model" / "split.json").read_text())["test_cluster_ids"])
    rows = [i for i in np.flatnonzero(table.cluster_id.isin(test_ids)) if table.log10_m200c_true[i] > 13.8][:n]
    out = []
    for i in rows:
        a, b = members.offsets[i], members.offsets[i + 1]
        out.append((members.r_proj[a:b], members.v_los[a:b], members.log10_mstar[a:b],
                    float(table.log10_m200c_true[i])))
    return out


def _to_sky(r, v, seed=0):
    rng = np.random.default_rng(seed)
    theta = r / comoving_distance(ZC, MDPL2)
    phi = rng.uniform(0, 2 * np.pi, len(r))
    dec = DECC + np.degrees(theta * np.sin(phi))
    ra = RAC + np.degrees(theta * np.cos(phi)) / np.cos(np.radians(DECC))
    return ra, dec, ZC + v * (1 + ZC) / C_KMS


def _write(path, **cols):
    names = list(cols)
    np.savetxt(path, np.column_stack([cols[n] for n in names]), delimiter=",", header=",".join(names), comments="")
    return path


def _query(capsys, *argv):
    code = main(["query", *argv])
    out, err = capsys.readouterr()
    return code, out, err


#: the coverage a model's 95% intervals must be told apart from, and the chance allowed of mistaking such a model
#: for a calibrated one
MISCALIBRATED_COVERAGE, MISS_RATE = 0.80, 0.005


def coverage_bound(n: int) -> tuple[int, float, float]:
    """(c, false-alarm rate, power) of the test "at least c of n independent 95% intervals hold the truth": c is the
    smallest count that a model covering :data:`MISCALIBRATED_COVERAGE` reaches with probability at most
    :data:`MISS_RATE`; the false-alarm rate is the chance that a calibrated model (95%) falls short of c, the power
    the chance that the miscalibrated one does."""
    from scipy.stats import binom

    c = next(k for k in range(n + 1) if binom.sf(k - 1, n, MISCALIBRATED_COVERAGE) <= MISS_RATE)
    return c, float(binom.cdf(c - 1, n, 0.95)), float(binom.cdf(c - 1, n, MISCALIBRATED_COVERAGE))


def test_95_percent_interval_holds_the_truth(trained, tmp_path, capsys):
    """`query`'s 95% interval (p025-p975) holds the true mass of the held-out hosts as often as a calibrated
    model's would: one line of sight per host (independent trials; a host's lines of sight share its truth), every
    held-out host (a selection on the true mass would bias the count), under the training prior (the population the
    held-out hosts are drawn from; the flat default is calibrated for a flat population, not this box's mass
    function). The intervals of all of them come from one `infer --held-out-only` (the same selection, features
    and posterior code as `query`, vectorised); `query` gives the same interval for every tenth of them.

    With this fixture's n = 267 held-out hosts (hosts from 10^13 since issue 20) the bound (:func:`coverage_bound`,
    scipy.stats.binom) is c = 231 (86.5%): a model whose 95% intervals cover only 80% passes with probability 0.36%
    (power 99.64%), a calibrated one fails with probability 2.6e-8 (false-alarm rate). This model's intervals held
    236 of the 267 when this was written (88.4%: over-confident, most of all for the lightest hosts at the grid's
    lower edge; with hosts from 10^13.5 it held 170 of 184, 92.4%). Twelve hosts at >= 80%, as this test once had,
    passed a model covering 80% about half the time (binom.sf(9, 12, 0.8) = 0.56).
    """
    from catalogs.io import read_catalog

    assert main(["infer", "--model", str(trained / "model"), "--observations", str(trained / "obs"), "--out",
                 str(tmp_path / "cat"), "--held-out-only", "--prior", "training"]) == 0
    capsys.readouterr()
    cat = read_catalog(tmp_path / "cat" / "catalog.h5")
    assert cat.meta["provenance"]["target_prior"] == "training"
    test_ids = set(json.loads((trained / "model" / "split.json").read_text())["test_cluster_ids"])
    # the first line of sight of every host (a host light enough to leave fewer than 10 members along one axis has
    # no row for it, so not always los 0)
    first = np.zeros(len(cat["cluster_id"]), bool)
    first[np.unique(np.asarray(cat["cluster_id"]), return_index=True)[1]] = True
    ids, truth = np.asarray(cat["cluster_id"])[first], np.asarray(cat["log10_m200c_true"])[first]
    lo, hi = np.asarray(cat["log10_m200c_p025"])[first], np.asarray(cat["log10_m200c_p975"])[first]
    n = len(ids)
    c, false_alarm, power = coverage_bound(n)
    assert set(ids.tolist()) == test_ids and n == len(test_ids), "one line of sight of every held-out host"
    assert false_alarm < 1e-3 and power > 0.99, (n, c, false_alarm, power)
    hits = int(np.sum((lo <= truth) & (truth <= hi)))
    assert hits >= c, f"{hits} of {n} 95% intervals hold the truth; a calibrated model has >= {c} (false-alarm " \
                      f"rate {false_alarm:.1e}, power against 80% coverage {power:.4f})"

    table = read_observations(trained / "obs")[0].compute().reset_index(drop=True)
    members = read_members(trained / "obs")
    for k in range(0, n, 10):  # the interval counted is the one `query` answers with
        i = int(np.flatnonzero((table.cluster_id == ids[k]).to_numpy())[0])  # the same first line of sight
        a, b = members.offsets[i], members.offsets[i + 1]
        path = _write(tmp_path / f"c{k}.csv", r_proj=members.r_proj[a:b], v_los=members.v_los[a:b],
                      log10_mstar=members.log10_mstar[a:b])
        code, out, _ = _query(capsys, "--model", str(trained / "model"), "--members", str(path), "--json",
                              "--prior", "training")
        s = json.loads(out)
        assert code == 0 and s["n_members"] == b - a and s["prior"] == "training"
        assert (s["log10_m200c_p025"], s["log10_m200c_p975"]) == pytest.approx((lo[k], hi[k]), abs=1e-5)


def test_answer_has_every_summary_under_the_default_flat_prior(trained, tmp_path, capsys):
    r, v, m, _ = _clusters(trained, 1)[0]
    path = _write(tmp_path / "c.csv", r_proj=r, v_los=v, log10_mstar=m)
    code, out, _ = _query(capsys, "--model", str(trained / "model"), "--members", str(path), "--json")
    assert code == 0
    s = json.loads(out)
    for key in ("log10_m200c_mode", "log10_m200c_median", "log10_m200c_p16", "log10_m200c_p84", "log10_m200c_p025",
                "log10_m200c_p975", "n_members", "sigma_v", "prior"):
        assert key in s
    assert s["n_members"] == len(r) and s["prior"] == "flat"


def test_sky_coordinates_give_the_same_posterior(trained, tmp_path, capsys):
    r, v, m, _ = _clusters(trained, 1)[0]
    proj = _write(tmp_path / "p.csv", r_proj=r, v_los=v, log10_mstar=m)
    ra, dec, z = _to_sky(r, v)
    sky = _write(tmp_path / "s.csv", ra=ra, dec=dec, z=z, log10_mstar=m)
    _, out_p, _ = _query(capsys, "--model", str(trained / "model"), "--members", str(proj), "--json")
    _, out_s, _ = _query(capsys, "--model", str(trained / "model"), "--members", str(sky), "--json", "--center",
                         str(RAC), str(DECC), str(ZC), "--plot", str(tmp_path / "post.png"))
    a, b = json.loads(out_p), json.loads(out_s)
    assert a["n_members"] == b["n_members"]
    assert b["log10_m200c_median"] == pytest.approx(a["log10_m200c_median"], abs=5e-3)
    assert (tmp_path / "post.png").stat().st_size > 1000
    code, out, err = _query(capsys, "--model", str(trained / "model"), "--members", str(sky))
    assert code == 0 and "centre estimated from the members" in err and "log10 M200c" in out


def test_projection_round_trip():
    ra, dec, z = _to_sky(np.array([0.1, 0.8, 1.5]), np.array([-1500.0, 0.0, 900.0]))
    r, v = project(ra, dec, z, (RAC, DECC, ZC), MDPL2)
    np.testing.assert_allclose(r, [0.1, 0.8, 1.5], rtol=1e-4)
    np.testing.assert_allclose(v, [-1500.0, 0.0, 900.0], atol=1e-6)
    dc = MDPL2.to_astropy().comoving_distance(ZC).value * MDPL2.h
    assert comoving_distance(ZC, MDPL2) == pytest.approx(dc, rel=1e-4)
    assert angular_separation(np.array([10.0]), np.array([0.0]), 11.0, 0.0)[0] == pytest.approx(np.radians(1.0))
    assert estimate_centre(np.array([359.9, 0.1, 0.0]), np.array([0, 0, 0.0]), np.array([0.1, 0.2, 0.3]))[2] == 0.2


def test_warnings_where_an_answer_is_still_meaningful(trained, tmp_path, capsys):
    r, v, m, _ = _clusters(trained, 1)[0]
    r2 = np.concatenate([r[:8], [5.0]])
    v2, m2 = np.concatenate([v[:8], [0.0]]), np.concatenate([m[:8], [10.5]])
    path = _write(tmp_path / "few.csv", r_proj=r2, v_los=v2, log10_mstar=m2)
    code, _, err = _query(capsys, "--model", str(trained / "model"), "--members", str(path))
    assert code == 0
    assert "1 of 9 members fall outside the model's selection" in err
    assert re.search(r"8 members, fewer than the \d+ every training cluster had", err), err
    ra, dec, z = _to_sky(r, v)
    far = _write(tmp_path / "far.csv", ra=ra, dec=dec, z=z + 0.2, log10_mstar=m)
    code, _, err = _query(capsys, "--model", str(trained / "model"), "--members", str(far))
    assert code == 0 and "is far from the model's snapshot" in err
    code, out, err = _query(capsys, "--model", str(trained / "model"), "--members", str(far), "--far-redshift",
                            "refuse")
    assert code == 2 and out == "" and err.count("\n") == 1 and "column 'z'" in err and "[synth] redshift" in err


@pytest.mark.parametrize(
    ("content", "suffix", "message"),
    [
        ("x,y\n1,2\n", ".csv", "expected columns r_proj [Mpc/h] and v_los [km/s], or ra, dec [deg] and z"),
        ("r_proj,v_los,log10_mstar\n0.1,100,10\n0.2,-50,10.2\n", ".csv", "only 2 members inside"),
        ("r_proj,v_los,log10_mstar\n0.1,nan,10\n0.2,-50,10.2\n0.3,1,10\n", ".csv", "column 'v_los', row 1"),
        ("whatever", ".parquet", "unknown members format '.parquet'"),
    ],
)
def test_errors_that_leave_no_answer(trained, tmp_path, capsys, content, suffix, message):
    path = tmp_path / f"m{suffix}"
    path.write_text(content)
    code, out, err = _query(capsys, "--model", str(trained / "model"), "--members", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert message in err


def test_answers_from_positions_and_redshifts_alone(trained, tmp_path, capsys):
    """Without stellar masses the dynamics model answers, says so, and says why the full model did not."""
    hits = 0
    clusters = _clusters(trained)
    for k, (r, v, _, truth) in enumerate(clusters):
        ra, dec, z = _to_sky(r, v, seed=k)
        path = _write(tmp_path / f"d{k}.csv", ra=ra, dec=dec, z=z)
        code, out, _ = _query(capsys, "--model", str(trained / "model"), "--members", str(path), "--json",
                              "--center", str(RAC), str(DECC), str(ZC))
        assert code == 0
        s = json.loads(out)
        assert s["model_inputs"] == "dynamics" and s["model"].endswith("dynamics/flow")
        full = next(c for c in s["models_considered"] if c["feature_set"] == "full")
        assert not full["used"] and "log10_mstar" in full["why_not"]
        assert s["log10_m200c_p025"] <= s["log10_m200c_mode"] <= s["log10_m200c_p975"]
        hits += s["log10_m200c_p025"] <= truth <= s["log10_m200c_p975"]
    assert hits / len(clusters) >= 0.75
    # a model directory given directly is used as it is, and refuses what it cannot answer
    code, _, err = _query(capsys, "--model", str(trained / "model" / "flow"), "--members", str(path))
    assert code == 2 and "expected a log10_mstar column" in err and err.count("\n") == 1


def test_unlike_anything_in_training_is_flagged(trained, tmp_path, capsys):
    """5x the richest training richness at a low dispersion is out of distribution; a posterior piled against the
    grid's edge is flagged as such; the flags reach the JSON."""
    rng = np.random.default_rng(4)
    n = 5 * 400
    path = _write(tmp_path / "odd.csv", r_proj=rng.uniform(0.01, 1.5, n), v_los=rng.normal(0, 150.0, n),
                  log10_mstar=rng.uniform(9.5, 11.0, n))
    code, out, _ = _query(capsys, "--model", str(trained / "model"), "--members", str(path), "--json")
    s = json.loads(out)
    assert code == 0 and s["flags"] & 1 and "OUT_OF_DISTRIBUTION" in s["flag_names"] and s["ood_score"] < 1e-3
    hot = _write(tmp_path / "hot.csv", r_proj=rng.uniform(0.01, 1.5, 60), v_los=rng.normal(0, 2400.0, 60) % 2400,
                 log10_mstar=rng.uniform(9.5, 11.0, 60))
    code, out, _ = _query(capsys, "--model", str(trained / "model"), "--members", str(hot), "--json")
    s = json.loads(out)
    assert code == 0 and s["flags"] != 0
    if s["edge_mass"] > 0.01:
        assert "GRID_EDGE" in s["flag_names"]
    typical = _clusters(trained, 1)[0]
    ok = _write(tmp_path / "ok.csv", r_proj=typical[0], v_los=typical[1], log10_mstar=typical[2])
    code, out, _ = _query(capsys, "--model", str(trained / "model"), "--members", str(ok), "--json")
    assert json.loads(out)["ood_score"] > 1e-3


def test_missing_model(tmp_path, capsys):
    path = _write(tmp_path / "m.csv", r_proj=np.ones(3) * 0.1, v_los=np.zeros(3), log10_mstar=np.ones(3) * 10)
    code, _, err = _query(capsys, "--model", str(tmp_path), "--members", str(path))
    assert code == 2 and "no trained model here" in err


def test_infer_writes_catalogs_for_every_observation(trained, tmp_path, capsys):
    from catalogs.io import read_catalog

    code = main(["infer", "--model", str(trained / "model"), "--observations", str(trained / "obs"), "--out",
                 str(tmp_path / "cat")])
    _out, err = capsys.readouterr()
    assert code == 0, err
    table = read_observations(trained / "obs")[0].compute()
    h5 = read_catalog(tmp_path / "cat" / "catalog.h5")
    fits = read_catalog(tmp_path / "cat" / "catalog.fits")
    assert len(h5) == len(fits) == len(table)
    np.testing.assert_array_equal(h5["cluster_id"], table["cluster_id"].to_numpy())
    np.testing.assert_array_equal(h5["log10_m200c_p16"], fits["log10_m200c_p16"])
    assert (h5["log10_m200c_p16"] <= h5["log10_m200c_median"]).all()
    assert h5.meta["provenance"]["rows"] == "all observations" and h5.meta["provenance"]["model"] == "flow"
    pdf = np.asarray(h5["log10_m200c_pdf"])
    np.testing.assert_allclose(np.trapezoid(pdf, h5.meta["log10_m200c_grid"], axis=1), 1.0, atol=1e-3)


def test_validate_command(trained, tmp_path, capsys):
    code = main(["validate", "--model", str(trained / "model"), "--observations", str(trained / "obs"), "--out",
                 str(tmp_path / "val")])
    out, err = capsys.readouterr()
    assert code == 0, err
    metrics = json.loads((tmp_path / "val" / "metrics.json").read_text())
    assert metrics["main_model"] == "flow" and metrics["n_test"] > 0
    assert "coverage 68%" in out
    verdicts = {name: check["pass"] for name, check in metrics["acceptance"].items() if "pass" in check}
    assert len(verdicts) == 8 and "dynamics_model_on_members_thinned_to_40pc" in verdicts
    assert "coverage_within_3pp_in_every_mass_range" in verdicts  # issue 20
    n_ranges = len(metrics["coverage_by_mass_range"])  # the per-range table, one line each
    table = out[out.index("coverage by true log10 M200c"):].splitlines()[2:2 + n_ranges]
    for line, row in zip(table, metrics["coverage_by_mass_range"], strict=True):
        label = line.split()[0]
        assert label.rstrip("*") == (f">={row['lo']:g}" if row["hi"] is None else f"{row['lo']:g}-{row['hi']:g}")
        assert int(line.split()[1]) == row["n"]
        assert ("no held-out rows" in line) == (row["n"] == 0)
        if row["n"]:
            assert f"{row['coverage_68']:.3f} +- {row['se_68']:.3f}" in line
    assert "dynamics_bias_independent_of_completeness" in verdicts  # the dynamics flow's completeness test
    assert set(metrics["dynamics_completeness"]["models"]) == {"flow"}
    assert "dynamics flow, the same" in out
    assert metrics["n_invalid_posteriors"] == 0 and verdicts["every_held_out_row_has_a_posterior"]
    for name, ok in verdicts.items():  # each criterion printed with the verdict metrics.json holds
        assert f"{'PASS' if ok else 'FAIL'}  {name}" in out.splitlines()[-len(verdicts):][list(verdicts).index(name)]
    assert (tmp_path / "val" / "coverage.png").exists()
    # --hosts all: every host of the observations (for a box the model never saw)
    assert main(["validate", "--model", str(trained / "model"), "--observations", str(trained / "obs"), "--out",
                 str(tmp_path / "all"), "--hosts", "all"]) == 0
    everything = json.loads((tmp_path / "all" / "metrics.json").read_text())
    assert everything["n_test"] > metrics["n_test"]
    assert "(all hosts) observations" in capsys.readouterr().out


def test_infer_real_clusters_from_a_galaxy_table_and_centres(trained, tmp_path, capsys):
    from catalogs.io import read_catalog

    clusters = _clusters(trained, 3)
    ra_all, dec_all, z_all = [], [], []
    centres = []
    for k, (r, v, _, _) in enumerate(clusters):
        ra, dec, z = _to_sky(r, v, seed=k)
        ra_all.append(ra + 10.0 * k)  # three clusters 10 degrees apart
        dec_all.append(dec)
        z_all.append(z)
        centres.append((100 + k, RAC + 10.0 * k, DECC, ZC))
    ra, dec, z = np.concatenate(ra_all), np.concatenate(dec_all), np.concatenate(z_all)
    z[0] = np.nan  # a bad galaxy row: named and skipped
    galaxies = _write(tmp_path / "galaxies.csv", ra=ra, dec=dec, z=z)
    rows = [*centres, (200, RAC, 95.0, ZC), (100, RAC, DECC, ZC)]  # dec out of range; duplicate id
    table = tmp_path / "centres.csv"
    table.write_text("id,ra,dec,z\n" + "".join(f"{i},{a},{d},{zz}\n" for i, a, d, zz in rows))
    code = main(["infer", "--model", str(trained / "model"), "--members", str(galaxies), "--clusters", str(table),
                 "--out", str(tmp_path / "cat")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "column 'z', row 1" in err and "column 'dec', row 4" in err and "duplicate id 100" in err
    cat = read_catalog(tmp_path / "cat" / "catalog.fits")
    assert sorted(cat["cluster_id"]) == [100, 101, 102]
    assert set(cat["model_inputs"]) == {1} and "flags" in cat.colnames and "ood_score" in cat.colnames
    assert np.all(cat["log10_m200c_p025"] <= cat["log10_m200c_mode"])
    assert "dynamics" in out
    assert np.all(cat["flags"] & 8 == 0)  # at the snapshot's redshift: no REDSHIFT flag
    # a cluster far from the snapshot: flagged by default, skipped and named with --far-redshift refuse
    far_table = tmp_path / "far.csv"
    far_table.write_text("id,ra,dec,z\n" + "".join(f"{i},{a},{d},{zz}\n" for i, a, d, zz in centres)
                         + f"300,{RAC + 40.0},{DECC},{ZC + 0.2}\n")
    far_gal = _write(tmp_path / "far_galaxies.csv", ra=np.concatenate((ra[1:], ra_all[0] + 40.0)),
                     dec=np.concatenate((dec[1:], dec_all[0])), z=np.concatenate((z[1:], z_all[0] + 0.2)))
    code = main(["infer", "--model", str(trained / "model"), "--members", str(far_gal), "--clusters", str(far_table),
                 "--out", str(tmp_path / "far"), "--far-redshift", "refuse"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "row 4 (id 300): cluster skipped" in err and "--far-redshift refuse" in err
    assert sorted(read_catalog(tmp_path / "far" / "catalog.h5")["cluster_id"]) == [100, 101, 102]
    # both modes at once is a usage error, one line
    code = main(["infer", "--model", str(trained / "model"), "--members", str(galaxies), "--out", str(tmp_path)])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "--clusters" in err


def test_a_magnitude_limited_model_applies_its_limit_to_the_members(trained, tmp_path, capsys):
    """A model trained on r < 17.77 at its snapshot cuts members fainter than that absolute limit, at the cluster's
    own distance, and needs their apparent magnitudes."""
    import shutil

    from features.sky import absolute_limit, distance_modulus
    from models.io import write_description

    model = tmp_path / "model"
    shutil.copytree(trained / "model" / "flow", model)
    description = json.loads((model / "model.json").read_text())
    description["observations"]["config"]["cylinder"]["r_limit"] = 17.77
    write_description(model, description)  # a deliberate edit: re-digested (a hand edit is refused)
    r, v, m, _ = _clusters(trained, 1)[0]
    ra, dec, z = _to_sky(r, v)
    limit = absolute_limit(17.77, ZC, MDPL2)
    mag = np.where(np.arange(len(r)) % 4 == 0, limit + 1.0, limit - 1.0) + distance_modulus(ZC, MDPL2)
    path = _write(tmp_path / "mags.csv", ra=ra, dec=dec, z=z, log10_mstar=m, mag_r=mag)
    code, out, err = _query(capsys, "--model", str(model), "--members", str(path), "--json", "--center", str(RAC),
                            str(DECC), str(ZC))
    assert code == 0, err
    s = json.loads(out)
    assert s["selection_cut"]["fainter_than_the_model_limit"] == len(r[::4])
    assert s["n_members"] == len(r) - len(r[::4])
    bare = _write(tmp_path / "bare.csv", ra=ra, dec=dec, z=z, log10_mstar=m)
    code, _, err = _query(capsys, "--model", str(model), "--members", str(bare))
    assert code == 2 and "mag_r" in err and err.count("\n") == 1
    # infer for many clusters applies the same selection
    from catalogs.io import read_catalog

    centres = tmp_path / "centres.csv"
    centres.write_text(f"id,ra,dec,z\n7,{RAC},{DECC},{ZC}\n")
    code = main(["infer", "--model", str(model), "--members", str(path), "--clusters", str(centres), "--out",
                 str(tmp_path / "cat")])
    _, err = capsys.readouterr()
    assert code == 0, err
    assert read_catalog(tmp_path / "cat" / "catalog.h5")["n_members"][0] == len(r) - len(r[::4])
