"""clustermass: galaxy-cluster masses from member galaxies, with honest posteriors.

``pipeline`` holds what every stage shares: errors, cosmology, the snapshot description, units and
mass definitions, provenance, tool-cache locations, and (at the very top) the command line.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clustermass")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
