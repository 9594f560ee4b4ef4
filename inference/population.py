"""Population inference from a posterior catalog: the mass function of its clusters (issue 20.3), pure maths on arrays.

Masses are log10 M200c in Msun/h (dex) throughout; densities are per dex; counts are numbers of clusters; a
volume is comoving (Mpc/h)^3 and a mass function dn/dlog10 M is per dex per (Mpc/h)^3.

A catalog row's PDF p_i(M) was made under a prior pi(M) (the catalog's target prior), so the row's likelihood of
its mass is L_i(M) ∝ p_i(M) / pi(M) (:func:`likelihoods`; REFERENCE.md §10). For a population of clusters whose
expected number density in true mass is f(M) (counts per dex: the mass function times the volume times the
selection, the probability that a host of true mass M is in the catalog), the extended (Poisson) likelihood of the
catalog is

    ln L(f) = sum_i ln ∫ L_i(M) f(M) dM - ∫ f(M) dM

(the hierarchical form of e.g. Hogg, Myers & Bovy 2010; the extended term is the Poisson count, Barlow 1990).
Two models of f are fitted here:

* **binned counts** (:func:`binned_counts`): f piecewise in 0.1-dex bins b, f(M) = sum_b N_b s_b(M), with s_b a
  within-bin shape normalised to unit integral over the bin (flat by default; optionally a known shape such as a
  Tinker et al. 2008 dn/dlog10 M times the selection) and N_b the expected number of clusters in bin b. With
  L_ib = ∫_b L_i s_b dM (:func:`bin_likelihoods`), ln L = sum_i ln sum_b N_b L_ib - sum_b N_b, and the EM update
  (Dempster, Laird & Rubin 1977; a Richardson 1972 / Lucy 1974 deconvolution) is
  N_b <- sum_i N_b L_ib / sum_b' N_b' L_ib';
* **a mass-function amplitude** (:func:`fit_amplitude`): f(M) = A V n_T08(M) S(M) inside a fit range of true mass,
  with free binned nuisance counts outside it (so clusters scattered in from outside do not bias A): the bins
  inside the range are tied to A through their expected counts per unit A, c_b = V ∫_b n_T08 S dM, and EM updates
  A with them as one component.

Regularisation. The binned deconvolution is ill-posed: with bins (0.1 dex) narrower than the per-cluster
likelihoods (~0.13 dex), plain EM run towards its maximum makes the counts alternate between ~0 and twice the truth
from bin to bin. Stopping it early (when a step gains less than ``EM_TOLERANCE`` nats) was enough on calibrated
Gaussian mocks (pull rms 0.9 against 2.5 at the maximum), not on the default run's catalogs, whose PDFs carry
structure the hosts do not have: stopped at 0.01 nats, the held-out catalog of the default box (9,326 hosts) gave
26, 916, 365, 0, 191, 214, 0, ... in the bins from 10^14 against 692, 465, 313, 210, 176, 98, 66. The binned counts
are therefore the smoothed EM (EMS, Silverman, Jones, Wilson & Nychka 1990, :func:`em`): after every EM update the
log of each count relative to a smooth reference mass function (the within-bin shape's integral: Tinker08 times the
selection in the command) is pulled halfway (``EMS_SMOOTHING``) to the mean of its neighbours', which damps the
alternation, keeps deviations from the reference that are smooth over a few bins, and has a fixed point that does not
depend on when iteration stops. Its bootstrap spread is that of a regularised estimator, smaller than each bin's
Poisson fluctuation about the smooth mass function. The amplitude fit has a single free parameter inside its range
and needs no smoothing: it is run to its maximum.

Errors: :func:`bootstrap_weights` resamples clusters with replacement (a seeded multinomial count per cluster);
every fit takes the weights of all replicates at once (one matrix product per EM step), and the standard deviation
over replicates is each quantity's error. The naive estimate for comparison is the histogram of the posterior
modes in the same bins (:func:`histogram`), which carries Eddington bias at the steep massive end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: width of the mass-function bins, dex
BIN_WIDTH = 0.1
#: default fit range of the amplitude, log10 M200c [Msun/h] (Ho et al. 2019's mass range; issue 20's acceptance)
FIT_RANGE = (14.0, 15.0)
#: how far (dex) an end of the bins may lie beyond the grid's end: the likelihoods are zero there
EDGE_SLACK = 1e-3
#: the prior is floored at this fraction of its maximum before dividing by it (where it vanishes)
PRIOR_FLOOR = 1e-12
#: EM stops when one step raises the extended log-likelihood by less than this, nats (plain EM, smoothing 0)
EM_TOLERANCE = 0.01
#: the smoothing s of the binned counts' EMS (:func:`em`): each step's log count relative to the reference shape moves
#: halfway to the mean of its neighbours'. Measured on the held-out catalogs of the default run on box seeds 0, 1, 2
#: (README, "Using the catalog in a cosmology analysis"): pull rms over 10^14-10^15 1.81 / 0.90 / 1.76 at s = 0.5,
#: about 2.1 / 1.4 / 2.1 at 0.25 (a prototype of the same update); s = 1 took thousands of steps to settle
EMS_SMOOTHING = 0.5
#: the amplitude fit (accelerated EM) stops when one cycle raises the extended log-likelihood by less than this, nats
AMPLITUDE_TOLERANCE = 1e-4
#: EM steps at most
EM_MAX_ITERATIONS = 5000
#: acceptance (issue 20): every bin over the fit range within this many bootstrap standard deviations of the truth
PULL_LIMIT = 2.0
#: acceptance: rms of the pulls over those bins at most this
PULL_RMS_LIMIT = 1.5
#: acceptance: |A_hier - A_true| at most this many standard errors of A_hier
AMPLITUDE_SE_LIMIT = 1.0
#: bootstrap replicates and seed of ``clustermass population`` unless it is told otherwise
BOOTSTRAP_REPLICATES = 200
BOOTSTRAP_SEED = 20
#: within-bin shapes the command offers: the Tinker08 mass function times the selection, or flat
WITHIN_BIN_SHAPES = ("tinker08", "flat")
#: sub-intervals per bin of the midpoint rule integrating a within-bin shape (:func:`shape_integrals`)
SHAPE_POINTS_PER_BIN = 64

#: a within-bin shape: density per dex (>= 0, any normalisation) at log10 M200c [Msun/h]
Shape = Callable[[np.ndarray], np.ndarray]


def _finite(name: str, values: np.ndarray) -> None:
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} must be finite; found {int(np.sum(~np.isfinite(values)))} values that are not")


def _increasing(name: str, values: Any) -> np.ndarray:
    """``values`` as a 1-D float64 array of at least 2 finite, strictly increasing values (``name`` in errors)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 values, got shape {v.shape}")
    _finite(name, v)
    if not np.all(np.diff(v) > 0):
        raise ValueError(f"{name} must be strictly increasing")
    return v


