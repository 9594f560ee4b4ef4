"""The provenance of a real catalog (`clustermass infer --members --clusters`, catalogs/real.py) carries the digest
of what configured it, as a run's catalog does (issue 18.8): the same options give the same digest wherever the
catalog is written; another prior, prior table or --far-redshift policy gives another."""

from __future__ import annotations

import re

import pytest
from test_model_files import build_run_models, sky_cluster_files

from catalogs.io import read_catalog
from clustermass.cli import main


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(model directory, galaxy table, centres) of one toy cluster seen on the sky."""
    d = tmp_path_factory.mktemp("real")
    models = build_run_models(d / "model")
    galaxies, centres = sky_cluster_files(d)
    return models, galaxies, centres


def digest(inputs, out, capsys, *options: str) -> str:
    models, galaxies, centres = inputs
    code = main(["infer", "--model", str(models), "--members", str(galaxies), "--clusters", str(centres), "--out",
                 str(out), *options])
    _, err = capsys.readouterr()
    assert code == 0, err
    found = {read_catalog(out / name).meta["provenance"]["config_digest"] for name in ("catalog.h5", "catalog.fits")}
    assert len(found) == 1
    return found.pop()


def test_a_real_catalog_carries_the_digest_of_its_options(inputs, tmp_path, capsys):
    flat = digest(inputs, tmp_path / "a", capsys)
    assert re.fullmatch(r"[0-9a-f]{64}", flat)
    assert digest(inputs, tmp_path / "b", capsys, "--prior", "flat") == flat  # the default, named or not
    assert digest(inputs, tmp_path / "c", capsys, "--far-redshift", "refuse") != flat
    table = tmp_path / "prior.csv"
    table.write_text("log10_m,density\n12,1\n14,2\n16,1\n")
    by_table = digest(inputs, tmp_path / "d", capsys, "--prior", str(table))
    assert by_table not in (flat, "")
    moved = tmp_path / "elsewhere" / "p.csv"
    moved.parent.mkdir()
    moved.write_bytes(table.read_bytes())
    assert digest(inputs, tmp_path / "e", capsys, "--prior", str(moved)) == by_table  # the table's content counts
    table.write_text("log10_m,density\n12,1\n14,3\n16,1\n")
    assert digest(inputs, tmp_path / "f", capsys, "--prior", str(table)) != by_table
