"""`clustermass query` and `infer --members --clusters` answer with a set model (the members as a set,
models/set_model.py) whenever it is the richest model the member list can feed, and say so (issue 19.3).

The models are small and barely trained (toy clusters, 2 epochs, one network each): these tests judge which model
answers and that query and infer give the same answer, not its accuracy."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_model_files import R_APERTURE, SNAPSHOT, build_model, stage_extra
from test_query import _query as run_query
from test_query import _write

from catalogs.io import read_catalog
from clustermass.cli import main
from features.definitions import compute_features
from features.sets import FEATURE_SETS
from features.sky import C_KMS, comoving_distance
from inference import plots
from inference.posterior import prepare
from models.io import load_model, save_model
from models.set_encoder import SetSpec
from models.set_model import members_from_arrays, set_data, train_set_model
from models.spec import ModelSpec, TrainSpec
from pipeline.cosmology import MDPL2

ZC, DECC = 0.117, 2.0


def toy_sets(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Member lists of ``n`` toy clusters of 8-16 members (two padded widths: two compilations of each step), as
    :func:`test_model_files.toy_clusters` draws them (r_proj [Mpc/h] in the aperture, v_los [km/s] Gaussian of a
    dispersion set by the mass, log10 M* in [9.5, 11.5]): ragged offsets, r, v, log10 M*, log10 M200c [Msun/h]."""
    rng = np.random.default_rng(seed)
    mass = rng.uniform(13.5, 15.0, n)
    counts = rng.integers(8, 17, n)
    offsets = np.concatenate(([0], np.cumsum(counts)))
    r = rng.uniform(0.01, R_APERTURE, offsets[-1])
    v = rng.normal(0.0, np.repeat(500.0 * 10 ** ((mass - 14.0) / 3.0), counts))
    return offsets, r, v, rng.uniform(9.5, 11.5, offsets[-1]), mass


def _set_model(directory, feature_set):
    """A set model of ``feature_set`` trained for 2 epochs on 200 toy clusters (one small network), saved with the
    training stage's extras (cylinder, snapshot, selection, typicality of its feature set's summary features)."""
    offsets, r, v, m, mass = toy_sets(200, seed=1)
    members = members_from_arrays(offsets, r, v, m if feature_set == "full" else None)
    model, histories = train_set_model(
        members, mass, np.arange(len(mass)), feature_set=feature_set, spec=ModelSpec(kind="flow", hidden=(8,)),
        set_spec=SetSpec(phi=(8, 8)), train=TrainSpec(ensemble=1, max_epochs=2, batch_size=128),
        members_kept=(5.0, 16.0) if feature_set == "dynamics" else None)
    feats = compute_features(offsets, r, v, m, r_aperture=R_APERTURE)
    x = np.column_stack([feats[name] for name in FEATURE_SETS[feature_set]])
    counts = np.diff(offsets)
    extra = stage_extra(feature_set, x, counts)
    return save_model(directory, model, histories=histories, extra=extra)


@pytest.fixture(scope="module")
def run_models(tmp_path_factory):
    """A run's model directory with every family: ``set/`` and ``flow/`` (full), ``dynamics/set/`` and
    ``dynamics/flow/`` (the flows untrained: only which model answers matters here)."""
    root = tmp_path_factory.mktemp("set-run") / "model"
    build_model(root / "flow", "full")
    build_model(root / "dynamics" / "flow", "dynamics")
    _set_model(root / "set", "full")
    _set_model(root / "dynamics" / "set", "dynamics")
    return root


def _cluster(k):
    """Toy cluster ``k`` (:func:`toy_sets`, seed 5) with its members inside the models' cylinder: r_proj [Mpc/h],
    v_los [km/s], log10 M* [log10 Msun]."""
    offsets, r, v, m, _ = toy_sets(4, seed=5)
    a, b = offsets[k], offsets[k + 1]
    inside = np.abs(v[a:b]) < 2500.0
    return r[a:b][inside], v[a:b][inside], m[a:b][inside]


def _query(capsys, *argv):
    code, out, err = run_query(capsys, *argv)
    assert code == 0, err
    return out


