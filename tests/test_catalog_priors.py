"""What a cosmology analysis needs is in the catalog (issue 20.4): the grid, the target prior and the training
(interim) prior on the grid, in both formats; ``read_posteriors`` refuses, in one line naming the file, a catalog it
could not use (PDF column missing, PDFs that do not integrate to 1, a grid mismatch, a prior missing or of the wrong
length)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from astropy.io import fits
from test_catalogs import make_columns
from test_model_files import R_APERTURE, SNAPSHOT, build_run_models, sky_cluster_files, toy_clusters

from catalogs import CatalogError, read_catalog, read_posteriors, write_catalog
from catalogs.schema import PDF_NAME, PDF_NORM_TOLERANCE, PDF_UNIT, PRIORS
from catalogs.stage import catalog_stage
from clustermass.cli import main
from features.definitions import compute_features
from inference.posterior import default_grid
from models.stage import load_models

GRID = np.linspace(13.0, 15.5, 64)
PROVENANCE = {"code_version": "test", "target_prior": "flat", "training_prior": "test KDE"}


def normalised_columns(n: int = 20) -> dict[str, np.ndarray]:
    cols = make_columns(n, len(GRID), seed=3)
    pdf = np.exp(-0.5 * ((GRID[None, :] - np.linspace(13.5, 15.0, n)[:, None]) / 0.2) ** 2)
    cols[PDF_NAME] = (pdf / np.trapezoid(pdf, GRID, axis=1)[:, None]).astype(np.float32)
    return cols


def priors(n: int = len(GRID)) -> dict[str, np.ndarray]:
    grid = np.linspace(GRID[0], GRID[-1], n)
    training = np.exp(-0.5 * ((grid - 13.8) / 0.4) ** 2)
    return {"target_prior": np.full(n, 1.0 / (grid[-1] - grid[0])), "training_prior": training}


def replace_array(path: Path, name: str, data: np.ndarray) -> None:
    """Overwrite the grid or a prior of a written catalog with ``data``: the HDF5 dataset ``name``, or the FITS
    image extension of that name (``log10_m200c_grid`` is the extension GRID)."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as f:
            del f[name]
            f[name] = data
    else:
        with fits.open(path, mode="update") as hdul:
            hdul["GRID" if name == "log10_m200c_grid" else name.upper()].data = data


def one_line(exc: pytest.ExceptionInfo, path, *words: str) -> None:
    text = str(exc.value)
    assert "\n" not in text and str(path) in text, text
    for word in words:
        assert word in text, text


@pytest.fixture(scope="module")
def run_catalogs(tmp_path_factory):
    root = tmp_path_factory.mktemp("priors")
    models = build_run_models(root / "model")
    offsets, r, v, m, mass = toy_clusters(8, seed=5)
    table = pd.DataFrame(compute_features(offsets, r, v, m, r_aperture=R_APERTURE))
    table["cluster_id"], table["los"], table["log10_m200c_true"] = np.arange(8), 0, mass
    paths = catalog_stage(table, models, root / "cat", prior="flat", snapshot=SNAPSHOT,
                          sample={"volume": 2.0e6, "selection": '{"edges": [13.0], "fraction": []}'})
    return models, paths


def test_a_run_catalog_carries_both_priors_on_its_grid_in_both_formats(run_catalogs):
    models, (h5_path, fits_path) = run_catalogs
    h5, ft = read_posteriors(h5_path), read_posteriors(fits_path)
    np.testing.assert_array_equal(h5.grid, ft.grid)
    np.testing.assert_array_equal(h5.target_prior, ft.target_prior)
    np.testing.assert_array_equal(h5.training_prior, ft.training_prior)
    np.testing.assert_array_equal(h5.pdf, ft.pdf)
    model = load_models(models)["flow"]
    grid = default_grid(model)
    np.testing.assert_array_equal(h5.grid, grid)
    # the training prior is the model's KDE of its training masses on the grid, as the correction divided by
    np.testing.assert_allclose(h5.training_prior, model.training_prior(grid), rtol=1e-12, atol=0)
    assert np.ptp(h5.training_prior) > 0
    # "flat": uniform per dex and normalised on the grid
    np.testing.assert_allclose(h5.target_prior, 1.0 / (grid[-1] - grid[0]), rtol=1e-12)
    assert np.trapezoid(h5.target_prior, grid) == pytest.approx(1.0, abs=1e-12)
    assert h5.provenance["target_prior"] == "flat" and h5.provenance["training_prior"].startswith("KDE of")
    with h5py.File(h5_path, "r") as f:
        for spec in PRIORS:
            assert f[spec.name].attrs["unit"] == PDF_UNIT and f[spec.name].attrs["description"] == spec.description
    with fits.open(fits_path) as hdul:
        for spec in PRIORS:
            hdr = hdul[spec.name.upper()].header
            assert hdr["CMUNIT"] == PDF_UNIT and hdr["CMDESC"] == spec.description
        # the priors are images, so a plain Table.read still finds exactly one table
        assert [h.name for h in hdul if not h.is_image] == ["CATALOG"]


