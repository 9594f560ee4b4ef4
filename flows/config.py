"""The run configuration: one TOML file whose sections configure the stages, validated before anything runs.

Each section is the dataclass of the stage it configures, where its defaults live:

======================  ==============================================  ==========================================
section                 dataclass                                       defaults from
======================  ==============================================  ==========================================
``[snapshot]``          :class:`pipeline.snapshot.Snapshot`             needed when the catalogs do not say
``[input]``             :class:`ingest.config.InputSection`             (real catalogs; else the synthetic box)
``[synth]``             :class:`ingest.config.SynthSection`             :class:`ingest.synth.box.SynthConfig`
``[observe]``           :class:`features.config.ObserveSection`         :class:`features.cylinder.CylinderSpec`, ...
``[train]``             :class:`models.config.TrainSection`             :class:`models.spec.ModelSpec`, ``TrainSpec``
``[infer]``             :class:`inference.config.InferSection`          :mod:`inference.priors`
``[output]``            :class:`OutputSection`                          ``dir = "runs/default"``
``[runner]``            :class:`flows.runners.RunnerSection`            threads, 2 workers
======================  ==============================================  ==========================================

Every relative path in the file — ``[input]`` halos and galaxies, ``[train] reuse``, an ``[infer] prior`` table,
``[output] dir`` and ``[runner]`` log_directory / local_directory / python — is relative to the configuration file's
folder (without a file, or for a key the file does not set, relative to the working directory: the default run
directory is ``runs/default`` there; ``clustermass run --out`` is relative to the working directory, as every
command-line path).

The whole configuration is checked when it is loaded, before anything runs (and by ``clustermass run --dry-run``):
every key of every section (types, ranges, choices: each section's ``__post_init__``), the files it names (the
catalogs' formats and snapshots, a reused model, a prior table: parsed, finite, non-negative, normalisable and
covering the masses the run can produce), the run directory (a folder, not a file), and the sections against each
other (the cylinder against the box, the cuts against the synthetic box's, the catalog model against the trained or
reused ones). Every error is one :class:`~pipeline.errors.ConfigError` line naming the file, the section and the
key: ``run.toml [observe] regions_per_side: expected an integer in [1, 64], got 0``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.config import HOST_MASS_RANGE, ObserveSection
from flows.runners import RUNNER_KINDS, RunnerSection
from inference.config import InferSection
from inference.priors import BUILTIN, check_covers, read_table
from ingest.config import InputSection, SynthSection
from models.config import TrainSection
from pipeline.config import check_choice, check_number, read_toml, resolve_path, section, table
from pipeline.errors import ClusterMassError, ConfigError
from pipeline.files import check_output_path
from pipeline.snapshot import Snapshot

DEFAULT_RUN_DIR = Path("runs/default")


#: the most workers, SLURM jobs, cores or processes [runner] may ask for
MAX_RUNNER_COUNT = 4096
#: SLURM walltimes: minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]]
_WALLTIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")
#: dask memory sizes: "32GB", "32 GiB", "500MB", "1e9"
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?(e\d+)?\s*([kKmMgGtTpP]i?)?[bB]?\s*$")
#: a dask scheduler: tcp://host:8786, host:8786, tls://..., inproc://...
_ADDRESS = re.compile(r"^([a-z][a-z0-9+.-]*://)?[^\s/:]+(:\d{1,5})?/?$")


@dataclass(frozen=True)
class OutputSection:
    """``[output]``: the run directory (``clustermass run --out`` overrides it).

    A relative ``dir`` is relative to the configuration file's folder (:func:`parse_config` resolves it); the
    default, ``runs/default``, to the working directory.
    """

    dir: Path = DEFAULT_RUN_DIR

    def __post_init__(self) -> None:
        if not str(self.dir).strip():
            raise ConfigError("expected a directory, got ''", key="dir")


@dataclass(frozen=True)
class RunConfig:
    snapshot: Snapshot | None = None
    input: InputSection | None = None
    synth: SynthSection = field(default_factory=SynthSection)
    observe: ObserveSection = field(default_factory=ObserveSection)
    train: TrainSection = field(default_factory=TrainSection)
    infer: InferSection = field(default_factory=InferSection)
    output: OutputSection = field(default_factory=OutputSection)
    runner: RunnerSection = field(default_factory=RunnerSection)
    source: str = "<defaults>"

    def science_dict(self) -> dict[str, Any]:
        """Every choice that can change a result (not where or how fast it runs): the configuration digest."""
        d = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        for key in ("output", "runner", "source"):
            d.pop(key, None)
        for name in ("synth", "observe"):
            d[name].pop("workers", None)
        return d


SECTIONS = ("snapshot", "input", "synth", "observe", "train", "infer", "output", "runner")


def load_config(path: str | Path | None, *, run: bool = True) -> RunConfig:
    """Read and validate a TOML configuration; None gives the defaults (the embedded synthetic box).

    ``run``: also check the sections against each other and the files they name as ``clustermass run`` uses them
    (see :func:`parse_config`); False for a command that takes some sections with inputs of its own (``observe``,
    ``train``, ``synth``, ``inspect``).
    """
    if path is None:
        return RunConfig()
    p = Path(path)
    return parse_config(read_toml(p), source=str(p), base=p.parent.absolute(), run=run)


def parse_config(data: Mapping[str, Any], *, source: str = "<config>", base: Path | None = None,
                 run: bool = True) -> RunConfig:
    """The :class:`RunConfig` of parsed TOML ``data``, every key checked (see the module's docstring).

    Relative paths resolve against ``base``, the configuration file's folder (default: the working directory).
    With ``run`` (the default) the configuration is also checked as the run will use it: the catalogs of ``[input]``
    (readable, agreeing snapshots; headers only) or else the synthetic box of ``[synth]`` against ``[snapshot]``
    and the cuts of ``[observe]``; the cylinder and regions against the box; the catalog model against the trained
    or reused ones; a prior table's coverage; the run directory. Without ``run`` each section is checked on its own
    (and ``[input]`` files must exist).
    """
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; expected some of {list(SECTIONS)}", where=source)
    base = base or Path.cwd()

    def where(name: str) -> str:
        return f"{source} [{name}]"

    snap = _snapshot(table(data, "snapshot", source), where("snapshot")) if "snapshot" in data else None
    inp = None
    if "input" in data:
        values = table(data, "input", source)
        for key in ("halos", "galaxies"):
            if key not in values:
                raise ConfigError("expected a catalog file, got nothing (the key is required)", key=key,
                                  where=where("input"))
        inp = section(InputSection, values, where("input"))
        inp = dataclasses.replace(inp, **{key: resolve_path(getattr(inp, key), base) for key in ("halos", "galaxies")})
        for key in ("halos", "galaxies"):
            path = getattr(inp, key)
            if not path.is_file():
                why = "does not exist" if not path.exists() else "is not a file"
                raise ConfigError(f"expected a catalog file, got {path}, which {why}", key=key, where=where("input"))
    synth = section(SynthSection, table(data, "synth", source), where("synth"))
    observe = section(ObserveSection, table(data, "observe", source), where("observe"))
    train = section(TrainSection, table(data, "train", source), where("train"))
    infer = section(InferSection, table(data, "infer", source), where("infer"))
    output = section(OutputSection, table(data, "output", source), where("output"))
    runner = _runner(table(data, "runner", source), where("runner"), base)
    if "dir" in table(data, "output", source):  # the default, runs/default, stays in the working directory
        output = dataclasses.replace(output, dir=resolve_path(output.dir, base))
    if train.reuse:  # the catalog model must then be in the reused directory (_check_prior)
        train = _check_reuse(train, observe, base, where("train"))
    elif infer.model not in train.models:
        raise ConfigError(f"expected one of the trained models {list(train.models)} ([train] models), got "
                          f"{infer.model!r}", key="model", where=where("infer"))
    infer = _check_prior(infer, train, observe, base, where("infer"), run=run)
    if run:
        _check_run(snap, inp, synth, observe, where)
        try:
            check_output_dir(output.dir)
        except ConfigError as exc:
            raise exc.located(where("output")) from None
    return RunConfig(snap, inp, synth, observe, train, infer, output, runner, source)


def _check_run(snap: Snapshot | None, inp: InputSection | None, synth: SynthSection, observe: ObserveSection,
               where: Any) -> None:
    """The sections against each other and the box the run observes: the catalogs of ``[input]``, or else the
    synthetic box of ``[synth]`` (which ``[snapshot]``, if given, must describe)."""
    if inp is not None:
        box = _check_input(inp, snap, where("input"), observe.r_limit)
    else:
        box = synth.box_config().snapshot
        if snap is not None and not snap.agrees_with(box):
            raise ConfigError(
                f"describes a {snap.box_size:g} Mpc/h box at z = {snap.redshift:.4f} ({snap.cosmology.name}), but "
                f"without [input] the run observes the synthetic box of [synth] ({box.box_size:g} Mpc/h at "
                f"z = {box.redshift:.4f}, {box.cosmology.name}); expected no [snapshot], or one that agrees",
                where=where("snapshot"))
        _check_observe_against_synth(observe, synth, where("observe"))
    try:
        observe.check_box(box)
    except ConfigError as exc:
        raise exc.located(where("observe")) from None


def _snapshot(values: dict[str, Any], where: str) -> Snapshot:
    """``[snapshot]``, each key checked before :meth:`Snapshot.from_dict` builds it."""
    try:
        for key, value in values.items():
            if key == "box_size":
                check_number(key, value, low=0.0, high=1e5, low_open=True, unit="comoving Mpc/h")
            elif key == "scale_factor":
                check_number(key, value, low=0.0, high=1.0, low_open=True)
            elif key == "redshift":
                check_number(key, value, low=0.0, high=20.0)
            elif key == "name" and not isinstance(value, str):
                raise ConfigError(f"expected a string, got {value!r}", key=key)
            elif key == "cosmology" and not isinstance(value, str | Mapping):
                raise ConfigError(f"expected a preset name or a table of parameters, got {value!r}", key=key)
        return Snapshot.from_dict(values, where=where)
    except ConfigError as exc:
        if exc.message.startswith("cosmology "):  # a Cosmology's own range check does not know where it is
            raise ConfigError(exc.message.split(": ", 1)[-1], key="cosmology", where=where) from None
        raise exc.located(where) from None


def _runner(values: dict[str, Any], where: str, base: Path) -> RunnerSection:
    """``[runner]``: :class:`RunnerSection` (its own checks) plus bounds and the SLURM and dask value formats.

    Relative ``log_directory``, ``local_directory`` and ``python`` paths (with a ``/``) resolve against ``base``, as
    every path of the file does; values with ``$`` are left for the compute node's shell (``"$TMPDIR"``).
    """
    try:
        for key in ("workers", "jobs", "cores", "processes"):  # before RunnerSection: it does not name the key
            if isinstance(values.get(key), int):
                check_number(key, values[key], low=1, high=MAX_RUNNER_COUNT, integer=True)
        if isinstance(values.get("kind"), str):
            check_choice("kind", values["kind"], RUNNER_KINDS)
    except ConfigError as exc:
        raise exc.located(where) from None
    runner = section(RunnerSection, values, where)
    try:
        if runner.kind == "slurm":
            if not _MEMORY.match(runner.memory):
                raise ConfigError(f"expected a size such as '32GiB', got {runner.memory!r}", key="memory")
            if not _WALLTIME.match(runner.walltime):
                raise ConfigError(f"expected a SLURM time such as '02:00:00' or '1-12:00:00', got {runner.walltime!r}",
                                  key="walltime")
        if runner.address and not _ADDRESS.match(runner.address):
            raise ConfigError(f"expected a scheduler address such as 'tcp://host:8786', got {runner.address!r}",
                              key="address")
    except ConfigError as exc:
        raise exc.located(where) from None
    paths = {key: str(resolve_path(value, base)) for key in ("log_directory", "local_directory", "python")
             if (value := getattr(runner, key)) and "$" not in value and (key != "python" or "/" in value)
             and not Path(value).expanduser().is_absolute()}
    return dataclasses.replace(runner, **paths) if paths else runner


def _check_input(inp: InputSection, snap: Snapshot | None, where: str, r_limit: float | None = None) -> Snapshot:
    """The catalogs of ``[input]`` must be readable catalog files whose snapshots agree (with ``[snapshot]`` too),
    the galaxies with magnitudes if ``[observe] r_limit`` is set; returns the snapshot they describe. Only headers are
    read (the values are checked when ingest streams them)."""
    from ingest.catalog import read_galaxies, read_halos

    catalogs = {}
    for key, reader, fmt in (("halos", read_halos, inp.halo_format), ("galaxies", read_galaxies, inp.galaxy_format)):
        try:  # parse_config made sure the file exists
            catalogs[key] = reader(getattr(inp, key), format=fmt, snapshot=snap, validate=False)
        except ClusterMassError as exc:
            raise ConfigError(str(exc), key=key, where=where) from None
    halos, galaxies = catalogs["halos"].snapshot, catalogs["galaxies"].snapshot
    if not halos.agrees_with(galaxies):
        raise ConfigError(f"{inp.galaxies} is a snapshot ({galaxies.to_dict()}) other than the halo catalog's "
                          f"({halos.to_dict()}); expected the galaxies of the same box and time", key="galaxies",
                          where=where)
    if r_limit is not None and "mag_r" not in catalogs["galaxies"].source.available:
        raise ConfigError(f"needs each galaxy's r-band magnitude (mag_r), which {inp.galaxies} lacks; expected no "
                          f"r_limit with these catalogs, got {r_limit:g}", key="r_limit",
                          where=where.replace("[input]", "[observe]"))
    return halos


def _check_observe_against_synth(observe: ObserveSection, synth: SynthSection, where: str) -> None:
    """The cuts of ``[observe]`` must lie where the synthetic box has halos and galaxies."""
    box = synth.box_config()
    if observe.log10_mstar_min < synth.min_log10_mstar:
        raise ConfigError(f"expected >= [synth] min_log10_mstar = {synth.min_log10_mstar:g} (the box has no galaxies "
                          f"below it, so the observations would miss them silently), got {observe.log10_mstar_min:g}",
                          key="log10_mstar_min", where=where)
    if synth.format != "hdf5" and observe.r_limit is not None:
        raise ConfigError(f"needs each galaxy's r-band magnitude (mag_r), which only the synthetic box's HDF5 files "
                          f"carry; expected [synth] format = 'hdf5', got {synth.format!r}", key="r_limit", where=where)
    if not box.log10_mmin <= observe.host_log10_m200c_min < box.log10_mmax:
        raise ConfigError(f"expected a host cut within the synthetic box's halo masses, [{box.log10_mmin:g}, "
                          f"{box.log10_mmax:g}) log10 Msun/h ([synth] log10_mmin), got "
                          f"{observe.host_log10_m200c_min:g}", key="host_log10_m200c_min", where=where)


def _check_reuse(train: TrainSection, observe: ObserveSection, base: Path, where: str) -> TrainSection:
    """A model to reuse must exist and must have been trained on observations made as [observe] makes them."""
    path = resolve_path(train.reuse, base)
    kinds = _model_kinds(path)
    if not kinds:
        raise ConfigError(f"{path} holds no trained model (expected flow/, mdn/, mse/ or set/ with model.json, as "
                          "written by clustermass run or train)", key="reuse", where=where)
    for name in ("split.json", "msigma.json"):
        if not (path / name).is_file():
            raise ConfigError(f"{path} lacks {name} (expected a run's model/ directory)", key="reuse", where=where)
    description = _model_description(path / kinds[0], where)
    trained = description.get("observations", {}).get("config", {}).get("cylinder", {})
    if not isinstance(trained, Mapping):
        trained = {}
    mine = {k: v for k, v in dataclasses.asdict(observe).items() if k in trained}
    differ = {k: (trained[k], v) for k, v in mine.items() if trained[k] != v}
    if differ:
        detail = ", ".join(f"{k}: model {a!r} vs [observe] {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ConfigError(f"{path} was trained on a different cylinder ({detail}); the features would not mean the "
                          "same", key="reuse", where=where)
    return dataclasses.replace(train, reuse=str(path))


def _model_kinds(path: Path) -> list[str]:
    """The model kinds (of the full feature set) a model directory holds."""
    return [k for k in ("flow", "mdn", "mse", "set") if (path / k / "model.json").is_file()]


def _model_description(directory: Path, where: str) -> dict[str, Any]:
    """A reused model's ``model.json`` (a JSON object), or a ConfigError naming it."""
    try:
        description = json.loads((directory / "model.json").read_text())
        if not isinstance(description, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{directory / 'model.json'} is not a model description ({exc})", key="reuse",
                          where=where) from None
    return description


def _check_prior(infer: InferSection, train: TrainSection, observe: ObserveSection, base: Path,
                 where: str, *, run: bool = True) -> InferSection:
    """``[infer]``: a reused model must hold the catalog model; a prior table is read and checked now.

    The table must be a readable two-column table of finite, non-negative, normalisable densities
    (:func:`inference.priors.read_table`) covering the masses the catalogs' grid can span: the reused model's
    training range, or else from ``[observe] host_log10_m200c_min`` (the lightest host) to 16 (the heaviest the
    pipeline accepts, and the synthetic box's log10_mmax), since the grid is the training range of a model not yet
    trained.
    """
    grid_range = (observe.host_log10_m200c_min, HOST_MASS_RANGE[1])
    why = f"range of host masses, [observe] host_log10_m200c_min to {HOST_MASS_RANGE[1]:g},"
    if train.reuse:
        reuse = Path(train.reuse)
        if infer.model not in _model_kinds(reuse):
            raise ConfigError(f"expected a model that {reuse} ([train] reuse) holds, {_model_kinds(reuse)}, got "
                              f"{infer.model!r}", key="model", where=where)
        grid = _model_description(reuse / infer.model, f"{where.rsplit(' ', 1)[0]} [train]").get(
            "training_prior", {}).get("grid")
        if isinstance(grid, list) and len(grid) >= 2 and all(isinstance(v, int | float) for v in grid):
            grid_range, why = (float(grid[0]), float(grid[-1])), f"training range of {reuse / infer.model}"
    if infer.prior in BUILTIN:
        return infer
    path = resolve_path(infer.prior, base)
    if not path.is_file():
        raise ConfigError(f"expected flat, tinker08, training or an existing table file, got {infer.prior!r}"
                          + (f" ({path} does not exist)" if not path.exists() else f" ({path} is not a file)"),
                          key="prior", where=where)
    try:
        x, _ = read_table(path)
        if run:
            check_covers(path, x, *grid_range, why=why)
    except ClusterMassError as exc:
        raise ConfigError(str(exc), key="prior", where=where) from None
    return dataclasses.replace(infer, prior=str(path))


def check_output_dir(path: Path, key: str = "dir", *, writable: bool = False) -> None:
    """Refuse an output directory that is a file or lies inside one, runs through a symbolic-link loop or a dangling
    link, or is not UTF-8 (:func:`pipeline.files.check_output_path`); with ``writable`` also one whose nearest
    existing ancestor this user cannot write (the command-line ``--out``: ``[output] dir`` may be overridden by it,
    so the file's own value is not held to that)."""
    check_output_path(path, directory=True, writable=writable, key=key)