def _direct(model_dir, r, v, m):
    """The corrected posterior mode of the set model in ``model_dir`` for these members, computed here (flat
    prior): the answer `query` must give."""
    model = load_model(model_dir)
    x = set_data(model, members_from_arrays(np.array([0, len(r)]), r, v, m))
    return float(next(prepare(model, "flat", snapshot=SNAPSHOT).blocks(x)).values["mode"][0])


def test_a_run_with_a_set_model_answers_with_it_and_says_so(run_models, tmp_path, capsys, monkeypatch):
    r, v, m = _cluster(0)
    path = _write(tmp_path / "c.csv", r_proj=r, v_los=v, log10_mstar=m)
    s = json.loads(_query(capsys, "--model", str(run_models), "--members", str(path), "--json"))
    assert s["model_kind"] == "set" and s["model"] == str(run_models / "set") and s["model_inputs"] == "full"
    assert any(note.startswith("answered by the set model (members as a set: r_proj, v_los, log10 M*")
               for note in s["notes"])
    assert s["log10_m200c_mode"] == pytest.approx(_direct(run_models / "set", r, v, m), abs=1e-5)
    flow = next(c for c in s["models_considered"] if c["model"] == str(run_models / "flow"))
    assert flow["model_kind"] == "flow" and not flow["used"]
    assert flow["why_not"].startswith("a richer model answered: the full set model")
    # the diagnostics still read the summary features: sigma_v and a typicality score
    assert s["sigma_v"] > 0 and 0 <= s["ood_score"] <= 1 and s["n_members"] == len(r)
    # the flow answers where the run has no set model (a copy without set/ and dynamics/set/)
    flow_only = tmp_path / "flow-only"
    for sub in ("flow", "dynamics/flow"):
        shutil.copytree(run_models / sub, flow_only / sub)
    f = json.loads(_query(capsys, "--model", str(flow_only), "--members", str(path), "--json"))
    assert f["model_kind"] == "flow" and not any(n.startswith("answered by the set") for n in f["notes"])
    assert f["log10_m200c_mode"] != pytest.approx(s["log10_m200c_mode"], abs=1e-5)
    # the text answer says it too, and so does the plot's title
    out = _query(capsys, "--model", str(run_models), "--members", str(path))
    assert "answered by the set model" in out and f"model {run_models / 'set'} (full" in out
    titles = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, p: titles.append(fig.axes[0].get_title()) or p)
    for model, what in ((run_models, "full set model"), (flow_only, "full model")):
        _query(capsys, "--model", str(model), "--members", str(path), "--plot", str(tmp_path / "p.png"))
        assert f"members, {what}, prior flat" in titles[-1]


def test_without_stellar_masses_the_dynamics_set_model_answers(run_models, tmp_path, capsys):
    r, v, m = _cluster(1)
    with_mstar = _write(tmp_path / "m.csv", r_proj=r, v_los=v, log10_mstar=m)
    bare = _write(tmp_path / "d.csv", r_proj=r, v_los=v)
    expected = _direct(run_models / "dynamics" / "set", r, v, None)
    for path, options in ((bare, ()), (with_mstar, ("--inputs", "dynamics"))):
        s = json.loads(_query(capsys, "--model", str(run_models), "--members", str(path), "--json", *options))
        assert s["model_kind"] == "set" and s["model"] == str(run_models / "dynamics" / "set")
        assert s["model_inputs"] == "dynamics" and s["log10_m200c_mode"] == pytest.approx(expected, abs=1e-5)
        assert any(n.startswith("answered by the set model (members as a set: r_proj, v_los;") for n in s["notes"])
        flow = next(c for c in s["models_considered"] if c["model"] == str(run_models / "dynamics" / "flow"))
        assert not flow["used"] and "the dynamics set model" in flow["why_not"]
        full = [c for c in s["models_considered"] if c["feature_set"] == "full"]
        assert {c["model_kind"] for c in full} == {"set", "flow"} and not any(c["used"] for c in full)


def test_a_set_model_directory_given_directly_answers(run_models, tmp_path, capsys):
    r, v, m = _cluster(2)
    path = _write(tmp_path / "c.csv", r_proj=r, v_los=v, log10_mstar=m)
    for sub, mstar in (("set", m), ("dynamics/set", None)):
        s = json.loads(_query(capsys, "--model", str(run_models / sub), "--members", str(path), "--json"))
        assert s["model_kind"] == "set" and s["model"] == str(run_models / sub)
        assert [c["model"] for c in s["models_considered"]] == [str(run_models / sub)]
        assert s["log10_m200c_mode"] == pytest.approx(_direct(run_models / sub, r, v, mstar), abs=1e-5)


