"""The `clustermass` command line: help, synth/inspect/run, and one-line errors with non-zero exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from clustermass.cli import main
from flows.config import load_config, parse_config
from pipeline.errors import ConfigError


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_command_and_defaults(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("synth", "inspect", "run"):
        assert cmd in out
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    out = " ".join(out.split())
    assert "--box-size BOX_SIZE" in out and "[synth] format = 'hdf5'" in out and "[synth] box_size = 800" in out


@pytest.mark.parametrize(("command", "section", "key"), [("observe", "observe", "r_aperture"),
                                                         ("observe", "observe", "regions_per_side"),
                                                         ("train", "train", "max_epochs"),
                                                         ("train", "train", "test_fraction")])
def test_help_shows_the_configuration_sections_defaults(capsys, command, section, key):
    """The CLI states no default of its own: --help quotes the section dataclass (one home per default)."""
    config = load_config(None)
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"[{section}] {key} = {getattr(getattr(config, section), key)!r}" in out


def test_defaults_of_sections_come_from_the_stage_specs():
    from features.cylinder import CylinderSpec, LineOfSightSpec
    from models.spec import ModelSpec, TrainSpec

    config = load_config(None)
    assert config.observe.observation_spec().cylinder == CylinderSpec()
    assert config.observe.observation_spec().los == LineOfSightSpec()
    spec, train = config.train.specs("flow")
    assert (spec, train) == (ModelSpec(kind="flow"), TrainSpec())


def test_synth_then_inspect(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "synth", "--out", str(tmp_path / "box"), "--box-size", "50", "--log10-mmin",
                           "11.5", "--format", "native", "--quiet", "--workers", "1")
    assert code == 0 and "galaxies.bin" in out
    code, out, _ = run_cli(capsys, "inspect", str(tmp_path / "box" / "galaxies.bin"), "--json")
    info = json.loads(out)
    assert code == 0 and info["format"] == "um-binary" and info["rows"] > 0
    assert info["columns"]["obs_sm"] == "Msun" and info["snapshot"]["box_size"] == 50.0


def test_bad_input_is_one_line_with_status_2(tmp_path, capsys):
    bad = tmp_path / "halos.list"
    bad.write_text("#id(0) upid(1)\n1 -1\n")
    code, out, err = run_cli(capsys, "inspect", str(bad))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1
    assert str(bad) in err and "column 'm200c'" in err


def test_missing_file_and_bad_config(tmp_path, capsys):
    code, _, err = run_cli(capsys, "inspect", str(tmp_path / "nope.h5"))
    assert code == 2 and "nope.h5: no such file" in err
    cfg = tmp_path / "c.toml"
    cfg.write_text("[synth]\nbox_sise = 3\n")
    code, _, err = run_cli(capsys, "run", "--config", str(cfg), "--out", str(tmp_path / "r"))
    assert code == 2 and "unknown key(s) ['box_sise']" in err and err.count("\n") == 1


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "clustermass", "--debug", "inspect", str(tmp_path / "nope.h5")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[bogus]\n", "unknown section(s) ['bogus']"),
        ("[synth]\nseed = 'one'\n", "c.toml [synth] seed: expected an integer, got 'one'"),
        ("[synth]\nbox_size = true\n", "[synth] box_size: expected a number, got True"),
        ("[input]\nhalos = 'missing.list'\ngalaxies = 'g.bin'\n", "[input] halos: expected a catalog file, got "),
        ("[snapshot]\nbox_size = 100\n", "scale_factor (or redshift) is required"),
        ("[synth\n", "not valid TOML"),
        ("[infer]\nmodel = 'svm'\n", "[infer] model: expected one of ['flow', 'mdn', 'set'], got 'svm'"),
        ("[train]\nmodels = ['mdn']\n", "[infer] model: expected one of the trained models ['mdn']"),
        ("[infer]\nprior = 'nowhere.csv'\n", "[infer] prior: expected flat, tinker08, training or an existing table"),
        ("[runner]\nkind = 'kubernetes'\n", "[runner] kind: expected one of ['threads', 'dask', 'slurm'], got 'kuber"),
        ("[runner]\naddress = 'tcp://h:8786'\n", "address is for kind = \"dask\""),
        ("[runner]\nkind = 'slurm'\njobs = 0\n", "[runner] jobs: expected an integer in [1, 4096], got 0"),
        ("[runner]\njob_extra_directives = '--qos=low'\n", "[runner] job_extra_directives: expected a list of strings"),
        ("[runner]\nmemory = 32\n", "[runner] memory: expected a string, got 32"),
        ("[train]\nreuse = 'no-such-model'\n", "no-such-model holds no trained model"),
    ],
)
def test_config_errors(tmp_path, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert message in str(err.value)


def test_config_defaults_and_snapshot():
    """A [snapshot] alone serves commands given catalogs of their own (inspect, observe); a run without [input]
    observes the synthetic box, which it must then describe."""
    snapshot = {"box_size": 1000, "scale_factor": 0.8951, "cosmology": "mdpl2"}
    cfg = parse_config({"snapshot": snapshot}, run=False)
    assert cfg.snapshot.box_size == 1000.0 and cfg.synth.box_size == 800.0 and cfg.input is None
    with pytest.raises(ConfigError, match=r"^<config> \[snapshot\]: describes a 1000 Mpc/h box .* \(800 Mpc/h"):
        parse_config({"snapshot": snapshot})
    assert parse_config({"snapshot": snapshot, "synth": {"box_size": 1000}}).snapshot.box_size == 1000.0


def test_observe_command_writes_table_and_members(tiny_box, tmp_path, capsys):
    code, out, err = run_cli(capsys, "observe", "--halos", str(tiny_box / "halos.h5"), "--galaxies",
                             str(tiny_box / "galaxies.h5"), "--out", str(tmp_path / "obs"), "--quiet",
                             "--regions", "2", "--min-members", "5")
    assert code == 0, err
    assert "observations:" in out and "dropped with < 5 members" in out
    assert (tmp_path / "obs" / "members.h5").exists()
    assert list((tmp_path / "obs" / "observations").glob("part-*.parquet"))
    code, _, err = run_cli(capsys, "observe", "--halos", str(tiny_box / "halos.h5"), "--galaxies",
                           str(tiny_box / "galaxies.h5"), "--out", str(tmp_path / "obs2"), "--v-cut", "9000")
    assert code == 2 and "deeper than half the 110 Mpc/h box" in err and err.count("\n") == 1
    assert not (tmp_path / "obs2").exists()


def test_train_command_holds_out_test_hosts(tiny_box, tmp_path, capsys):
    code, _, err = run_cli(capsys, "observe", "--halos", str(tiny_box / "halos.h5"), "--galaxies",
                           str(tiny_box / "galaxies.h5"), "--out", str(tmp_path / "obs"), "--quiet",
                           "--min-members", "3")
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "--observations", str(tmp_path / "obs"), "--out", str(tmp_path / "m"),
                             "--kind", "mdn", "--kind", "mse", "--ensemble", "2", "--max-epochs", "1", "--quiet")
    assert code == 0, err
    assert "mdn" in out and "msigma" in out
    from features.io import read_observations
    from models.io import load_model

    table = read_observations(tmp_path / "obs")[0].compute()
    split = json.loads((tmp_path / "m" / "split.json").read_text())
    test_hosts = set(split["test_cluster_ids"])
    assert test_hosts and test_hosts < set(table.cluster_id)
    n_train = int((~table.cluster_id.isin(test_hosts)).sum())
    model = load_model(tmp_path / "m" / "mdn")
    assert model.split["train_rows"] + model.split["val_rows"] == n_train
    assert len(model.members) == 2
    assert json.loads((tmp_path / "m" / "msigma.json").read_text())["feature"] == "sigma_v_std"
    code, _, err = run_cli(capsys, "train", "--observations", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"))
    assert code == 2 and "no mock observations here" in err


def _fake_model(root, r_aperture: float, *, complete: bool = True):
    (root / "flow").mkdir(parents=True)
    description = {"observations": {"config": {"cylinder": {"r_aperture": r_aperture, "v_cut": 2500.0}}}}
    (root / "flow" / "model.json").write_text(json.dumps(description))
    if complete:
        (root / "split.json").write_text("{}")
        (root / "msigma.json").write_text("{}")


def test_config_reuse_checks_the_model_directory_and_its_cylinder(tmp_path):
    _fake_model(tmp_path / "m", 1.6)
    cfg = parse_config({"train": {"reuse": "m"}}, base=tmp_path)
    assert cfg.train.reuse == str(tmp_path / "m")
    _fake_model(tmp_path / "wide", 2.0)
    with pytest.raises(ConfigError, match=r"different cylinder \(r_aperture: model 2.0 vs \[observe\] 1.6\)"):
        parse_config({"train": {"reuse": "wide"}}, base=tmp_path)
    _fake_model(tmp_path / "bare", 1.6, complete=False)
    with pytest.raises(ConfigError, match=r"lacks split\.json"):
        parse_config({"train": {"reuse": "bare"}}, base=tmp_path)


def test_run_dry_run_validates_and_prints_the_slurm_job_script(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[runner]\nkind = 'slurm'\ncores = 16\nmemory = '64GB'\nqueue = 'regular'\naccount = 'm1234'\n")
    code, out, err = run_cli(capsys, "run", "--config", str(cfg), "--out", str(tmp_path / "r"), "--dry-run")
    assert code == 0, err
    assert "(valid)" in out and "#SBATCH" in out and "-p regular" in out and "-A m1234" in out
    assert not (tmp_path / "r").exists()  # nothing ran
    code, out, err = run_cli(capsys, "run", "--dry-run")
    assert code == 0 and "synthetic box, 800 Mpc/h" in out and "#SBATCH" not in out
