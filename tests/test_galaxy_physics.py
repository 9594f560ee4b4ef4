"""The galaxy-halo connection drawn per host (ingest/synth/galaxy_physics.py): settings, draws, their record, and
that each parameter does to the box what it says. Small boxes (<= 100 Mpc/h, one cell) keep the file fast."""

from __future__ import annotations

import json
import math
import tomllib

import h5py
import numpy as np
import pytest
from scipy import stats

from ingest.config import SynthSection
from ingest.schema import GALAXIES, HALOS
from ingest.synth.box import SynthConfig, generate_box, generate_box_with_hosts, generate_cell, subhalo_min_mass
from ingest.synth.galaxy_physics import (
    GALAXY_PHYSICS,
    HOST_PHYSICS,
    KEYS,
    STREAM_KEYS,
    bounds,
    mean,
    parse_setting,
    rms,
)
from ingest.synth.subhalos import mean_subhalos
from ingest.synth.synthesize import HOST_PHYSICS_FILE, synthesize
from pipeline.config import section
from pipeline.errors import ConfigError

#: every per-host key fixed at the single value the box used before the ranges
FORMER = {"satellite_abundance": 1.0, "velocity_bias": 1.0, "satellite_concentration": 1.0,
          "smhm_scatter_dex": 0.15, "merger_fraction": 0.1}
SMALL = {"box_size": 100.0, "seed": 3, "cells_per_side": 1}


@pytest.fixture(scope="module")
def default_box():
    config = SynthConfig(**SMALL)
    (halos, galaxies), hosts = generate_box_with_hosts(config)
    return config, halos, galaxies, hosts


def _satellites(halos, galaxies, hosts):
    """Satellite galaxies' velocity offsets from their host (km/s, (n, 3)), the host's 1-D dark-matter dispersion
    (vrms / sqrt 3, km/s) and the host's row in ``hosts``."""
    sat = np.flatnonzero(galaxies["upid"] != -1)
    order = np.argsort(halos["halo_id"])
    hrow = order[np.searchsorted(halos["halo_id"], galaxies["upid"][sat], sorter=order)]
    dv = np.column_stack([galaxies[f"v{k}"][sat].astype(np.float64) - halos[f"v{k}"][hrow] for k in "xyz"])
    sigma = halos["vrms"][hrow].astype(np.float64) / math.sqrt(3.0)
    horder = np.argsort(hosts["halo_id"])
    prow = horder[np.searchsorted(hosts["halo_id"], galaxies["upid"][sat], sorter=horder)]
    assert np.array_equal(hosts["halo_id"][prow], galaxies["upid"][sat])
    return dv, sigma, prow


# ---- the ranges ---------------------------------------------------------------------------------------------


def test_default_ranges_are_centred_on_the_former_values_and_hold_the_shifted_universes():
    for key, value in FORMER.items():
        assert mean(getattr(GALAXY_PHYSICS, key)) == pytest.approx(value), key
    assert bounds(GALAXY_PHYSICS.merger_boost_dex) == (0.0, 0.05)  # the former per-merger boost, unchanged
    lo, hi = GALAXY_PHYSICS.velocity_bias
    assert lo <= 0.93 and 1.07 <= hi
    lo, hi = GALAXY_PHYSICS.satellite_abundance
    assert lo <= 0.7 and 1.3 <= hi
    assert all(getattr(SynthConfig(box_size=10.0), k) == getattr(GALAXY_PHYSICS, k) for k in KEYS)


# ---- settings: scalar or range -----------------------------------------------------------------------------


def test_scalar_and_range_settings_parse_and_normalise():
    config = SynthConfig(box_size=10.0, velocity_bias=0.93, satellite_abundance=[1, 1.3],
                         smhm_scatter_dex=(0.2, 0.2), merger_fraction=np.float64(0.2))
    assert config.velocity_bias == 0.93 and isinstance(config.velocity_bias, float)
    assert config.satellite_abundance == (1.0, 1.3) and isinstance(config.satellite_abundance, tuple)
    assert config.smhm_scatter_dex == 0.2  # a range with equal ends is the scalar
    assert config.merger_fraction == 0.2 and type(config.merger_fraction) is float
    assert hash(config) == hash(SynthConfig.from_dict(json.loads(json.dumps(config.to_dict()))))
    assert SynthConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    ("key", "value"),
    [("velocity_bias", [1.1, 0.9]), ("velocity_bias", [0.9]), ("velocity_bias", [0.9, 1.0, 1.1]),
     ("velocity_bias", 0.0), ("velocity_bias", "1.0"), ("velocity_bias", True), ("velocity_bias", float("nan")),
     ("satellite_abundance", -0.1), ("satellite_abundance", [0.5, float("inf")]), ("satellite_concentration", 0.0),
     ("smhm_scatter_dex", [0.1, 1.5]), ("merger_fraction", 1.5), ("merger_boost_dex", [-0.01, 0.05]),
     ("merger_fraction", None)],
)
def test_bad_settings_raise_one_line_config_errors_naming_the_key(key, value):
    with pytest.raises(ConfigError) as err:
        SynthConfig(box_size=10.0, **{key: value})
    message = str(err.value)
    assert message.startswith(f"synth: {key} = ") and "\n" not in message
    assert "range [low, high]" in message


