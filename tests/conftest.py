"""Shared fixtures. Tool caches go under a per-session temporary directory, never the home folder.

Under pytest-xdist (``make test`` runs two workers) every worker is a session of its own: its own cache directory,
Prefect home and temporary Prefect server, tiny box and compilation cache. XLA's compilations are kept on disk for
the session (``JAX_COMPILATION_CACHE_DIR``, inherited by the commands tests start): the flow's stages, the
commands' trainings and the posteriors re-run the same programs many times, and a program read back is the one
compiled (tests that compare processes, e.g. tests/test_determinism.py, start theirs without it).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

_INHERITED_CACHE = os.environ.get("CLUSTERMASS_CACHE")
_CACHE = tempfile.mkdtemp(prefix="clustermass-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
if os.environ.get("PYTEST_XDIST_WORKER") and _INHERITED_CACHE:
    # a worker inherits the controller's environment: its tool caches go under this worker's directory instead
    for _var in ("PREFECT_HOME", "MPLCONFIGDIR", "XDG_CACHE_HOME", "JAX_COMPILATION_CACHE_DIR"):
        if os.environ.get(_var, "").startswith(_INHERITED_CACHE):
            del os.environ[_var]
os.environ["CLUSTERMASS_CACHE"] = _CACHE
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
#: XLA programs compiled in this session, kept for it: every compilation is written (none is too quick to keep)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(_CACHE, "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from pipeline.caches import configure_caches  # noqa: E402
from pipeline.determinism import configure_determinism  # noqa: E402

configure_caches()
configure_determinism()  # as the CLI does, before any jax computation

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from ingest.schema import GALAXIES, HALOS, Schema  # noqa: E402
from pipeline.cosmology import MDPL2  # noqa: E402
from pipeline.snapshot import Snapshot  # noqa: E402

#: the modules that take longest, longest first (their summed test times in one ``make test --junitxml`` run,
#: 2026-12), run first: ``make test``'s two workers take whole modules in collection order (``--dist loadscope
#: --no-loadscope-reorder``), so starting with the longest lets them finish together. Order only; the other
#: modules follow in pytest's own order.
SLOWEST_MODULES_FIRST = ("test_pipeline_flow.py", "test_models.py", "test_query.py", "test_set_stage.py",
                         "test_set_model.py", "test_bayes.py", "test_query_set.py", "test_flow.py",
                         "test_synth_io.py", "test_synth_physics.py", "test_flow_trust.py", "test_centring.py",
                         "test_inference.py", "test_set_model_io.py", "test_realism.py", "test_determinism.py",
                         "test_cli.py", "test_galaxy_physics.py", "test_disk_full.py", "test_posterior_validity.py",
                         "test_population_cli.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: k for k, name in enumerate(SLOWEST_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each module's own order is kept


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
