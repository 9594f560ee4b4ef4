"""Identical numbers whatever the number of cores: XLA's CPU thread pool at a fixed size.

Same seed, same machine, same core count gives identical weights and catalogs. A different number of usable
cores (``taskset``, a SLURM ``--cpus-per-task``, a container's cpuset) does not: XLA's CPU client sizes its
intra-op thread pool to the cores the process may use, and two kinds of operation split their work by that size,
which changes the order of floating-point sums:

* dots run by Eigen's thread-pool contraction, whose blocking depends on the pool size: in training, the weight
  gradients (batch x fan_in)^T (batch x fan_out) with a small output and the 1024-row batch as the inner
  dimension (the first layer's 18 x 128 kernel, the flow head's 64 x 49);
* reductions compiled to YNNPACK fusions (sums over the batch: the loss, bias gradients).

No ``XLA_FLAGS`` flag fixes this (tried with jax/jaxlib 0.10.2: ``--xla_cpu_multi_thread_eigen=false``,
``--xla_cpu_use_thunk_runtime=false``, ``--xla_cpu_use_xnnpack=false``, ``--xla_cpu_use_onednn=true``,
``--xla_cpu_experimental_xnn_fusion_type=dot``, ``--xla_cpu_experimental_ynn_fusion_type=...``; the
``intra_op_parallelism_threads=1`` of old recipes is not an XLA flag: XLA takes it for a flags file, or ignores it
after another flag). ``--xla_cpu_experimental_ynn_fusion_type=-reduce`` fixes the reductions only (and in one trial
the compiling first epoch took 24 s instead of 9 s, posteriors twice as long). What fixes both is the size of the
pool itself: XLA's CPU client reads it from the environment variable ``PJRT_NPROC`` (else ``NPROC``, else the usable
cores) when jax creates the CPU backend.
With it fixed, training gives bit-identical weights on 1 and 2 cores, and so identical catalogs.

Posterior evaluation (:func:`models.model.grid_density`, :func:`inference.posterior.iter_posteriors`, blocks of
1024 rows on one Python thread per core) was bit-identical across 1 and 2 cores and pool sizes 1 and 2 already
(16,384 rows, a 3-member flow, every summary and the PDFs): its dots contract over the features and network
widths, never over rows. Reproducibility across *machine types* (another CPU
model, instruction set or cache sizes, other jax/jaxlib versions) is not promised: Eigen's blocking also follows
the caches.

:func:`configure_determinism` sets ``PJRT_NPROC``; it must run before jax creates its backend (the first
computation, ``jax.devices()``...): importing jax earlier is fine. ``CLUSTERMASS_DETERMINISTIC=1`` asks for it,
``=0`` declines. The variable is inherited by subprocesses and by SLURM jobs (sbatch exports the environment), so
dask workers get the same pool size.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

from pipeline.errors import ConfigError

#: The switch: "1"/"true"/"yes"/"on" asks for the fixed pool, "0"/"false"/"no"/"off" declines.
SWITCH = "CLUSTERMASS_DETERMINISTIC"
#: The environment variable XLA's CPU client sizes its intra-op thread pool from (before ``NPROC``).
POOL_VARIABLE = "PJRT_NPROC"
#: The pool size of the deterministic mode. One thread: the numbers of a one-core machine, on any machine, and no
#: oversubscription anywhere (a pool of 2 on one core trained at 0.62-0.87x the speed of a pool of 1).
THREADS = 1
#: Whether the mode is on when :data:`SWITCH` is not set. On: on the shared 2-core development machine (load 5-12,
#: 2026-12) a pool of 1 trained the default flow (100k rows) at 0.44-1.57x the samples/s of the default pool of 2
#: over 13 interleaved pairs (median 1.08x), using 20-25% less CPU per sample (3.8-4.6 vs 4.9-5.7 us), so an idle
#: 2-core machine can gain at most ~1.6x from the second thread; posterior evaluation was 1.15-1.94x as fast.
DEFAULT = True

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def requested(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether :data:`SWITCH` asks for the deterministic mode (:data:`DEFAULT` when it is not set)."""
    env = os.environ if environ is None else environ
    value = env.get(SWITCH)
    if value is None:
        return DEFAULT
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"environment variable {SWITCH} must be 1 or 0 (or true/false, yes/no, on/off), "
                      f"got {env[SWITCH]!r}")


def backend_started() -> bool:
    """Whether jax has created its backends in this process (after which the pool size can no longer change)."""
    bridge = sys.modules.get("jax._src.xla_bridge")
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started()) if started is not None else False


def configure_determinism(
    enabled: bool | None = None, *, threads: int = THREADS, environ: MutableMapping[str, str] | None = None
) -> int | None:
    """Fix XLA's CPU intra-op thread pool at ``threads`` so that results do not depend on the number of cores.

    ``enabled``: ``None`` follows :func:`requested` (``$CLUSTERMASS_DETERMINISTIC``). When on, sets
    ``PJRT_NPROC = threads`` unless the environment already sets ``PJRT_NPROC`` (the user's choice is kept: any
    fixed value is deterministic). Idempotent. Returns the fixed pool size in effect, or ``None`` when the mode is
    off and none is fixed.

    Raises ``RuntimeError`` when the mode is on but jax's backend already started with no fixed pool size: call
    this at process start (the CLI's ``main``, a test's or worker's first lines), before any jax computation.
    A bad ``CLUSTERMASS_DETERMINISTIC`` or ``PJRT_NPROC`` value is a :class:`~pipeline.errors.ConfigError`.
    """
    env = os.environ if environ is None else environ
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    on = requested(env) if enabled is None else enabled
    current = env.get(POOL_VARIABLE)
    if not on:
        return _pool_size(current)
    if current is None:
        if environ is None and backend_started():
            raise RuntimeError(
                f"{SWITCH}: jax's CPU backend has already started with a pool sized to this machine's cores; "
                "call pipeline.determinism.configure_determinism() before the first jax computation"
            )
        env[POOL_VARIABLE] = str(threads)
        current = env[POOL_VARIABLE]
    return _pool_size(current)


def _pool_size(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {POOL_VARIABLE} must be a whole number of threads, got {value!r}"
                          ) from None
