"""The whole configuration is validated when it is loaded (and by `run --dry-run`), one line per error.

Every bad value of every section is refused with ``<file> [section] key: expected ..., got ...`` before anything
runs, including what used to be found only inside the flow (a prior table with a negative density, a cylinder
deeper than the box, more regions than the box holds, cuts outside the synthetic box, ...). Relative paths of
every key resolve against the configuration file's folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_table

from clustermass.cli import main
from features.config import ObserveSection
from flows.config import DEFAULT_RUN_DIR, check_output_dir, load_config, parse_config
from ingest.schema import GALAXIES, HALOS
from pipeline.config import check_number
from pipeline.errors import ConfigError, InputError
from pipeline.snapshot import Snapshot

# --- every key: bad values refused at load, naming the file, section and key ------------------------------------

NAN, INF = float("nan"), float("inf")

BAD_VALUES = [
    # (section, key, value, what the message says after "<file> [section] key: ")
    ("synth", "box_size", 0, "expected a number in (0, 4000] [comoving Mpc/h], got 0.0"),
    ("synth", "box_size", NAN, "expected a number in (0, 4000] [comoving Mpc/h], got nan"),
    ("synth", "box_size", 1e15, "expected a number in (0, 4000] [comoving Mpc/h], got 1000000000000000.0"),
    ("synth", "box_size", "big", "expected a number, got 'big'"),
    ("synth", "seed", -1, "expected an integer >= 0, got -1"),
    ("synth", "seed", 1.5, "expected an integer, got 1.5"),
    ("synth", "redshift", 0.7, "expected a number in [0, 0.5], got 0.7"),
    ("synth", "format", "fits", "expected one of ['hdf5', 'ascii', 'native', 'csv'], got 'fits'"),
    ("synth", "log10_mmin", INF, "expected a number in [8, 15.5], got inf"),
    ("synth", "min_log10_mstar", -INF, "expected a number in [0, 13] [log10 Msun], got -inf"),
    ("synth", "velocity_bias", [1.2, 0.9], "expected a number in [0.1, 3] or a range [low, high]"),
    ("synth", "merger_fraction", True, "expected a number or a list of numbers, got True"),
    ("synth", "workers", 0, "expected an integer in [1, 256], got 0"),
    ("synth", "workers", 10**15, "expected an integer in [1, 256], got 1000000000000000"),
    ("observe", "r_aperture", -1.6, "expected a number in (0, 50] [comoving Mpc/h], got -1.6"),
    ("observe", "v_cut", NAN, "expected a number in (0, 20000] [km/s], got nan"),
    ("observe", "min_members", 0, "expected an integer in [1, 100000], got 0"),
    ("observe", "log10_mstar_min", 1e300, "expected a number in [0, 13] [log10 Msun], got 1e+300"),
    ("observe", "host_log10_m200c_min", 1e300, "expected a number in [10, 16] [log10 Msun/h], got 1e+300"),
    ("observe", "r_limit", 40.0, "expected a number in (10, 30) [apparent AB mag], got 40.0"),
    ("observe", "extra_directions", 10**15, "expected an integer in [0, 1000], got 1000000000000000"),
    ("observe", "extra_log10_m200c_min", -INF, "expected a number in [10, 16] [log10 Msun/h], got -inf"),
    ("observe", "los_seed", -1, "expected an integer >= 0, got -1"),
    ("observe", "regions_per_side", 0, "expected an integer in [1, 64], got 0"),
    ("observe", "regions_per_side", 10**15, "expected an integer in [1, 64], got 1000000000000000"),
    ("observe", "regions_per_side", 2.5, "expected an integer, got 2.5"),
    ("observe", "workers", -3, "expected an integer in [1, 256], got -3"),
    ("observe", "centring", "bcg", "expected one of ['zhang19-lauer14', 'none'], got 'bcg'"),
    ("observe", "centring_seed", -1, "expected an integer >= 0, got -1"),
    ("train", "models", ["svm"], "expected one or more distinct names from ['mdn', 'flow', 'mse', 'set'], got "
                                 "unknown"),
    ("train", "models", ["flow", "flow"], "got repeated ['flow']"),
    ("train", "feature_sets", ["dynamics"], "expected 'full' among the feature sets"),
    ("train", "members_kept", [5, INF], "expected [lo, hi] members with 3 <= lo <= hi <= 100000, got [5.0, inf]"),
    ("train", "min_members_thinned", 200, "expected an integer in [3, 150], got 200"),
    ("train", "features", ["sigma_v"], "expected distinct names from ["),
    ("train", "test_fraction", 1.0, "expected a number in (0, 1), got 1.0"),
    ("train", "hidden", [128, 0], "expected an integer in [1, 65536], got a width of 0 in [128, 0]"),
    ("train", "hidden", [], "expected 1 to 64 layer widths, got []"),
    ("train", "n_components", 10**15, "expected an integer in [1, 1024], got 1000000000000000"),
    ("train", "n_bins", 1, "expected an integer in [2, 1024], got 1"),
    ("train", "dropout", 1.0, "expected a number in [0, 1), got 1.0"),
    ("train", "ensemble", 0, "expected an integer in [1, 100], got 0"),
    ("train", "baseline_ensemble", 0, "expected an integer in [1, 100], got 0"),
    ("train", "mc_samples", -1, "expected an integer in [1, 10000], got -1"),
    ("train", "batch_size", 0, "expected an integer in [1, 16777216], got 0"),
    ("train", "max_epochs", 0, "expected an integer in [1, 1000000], got 0"),
    ("train", "patience", 10**15, "expected an integer in [1, 1000000], got 1000000000000000"),
    ("train", "learning_rate", NAN, "expected a number in (0, 1], got nan"),
    ("train", "weight_decay", -1e-4, "expected a number in [0, 1], got -0.0001"),
    ("train", "seed", -1, "expected an integer in [0, 4294967295], got -1"),
    ("train", "epistemic", "laplace", "expected one of ['ensemble', 'mc_dropout', 'bayes_by_backprop']"),
    ("train", "prior_scale", INF, "expected a number in (0, 1000], got inf"),
    ("train", "weight_draws", 0, "expected an integer in [1, 10000], got 0"),
    ("train", "posterior_init_std", NAN, "expected a number in (0, 10], got nan"),
    ("train", "set_pooling", "max", "expected one of ['mean', 'moments', 'attention'], got 'max'"),
    ("train", "set_phi", [64, 0], "expected an integer in [1, 65536], got a width of 0 in [64, 0]"),
    ("train", "set_phi", [], "expected 1 to 64 layer widths, got []"),
    ("train", "set_cap", 0, "expected an integer in [1, 100000] [members], got 0"),
    ("train", "set_target", "residual", "expected one of ['mass', 'msigma_residual'], got 'residual'"),
    ("train", "set_max_epochs", 0, "expected an integer in [1, 1000000], got 0"),
    ("train", "set_patience", -3, "expected an integer in [1, 1000000], got -3"),
    ("train", "set_batch_size", 0.5, "expected an integer, got 0.5"),
    ("infer", "model", "svm", "expected one of ['flow', 'mdn', 'set'], got 'svm'"),
    ("infer", "prior", 3, "expected a string, got 3"),
    ("output", "dir", 1, "expected a path, got 1"),
    ("runner", "kind", "mpi", "expected one of ['threads', 'dask', 'slurm'], got 'mpi'"),
    ("runner", "workers", 0, "expected an integer in [1, 4096], got 0"),
    ("runner", "cores", 10**15, "expected an integer in [1, 4096], got 1000000000000000"),
    ("runner", "memory", 32, "expected a string, got 32"),
    ("snapshot", "box_size", "abc", "expected a number in (0, 100000] [comoving Mpc/h], got 'abc'"),
    ("snapshot", "redshift", -1, "expected a number in [0, 20], got -1"),
]


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("section", "key", "value", "message"), BAD_VALUES,
                         ids=[f"{s}.{k}={v!r}" for s, k, v, _ in BAD_VALUES])
def test_every_bad_value_is_one_line_naming_file_section_and_key(tmp_path, section, key, value, message):
    extra = "scale_factor = 0.8951\ncosmology = 'mdpl2'\n" if section == "snapshot" else ""
    cfg = write(tmp_path, f"[{section}]\n{key} = {_toml(value)}\n{extra}")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    text = str(err.value)
    assert text.startswith(f"{cfg} [{section}] {key}: "), text
    assert message in text and "\n" not in text
    assert err.value.key == key


# --- what used to be found only inside the flow ----------------------------------------------------------------


def _file(path: Path, text: str | None = None) -> str:
    """Create ``path`` (a folder when ``text`` is None); returns "" so it can start a configuration's text."""
    if text is None:
        path.mkdir()
    else:
        path.write_text(text)
    return ""


