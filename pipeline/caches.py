"""Where tools keep their caches: under the project (or run) directory, never the user's home.

Prefect (PREFECT_HOME), matplotlib (MPLCONFIGDIR), dask's scratch space (temporary-directory) and XDG caches
are pointed at ``<root>/.cache/...``; Prefect gets quiet defaults (:data:`PREFECT_DEFAULTS`), set before it is
imported; colossus persists nothing unless given a directory
(:func:`pipeline.cosmology.colossus_cosmology`). Variables the user already set are left alone.
"""

from __future__ import annotations

import os
from pathlib import Path

PREFECT_DEFAULTS = {  # quiet, robust defaults for Prefect's temporary local server (it starts slowly on 2 cores)
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}


def cache_root(base: str | os.PathLike[str] | None = None) -> Path:
    """``$CLUSTERMASS_CACHE`` if set, else ``<base or cwd>/.cache``."""
    env = os.environ.get("CLUSTERMASS_CACHE")
    return Path(env) if env else Path(base or os.getcwd()) / ".cache"


def configure_caches(base: str | os.PathLike[str] | None = None) -> Path:
    """Point tool caches under :func:`cache_root` (creating it) and return that root."""
    root = cache_root(base).resolve()
    dirs = {
        "PREFECT_HOME": root / "prefect",
        "MPLCONFIGDIR": root / "matplotlib",
        "XDG_CACHE_HOME": root / "xdg",
    }
    for var, path in dirs.items():
        if var not in os.environ:
            path.mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(path)
    for var, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(var, value)
    dask_dir = root / "dask"
    dask_dir.mkdir(parents=True, exist_ok=True)
    import dask

    if dask.config.get("temporary-directory", None) in (None, ""):
        dask.config.set({"temporary-directory": str(dask_dir)})
    return root
