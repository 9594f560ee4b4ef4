"""The run configuration: one TOML file, validated up front (unknown keys, wrong types, missing files).

Sections (all optional; the defaults describe the embedded synthetic box)::

    [snapshot]            # needed when the catalogs do not say (CSV, UniverseMachine binary)
    box_size = 1000.0     # comoving Mpc/h
    scale_factor = 0.8951
    cosmology = "mdpl2"   # or a table: {h=..., Om0=..., Ob0=..., ns=..., sigma8=...}

    [input]               # real catalogs; without it the synthetic box below is generated
    halos = "hlist_0.89510.list"
    galaxies = "sfr_catalog_0.895100.bin"
    halo_format = "hlist"         # optional: hlist | csv | hdf5
    galaxy_format = "um-binary"   # optional: um-binary | um-ascii | hdf5

    [synth]
    box_size = 800.0      # comoving Mpc/h
    seed = 0
    format = "hdf5"       # hdf5 | ascii | native | csv
    log10_mmin = 11.0     # distinct halos, M200c in Msun/h
    min_log10_mstar = 9.5 # galaxies written, Msun
    workers = 2

    [observe]             # mock observations (defaults: Ho et al. 2019)
    r_aperture = 1.6      # comoving Mpc/h
    v_cut = 2500.0        # km/s
    min_members = 10
    log10_mstar_min = 9.5
    host_log10_m200c_min = 13.5
    extra_directions = 0  # random lines of sight for hosts above extra_log10_m200c_min
    regions_per_side = 4
    workers = 2

    [train]
    models = ["mdn", "flow", "mse"]   # the M-sigma power law is always fitted too
    test_fraction = 0.25  # hosts held out from training, for validation
    ensemble = 3          # deep-ensemble members per model
    hidden = [128, 128, 64]

    [infer]
    prior = "flat"        # target prior of the catalogs: flat | tinker08 | training | a two-column table
    model = "flow"        # whose posteriors fill the catalog: flow | mdn

    reuse = ""            # a trained model directory (a run's model/) to use instead of training

    [output]
    dir = "runs/default"

    [runner]              # where the flow's tasks run
    kind = "threads"      # threads | dask | slurm
    workers = 2           # threads / local dask workers
    address = ""          # dask: a running scheduler, tcp://host:8786
    jobs = 4              # slurm: SLURM jobs, each with cores, memory, walltime, queue, account below
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError
from pipeline.snapshot import Snapshot


@dataclass(frozen=True)
class InputConfig:
    halos: Path
    galaxies: Path
    halo_format: str | None = None
    galaxy_format: str | None = None


@dataclass(frozen=True)
class SynthSection:
    box_size: float = 800.0
    seed: int = 0
    format: str = "hdf5"
    log10_mmin: float = 11.0
    min_log10_mstar: float = 9.5
    workers: int = 2


@dataclass(frozen=True)
class ObserveSection:
    """Mock observations (features/): cylinder, lines of sight, regions."""

    r_aperture: float = 1.6  # comoving Mpc/h
    v_cut: float = 2500.0  # km/s
    min_members: int = 10
    log10_mstar_min: float = 9.5  # Msun
    host_log10_m200c_min: float = 13.5  # Msun/h
    extra_directions: int = 0
    extra_log10_m200c_min: float = 14.5  # Msun/h
    los_seed: int = 0
    regions_per_side: int = 4
    workers: int = 2


@dataclass(frozen=True)
class TrainSection:
    """Training (models/): which models, their architecture and optimisation."""

    models: list[str] = field(default_factory=lambda: ["mdn", "flow", "mse"])
    features: list[str] = field(default_factory=list)  # empty: every feature of the table
    test_fraction: float = 0.25  # hosts held out for validation (never seen in training)
    hidden: list[int] = field(default_factory=lambda: [128, 128, 64])
    n_components: int = 10
    n_bins: int = 16
    dropout: float = 0.0
    ensemble: int = 3
    mc_samples: int = 1
    batch_size: int = 1024
    max_epochs: int = 300
    patience: int = 25
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    reuse: str = ""  # a trained model directory (a run's model/) to use instead of training


@dataclass(frozen=True)
class InferSection:
    """Inference (inference/): the target prior of the catalogs."""

    prior: str = "flat"  # flat | tinker08 | training | path to a two-column table
    model: str = "flow"  # the model whose posteriors fill the catalog: flow | mdn


RUNNER_KINDS = ("threads", "dask", "slurm")


@dataclass(frozen=True)
class RunnerSection:
    """Where the flow's tasks run: threads here, a dask cluster, or dask workers in SLURM jobs."""

    kind: str = "threads"  # threads | dask | slurm
    workers: int = 2  # threads: concurrent tasks; dask without address: local worker threads
    address: str = ""  # dask: a running scheduler (tcp://host:8786); empty starts a local cluster
    # slurm (dask-jobqueue SLURMCluster): one dask worker per job unless processes > 1
    jobs: int = 4  # SLURM jobs to start
    cores: int = 8  # cores per job
    processes: int = 1  # dask worker processes per job
    memory: str = "32GB"  # memory per job
    walltime: str = "02:00:00"
    queue: str = ""  # partition (#SBATCH -p)
    account: str = ""  # #SBATCH -A
    job_extra_directives: list[str] = field(default_factory=list)  # more #SBATCH lines, e.g. ["--constraint=cpu"]
    job_script_prologue: list[str] = field(default_factory=list)  # shell lines before the worker starts
    local_directory: str = ""  # worker scratch (node-local disk); empty: dask's default
    log_directory: str = ""  # where SLURM writes job logs
    python: str = ""  # interpreter on the nodes; empty: this one


