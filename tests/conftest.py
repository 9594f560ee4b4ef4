"""Shared fixtures. Tool caches go under a per-session temporary directory, never the home folder."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_CACHE = tempfile.mkdtemp(prefix="clustermass-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["CLUSTERMASS_CACHE"] = _CACHE
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pipeline.caches import configure_caches  # noqa: E402
from pipeline.determinism import configure_determinism  # noqa: E402

configure_caches()
configure_determinism()  # as the CLI does, before any jax computation

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ingest.schema import GALAXIES, HALOS, Schema  # noqa: E402
from pipeline.cosmology import MDPL2  # noqa: E402
from pipeline.snapshot import Snapshot  # noqa: E402


@pytest.fixture
def snapshot() -> Snapshot:
    return Snapshot(box_size=100.0, scale_factor=0.8951, cosmology=MDPL2, name="test-box")


def fake_table(schema: Schema, n: int, box: float = 100.0, seed: int = 0) -> dict[str, np.ndarray]:
    """A tiny catalog with every column of ``schema`` filled with plausible values in canonical units."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for col in schema.columns:
        dt = col.numpy_dtype
        if col.kind == "id":
            out[col.name] = np.arange(1, n + 1, dtype=dt) * 7
        elif dt.kind == "i":
            out[col.name] = np.zeros(n, dtype=dt) if col.name == "flags" else np.full(n, -1, dtype=dt)
        elif col.kind == "position":
            out[col.name] = rng.uniform(0.0, box, n).astype(dt)
        elif col.name in ("sm", "obs_sm", "icl"):
            out[col.name] = (10 ** rng.uniform(9.5, 12.0, n)).astype(dt)
        elif col.unit == "Msun/h":
            out[col.name] = (10 ** rng.uniform(11.0, 15.0, n)).astype(dt)
        elif col.unit == "Mpc/h":
            out[col.name] = rng.uniform(0.01, 2.0, n).astype(dt)
        elif col.unit == "km/s":
            out[col.name] = rng.normal(0.0, 400.0, n).astype(dt)
        else:
            out[col.name] = rng.uniform(0.0, 1.0, n).astype(dt)
    return out


@pytest.fixture
def halo_table() -> dict[str, np.ndarray]:
    return fake_table(HALOS, 500)


@pytest.fixture
def galaxy_table() -> dict[str, np.ndarray]:
    return fake_table(GALAXIES, 500, seed=1)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for the whole session (~8 s to start, once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


TINY_RUN_CONFIG = """\
# a box that runs end to end in seconds: 110 Mpc/h, one ensemble member, four epochs
[synth]
box_size = 110.0
log10_mmin = 11.5
workers = 1
[observe]
min_members = 5
regions_per_side = 2
[train]
ensemble = 1
max_epochs = 4
hidden = [32, 32]
[output]
dir = "unused"
"""


@pytest.fixture(scope="session")
def tiny_run_config() -> str:
    """The text of a configuration for a tiny synthetic run (see :data:`TINY_RUN_CONFIG`)."""
    return TINY_RUN_CONFIG


#: ``clustermass synth`` arguments of the tiny box: the [synth] of :data:`TINY_RUN_CONFIG`, HDF5
TINY_BOX_ARGS = ("--box-size", "110", "--log10-mmin", "11.5", "--workers", "1", "--quiet")


@pytest.fixture(scope="session")
def tiny_box(tmp_path_factory):
    """The directory of one 110 Mpc/h synthetic box (``halos.h5``, ``galaxies.h5``, ``snapshot.json``...; ~70 MB,
    ~3 s), made once per session (once per xdist worker) by ``clustermass synth`` with :data:`TINY_BOX_ARGS` — the
    box :data:`TINY_RUN_CONFIG` synthesises. Shared: read it, never write into it (copy a file to change it); the
    session fails at teardown if a file in it changed."""
    from clustermass.cli import main

    out = tmp_path_factory.mktemp("tiny-box") / "box"
    assert main(["synth", "--out", str(out), *TINY_BOX_ARGS]) == 0
    stamps = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in out.iterdir()}
    yield out
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in out.iterdir()} == stamps, \
        "a test wrote into the shared tiny box"
