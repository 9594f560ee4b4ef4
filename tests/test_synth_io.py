"""The synthetic box on disk: what `synth` writes is what the readers give back, in every format."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from ingest.catalog import read_galaxies, read_halos
from ingest.synth.box import SynthConfig, generate_box
from ingest.synth.synthesize import OUTPUT_FORMATS, output_paths, synthesize

SMALL = SynthConfig(box_size=60.0, seed=11, log10_mmin=11.5, cells_per_side=2)


@pytest.fixture(scope="module")
def expected():
    return generate_box(SMALL)


@pytest.mark.parametrize("fmt", list(OUTPUT_FORMATS))
def test_synth_files_read_back_as_generated(tmp_path, fmt, expected):
    result = synthesize(tmp_path, SMALL, fmt=fmt)
    assert (result.halos, result.galaxies) == output_paths(tmp_path, fmt)
    assert result.n_halos == len(expected.halos["halo_id"]) > 100
    assert result.n_galaxies == len(expected.galaxies["galaxy_id"]) > 50
    halos = read_halos(result.halos)
    galaxies = read_galaxies(result.galaxies)
    assert halos.snapshot == galaxies.snapshot == SMALL.snapshot
    h = halos.frame.compute()
    g = galaxies.frame.compute()
    for col in ("halo_id", "upid", "m200c", "rvir", "x", "vz"):
        np.testing.assert_allclose(h[col].to_numpy(), expected.halos[col], rtol=1e-6, err_msg=col)
    for col in ("galaxy_id", "upid", "obs_sm", "y", "vx", "r"):
        np.testing.assert_allclose(g[col].to_numpy(), expected.galaxies[col], rtol=1e-6, err_msg=col)
    meta = json.loads(result.metadata.read_text())
    assert meta["box_size"] == 60.0 and meta["cosmology"]["name"] == "mdpl2"
    assert meta["synth"] == json.loads(json.dumps(SMALL.to_dict()))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [result.halos.name, result.galaxies.name, "snapshot.json", "realism.json", "realism.png", "host_physics.h5"]
    )


def test_synth_is_identical_for_any_number_of_workers(tmp_path):
    a = synthesize(tmp_path / "a", SMALL, fmt="native", workers=1)
    b = synthesize(tmp_path / "b", SMALL, fmt="native", workers=2)
    assert a.galaxies.read_bytes() == b.galaxies.read_bytes()
    assert a.halos.read_bytes() == b.halos.read_bytes()
    with h5py.File(a.hosts) as ha, h5py.File(b.hosts) as hb:  # the per-host galaxy physics, too
        assert ha.attrs["n_rows"] == hb.attrs["n_rows"] > 0
        assert all(np.array_equal(ha[k][:], hb[k][:]) for k in ha)


def test_interrupted_synth_leaves_no_output(tmp_path, monkeypatch):
    import ingest.synth.synthesize as mod

    calls = {"n": 0}
    real = mod.generate_cell

    def failing(config, index):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(config, index)

    monkeypatch.setattr(mod, "generate_cell", failing)
    with pytest.raises(KeyboardInterrupt):
        synthesize(tmp_path, SMALL, fmt="hdf5")
    assert list(tmp_path.iterdir()) == []


def test_stale_partials_are_removed(tmp_path):
    (tmp_path / ".halos.h5.partial").write_bytes(b"junk")
    synthesize(tmp_path, SMALL, fmt="hdf5")
    assert not list(tmp_path.glob(".*"))