def _prior_table(tmp_path: Path, rows: str, header: str = "log10_m,density") -> str:
    (tmp_path / "prior.csv").write_text(header + "\n" + rows)
    return "[infer]\nprior = 'prior.csv'\n"


LATE = [
    # configurations the flow used to refuse only after synth or training, and what load says now
    ("negative density", lambda d: _prior_table(d, "13,1\n14,-0.5\n16,1\n"),
     "[infer] prior: {d}/prior.csv: column 'density', row 2: expected a non-negative density, found -0.5"),
    ("NaN density", lambda d: _prior_table(d, "13,1\n14,nan\n16,1\n"),
     "[infer] prior: {d}/prior.csv: column 'density', row 2: expected a finite number, found nan"),
    ("one column", lambda d: _prior_table(d, "13\n16\n", header="log10_m"), "expected two columns"),
    ("zero density", lambda d: _prior_table(d, "13,0\n16,0\n"), "the prior is zero everywhere"),
    ("linear masses", lambda d: _prior_table(d, "1e13,1\n1e16,1\n"), "found 1e+13 (a linear mass? give log10"),
    ("not normalisable", lambda d: _prior_table(d, "13,1e308\n16,1e308\n"), "not normalisable"),
    ("short of the host cut", lambda d: _prior_table(d, "14,1\n16,1\n"),
     "covers log10 M = [14, 16], expected the whole range of host masses"),
    ("too deep a cylinder", lambda d: "[synth]\nbox_size = 100\n[observe]\nv_cut = 9000\n",
     "[observe] v_cut: |v_los| < 9000 km/s spans"),
    ("too wide an aperture", lambda d: "[synth]\nbox_size = 50\n[observe]\nr_aperture = 20\nv_cut = 1000\n",
     "[observe] r_aperture: expected an aperture diameter <= half the 50 Mpc/h box"),
    ("too many regions", lambda d: "[synth]\nbox_size = 110\n[observe]\nregions_per_side = 40\n",
     "[observe] regions_per_side: expected at most 34 columns per side of the 110 Mpc/h box"),
    ("magnitudes the box lacks", lambda d: "[synth]\nformat = 'native'\n[observe]\nr_limit = 17.77\n",
     "[observe] r_limit: needs each galaxy's r-band magnitude"),
    ("galaxies the box lacks", lambda d: "[observe]\nlog10_mstar_min = 9.0\n",
     "[observe] log10_mstar_min: expected >= [synth] min_log10_mstar = 9.5"),
    ("hosts the box lacks", lambda d: "[synth]\nlog10_mmin = 12.0\n[observe]\nhost_log10_m200c_min = 11.5\n",
     "[observe] host_log10_m200c_min: expected a host cut within the synthetic box's halo masses, [12, 16)"),
    ("a snapshot not the box's", lambda d: "[snapshot]\nbox_size = 1000\nscale_factor = 0.8951\ncosmology = 'mdpl2'\n",
     "[snapshot]: describes a 1000 Mpc/h box"),
    ("a bad input format", lambda d: "[input]\nhalos = 'h.h5'\ngalaxies = 'g.h5'\nhalo_format = 'fits'\n",
     "[input] halo_format: expected one of ['hlist', 'csv', 'hdf5'"),
    ("an input folder", lambda d: _file(d / "h.h5") + "[input]\nhalos = 'h.h5'\ngalaxies = 'g.h5'\n",
     "[input] halos: expected a catalog file, got {d}/h.h5, which is not a file"),
    ("an unreadable catalog", lambda d: _file(d / "h.h5", "not hdf5") + "[input]\nhalos = 'h.h5'\ngalaxies = 'g.h5'\n",
     "[input] halos: {d}/h.h5: "),
    ("a run directory that is a file", lambda d: _file(d / "busy", "x") + "[output]\ndir = 'busy'\n",
     "[output] dir: expected a directory, got {d}/busy, which is a file"),
    ("a bad SLURM memory", lambda d: "[runner]\nkind = 'slurm'\nmemory = 'lots'\n",
     "[runner] memory: expected a size such as '32GiB', got 'lots'"),
    ("a bad SLURM walltime", lambda d: "[runner]\nkind = 'slurm'\nwalltime = '2 hours'\n",
     "[runner] walltime: expected a SLURM time such as '02:00:00'"),
    ("a bad scheduler address", lambda d: "[runner]\nkind = 'dask'\naddress = 'tcp://host name:87'\n",
     "[runner] address: expected a scheduler address such as 'tcp://host:8786'"),
]