def _grid(grid: Any) -> np.ndarray:
    return _increasing("the grid", grid)


def likelihoods(pdf: Any, prior: Any, grid: Any, *, floor: float = PRIOR_FLOOR) -> np.ndarray:
    """Each row's likelihood of its mass on the grid: L_i(M) = p_i(M) / prior(M), normalised on the grid.

    ``pdf``: (N, G) posterior densities per dex of log10 M200c [Msun/h] on ``grid`` (G,), made under ``prior``
    (G,), a density per dex up to a constant. Where the prior vanishes it is floored at ``floor`` times its maximum
    (the posterior is ~0 there too, so such points get ~0 likelihood rather than a division by zero). Each row is
    normalised to unit integral over the grid (trapezoid rule; any constant factor cancels in the population
    fits). Returns (N, G) per dex. Raises ``ValueError`` on shapes that do not match, non-finite or negative
    values, a prior that is zero everywhere, or a row with zero likelihood everywhere.
    """
    g = _grid(grid)
    p = np.asarray(pdf, dtype=np.float64)
    pi = np.asarray(prior, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(g):
        raise ValueError(f"expected PDFs of shape (N, {len(g)}) on a grid of {len(g)} points, got {p.shape}")
    if pi.shape != g.shape:
        raise ValueError(f"expected a prior of shape {g.shape} (one value per grid point), got {pi.shape}")
    _finite("the PDFs", p)
    _finite("the prior", pi)
    if np.any(p < 0) or np.any(pi < 0):
        raise ValueError("PDFs and the prior must be non-negative densities")
    if not np.any(pi > 0):
        raise ValueError("the prior is zero everywhere on the grid")
    like = p / np.maximum(pi, floor * pi.max())
    norm = np.trapezoid(like, g, axis=1)
    bad = np.flatnonzero(~(norm > 0))
    if bad.size:
        raise ValueError(f"{bad.size} rows have zero likelihood everywhere on the grid (the first: row {bad[0]})")
    return like / norm[:, None]


def bin_edges(grid: Any, width: float = BIN_WIDTH) -> np.ndarray:
    """Edges of ``width``-dex bins spanning the grid, log10 M200c [Msun/h]: the multiples of ``width`` inside it
    (so that 14.0 and 15.0 are edges), and at either end the grid's end, or the multiple of ``width`` within
    ``EDGE_SLACK`` dex of it (a grid starting at 13.50004 has a first bin from 13.5, not a sliver)."""
    g = _grid(grid)
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"the bin width must be a positive number of dex, got {width}")
    k = np.arange(np.floor(g[0] / width), np.ceil(g[-1] / width) + 1)
    multiples = np.round(k * width, 10)
    lo = multiples[np.argmin(np.abs(multiples - g[0]))]
    hi = multiples[np.argmin(np.abs(multiples - g[-1]))]
    lo = lo if abs(lo - g[0]) <= EDGE_SLACK else g[0]
    hi = hi if abs(hi - g[-1]) <= EDGE_SLACK else g[-1]
    inner = multiples[(multiples > lo + 0.01 * width) & (multiples < hi - 0.01 * width)]
    return np.concatenate([[lo], inner, [hi]])


def _edges(edges: Any) -> np.ndarray:
    return _increasing("the bin edges", edges)


def _shape_values(shape: Shape | None, x: np.ndarray) -> np.ndarray:
    if shape is None:
        return np.ones_like(x)
    values = np.asarray(shape(x), dtype=np.float64)
    if values.shape != x.shape:
        raise ValueError(f"the within-bin shape returned shape {values.shape} for {x.shape} masses")
    _finite("the within-bin shape", values)
    if np.any(values < 0):
        raise ValueError("the within-bin shape must be a non-negative density")
    return values


