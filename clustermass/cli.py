"""The ``clustermass`` command line (also ``python -m clustermass``).

Every command prints one ``error: ...`` line and exits with status 2 on bad input (status 1 on an unexpected
failure); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from features.centring import CENTRING_MODELS
from features.config import ObserveSection
from inference.config import CATALOG_MODELS, FAR_REDSHIFT_POLICIES
from inference.priors import DEFAULT_PRIOR
from ingest.config import SynthSection
from ingest.synth.synthesize import OUTPUT_FORMATS
from models.config import TrainSection
from models.spec import MODEL_KINDS
from pipeline import __version__
from pipeline.errors import ClusterMassError, ConfigError, OutputError, no_space

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1

# The defaults shown in --help are the configuration sections' own (one home for every default).
_SYNTH, _OBSERVE, _TRAIN = SynthSection(), ObserveSection(), TrainSection()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` except for options whose absence means "as the configuration says" (None)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _section_default(section: object, key: str) -> str:
    return f"[{section.__class__.__name__.removesuffix('Section').lower()}] {key} = {getattr(section, key)!r}"


def _section_options(p: argparse.ArgumentParser, section: object,
                     options: Sequence[tuple[str, str, type, str]]) -> None:
    """Options that override one key of a configuration section each, as (flag, key, type, help text): absent (None),
    the configuration's value holds; the help quotes the section's default."""
    for flag, key, kind, text in options:
        p.add_argument(flag, type=kind, default=None, dest=key,
                       help=f"{text} (default: the configuration's, else {_section_default(section, key)})")


def _quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _add_synth(sub: Any) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic MultiDark-style box (Rockstar halos + UniverseMachine galaxies)",
        description="Write DIR/halos.* (Rockstar columns), DIR/galaxies.* (UniverseMachine columns), "
        "DIR/snapshot.json and DIR/realism.json for a periodic box with the MDPL2 cosmology (z = 0.117 unless "
        "[synth] redshift says otherwise): Tinker08 halos with Tinker10 clustering, Jiang & van den Bosch 16 "
        "subhalos, Moster13 stellar masses, Evrard08 velocities, and a galaxy-halo connection drawn per host from "
        "published ranges ([synth] satellite_abundance, velocity_bias, ...: a number fixes it).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--config", type=Path, default=None,
                   help="TOML configuration whose [synth] section defines the box (box size, redshift, the galaxy "
                        "physics: fixed values or per-host ranges); the options below override it")
    _section_options(p, _SYNTH, (
        ("--box-size", "box_size", float, "box side, comoving Mpc/h"),
        ("--seed", "seed", int, "random seed (same seed, same box)"),
        ("--log10-mmin", "log10_mmin", float, "lightest distinct halo, log10 M200c [Msun/h]"),
        ("--min-log10-mstar", "min_log10_mstar", float, "lightest galaxy written, log10 M* [Msun]"),
        ("--workers", "workers", int, "processes generating cells (speed only)"),
    ))
    p.add_argument(
        "--format",
        default=None,
        choices=list(OUTPUT_FORMATS),
        help="hdf5: halos.h5 + galaxies.h5; ascii: Rockstar hlist halos.list + UniverseMachine ASCII galaxies.txt; "
        "native: halos.list + UniverseMachine binary galaxies.bin; csv: CosmoSim CSV halos.csv + galaxies.bin "
        f"(default: the configuration's, else {_section_default(_SYNTH, 'format')})",
    )
    _quiet(p)
    p.set_defaults(func=cmd_synth)


def _add_inspect(sub: Any) -> None:
    p = sub.add_parser(
        "inspect",
        help="read and validate a halo or galaxy catalog; print its snapshot, rows, columns and units",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("file", type=Path, help="catalog file (hlist .list, CosmoSim .csv, .h5, UniverseMachine .bin/.txt)")
    p.add_argument("--kind", choices=["halos", "galaxies"], default=None, help="default: guessed from the name")
    p.add_argument("--format", default=None, help="hlist | csv | hdf5 | um-binary | um-ascii (default: detected)")
    p.add_argument("--config", type=Path, default=None, help="configuration giving the [snapshot] if the file does not")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_inspect)


def _add_observe(sub: Any) -> None:
    p = sub.add_parser(
        "observe",
        help="mock observations: galaxies in cylinders around every host, features and member arrays",
        description="Writes OUT/observations/ (the feature table, Parquet) and OUT/members.h5 (member arrays). "
        "Defaults follow Ho et al. (2019).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--halos", type=Path, required=True, help="halo catalog (hlist, CosmoSim CSV, HDF5)")
    p.add_argument("--galaxies", type=Path, required=True, help="galaxy catalog (UniverseMachine .bin/.txt, HDF5)")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--config", type=Path, default=None, help="TOML with [snapshot] and [observe] (options override)")
    _section_options(p, _OBSERVE, (
        ("--r-aperture", "r_aperture", float, "projected aperture, comoving Mpc/h"),
        ("--v-cut", "v_cut", float, "|v_los| window, km/s"),
        ("--min-members", "min_members", int, "drop observations with fewer members"),
        ("--log10-mstar-min", "log10_mstar_min", float, "galaxy stellar-mass cut, log10 Msun"),
        ("--host-log10-m200c-min", "host_log10_m200c_min", float, "host cut, log10 M200c Msun/h"),
        ("--extra-directions", "extra_directions", int,
         "random lines of sight for hosts above --extra-log10-m200c-min"),
        ("--extra-log10-m200c-min", "extra_log10_m200c_min", float, "log10 M200c Msun/h"),
        ("--balance-below", "balance_below", float,
         "subsample hosts below this log10 M200c Msun/h to a flatter mass function (<= the host cut: keep all)"),
        ("--regions", "regions_per_side", int, "regions per side per line of sight"),
        ("--workers", "workers", int, "threads running region tasks"),
    ))
    _quiet(p)
    p.set_defaults(func=cmd_observe)


def _add_train(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a model (mdn, flow, mse or set) and the M-sigma baseline on mock observations",
        description="Reads DIR/observations (from `observe` or `run`), holds out --test-fraction of the hosts, "
        "trains on the rest (validation split by host, early stopping) and writes OUT/<kind>/, OUT/msigma.json and "
        "OUT/split.json.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--observations", type=Path, required=True, help="directory holding observations/")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--config", type=Path, default=None, help="TOML with a [train] section (options override)")
    p.add_argument("--kind", action="append", choices=list(MODEL_KINDS), default=None,
                   help=f"model(s) to train; repeat for several (default: the configuration's, else "
                        f"{_section_default(_TRAIN, 'models')})")
    _section_options(p, _TRAIN, (
        ("--ensemble", "ensemble", int, "deep-ensemble members"),
        ("--max-epochs", "max_epochs", int, "epochs at most (early stopping)"),
        ("--batch-size", "batch_size", int, "examples per step"),
        ("--test-fraction", "test_fraction", float, "fraction of hosts held out"),
        ("--seed", "seed", int, "seed of weights, data order and splits"),
    ))
    _quiet(p)
    p.set_defaults(func=cmd_train)


def _add_infer(sub: Any) -> None:
    p = sub.add_parser(
        "infer",
        help="posterior mass catalogs (catalog.h5, catalog.fits): every observation of an observation set, or real "
             "clusters (--members GALAXIES --clusters CENTRES)",
        description="Either --observations DIR (mock observations from `observe` or `run`), or --members GALAXIES "
                    "(CSV/ECSV/FITS/HDF5: ra, dec [deg], z, optional log10_mstar [log10 Msun]) with --clusters CENTRES "
                    "(id, ra, dec, z): the richest model whose inputs the galaxy table provides answers for every "
                    "cluster; rows that cannot be used are skipped and named.",
        formatter_class=_HelpFormatter,
    )
    _model_stage_arguments(p, out="directory for catalog.h5 and catalog.fits", use="which model fills the catalog",
                           observations_required=False)
    p.add_argument("--members", type=Path, default=None, help="galaxy table of real clusters (with --clusters)")
    p.add_argument("--clusters", type=Path, default=None, help="cluster centres: id, ra, dec, z (with --members)")
    p.add_argument("--far-redshift", choices=list(FAR_REDSHIFT_POLICIES), default=FAR_REDSHIFT_POLICIES[0],
                   help="real clusters far from the model's snapshot redshift: flag them (REDSHIFT), or skip them")
    p.add_argument("--held-out-only", action="store_true", help="only the hosts the model never saw in training")
    p.set_defaults(func=cmd_infer)


def _add_validate(sub: Any) -> None:
    p = sub.add_parser(
        "validate",
        help="accuracy and calibration on the held-out hosts: metrics.json and plots",
        formatter_class=_HelpFormatter,
    )
    _model_stage_arguments(p, out="directory for metrics.json and the PNG plots", use="the main model")
    p.add_argument("--hosts", choices=("held-out", "all"), default="held-out",
                   help="held-out: the hosts the training stage held out of the model's own box; all: every host "
                        "of the observations, for a box the model never saw (another seed, or shifted galaxy "
                        "physics); on the training box itself `all` would score hosts it was trained on")
    p.add_argument("--centring", choices=("as-observed", *CENTRING_MODELS), default="as-observed",
                   help="as-observed: score the observations as they are; none (or another centring): observe the "
                        "scored hosts again from the catalogs, same cylinder, centred this way (none: on the true "
                        "halo centres, to measure what the centring errors cost); needs --halos and --galaxies, or "
                        "the run.json of a run directory given as --observations")
    p.add_argument("--halos", type=Path, default=None,
                   help="with --centring: the halo catalog the observations were made from (default: run.json's)")
    p.add_argument("--galaxies", type=Path, default=None,
                   help="with --centring: the galaxy catalog the observations were made from (default: run.json's)")
    p.set_defaults(func=cmd_validate)


def _add_query(sub: Any) -> None:
    p = sub.add_parser(
        "query",
        help="posterior mass of one cluster from its member galaxies",
        description="Reads a members file (CSV, ECSV, FITS or HDF5) with either ra, dec [deg] and z, or r_proj "
        "[Mpc/h] and v_los [km/s] (one system); plus log10_mstar [log10 Msun]. Units the file states are converted; "
        "ranges, empty cells, non-numbers and repeated rows are refused with one line. Applies the model's training "
        "cylinder and features, and prints the posterior of log10 M200c [Msun/h] under the chosen prior.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True,
                   help="model directory (model.json), or a run's model/ directory (set/ preferred, then flow/, "
                   "else mdn/)")
    p.add_argument("--members", type=Path, required=True, help="members file (.csv, .ecsv, .fits, .h5)")
    p.add_argument("--prior", default=DEFAULT_PRIOR, help="flat | tinker08 | training | a two-column table file")
    p.add_argument("--center", type=float, nargs=3, default=None, metavar=("RA", "DEC", "Z"),
                   help="cluster centre in deg, deg and redshift (default: estimated from the members)")
    p.add_argument("--inputs", choices=["full", "richness", "dynamics"], default=None,
                   help="use the model of this feature set (default: the richest the members file can feed)")
    p.add_argument("--far-redshift", choices=list(FAR_REDSHIFT_POLICIES), default=FAR_REDSHIFT_POLICIES[0],
                   help="a cluster far from the model's snapshot redshift: answer with a REDSHIFT flag, or refuse")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", type=Path, default=None,
                   help="draw the posterior PDF to this PNG (checked before computing; its folder is created)")
    p.set_defaults(func=cmd_query)


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the pipeline as the Prefect flow mass_catalog: cached stages, resumable (default: the embedded "
             "synthetic box)",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--config", type=Path, default=None, help="TOML configuration (default: embedded defaults)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: [output] dir = runs/default)")
    _quiet(p)
    p.add_argument("--dry-run", action="store_true",
                   help="validate the configuration and print where the tasks would run (with the SLURM job script "
                        "for [runner] kind = \"slurm\"); start nothing")
    p.add_argument("--recompute", action="store_true",
                   help="recompute every stage and hash every input again, whatever the run directory's cache "
                        "holds (the cache is refreshed)")
    p.set_defaults(func=cmd_run)


def _add_population(sub: Any) -> None:
    from inference.population import BOOTSTRAP_REPLICATES, BOOTSTRAP_SEED, FIT_RANGE, WITHIN_BIN_SHAPES

    p = sub.add_parser(
        "population",
        help="the mass function of a catalog's clusters from their likelihoods: binned counts (smoothed EM, "
             "bootstrap errors) and a Tinker08 amplitude, with DIR/population.json and DIR/population.png",
        description="Reads a posterior catalog (HDF5 or FITS, with its grid and the priors its PDFs were made under), "
                    "keeps one line of sight per host (the lowest los index), forms each cluster's likelihood "
                    "L_i = p_i / target prior, and recovers the number of clusters per 0.1 dex of true log10 M200c "
                    "[Msun/h] by smoothed EM deconvolution, the amplitude A of the Tinker et al. (2008) mass function "
                    "over --fit-range (needs a volume), and the naive histogram of posterior modes; with the true "
                    "counts and issue 20's acceptance checks when the catalog has log10_m200c_true (mocks).",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("catalog", type=Path, help="posterior catalog (.h5/.hdf5 or .fits)")
    p.add_argument("--out", type=Path, required=True, help="directory for population.json and population.png")
    p.add_argument("--volume", type=float, default=None,
                   help="comoving volume the catalog's hosts come from, (Mpc/h)^3: the box volume times the fraction "
                        "of its hosts in the catalog (default: the catalog provenance's 'volume'; without one the "
                        "amplitude is skipped)")
    p.add_argument("--bootstrap", type=int, default=BOOTSTRAP_REPLICATES, help="bootstrap replicates (clusters "
                   "resampled with replacement)")
    p.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="seed of the bootstrap")
    p.add_argument("--fit-range", type=float, nargs=2, default=list(FIT_RANGE), metavar=("LO", "HI"),
                   help="log10 M200c [Msun/h] range of the amplitude fit and of the acceptance checks (bin edges)")
    p.add_argument("--within-bin", choices=list(WITHIN_BIN_SHAPES), default=WITHIN_BIN_SHAPES[0],
                   help="shape of the mass function inside each 0.1-dex bin: Tinker08 times the selection (needs "
                        "the catalog's snapshot), or flat")
    p.set_defaults(func=cmd_population)


#: the sub-commands in the order ``clustermass --help`` lists them, each added by its own function
_COMMANDS = (_add_synth, _add_inspect, _add_observe, _add_train, _add_infer, _add_validate, _add_query,
             _add_population, _add_run)


def build_parser() -> argparse.ArgumentParser:
    """The ``clustermass`` parser: the global options, then one sub-command per ``_add_<command>`` function."""
    parser = argparse.ArgumentParser(
        prog="clustermass",
        description="Galaxy-cluster masses from member galaxies, with honest posteriors.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"clustermass {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _COMMANDS:
        add(sub)
    return parser


def _model_stage_arguments(p: argparse.ArgumentParser, *, out: str, use: str,
                           observations_required: bool = True) -> None:
    """The arguments shared by `infer` and `validate`."""
    p.add_argument("--model", type=Path, required=True, help="a run's model/ directory (from `train` or `run`)")
    p.add_argument("--observations", type=Path, required=observations_required,
                   help="directory holding observations/")
    p.add_argument("--out", type=Path, required=True, help=out)
    p.add_argument("--prior", default=DEFAULT_PRIOR, help="flat | tinker08 | training | a two-column table file")
    p.add_argument("--use", choices=list(CATALOG_MODELS), default=CATALOG_MODELS[0], help=use)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from pipeline.caches import configure_caches
    from pipeline.determinism import configure_determinism

    configure_caches()
    started = time.time()
    try:
        configure_determinism()  # before any jax computation: the same numbers whatever the core count
        return int(args.func(args) or 0)
    except ClusterMassError as exc:
        _clean_up(args, started)
        if args.debug:
            raise
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # e.g. `clustermass inspect ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        _clean_up(args, started)
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        _clean_up(args, started)
        if no_space(exc):  # a full disk (HDF5, Arrow and Prefect report it in their own ways): bad input, status 2
            if args.debug:
                raise
            print(f"error: {_no_space_line(exc, _output_of(args))}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if args.debug or not isinstance(exc, OSError):
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{_one_line(exc.strerror or exc)}", file=sys.stderr)
        return EXIT_FAILURE


def _one_line(message: object) -> str:
    """``message`` on one line (HDF5 and some libraries put line breaks in theirs)."""
    return " ".join(str(message).split())


def _no_space_line(exc: BaseException, out: Path | None = None) -> str:
    """``<file>: no space left on device``, naming the file the user asked for where it can be told, else the
    command's output directory ``out``."""
    from pipeline.files import NO_SPACE

    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OutputError):
            return _one_line(exc)
        name = getattr(exc, "filename", None) or next(iter(re.findall(r"filename = '([^']+)'", str(exc))), None)
        if name:
            path = Path(name)
            if path.name.startswith(".") and ".partial" in path.name:  # the temporary: name its target
                path = path.with_name(path.name[1:].split(".partial")[0])
            return f"{path}: {NO_SPACE}"
        exc = exc.__cause__ or exc.__context__
    return f"{out}: {NO_SPACE}" if out is not None else NO_SPACE


