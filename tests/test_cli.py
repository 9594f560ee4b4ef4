"""The `clustermass` command line: help, synth/inspect/run, and one-line errors with non-zero exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import load_config, parse_config
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
    assert "comoving Mpc/h (default: 250.0)" in out and "(default: hdf5)" in out


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
        [sys.executable, "-m", "pipeline", "--debug", "inspect", str(tmp_path / "nope.h5")],
        capture_output=True, text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_run_default_pipeline_on_a_small_box(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[synth]\nbox_size = 110.0\nlog10_mmin = 11.5\nworkers = 1\n[observe]\nmin_members = 5\n"
                   "regions_per_side = 2\n[train]\nensemble = 1\nmax_epochs = 4\nhidden = [32, 32]\n"
                   "[output]\ndir = \"unused\"\n")
    code, out, _ = run_cli(capsys, "run", "--config", str(cfg), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0 and "run directory" in out
    summary = json.loads((tmp_path / "run" / "ingest" / "summary.json").read_text())
    assert summary["halos"]["rows"] > summary["halos"]["distinct"] > 0
    assert summary["galaxies"]["rows"] > 0 and summary["snapshot"]["box_size"] == 110.0
    assert summary["observations"]["kept"] > 0
    assert (tmp_path / "run" / "members.h5").exists() and not (tmp_path / "run" / ".scratch").exists()
    metrics = json.loads((tmp_path / "run" / "validation" / "metrics.json").read_text())
    for key in ("scatter_dex", "bias_dex", "bias_by_bin", "coverage_68", "coverage_95", "msigma_scatter_dex",
                "msigma_bias_dex", "mse_regression_bias_by_bin", "n_test"):
        assert key in metrics
    assert metrics["n_test"] == summary["validation"]["n_test"] > 0
    for png in ("predicted_vs_true", "bias_scatter_by_bin", "coverage", "pit", "example_posteriors"):
        assert (tmp_path / "run" / "validation" / f"{png}.png").stat().st_size > 1000
    from catalogs.io import read_catalog

    h5 = read_catalog(tmp_path / "run" / "catalog.h5")
    fits = read_catalog(tmp_path / "run" / "catalog.fits")
    assert len(h5) == len(fits) == metrics["n_test"]
    assert h5.colnames == fits.colnames and "log10_m200c_pdf" in h5.colnames
    np.testing.assert_array_equal(h5["log10_m200c_mode"], fits["log10_m200c_mode"])
    assert h5.meta["provenance"]["target_prior"] == "flat"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[bogus]\n", "unknown section(s) ['bogus']"),
        ("[synth]\nseed = 'one'\n", "'seed' must be int"),
        ("[synth]\nbox_size = true\n", "'box_size' must be float"),
        ("[input]\nhalos = 'missing.list'\ngalaxies = 'g.bin'\n", "halos file"),
        ("[snapshot]\nbox_size = 100\n", "scale_factor (or redshift) is required"),
        ("[synth\n", "not valid TOML"),
        ("[infer]\nmodel = 'svm'\n", "model must be 'flow' or 'mdn'"),
        ("[train]\nmodels = ['mdn']\n", "model 'flow' is not among the trained models"),
        ("[infer]\nprior = 'nowhere.csv'\n", "must be flat, tinker08, training or an existing table file"),
    ],
)
def test_config_errors(tmp_path, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert message in str(err.value)


def test_config_defaults_and_snapshot():
    cfg = parse_config({"snapshot": {"box_size": 1000, "scale_factor": 0.8951, "cosmology": "mdpl2"}})
    assert cfg.snapshot.box_size == 1000.0 and cfg.synth.box_size == 800.0 and cfg.input is None


def test_observe_command_writes_table_and_members(tmp_path, capsys):
    code, _, _ = run_cli(capsys, "synth", "--out", str(tmp_path / "box"), "--box-size", "110", "--log10-mmin", "11.5",
                         "--quiet", "--workers", "1")
    assert code == 0
    code, out, err = run_cli(capsys, "observe", "--halos", str(tmp_path / "box" / "halos.h5"), "--galaxies",
                             str(tmp_path / "box" / "galaxies.h5"), "--out", str(tmp_path / "obs"), "--quiet",
                             "--regions", "2", "--min-members", "5")
    assert code == 0, err
    assert "observations:" in out and "dropped with < 5 members" in out
    assert (tmp_path / "obs" / "members.h5").exists()
    assert list((tmp_path / "obs" / "observations").glob("part-*.parquet"))
    code, _, err = run_cli(capsys, "observe", "--halos", str(tmp_path / "box" / "halos.h5"), "--galaxies",
                           str(tmp_path / "box" / "galaxies.h5"), "--out", str(tmp_path / "obs2"), "--v-cut", "9000")
    assert code == 2 and "deeper than half the 110 Mpc/h box" in err and err.count("\n") == 1
    assert not (tmp_path / "obs2").exists()


def test_train_command_holds_out_test_hosts(tmp_path, capsys):
    run_cli(capsys, "synth", "--out", str(tmp_path / "box"), "--box-size", "110", "--log10-mmin", "11.5", "--quiet",
            "--workers", "1")
    code, _, err = run_cli(capsys, "observe", "--halos", str(tmp_path / "box" / "halos.h5"), "--galaxies",
                           str(tmp_path / "box" / "galaxies.h5"), "--out", str(tmp_path / "obs"), "--quiet",
                           "--min-members", "3")
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "--observations", str(tmp_path / "obs"), "--out", str(tmp_path / "m"),
                             "--kind", "mdn", "--kind", "mse", "--ensemble", "2", "--max-epochs", "3", "--quiet")
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