def test_toml_synth_section_takes_scalars_and_ranges():
    text = """
    [synth]
    box_size = 400
    velocity_bias = 0.93
    satellite_abundance = 1.3
    satellite_concentration = [0.5, 1.5]
    smhm_scatter_dex = [0.1, 0.2]
    """
    table = tomllib.loads(text)["synth"]
    synth = section(SynthSection, table, "run.toml [synth]")
    assert synth.velocity_bias == 0.93 and synth.satellite_abundance == 1.3
    assert synth.satellite_concentration == (0.5, 1.5)
    assert synth.merger_fraction == GALAXY_PHYSICS.merger_fraction  # not given: the default range
    config = synth.box_config()
    assert (config.velocity_bias, config.satellite_abundance, config.satellite_concentration) == (0.93, 1.3,
                                                                                                  (0.5, 1.5))
    assert SynthConfig(**synth.box_params()) == config
    assert SynthSection().box_config() == SynthConfig(box_size=SynthSection().box_size)  # defaults: one home
    for bad, fragment in (({"velocity_bias": [1.2, 0.9]}, "velocity_bias: expected a number in [0.1, 3] or a range"),
                          ({"velocity_bias": "fast"}, "velocity_bias: expected a number or a list of numbers, got"),
                          ({"merger_fraction": [0.1, True]}, "merger_fraction: expected a number or a list of")):
        with pytest.raises(ConfigError, match=r"^run.toml \[synth\] ") as err:
            section(SynthSection, bad, "run.toml [synth]")
        assert fragment in str(err.value)


# ---- draws and their record ---------------------------------------------------------------------------------


def test_per_host_draws_lie_in_their_ranges_and_are_recorded(default_box):
    config, halos, _, hosts = default_box
    assert list(hosts) == HOST_PHYSICS.names
    # one row per distinct halo with subhaloes, in catalog order, with its mass and its number of subhaloes
    distinct = halos["upid"] == -1
    ids, counts = np.unique(halos["upid"][~distinct], return_counts=True)
    assert np.array_equal(hosts["halo_id"], ids) and np.array_equal(hosts["n_subhalos"], counts)
    row = np.searchsorted(halos["halo_id"], hosts["halo_id"])
    assert np.array_equal(halos["halo_id"][row], hosts["halo_id"]) and np.all(halos["upid"][row] == -1)
    assert np.array_equal(hosts["m200c"], halos["m200c"][row])
    assert len(hosts["halo_id"]) > 3000
    # uniform within the range, independently of the host's mass and of each other; a host with more satellites
    # is likelier to have one at all (to be recorded), so the abundance is uniform where every host has some
    every = hosts["m200c"] >= 1e13
    assert every.sum() > 300
    for key in STREAM_KEYS:
        lo, hi = bounds(getattr(config, key))
        v = hosts[key].astype(np.float64)
        assert np.all((v >= np.float32(lo)) & (v <= np.float32(hi))), key
        sel = every if key == "satellite_abundance" else slice(None)
        assert stats.kstest((v[sel] - lo) / (hi - lo), "uniform").pvalue > 1e-3, key
        assert abs(stats.spearmanr(v[sel], hosts["m200c"][sel]).statistic) < 0.1, key
    assert abs(np.corrcoef(hosts["velocity_bias"], hosts["satellite_abundance"])[0, 1]) < 0.05
    # the merger tail: a boost in (0, 0.05] dex for ~10% of the hosts (of the probability drawn per host)
    boost = hosts["merger_boost_dex"]
    merger = boost > 0
    assert merger.mean() == pytest.approx(mean(config.merger_fraction), abs=0.015)
    assert np.all(boost[merger] <= np.float32(0.05))
    assert np.mean(hosts["merger_fraction"][merger]) > np.mean(hosts["merger_fraction"][~merger])


