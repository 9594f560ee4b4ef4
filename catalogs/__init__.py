"""Posterior mass catalogs: schema, block-wise atomic HDF5 / FITS writers, one reader (see ``catalogs.io``)."""

from catalogs.base import CatalogWriter
from catalogs.fits import FITSCatalogWriter
from catalogs.hdf5 import HDF5CatalogWriter
from catalogs.io import Posteriors, open_writer, read_catalog, read_posteriors, write_catalog
from catalogs.schema import COLUMNS, GRID, CatalogError

__all__ = [
    "COLUMNS",
    "GRID",
    "CatalogError",
    "CatalogWriter",
    "FITSCatalogWriter",
    "HDF5CatalogWriter",
    "Posteriors",
    "open_writer",
    "read_catalog",
    "read_posteriors",
    "write_catalog",
]