def shape_integrals(edges: Any, shape: Shape | None = None, *, points: int = SHAPE_POINTS_PER_BIN) -> np.ndarray:
    """∫_b shape(M) dM over each bin (B,), in the shape's units times dex (flat: the bins' widths).

    Midpoint rule with ``points`` equal sub-intervals per bin. With ``shape`` = n_T08 S (per dex per (Mpc/h)^3),
    V times this is each bin's expected number of clusters per unit amplitude.
    """
    e = _edges(edges)
    if shape is None:
        return np.diff(e)
    u = (np.arange(points) + 0.5) / points
    mid = e[:-1, None] + u[None, :] * np.diff(e)[:, None]
    return _shape_values(shape, mid.ravel()).reshape(mid.shape).mean(axis=1) * np.diff(e)


def bin_likelihoods(like: Any, grid: Any, edges: Any, shape: Shape | None = None) -> np.ndarray:
    """L_ib = ∫_b L_i(M) s_b(M) dM (N, B): each row's likelihood integrated over each bin with the within-bin shape
    s_b = shape / ∫_b shape (flat when ``shape`` is None).

    ``like``: (N, G) per dex on ``grid`` [log10 Msun/h] (:func:`likelihoods`); ``edges`` (B+1,) within the grid
    (or at most ``EDGE_SLACK`` beyond its ends, where the likelihoods count as zero).
    L_i is taken linear between grid points; the grid and the edges together cut each bin into sub-intervals, and
    ∫ L_i s_b over one is (L_i(x_k) + L_i(x_k+1)) / 2 s_b(midpoint) dx (a shape's steps on those points are exact).
    A bin where the shape is zero gets L_ib = 0 (no cluster can be there). Computed as one (N, G) x (G, B) product.
    """
    g = _grid(grid)
    L = np.asarray(like, dtype=np.float64)
    e = _edges(edges)
    if L.ndim != 2 or L.shape[1] != len(g):
        raise ValueError(f"expected likelihoods of shape (N, {len(g)}) on a grid of {len(g)} points, got {L.shape}")
    _finite("the likelihoods", L)
    if e[0] < g[0] - EDGE_SLACK or e[-1] > g[-1] + EDGE_SLACK:
        raise ValueError(f"bin edges [{e[0]:g}, {e[-1]:g}] reach outside the grid [{g[0]:g}, {g[-1]:g}] (by more "
                         f"than {EDGE_SLACK:g} dex)")
    e = np.clip(e, g[0], g[-1])  # beyond the grid (at most EDGE_SLACK) the likelihoods are zero
    x = np.union1d(g[(g >= e[0]) & (g <= e[-1])], e)
    dx, mid = np.diff(x), 0.5 * (x[1:] + x[:-1])
    b = np.searchsorted(e, mid, side="right") - 1
    s = _shape_values(shape, mid) * dx
    z = np.bincount(b, weights=s, minlength=len(e) - 1)
    w = np.divide(s, z[b], out=np.zeros_like(s), where=z[b] > 0) / 2  # each sub-interval's weight on either end
    # weights on the union points -> on the grid points (linear interpolation between grid points)
    j = np.clip(np.searchsorted(g, x, side="right") - 1, 0, len(g) - 2)
    t = (x - g[j]) / (g[j + 1] - g[j])
    weights = np.zeros((len(g), len(e) - 1))
    for end, wk in ((slice(None, -1), w), (slice(1, None), w)):
        np.add.at(weights, (j[end], b), (1 - t[end]) * wk)
        np.add.at(weights, (j[end] + 1, b), t[end] * wk)
    return L @ weights


def point_bin_likelihoods(log10_m: Any, edges: Any, shape: Shape | None = None) -> np.ndarray:
    """Bin likelihoods (N, B) of known masses (delta-function likelihoods at ``log10_m`` [log10 Msun/h]):
    L_ib = s_b(M_i) for the bin b holding M_i (``edges[b] <= M_i < edges[b+1]``, the last bin closed), else 0.

    With these, :func:`binned_counts` returns the histogram and :func:`fit_amplitude` the amplitude fitted to the
    true masses. Raises ``ValueError`` for a mass outside the bins or not finite.
    """
    m = np.asarray(log10_m, dtype=np.float64)
    e = _edges(edges)
    if m.ndim != 1:
        raise ValueError(f"expected a 1-D array of log10 masses, got shape {m.shape}")
    _finite("the masses", m)
    outside = np.flatnonzero((m < e[0]) | (m > e[-1]))
    if outside.size:
        raise ValueError(f"{outside.size} masses lie outside the bins [{e[0]:g}, {e[-1]:g}] (the first: "
                         f"{m[outside[0]]:g})")
    b = np.minimum(np.searchsorted(e, m, side="right") - 1, len(e) - 2)
    z = shape_integrals(e, shape)
    s = _shape_values(shape, m)
    out = np.zeros((len(m), len(e) - 1))
    out[np.arange(len(m)), b] = np.divide(s, z[b], out=np.zeros_like(s), where=z[b] > 0)
    return out


def _weights(n: int, weights: Any) -> np.ndarray:
    """Bootstrap weights as (R, N) (one row of ones when None)."""
    if weights is None:
        return np.ones((1, n))
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"expected weights of shape (R, {n}) for {n} clusters, got {w.shape}")
    _finite("the weights", w)
    if np.any(w < 0):
        raise ValueError("weights must be non-negative")
    return w


