"""The last bad inputs (issue 18.11, 18.12): each is refused with status 2 and one line naming the path, and leaves
nothing behind -- positions shrunk by a unit label, catalogs without rows, output paths that cannot be written,
byte-order marks, a full disk under a plot, temporaries of a killed synth."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import fake_table
from test_model_files import build_run_models, toy_clusters

from clustermass.cli import main
from inference.member_table import open_centres, open_members
from inference.priors import read_table as read_prior_table
from ingest.catalog import read_galaxies, read_halos
from ingest.checks import CORNER_FRACTION, corner_witness
from ingest.schema import GALAXIES, HALOS
from ingest.synth.box import SynthConfig
from ingest.synth.synthesize import synthesize
from ingest.writers import write_catalog
from pipeline.cosmology import MDPL2
from pipeline.errors import InputError, OutputError
from pipeline.files import LOCK_NAME, sole_writer
from pipeline.snapshot import Snapshot

BOX = 100.0
SNAP = Snapshot(box_size=BOX, scale_factor=0.8951, cosmology=MDPL2, name="test-box")
SNAPSHOT_TOML = "[snapshot]\nbox_size = 100\nscale_factor = 0.8951\ncosmology = 'mdpl2'\n"
BOM = b"\xef\xbb\xbf"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, out: str, err: str) -> str:
    assert code == 2 and out == "" and err.startswith("error: ") and err.count("\n") == 1, (code, out, err)
    return err


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


# --- 18.11: positions that do not fill the box --------------------------------------------------------------------
def _catalogs(tmp_path: Path, *, kpc: bool) -> tuple[Path, Path]:
    """A halo and a galaxy HDF5 catalog of a 100 Mpc/h box; with ``kpc`` the galaxies' positions (Mpc/h values) are
    labelled kpc/h, so a reader shrinks them 1000-fold."""
    halos = write_catalog(tmp_path / "halos.h5", fake_table(HALOS, 300, box=BOX), kind="halo", fmt="hdf5",
                          snapshot=SNAP)
    galaxies = write_catalog(tmp_path / "galaxies.h5", fake_table(GALAXIES, 500, box=BOX, seed=1), kind="galaxy",
                             fmt="hdf5", snapshot=SNAP)
    if kpc:
        with h5py.File(galaxies, "a") as fh:
            for axis in "xyz":
                fh[axis].attrs["unit"] = "kpc/h"
    return halos, galaxies


def test_mpc_positions_labelled_kpc_are_refused_by_inspect_and_observe(tmp_path, capsys):
    halos, galaxies = _catalogs(tmp_path, kpc=True)
    err = one_line(*run_cli(capsys, "inspect", str(galaxies)))
    assert f"{galaxies}: column 'x': every position lies within 1 Mpc/h of the origin" in err
    assert "(the file says kpc/h)" in err and "100 Mpc/h box" in err
    out = tmp_path / "obs"
    err = one_line(*run_cli(capsys, "observe", "--halos", str(halos), "--galaxies", str(galaxies), "--out", str(out),
                            "--v-cut", "1000", "--quiet"))
    assert str(galaxies) in err and "every position lies within" in err
    assert not out.exists() and hidden(tmp_path) == []


def test_the_same_catalog_labelled_mpc_is_accepted(tmp_path, capsys):
    _, galaxies = _catalogs(tmp_path, kpc=False)
    code, out, err = run_cli(capsys, "inspect", str(galaxies))
    assert code == 0 and "500 rows valid" in out, err


@pytest.mark.parametrize(("low", "high", "n"), [
    (40.0, 45.0, 400),  # a sub-volume cut in the middle of the box
    (0.0, 2.0, 400),  # a sub-volume at the origin corner, larger than the corner on one axis only
    (30.0, 30.5, 2),  # two galaxies
    (99.0, 99.99, 1),  # one galaxy
])
def test_sub_volumes_and_small_catalogs_are_not_refused(tmp_path, low, high, n):
    table = fake_table(GALAXIES, n, box=BOX, seed=2)
    rng = np.random.default_rng(3)
    for axis in "xyz":
        table[axis] = rng.uniform(low, high, n).astype(np.float32)
    table["x"][0] = high - 1e-3  # the corner case: one axis of one row decides
    path = write_catalog(tmp_path / "galaxies.h5", table, kind="galaxy", fmt="hdf5", snapshot=SNAP)
    assert len(read_galaxies(path).frame.compute()) == n


def test_the_corner_rule():
    edge = CORNER_FRACTION * BOX
    assert not corner_witness(np.full((10, 3), 0.999 * edge), BOX)
    assert corner_witness(np.array([[0.0, 0.0, edge]]), BOX)
    assert not corner_witness(np.empty((0, 3)), BOX)
    shrunk = np.random.default_rng(0).uniform(0, BOX, (10_000, 3)) / 1000.0  # Mpc/h read as kpc/h
    assert not corner_witness(shrunk, BOX)
    assert corner_witness(shrunk * 1000.0, BOX)


def test_the_scan_stops_at_the_first_partition_that_fills_the_box(tmp_path, monkeypatch):
    """A sound catalog costs one partition of positions: the scan ends at its first witness."""
    table = fake_table(HALOS, 2000, box=BOX)
    path = write_catalog(tmp_path / "halos.h5", table, kind="halo", fmt="hdf5", snapshot=SNAP)
    import ingest.hdf5

    reads: list[tuple[tuple[int, int], tuple[str, ...]]] = []
    original = ingest.hdf5.HDF5Source.read_part
    monkeypatch.setattr(ingest.hdf5.HDF5Source, "read_part",
                        lambda self, spec, columns: reads.append((spec, tuple(columns))) or original(self, spec,
                                                                                                    columns))
    cat = read_halos(path, blocksize=4096)
    assert cat.frame.npartitions > 5
    position_reads = [spec for spec, cols in reads if "x" in cols]
    assert position_reads == [cat.source.parts[0]]


# --- 18.11: catalogs without rows --------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "fmt"), [("halos.csv", "csv"), ("halos.list", "hlist"),
                                           ("galaxies.txt", "um-ascii")])
def test_a_catalog_with_a_header_and_no_rows_is_refused(tmp_path, capsys, name, fmt):
    kind = "galaxy" if name.startswith("galax") else "halo"
    table = {k: v[:0] for k, v in fake_table(GALAXIES if kind == "galaxy" else HALOS, 5, box=BOX).items()}
    path = write_catalog(tmp_path / name, table, kind=kind, fmt=fmt, snapshot=SNAP)
    assert path.read_text().strip()  # a header
    config = tmp_path / "c.toml"
    config.write_text(SNAPSHOT_TOML)
    err = one_line(*run_cli(capsys, "inspect", str(path), "--config", str(config)))
    assert f"{path}: holds no {kind} rows" in err


def test_an_hdf5_catalog_of_zero_rows_is_refused(tmp_path, capsys):
    table = {k: v[:0] for k, v in fake_table(GALAXIES, 5, box=BOX).items()}
    path = write_catalog(tmp_path / "galaxies.h5", table, kind="galaxy", fmt="hdf5", snapshot=SNAP)
    with pytest.raises(InputError, match=r"galaxies\.h5: holds no galaxy rows \(or every row is flagged"):
        read_galaxies(path)


# --- 18.12: output paths that cannot be written -------------------------------------------------------------------
def _bad_out(tmp_path: Path, case: str) -> tuple[str, str]:
    """An output path of kind ``case`` under ``tmp_path`` and what the error must say about it."""
    (tmp_path / "afile").write_text("a file")
    os.symlink("loop_b", tmp_path / "loop_a")
    os.symlink("loop_a", tmp_path / "loop_b")
    os.symlink("nowhere", tmp_path / "dangling")
    return {
        "file": (str(tmp_path / "afile"), "which is a file"),
        "inside a file": (str(tmp_path / "afile" / "sub"), f"inside {tmp_path / 'afile'}, which is a file"),
        "symlink loop": (str(tmp_path / "loop_a"), f"{tmp_path / 'loop_a'} is a loop of symbolic links"),
        "under a symlink loop": (str(tmp_path / "loop_a" / "sub"), "is a loop of symbolic links"),
        "dangling symlink": (str(tmp_path / "dangling"), "is a symbolic link to nowhere, which does not exist"),
        "not UTF-8": (os.fsdecode(os.fsencode(tmp_path) + b"/out\xff"), "expected a path that is valid UTF-8 text"),
    }[case]


COMMANDS = {  # every command with an output path; the inputs do not exist: the output is checked first
    "synth": ["synth", "--box-size", "50"],
    "observe": ["observe", "--halos", "no-halos.h5", "--galaxies", "no-galaxies.h5"],
    "train": ["train", "--observations", "no-observations"],
    "infer": ["infer", "--observations", "no-observations", "--model", "no-model"],
    "validate": ["validate", "--observations", "no-observations", "--model", "no-model"],
    "run": ["run"],
}
CASES = ["file", "inside a file", "symlink loop", "under a symlink loop", "dangling symlink", "not UTF-8"]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_out_that_cannot_be_a_folder_is_one_line_before_any_work(tmp_path, capsys, command, case):
    out, says = _bad_out(tmp_path, case)
    before = sorted(os.listdir(tmp_path))
    err = one_line(*run_cli(capsys, *COMMANDS[command], "--out", out))
    assert f"{command} --out: expected a " in err and says in err, err
    assert "Traceback" not in err and "File exists" not in err
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("case", ["inside a file", "under a symlink loop", "dangling symlink", "not UTF-8"])
def test_a_plot_path_that_cannot_be_written_is_one_line(tmp_path, capsys, case):
    out, says = _bad_out(tmp_path, case)
    if case == "dangling symlink":
        os.symlink("nowhere.png", tmp_path / "dangling.png")
    plot = {"inside a file": out, "under a symlink loop": out}.get(case, out + ".png")
    plot = plot[: -len("/sub")] + "/post.png" if plot.endswith("/sub") else plot
    before = sorted(os.listdir(tmp_path))
    err = one_line(*run_cli(capsys, "query", "--model", "no-model", "--members", "no-members.csv", "--plot", plot))
    assert "--plot: expected a " in err and says.replace("nowhere", "nowhere.png") in err, err
    assert sorted(os.listdir(tmp_path)) == before


def test_run_with_a_configured_run_directory_in_a_symlink_loop_is_one_line(tmp_path, capsys):
    out, _ = _bad_out(tmp_path, "symlink loop")
    config = tmp_path / "c.toml"
    config.write_text(f"[output]\ndir = '{out}'\n")
    err = one_line(*run_cli(capsys, "run", "--config", str(config), "--dry-run"))
    assert "[output] dir: expected a directory" in err and "is a loop of symbolic links" in err


# --- 18.12: byte-order marks -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_run_models(tmp_path_factory.mktemp("bad-inputs") / "model")


def _members_csv(path: Path, *, bom: bool) -> Path:
    _, r, v, m, _ = toy_clusters(1, seed=3)
    lines = ["r_proj,v_los,log10_mstar", *(f"{a:.5f},{b:.3f},{c:.4f}" for a, b, c in zip(r, v, m, strict=True))]
    path.write_bytes((BOM if bom else b"") + ("\n".join(lines) + "\n").encode())
    return path


def test_a_members_csv_with_a_byte_order_mark_is_read(models, tmp_path, capsys):
    plain = _members_csv(tmp_path / "plain.csv", bom=False)
    marked = _members_csv(tmp_path / "marked.csv", bom=True)
    answers = []
    for path in (plain, marked):
        code, out, err = run_cli(capsys, "query", "--model", str(models), "--members", str(path), "--json")
        assert code == 0, err
        answers.append(out)
    assert answers[0] == answers[1]


def test_an_ecsv_members_file_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "m.ecsv"
    path.write_bytes(BOM + textwrap.dedent("""\
        # %ECSV 1.0
        # ---
        # datatype:
        # - {name: r_proj, unit: Mpc / littleh, datatype: float64}
        # - {name: v_los, unit: km / s, datatype: float64}
        # schema: astropy-2.0
        r_proj v_los
        0.1 100.0
        0.4 -250.0
        """).encode())
    members = open_members(path)
    assert members.system == "projected" and members.table.colnames == ["r_proj", "v_los"]


def test_a_centres_file_and_a_prior_table_with_a_byte_order_mark_are_read(tmp_path):
    centres = tmp_path / "centres.csv"
    centres.write_bytes(BOM + b"id,ra,dec,z\nA2052,229.185,7.021,0.0348\n")
    assert open_centres(centres).table.colnames == ["id", "ra", "dec", "z"]
    prior = tmp_path / "prior.ecsv"  # an ECSV whose first line is not "# %ECSV" is not recognised at all
    prior.write_bytes(BOM + textwrap.dedent("""\
        # %ECSV 1.0
        # ---
        # datatype:
        # - {name: log10_m200c, datatype: float64}
        # - {name: density, datatype: float64}
        # schema: astropy-2.0
        log10_m200c density
        13.0 1.0
        14.0 2.0
        15.0 1.0
        """).encode())
    x, d = read_prior_table(prior)
    assert list(x) == [13.0, 14.0, 15.0] and list(d) == [1.0, 2.0, 1.0]


@pytest.mark.parametrize("name", ["halos.csv", "halos.list", "halos"])
def test_a_text_catalog_with_a_byte_order_mark_is_read(tmp_path, name):
    table = fake_table(HALOS, 50, box=BOX)
    fmt = "csv" if name.endswith(".csv") else "hlist"
    plain = write_catalog(tmp_path / ("plain" + Path(name).suffix), table, kind="halo", fmt=fmt, snapshot=SNAP)
    marked = tmp_path / name
    marked.write_bytes(BOM + plain.read_bytes())
    got = read_halos(marked, snapshot=SNAP).frame.compute()
    expected = read_halos(plain, snapshot=SNAP).frame.compute()
    assert list(got.columns) == list(expected.columns) and got.equals(expected)


# --- 18.12: a full disk under `query --plot` ----------------------------------------------------------------------
def test_a_full_disk_while_plotting_leaves_no_hidden_file(models, tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    def full_disk(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")  # some bytes reached the disk before it filled
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    members = _members_csv(tmp_path / "m.csv", bom=False)
    plot = tmp_path / "plots" / "post.png"
    code, out, err = run_cli(capsys, "query", "--model", str(models), "--members", str(members), "--plot", str(plot))
    # the untrained model's notes (flags) come first; the failure is the one error line, the last
    assert code == 2 and out == "" and err.endswith(f"\nerror: {plot}: no space left on device\n"), err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert list(plot.parent.iterdir()) == []


# --- 18.12: temporaries of a killed synth --------------------------------------------------------------------------
TINY = SynthConfig(box_size=30.0, seed=5, log10_mmin=12.0, cells_per_side=1)

_WRITER = """
import sys, time
from pathlib import Path
from pipeline.files import sole_writer
box = Path(sys.argv[1])
with sole_writer(box, what="synth"):
    (box / ".halos.h5.partial").write_bytes(b"half a catalog" * 1000)
    print("writing", flush=True)
    time.sleep(120)