def _output_of(args: argparse.Namespace) -> Path | None:
    """The output directory of the command ``args`` runs (``--out``; ``run``: else the configuration's)."""
    out = getattr(args, "out", None)
    if out is None and args.command == "run":
        try:
            from flows.config import load_config

            out = load_config(args.config, run=False).output.dir
        except Exception:
            out = None
    return None if out is None else Path(out)


def _clean_up(args: argparse.Namespace, started: float) -> None:
    """After a failure: HDF5 files left open under temporary names are emptied, closed and deleted (so HDF5 has
    nothing to flush at exit, where a full disk would crash the interpreter), and hidden ``.partial`` temporaries
    this command left in its output directory are removed."""
    from pipeline.files import release_hdf5_partials, remove_partials

    release_hdf5_partials()
    out = _output_of(args)
    if out is not None:
        try:
            remove_partials(out, since=started)
        except Exception:  # the safety net must not hide the error being reported
            pass


#: options whose name is not the configuration key's with dashes
_FLAGS = {"regions_per_side": "--regions", "models": "--kind"}


def _flag(key: str) -> str:
    """The command-line option that sets configuration key ``key``."""
    return _FLAGS.get(key, "--" + key.replace("_", "-"))


def _override(section: Any, args: argparse.Namespace, name: str) -> Any:
    """``section`` with the options the user gave (those not None) put in, checked as the configuration is.

    A bad option is named as the user typed it (``error: observe --regions: expected an integer in [1, 64], got
    0``); a bad combination with a value from the configuration names the file and section ``name``.
    """
    import dataclasses

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(section)
             if getattr(args, f.name, None) is not None}
    try:
        return dataclasses.replace(section, **given)
    except ConfigError as exc:
        raise _relocated(exc, args, name) from None


