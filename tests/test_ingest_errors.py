"""Every bad input gets one clear error naming the file, the column (and row) and what was expected."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from ingest.catalog import read_galaxies, read_halos
from ingest.writers import write_catalog
from pipeline.cosmology import Cosmology
from pipeline.errors import ClusterMassError, ConfigError, InputError
from pipeline.snapshot import Snapshot


def _read_all(cat):
    return cat.frame.compute()


def _write_hlist(tmp_path, table, snapshot, name="halos.list"):
    return write_catalog(tmp_path / name, table, kind="halo", fmt="hlist", snapshot=snapshot)


def _data_line(path, row):
    lines = path.read_text().splitlines()
    header = sum(1 for line in lines if line.startswith("#"))
    return header + row - 1, lines  # 0-based index of the data row in ``lines``


def _edit_field(path, row, column, value):
    idx, lines = _data_line(path, row)
    names = [n.split("(")[0] for n in lines[0][1:].split()]
    fields = lines[idx].split()
    fields[names.index(column)] = value
    lines[idx] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")


def test_misspelt_column_names_the_column_and_the_near_miss(tmp_path, halo_table, snapshot):
    path = _write_hlist(tmp_path, halo_table, snapshot)
    path.write_text(path.read_text().replace("upid(4)", "upidd(4)", 1))
    with pytest.raises(InputError) as err:
        read_halos(path)
    msg = str(err.value)
    assert str(path) in msg and "column 'upid'" in msg and "upidd" in msg and "\n" not in msg


def test_missing_column(tmp_path, halo_table, snapshot):
    path = write_catalog(tmp_path / "halos.h5", halo_table, kind="halo", fmt="hdf5", snapshot=snapshot)
    with h5py.File(path, "a") as fh:
        del fh["m200c"]
    with pytest.raises(InputError, match=r"halos\.h5: column 'm200c': missing required halo column"):
        read_halos(path)


def test_wrong_dtype_in_text_names_column_and_row(tmp_path, halo_table, snapshot):
    path = _write_hlist(tmp_path, halo_table, snapshot)
    _edit_field(path, 37, "M200c", "heavy")
    cat = read_halos(path, validate=False, blocksize=4096)
    with pytest.raises(InputError) as err:
        _read_all(cat)
    msg = str(err.value)
    assert "column 'm200c'" in msg and "row 37 (line" in msg and "expected a number, found 'heavy'" in msg


def test_wrong_dtype_for_integer_id(tmp_path, halo_table, snapshot):
    path = _write_hlist(tmp_path, halo_table, snapshot)
    _edit_field(path, 3, "id", "1.5")
    with pytest.raises(InputError, match=r"column 'halo_id', row 3 \(line \d+\): expected an integer, found '1.5'"):
        read_halos(path)


def test_wrong_dtype_in_hdf5(tmp_path, halo_table, snapshot):
    path = write_catalog(tmp_path / "halos.h5", halo_table, kind="halo", fmt="hdf5", snapshot=snapshot)
    with h5py.File(path, "a") as fh:
        del fh["upid"]
        fh["upid"] = np.full(500, -1.0)
    with pytest.raises(InputError, match=r"column 'upid': expected integers \(i8\), found float64"):
        read_halos(path)


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("x", np.nan, r"column 'x', row 12: expected a finite number \[Mpc/h\], found nan"),
        ("vz", np.inf, r"column 'vz', row 12: expected a finite number \[km/s\], found inf"),
        ("m200c", np.nan, r"column 'm200c', row 12: expected a finite number \[Msun/h\], found nan"),
        ("mvir", -3e12, r"column 'mvir', row 12: expected a non-negative mass \[Msun/h\], found -3e\+12"),
        ("rvir", -0.5, r"column 'rvir', row 12: expected a non-negative length \[Mpc/h\], found -0.5"),
        ("rs", -0.02, r"column 'rs', row 12: expected a non-negative length \[Mpc/h\], found -0.02"),
        ("y", 100.5, r"column 'y', row 12: position 100.5 Mpc/h is outside the box \[0, 100\)"),
        ("z", -2.0, r"column 'z', row 12: position -2 Mpc/h is outside the box"),
    ],
)
def test_bad_values_name_column_and_row(tmp_path, halo_table, snapshot, column, value, expected):
    table = {k: v.copy() for k, v in halo_table.items()}
    table[column][11] = value
    path = write_catalog(tmp_path / "halos.h5", table, kind="halo", fmt="hdf5", snapshot=snapshot)
    with pytest.raises(InputError, match=expected):
        _read_all(read_halos(path))


def test_bad_value_row_is_global_across_text_partitions(tmp_path, halo_table, snapshot):
    table = {k: v.copy() for k, v in halo_table.items()}
    table["m200c"][412] = -1.0
    path = _write_hlist(tmp_path, table, snapshot)
    cat = read_halos(path, blocksize=2048)
    assert cat.frame.npartitions > 5
    with pytest.raises(InputError, match=r"column 'm200c', row 413 \(line 422\): expected a non-negative mass"):
        _read_all(cat)


def test_duplicate_ids(tmp_path, galaxy_table, snapshot):
    table = {k: v.copy() for k, v in galaxy_table.items()}
    table["galaxy_id"][250] = table["galaxy_id"][10]
    path = write_catalog(tmp_path / "g.bin", table, kind="galaxy", fmt="um-binary", snapshot=snapshot)
    with pytest.raises(InputError, match=r"g\.bin: column 'galaxy_id', row 251: id 77 occurs more than once"):
        read_galaxies(path, snapshot=snapshot, blocksize=4096)


def test_truncated_text_file(tmp_path, halo_table, snapshot):
    path = _write_hlist(tmp_path, halo_table, snapshot)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    with pytest.raises(InputError, match=r"halos\.list: file is truncated: the last line has \d+ of 20 fields"):
        read_halos(path)


def test_truncated_binary_file(tmp_path, galaxy_table, snapshot):
    path = write_catalog(tmp_path / "g.bin", galaxy_table, kind="galaxy", fmt="um-binary", snapshot=snapshot)
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(InputError, match=r"g\.bin: file is truncated: 63950 bytes is not a whole number of 128-byte"):
        read_galaxies(path, snapshot=snapshot)


def test_truncated_hdf5_file(tmp_path, halo_table, snapshot):
    path = write_catalog(tmp_path / "halos.h5", halo_table, kind="halo", fmt="hdf5", snapshot=snapshot)
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(InputError, match=r"halos\.h5: is not a readable HDF5 file .*truncated or corrupted"):
        read_halos(path)


def test_hdf5_columns_of_different_lengths(tmp_path, halo_table, snapshot):
    path = write_catalog(tmp_path / "halos.h5", halo_table, kind="halo", fmt="hdf5", snapshot=snapshot)
    with h5py.File(path, "a") as fh:
        fh["vz"].resize((300,))
    with pytest.raises(InputError, match=r"columns have different lengths \(300 to 500 rows\).*'vz'.*truncated"):
        read_halos(path)


def test_unknown_format(tmp_path):
    path = tmp_path / "halos.parquet"
    path.write_bytes(b"PAR1\x00\x00")
    with pytest.raises(InputError, match=r"halos\.parquet: unknown format: expected a Rockstar hlist"):
        read_halos(path)
    with pytest.raises(ConfigError, match="unknown format 'fits'"):
        read_halos(path, format="fits")


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.h5: no such file"):
        read_halos(tmp_path / "nope.h5")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"box_size": 250.0}, r"halos\.list: box_size 100 Mpc/h \(header\) disagrees with 250 Mpc/h from the config"),
        ({"scale_factor": 0.5}, r"halos\.list: scale_factor 0.8951 \(header\) disagrees with 0.5 from the conf"),
        (
            {"cosmology": Cosmology(h=0.7, Om0=0.27, Ob0=0.045, ns=0.96, sigma8=0.8)},
            r"cosmology \(h=0.6777, Om0=0.307115\) \(header\) disagrees with \(h=0.7, Om0=0.27\)",
        ),
    ],
)
def test_header_disagreeing_with_configuration(tmp_path, halo_table, snapshot, override, expected):
    path = _write_hlist(tmp_path, halo_table, snapshot)
    configured = Snapshot(**{**snapshot.__dict__, **override})
    with pytest.raises(InputError, match=expected):
        read_halos(path, snapshot=configured)


def test_binary_without_snapshot_metadata_asks_for_configuration(tmp_path, galaxy_table, snapshot):
    path = write_catalog(tmp_path / "sfr_catalog_0.895100.bin", galaxy_table, kind="galaxy", fmt="um-binary",
                         snapshot=snapshot)
    with pytest.raises(ConfigError, match=r"snapshot box_size, cosmology unknown .*\[snapshot\] table"):
        read_galaxies(path)


def test_log10_stellar_masses_are_refused(tmp_path, galaxy_table, snapshot):
    table = dict(galaxy_table, obs_sm=np.log10(galaxy_table["obs_sm"]))
    path = write_catalog(tmp_path / "g.h5", table, kind="galaxy", fmt="hdf5", snapshot=snapshot)
    with pytest.raises(InputError, match=r"column 'obs_sm': stellar masses look like log10\(M\*/Msun\)"):
        _read_all(read_galaxies(path))


def test_header_and_data_field_counts_differ(tmp_path, halo_table, snapshot):
    path = _write_hlist(tmp_path, halo_table, snapshot)
    path.write_text(path.read_text().replace(" Mpeak(19)", "", 1))
    with pytest.raises(InputError, match=r"header names 19 columns but the first data line has 20 fields"):
        read_halos(path)


def test_errors_are_clustermass_errors():
    assert issubclass(InputError, ClusterMassError) and issubclass(ConfigError, ClusterMassError)
    err = InputError("a.csv", "expected a number", column="x", row=3, line=5)
    assert str(err) == "a.csv: column 'x', row 3 (line 5): expected a number"
