"""``[train] models`` accepts the set model (issue 19.3): its keys, their checks, its specs, and the default that
adds it when JAX's default backend is a GPU (models/config.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import models.config
from flows.config import load_config, parse_config
from models.config import DEFAULT_MODELS, GPU_DEFAULT_MODELS, TrainSection, default_models, gpu_backend
from pipeline.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def test_the_set_keys_name_what_the_set_model_defines():
    """The section names the encoder's poolings, the targets, the kind and the defaults without importing jax: they
    must be the set model's own."""
    from models.set_encoder import POOLINGS, SetSpec
    from models.set_model import SET_KIND, TARGETS

    assert models.config.SET_POOLINGS == POOLINGS and models.config.SET_TARGETS == TARGETS
    assert models.config.SET == SET_KIND
    section, spec = TrainSection(), SetSpec()
    assert (section.set_phi, section.set_pooling, section.set_cap) == (spec.phi, spec.pooling, spec.cap)


def test_set_is_a_model_kind_with_a_flow_head_and_its_own_optimisation():
    section = TrainSection(models=("flow", "mse", "set"), hidden=(32, 16), n_bins=12, ensemble=2, set_phi=(16, 8),
                           set_pooling="attention", set_cap=64, set_max_epochs=7, set_patience=3, set_batch_size=128,
                           set_target="msigma_residual", max_epochs=99)
    spec, train = section.specs("set")
    assert (spec.kind, spec.hidden, spec.n_bins) == ("flow", (32, 16), 12)
    assert (train.max_epochs, train.patience, train.batch_size, train.ensemble, train.epistemic) == (
        7, 3, 128, 2, "ensemble")
    assert section.specs("flow")[1].max_epochs == 99  # the feature flow keeps its own
    full, dynamics = section.set_spec("full"), section.set_spec("dynamics")
    assert full.inputs == ("r_proj", "v_los", "log10_mstar") and dynamics.inputs == ("r_proj", "v_los")
    assert (full.phi, full.pooling, full.cap) == ((16, 8), "attention", 64)


@pytest.mark.parametrize(("train", "key", "message"), [
    ({"models": ["flow", "set"], "epistemic": "bayes_by_backprop"}, "epistemic",
     "the set model ('set' in models) is a deep ensemble: expected epistemic = 'ensemble', got 'bayes_by_backprop'"),
    ({"models": ["flow", "set"], "epistemic": "mc_dropout", "dropout": 0.1, "mc_samples": 4}, "epistemic",
     "expected epistemic = 'ensemble', got 'mc_dropout'"),
    ({"models": ["flow", "set"], "set_pooling": "attention", "set_phi": [64, 30]}, "set_phi",
     "n_heads >= 1 dividing phi[-1] = 30"),
    ({"models": ["set", "set"]}, "models", "got repeated ['set']"),
])
def test_a_set_model_configured_against_itself_is_refused_in_one_line(tmp_path, train, key, message):
    path = tmp_path / "run.toml"
    path.write_text("[train]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in train.items()))
    with pytest.raises(ConfigError) as err:
        load_config(path, run=False)
    text = str(err.value)
    assert text.startswith(f"{path} [train] {key}: ") and message in text and "\n" not in text


def _toml(value) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def test_the_catalog_may_come_from_the_set_model_only_when_it_is_trained():
    cfg = parse_config({"train": {"models": ["flow", "mse", "set"]}, "infer": {"model": "set"}}, run=False)
    assert cfg.infer.model == "set"
    with pytest.raises(ConfigError, match=r"\[infer\] model: expected one of the trained models \['flow', 'mse'\] "
                                          r"\(\[train\] models\), got 'set'"):
        parse_config({"train": {"models": ["flow", "mse"]}, "infer": {"model": "set"}}, run=False)


def test_the_default_models_add_the_set_model_on_a_gpu_and_the_run_records_them(monkeypatch, tmp_path):
    assert TrainSection().models == DEFAULT_MODELS  # the tests run on CPU (JAX_PLATFORMS=cpu)
    monkeypatch.setattr(models.config, "gpu_backend", lambda: True)
    assert default_models() == GPU_DEFAULT_MODELS and "set" in GPU_DEFAULT_MODELS
    path = tmp_path / "run.toml"
    path.write_text("[train]\nensemble = 2\n")
    cfg = load_config(path, run=False)
    assert cfg.train.models == GPU_DEFAULT_MODELS
    assert cfg.science_dict()["train"]["models"] == list(GPU_DEFAULT_MODELS)  # in the run's configuration digest
    path.write_text("[train]\nmodels = ['flow', 'mse']\n")  # a configuration that says wins
    assert load_config(path, run=False).train.models == DEFAULT_MODELS


class _Dist:
    def __init__(self, name: str) -> None:
        self.metadata = {"Name": name}


def test_gpu_backend_asks_jax_only_where_a_gpu_is_possible(monkeypatch):
    import jax

    asked = []
    monkeypatch.setattr(jax, "default_backend", lambda: asked.append(1) or "gpu")
    # asking jax starts its backends: the CPU pool must be fixed first (the CLI reads the defaults on import)
    monkeypatch.setattr(models.config, "backend_started", lambda: False)
    monkeypatch.setattr(models.config, "configure_determinism", lambda: asked.append("pool fixed"))
    monkeypatch.setattr(models.config, "version", lambda name: "0.10.2")
    monkeypatch.setattr(models.config, "distributions", lambda: [_Dist("jax"), _Dist("jaxlib")])
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    assert not gpu_backend() and not asked  # no GPU build of JAX installed
    monkeypatch.setattr(models.config, "distributions", lambda: [_Dist("jax"), _Dist("jax_cuda12_plugin")])
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert not gpu_backend() and not asked  # the platforms exclude a GPU
    monkeypatch.delenv("JAX_PLATFORMS")
    assert gpu_backend() and asked == ["pool fixed", 1]  # a CUDA plugin and no restriction: jax says
    monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
    assert not gpu_backend()  # installed, but no GPU found
    monkeypatch.setattr(models.config, "distributions", lambda: [_Dist("jax")])
    monkeypatch.setattr(models.config, "version", lambda name: "0.4.30+cuda12.cudnn89")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert gpu_backend()  # an old CUDA jaxlib


def test_configs_set_toml_trains_the_set_models(monkeypatch):
    cfg = load_config(CONFIGS / "set.toml", run=False)
    assert "set" in cfg.train.models and "flow" in cfg.train.models
    assert set(cfg.train.feature_sets) >= {"full", "dynamics"}
    assert cfg.train.epistemic == "ensemble"


def test_reading_a_cpu_configuration_imports_no_jax():
    """The CLI reads configurations for every command: only a configuration with the set model (or a GPU build of
    JAX to ask) may import jax (run in a fresh interpreter: this session has imported it long ago)."""
    import subprocess

    code = ("import sys; from flows.config import parse_config; parse_config({'train': {'set_pooling': 'mean'}}, "
            "run=False); print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}, cwd=Path(__file__).parent.parent)
    assert out.stdout.strip() == "False"