def test_a_tinker_catalog_stores_the_normalised_tinker_prior(run_catalogs, tmp_path):
    models, _ = run_catalogs
    offsets, r, v, m, _mass = toy_clusters(3, seed=6)
    table = pd.DataFrame(compute_features(offsets, r, v, m, r_aperture=R_APERTURE))
    table["cluster_id"], table["los"] = np.arange(3), 0
    path = catalog_stage(table, models, tmp_path, prior="tinker08", snapshot=SNAPSHOT)[1]
    cat = read_posteriors(path)
    assert np.trapezoid(cat.target_prior, cat.grid) == pytest.approx(1.0, abs=1e-12)
    assert np.all(np.diff(cat.target_prior) < 0)  # a mass function falls with mass
    assert cat.provenance["target_prior"] == "tinker08"


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_priors_survive_a_round_trip_and_a_conversion(tmp_path, suffix):
    path = write_catalog(tmp_path / f"cat{suffix}", normalised_columns(), GRID, PROVENANCE, priors=priors())
    cat = read_posteriors(path)
    for name, values in priors().items():
        np.testing.assert_array_equal(getattr(cat, name), values)
    other = ".fits" if suffix == ".h5" else ".h5"
    converted = read_posteriors(write_catalog(tmp_path / f"copy{other}", read_catalog(path)))
    np.testing.assert_array_equal(converted.training_prior, cat.training_prior)
    np.testing.assert_array_equal(converted.grid, cat.grid)


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_pdfs_that_do_not_integrate_to_one_are_refused(tmp_path, suffix):
    cols = normalised_columns()
    cols[PDF_NAME][4] *= 1.01
    cols[PDF_NAME][7] = np.nan  # an INVALID_OUTPUT row is NaN throughout: skipped, not refused
    path = write_catalog(tmp_path / f"cat{suffix}", cols, GRID, PROVENANCE, priors=priors())
    with pytest.raises(CatalogError) as exc:
        read_posteriors(path)
    one_line(exc, path, PDF_NAME, "row 5", "integrate to 1", str(PDF_NORM_TOLERANCE), "1 rows")
    assert len(read_catalog(path)) == 20  # the table itself still reads
    cols[PDF_NAME][4] /= 1.01
    assert read_posteriors(write_catalog(tmp_path / f"ok{suffix}", cols, GRID, PROVENANCE, priors=priors()))


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_a_catalog_without_priors_is_refused(tmp_path, suffix):
    path = write_catalog(tmp_path / f"cat{suffix}", normalised_columns(), GRID, PROVENANCE)
    with pytest.raises(CatalogError) as exc:
        read_posteriors(path)
    one_line(exc, path, "target_prior", "prior on the grid is missing", "64 values")


def test_a_prior_missing_from_a_file_is_refused(tmp_path):
    path = write_catalog(tmp_path / "cat.h5", normalised_columns(), GRID, PROVENANCE, priors=priors())
    with h5py.File(path, "r+") as f:
        del f["training_prior"]
    with pytest.raises(CatalogError) as exc:
        read_posteriors(path)
    one_line(exc, path, "training_prior", "missing")


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_a_prior_of_the_wrong_length_is_refused(tmp_path, suffix):
    path = write_catalog(tmp_path / f"cat{suffix}", normalised_columns(), GRID, PROVENANCE, priors=priors())
    replace_array(path, "target_prior", np.ones(50))
    with pytest.raises(CatalogError) as exc:
        read_posteriors(path)
    one_line(exc, path, "target_prior", "(64,)", "one value per grid point")
    with pytest.raises(CatalogError) as exc:  # nor can such priors be written
        write_catalog(tmp_path / f"bad{suffix}", normalised_columns(), GRID, PROVENANCE, priors=priors(50))
    one_line(exc, tmp_path / f"bad{suffix}", "target_prior", "(64,)")


