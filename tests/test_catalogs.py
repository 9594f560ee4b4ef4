"""Posterior mass catalogs: schema, block-wise atomic HDF5 / FITS writers, the reader, and their errors."""

from __future__ import annotations

import re
import warnings

import astropy.units as u
import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from catalogs import COLUMNS, CatalogError, open_writer, read_catalog, write_catalog
from catalogs.base import temp_path
from catalogs.schema import (
    GRID,
    LOG_MASS_UNIT,
    NAMES,
    OPTIONAL,
    PDF_NAME,
    REQUIRED,
    SCHEMA_VERSION,
    column,
    fits_unit,
    parse_unit,
)
from pipeline.errors import InputError, OutputError

SPEC_NAMES = [
    "cluster_id", "los", "n_members", "sigma_v",
    "log10_m200c_mode", "log10_m200c_median", "log10_m200c_mean",
    "log10_m200c_p16", "log10_m200c_p84", "log10_m200c_p025", "log10_m200c_p975",
    "log10_m200c_uncorrected_mode", "log10_m200c_uncorrected_mean",
    "log10_m200c_pdf", "log10_m200c_true", "ood_score", "edge_mass", "flags", "model_inputs",
]
SUFFIX = {"hdf5": ".h5", "fits": ".fits"}
PROVENANCE = {
    "code_version": "0.1.0+g1234abc",
    "config_digest": "sha256:" + "0123456789abcdef" * 4,
    "model_digest": "sha256:" + "fedcba9876543210" * 4,
    "target_prior": "tinker08-mdpl2",
    "training_prior": "kde",
    "cosmology": '{"name": "mdpl2", "H0": 67.77, "Om0": 0.307115, "Ob0": 0.048206, "ns": 0.96, "sigma8": 0.8228}',
    "snapshot": '{"name": "test-box", "box_size": 100.0, "scale_factor": 0.8951}',
    "created": "2026-11-02T10:11:12.123456+00:00",
    "seed": 20261102,
    "h": 0.6777,
    "tiny": -1.2345678901234567e-100,  # more digits than a FITS card holds: exact only through CMPROV
    "mocks": True,
    "MixedCaseKey": "kept as is",
}