@pytest.mark.parametrize(("case", "text", "message"), LATE, ids=[c for c, _, _ in LATE])
def test_what_the_flow_found_late_is_refused_at_load_and_by_dry_run(tmp_path, capsys, case, text, message):
    cfg = write(tmp_path, text(tmp_path))
    if "[input]" in cfg.read_text() and not (tmp_path / "g.h5").exists():
        from ingest.writers import write_catalog
        from pipeline.cosmology import MDPL2

        snap = Snapshot(100.0, 0.8951, MDPL2)
        write_catalog(tmp_path / "g.h5", fake_table(GALAXIES, 50, seed=1), kind="galaxy", fmt="hdf5", snapshot=snap)
        if not (tmp_path / "h.h5").exists():
            write_catalog(tmp_path / "h.h5", fake_table(HALOS, 50), kind="halo", fmt="hdf5", snapshot=snap)
    message = message.format(d=tmp_path)
    expected = f"{cfg} {message}" if message.startswith("[") else f"{cfg} ["  # the file, then section and key
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(err.value).startswith(expected) and message in str(err.value), str(err.value)
    code = main(["run", "--config", str(cfg), "--dry-run"])
    out, errors = capsys.readouterr()
    assert code == 2 and out == "" and errors.startswith(f"error: {expected}") and errors.count("\n") == 1
    assert message in errors