def test_a_missing_pdf_column_is_refused(tmp_path):
    path = write_catalog(tmp_path / "cat.h5", normalised_columns(), GRID, PROVENANCE, priors=priors())
    with h5py.File(path, "r+") as f:
        del f[PDF_NAME]
    with pytest.raises(CatalogError) as exc:
        read_posteriors(path)
    one_line(exc, path, PDF_NAME, "missing")


@pytest.mark.parametrize("suffix", [".h5", ".fits"])
def test_a_grid_that_does_not_match_the_pdfs_is_refused(tmp_path, suffix):
    path = write_catalog(tmp_path / f"cat{suffix}", normalised_columns(), GRID, PROVENANCE, priors=priors())
    replace_array(path, "log10_m200c_grid", GRID[:-1])
    with pytest.raises(CatalogError) as exc:
        read_posteriors(path)
    one_line(exc, path, PDF_NAME)
    assert re.search(r"\b63\b", str(exc.value)), str(exc.value)


def readme_example() -> str:
    """The python block of README's section "Using the catalog in a cosmology analysis"."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Using the catalog in a cosmology analysis", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_reads_the_fits_catalog_and_forms_the_likelihoods(run_catalogs, tmp_path, monkeypatch,
                                                                             capsys):
    _, (_, fits_path) = run_catalogs
    (tmp_path / "run").mkdir()
    shutil.copy(fits_path, tmp_path / "run" / "catalog.fits")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), scope)
    cat = read_posteriors(fits_path)
    expected = cat.pdf / cat.target_prior
    expected /= np.trapezoid(expected, cat.grid, axis=1)[:, None]
    np.testing.assert_allclose(scope["like"], expected, rtol=1e-12)
    np.testing.assert_array_equal(scope["training"], cat.training_prior)
    assert scope["prior_name"] == "flat"
    assert "8 clusters, target prior flat" in capsys.readouterr().out


def test_a_real_catalog_carries_both_priors(run_catalogs, tmp_path, capsys):
    """`clustermass infer --members --clusters` (catalogs/real.py) writes the priors as a run's catalog does."""
    models, (run_h5, _) = run_catalogs
    galaxies, centres = sky_cluster_files(tmp_path)
    code = main(["infer", "--model", str(models), "--members", str(galaxies), "--clusters", str(centres), "--out",
                 str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    run = read_posteriors(run_h5)
    for name in ("catalog.h5", "catalog.fits"):
        cat = read_posteriors(tmp_path / "out" / name)
        np.testing.assert_array_equal(cat.target_prior, run.target_prior)  # both "flat" on the model's grid
        np.testing.assert_array_equal(cat.training_prior, run.training_prior)


def test_a_catalog_records_the_volume_and_selection_of_its_hosts(run_catalogs, tmp_path):
    """The population analysis needs the volume the catalog's hosts sample and the probability that a host of a
    given mass was observed (the host cut and the mass-balanced bins, features/balance.py)."""
    import json

    from catalogs.stage import catalog_sample

    meta = {"config": {"cylinder": {"host_log10_m200c_min": 13.0}}, "snapshot": {"box_size": 100.0},
            "host_selection": {"edges": [13.0, 13.1, 13.2], "fraction": [0.25, 0.5]}}
    ids = np.array([1, 1, 1, 2, 2, 3, 4, 4, 5, 6])  # six hosts, two of them held out (rows of hosts 2 and 5)
    keep = np.isin(ids, [2, 5])
    sample = catalog_sample(meta, ids, keep)
    assert sample["volume"] == pytest.approx(100.0**3 * 2 / 6)
    selection = json.loads(sample["selection"])
    assert selection["edges"] == [13.0, 13.1, 13.2] and selection["fraction"] == [0.25, 0.5]
    # without balancing the selection is the host cut alone
    plain = json.loads(catalog_sample({**meta, "host_selection": {"edges": [], "fraction": []}}, ids, keep)
                       ["selection"])
    assert plain["edges"] == [13.0] and plain["fraction"] == []
    models, _ = run_catalogs
    offsets, r, v, m, _mass = toy_clusters(3, seed=6)
    table = pd.DataFrame(compute_features(offsets, r, v, m, r_aperture=R_APERTURE))
    table["cluster_id"], table["los"] = np.arange(3), 0
    for path in catalog_stage(table, models, tmp_path, prior="flat", snapshot=SNAPSHOT, sample=sample):
        provenance = read_posteriors(path).provenance
        assert float(provenance["volume"]) == pytest.approx(sample["volume"])
        assert json.loads(provenance["selection"]) == selection