def make_columns(n: int, n_grid: int, *, seed: int = 0, optional: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for col in COLUMNS:
        if not optional and not col.required:
            continue
        if col.vector:
            out[col.name] = rng.random((n, n_grid)).astype(np.float32)
        elif col.numpy_dtype.kind == "i":
            info = np.iinfo(col.numpy_dtype)
            out[col.name] = rng.integers(info.min, info.max, n, dtype=col.numpy_dtype, endpoint=True)
        else:
            out[col.name] = rng.normal(14.0, 0.5, n).astype(np.float32)
    if n >= 3:  # bit patterns that a careless conversion would lose
        out["log10_m200c_mean"][:3] = [np.nan, -0.0, np.inf]
    return out


@pytest.fixture
def grid() -> np.ndarray:
    return np.linspace(13.0, 15.5, 64)


@pytest.fixture
def cols(grid) -> dict[str, np.ndarray]:
    return make_columns(300, len(grid))


def assert_same_table(a: Table, b: Table) -> None:
    assert a.colnames == b.colnames
    for name in a.colnames:
        ca, cb = a[name], b[name]
        assert ca.dtype == cb.dtype, name
        assert ca.shape == cb.shape, name
        assert np.asarray(ca).tobytes() == np.asarray(cb).tobytes(), name
        assert ca.unit == cb.unit, name
        assert ca.description == cb.description, name
    assert a.meta.keys() == b.meta.keys()
    pa, pb = a.meta["provenance"], b.meta["provenance"]
    assert list(pa) == list(pb)
    assert [(v, type(v)) for v in pa.values()] == [(v, type(v)) for v in pb.values()]
    assert a.meta[GRID.name].dtype == b.meta[GRID.name].dtype == np.float64
    assert a.meta[GRID.name].tobytes() == b.meta[GRID.name].tobytes()
    assert a.meta[f"{GRID.name}_unit"] == b.meta[f"{GRID.name}_unit"]
    assert a.meta["schema_version"] == b.meta["schema_version"]


def assert_matches_input(t: Table, cols: dict[str, np.ndarray], grid: np.ndarray, provenance: dict) -> None:
    assert t.colnames == [c for c in NAMES if c in cols]
    for name in t.colnames:
        spec = column(name)
        assert t[name].dtype == spec.numpy_dtype, name
        assert np.asarray(t[name]).tobytes() == cols[name].astype(spec.numpy_dtype).tobytes(), name
        assert t[name].unit == parse_unit(spec.unit), name
        assert (t[name].unit is None) if not spec.unit else (str(t[name].unit) == spec.unit), name
        assert t[name].description == spec.description
    assert t.meta["provenance"] == provenance
    assert [type(v) for v in t.meta["provenance"].values()] == [type(v) for v in provenance.values()]
    assert t.meta[GRID.name].tobytes() == grid.astype(np.float64).tobytes()
    assert str(t.meta[f"{GRID.name}_unit"]) == GRID.unit


def no_leftovers(path) -> bool:
    return not path.exists() and not temp_path(path).exists()


# -- schema -----------------------------------------------------------------------------------------------------


def test_schema_has_spec_columns_and_parseable_units():
    assert [n for n in NAMES if n != "log10_m200c_std"] == SPEC_NAMES
    assert set(OPTIONAL) == {"log10_m200c_std", "log10_m200c_true", "ood_score", "edge_mass", "flags", "model_inputs"}
    assert column("cluster_id").dtype == "int64" and column("los").dtype == "int16"
    assert column("n_members").dtype == "int32" and column(PDF_NAME).vector
    assert GRID.dtype == "float64"
    for col in (*COLUMNS, GRID):
        if col.unit:
            assert str(parse_unit(col.unit)) == col.unit  # the strings round-trip exactly through astropy
    assert parse_unit(LOG_MASS_UNIT).physical_unit.to_string() == "solMass / littleh"
    assert parse_unit("km / s") == u.km / u.s


def test_fits_units_are_standard_and_parse_silently():
    # FITS units have no dex and no h: the log columns get a blank TUNIT, the rest the FITS spelling
    assert fits_unit(LOG_MASS_UNIT) == fits_unit("dex") == fits_unit("1 / dex") == fits_unit("") == ""
    assert fits_unit("km / s") == "km s-1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for col in (*COLUMNS, GRID):
            if fits_unit(col.unit):
                assert u.Unit(fits_unit(col.unit), format="fits") == parse_unit(col.unit), col.name


def test_dex_msun_over_h_is_the_trap_we_avoid():
    # astropy reads "h" as hour: "dex(Msun/h)" would silently mean log10 of solar masses per hour
    assert u.Unit("dex(Msun/h)").physical_unit == u.solMass / u.hour


# -- round trips ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_round_trip_is_exact(tmp_path, grid, cols, fmt):
    path = write_catalog(tmp_path / f"cat{SUFFIX[fmt]}", cols, grid, PROVENANCE, block_rows=97, fsync=False)
    assert path == tmp_path / f"cat{SUFFIX[fmt]}"
    assert no_leftovers(tmp_path / "other") and not temp_path(path).exists()
    assert_matches_input(read_catalog(path), cols, grid, PROVENANCE)


def test_formats_give_identical_tables(tmp_path, grid, cols):
    h5 = write_catalog(tmp_path / "cat.hdf5", cols, grid, PROVENANCE)
    ft = write_catalog(tmp_path / "cat.fit", cols, grid, PROVENANCE)
    assert_same_table(read_catalog(h5), read_catalog(ft))


def test_table_converts_between_formats(tmp_path, grid, cols):
    first = read_catalog(write_catalog(tmp_path / "a.h5", cols, grid, PROVENANCE))
    second = read_catalog(write_catalog(tmp_path / "b.fits", first))  # grid and provenance from meta
    assert_same_table(first, second)
    assert_same_table(first, read_catalog(write_catalog(tmp_path / "c.h5", second)))


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_uneven_blocks_equal_one_shot(tmp_path, grid, cols, fmt):
    one = write_catalog(tmp_path / f"one{SUFFIX[fmt]}", cols, grid, PROVENANCE, block_rows=10_000)
    path = tmp_path / f"blocks{SUFFIX[fmt]}"
    n = len(cols["cluster_id"])
    small = {"chunk_bytes": 1000} if fmt == "fits" else {}  # FITS: packed and written 3 rows at a time
    with open_writer(path, n, grid, list(cols), PROVENANCE, **small) as w:
        for start, stop in [(0, 1), (1, 1), (1, 8), (8, 131), (131, n)]:
            w.append({k: v[start:stop] for k, v in cols.items()})
        assert temp_path(path).exists() and not path.exists()  # work happens under the hidden name
    assert_same_table(read_catalog(one), read_catalog(path))
    if fmt == "fits":  # deterministic bytes: block boundaries leave no trace
        assert one.read_bytes() == path.read_bytes()


def test_hdf5_layout_and_compression(tmp_path, grid, cols):
    plain = write_catalog(tmp_path / "plain.h5", cols, grid, PROVENANCE)
    lzf = write_catalog(tmp_path / "lzf.h5", cols, grid, PROVENANCE, compression="lzf", block_rows=50)
    gz = write_catalog(tmp_path / "gz.h5", cols, grid, PROVENANCE, compression="gzip", chunk_rows=16)
    with h5py.File(plain) as f:
        for name in cols:
            assert f[name].attrs["unit"] == column(name).unit
            assert f[name].attrs["description"] == column(name).description
        assert f[PDF_NAME].shape == (300, len(grid)) and f[PDF_NAME].compression is None
        assert f[GRID.name].dtype == np.float64 and f[GRID.name].attrs["unit"] == GRID.unit
        assert f.attrs["code_version"] == PROVENANCE["code_version"] and f.attrs["seed"] == PROVENANCE["seed"]
    with h5py.File(lzf) as f:
        assert f[PDF_NAME].compression == "lzf" and f[PDF_NAME].shuffle
    with h5py.File(gz) as f:
        assert f[PDF_NAME].compression == "gzip" and f[PDF_NAME].chunks == (16, len(grid))
    ref = read_catalog(plain)
    assert_same_table(ref, read_catalog(lzf))
    assert_same_table(ref, read_catalog(gz))


def test_fits_layout_verify_and_astropy_reader(tmp_path):
    grid = np.linspace(13.0, 15.5, 512)
    cols = make_columns(50, 512)
    path = write_catalog(tmp_path / "cat.fits", cols, grid, PROVENANCE)
    assert path.stat().st_size % 2880 == 0
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert [h.name for h in hdul] == ["PRIMARY", "CATALOG", "GRID"]
        hdr = hdul["CATALOG"].header
        assert hdr["CMSCHEMA"] == SCHEMA_VERSION
        for i, name in enumerate(hdul["CATALOG"].columns.names, 1):
            spec = column(name)
            assert hdr[f"TUNIT{i}"] == fits_unit(spec.unit)  # every column; '' for unitless and log ones
            assert hdr[f"TCOMM{i}"] == spec.description
            assert hdr.get(f"CMUNIT{i}") == (spec.unit or None)  # the exact unit, for read_catalog
        assert hdr["TUNIT5"] == "" and "log10(M200c / (h^-1 Msun))" in hdr.comments["TUNIT5"]
        assert any("h = H0/100" in line for line in hdr["COMMENT"])
        assert hdr[f"TFORM{NAMES.index(PDF_NAME) + 1}"] == "512E"
        assert hdul["GRID"].is_image and hdul["GRID"].header["CMUNIT"] == GRID.unit
        assert hdul["GRID"].header["BUNIT"] == "" and np.array_equal(hdul["GRID"].data, grid)
        assert hdr["CREATED"] == PROVENANCE["created"]
        assert hdr["code_version"] == PROVENANCE["code_version"]  # HIERARCH card
        assert hdr["cosmology"] == PROVENANCE["cosmology"]  # long string over CONTINUE cards
        assert hdr["MOCKS"] is True and hdr["SEED"] == PROVENANCE["seed"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # issue 14.10: a first read without noise (no UnitsWarning, one table)
        t = Table.read(path)
        assert_same_astropy_table(t, Table.read(path, hdu="CATALOG"))
    assert t.colnames == list(cols)
    for name in t.colnames:
        assert np.array_equal(np.asarray(t[name]), cols[name], equal_nan=True)
        want = fits_unit(column(name).unit)
        assert (t[name].unit is None) if not want else (t[name].unit == u.Unit(want, format="fits")), name
    assert t["sigma_v"].unit == u.km / u.s
    assert t.meta["CREATED"] == PROVENANCE["created"] and t.meta["CMUNIT5"] == LOG_MASS_UNIT


def assert_same_astropy_table(a: Table, b: Table) -> None:
    assert a.colnames == b.colnames and a.meta == b.meta
    for name in a.colnames:
        assert a[name].unit == b[name].unit
        assert np.array_equal(np.asarray(a[name]), np.asarray(b[name]), equal_nan=True)


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_reads_are_silent_and_read_catalog_keeps_exact_units(tmp_path, grid, cols, fmt):
    path = write_catalog(tmp_path / f"cat{SUFFIX[fmt]}", cols, grid, PROVENANCE, fsync=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if fmt == "fits":
            Table.read(path)
        else:  # astropy's HDF5 reader reads one compound dataset; this file is one dataset per column
            with pytest.raises(ValueError, match="no table found"):
                Table.read(path)
        t = read_catalog(path)
    assert_matches_input(t, cols, grid, PROVENANCE)  # exact units: dex(solMass / littleh), dex, 1 / dex, km / s
    assert str(t["log10_m200c_mode"].unit) == LOG_MASS_UNIT and str(t[PDF_NAME].unit) == "1 / dex"
    assert str(t["log10_m200c_std"].unit) == "dex" and str(t["sigma_v"].unit) == "km / s"
    assert t["cluster_id"].unit is None


def write_version1_fits(path, cols: dict[str, np.ndarray], grid: np.ndarray, provenance: dict) -> None:
    """A catalog as schema version 1 wrote it: exact astropy units in TUNITn, GRID a one-column BINTABLE."""
    import json

    primary = fits.PrimaryHDU()
    primary.header["CMSCHEMA"] = "1"
    fcols = []
    for name in [c for c in NAMES if c in cols]:
        spec = column(name)
        fmt = f"{len(grid)}E" if spec.vector else {"int16": "I", "int32": "J", "int64": "K", "float32": "E"}[spec.dtype]
        fcols.append(fits.Column(name=name, format=fmt, unit=spec.unit or None, array=cols[name]))
    cat = fits.BinTableHDU.from_columns(fcols, name="CATALOG")
    cat.header["CMSCHEMA"] = "1"
    cat.header["CMPROV"] = json.dumps(provenance)
    grid_hdu = fits.BinTableHDU.from_columns(
        [fits.Column(name=GRID.name, format="D", unit=GRID.unit, array=grid)], name="GRID"
    )
    fits.HDUList([primary, cat, grid_hdu]).writeto(path)


def test_refuses_the_version_1_layout(tmp_path, grid, cols):
    """No reader of the first layout is kept (no such catalog exists outside this repository's history): a FITS
    file of that layout, or an HDF5 file stamped 1, is refused in one line naming it."""
    old = tmp_path / "v1.fits"
    write_version1_fits(old, cols, grid, PROVENANCE)
    with pytest.raises(CatalogError, match=rf"^{re.escape(str(old))}: catalog schema version 1 is not supported "
                                           rf"\(this code: {SCHEMA_VERSION}\)$"):
        read_catalog(old)
    path = write_catalog(tmp_path / "cat.h5", cols, grid, PROVENANCE)
    with h5py.File(path, "r+") as f:
        f.attrs["clustermass_catalog"] = "1"
    with pytest.raises(CatalogError, match="catalog schema version 1 is not supported"):
        read_catalog(path)


def test_refuses_unknown_schema_version(tmp_path, grid, cols):
    path = write_catalog(tmp_path / "cat.h5", cols, grid, PROVENANCE)
    with h5py.File(path, "r+") as f:
        f.attrs["clustermass_catalog"] = "3"
    with pytest.raises(CatalogError, match="schema version 3 is not supported"):
        read_catalog(path)


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_catalog_without_true_or_std(tmp_path, grid, fmt):
    cols = make_columns(40, len(grid), optional=False)
    assert "log10_m200c_true" not in cols
    path = write_catalog(tmp_path / f"real{SUFFIX[fmt]}", cols, grid, {"code_version": "x"})
    t = read_catalog(path)
    assert "log10_m200c_true" not in t.colnames and "log10_m200c_std" not in t.colnames
    assert_matches_input(t, cols, grid, {"code_version": "x"})


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_empty_catalog_and_column_subset(tmp_path, grid, cols, fmt):
    empty = write_catalog(tmp_path / f"empty{SUFFIX[fmt]}", make_columns(0, len(grid)), grid, None)
    t = read_catalog(empty)
    assert len(t) == 0 and t[PDF_NAME].shape == (0, len(grid)) and t.meta["provenance"] == {}
    full = write_catalog(tmp_path / f"full{SUFFIX[fmt]}", cols, grid, PROVENANCE)
    sub = read_catalog(full, columns=[PDF_NAME, "cluster_id"])
    assert sub.colnames == ["cluster_id", PDF_NAME]
    assert np.array_equal(sub[PDF_NAME], cols[PDF_NAME])


def test_reader_sniffs_unknown_extension(tmp_path, grid, cols):
    path = write_catalog(tmp_path / "cat.fits", cols, grid, PROVENANCE)
    renamed = path.rename(tmp_path / "cat.dat")
    assert_matches_input(read_catalog(renamed), cols, grid, PROVENANCE)


# -- atomicity --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_exception_midway_leaves_nothing(tmp_path, grid, cols, fmt):
    path = tmp_path / f"cat{SUFFIX[fmt]}"
    with pytest.raises(RuntimeError, match="boom"), open_writer(path, 300, grid, list(cols), PROVENANCE) as w:
        w.append({k: v[:100] for k, v in cols.items()})
        raise RuntimeError("boom")
    assert no_leftovers(path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_failed_rewrite_keeps_the_old_file(tmp_path, grid, cols, fmt):
    path = write_catalog(tmp_path / f"cat{SUFFIX[fmt]}", cols, grid, PROVENANCE)
    before = path.read_bytes()
    w = open_writer(path, 300, grid, list(cols), {"code_version": "new"})
    w.append({k: v[:10] for k, v in cols.items()})
    with pytest.raises(CatalogError):
        w.close()  # 10 of 300 rows
    assert path.read_bytes() == before and not temp_path(path).exists()


def test_dropped_writer_removes_its_temp_file(tmp_path, grid, cols):
    path = tmp_path / "cat.fits"
    w = open_writer(path, 300, grid, list(cols), PROVENANCE)
    w.append({k: v[:10] for k, v in cols.items()})
    assert temp_path(path).exists()
    del w
    assert no_leftovers(path)


# -- errors -----------------------------------------------------------------------------------------------------


def _fails(path, action, *parts: str) -> CatalogError:
    with pytest.raises(CatalogError) as info:
        action()
    err = info.value
    msg = str(err)
    assert isinstance(err, InputError) and isinstance(err, ValueError)
    assert "\n" not in msg and str(path) in msg, msg
    for part in parts:
        assert part in msg, msg
    assert no_leftovers(path)
    return err


BLOCK_ERRORS = {
    "missing column": (lambda c: {k: v for k, v in c.items() if k != "sigma_v"}, ["column 'sigma_v'", "lacks"]),
    "extra column": (lambda c: {**c, "richness": c["sigma_v"]}, ["column 'richness'", "extra"]),
    "undeclared optional": (lambda c: {**c, "log10_m200c_std": c["sigma_v"]}, ["'log10_m200c_std'", "declared"]),
    "pdf width": (lambda c: {**c, PDF_NAME: c[PDF_NAME][:, :-1]}, [f"column '{PDF_NAME}'", "(rows, 64)"]),
    "pdf 1-D": (lambda c: {**c, PDF_NAME: c[PDF_NAME][:, 0]}, [f"column '{PDF_NAME}'", "shape"]),
    "ragged": (lambda c: {**c, "los": c["los"][:-1]}, ["column 'los'", "rows"]),
    "float ids": (lambda c: {**c, "cluster_id": c["cluster_id"] * 1.0}, ["column 'cluster_id'", "integers"]),
    "int16 overflow": (lambda c: {**c, "los": np.where(np.arange(len(c["los"])) == 4, 40000, 1)},
                       ["column 'los'", "row 25", "40000"]),  # 1-based catalog row
    "strings": (lambda c: {**c, "sigma_v": c["sigma_v"].astype(str)}, ["column 'sigma_v'", "numbers"]),
    "not a dict": (lambda c: list(c.values()), ["dict"]),
}


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
@pytest.mark.parametrize("case", list(BLOCK_ERRORS))
def test_bad_block(tmp_path, grid, fmt, case):
    cols = make_columns(20, len(grid), optional=False)
    path = tmp_path / f"cat{SUFFIX[fmt]}"
    w = open_writer(path, 40, grid, list(cols), PROVENANCE)
    w.append(cols)
    make_block, parts = BLOCK_ERRORS[case]
    _fails(path, lambda: w.append(make_block(cols)), *parts)
    _fails(path, lambda: w.append(cols), "aborted")  # the writer is dead after an error


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_row_count_errors(tmp_path, grid, cols, fmt):
    path = tmp_path / f"cat{SUFFIX[fmt]}"
    w = open_writer(path, 250, grid, list(cols), PROVENANCE)
    w.append({k: v[:200] for k, v in cols.items()})
    _fails(path, lambda: w.append({k: v[200:300] for k, v in cols.items()}), "exceed the 250 rows declared")
    w = open_writer(path, 250, grid, list(cols), PROVENANCE)
    w.append({k: v[:200] for k, v in cols.items()})
    _fails(path, w.close, "200 rows were appended but 250 were declared")
    with pytest.raises(CatalogError, match="250 were declared"), open_writer(path, 250, grid, list(cols)) as w:
        w.append({k: v[:100] for k, v in cols.items()})
    assert no_leftovers(path)


def test_unknown_extension(tmp_path, grid, cols):
    path = tmp_path / "cat.txt"
    _fails(path, lambda: write_catalog(path, cols, grid, PROVENANCE), "'.txt'", ".h5", ".fits")
    _fails(path, lambda: open_writer(path, 1, grid, list(cols)), "'.txt'")
    path.write_text("not a catalog\n")
    with pytest.raises(CatalogError, match=r"extension '\.txt'"):
        read_catalog(path)
    assert_matches_input(read_catalog(write_catalog(path, cols, grid, PROVENANCE, fmt="fits")), cols, grid,
                         PROVENANCE)


DECLARATION_ERRORS = {
    "unknown column": (dict(columns=[*REQUIRED, "richness"]), "column 'richness'"),
    "missing required": (dict(columns=[c for c in REQUIRED if c != PDF_NAME]), f"column '{PDF_NAME}'"),
    "grid as column": (dict(columns=[*REQUIRED, GRID.name]), "grid="),
    "grid decreasing": (dict(grid=np.linspace(15, 13, 10)), "strictly increasing"),
    "grid 2-D": (dict(grid=np.ones((3, 3))), "1-D"),
    "negative rows": (dict(n_rows=-1), "non-negative"),
    "nested provenance": (dict(provenance={"cosmology": {"H0": 70}}), "'cosmology'"),
    "non-ascii provenance": (dict(provenance={"who": "Ω"}), "ASCII"),
    "nan provenance": (dict(provenance={"h": float("nan")}), "not finite"),
    "reserved key": (dict(provenance={"naxis2": 3}), "reserved"),
    "bad key": (dict(provenance={"my key": 3}), "identifiers"),
    "case clash": (dict(provenance={"seed": 1, "SEED": 2}), "case"),
}


@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
@pytest.mark.parametrize("case", list(DECLARATION_ERRORS))
def test_bad_declaration(tmp_path, fmt, case):
    path = tmp_path / f"cat{SUFFIX[fmt]}"
    args = dict(n_rows=5, grid=np.linspace(13, 15, 8), columns=list(REQUIRED), provenance=PROVENANCE)
    change, part = DECLARATION_ERRORS[case]
    args.update(change)
    _fails(path, lambda: open_writer(path, **args), part)


def test_reader_errors(tmp_path, grid, cols):
    _fails(tmp_path / "absent.h5", lambda: read_catalog(tmp_path / "absent.h5"), "no such file")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(CatalogError, match="not a clustermass posterior mass catalog"):
        read_catalog(other)
    path = write_catalog(tmp_path / "cat.h5", cols, grid, PROVENANCE)
    with h5py.File(path, "r+") as f:
        del f["sigma_v"]
    with pytest.raises(CatalogError, match="column 'sigma_v'"):
        read_catalog(path)
    real = write_catalog(tmp_path / "real.fits", make_columns(3, 64, optional=False), grid)
    with pytest.raises(CatalogError, match="column 'log10_m200c_std': column not in the file"):
        read_catalog(real, columns=["log10_m200c_std"])


@pytest.mark.filterwarnings("ignore:File may have been truncated")
@pytest.mark.parametrize("fmt", ["hdf5", "fits"])
def test_truncated_file_is_a_clear_error(tmp_path, grid, cols, fmt):
    path = write_catalog(tmp_path / f"cat{SUFFIX[fmt]}", cols, grid, PROVENANCE)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CatalogError) as info:
        read_catalog(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


class _FullDisk:
    """A file whose writes fail like a full disk after ``ok`` of them."""

    def __init__(self, fh, ok: int) -> None:
        self.fh, self.ok = fh, ok

    def write(self, data) -> int:
        if self.ok <= 0:
            raise OSError(28, "No space left on device")
        self.ok -= 1
        return self.fh.write(data)

    def close(self) -> None:
        self.fh.close()


def test_fits_worker_write_error_surfaces_and_cleans_up(tmp_path, grid, cols):
    path = tmp_path / "sub" / "cat.fits"  # missing directories are created
    w = open_writer(path, 300, grid, list(cols), PROVENANCE, chunk_bytes=4096)  # ~12 rows per chunk
    w._fh = _FullDisk(w._fh, ok=3)
    with pytest.raises(OutputError, match="no space left on device"):
        w.append(cols)
        w.close()
    assert no_leftovers(path) and list(path.parent.iterdir()) == []
