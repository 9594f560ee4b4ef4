"""Deterministic mode (pipeline.determinism): the same weights on 1 and on 2 cores."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import determinism
from pipeline.determinism import POOL_VARIABLE, SWITCH, configure_determinism
from pipeline.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# A tiny flow (one hidden layer of 32): without the fixed pool its weights differ between 1 and 2 cores
# (jax/jaxlib 0.10.2: the first layer's 18 x 32 weight gradient contracts over the 1024-row batch, which Eigen
# blocks by the pool size). The child pins itself to ``cpus`` before anything imports jax.
CHILD = textwrap.dedent(
    """
    import hashlib, os, sys
    os.sched_setaffinity(0, {cpus})
    from pipeline.determinism import configure_determinism
    pool = configure_determinism()
    import jax
    import numpy as np
    from models.model import train_model
    from models.spec import ModelSpec, TrainSpec
    rng = np.random.default_rng(0)
    n = 3000
    y = rng.uniform(13.5, 15.0, n)
    x = rng.normal(size=(n, 18)) + (y[:, None] - 14.2) * np.linspace(-1.0, 1.0, 18)
    model, _ = train_model(x, y, np.arange(n), feature_names=[f"f{{i}}" for i in range(18)],
                           spec=ModelSpec(kind="flow", hidden=(32,)), train=TrainSpec(max_epochs=2, ensemble=1))
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(model.members[0]):
        digest.update(np.asarray(leaf).tobytes())
    os.environ.pop("{pool_variable}")
    try:
        configure_determinism(True)
        late = "accepted"
    except RuntimeError:
        late = "refused"
    print(len(os.sched_getaffinity(0)), pool, digest.hexdigest(), late)
    """
)


def _usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


@pytest.mark.skipif(len(_usable_cpus()) < 2, reason="needs two usable CPUs to compare 1 with 2")
def test_training_is_bitwise_identical_on_one_and_two_cores():
    cpus = _usable_cpus()[:2]
    # each child compiles for itself: no compilation cache (tests/conftest.py) to hand one child the other's programs
    env = {k: v for k, v in os.environ.items() if k not in (POOL_VARIABLE, "NPROC", "XLA_FLAGS",
                                                            "JAX_COMPILATION_CACHE_DIR")}
    env.update({SWITCH: "1", "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
                "JAX_PLATFORMS": "cpu"})
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD.format(cpus=set(use), pool_variable=POOL_VARIABLE)],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for use in (cpus[:1], cpus)
    ]  # side by side: the numbers do not depend on the load, only on the pool size
    lines = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-3000:]
        lines.append(out.split()[-4:])
    (n1, pool1, weights1, late1), (n2, pool2, weights2, late2) = lines
    assert (n1, n2) == ("1", "2")  # the children really saw 1 and 2 cores
    assert pool1 == pool2 == str(determinism.THREADS)
    assert weights1 == weights2
    assert late1 == late2 == "refused"  # too late once jax's backend runs with a pool sized to the machine


def test_configure_determinism_sets_the_pool_once_and_keeps_the_users_choice():
    env: dict[str, str] = {}
    assert configure_determinism(environ=env) is (determinism.THREADS if determinism.DEFAULT else None)
    env = {SWITCH: "1"}
    assert configure_determinism(environ=env) == determinism.THREADS
    assert env[POOL_VARIABLE] == str(determinism.THREADS)
    assert configure_determinism(environ=env) == determinism.THREADS  # idempotent
    assert configure_determinism(environ={SWITCH: "yes", POOL_VARIABLE: "4"}) == 4  # the user's fixed size
    assert configure_determinism(True, threads=2, environ=(env := {})) == 2 and env == {POOL_VARIABLE: "2"}
    off = {SWITCH: "0"}
    assert configure_determinism(environ=off) is None and POOL_VARIABLE not in off
    with pytest.raises(ConfigError, match=SWITCH):
        configure_determinism(environ={SWITCH: "maybe"})
    with pytest.raises(ConfigError, match=POOL_VARIABLE):
        configure_determinism(environ={SWITCH: "1", POOL_VARIABLE: "many"})