def _sky(r, v, ra_c, seed):
    """Sky coordinates (ra, dec [deg], z) of members at (r_proj, v_los) around (ra_c, DECC, ZC)."""
    rng = np.random.default_rng(seed)
    theta, phi = r / comoving_distance(ZC, MDPL2), rng.uniform(0, 2 * np.pi, len(r))
    dec = DECC + np.degrees(theta * np.sin(phi))
    ra = ra_c + np.degrees(theta * np.cos(phi)) / np.cos(np.radians(DECC))
    return ra, dec, ZC + v * (1 + ZC) / C_KMS


@pytest.mark.parametrize("columns", ["with_mstar", "radecz"])
def test_infer_on_real_lists_answers_each_cluster_as_query_does(run_models, tmp_path, capsys, columns):
    """One galaxy table, five centres: clusters 0, 1 and 3 (10 degrees apart), a centre with no galaxies (skipped:
    too few members) and one whose members share one redshift (skipped: undefined features), in between. The
    catalog's rows are the set model's answers for the clusters left, in the centres' order, each what `query`
    gives for the same members and centre (every cluster here is below the model's member cap)."""
    kept, ra_all, dec_all, z_all, m_all = [], [], [], [], []
    for k, ra_c in ((0, 150.0), (1, 160.0), (3, 180.0)):
        r, v, m = _cluster(k)
        ra, dec, z = _sky(r, v, ra_c, seed=k)
        ra_all.append(ra)
        dec_all.append(dec)
        z_all.append(z)
        m_all.append(m)
        kept.append((10 + k, ra_c, ra, dec, z, m))
    flat_r, _, flat_m = _cluster(2)  # identical velocities: sigma_v undefined
    ra, dec, _ = _sky(flat_r, np.zeros(len(flat_r)), 200.0, seed=2)
    ra_all.append(ra)
    dec_all.append(dec)
    z_all.append(np.full(len(ra), ZC))
    m_all.append(flat_m)
    centres = [(10, 150.0), (11, 160.0), (99, 170.0), (12, 200.0), (13, 180.0)]
    cols = {"ra": np.concatenate(ra_all), "dec": np.concatenate(dec_all), "z": np.concatenate(z_all)}
    if columns == "with_mstar":
        cols["log10_mstar"] = np.concatenate(m_all)
    galaxies = _write(tmp_path / "galaxies.csv", **cols)
    table = tmp_path / "centres.csv"
    table.write_text("id,ra,dec,z\n" + "".join(f"{i},{a},{DECC},{ZC}\n" for i, a in centres))
    code = main(["infer", "--model", str(run_models), "--members", str(galaxies), "--clusters", str(table),
                 "--out", str(tmp_path / "cat")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "(id 99): cluster skipped, only 0 members" in err and "(id 12): cluster skipped, its features" in err
    used = run_models / "set" if columns == "with_mstar" else run_models / "dynamics" / "set"
    assert f"model:   {used} (" in out and "set model" in out
    answers = []
    for cid, ra_c, ra, dec, z, m in kept:
        member_cols = {"ra": ra, "dec": dec, "z": z, **({"log10_mstar": m} if columns == "with_mstar" else {})}
        path = _write(tmp_path / f"q{cid}.csv", **member_cols)
        s = json.loads(_query(capsys, "--model", str(run_models), "--members", str(path), "--json", "--center",
                              str(ra_c), str(DECC), str(ZC)))
        assert s["model"] == str(used) and s["model_kind"] == "set"
        answers.append(s)
    for name in ("catalog.h5", "catalog.fits"):
        cat = read_catalog(tmp_path / "cat" / name)
        assert cat.meta["provenance"]["model_kind"] == "set" and cat.meta["provenance"]["model"] == str(used)
        assert list(cat["cluster_id"]) == [10, 11, 13]
        for row, s in enumerate(answers):
            assert cat["n_members"][row] == s["n_members"]
            for key in ("log10_m200c_mode", "log10_m200c_p16", "log10_m200c_p84"):
                assert cat[key][row] == pytest.approx(s[key], abs=1e-5), (row, key)