@dataclass(frozen=True)
class OutputConfig:
    dir: Path = Path("runs/default")


@dataclass(frozen=True)
class RunConfig:
    snapshot: Snapshot | None = None
    input: InputConfig | None = None
    synth: SynthSection = field(default_factory=SynthSection)
    observe: ObserveSection = field(default_factory=ObserveSection)
    train: TrainSection = field(default_factory=TrainSection)
    infer: InferSection = field(default_factory=InferSection)
    output: OutputConfig = field(default_factory=OutputConfig)
    runner: RunnerSection = field(default_factory=RunnerSection)
    source: str = "<defaults>"

    def science_dict(self) -> dict[str, Any]:
        """Every choice that can change a result (not where or how fast it runs): the configuration digest."""
        import dataclasses
        import json

        d = json.loads(json.dumps(dataclasses.asdict(self), default=str))
        for key in ("output", "runner", "source"):
            d.pop(key, None)
        for section in ("synth", "observe"):
            d[section].pop("workers", None)
        return d


_SECTIONS = {"snapshot", "input", "synth", "observe", "train", "infer", "output", "runner"}


def load_config(path: str | Path | None) -> RunConfig:
    """Read and validate a TOML configuration; None gives the defaults (the embedded synthetic box)."""
    if path is None:
        return RunConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: configuration file not found")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML ({exc})") from None
    return parse_config(data, source=str(p), base=p.parent)


