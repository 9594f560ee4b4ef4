"""``clustermass population CATALOG --out DIR`` (issue 20.3): the mass function of a catalog's clusters, on tiny mock
catalogs written with the catalog writers; bad catalogs and options refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_catalog_priors import readme_example
from test_catalogs import make_columns

from catalogs import CatalogError, read_catalog, write_catalog
from catalogs.population import population_summary
from catalogs.schema import PDF_NAME
from clustermass.cli import main
from inference.priors import tinker08
from pipeline.cosmology import MDPL2
from pipeline.snapshot import Snapshot

GRID = np.linspace(13.3, 15.6, 231)
SNAPSHOT = Snapshot(box_size=300.0, scale_factor=0.8951, cosmology=MDPL2, name="test")
VOLUME = 300.0**3  # every host of the box is in the catalog
SIGMA = 0.13  # dex: each row's likelihood is a Gaussian of this width around its observed mass


def tinker(x: np.ndarray) -> np.ndarray:
    """dn/dlog10 M [(Mpc/h)^-3 per dex] of the test snapshot: the code path the command uses."""
    return np.exp(tinker08(np.asarray(x, dtype=np.float64), SNAPSHOT).log_density)


def mock_columns(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A box's hosts above 10^13.5 drawn from Tinker08 x VOLUME, two lines of sight each (some lost), as catalog
    columns under a flat prior; and the row each host is expected to be represented by (lowest usable los)."""
    rng = np.random.default_rng(seed)
    xs = np.linspace(13.5, 15.5, 4001)
    dens = tinker(xs) * VOLUME
    n = rng.poisson(np.trapezoid(dens, xs))
    cdf = np.cumsum(dens)
    true = np.interp(rng.random(n), cdf / cdf[-1], xs)
    ids = np.repeat(np.arange(n) + 1000, 2)
    los = np.tile([0, 1], n)
    keep = np.ones(2 * n, bool)
    keep[0:40:2] = False  # 20 hosts lost their los 0 (too few members): their los 1 represents them
    ids, los, mass = ids[keep], los[keep], np.repeat(true, 2)[keep]
    observed = mass + rng.normal(0.0, SIGMA, mass.size)
    pdf = np.exp(-0.5 * ((GRID[None, :] - observed[:, None]) / SIGMA) ** 2)
    pdf /= np.trapezoid(pdf, GRID, axis=1)[:, None]
    cols = make_columns(mass.size, len(GRID), seed=seed)
    cols.update(cluster_id=ids.astype(np.int64), los=los.astype(np.int16), log10_m200c_true=mass.astype(np.float32),
                log10_m200c_mode=np.clip(observed, GRID[0], GRID[-1]).astype(np.float32),
                flags=np.zeros(mass.size, np.int32))
    cols[PDF_NAME] = pdf.astype(np.float32)
    first = np.flatnonzero(los == 0)[0] + 4  # a host whose los 0 is INVALID_OUTPUT (NaN): its los 1 is used
    cols[PDF_NAME][first] = np.nan
    cols["flags"][first] = 32
    usable = np.isfinite(cols[PDF_NAME]).all(axis=1)
    expected = []
    for host in np.unique(ids):  # the usable row of lowest los of each host, row by row
        rows = np.flatnonzero((ids == host) & usable)
        expected.append(rows[np.argmin(los[rows])])
    return cols, np.sort(expected)


def priors() -> dict[str, np.ndarray]:
    return {"target_prior": np.full(len(GRID), 1.0 / (GRID[-1] - GRID[0])),
            "training_prior": np.exp(-0.5 * ((GRID - 13.8) / 0.4) ** 2)}


def provenance(**extra: object) -> dict[str, object]:
    return {"code_version": "test", "target_prior": "flat", "training_prior": "test",
            "snapshot": json.dumps(SNAPSHOT.to_dict()), **extra}


