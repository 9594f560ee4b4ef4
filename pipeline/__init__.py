"""Shared leaves of clustermass: what every stage stands on and nothing above it.

Errors, cosmology (the one place cosmologies are parsed), the snapshot description, units and mass definitions,
the TOML reading and typing helpers of the configuration, provenance, atomic file writing, tool-cache locations and
progress output. No module here imports another package of the project.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("clustermass")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