def _relocated(exc: ConfigError, args: argparse.Namespace, name: str) -> ConfigError:
    """``exc`` (about configuration section ``name``, e.g. ``"[observe]"``) located where its value came from: the
    command-line option, the configuration file, or the section's default."""
    if exc.key is not None and getattr(args, exc.key, None) is not None:
        return ConfigError(exc.message, where=f"{args.command} {_flag(exc.key)}")
    where = f"{args.config} {name}" if getattr(args, "config", None) else f"{args.command}: the default {name}"
    return ConfigError(exc.message, key=exc.key, where=where)


def _check_out(args: argparse.Namespace) -> None:
    """``--out`` must be, or be creatable as, a folder this user can write, reached through no symbolic-link loop
    or dangling link, its name UTF-8 (:func:`pipeline.files.check_output_path`; checked before any work)."""
    from pipeline.files import check_output_path

    try:
        check_output_path(args.out, directory=True, writable=True)
    except ConfigError as exc:
        raise ConfigError(exc.message, where=f"{args.command} --out") from None


def _check_prior_option(args: argparse.Namespace) -> None:
    """``--prior``: a built-in name, or a table file read and checked now (finite, non-negative, normalisable)."""
    from inference.priors import BUILTIN, read_table

    if args.prior in BUILTIN:
        return
    if not (Path(args.prior).suffix or os.sep in args.prior or Path(args.prior).exists()):
        raise ConfigError(f"expected one of {list(BUILTIN)} or a two-column table file, got {args.prior!r}",
                          where=f"{args.command} --prior")
    read_table(args.prior)