@dataclass(frozen=True)
class EMFit:
    """Expected counts of the components of a Poisson mixture, per replicate.

    ``mu``: (R, K) expected numbers of clusters per component; ``log_likelihood``: (R,) the extended ln L at ``mu``,
    nats; ``iterations``: (R,) EM steps taken; ``converged``: (R,) whether a step raised ln L by less than the
    tolerance before ``max_iter``.
    """

    mu: np.ndarray
    log_likelihood: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray


def extended_log_likelihood(components: np.ndarray, mu: np.ndarray, weights: Any = None) -> np.ndarray:
    """ln L = sum_i w_i ln sum_k mu_k C_ik - sum_k mu_k per replicate (R,), nats, up to the constant of the
    likelihoods' normalisation. ``components``: (N, K); ``mu``: (R, K) or (K,); ``weights``: (R, N) or None."""
    C = np.asarray(components, dtype=np.float64)
    m = np.atleast_2d(np.asarray(mu, dtype=np.float64))
    w = _weights(len(C), weights)
    if m.shape[1] != C.shape[1] or len(m) not in (1, len(w)):
        raise ValueError(f"expected counts of shape (R, {C.shape[1]}), got {m.shape}")
    return _ll(np.ascontiguousarray(w.T), C @ m.T, m)  # float64 here: one evaluation, no speed to gain


def em(components: Any, *, weights: Any = None, start: Any = None, tol: float = EM_TOLERANCE,
       max_iter: int = EM_MAX_ITERATIONS, accelerate: bool = False, smoothing: float = 0.0,
       reference: Any = None) -> EMFit:
    """Maximise the extended likelihood of a Poisson mixture by EM, for every replicate at once.

    ``components``: (N, K) each cluster's likelihood under each component, each component's shape normalised to
    unit integral over mass (bin likelihoods, or an amplitude's tied bins as one column); ``weights``: (R, N)
    bootstrap counts per cluster (None: each cluster once); ``start``: (K,) or (R, K) expected counts (a zero
    fixes a component at zero; default: the weighted number of clusters shared equally by the components any
    cluster can belong to). Update mu_k <- mu_k sum_i w_i C_ik / sum_k' mu_k' C_ik'. A replicate stops when one
    step raises its ln L by less than ``tol`` nats, or after ``max_iter`` steps. ``accelerate``: each step is a
    SQUAREM cycle instead (Varadhan & Roland 2008, scheme S3: two EM updates, an extrapolation along them whose
    length is halved until every count stays positive, and a stabilising EM update; the plain double update is
    kept where the cycle would lower ln L), for fits meant to reach the maximum (the amplitude). ``smoothing`` s in
    (0, 1] makes it the smoothed EM (EMS) of Silverman, Jones, Wilson & Nychka (1990, JRSS B 52, 271): after every
    update, the log of each count relative to ``reference`` (K,), ln(mu_k / E_k), is replaced by (1 - s) times
    itself plus s times the mean of its two neighbours' (an end bin's missing neighbour is itself; components with
    E_k = 0 or that no cluster can hold are left alone), and the counts are rescaled to their sum before it. The
    fixed point no longer depends on when EM stops (a replicate stops when its counts stop moving, ``_STEADY``, or
    after ``max_iter`` steps; ``tol`` is not used), and deviations from the reference's shape that alternate from bin
    to bin are damped while smooth ones are kept. Raises ``ValueError`` for bad shapes, non-finite or negative
    values, or a cluster no component with a positive start can hold.
    """
    C = np.asarray(components, dtype=np.float64)
    if C.ndim != 2 or C.shape[0] == 0 or C.shape[1] == 0:
        raise ValueError(f"expected component likelihoods of shape (N, K) with N, K > 0, got {C.shape}")
    _finite("the component likelihoods", C)
    if np.any(C < 0):
        raise ValueError("component likelihoods must be non-negative")
    if not (np.isfinite(tol) and tol > 0) or int(max_iter) < 1:
        raise ValueError(f"expected tol > 0 and max_iter >= 1, got {tol} and {max_iter}")
    n, k = C.shape
    w = _weights(n, weights)
    r = len(w)
    if start is None:
        allowed = C.sum(axis=0) > 0
        mu = np.outer(w.sum(axis=1), allowed / allowed.sum())
    else:
        mu = np.broadcast_to(np.asarray(start, dtype=np.float64), (r, k)).copy()
        _finite("the start", mu)
        if np.any(mu < 0):
            raise ValueError("the start must be non-negative expected counts")
    if not (0.0 <= smoothing <= 1.0) or (smoothing > 0 and accelerate):
        raise ValueError(f"expected smoothing in [0, 1] (not with accelerate), got {smoothing}")
    ref = np.ones(k) if reference is None else np.asarray(reference, dtype=np.float64)
    if ref.shape != (k,) or not np.all(np.isfinite(ref)) or np.any(ref < 0):
        raise ValueError(f"expected a non-negative finite reference of shape ({k},), got {ref.shape}")
    C = np.where(C < _NEGLIGIBLE * C.max(axis=1, keepdims=True), 0.0, C)
    D = C @ mu.T
    impossible = (w.T > 0) & ~(D > 0)
    if np.any(impossible):
        first = int(np.flatnonzero(impossible.any(axis=1))[0])
        raise ValueError(f"cluster {first} has zero likelihood under every component the model allows")
    smoothed = (ref > 0) & (C.sum(axis=0) > 0)
    mu_f, steps, converged = _em_loop()(np.asarray(C, np.float32), np.asarray(w.T, np.float32),
                                        np.asarray(mu, np.float32), np.float32(tol), np.int32(max_iter),
                                        np.asarray(np.where(smoothed, ref, 1.0), np.float32), smoothed,
                                        np.float32(smoothing), accelerate=bool(accelerate),
                                        smooth=bool(smoothing > 0))
    mu = np.asarray(mu_f, dtype=np.float64)
    wt = np.ascontiguousarray(w.T)
    if accelerate:  # a fit taken to its maximum: one more EM update in float64 removes float32's rounding (~1e-4)
        mu = mu * ((wt / np.maximum(C @ mu.T, _TINY)).T @ C)
    ll = _ll(wt, C @ mu.T, mu)
    return EMFit(mu, ll, np.asarray(steps, dtype=np.int64), np.asarray(converged, dtype=bool))