def test_fixed_box_has_the_fixed_values_for_every_host_and_one_key_changes_nothing_else():
    fixed = {**FORMER, "velocity_bias": 0.93, "satellite_abundance": 1.3, "merger_boost_dex": 0.04}
    (halos, galaxies), hosts = generate_box_with_hosts(SynthConfig(**SMALL, **fixed))
    for key in STREAM_KEYS:
        assert np.all(hosts[key] == np.float32(fixed[key])), key
    assert set(np.unique(hosts["merger_boost_dex"])) == {np.float32(0.0), np.float32(0.04)}
    # changing one key's value changes nothing drawn for the others (their own stream): the same haloes and
    # galaxies, only the satellites' velocities differ
    (h2, g2), hosts2 = generate_box_with_hosts(SynthConfig(**SMALL, **{**fixed, "velocity_bias": 1.07}))
    distinct = halos["upid"] == -1
    for key in ("halo_id", "upid", "m200c", "x", "rvir", "vrms"):
        assert np.array_equal(h2[key], halos[key]), key
    assert np.array_equal(h2["vx"][distinct], halos["vx"][distinct])
    assert not np.array_equal(h2["vx"][~distinct], halos["vx"][~distinct])
    for key in ("galaxy_id", "obs_sm", "uparent_dist"):
        assert np.array_equal(g2[key], galaxies[key]), key
    assert np.array_equal(hosts2["merger_boost_dex"], hosts["merger_boost_dex"])


def test_same_seed_same_draws_other_cell_or_seed_other_draws():
    config = SynthConfig(box_size=60.0, seed=5, cells_per_side=2)
    a, b = generate_cell(config, 3), generate_cell(config, 3)
    for key in HOST_PHYSICS.names:
        assert np.array_equal(a.hosts[key], b.hosts[key]), key
    other_cell = generate_cell(config, 4).hosts["velocity_bias"]
    other_seed = generate_cell(SynthConfig(box_size=60.0, seed=6, cells_per_side=2), 3).hosts["velocity_bias"]
    n = min(len(other_cell), len(other_seed), len(a.hosts["velocity_bias"]))
    assert not np.array_equal(a.hosts["velocity_bias"][:n], other_cell[:n])
    assert not np.array_equal(a.hosts["velocity_bias"][:n], other_seed[:n])


def test_written_record_is_the_generated_one_in_any_cell_order(tmp_path):
    """Cells (and their hosts' draws) do not depend on one another: generated in any order, in any process, the
    box is the same (across worker processes: tests/test_synth_io.py), and synthesize writes the record."""
    config = SynthConfig(box_size=50.0, seed=8, log10_mmin=11.5, cells_per_side=2)
    backwards = [generate_cell(config, i).hosts for i in reversed(range(8))][::-1]
    expected = {key: np.concatenate([h[key] for h in backwards]) for key in HOST_PHYSICS.names}
    result = synthesize(tmp_path, config, fmt="native")  # cells in index order
    assert result.hosts == tmp_path / HOST_PHYSICS_FILE
    with h5py.File(result.hosts) as f:
        assert f.attrs["n_rows"] == len(expected["halo_id"]) > 100 and f.attrs["catalog"] == "hosts"
        for key in HOST_PHYSICS.names:
            assert np.array_equal(f[key][:], expected[key]), key
            assert f[key].attrs["unit"] == HOST_PHYSICS[key].unit
    meta = json.loads(result.metadata.read_text())
    assert meta["host_physics"] == {"file": HOST_PHYSICS_FILE, "format": "hdf5", "rows": len(expected["halo_id"])}
    assert meta["synth"]["velocity_bias"] == list(GALAXY_PHYSICS.velocity_bias)
    assert SynthConfig.from_dict(meta["synth"]) == config


def test_per_host_parameters_are_not_catalog_columns():
    """They are recorded beside the catalogs only, so no reader, and no feature built from the catalogs, sees
    them: the mock observations could not learn the physics of each host."""
    physics = set(KEYS) | {"n_subhalos"}
    for schema in (HALOS, GALAXIES):
        for column in schema.columns:
            assert not any(column.matches(key) for key in physics), column.name


# ---- what each parameter does -------------------------------------------------------------------------------