def test_valid_prior_table_and_input_catalogs_pass_and_resolve(tmp_path, capsys):
    from ingest.writers import write_catalog
    from pipeline.cosmology import MDPL2

    snap = Snapshot(100.0, 0.8951, MDPL2)
    (tmp_path / "data").mkdir()
    write_catalog(tmp_path / "data" / "h.h5", fake_table(HALOS, 50), kind="halo", fmt="hdf5", snapshot=snap)
    write_catalog(tmp_path / "data" / "g.h5", fake_table(GALAXIES, 50, seed=1), kind="galaxy", fmt="hdf5",
                  snapshot=snap)
    m = np.linspace(12.0, 16.0, 50)
    np.savetxt(tmp_path / "data" / "p.csv", np.column_stack([m, np.exp(-m)]), delimiter=",",
               header="log10_m,density", comments="")
    cfg = write(tmp_path, "[input]\nhalos = 'data/h.h5'\ngalaxies = 'data/g.h5'\n[observe]\nv_cut = 1500\n"
                          "[infer]\nprior = 'data/p.csv'\n[output]\ndir = 'out'\n")
    config = load_config(cfg)
    assert config.input.halos == tmp_path / "data" / "h.h5" and config.infer.prior == str(tmp_path / "data" / "p.csv")
    assert config.output.dir == tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {tmp_path / 'out'}" in out and "(valid)" in out
    # the cylinder against the catalogs' own box (100 Mpc/h): too deep for it, though fine for the default box
    cfg.write_text(cfg.read_text().replace("v_cut = 1500", "v_cut = 5000"))
    with pytest.raises(ConfigError, match=r"\[observe\] v_cut: .* deeper than half the 100 Mpc/h box"):
        load_config(cfg)


def test_reused_model_must_hold_the_catalog_model_and_its_range_bounds_the_prior(tmp_path):
    (tmp_path / "m" / "mdn").mkdir(parents=True)
    description = {"observations": {"config": {"cylinder": {"r_aperture": 1.6}}},
                   "training_prior": {"grid": [13.5, 15.2]}}
    (tmp_path / "m" / "mdn" / "model.json").write_text(json.dumps(description))
    (tmp_path / "m" / "split.json").write_text("{}")
    (tmp_path / "m" / "msigma.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"^<config> \[infer\] model: expected a model that .*/m \(\[train\] reuse\) "
                                          r"holds, \['mdn'\], got 'flow'"):
        parse_config({"train": {"reuse": "m"}}, base=tmp_path)
    (tmp_path / "p.csv").write_text("log10_m,density\n13.4,1\n15.3,1\n")
    cfg = parse_config({"train": {"reuse": "m"}, "infer": {"model": "mdn", "prior": "p.csv"}}, base=tmp_path)
    assert cfg.infer.prior == str(tmp_path / "p.csv")  # covers the model's training range, not up to 16
    (tmp_path / "p.csv").write_text("log10_m,density\n13.6,1\n15.3,1\n")
    with pytest.raises(ConfigError, match=r"expected the whole training range of .*/m/mdn \[13.5, 15.2\]"):
        parse_config({"train": {"reuse": "m"}, "infer": {"model": "mdn", "prior": "p.csv"}}, base=tmp_path)