@pytest.fixture(scope="module")
def mock(tmp_path_factory):
    root = tmp_path_factory.mktemp("population")
    cols, expected = mock_columns()
    h5 = write_catalog(root / "catalog.h5", cols, GRID, provenance(volume=VOLUME), priors=priors())
    return root, cols, expected, h5


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["population", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_population_recovers_the_mass_function_of_a_mock_catalog(mock, capsys):
    root, cols, expected, h5 = mock
    code, out, err = run(capsys, str(h5), "--out", str(root / "out"), "--bootstrap", "40", "--seed", "3")
    assert code == 0, err
    s = json.loads((root / "out" / "population.json").read_text())
    assert (root / "out" / "population.png").stat().st_size > 10000
    assert s["outputs"] == {"summary": str(root / "out" / "population.json"),
                            "plot": str(root / "out" / "population.png")}
    # one line of sight per host: the lowest usable los, the INVALID_OUTPUT row left out
    assert s["clusters"] == len(np.unique(cols["cluster_id"])) == expected.size
    assert s["rows"] == len(cols["los"]) and s["rows_unusable"] == 1
    edges = np.asarray(s["bins"]["edges"])
    assert edges[0] == pytest.approx(13.3) and 14.0 in edges and 15.0 in edges
    np.testing.assert_array_equal(s["true"]["counts"], np.histogram(cols["log10_m200c_true"][expected], edges)[0])
    modes = cols["log10_m200c_mode"][expected]  # the lines of sight differ here: each its own observed mass
    np.testing.assert_array_equal(s["naive_modes"]["counts"], np.histogram(modes, edges)[0])
    assert s["volume"] == VOLUME and s["volume_source"] == "provenance"
    assert s["within_bin_shape"] == "tinker08 x selection" and s["bootstrap"] == {"replicates": 40, "seed": 3}
    # the amplitude fitted to the true masses is N_in / (V int n_T08 dM), computed here independently
    true = cols["log10_m200c_true"][expected].astype(np.float64)
    fine = np.linspace(14.0, 15.0, 20001)
    analytic = np.sum((true >= 14.0) & (true < 15.0)) / (VOLUME * np.trapezoid(tinker(fine), fine))
    amp = s["amplitude"]
    assert amp["true"]["A"] == pytest.approx(analytic, rel=1e-4)
    assert abs(amp["hierarchical"]["A"] - 1.0) < 4 * amp["hierarchical"]["se"]  # drawn from A = 1
    assert amp["naive_modes"]["A"] > amp["true"]["A"]  # Eddington bias of the modes
    # the verdicts are those of the numbers in the file
    acc = s["acceptance"]
    pulls = np.asarray(acc["recovered_counts"]["pulls"])
    inside = np.asarray(s["bins"]["in_fit_range"])
    np.testing.assert_allclose(pulls, (np.asarray(s["recovered"]["counts"]) - s["true"]["counts"])[inside]
                               / np.asarray(s["recovered"]["sd"])[inside])
    assert acc["recovered_counts"]["every_bin_within_2sd"]["pass"] == bool(np.all(np.abs(pulls) <= 2))
    assert acc["recovered_counts"]["pull_rms_at_most_1.5"]["value"] == pytest.approx(np.sqrt(np.mean(pulls**2)))
    a = acc["amplitude_within_1se_of_true"]
    assert a["pass"] == (abs(amp["hierarchical"]["A"] - amp["true"]["A"]) <= amp["hierarchical"]["se"])
    naive = acc["naive_mode_histogram"]
    assert naive["misses"] == (not (naive["every_bin_within_2sd"]["pass"] and naive["pull_rms_at_most_1.5"]["pass"]))
    assert "14.00-14.10" in out and "Tinker08 amplitude over 14-15" in out and "time:" in out


def test_the_same_summary_from_the_fits_file_and_without_a_volume(mock, tmp_path, capsys):
    _, cols, _, h5 = mock
    fits_path = write_catalog(tmp_path / "catalog.fits", cols, GRID, provenance(), priors=priors())
    code, out, err = run(capsys, str(fits_path), "--out", str(tmp_path / "out"), "--bootstrap", "20")
    assert code == 0, err
    s = json.loads((tmp_path / "out" / "population.json").read_text())
    assert s["amplitude"] == {"skipped": "no volume: give --volume (Mpc/h)^3 or a catalog whose provenance has "
                                         "'volume'"}
    assert "amplitude_within_1se_of_true" not in s["acceptance"] and "amplitude skipped: no volume" in out
    h5_summary = population_summary(h5, bootstrap=20, volume=VOLUME / 2)  # --volume overrides the provenance's
    assert h5_summary["volume"] == VOLUME / 2 and h5_summary["volume_source"] == "--volume"
    np.testing.assert_allclose(h5_summary["recovered"]["counts"], s["recovered"]["counts"], rtol=1e-6)
    assert h5_summary["amplitude"]["true"]["A"] == pytest.approx(2 * population_summary(h5, bootstrap=2)["amplitude"]
                                                                 ["true"]["A"], rel=1e-6)


def test_a_catalog_without_true_masses_and_a_selection_from_the_provenance(tmp_path):
    cols, _ = mock_columns(seed=1)
    selection = {"edges": [13.5, 13.7], "fraction": [0.25]}
    path = write_catalog(tmp_path / "cat.h5", cols, GRID, provenance(volume=VOLUME, selection=json.dumps(selection)),
                         priors=priors())
    s = population_summary(path, bootstrap=10, fit_range=(13.5, 14.5))
    assert s["selection"] == selection
    # the expected count per unit A: a quarter of Tinker08's over 13.5-13.7 (S = 0.25), all of it above
    low, high = np.linspace(13.5, 13.7, 20001), np.linspace(13.7, 14.5, 20001)
    expected = VOLUME * (0.25 * np.trapezoid(tinker(low), low) + np.trapezoid(tinker(high), high))
    assert s["amplitude"]["expected_in_range_for_A_1"] == pytest.approx(expected, rel=1e-5)
    del cols["log10_m200c_true"]
    blind = population_summary(write_catalog(tmp_path / "blind.h5", cols, GRID, provenance(volume=VOLUME),
                                             priors=priors()), bootstrap=10)
    assert blind["true"] is None and "true" not in blind["amplitude"]
    assert blind["acceptance"] == {"skipped": "no log10_m200c_true column: the checks need the true masses (mocks)"}


def small_catalog(path: Path, **options) -> Path:
    cols, _ = mock_columns(seed=2)
    keep = slice(0, 300)
    return write_catalog(path, {k: v[keep] for k, v in cols.items()}, GRID, provenance(), **options)


def refused(capsys, path: Path, out: Path, *words: str) -> str:
    code, _, err = run(capsys, str(path), "--out", str(out), "--bootstrap", "5")
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(path) in err, err
    for word in words:
        assert word in err, err
    assert not (out / "population.json").exists()
    return err


def test_a_catalog_without_its_pdf_column_is_refused_in_one_line(tmp_path, capsys):
    path = small_catalog(tmp_path / "cat.h5", priors=priors())
    with h5py.File(path, "r+") as f:
        del f[PDF_NAME]
    refused(capsys, path, tmp_path / "out", PDF_NAME, "missing")


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_pdfs_that_do_not_integrate_are_refused_in_one_line(tmp_path, capsys, suffix):
    cols, _ = mock_columns(seed=2)
    cols[PDF_NAME][7] *= 1.05
    path = write_catalog(tmp_path / f"cat{suffix}", cols, GRID, provenance(), priors=priors())
    refused(capsys, path, tmp_path / "out", "integrate to 1", "row 8")


def test_a_grid_that_does_not_match_the_pdfs_is_refused_in_one_line(tmp_path, capsys):
    path = small_catalog(tmp_path / "cat.h5", priors=priors())
    with h5py.File(path, "r+") as f:
        del f["log10_m200c_grid"]
        f["log10_m200c_grid"] = GRID[:-1]
    refused(capsys, path, tmp_path / "out", PDF_NAME, str(len(GRID) - 1))


def test_a_catalog_without_priors_is_refused_in_one_line(tmp_path, capsys):
    path = small_catalog(tmp_path / "cat.fits")
    refused(capsys, path, tmp_path / "out", "target_prior", "prior on the grid is missing")


def test_a_bad_selection_in_the_provenance_is_refused_in_one_line(tmp_path, capsys):
    path = small_catalog(tmp_path / "cat.h5", priors=priors())
    bad = write_catalog(tmp_path / "bad.h5", read_catalog(path),
                        provenance=provenance(selection=json.dumps({"edges": [13.5, 13.7], "fraction": [2.0]})))
    refused(capsys, bad, tmp_path / "out", "provenance key 'selection'", "[0, 1]")
    with pytest.raises(CatalogError, match="'volume': expected a positive volume"):
        population_summary(write_catalog(tmp_path / "v.h5", read_catalog(path),
                                         provenance=provenance(volume=-1.0)))


@pytest.mark.parametrize("argv, words", [
    (["--volume", "-5"], ["population --volume", "positive volume"]),
    (["--bootstrap", "1"], ["population --bootstrap", "at least 2"]),
    (["--fit-range", "15", "14"], ["population --fit-range", "LO < HI"]),
    (["--fit-range", "14.05", "15"], ["population --fit-range", "14.05 is not a bin edge"]),
])
def test_bad_options_are_refused_in_one_line(mock, tmp_path, capsys, argv, words):
    _, _, _, h5 = mock
    code, _, err = run(capsys, str(h5), "--out", str(tmp_path / "out"), *argv)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    for word in words:
        assert word in err, err


def test_help_names_the_command_and_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "population" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["population", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--volume VOLUME", "(Mpc/h)^3", "--bootstrap BOOTSTRAP", "(default: 200)", "--fit-range LO HI",
                 "(default: [14.0, 15.0])", "--within-bin {tinker08,flat}", "(default: tinker08)"):
        assert text in out, text


def test_the_readme_example_calls_the_population_inference_as_the_command_does(mock, tmp_path, monkeypatch, capsys):
    """README's "Using the catalog in a cosmology analysis" example, run on the mock catalog as FITS, gives what
    ``clustermass population`` computes from the same rows (same bootstrap seed and replicates)."""
    _, cols, _, _ = mock
    (tmp_path / "run").mkdir()
    path = write_catalog(tmp_path / "run" / "catalog.fits", cols, GRID, provenance(volume=VOLUME), priors=priors())
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    out = capsys.readouterr().out
    flat = population_summary(path, bootstrap=100, seed=1, within_bin="flat")  # the volume of the provenance
    assert scope["volume"] == flat["volume"] == VOLUME
    assert f"{flat['clusters']} clusters, target prior flat" in out and "Tinker08 amplitude" in out
    np.testing.assert_allclose(scope["counts"].counts, flat["recovered"]["counts"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scope["counts"].sd, flat["recovered"]["sd"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(scope["modes"].counts, flat["naive_modes"]["counts"])
    assert scope["amp"].amplitude == pytest.approx(flat["amplitude"]["hierarchical"]["A"], rel=1e-6)
    assert scope["amp"].se == pytest.approx(flat["amplitude"]["hierarchical"]["se"], rel=1e-6)


def test_a_run_catalog_whose_hosts_were_not_subsampled_records_a_plain_cut_and_is_read(tmp_path):
    """A run without balanced bins (or observations written before them) records the host cut alone as its
    selection (catalogs.stage.catalog_sample): one edge and no fraction, read as S = 0 below it and 1 above."""
    from catalogs.stage import catalog_sample

    meta = {"config": {"cylinder": {"host_log10_m200c_min": 13.5}}, "snapshot": {"box_size": 300.0}}
    sample = catalog_sample(meta, np.arange(4), np.ones(4, bool))
    cols, _ = mock_columns(seed=2)
    path = write_catalog(tmp_path / "cat.h5", cols, GRID, provenance(**sample), priors=priors())
    s = population_summary(path, bootstrap=10)
    assert s["selection"] == {"edges": [13.5], "fraction": []} and s["volume"] == VOLUME
    assert s["amplitude"]["hierarchical"]["A"] > 0