def test_velocity_bias_scales_the_satellite_dispersion():
    """b_v = 0.93 vs 1.07 (the issue's shifted universes): satellite velocities about their host are b_v x the
    host's dark-matter dispersion; the same haloes and satellites, so the ratio is 1.07 / 0.93."""
    out = {}
    for b_v in (0.93, 1.07):
        (halos, galaxies), hosts = generate_box_with_hosts(SynthConfig(**SMALL, velocity_bias=b_v))
        dv, sigma, _ = _satellites(halos, galaxies, hosts)
        assert len(sigma) > 5000
        out[b_v] = (dv, sigma)
        # measured with the host's own dispersion: the rms of dv / sigma is b_v, within noise
        measured = math.sqrt(np.mean((dv / sigma[:, None]) ** 2))
        assert measured == pytest.approx(b_v, rel=3.0 / math.sqrt(2 * dv.size) + 1e-3)
    ratio = math.sqrt(np.mean(out[1.07][0] ** 2) / np.mean(out[0.93][0] ** 2))
    assert ratio == pytest.approx(1.07 / 0.93, rel=1e-3)


def test_per_host_velocity_bias_is_the_one_applied(default_box):
    _, halos, galaxies, hosts = default_box
    dv, sigma, prow = _satellites(halos, galaxies, hosts)
    b_v = hosts["velocity_bias"][prow].astype(np.float64)
    z = dv / (sigma * b_v)[:, None]
    assert math.sqrt(np.mean(z**2)) == pytest.approx(1.0, abs=3.0 / math.sqrt(2 * z.size))
    # and not a single b_v for all: the slow hosts' satellites are slower
    slow, fast = b_v < 0.95, b_v > 1.05
    assert np.sqrt(np.mean((dv[fast] / sigma[fast, None]) ** 2)) > 1.05 * np.sqrt(
        np.mean((dv[slow] / sigma[slow, None]) ** 2))


def test_satellite_abundance_scales_satellite_counts(default_box):
    counts = {}
    for a in (0.7, 1.3):
        halos, galaxies = generate_box(SynthConfig(**SMALL, satellite_abundance=a))
        counts[a] = ((halos["upid"] != -1).sum(), (galaxies["upid"] != -1).sum())
    for k in range(2):  # subhaloes, satellite galaxies above the stellar-mass cut
        assert counts[1.3][k] / counts[0.7][k] == pytest.approx(1.3 / 0.7, rel=0.05), counts
    # per host: n_subhalos / (its abundance x the mean of the subhalo function) is 1 whatever the abundance drawn;
    # hosts expecting >= 10 subhaloes (all recorded: none is empty) count Poisson(abundance x mean)
    config, halos, _, hosts = default_box
    distinct = halos["upid"] == -1
    mu_all = mean_subhalos(halos["m200c"][distinct].astype(np.float64), subhalo_min_mass(config),
                           config.subhalo_norm)
    assert np.all(np.isin(halos["halo_id"][distinct][mu_all >= 10], hosts["halo_id"]))
    mu = mean_subhalos(hosts["m200c"].astype(np.float64), subhalo_min_mass(config), config.subhalo_norm)
    a = hosts["satellite_abundance"].astype(np.float64)
    n = hosts["n_subhalos"].astype(np.float64)
    big = mu >= 10
    assert big.sum() > 200
    for sel in (big & (a < 0.9), big & (a > 1.1)):
        expected = np.sum(a[sel] * mu[sel])
        assert n[sel].sum() == pytest.approx(expected, abs=4 * math.sqrt(expected))
    slope = np.polyfit(a[big], n[big] / mu[big], 1)[0]  # 1 if the host's own abundance multiplies its mean
    assert slope == pytest.approx(1.0, abs=0.2)


def test_satellite_concentration_moves_satellites_in_and_out():
    median = {}
    for ratio in (0.5, 1.5):
        galaxies = generate_box(SynthConfig(**SMALL, satellite_concentration=ratio)).galaxies
        sat = galaxies["upid"] != -1
        median[ratio] = np.median(galaxies["uparent_dist"][sat] / galaxies["r"][sat])
    assert median[0.5] > 1.1 * median[1.5]


def test_smhm_scatter_is_the_hosts():
    for scatter in (0.1, 0.2):
        config = SynthConfig(box_size=60.0, seed=2, min_log10_mstar=None, cells_per_side=1,
                             smhm_scatter_dex=scatter)
        halos, galaxies = generate_box(config)
        cen = galaxies["upid"] == -1
        order = np.argsort(halos["halo_id"])
        row = order[np.searchsorted(halos["halo_id"], galaxies["galaxy_id"][cen], sorter=order)]
        median = config.smhm.mean_stellar_mass(halos["m200c"][row].astype(np.float64), config.cosmology.h,
                                               config.redshift)
        assert np.std(np.log10(galaxies["sm"][cen] / median)) == pytest.approx(scatter, rel=0.05)
    assert rms((0.1, 0.2)) == pytest.approx(math.sqrt((0.01 + 0.02 + 0.04) / 3))
    assert parse_setting("smhm_scatter_dex", [0.1, 0.2]) == (0.1, 0.2)
