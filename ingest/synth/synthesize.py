"""Writing a synthetic MultiDark-style box to disk, cell by cell, in the real catalog formats.

``DIR/halos.<ext>`` (Rockstar columns), ``DIR/galaxies.<ext>`` (UniverseMachine columns), ``DIR/snapshot.json``
(box size, scale factor, cosmology, the generator's configuration), ``DIR/realism.json`` + ``DIR/realism.png``
(the box's statistics beside published ones) and ``DIR/host_physics.h5`` (HDF5 whatever the format: the galaxy-halo
connection drawn for each distinct halo with subhaloes, :data:`ingest.synth.galaxy_physics.HOST_PHYSICS`, one
dataset per column, with units; for studying the box, never read by the pipeline). Cells are generated
independently (in worker processes when ``workers > 1``) and appended in order, so the output is identical for any
number of workers and memory holds a few cells at most. Files appear under their final names only when complete.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ingest.schema import GALAXIES, HALOS
from ingest.source import write_sidecar
from ingest.synth.box import Cell, SynthConfig, cell_count, generate_cell
from ingest.synth.galaxy_physics import HOST_PHYSICS
from ingest.synth.realism import RealismAccumulator
from ingest.synth.realism_plot import plot_realism
from ingest.writers import EXTENSIONS, CatalogWriter
from pipeline.errors import ConfigError
from pipeline.files import remove_stale_partials, sole_writer, write_json

#: the realism report written beside every box (:mod:`ingest.synth.realism`), and its plot page
REALISM_JSON = "realism.json"
REALISM_PNG = "realism.png"
#: the per-host galaxy physics written beside every box (:data:`ingest.synth.galaxy_physics.HOST_PHYSICS`)
HOST_PHYSICS_FILE = "host_physics.h5"

DEFAULT_FORMAT = "hdf5"
#: ``--format`` choices: (halo format, galaxy format)
OUTPUT_FORMATS: dict[str, tuple[str, str]] = {
    "hdf5": ("hdf5", "hdf5"),
    "ascii": ("hlist", "um-ascii"),
    "native": ("hlist", "um-binary"),
    "csv": ("csv", "um-binary"),
}


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` wrote."""

    halos: Path
    galaxies: Path
    metadata: Path
    n_halos: int
    n_galaxies: int
    seconds: float
    hosts: Path


def output_paths(out_dir: str | os.PathLike[str], fmt: str) -> tuple[Path, Path]:
    """Where ``synthesize(out_dir, fmt=fmt)`` puts the halo and galaxy catalogs."""
    if fmt not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown synth format '{fmt}'; expected one of {list(OUTPUT_FORMATS)}")
    hfmt, gfmt = OUTPUT_FORMATS[fmt]
    out = Path(out_dir)
    return out / f"halos{EXTENSIONS[hfmt]}", out / f"galaxies{EXTENSIONS[gfmt]}"


def synthesize(
    out_dir: str | os.PathLike[str],
    config: SynthConfig,
    *,
    fmt: str = DEFAULT_FORMAT,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Generate the box described by ``config`` and write it to ``out_dir`` in ``fmt`` (see :data:`OUTPUT_FORMATS`).

    ``progress(done, total)`` is called after each cell. One process writes into ``out_dir`` at a time
    (:func:`pipeline.files.sole_writer`; a second is refused in one line), so the hidden temporaries found there
    are those of a killed writer, and are deleted.
    """
    start = time.perf_counter()
    output_paths(out_dir, fmt)  # the format is checked before anything is created
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    with sole_writer(out, what="synth"):
        remove_stale_partials(out)  # left by a writer that was killed (a live one would hold the folder)
        return _write_box(out, config, fmt, workers, progress, start)


def _write_box(out: Path, config: SynthConfig, fmt: str, workers: int,
               progress: Callable[[int, int], None] | None, start: float) -> SynthResult:
    """:func:`synthesize`'s writing, in the folder ``out`` it holds."""
    halo_path, galaxy_path = output_paths(out, fmt)
    hfmt, gfmt = OUTPUT_FORMATS[fmt]
    snap = config.snapshot
    total = cell_count(config)
    n_halos = n_galaxies = 0
    host_path = out / HOST_PHYSICS_FILE
    realism = RealismAccumulator(config.box_size, config.redshift, config.cosmology)
    with (
        CatalogWriter(halo_path, HALOS, hfmt, snap) as halos,
        CatalogWriter(galaxy_path, GALAXIES, gfmt, snap) as galaxies,
        CatalogWriter(host_path, HOST_PHYSICS, "hdf5", snap) as hosts,
    ):
        for done, cell in enumerate(_cells(config, workers), start=1):
            halos.append(cell.halos)
            galaxies.append(cell.galaxies)
            hosts.append(cell.hosts)
            realism.add(cell.halos, cell.galaxies)
            n_halos += len(cell.halos["halo_id"])
            n_galaxies += len(cell.galaxies["galaxy_id"])
            if progress is not None:
                progress(done, total)
        halos.commit()
        galaxies.commit()
        hosts.commit()
    report = realism.report()
    write_json(out / REALISM_JSON, report, indent=1)
    plot_realism(report, out / REALISM_PNG)
    meta = write_sidecar(
        out,
        snap,
        {
            "generator": "clustermass synth",
            "synth": config.to_dict(),
            "halos": {"file": halo_path.name, "format": hfmt, "rows": n_halos},
            "galaxies": {"file": galaxy_path.name, "format": gfmt, "rows": n_galaxies},
            "host_physics": {"file": host_path.name, "format": "hdf5", "rows": hosts.rows},
        },
    )
    return SynthResult(halo_path, galaxy_path, meta, n_halos, n_galaxies, time.perf_counter() - start, host_path)


def _cells(config: SynthConfig, workers: int) -> Iterator[Cell]:
    """Cells in index order; with several workers, at most ``2 * workers`` are in flight at once."""
    total = cell_count(config)
    if workers <= 1 or total == 1:
        for index in range(total):
            yield generate_cell(config, index)
        return
    # spawn, not fork: forking a process in which JAX (or any threaded library) already runs can deadlock
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = []
        next_index = 0
        while next_index < total or pending:
            while next_index < total and len(pending) < 2 * workers:
                pending.append(pool.submit(generate_cell, config, next_index))
                next_index += 1
            yield pending.pop(0).result()
