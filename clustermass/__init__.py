"""clustermass: galaxy-cluster masses from member galaxies, with honest posteriors.

This package is the top of the house: the ``clustermass`` command line (:mod:`clustermass.cli`), beside the
Prefect flows (:mod:`flows`). Every stage below it is a package of its own, importing only the ones beneath it:
``pipeline`` (shared leaves) < ``ingest`` < ``features`` < ``models`` < ``inference`` < ``catalogs`` < ``flows``
< ``clustermass``.
"""

from pipeline import __version__

__all__ = ["__version__"]