def parse_config(data: Mapping[str, Any], *, source: str = "<config>", base: Path | None = None) -> RunConfig:
    unknown = sorted(set(data) - _SECTIONS)
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; expected some of {sorted(_SECTIONS)}")
    base = base or Path.cwd()
    snap = None
    if "snapshot" in data:
        snap = Snapshot.from_dict(_table(data, "snapshot", source), where=f"{source} [snapshot]")
    inp = None
    if "input" in data:
        values = _typed(_table(data, "input", source), InputConfig, f"{source} [input]")
        for key in ("halos", "galaxies"):
            if key not in values:
                raise ConfigError(f"{source} [input]: '{key}' (a catalog file) is required")
            path = Path(values[key]).expanduser()
            path = path if path.is_absolute() else base / path
            if not path.exists():
                raise ConfigError(f"{source} [input]: {key} file {path} does not exist")
            values[key] = path
        inp = InputConfig(**values)
    synth = SynthSection(**_typed(_table(data, "synth", source), SynthSection, f"{source} [synth]"))
    if synth.box_size <= 0 or synth.workers < 1:
        raise ConfigError(f"{source} [synth]: box_size must be > 0 Mpc/h and workers >= 1")
    observe = ObserveSection(**_typed(_table(data, "observe", source), ObserveSection, f"{source} [observe]"))
    train = TrainSection(**_typed(_table(data, "train", source), TrainSection, f"{source} [train]"))
    unknown_models = sorted(set(train.models) - {"mdn", "flow", "mse"})
    if unknown_models or not train.models:
        raise ConfigError(f"{source} [train]: models must be some of ['mdn', 'flow', 'mse'], got {train.models}")
    if not 0.0 < train.test_fraction < 1.0:
        raise ConfigError(f"{source} [train]: test_fraction must be in (0, 1), got {train.test_fraction}")
    if train.reuse:
        train = _check_reuse(train, observe, base, source)
    infer = InferSection(**_typed(_table(data, "infer", source), InferSection, f"{source} [infer]"))
    if infer.model not in ("flow", "mdn"):
        raise ConfigError(f"{source} [infer]: model must be 'flow' or 'mdn', got {infer.model!r}")
    if infer.model not in train.models:
        raise ConfigError(f"{source} [infer]: model '{infer.model}' is not among the trained models {train.models}")
    if infer.prior not in ("flat", "tinker08", "training"):
        path = Path(infer.prior).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise ConfigError(f"{source} [infer]: prior must be flat, tinker08, training or an existing table file, "
                              f"got {infer.prior!r}")
        infer = InferSection(prior=str(path), model=infer.model)
    out_values = _typed(_table(data, "output", source), OutputConfig, f"{source} [output]")
    if "dir" in out_values:
        out_values["dir"] = Path(out_values["dir"])
    runner = RunnerSection(**_typed(_table(data, "runner", source), RunnerSection, f"{source} [runner]"))
    if runner.kind not in RUNNER_KINDS:
        raise ConfigError(f"{source} [runner]: kind must be one of {list(RUNNER_KINDS)}, got {runner.kind!r}")
    if min(runner.workers, runner.jobs, runner.cores, runner.processes) < 1:
        raise ConfigError(f"{source} [runner]: workers, jobs, cores and processes must be >= 1")
    if runner.address and runner.kind != "dask":
        raise ConfigError(f"{source} [runner]: address is for kind = \"dask\", not {runner.kind!r}")
    return RunConfig(snap, inp, synth, observe, train, infer, OutputConfig(**out_values), runner, source)


def _check_reuse(train: TrainSection, observe: ObserveSection, base: Path, source: str) -> TrainSection:
    """A model to reuse must exist and must have been trained on observations made as [observe] makes them."""
    import dataclasses
    import json

    where = f"{source} [train] reuse"
    path = Path(train.reuse).expanduser()
    path = path if path.is_absolute() else base / path
    kinds = [k for k in ("flow", "mdn", "mse") if (path / k / "model.json").is_file()]
    if not kinds:
        raise ConfigError(f"{where}: {path} holds no trained model (expected flow/, mdn/ or mse/ with model.json, "
                          "as written by clustermass run or train)")
    for name in ("split.json", "msigma.json"):
        if not (path / name).is_file():
            raise ConfigError(f"{where}: {path} lacks {name} (expected a run's model/ directory)")
    description = json.loads((path / kinds[0] / "model.json").read_text())
    trained = description.get("observations", {}).get("config", {}).get("cylinder", {})
    mine = {k: v for k, v in dataclasses.asdict(observe).items() if k in trained}
    differ = {k: (trained[k], v) for k, v in mine.items() if trained[k] != v}
    if differ:
        detail = ", ".join(f"{k}: model {a!r} vs [observe] {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ConfigError(f"{where}: {path} was trained on a different cylinder ({detail}); "
                          "the features would not mean the same")
    return dataclasses.replace(train, reuse=str(path))


def _table(data: Mapping[str, Any], name: str, source: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: [{name}] must be a table, got {value!r}")
    return dict(value)


_TYPES = {float: (int, float), int: (int,), str: (str,), Path: (str,)}
_LISTS = {"list[str]": str, "list[int]": int}


def _typed(values: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    spec = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(spec))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(spec)}")
    hints = {"float": float, "int": int, "str": str, "Path": Path, "str | None": str}
    for key, value in values.items():
        hint = str(spec[key].type)
        if hint in _LISTS:
            item = _LISTS[hint]
            if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, item) for v in value):
                raise ConfigError(f"{where}: '{key}' must be a list of {item.__name__}, got {value!r}")
            continue
        kind = hints.get(hint, str)
        if isinstance(value, bool) or not isinstance(value, _TYPES[kind]):
            raise ConfigError(f"{where}: '{key}' must be {kind.__name__}, got {value!r}")
        if kind is float:
            values[key] = float(value)
    return values