#: float32's smallest normal number: densities are floored here before a division or a logarithm
_TINY = float(np.finfo(np.float32).tiny)
#: relative likelihoods and expected counts below this are zero in :func:`em` (they change nothing, and as
#: subnormal floats they would slow every product)
_NEGLIGIBLE = 1e-30
#: relative change of every count below which a replicate has stopped moving (float32 sums of ~10^4 terms)
_STEADY = 1e-5
#: halvings of a SQUAREM extrapolation tried before falling back to the plain double EM update
_BACKTRACK = 30


@functools.cache
def _em_loop() -> Callable[..., tuple[Any, Any, Any]]:
    """The EM iterations of :func:`em` as one compiled XLA loop (float32; the pool of one thread that
    ``configure_determinism`` fixes, so the same numbers on any core count): ``C`` (N, K) component likelihoods,
    ``wt`` (N, R) weights, ``mu0`` (R, K) start. Every replicate is updated while it is active; one stops when a
    step (or SQUAREM cycle) raises its ln L by less than ``tol`` (the gain summed as sum_i w_i ln(D_new / D_old) -
    sum_k (mu_new - mu_old), precise in float32 however large ln L is), or when no count moves by more than
    ``_STEADY`` of itself. The jitted function returns the counts (R, K), the steps taken (R,) and whether each
    replicate stopped by ``tol`` (R,)."""
    import jax  # here, not at the top: importing this module (the command line's defaults) stays cheap
    import jax.numpy as jnp

    def loop(C: jax.Array, wt: jax.Array, mu0: jax.Array, tol: jax.Array, max_iter: jax.Array, ref: jax.Array,
             smoothed: jax.Array, s: jax.Array, *, accelerate: bool, smooth: bool
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        left_ok = jnp.concatenate([jnp.zeros(1, bool), smoothed[:-1]]) & smoothed
        right_ok = jnp.concatenate([smoothed[1:], jnp.zeros(1, bool)]) & smoothed

        def smoothen(new: jax.Array) -> jax.Array:  # EMS: the log of new / ref averaged with its neighbours'
            lm = jnp.log(jnp.maximum(new, _TINY) / ref)
            left = jnp.where(left_ok, jnp.concatenate([lm[:, :1], lm[:, :-1]], axis=1), lm)
            right = jnp.where(right_ok, jnp.concatenate([lm[:, 1:], lm[:, -1:]], axis=1), lm)
            out = jnp.where(smoothed, jnp.exp((1 - s) * lm + s * 0.5 * (left + right)) * ref, new)
            return out * (new.sum(axis=1, keepdims=True) / jnp.maximum(out.sum(axis=1, keepdims=True), _TINY))

        def step(mu: jax.Array, D: jax.Array) -> tuple[jax.Array, jax.Array]:
            new = mu * ((wt / jnp.maximum(D, _TINY)).T @ C)
            new = jnp.where(new < _NEGLIGIBLE, 0.0, new)
            if smooth:
                new = smoothen(new)
            return new, C @ new.T

        def gain(mu_a: jax.Array, D_a: jax.Array, mu_b: jax.Array, D_b: jax.Array) -> jax.Array:
            ratio = jnp.maximum(D_b, _TINY) / jnp.maximum(D_a, _TINY)
            return (wt * jnp.log(ratio)).sum(axis=0) - (mu_b - mu_a).sum(axis=1)

        def squarem(mu0: jax.Array, D0: jax.Array) -> tuple[jax.Array, jax.Array]:
            mu1, D1 = step(mu0, D0)
            mu2, D2 = step(mu1, D1)
            r, v = mu1 - mu0, mu2 - 2 * mu1 + mu0
            norm_v = jnp.linalg.norm(v, axis=1)
            alpha = -jnp.linalg.norm(r, axis=1) / jnp.where(norm_v > 0, norm_v, 1.0)
            alpha = jnp.where(norm_v > 0, jnp.minimum(alpha, -1.0), -1.0)
            # the lengths alpha, (alpha - 1) / 2, ... (halving the distance to -1, the plain double update): the first
            # that keeps every count that was positive positive and none negative
            alphas = -1.0 + (alpha[None, :] + 1.0) / 2.0 ** jnp.arange(_BACKTRACK)[:, None]  # (B, R)
            cand = mu0[None] - 2 * alphas[..., None] * r[None] + alphas[..., None] ** 2 * v[None]  # (B, R, K)
            ok = jnp.all((cand >= 0) & ((cand > 0) | (mu0[None] == 0)), axis=2)
            first = jnp.argmax(ok, axis=0)
            chosen = jnp.take_along_axis(cand, first[None, :, None], axis=0)[0]
            chosen = jnp.where(ok.any(axis=0)[:, None], chosen, mu2)
            mu3, D3 = step(chosen, C @ chosen.T)
            better = gain(mu2, D2, mu3, D3) >= 0  # else keep the plain double update, which cannot lower ln L
            return jnp.where(better[:, None], mu3, mu2), jnp.where(better[None, :], D3, D2)

        def body(state: tuple) -> tuple:
            mu, D, steps, active, k = state
            new, D_new = squarem(mu, D) if accelerate else step(mu, D)
            # stopped by the tolerance, or by counts that no longer change beyond float32 rounding (where the gain is
            # rounding noise, ~1e-4 nats for 10^4 clusters)
            steady = jnp.all(jnp.abs(new - mu) <= _STEADY * jnp.maximum(mu, 1.0), axis=1)
            done = steady if smooth else (gain(mu, D, new, D_new) < tol) | steady
            mu = jnp.where(active[:, None], new, mu)
            D = jnp.where(active[None, :], D_new, D)
            return mu, D, steps + active, active & ~done, k + 1

        def cond(state: tuple) -> jax.Array:
            return state[3].any() & (state[4] < max_iter)

        r = mu0.shape[0]
        state = (mu0, C @ mu0.T, jnp.zeros(r, jnp.int32), jnp.ones(r, bool), jnp.int32(0))
        mu, _, steps, active, _ = jax.lax.while_loop(cond, body, state)
        return mu, steps, ~active

    return jax.jit(loop, static_argnames=("accelerate", "smooth"))


def _ll(wt: np.ndarray, D: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Extended ln L per replicate (R,) from the weights (N, R), the mixture densities D = C mu^T (N, R) and the
    counts mu (R, K), float64; a cluster of weight 0 adds nothing (whatever its density)."""
    return (wt * np.log(np.maximum(D, _TINY))).sum(axis=0) - mu.sum(axis=1)


def bootstrap_weights(n: int, replicates: int, seed: int) -> np.ndarray:
    """(replicates, n) counts of each of ``n`` clusters in bootstrap resamples with replacement (each row sums to
    ``n``): a multinomial draw per replicate from ``numpy.random.default_rng(seed)``."""
    if int(n) < 1 or int(replicates) < 2:
        raise ValueError(f"expected at least 1 cluster and 2 replicates, got {n} and {replicates}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(int(n), np.full(int(n), 1.0 / int(n)), size=int(replicates)).astype(np.float64)


@dataclass(frozen=True)
class BinnedCounts:
    """Expected numbers of clusters per bin. ``edges`` (B+1,) log10 M200c [Msun/h]; ``counts`` (B,) on the data;
    ``sd`` (B,) over the bootstrap replicates (None without); ``replicates`` (R, B); ``fit``: the EM record (row 0
    the data, then the replicates)."""

    edges: np.ndarray
    counts: np.ndarray
    sd: np.ndarray | None
    replicates: np.ndarray | None
    fit: EMFit


def _with_data_row(n: int, weights: Any) -> np.ndarray:
    w = np.ones((1, n))
    return w if weights is None else np.vstack([w, _weights(n, weights)])


def binned_counts(bin_like: Any, edges: Any, *, bootstrap: Any = None, tol: float = EM_TOLERANCE,
                  max_iter: int = EM_MAX_ITERATIONS, smoothing: float = EMS_SMOOTHING,
                  reference: Any = None) -> BinnedCounts:
    """The binned mass function of the clusters by EM deconvolution: expected counts N_b per bin of the extended
    likelihood sum_i ln sum_b N_b L_ib - sum_b N_b, by the smoothed EM of :func:`em` (``smoothing`` s, relative to
    ``reference``: (B,) the expected counts per unit amplitude of a smooth mass function, e.g. the within-bin shape's
    integrals :func:`shape_integrals`; None: the bins' widths, a flat one), or with ``smoothing`` 0 plain EM stopped
    by ``tol`` (see the module docstring).

    ``bin_like``: (N, B) from :func:`bin_likelihoods` (or :func:`point_bin_likelihoods`: the histogram);
    ``edges``: (B+1,) log10 M200c [Msun/h]; ``bootstrap``: (R, N) weights from :func:`bootstrap_weights`, fitted
    alongside the data (each replicate by the same rule) for the standard deviations.
    """
    Lb = np.asarray(bin_like, dtype=np.float64)
    e = _edges(edges)
    if Lb.ndim != 2 or Lb.shape[1] != len(e) - 1:
        raise ValueError(f"expected bin likelihoods of shape (N, {len(e) - 1}) for {len(e) - 1} bins, got {Lb.shape}")
    ref = np.diff(e) if reference is None else reference
    fit = em(Lb, weights=_with_data_row(len(Lb), bootstrap), tol=tol, max_iter=max_iter, smoothing=smoothing,
             reference=ref)
    reps = fit.mu[1:] if bootstrap is not None else None
    return BinnedCounts(e, fit.mu[0], None if reps is None else reps.std(axis=0, ddof=1), reps, fit)


@dataclass(frozen=True)
class AmplitudeFit:
    """A mass-function amplitude fitted with free bins outside the fit range.

    ``amplitude`` (dimensionless; 1: the model mass function exactly); ``se``: its bootstrap standard deviation
    (None without); ``replicates`` (R,); ``counts`` (B,) the expected counts per bin (A c_b inside the range, the
    nuisance counts outside); ``in_range`` (B,) which bins are tied to A; ``expected_per_unit`` (B,) c_b;
    ``fit``: the EM record (component 0: the tied bins, A times their total c).
    """

    amplitude: float
    se: float | None
    replicates: np.ndarray | None
    counts: np.ndarray
    in_range: np.ndarray
    expected_per_unit: np.ndarray
    fit: EMFit


def range_mask(edges: Any, fit_range: Sequence[float]) -> np.ndarray:
    """Which bins lie inside ``fit_range`` = (lo, hi) [log10 Msun/h] (B,); both ends must be bin edges."""
    e = _edges(edges)
    lo, hi = (float(v) for v in fit_range)
    if not lo < hi:
        raise ValueError(f"the fit range must be (lo, hi) with lo < hi, got ({lo:g}, {hi:g})")
    for end in (lo, hi):
        if not np.any(np.isclose(e, end, rtol=0, atol=1e-9)):
            raise ValueError(f"the fit range end {end:g} is not a bin edge (edges {e[0]:g} ... {e[-1]:g} in "
                             f"{BIN_WIDTH:g}-dex steps)")
    mid = 0.5 * (e[1:] + e[:-1])
    return (mid > lo) & (mid < hi)


def fit_amplitude(bin_like: Any, expected_per_unit: Any, in_range: Any, *, bootstrap: Any = None,
                  tol: float = AMPLITUDE_TOLERANCE, max_iter: int = EM_MAX_ITERATIONS) -> AmplitudeFit:
    """The amplitude A of f(M) = A V n(M) S(M) over the bins ``in_range``, the other bins free (nuisance counts).

    ``bin_like``: (N, B) bin likelihoods with the within-bin shape n S (:func:`bin_likelihoods` or
    :func:`point_bin_likelihoods` with that shape); ``expected_per_unit``: (B,) c_b = V ∫_b n S dM, the expected
    clusters per bin for A = 1 (:func:`shape_integrals` times V); ``in_range``: (B,) bool (:func:`range_mask`).
    The tied bins are one EM component with likelihood T_i = sum_b c_b L_ib / sum_b c_b and expected count
    A sum_b c_b; the maximum of the extended likelihood by accelerated EM (:func:`em` with ``accelerate``, to
    ``tol`` nats per cycle: unlike the binned counts, a parametric fit is taken to its maximum), the bootstrap
    replicates started from the data's maximum. On delta-function likelihoods (true masses) A = N_in / (V ∫ n S dM)
    over the range exactly.
    """
    Lb = np.asarray(bin_like, dtype=np.float64)
    c = np.asarray(expected_per_unit, dtype=np.float64)
    inside = np.asarray(in_range, dtype=bool)
    if Lb.ndim != 2 or c.shape != (Lb.shape[1],) or inside.shape != c.shape:
        raise ValueError(f"expected bin likelihoods (N, B), expected counts (B,) and a mask (B,), got {Lb.shape}, "
                         f"{c.shape} and {inside.shape}")
    _finite("the expected counts", c)
    if np.any(c < 0) or not c[inside].sum() > 0:
        raise ValueError("expected counts per unit amplitude must be non-negative and positive inside the range")
    total = float(c[inside].sum())
    tied = Lb[:, inside] @ c[inside] / total
    components = np.column_stack([tied, Lb[:, ~inside]])
    fit = em(components, tol=tol, max_iter=max_iter, accelerate=True)
    if bootstrap is not None:
        reps = em(components, weights=bootstrap, start=fit.mu[0], tol=tol, max_iter=max_iter, accelerate=True)
        fit = EMFit(*(np.concatenate([a, b]) for a, b in ((fit.mu, reps.mu), (fit.log_likelihood, reps.log_likelihood),
                                                            (fit.iterations, reps.iterations),
                                                            (fit.converged, reps.converged))))
    amplitudes = fit.mu[:, 0] / total
    counts = np.empty(len(c))
    counts[inside] = amplitudes[0] * c[inside]
    counts[~inside] = fit.mu[0, 1:]
    reps = amplitudes[1:] if bootstrap is not None else None
    se = None if reps is None else float(reps.std(ddof=1))
    return AmplitudeFit(float(amplitudes[0]), se, reps, counts, inside, c, fit)


def histogram(values: Any, edges: Any, *, bootstrap: Any = None) -> BinnedCounts:
    """Counts of ``values`` [log10 Msun/h] per bin (values outside the bins are not counted), with the bootstrap
    standard deviation when ``bootstrap`` (R, N) weights are given: the naive estimate when the values are the
    posterior modes, the truth when they are the true masses of a mock."""
    m = np.asarray(values, dtype=np.float64)
    e = _edges(edges)
    if m.ndim != 1:
        raise ValueError(f"expected a 1-D array of log10 masses, got shape {m.shape}")
    _finite("the masses", m)
    b = np.searchsorted(e, m, side="right") - 1
    b[m == e[-1]] = len(e) - 2
    inside = (b >= 0) & (b < len(e) - 1)
    onehot = np.zeros((len(m), len(e) - 1))
    onehot[np.flatnonzero(inside), b[inside]] = 1.0
    w = _with_data_row(len(m), bootstrap)
    counts = w @ onehot
    fit = EMFit(counts, np.full(len(w), np.nan), np.zeros(len(w), np.int64), np.ones(len(w), bool))
    reps = counts[1:] if bootstrap is not None else None
    return BinnedCounts(e, counts[0], None if reps is None else reps.std(axis=0, ddof=1), reps, fit)


def one_per_host(cluster_id: Any, los: Any) -> np.ndarray:
    """Indices (sorted) of one row per host: the row with the lowest line-of-sight index of each ``cluster_id``.

    Deterministic and blind to the data: the line-of-sight index is fixed by the observation geometry (los 0 is
    the same axis for every host), not by the cluster's mass or members, so the choice selects no cluster by what
    was observed and needs no seed; a host whose lowest line of sight was dropped (too few members) keeps its next
    one, so no host is lost. Raises ``ValueError`` for arrays of different lengths or a repeated (host, los) pair.
    """
    ids = np.asarray(cluster_id)
    lines = np.asarray(los)
    if ids.ndim != 1 or ids.shape != lines.shape:
        raise ValueError(f"expected cluster_id and los of equal 1-D shape, got {ids.shape} and {lines.shape}")
    if ids.size == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((lines, ids))
    first = np.r_[True, ids[order][1:] != ids[order][:-1]]
    repeated = ~first & np.r_[False, lines[order][1:] == lines[order][:-1]]
    if np.any(repeated):
        k = order[np.flatnonzero(repeated)[0]]
        raise ValueError(f"host {ids[k]} has line of sight {lines[k]} twice")
    return np.sort(order[first])


def pulls(estimate: Any, truth: Any, sd: Any) -> np.ndarray:
    """(estimate - truth) / sd per bin; 0 where both agree exactly with sd 0, ±inf where they differ with sd 0."""
    est, tru, s = (np.asarray(v, dtype=np.float64) for v in (estimate, truth, sd))
    diff = est - tru
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(s > 0, diff / np.where(s > 0, s, 1.0), np.where(diff == 0, 0.0, np.sign(diff) * np.inf))
    return out


def count_checks(estimate: Any, truth: Any, sd: Any, in_range: Any) -> dict[str, Any]:
    """Issue 20's acceptance of binned counts against the true counts of the same clusters over the bins
    ``in_range``: every bin within ``PULL_LIMIT`` standard deviations, and the rms of the pulls at most
    ``PULL_RMS_LIMIT``. Values and verdicts (``pass``)."""
    inside = np.asarray(in_range, dtype=bool)
    p = pulls(estimate, truth, sd)[inside]
    rms = float(np.sqrt(np.mean(p**2))) if p.size else float("nan")
    worst = int(np.argmax(np.abs(p))) if p.size else 0
    return {
        "pulls": [float(v) for v in p],
        "every_bin_within_2sd": {"pass": bool(p.size and np.all(np.abs(p) <= PULL_LIMIT)), "limit": PULL_LIMIT,
                                 "max_abs_pull": float(np.abs(p[worst])) if p.size else None,
                                 "bins_outside": int(np.sum(np.abs(p) > PULL_LIMIT))},
        "pull_rms_at_most_1.5": {"pass": bool(rms <= PULL_RMS_LIMIT), "limit": PULL_RMS_LIMIT, "value": rms},
    }


def amplitude_check(hier: float, hier_se: float | None, true: float) -> dict[str, Any]:
    """Issue 20's acceptance of the amplitude: |A_hier - A_true| <= ``AMPLITUDE_SE_LIMIT`` standard errors of A_hier
    (its bootstrap standard deviation). Values and a verdict."""
    diff = float(hier - true)
    ok = hier_se is not None and hier_se > 0 and abs(diff) <= AMPLITUDE_SE_LIMIT * hier_se
    return {"pass": bool(ok), "difference": diff, "se": hier_se, "limit_se": AMPLITUDE_SE_LIMIT,
            "difference_in_se": None if not hier_se else diff / hier_se}


def step_selection(edges: Sequence[float], fraction: Sequence[float]) -> Shape:
    """The selection S(M) of a table of kept fractions: ``fraction[k]`` for edges[k] <= M < edges[k+1] (log10
    M200c [Msun/h]), 0 below the first edge and 1 from the last; a single edge and no fraction is a plain mass cut
    (what a run's catalog records when no host was subsampled, :func:`catalogs.stage.catalog_sample`). Raises
    ``ValueError`` for a table that is not one fraction in [0, 1] per bin between increasing finite edges."""
    e = np.atleast_1d(np.asarray(edges, dtype=np.float64))
    e = _edges(e) if len(e) != 1 else e
    if e.ndim != 1 or len(e) < 1:
        raise ValueError(f"the selection edges must be 1-D with at least 1 value, got shape {e.shape}")
    _finite("the selection edges", e)
    f = np.asarray(fraction, dtype=np.float64)
    if f.shape != (len(e) - 1,):
        raise ValueError(f"expected {len(e) - 1} fractions for {len(e)} edges, got {f.shape}")
    _finite("the selection fractions", f)
    if np.any((f < 0) | (f > 1)):
        raise ValueError("selection fractions must lie in [0, 1]")
    table = np.concatenate([[0.0], f, [1.0]])

    def selection(log10_m: np.ndarray) -> np.ndarray:
        return table[np.searchsorted(e, np.asarray(log10_m, dtype=np.float64), side="right")]

    return selection