# --- one path rule -------------------------------------------------------------------------------------------


def test_every_relative_path_is_relative_to_the_configuration_folder(tmp_path, monkeypatch, capsys):
    conf = tmp_path / "conf"
    conf.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = write(conf, "[output]\ndir = 'runs/x'\n[runner]\nkind = 'slurm'\nlog_directory = 'logs'\n"
                      "local_directory = '$TMPDIR'\n")
    config = load_config(Path("..") / "conf" / "run.toml")  # a relative path to the file itself
    assert config.output.dir.resolve() == (conf / "runs" / "x").resolve()
    assert Path(config.runner.log_directory).resolve() == (conf / "logs").resolve()
    assert config.runner.local_directory == "$TMPDIR"  # the compute node's shell expands it
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 0
    assert f"run directory: {(conf / 'runs' / 'x').resolve()}" in capsys.readouterr().out
    # without the key (or without a file) the default run directory is in the working directory
    assert load_config(write(conf, "[synth]\nseed = 3\n", "b.toml")).output.dir == DEFAULT_RUN_DIR
    assert load_config(None).output.dir == DEFAULT_RUN_DIR
    # --out is a command-line path: relative to the working directory, whatever the file says
    assert main(["run", "--config", str(cfg), "--out", "mine", "--dry-run"]) == 0
    assert f"run directory: {elsewhere / 'mine'}" in capsys.readouterr().out


@contextlib.contextmanager
def real_user(uid: int = 65534) -> Iterator[None]:
    """Root may write anywhere, and CI runs the tests as root: there, make ``uid`` (nobody) the real user and group
    for the block, whom ``os.access`` answers for, keeping root as the effective one (files, imports). Nothing to do
    for anyone else."""
    if os.geteuid() != 0:
        yield
        return
    uids, gids = os.getresuid(), os.getresgid()
    os.setresgid(uid, gids[1], gids[2])
    os.setresuid(uid, uids[1], uids[2])
    try:
        yield
    finally:
        os.setresuid(*uids)
        os.setresgid(*gids)


