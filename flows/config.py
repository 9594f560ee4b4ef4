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

Paths in ``[input]``, ``[train] reuse`` and an ``[infer] prior`` table are relative to the configuration file's
folder; ``[output] dir`` is relative to the working directory. Every error is one
:class:`~pipeline.errors.ConfigError` line naming the file and the section.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from features.config import ObserveSection
from flows.runners import RunnerSection
from inference.config import InferSection
from inference.priors import BUILTIN
from ingest.config import InputSection, SynthSection
from models.config import TrainSection
from pipeline.config import read_toml, resolve_path, section, table
from pipeline.errors import ConfigError
from pipeline.snapshot import Snapshot

DEFAULT_RUN_DIR = Path("runs/default")


@dataclass(frozen=True)
class OutputSection:
    """``[output]``: the run directory (``clustermass run --out`` overrides it)."""

    dir: Path = DEFAULT_RUN_DIR


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


def load_config(path: str | Path | None) -> RunConfig:
    """Read and validate a TOML configuration; None gives the defaults (the embedded synthetic box)."""
    if path is None:
        return RunConfig()
    p = Path(path)
    return parse_config(read_toml(p), source=str(p), base=p.parent)


def parse_config(data: Mapping[str, Any], *, source: str = "<config>", base: Path | None = None) -> RunConfig:
    """The :class:`RunConfig` of parsed TOML ``data``; relative paths resolve against ``base`` (default: cwd)."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; expected some of {list(SECTIONS)}")
    base = base or Path.cwd()

    def where(name: str) -> str:
        return f"{source} [{name}]"

    snap = None
    if "snapshot" in data:
        snap = Snapshot.from_dict(table(data, "snapshot", source), where=where("snapshot"))
    inp = None
    if "input" in data:
        values = table(data, "input", source)
        for key in ("halos", "galaxies"):
            if key not in values:
                raise ConfigError(f"{where('input')}: '{key}' (a catalog file) is required")
        inp = section(InputSection, values, where("input"))
        for key in ("halos", "galaxies"):
            path = resolve_path(getattr(inp, key), base)
            if not path.exists():
                raise ConfigError(f"{where('input')}: {key} file {path} does not exist")
            inp = dataclasses.replace(inp, **{key: path})
    synth = section(SynthSection, table(data, "synth", source), where("synth"))
    observe = section(ObserveSection, table(data, "observe", source), where("observe"))
    train = section(TrainSection, table(data, "train", source), where("train"))
    if train.reuse:
        train = _check_reuse(train, observe, base, where("train") + " reuse")
    infer = section(InferSection, table(data, "infer", source), where("infer"))
    if infer.model not in train.models:
        raise ConfigError(f"{where('infer')}: model '{infer.model}' is not among the trained models "
                          f"{list(train.models)}")
    if infer.prior not in BUILTIN:
        path = resolve_path(infer.prior, base)
        if not path.is_file():
            raise ConfigError(f"{where('infer')}: prior must be flat, tinker08, training or an existing table file, "
                              f"got {infer.prior!r}")
        infer = dataclasses.replace(infer, prior=str(path))
    output = section(OutputSection, table(data, "output", source), where("output"))
    runner = section(RunnerSection, table(data, "runner", source), where("runner"))
    return RunConfig(snap, inp, synth, observe, train, infer, output, runner, source)


def _check_reuse(train: TrainSection, observe: ObserveSection, base: Path, where: str) -> TrainSection:
    """A model to reuse must exist and must have been trained on observations made as [observe] makes them."""
    path = resolve_path(train.reuse, base)
    kinds = [k for k in ("flow", "mdn", "mse") if (path / k / "model.json").is_file()]
    if not kinds:
        raise ConfigError(f"{where}: {path} holds no trained model (expected flow/, mdn/ or mse/ with model.json, "
                          "as written by clustermass run or train)")
    for name in ("split.json", "msigma.json"):
        if not (path / name).is_file():
            raise ConfigError(f"{where}: {path} lacks {name} (expected a run's model/ directory)")
    try:
        description = json.loads((path / kinds[0] / "model.json").read_text())
        trained = description.get("observations", {}).get("config", {}).get("cylinder", {})
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where}: {path / kinds[0] / 'model.json'} is not a model description ({exc})") from None
    mine = {k: v for k, v in dataclasses.asdict(observe).items() if k in trained}
    differ = {k: (trained[k], v) for k, v in mine.items() if trained[k] != v}
    if differ:
        detail = ", ".join(f"{k}: model {a!r} vs [observe] {b!r}" for k, (a, b) in sorted(differ.items()))
        raise ConfigError(f"{where}: {path} was trained on a different cylinder ({detail}); "
                          "the features would not mean the same")
    return dataclasses.replace(train, reuse=str(path))
