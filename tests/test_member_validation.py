"""Members files and centres checked before anything is computed (inference/member_table.py): every bad file is
refused in one line naming the file, the column and the row; units are honoured where the file states them."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from astropy import units as u
from astropy.table import Table
from test_model_files import build_run_models, toy_clusters
from test_query import DECC, RAC, ZC, _to_sky

from clustermass.cli import main
from inference.member_table import checked_rows, open_members
from pipeline.cosmology import MDPL2

H = MDPL2.h


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_run_models(tmp_path_factory.mktemp("members") / "model")


def _cluster(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """r_proj [Mpc/h], v_los [km/s], log10 M* of one toy cluster (tens of members)."""
    _, r, v, m, _ = toy_clusters(1, seed=seed)
    return r, v, m


def _csv(path, **cols):
    """A CSV of the columns given (values written with repr, strings as they are, None as an empty cell)."""
    names = list(cols)
    n = len(next(iter(cols.values())))
    lines = [",".join(names)]
    for i in range(n):
        lines.append(",".join("" if cols[c][i] is None else str(cols[c][i]) for c in names))
    path.write_text("\n".join(lines) + "\n")
    return path


def _query(capsys, *argv):
    code = main(["query", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _projected(**changes):
    r, v, m = _cluster()
    cols = {"r_proj": list(r), "v_los": list(v), "log10_mstar": list(m)}
    for key, (row, value) in changes.items():
        cols[key][row] = value
    return cols


def _sky(**changes):
    r, v, m = _cluster()
    ra, dec, z = _to_sky(r, v)
    cols = {"ra": list(ra), "dec": list(dec), "z": list(z), "log10_mstar": list(m)}
    for key, (row, value) in changes.items():
        cols[key][row] = value
    return cols


def _duplicated():
    cols = _projected()
    for values in cols.values():
        values.append(values[2])
    return cols


def _mixed():
    cols = _sky()
    r, v, _ = _cluster()
    return {**cols, "r_proj": list(r), "v_los": list(v)}


def _without(cols, name):
    return {k: v for k, v in cols.items() if k != name}


def _linear():
    cols = _projected()
    cols["log10_mstar"] = [10 ** x for x in cols["log10_mstar"]]
    return cols


def _in_m_per_s():
    cols = _projected()
    cols["v_los"] = [1000.0 * x for x in cols["v_los"]]
    return cols


# name: (columns of a CSV, the one error line must match)
BAD_CSV = {
    "dec beyond the pole": (_sky(dec=(1, 95.0)), r"column 'dec', row 2: expected -90 <= dec <= 90 deg, found 95"),
    "negative ra": (_sky(ra=(0, -1.0)), r"column 'ra', row 1: expected 0 <= ra < 360 deg, found -1"),
    "ra of 360": (_sky(ra=(3, 360.0)), r"column 'ra', row 4: expected 0 <= ra < 360 deg, found 360"),
    "negative redshift": (_sky(z=(2, -0.01)), r"column 'z', row 3: expected a redshift 0 < z < 2, found -0\.01"),
    "redshift of 7": (_sky(z=(2, 7.0)), r"column 'z', row 3: expected a redshift 0 < z < 2, found 7"),
    "sky and projected": (_mixed(), r"has both sky \(ra, dec, z\) and projected \(r_proj, v_los\) coordinates"),
    "ra and dec without z": (_without(_sky(), "z"), r"column 'z': expected column\(s\) \['z'\] with sky coordinates"),
    "repeated galaxy": (_duplicated(), r"row \d+: repeats row 3 \(identical r_proj, v_los, log10_mstar\)"),
    "empty cell": (_projected(v_los=(3, None)), r"column 'v_los', row 4: empty cell"),
    "blank cell in a text column": (_sky(ra=(3, " "), dec=(0, "north")), r"column 'dec', row 1: expected a number"),
    "negative r_proj": (_projected(r_proj=(1, -0.2)), r"column 'r_proj', row 2: expected a projected distance "
                                                      r"r_proj >= 0"),
    "linear stellar masses": (_linear(), r"column 'log10_mstar', row \d+: stellar masses look linear"),
    "missing-value sentinel": (_projected(log10_mstar=(5, -99.0)), r"column 'log10_mstar', row 6: expected 0 < "
                                                                   r"log10_mstar < 14"),
    "sexagesimal ra": (_sky(ra=(0, "10:00:30.5")), r"column 'ra', row 1: expected a number \[deg\], found "
                                                   r"'10:00:30\.5' \(sexagesimal\? give decimal degrees\)"),
    "velocities in m/s": (_in_m_per_s(), r"column 'v_los', row \d+: expected \|v_los\| <= 30000 km/s"),
    "nan": (_projected(v_los=(0, "nan")), r"column 'v_los', row 1: expected a finite number \[km/s\], found nan"),
}


@pytest.mark.parametrize("case", list(BAD_CSV))
def test_a_bad_members_file_is_refused_in_one_line(models, tmp_path, capsys, case):
    cols, message = BAD_CSV[case]
    path = _csv(tmp_path / "members.csv", **cols)
    code, out, err = _query(capsys, "--model", str(models), "--members", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"error: {path}: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_a_file_without_rows_is_refused(models, tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text("r_proj,v_los,log10_mstar\n")
    code, _, err = _query(capsys, "--model", str(models), "--members", str(path))
    assert code == 2 and "the table has no rows" in err and err.count("\n") == 1


def _table(cols: dict, units: dict) -> Table:
    return Table({k: np.asarray(v, dtype=float) * u.Unit(units[k]) if k in units else np.asarray(v, dtype=float)
                  for k, v in cols.items()})


@pytest.mark.parametrize(("suffix", "fmt"), [(".fits", "fits"), (".ecsv", "ascii.ecsv"), (".h5", "hdf5")])
def test_units_the_file_states_are_honoured(models, tmp_path, capsys, suffix, fmt):
    """kpc (no h: the model's h converts) and m/s give the same answer as Mpc/h and km/s."""
    cols = _projected()
    plain = _csv(tmp_path / "plain.csv", **cols)
    r_kpc = [1000.0 * r / H for r in cols["r_proj"]]
    v_ms = [1000.0 * v for v in cols["v_los"]]
    table = _table({"r_proj": r_kpc, "v_los": v_ms, "log10_mstar": cols["log10_mstar"]},
                   {"r_proj": "kpc", "v_los": "m/s"})
    path = tmp_path / f"units{suffix}"
    table.write(path, format=fmt, **({"path": "members", "serialize_meta": True} if fmt == "hdf5" else {}))
    code, out_plain, _ = _query(capsys, "--model", str(models), "--members", str(plain), "--json")
    assert code == 0
    code, out, err = _query(capsys, "--model", str(models), "--members", str(path), "--json")
    assert code == 0, err
    a, b = json.loads(out_plain), json.loads(out)
    assert b["n_members"] == a["n_members"] and b["sigma_v"] == pytest.approx(a["sigma_v"], rel=1e-9)
    assert b["log10_m200c_median"] == pytest.approx(a["log10_m200c_median"], abs=1e-6)
    assert "units: r_proj converted from kpc to Mpc/h" in err and f"h = {H:g}" in err
    assert "units: v_los converted from m / s to km/s" in err


@pytest.mark.parametrize(("column", "unit", "message"), [
    ("r_proj", "kg", r"column 'r_proj': unit 'kg' cannot be converted to Mpc/h"),
    ("v_los", "km", r"column 'v_los': unit 'km' cannot be converted to km/s"),
    ("log10_mstar", "solMass", r"column 'log10_mstar': unit 'solMass' cannot be converted to dex\(Msun\)"),
])
def test_units_that_cannot_be_converted_are_refused(models, tmp_path, capsys, column, unit, message):
    path = tmp_path / "m.fits"
    _table(_projected(), {column: unit}).write(path)
    code, out, err = _query(capsys, "--model", str(models), "--members", str(path))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert re.search(message, err), err


def test_sky_units_are_honoured(models, tmp_path, capsys):
    cols = _sky()
    plain = _csv(tmp_path / "plain.csv", **cols)
    rad = _table({**cols, "ra": np.radians(cols["ra"]), "dec": np.radians(cols["dec"])}, {"ra": "rad", "dec": "rad"})
    rad.write(tmp_path / "rad.ecsv")
    centre = ["--center", str(RAC), str(DECC), str(ZC), "--json"]
    _, out_plain, _ = _query(capsys, "--model", str(models), "--members", str(plain), *centre)
    code, out, err = _query(capsys, "--model", str(models), "--members", str(tmp_path / "rad.ecsv"), *centre)
    assert code == 0, err
    assert json.loads(out)["sigma_v"] == pytest.approx(json.loads(out_plain)["sigma_v"], rel=1e-6)
    redshift_in_kms = _table(cols, {"z": "km/s"})
    redshift_in_kms.write(tmp_path / "zkms.ecsv")
    code, _, err = _query(capsys, "--model", str(models), "--members", str(tmp_path / "zkms.ecsv"))
    assert code == 2 and "column 'z': unit 'km / s' cannot be converted to a dimensionless redshift" in err


@pytest.mark.parametrize(("centre", "message"), [
    (("229.2", "100", "0.1"), r"--center: dec = 100 is not valid: expected -90 <= dec <= 90 deg"),
    (("-3", "7", "0.1"), r"--center: ra = -3 is not valid: expected 0 <= ra < 360 deg"),
    (("229.2", "7", "0"), r"--center: z = 0 is not valid: expected a redshift 0 < z < 2"),
    (("229.2", "7", "nan"), r"--center: z = nan is not valid"),
])
def test_a_bad_centre_is_refused_before_reading_anything(models, tmp_path, capsys, centre, message):
    bad_members = _csv(tmp_path / "m.csv", **_sky(dec=(0, 95.0)))  # would fail too, later
    code, out, err = _query(capsys, "--model", str(models), "--members", str(bad_members), "--center", *centre)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert re.search(message, err), err


def test_a_centre_for_projected_members_is_refused(models, tmp_path, capsys):
    path = _csv(tmp_path / "m.csv", **_projected())
    code, _, err = _query(capsys, "--model", str(models), "--members", str(path), "--center", "1", "2", "0.1")
    assert code == 2 and err.count("\n") == 1 and "--center applies to sky coordinates" in err


def test_plot_into_a_missing_folder_is_created(models, tmp_path, capsys):
    path = _csv(tmp_path / "m.csv", **_projected())
    plot = tmp_path / "new" / "deeper" / "post.png"
    code, out, err = _query(capsys, "--model", str(models), "--members", str(path), "--plot", str(plot))
    assert code == 0, err
    assert plot.stat().st_size > 1000 and f"plot: {plot}" in out
    assert not [p for p in plot.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(("plot", "message"), [
    ("afile/post.png", r"--plot: expected a file name, got .*afile/post\.png, inside .*afile, which is a file"),
    ("post.pdf", r"--plot: expected a \.png file name"),
    ("adir.png", r"--plot: expected a file name, got .*adir\.png, which is a directory"),
])
def test_a_plot_path_that_cannot_be_written_is_refused_before_computing(models, tmp_path, capsys, plot, message):
    (tmp_path / "afile").write_text("not a folder")
    (tmp_path / "adir.png").mkdir()
    bad_members = _csv(tmp_path / "m.csv", **_sky(dec=(0, 95.0)))  # not even read: the plot path is checked first
    code, out, err = _query(capsys, "--model", str(models), "--members", str(bad_members), "--plot",
                            str(tmp_path / plot))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert re.search(message, err), err
    assert "partial" not in err


def test_far_more_members_than_training_is_flagged_for_every_model(models, tmp_path, capsys):
    """A member list richer than any training cluster's gets RICHNESS and a warning on stderr and in the JSON,
    also from a dynamics model (whose dispersions were never measured that precisely)."""
    rng = np.random.default_rng(5)
    n = 20000
    path = _csv(tmp_path / "rich.csv", r_proj=list(rng.uniform(0.01, 1.5, n)), v_los=list(rng.normal(0, 800.0, n)),
                log10_mstar=list(rng.uniform(9.6, 11.0, n)))
    for inputs in ("full", "dynamics"):
        code, out, err = _query(capsys, "--model", str(models), "--members", str(path), "--json", "--inputs", inputs)
        assert code == 0, err
        s = json.loads(out)
        assert s["flags"] & 16 and "RICHNESS" in s["flag_names"]
        assert any("more than" in w or "the most any training cluster had" in w for w in s["warnings"])
        assert "the most any training cluster had" in err and "(flag RICHNESS)" in err


def test_checked_rows_finds_every_problem_and_every_repeat(tmp_path):
    cols = _projected(r_proj=(1, -1.0), v_los=(4, None))
    for values in cols.values():
        values.extend([values[0], values[0]])  # row 1 twice more
    mf = open_members(_csv(tmp_path / "m.csv", **cols))
    checked = checked_rows(mf, ["r_proj", "v_los", "log10_mstar"])
    found = {(column, tuple(int(r) + 1 for r in rows)) for column, rows, _ in checked.problems}
    n = len(cols["r_proj"])
    assert found == {("r_proj", (2,)), ("v_los", (5,)), (None, (n - 1, n))}
    assert checked.bad().sum() == 4


def test_infer_skips_and_names_bad_galaxy_rows(models, tmp_path, capsys):
    cols = _sky(z=(0, None), dec=(1, 95.0))
    for values in cols.values():
        values.append(values[5])  # a repeated galaxy
    galaxies = _csv(tmp_path / "g.csv", **_without(cols, "log10_mstar"))
    centres = tmp_path / "c.csv"
    centres.write_text(f"id,ra,dec,z\n1,{RAC},{DECC},{ZC}\n2,{RAC},100,{ZC}\n")
    code = main(["infer", "--model", str(models), "--members", str(galaxies), "--clusters", str(centres), "--out",
                 str(tmp_path / "cat")])
    _, err = capsys.readouterr()
    assert code == 0, err
    n = len(cols["ra"])
    assert "column 'z', row 1: galaxy skipped: empty cell" in err
    assert "column 'dec', row 2: galaxy skipped: expected -90 <= dec <= 90 deg, found 95" in err
    assert f"row {n}: galaxy skipped: repeats row 6" in err
    assert "column 'dec', row 2: cluster skipped: expected -90 <= dec <= 90 deg, found 100" in err


@pytest.mark.parametrize(("cols", "message"), [
    (_mixed(), "has both sky (ra, dec, z) and projected (r_proj, v_los) coordinates"),
    ({**_sky(), "log10_mstar": [10 ** x for x in _sky()["log10_mstar"]]}, "stellar masses look linear"),
    ({**_sky(), "ra": ["12h00m01s", *_sky()["ra"][1:]]}, "sexagesimal"),
])
def test_infer_refuses_what_no_row_can_fix(models, tmp_path, capsys, cols, message):
    galaxies = _csv(tmp_path / "g.csv", **cols)
    centres = tmp_path / "c.csv"
    centres.write_text(f"id,ra,dec,z\n1,{RAC},{DECC},{ZC}\n")
    code = main(["infer", "--model", str(models), "--members", str(galaxies), "--clusters", str(centres), "--out",
                 str(tmp_path / "cat")])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "cat").exists()


def test_a_model_without_its_cylinder_and_snapshot_is_refused_alike_by_query_and_infer(models, tmp_path, capsys):
    """query and infer check a model's selection record in one place (inference.selection.model_selection): a model
    whose model.json records no observations is refused by both with the same line, naming the model."""
    import shutil

    from models.io import write_description

    model = tmp_path / "flow"
    shutil.copytree(models / "flow", model)
    description = json.loads((model / "model.json").read_text())
    description["observations"] = {}
    write_description(model, description)  # a deliberate edit: re-digested, so only the missing record can refuse
    expected = (f"error: {model}: the model does not record its cylinder and snapshot (model.json observations); "
                "retrain it with `clustermass train`\n")
    galaxies = _csv(tmp_path / "g.csv", **_sky())
    code, out, err = _query(capsys, "--model", str(model), "--members", str(galaxies))
    assert (code, out, err) == (2, "", expected)
    centres = tmp_path / "c.csv"
    centres.write_text(f"id,ra,dec,z\n1,{RAC},{DECC},{ZC}\n")
    code = main(["infer", "--model", str(model), "--members", str(galaxies), "--clusters", str(centres), "--out",
                 str(tmp_path / "cat")])
    out, err = capsys.readouterr()
    assert (code, out, err) == (2, "", expected)
    assert not (tmp_path / "cat").exists()