# -- commands -------------------------------------------------------------------------------------------------
def cmd_synth(args: argparse.Namespace) -> int:
    from flows.config import load_config
    from ingest.synth.synthesize import synthesize
    from pipeline.progress import Progress

    section = _override(load_config(args.config, run=False).synth, args, "[synth]")
    _check_out(args)
    config = section.box_config()
    progress = Progress("synth cells", enabled=not args.quiet)
    result = synthesize(args.out, config, fmt=section.format, workers=section.workers, progress=progress)
    print(f"halos:    {result.halos}  ({result.n_halos} rows)")
    print(f"galaxies: {result.galaxies}  ({result.n_galaxies} rows)")
    print(f"metadata: {result.metadata}")
    print(f"time:     {result.seconds:.1f} s")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from flows.config import load_config
    from ingest.catalog import read_galaxies, read_halos

    kind = args.kind or ("galaxies" if any(k in args.file.name.lower() for k in ("galax", "sfr_catalog", "um")) else
                         "halos")
    snapshot = load_config(args.config, run=False).snapshot if args.config else None
    reader = read_galaxies if kind == "galaxies" else read_halos
    start = time.perf_counter()
    cat = reader(args.file, format=args.format, snapshot=snapshot)
    rows = int(cat.frame.map_partitions(len).compute().sum())  # reads and checks every partition
    info = {
        "file": str(args.file),
        "kind": kind,
        "format": cat.source.format,
        "rows": rows,
        "partitions": cat.frame.npartitions,
        "snapshot": cat.snapshot.to_dict(),
        "columns": {c: cat.units[c] for c in cat.frame.columns},
        "file_columns": dict(cat.source.available),
        "seconds": round(time.perf_counter() - start, 3),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    snap = cat.snapshot
    print(f"{args.file}: {kind}, {cat.source.format}, {rows} rows valid, {cat.frame.npartitions} partitions")
    print(f"snapshot: box {snap.box_size:g} Mpc/h, a = {snap.scale_factor:.4f} (z = {snap.redshift:.4f}), "
          f"cosmology {snap.cosmology.name} (h = {snap.cosmology.h}, Om0 = {snap.cosmology.Om0})")
    for col in cat.frame.columns:
        print(f"  {col:14s} [{cat.units[col] or '-'}]  <- {cat.source.available[col]}")
    return 0


def cmd_observe(args: argparse.Namespace) -> int:
    from features.io import write_observations
    from features.observe import make_observations
    from flows.config import load_config
    from ingest.catalog import read_galaxies, read_halos
    from pipeline.progress import Progress

    config = load_config(args.config, run=False)
    section = _override(config.observe, args, "[observe]")
    _check_out(args)
    start = time.perf_counter()
    halos = read_halos(args.halos, snapshot=config.snapshot)
    galaxies = read_galaxies(args.galaxies, snapshot=config.snapshot)
    try:  # the cylinder and the regions against the catalogs' box, before the streaming pass
        section.check_box(halos.snapshot)
    except ConfigError as exc:
        raise _relocated(exc, args, "[observe]") from None
    obs = make_observations(halos, galaxies, section.observation_spec(), num_workers=section.workers,
                            progress=Progress("regions", enabled=not args.quiet))
    obs_dir, members = write_observations(args.out, obs)
    print(f"observations: {obs_dir}  ({len(obs.table)} kept of {len(obs.table) + obs.dropped['total']}, "
          f"{obs.n_hosts} hosts; {obs.dropped['total']} dropped with < {section.min_members} members)")
    print(f"members:      {members}  ({int(obs.members.offsets[-1])} member galaxies)")
    print(f"time:         {time.perf_counter() - start:.1f} s")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from features.io import load_observation_table, read_members
    from flows.config import load_config
    from models.stage import train_stage

    config = load_config(args.config, run=False)
    section = _override(config.train, args, "[train]")
    _check_out(args)
    start = time.perf_counter()
    table, meta = load_observation_table(args.observations)
    needs_members = set(section.feature_sets) - {"full"} or "set" in (args.kind or section.models)
    members = read_members(args.observations) if needs_members else None
    summary = train_stage(table, section, args.out, kinds=args.kind, quiet=args.quiet, members=members,
                          observations={"config": meta["config"], "snapshot": meta["snapshot"]})
    for kind, info in summary["models"].items():
        best = ", ".join(f"{v:.4f}" for v in info["best_val_nll"])
        print(f"{kind:14s} {info['dir']}  {info['train_rows']} training rows; best validation loss per member: "
              f"{best}")
    ms = summary["msigma"]
    print(f"msigma {args.out / 'msigma.json'}  log10 M = {ms['intercept']:.3f} + {ms['slope']:.3f} "
          f"log10(sigma_v / {ms['pivot']:g} km/s), scatter {ms['scatter']:.3f} dex")
    print(f"held-out test rows {summary['test_rows']}; "
          f"time {time.perf_counter() - start:.1f} s")
    return 0


def cmd_infer(args: argparse.Namespace) -> int:
    import numpy as np

    from catalogs.stage import catalog_sample, catalog_stage
    from features.io import MEMBERS_FILE, load_observation_table, read_members
    from models.stage import held_out_mask
    from pipeline.snapshot import Snapshot

    start = time.perf_counter()
    real = args.members is not None or args.clusters is not None
    if real == (args.observations is not None) or (real and (args.members is None or args.clusters is None)):
        raise ConfigError("infer: give either --observations DIR, or both --members GALAXIES and --clusters CENTRES")
    _check_out(args)
    if real:
        return _infer_real(args, start)
    table, meta = load_observation_table(args.observations)
    snapshot = Snapshot.from_dict(meta["snapshot"])
    rows = "all observations"
    keep = np.ones(len(table), bool)
    if args.held_out_only:
        keep, rows = held_out_mask(table, args.model), "held-out test hosts (never seen in training)"
    sample = catalog_sample(meta, table["cluster_id"].to_numpy(), keep)
    table = table[keep].reset_index(drop=True)
    members = None
    if args.use == "set" and (args.observations / MEMBERS_FILE).is_file():  # the set model reads the members
        members = read_members(args.observations).take(keep)
    paths = catalog_stage(table, args.model, args.out, prior=args.prior, snapshot=snapshot, main=args.use, rows=rows,
                          members=members, sample=sample)
    for path in paths:
        print(f"catalog: {path}  ({len(table)} rows, {rows})")
    print(f"time:    {time.perf_counter() - start:.1f} s")
    return 0


def _infer_real(args: argparse.Namespace, start: float) -> int:
    from catalogs.real import real_catalog

    report = real_catalog(args.members, args.clusters, args.model, args.out, prior=args.prior,
                          far_redshift=args.far_redshift)
    for line in report.notes:
        print(line, file=sys.stderr)
    for line in [*report.skipped_galaxies, *report.skipped_clusters]:
        print(f"skipped: {line}", file=sys.stderr)
    for path in report.paths:
        print(f"catalog: {path}  ({report.clusters} clusters; {len(report.skipped_clusters)} skipped)")
    family = "set model: each cluster's members as a set" if report.model_kind == "set" else report.model_kind
    print(f"model:   {report.model} ({report.feature_set}; {family})")
    for c in report.considered:
        if not c["used"]:
            print(f"         not {c['model']}: {c['why_not']}")
    print(f"time:    {time.perf_counter() - start:.1f} s")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from features.io import MEMBERS_FILE, load_observation_table, read_members
    from inference.validate import validate_stage
    from models.stage import held_out_mask
    from pipeline.snapshot import Snapshot

    _check_out(args)
    _check_prior_option(args)  # a prior table is read and checked before anything is computed
    table, meta = load_observation_table(args.observations)
    snapshot = Snapshot.from_dict(meta["snapshot"])
    mask = held_out_mask(table, args.model) if args.hosts == "held-out" else table["cluster_id"].notna().to_numpy()
    members = read_members(args.observations).take(mask) if (args.observations / MEMBERS_FILE).is_file() else None
    table, centring = table[mask].reset_index(drop=True), _centring_scored(args, meta)
    if centring["reobserved"]:  # the same hosts observed again, centred as asked
        table, members = _reobserve(args, meta, table["cluster_id"].unique(), centring["scored"])
    metrics = validate_stage(table, args.model, args.out, members=members, prior=args.prior, main=args.use,
                             snapshot=snapshot, notes={"centring": centring})
    which = "held-out" if args.hosts == "held-out" else "(all hosts)"
    print(f"validation: {args.out / 'metrics.json'}  ({metrics['n_test']} {which} observations, "
          f"{metrics['n_test_1e14_1e15']} in 1e14-1e15 Msun/h; centring {centring['scored']}"
          f"{', observed again' if centring['reobserved'] else ''})")
    print(f"{metrics['estimator']}: bias {metrics['bias_dex']:+.4f} dex, scatter {metrics['scatter_dex']:.4f} dex; "
          f"coverage 68% {metrics['coverage_68']:.3f}, 95% {metrics['coverage_95']:.3f}; M-sigma scatter "
          f"{metrics['msigma_scatter_dex']:.3f} dex")
    _print_coverage_by_mass_range(metrics["coverage_by_mass_range"])
    for key, what in (("dynamics_thinned", "dynamics model"), ("dynamics_thinned_set", "dynamics set model")):
        thinned = metrics.get(key)
        if thinned:
            print(f"{what}, members thinned to {thinned['completeness']:.0%}: bias "
                  f"{_dex(thinned['corrected_mode']['bias'], '+.4f')} dex, scatter "
                  f"{_dex(thinned['corrected_mode']['scatter'], '.4f')} dex; coverage 68% "
                  f"{_dex(thinned['coverage_68'], '.3f')}, 95% {_dex(thinned['coverage_95'], '.3f')}")
    completeness = metrics.get("dynamics_completeness")
    for kind, levels in (completeness or {}).get("models", {}).items():
        biases = ", ".join(f"{float(c):.0%} {_dex(v['bias'], '+.3f')}" for c, v in levels.items())
        print(f"dynamics {kind}, the same {completeness['n']} clusters by completeness: bias {biases} dex")
    for name, check in metrics["acceptance"].items():
        if "pass" in check:
            ranges = "; ".join(f"{what} {', '.join(r if isinstance(r, str) else r['range'] for r in check[key])}"
                               for key, what in (("failing_ranges", "failing:"), ("skipped", "skipped:"))
                               if check.get(key))
            print(f"  {'PASS' if check['pass'] else 'FAIL'}  {name}{f'  ({ranges})' if ranges else ''}")
    return 0


def _print_coverage_by_mass_range(rows: list[dict[str, Any]]) -> None:
    """``validate``'s table of ``metrics.json: coverage_by_mass_range``: per true-mass range the rows, the
    effective sample size and the corrected coverage with its standard error, then the uncorrected coverage."""
    from inference.acceptance import JUDGED_SPAN, judged, range_label

    print("coverage by true log10 M200c [Msun/h] (corrected: importance-weighted to the target prior, +- standard "
          "error; uncorrected: as drawn):")
    print(f"  {'range':9s} {'n':>7s} {'ESS':>8s}  {'68%':>13s}  {'95%':>13s}  uncorrected 68 / 95")
    for r in rows:
        label = range_label(r["lo"], r["hi"]) + ("" if judged(r["lo"], r["hi"]) else "*")
        if not r["n"]:
            print(f"  {label:9s} {0:7d} {'-':>8s}  no held-out rows")
            continue
        print(f"  {label:9s} {r['n']:7d} {r['ess']:8.1f}  {r['coverage_68']:.3f} +- {r['se_68']:.3f}  "
              f"{r['coverage_95']:.3f} +- {r['se_95']:.3f}  {r['uncorrected_68']:.3f} / {r['uncorrected_95']:.3f}")
    if not all(judged(r["lo"], r["hi"]) for r in rows):
        print(f"  * reported, not judged (acceptance judges the ranges within 10^{JUDGED_SPAN[0]:g}-"
              f"10^{JUDGED_SPAN[1]:g})")


def _dex(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``, or ``n/a`` where metrics.json holds none (too few rows)."""
    return "n/a" if value is None else format(value, spec)


def _centring_scored(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """``validate --centring``: how the observations (metadata ``meta``) were centred, how the scored ones are, and
    whether that means observing them again."""
    observed = (meta["config"].get("centring") or {"model": "none"})["model"]
    scored = observed if args.centring == "as-observed" else args.centring
    return {"observations": observed, "scored": scored, "reobserved": scored != observed}


def _reobserve(args: argparse.Namespace, meta: dict[str, Any], host_ids, centring: str):
    """The observations of ``host_ids`` (their rows and members) made again from the catalogs exactly as
    ``--observations`` (metadata ``meta``) were, except for the centring (``validate --centring``)."""
    import dataclasses

    from features.centring import CentringSpec
    from features.cylinder import ObservationSpec
    from features.observe import make_observations
    from ingest.catalog import read_galaxies, read_halos
    from pipeline.snapshot import Snapshot

    spec = ObservationSpec.from_dict(meta["config"])
    spec = dataclasses.replace(spec, centring=CentringSpec(model=centring, seed=spec.centring.seed))
    halos, galaxies = _catalogs_of(args)
    snapshot = Snapshot.from_dict(meta["snapshot"])
    obs = make_observations(read_halos(halos, snapshot=snapshot), read_galaxies(galaxies, snapshot=snapshot), spec,
                            num_workers=2, host_ids=host_ids)
    return obs.table, obs.members


def _catalogs_of(args: argparse.Namespace) -> tuple[Path, Path]:
    """The halo and galaxy catalogs of ``validate --centring``: ``--halos``/``--galaxies``, else those the run
    directory's ``run.json`` names."""
    if args.halos is not None and args.galaxies is not None:
        return args.halos, args.galaxies
    run = args.observations / "run.json"
    try:
        outputs = json.loads(run.read_text())["outputs"]
        named = Path(outputs["halos"]), Path(outputs["galaxies"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError(f"validate --centring {args.centring}: observing the hosts again needs the catalogs the "
                          f"observations were made from; give --halos and --galaxies ({run} does not name them)"
                          ) from None
    return args.halos or named[0], args.galaxies or named[1]


def cmd_query(args: argparse.Namespace) -> int:
    from inference.query import check_plot_path, query, write_plot

    if args.plot is not None:
        check_plot_path(args.plot)  # before anything is computed
    result = query(args.model, args.members, prior=args.prior, inputs=args.inputs, far_redshift=args.far_redshift,
                   centre=tuple(args.center) if args.center is not None else None)
    for note in result.warnings:
        print(note, file=sys.stderr)
    if args.plot is not None:
        write_plot(result, args.plot)
    s = result.summary
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"log10 M200c [Msun/h] ({s['prior']} prior): mode {s['log10_m200c_mode']:.3f}, median "
          f"{s['log10_m200c_median']:.3f}, 68% [{s['log10_m200c_p16']:.3f}, {s['log10_m200c_p84']:.3f}], 95% "
          f"[{s['log10_m200c_p025']:.3f}, {s['log10_m200c_p975']:.3f}]")
    print(f"members {s['n_members']}, sigma_v {s['sigma_v']:.0f} km/s; uncorrected mode "
          f"{s['log10_m200c_uncorrected_mode']:.3f}")
    ood = "n/a" if s["ood_score"] is None else f"{s['ood_score']:.3g}"
    print(f"model {s['model']} ({s['model_inputs']}: {s['inputs']}); ood_score {ood}, edge_mass "
          f"{s['edge_mass']:.3f}; flags {s['flags']} {' '.join(s['flag_names']) or '(none)'}")
    if s["model_kind"] == "set":
        print(next(note for note in s["notes"] if note.startswith("answered by the set model")))
    if args.plot is not None:
        print(f"plot: {args.plot}")
    return 0


def cmd_population(args: argparse.Namespace) -> int:
    from catalogs.population import check_options, population

    options = {"volume": args.volume, "bootstrap": args.bootstrap, "seed": args.seed,
               "fit_range": tuple(args.fit_range), "within_bin": args.within_bin}
    check_options(**options)  # before anything is read
    _check_out(args)
    s = population(args.catalog, args.out, **options)
    edges, inside = s["bins"]["edges"], s["bins"]["in_fit_range"]
    print(f"{s['catalog']}: {s['clusters']} clusters (one line of sight per host; {s['rows']} rows, "
          f"{s['rows_unusable']} unusable); EM {s['em']['iterations']} steps, {s['bootstrap']['replicates']} "
          f"bootstrap replicates")
    true = s["true"]
    head = f"{'log10 M200c':>13s}  {'recovered':>15s}  {'modes':>6s}"
    print(head + (f"  {'true':>6s}  {'pull':>6s}" if true else ""))
    for b, ok in enumerate(inside):
        if not ok:
            continue
        rec, sd, mode = s["recovered"]["counts"][b], s["recovered"]["sd"][b], s["naive_modes"]["counts"][b]
        line = f"{edges[b]:6.2f}-{edges[b + 1]:5.2f}  {rec:8.1f} ± {sd:5.1f}  {mode:6.0f}"
        if true:
            pull = s["acceptance"]["recovered_counts"]["pulls"][sum(inside[:b])]
            line += f"  {true['counts'][b]:6.0f}  {pull:+6.2f}"
        print(line)
    amp = s["amplitude"]
    if "hierarchical" in amp:
        h = amp["hierarchical"]
        text = f"Tinker08 amplitude over {s['fit_range'][0]:g}-{s['fit_range'][1]:g}: A = {h['A']:.4f} ± {h['se']:.4f}"
        if "true" in amp:
            text += f" (true masses {amp['true']['A']:.4f} ± {amp['true']['se']:.4f}"
        text += f"; naive modes {amp['naive_modes']['A']:.4f}" + (")" if "true" in amp else "")
        print(text)
    else:
        print(f"amplitude skipped: {amp['skipped']}")
    checks = s["acceptance"]
    if "skipped" not in checks:
        for name, check in (*checks["recovered_counts"].items(), ("amplitude_within_1se_of_true",
                                                                   checks.get("amplitude_within_1se_of_true"))):
            if isinstance(check, dict) and "pass" in check:
                print(f"  {'PASS' if check['pass'] else 'FAIL'}  {name}")
        naive = checks["naive_mode_histogram"]
        rms, worst = naive["pull_rms_at_most_1.5"]["value"], naive["every_bin_within_2sd"]["max_abs_pull"]
        print(f"  naive mode histogram {'misses' if naive['misses'] else 'does not miss'}: pull rms {rms:.2f}, "
              f"max |pull| {worst:.2f}")
    for note in s["notes"]:
        print(f"note: {note}", file=sys.stderr)
    print(f"summary: {s['outputs']['summary']}")
    print(f"plot:    {s['outputs']['plot']}")
    print(f"time:    {s['seconds']:.1f} s")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from flows.config import load_config

    config = load_config(args.config)  # every configuration error before Prefect starts
    if args.out is not None:  # [output] dir was checked with the configuration
        _check_out(args)
    out = Path(args.out or config.output.dir)
    if args.dry_run:
        return _dry_run(config, out)
    from flows.mass_catalog import run

    if not args.debug:
        _quiet_prefect_about_input_errors()
    summary = run(args.config, out, quiet=args.quiet, recompute=args.recompute)
    print(f"run directory: {summary['run_dir']}")
    print("stages (state, seconds):")
    for stage, rec in summary["stages"].items():
        extra = f"  ({rec['cached']}/{rec['tasks']} cached)" if "tasks" in rec else ""
        print(f"  {stage:18s} {rec['state']:10s} {rec['seconds']:8.1f}{extra}")
    print(f"  {'total':18s} {'':10s} {summary['total_seconds']:8.1f}")
    v = summary["validation"]
    if "scatter_dex" in v:
        print(f"validation: {v['n_test']} held-out observations, scatter {v['scatter_dex']:.3f} dex, "
              f"bias {v['bias_dex']:+.3f} dex (1e14-1e15), coverage 68/95 {v['coverage_68']:.3f}/"
              f"{v['coverage_95']:.3f}")
    print("outputs:")
    for key, value in summary["outputs"].items():
        print(f"  {key:13s} {value}")
    return 0


def _quiet_prefect_about_input_errors() -> None:
    """Keep Prefect's handlers from printing tracebacks of bad input: `run` reports it as one `error:` line."""
    import logging

    names = {cls.__name__ for cls in _subclasses(ClusterMassError)}

    def expected(record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], ClusterMassError):
            return False
        message = record.getMessage()
        return not any(f"{n}(" in message or f"{n}:" in message for n in names)

    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("prefect")]
    for logger in [logging.getLogger(), logging.getLogger("prefect"), *loggers]:  # the console handler: root
        for handler in logger.handlers:
            handler.addFilter(expected)


def _subclasses(cls: type) -> list[type]:
    return [cls, *(s for sub in cls.__subclasses__() for s in _subclasses(sub))]


def _dry_run(config, out: Path) -> int:
    """Print what `run` would do and where (the SLURM job script for [runner] kind = "slurm"); start nothing."""
    from flows.runners import describe, slurm_job_script

    print(f"configuration: {config.source} (valid)")
    print(f"run directory: {out.resolve()}")
    if config.input is None:
        s = config.synth
        print(f"input: synthetic box, {s.box_size:g} Mpc/h, seed {s.seed}, format {s.format}")
    else:
        print(f"input: halos {config.input.halos}, galaxies {config.input.galaxies}")
    print("model: " + (f"reuse {config.train.reuse}" if config.train.reuse else
                       f"train {list(config.train.models)} on feature sets {list(config.train.feature_sets)}"))
    print(f"catalog prior: {config.infer.prior}; catalog model: {config.infer.model}")
    print(f"tasks run on: {describe(config.runner)}")
    if config.runner.kind == "slurm":
        print("SLURM job script (one per dask worker job):")
        print(slurm_job_script(config.runner))
    return 0
