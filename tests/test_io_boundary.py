"""Where files are read and written: the numerical cores do no I/O, and the modules that do are the ones README
names ("Development") and DEVELOPERS.md ("Conventions").

A module does I/O here when its source (functions included) imports a file-format or file-system library, calls
``open``, or calls a file method (``read_text``, ``mkdir``, ``savefig``, ``to_parquet``, ``np.save``...); a core is
pure when neither it nor any project module it imports, transitively, does — with one documented exception:
``inference.posterior.prepare`` resolves its target prior through :mod:`inference.priors`, which reads a
two-column table when the prior names a file. The probe reads the sources, as ``tests/test_layers.py`` does for
imports: it is a guard against I/O creeping into a core, not a sandbox.
"""

from __future__ import annotations

import ast

import pytest

from pipeline.imports import ROOT, closure, module_file, modules

#: libraries whose import means reading or writing files
IO_LIBRARIES = ("h5py", "pyarrow", "astropy.io", "astropy.table", "matplotlib", "tomllib", "pickle", "shutil",
                "tempfile", "msgpack", "flax.serialization", "dask.dataframe", "fitsio")
#: methods and functions that read or write files (pathlib, numpy, pandas, matplotlib, os)
IO_CALLS = frozenset({"read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink", "rmdir", "rename",
                      "touch", "iterdir", "glob", "rglob", "savefig", "to_parquet", "read_parquet", "read_csv",
                      "to_csv", "read_hdf", "to_hdf", "fromfile", "tofile", "save", "savez", "savez_compressed",
                      "load", "loadtxt", "savetxt", "genfromtxt", "fsync", "makedirs", "remove", "rmtree", "listdir",
                      "scandir", "open"})

#: the numerical cores: pure functions on arrays and specs (README "Development", DEVELOPERS.md "Conventions")
PURE = (
    "pipeline.cosmology", "pipeline.snapshot", "pipeline.scaling", "pipeline.errors",
    "ingest.schema", "ingest.units", "ingest.checks", "ingest.synth.box", "ingest.synth.massfunction",
    "ingest.synth.clustering", "ingest.synth.nfw", "ingest.synth.subhalos", "ingest.synth.smhm",
    "ingest.synth.velocity", "ingest.synth.infall", "ingest.synth.starformation", "ingest.synth.photometry",
    "ingest.synth.galaxy_physics", "ingest.synth.realism", "ingest.synth.geometry", "ingest.synth.hod",
    "features.cylinder", "features.centring", "features.regions", "features.definitions", "features.ragged",
    "features.members", "features.sets", "features.sky",
    "models.spec", "models.networks", "models.densities", "models.flow", "models.training", "models.bayes",
    "models.model", "models.prior", "models.typicality", "models.msigma",
    "models.set_batches", "models.set_encoder", "models.set_training",
    "inference.posterior", "inference.summaries", "inference.calibration", "inference.metrics",
    "inference.diagnostics", "inference.acceptance", "inference.selection", "inference.population",
)
#: I/O a core may reach through its imports: a target prior given as a table file (``posterior.prepare``)
ALLOWED_THROUGH_IMPORTS = frozenset({"inference.priors"})
#: the inference modules whose own code reads or writes files, and what (README "Development")
INFERENCE_IO = {
    "inference.member_table": "reads members files (CSV, ECSV, FITS, HDF5)",
    "inference.priors": "reads a two-column prior table",
    "inference.plots": "writes PNG plots",
    "inference.query": "loads the model directory and the members file, writes the --plot",
    "inference.validate": "loads the models and msigma.json, writes metrics.json and the plots",
}


def direct_io(name: str) -> list[str]:
    """What module ``name``'s own source does that reads or writes files (empty: nothing)."""
    path = module_file(name)
    assert path is not None, name
    return io_in(ast.parse(path.read_text(), filename=str(path)))


def io_in(tree: ast.AST) -> list[str]:
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(f"import {a.name}" for a in node.names if a.name.startswith(IO_LIBRARIES))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith(IO_LIBRARIES):
                found.add(f"from {node.module}")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.add("open()")
            elif isinstance(func, ast.Attribute) and func.attr in IO_CALLS:
                found.add(f".{func.attr}()")
    return sorted(found)


def test_the_probe_sees_io():
    probe = ast.parse("import h5py\nfrom astropy.table import Table\ndef f(p):\n    open(p)\n    p.write_text('x')\n"
                      "    np.save(p, 1)\n    fig.savefig(p)\n    import matplotlib.pyplot as plt\n")
    assert io_in(probe) == [".save()", ".savefig()", ".write_text()", "from astropy.table", "import h5py",
                            "import matplotlib.pyplot", "open()"]
    assert io_in(ast.parse("import numpy as np\ndef f(x):\n    return np.sum(x).replace(1)\n")) == []
    for name in ("models.io", "features.io", "catalogs.hdf5", "inference.plots", "ingest.writers", "pipeline.files"):
        assert direct_io(name), name


@pytest.mark.parametrize("name", PURE)
def test_numerical_cores_do_no_io(name):
    assert name in modules(), f"{name} is gone: update PURE, README and DEVELOPERS.md"
    assert not direct_io(name), f"{name} is a numerical core but does I/O: {direct_io(name)}"
    doing = {m: direct_io(m) for m in closure([name]) if m not in ALLOWED_THROUGH_IMPORTS}
    doing = {m: what for m, what in doing.items() if what}
    assert not doing, f"{name} is a numerical core (README 'Development') but does I/O through {doing}"


def test_the_inference_modules_that_do_io_are_the_ones_readme_names():
    inference = [m for m in modules() if m.startswith("inference.")]
    doing = sorted(m for m in inference if direct_io(m))
    assert doing == sorted(INFERENCE_IO)
    development = (ROOT / "README.md").read_text().split("\n## Development\n", 1)[1]
    for name in INFERENCE_IO:
        assert f"`{name.split('.')[1]}.py`" in development, f"README 'Development' does not name {name}"