"""


def test_a_killed_synths_temporaries_are_removed_and_a_live_ones_are_not(tmp_path):
    """A live writer holds the folder: a second synth is refused in one line and touches nothing. Killed (SIGKILL,
    no clean-up of its own), it leaves its temporary; the next synth removes it and leaves no hidden file."""
    box = tmp_path / "box"
    box.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(box)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        with pytest.raises(OutputError, match=rf"{box}: another synth \(pid {proc.pid}\) is writing here"):
            synthesize(box, TINY)
        assert hidden(box) == [".halos.h5.partial", LOCK_NAME]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert hidden(box) == [".halos.h5.partial", LOCK_NAME]  # what a killed writer leaves
    result = synthesize(box, TINY)
    assert result.n_halos > 0 and hidden(box) == []


def test_sole_writer_refuses_a_second_holder_in_the_same_process(tmp_path):
    with sole_writer(tmp_path, what="synth"):
        with pytest.raises(OutputError, match=rf"another synth \(pid {os.getpid()}\)"):
            with sole_writer(tmp_path, what="synth"):
                pass
    with sole_writer(tmp_path, what="synth"):  # released: free again
        pass
    assert hidden(tmp_path) == []


def test_a_full_disk_under_the_realism_plot_leaves_no_hidden_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def full_disk(self, fname, *args, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OutputError, match=r"realism\.png: no space left on device$"):
        synthesize(tmp_path, TINY)
    assert hidden(tmp_path) == [] and not (tmp_path / "realism.png").exists()