def test_unwritable_output_directory_is_refused(capsys):
    # in a folder any user may enter (tmp_path's parents are private to whoever runs the tests)
    with tempfile.TemporaryDirectory() as top:
        Path(top).chmod(0o755)
        locked, unlocked = Path(top) / "locked", Path(top) / "unlocked"
        locked.mkdir()
        unlocked.mkdir()
        locked.chmod(0o555)
        unlocked.chmod(0o777)
        with real_user():
            check_output_dir(unlocked / "box", key="--out", writable=True)  # a folder this user may write passes
            # a 20 Mpc/h box: a few seconds, should the check ever let it run
            assert main(["synth", "--out", str(locked / "box"), "--box-size", "20", "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("error: synth --out: expected a directory this user can write")


# --- the command line: options named as typed ------------------------------------------------------------------


@pytest.mark.parametrize(("argv", "line"), [
    (["observe", "--halos", "h", "--galaxies", "g", "--out", "o", "--regions", "0"],
     "error: observe --regions: expected an integer in [1, 64], got 0"),
    (["observe", "--halos", "h", "--galaxies", "g", "--out", "o", "--v-cut", "nan"],
     "error: observe --v-cut: expected a number in (0, 20000] [km/s], got nan"),
    (["observe", "--halos", "h", "--galaxies", "g", "--out", "o", "--host-log10-m200c-min", "1e300"],
     "error: observe --host-log10-m200c-min: expected a number in [10, 16] [log10 Msun/h], got 1e+300"),
    (["observe", "--halos", "h", "--galaxies", "g", "--out", "o", "--extra-directions", "-1"],
     "error: observe --extra-directions: expected an integer in [0, 1000], got -1"),
    (["synth", "--out", "b", "--box-size", "inf"],
     "error: synth --box-size: expected a number in (0, 4000] [comoving Mpc/h], got inf"),
    (["synth", "--out", "b", "--seed", "-5"], "error: synth --seed: expected an integer >= 0, got -5"),
    (["synth", "--out", "b", "--workers", "100000"], "error: synth --workers: expected an integer in [1, 256]"),
    (["synth", "--out", "b", "--log10-mmin", "-1"], "error: synth --log10-mmin: expected a number in [8, 15.5]"),
    (["train", "--observations", "x", "--out", "m", "--batch-size", "0"],
     "error: train --batch-size: expected an integer in [1, 16777216], got 0"),
    (["train", "--observations", "x", "--out", "m", "--test-fraction", "nan"],
     "error: train --test-fraction: expected a number in (0, 1), got nan"),
    (["train", "--observations", "x", "--out", "m", "--ensemble", "1000"],
     "error: train --ensemble: expected an integer in [1, 100], got 1000"),
    (["train", "--observations", "x", "--out", "m", "--seed", "-20000"],  # was a numpy traceback after loading
     "error: train --seed: expected an integer in [0, 4294967295], got -20000"),
])
def test_bad_options_are_one_line_naming_the_option(tmp_path, monkeypatch, capsys, argv, line):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(line) and err.count("\n") == 1, err
    assert not any(tmp_path.iterdir())  # nothing was written


def test_output_that_is_a_file_and_bad_prior_tables_are_refused_first(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert main(["synth", "--out", str(tmp_path / "taken")]) == 2
    assert capsys.readouterr().err == f"error: synth --out: expected a directory, got {tmp_path / 'taken'}, which " \
                                      "is a file\n"
    (tmp_path / "p.csv").write_text("log10_m,density\n13,1\n14,-2\n")
    assert main(["validate", "--model", str(tmp_path / "nope"), "--observations", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "v"), "--prior", str(tmp_path / "p.csv")]) == 2  # before the missing model
    err = capsys.readouterr().err
    assert err == f"error: {tmp_path / 'p.csv'}: column 'density', row 2: expected a non-negative density, found -2\n"
    assert main(["validate", "--model", "m", "--observations", "o", "--out", str(tmp_path / "v"), "--prior",
                 "jeffreys"]) == 2
    assert "validate --prior: expected one of ['flat', 'tinker08', 'training'] or a two-column table" in \
        capsys.readouterr().err


def test_a_cylinder_too_big_for_the_catalogs_box_names_its_source(tmp_path, capsys):
    """observe: the catalogs' box is known once they are opened; the key is named as the user gave it."""
    from ingest.writers import write_catalog
    from pipeline.cosmology import MDPL2

    snap = Snapshot(100.0, 0.8951, MDPL2)
    h = write_catalog(tmp_path / "h.h5", fake_table(HALOS, 50), kind="halo", fmt="hdf5", snapshot=snap)
    g = write_catalog(tmp_path / "g.h5", fake_table(GALAXIES, 50, seed=1), kind="galaxy", fmt="hdf5", snapshot=snap)
    common = ["observe", "--halos", str(h), "--galaxies", str(g), "--out", str(tmp_path / "o"), "--v-cut", "1500"]
    assert main([*common, "--regions", "40"]) == 2
    assert capsys.readouterr().err.startswith("error: observe --regions: expected at most 31 columns per side of "
                                              "the 100 Mpc/h box")
    cfg = write(tmp_path, "[observe]\nregions_per_side = 40\n")
    assert main([*common, "--config", str(cfg)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {cfg} [observe] regions_per_side: expected at most 31")
    assert not (tmp_path / "o").exists()


# --- the pieces ----------------------------------------------------------------------------------------------


def test_observe_section_checks_the_box():
    from pipeline.cosmology import MDPL2

    snap = Snapshot(40.0, 0.8951, MDPL2)
    ObserveSection(v_cut=800.0, regions_per_side=2).check_box(snap)
    for section, key in ((ObserveSection(v_cut=3000.0), "v_cut"), (ObserveSection(v_cut=800.0, r_aperture=12.0),
                                                                   "r_aperture"),
                         (ObserveSection(v_cut=800.0, regions_per_side=13), "regions_per_side")):
        with pytest.raises(ConfigError) as err:
            section.check_box(snap)
        assert err.value.key == key


def test_check_number_and_errors_survive_pickling():
    with pytest.raises(ConfigError, match=r"^n: expected an integer in \[1, 64\], got True$"):
        check_number("n", True, low=1, high=64, integer=True)
    check_number("x", 3, low=0, low_open=True)  # an integer is a number
    err = ConfigError("expected a number, got 'a'", key="v_cut", where="run.toml [observe]")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == "run.toml [observe] v_cut: expected a number, got 'a'" and back.key == "v_cut"
    located = ConfigError("expected x", key="k").located("f.toml [s]")
    assert str(located) == "f.toml [s] k: expected x" and located.located("other") is located
    err = InputError("a.csv", "bad", column="c", row=2)
    assert str(pickle.loads(pickle.dumps(err))) == "a.csv: column 'c', row 2: bad"
