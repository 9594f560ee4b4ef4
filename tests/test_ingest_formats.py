"""Writer -> reader round trips for every format, header parsing, snapshot resolution, chunked streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ingest.catalog import read_galaxies, read_halos
from ingest.hlist import parse_header
from ingest.schema import GALAXIES, HALOS
from ingest.source import write_sidecar
from ingest.universemachine import UM_DTYPE, UM_FIELDS, to_records
from ingest.writers import EXTENSIONS, GALAXY_FORMATS, HALO_FORMATS, CatalogWriter, write_catalog
from pipeline.cosmology import MDPL2, Cosmology
from pipeline.errors import ConfigError
from pipeline.snapshot import PartialSnapshot, Snapshot, resolve_snapshot

# Formats that carry no box size / cosmology in the file itself need it from the configuration or a sidecar.
_NEEDS_CONFIG = {"csv", "um-binary"}


def _compare(frame, table, schema):
    for col in frame.columns:
        want = np.asarray(table[col], dtype=schema[col].numpy_dtype)
        got = frame[col].to_numpy()
        assert got.dtype == schema[col].numpy_dtype, col
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=col)
        else:
            np.testing.assert_array_equal(got, want, err_msg=col)


@pytest.mark.parametrize("fmt", HALO_FORMATS)
def test_halo_round_trip(tmp_path, fmt, halo_table, snapshot):
    path = write_catalog(tmp_path / f"halos{EXTENSIONS[fmt]}", halo_table, kind="halo", fmt=fmt, snapshot=snapshot)
    cat = read_halos(path, snapshot=snapshot if fmt in _NEEDS_CONFIG else None)
    frame = cat.frame.compute()
    assert list(frame.columns) == HALOS.names
    assert len(frame) == 500
    _compare(frame, halo_table, HALOS)
    assert cat.snapshot.box_size == pytest.approx(100.0)
    assert cat.snapshot.scale_factor == pytest.approx(0.8951, abs=1e-6)
    assert cat.snapshot.cosmology.agrees_with(MDPL2)
    assert cat.units["rvir"] == "Mpc/h" and cat.units["m200c"] == "Msun/h"


@pytest.mark.parametrize("fmt", GALAXY_FORMATS)
def test_galaxy_round_trip(tmp_path, fmt, galaxy_table, snapshot):
    path = write_catalog(
        tmp_path / f"galaxies{EXTENSIONS[fmt]}", galaxy_table, kind="galaxy", fmt=fmt, snapshot=snapshot
    )
    cat = read_galaxies(path, snapshot=snapshot if fmt in _NEEDS_CONFIG else None)
    frame = cat.frame.compute()
    # the UniverseMachine struct has no room for the optical photometry (mag_r, g_r): only HDF5 carries it
    expected = GALAXIES.names if fmt == "hdf5" else [c for c in GALAXIES.names if c in UM_FIELDS]
    assert list(frame.columns) == expected
    assert fmt != "hdf5" or {"mag_r", "g_r"} <= set(frame.columns)
    _compare(frame, galaxy_table, GALAXIES)


def test_rockstar_radii_are_kpc_in_files_and_mpc_in_frames(tmp_path, halo_table, snapshot):
    path = write_catalog(tmp_path / "halos.list", halo_table, kind="halo", fmt="hlist", snapshot=snapshot)
    header = parse_header(str(path))
    first = next(line for line in path.read_text().splitlines() if not line.startswith("#")).split()
    rvir_file = float(first[header.names.index("rvir")])
    assert rvir_file == pytest.approx(halo_table["rvir"][0] * 1e3, rel=1e-5)
    frame = read_halos(path, columns=["rvir"]).frame.compute()
    assert frame["rvir"].iloc[0] == pytest.approx(halo_table["rvir"][0], rel=1e-5)


REAL_LOOKING_HLIST = """\
#scale(0) id(1) desc_scale(2) desc_id(3) num_prog(4) pid(5) upid(6) desc_pid(7) phantom(8) sam_mvir(9) mvir(10) \
rvir(11) rs(12) vrms(13) mmp?(14) scale_of_last_MM(15) vmax(16) x(17) y(18) z(19) vx(20) vy(21) vz(22) Jx(23) \
Jy(24) Jz(25) Spin(26) M200b(27) M200c(28) M500c(29) b_to_a(500c)(30) Mpeak(31)
#a = 0.895100
#Omega_M = 0.307115; Omega_L = 0.692885; h0 = 0.677700
#Full box size = 1000.000000 Mpc/h
#Scale: Scale factor of halo.
#ID: ID of halo (unique across entire simulation).
#Pid: ID of least massive host halo (-1 if distinct halo).
#Units: Masses in Msun / h
#Units: Positions in Mpc / h (comoving)
#Units: Velocities in km / s (physical, peculiar)
#Units: Halo Distances, Lengths, and Radii in kpc / h (comoving)
0.89510 12345 0.90000 23456 1 -1 -1 -1 0 1.2e14 1.3e14 1100.5 250.1 600.2 1 0.5 650.3 10.5 20.25 999.9 100 -200 \
50 1e12 1e12 1e12 0.03 1.4e14 1.1e14 7.5e13 0.8 1.5e14
0.89510 12346 0.90000 23457 1 12345 12345 -1 0 2.2e12 2.1e12 300.0 40.0 150.0 1 0.7 180.0 10.7 20.5 999.5 300 \
-100 20 1e11 1e11 1e11 0.05 2.3e12 1.9e12 1.5e12 0.9 2.5e12
"""


def test_hlist_header_parser_on_real_looking_header(tmp_path):
    path = tmp_path / "hlist_0.89510.list"
    path.write_text(REAL_LOOKING_HLIST)
    info = parse_header(str(path))
    assert info.names[:3] == ("scale", "id", "desc_scale")
    assert "mmp?" in info.names and "b_to_a(500c)" in info.names and info.names[-1] == "Mpeak"
    assert len(info.names) == 32
    assert info.box_size == 1000.0 and info.scale_factor == pytest.approx(0.8951)
    assert info.h == pytest.approx(0.6777) and info.Om0 == pytest.approx(0.307115)
    assert info.header_lines == 11
    cat = read_halos(path)
    frame = cat.frame.compute()
    assert frame["halo_id"].tolist() == [12345, 12346]
    assert frame["upid"].tolist() == [-1, 12345]
    assert frame["m200c"].iloc[0] == pytest.approx(1.1e14, rel=1e-6)
    assert frame["rvir"].iloc[0] == pytest.approx(1.1005)  # kpc/h -> Mpc/h
    assert frame["rs"].iloc[1] == pytest.approx(0.040)
    # h and Om0 in the header identify the MDPL2 preset; the scale factor also comes from the header
    assert cat.snapshot.cosmology.name == "mdpl2" and cat.snapshot.box_size == 1000.0


def test_hlist_scale_factor_from_file_name(tmp_path):
    text = "\n".join(line for line in REAL_LOOKING_HLIST.splitlines() if not line.startswith("#a =")) + "\n"
    path = tmp_path / "hlist_0.89510.list"
    path.write_text(text)
    assert parse_header(str(path)).scale_factor == pytest.approx(0.8951)


def test_large_catalog_streams_in_partitions(tmp_path, snapshot):
    """A catalog many times the block size is read partition by partition, each no larger than a block."""
    from conftest import fake_table

    table = fake_table(GALAXIES, 20_000, seed=3)
    for fmt in GALAXY_FORMATS:
        path = write_catalog(tmp_path / f"g{EXTENSIONS[fmt]}", table, kind="galaxy", fmt=fmt, snapshot=snapshot)
        blocksize = 64 * 1024
        cat = read_galaxies(path, snapshot=snapshot if fmt in _NEEDS_CONFIG else None, blocksize=blocksize,
                            columns=["obs_sm"])
        assert cat.frame.npartitions >= 10, fmt
        sizes = []
        for part in cat.frame.to_delayed():
            sizes.append(len(part.compute()))
        assert sum(sizes) == 20_000
        assert max(sizes) < 20_000 / 5
        assert list(cat.frame.columns) == ["galaxy_id", "upid", "x", "y", "z", "vx", "vy", "vz", "obs_sm"]


def test_ignored_um_galaxies_are_dropped(tmp_path, galaxy_table, snapshot):
    flags = np.zeros(500, dtype=np.int32)
    flags[::5] = 16
    flags[1::5] = 1  # other bits do not matter
    table = dict(galaxy_table, flags=flags)
    path = write_catalog(tmp_path / "sfr_catalog_0.895100.bin", table, kind="galaxy", fmt="um-binary",
                         snapshot=snapshot)
    frame = read_galaxies(path, snapshot=snapshot).frame.compute()
    assert len(frame) == 400
    assert not np.isin(frame["galaxy_id"], table["galaxy_id"][::5]).any()


def test_um_binary_layout_is_128_byte_records(galaxy_table):
    rec = to_records(galaxy_table)
    assert UM_DTYPE.itemsize == 128 and rec.nbytes == 128 * 500
    assert rec["pos"][7, 4] == pytest.approx(galaxy_table["vy"][7])
    assert rec["r"][3] == pytest.approx(galaxy_table["r"][3] * 1e3)  # kpc/h on disk


def test_sidecar_supplies_snapshot_for_csv(tmp_path, halo_table, snapshot):
    path = write_catalog(tmp_path / "halos.csv", halo_table, kind="halo", fmt="csv", snapshot=snapshot)
    write_sidecar(tmp_path, snapshot)
    assert json.loads((tmp_path / "snapshot.json").read_text())["box_size"] == 100.0
    assert read_halos(path).snapshot == snapshot


def test_writer_leaves_nothing_on_failure(tmp_path, halo_table, snapshot):
    target = tmp_path / "halos.h5"
    with pytest.raises(RuntimeError), CatalogWriter(target, HALOS, "hdf5", snapshot) as writer:
        writer.append(halo_table)
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_resolve_snapshot_rules(snapshot):
    cfg = PartialSnapshot.of(snapshot, "the configuration")
    header = PartialSnapshot("f.list (header)", box_size=100.0, scale_factor=0.8951, h=0.6777, Om0=0.307115)
    assert resolve_snapshot(header, cfg) == snapshot
    # h and Om0 alone identify a preset
    assert resolve_snapshot(header).cosmology == MDPL2
    other = Cosmology(h=0.7, Om0=0.3, Ob0=0.045, ns=0.96, sigma8=0.8, name="other")
    assert resolve_snapshot(PartialSnapshot("x", 100.0, 0.5, other)).cosmology == other
    with pytest.raises(ConfigError, match="box_size unknown"):
        resolve_snapshot(PartialSnapshot("f.bin (file name)", scale_factor=0.9, cosmology=MDPL2))


def test_snapshot_from_dict_validates():
    snap = Snapshot.from_dict({"box_size": 250, "redshift": 0.117, "cosmology": "mdpl2"})
    assert snap.scale_factor == pytest.approx(1 / 1.117)
    with pytest.raises(ConfigError, match="unknown key"):
        Snapshot.from_dict({"box_size": 250, "redshift": 0.1, "cosmology": "mdpl2", "boxsize": 3})
    with pytest.raises(ConfigError, match="box_size"):
        Snapshot.from_dict({"box_size": -5, "redshift": 0.1, "cosmology": "mdpl2"})
    with pytest.raises(ConfigError, match="unknown cosmology"):
        Snapshot.from_dict({"box_size": 5, "redshift": 0.1, "cosmology": "wmap99"})


def test_cosmology_matches_astropy():
    astro = MDPL2.to_astropy()
    z = 0.117
    assert MDPL2.hubble(z) == pytest.approx(astro.H(z).value, rel=1e-4)
    rho = astro.critical_density(z).to("Msun / Mpc3").value / MDPL2.h**2
    assert MDPL2.critical_density(z) == pytest.approx(rho, rel=1e-4)
    snap = Snapshot(1000.0, 0.8951, MDPL2)
    assert snap.redshift == pytest.approx(0.11719, abs=1e-5)


def test_column_projection_reads_only_the_projected_columns(tmp_path, halo_table, snapshot):
    """dask pushes ``frame[[...]]`` into the reader: a bad value in a column that is not read goes unnoticed,
    and is caught as soon as that column is read."""
    table = {k: v.copy() for k, v in halo_table.items()}
    table["mvir"][5] = np.nan
    path = write_catalog(tmp_path / "halos.h5", table, kind="halo", fmt="hdf5", snapshot=snapshot)
    cat = read_halos(path)
    xs = cat.frame[["x", "m200c"]].compute()
    assert list(xs.columns) == ["x", "m200c"] and len(xs) == 500
    with pytest.raises(Exception, match="column 'mvir', row 6"):
        cat.frame.compute()
