"""Centring errors of mock observations: the centre a real cluster list gives, in projection and in velocity.

Real lists centre a cluster on a galaxy (redMaPPer's central galaxy, a BCG) and take its redshift from it, where
our mocks would otherwise centre every cylinder on the true halo position and velocity. With centring on, each
observation (host, line of sight) gets its own centre, and the cylinder search, every member's r_proj and v_los,
and so every feature are measured from it (:mod:`features.observe`).

Position — Zhang et al. (2019, MNRAS 487, 2578, arXiv:1901.07119; DES Y1 redMaPPer centres against X-ray peaks):
a fraction ``f_cen`` = 0.75 +- 0.08 of clusters is well centred (abstract), and the offset of the others,
x = R_mis / R_lambda in projection, follows the Gamma distribution P(x) = x / tau^2 exp(-x / tau) (their fiducial
"exponential + Gamma" model, as their analysis code writes it: github.com/yyzhang/center_modeling,
``offset_model_fitting/fiducial_exp_gamma1_model.py``, ``pr_mis``), with tau = 0.18 — the fiducial value as this
project's issue 19 quotes it: the stored text we could read confirms f_cen and the Gamma form, not tau itself.
Their model gives the well-centred clusters a narrow exponential (scale sigma_0, fitted below 0.1 R_lambda: tens
of kpc, under the 1.6 Mpc/h aperture's resolution); here they get no offset. The miscentred direction is uniform
in angle. Zhang et al.'s code normalises by R_lambda = (lambda / 100)^0.2 / 0.7 Mpc physical at h = 0.7, i.e.
Rykoff et al. (2014, ApJ 785, 104)'s R_lambda = 1.0 h^-1 Mpc (lambda / 100)^0.2, physical; comoving it is
(1 + z) times that. The richness is the host's mean at its mass, from the SDSS redMaPPer weak-lensing calibration
of Simet et al. (2017, MNRAS 466, 3103): log10 <M200m | lambda> = 14.344 + 1.33 log10(lambda / 40) [h^-1 Msun],
inverted at the host's M200m (NFW with the Duffy et al. 2008 median concentration, :mod:`ingest.synth.nfw`).
Simet et al. calibrated lambda >= 20 (M200m >~ 1e14 h^-1 Msun); below, the relation is extrapolated, which moves
R_lambda little (R_lambda ~ M^0.15). A 1e14 Msun/h host at z = 0.117 has lambda ~ 27 and R_lambda ~ 0.86 comoving
Mpc/h (mean miscentred offset 2 tau R_lambda ~ 0.31 Mpc/h); a 1e15 one, lambda ~ 150 and 1.21 Mpc/h (0.44).

Velocity — Lauer et al. (2014, ApJ 797, 82, arXiv:1407.2260; 433 BCGs of Abell clusters at z <= 0.08): the BCG's
peculiar velocity in the cluster, normalised by the cluster's dispersion, |dV| / sigma_c, follows an exponential
distribution with scale 0.39 +- 0.03 (abstract). The centre's velocity is the halo's plus dV, drawn from it with a
random sign, sigma_c the host's mean 1-D dark-matter dispersion of Evrard et al. (2008) at its M200c
(:func:`ingest.synth.velocity.evrard08_sigma_dm`). Lauer et al.'s BCGs include the ones far from the X-ray centre
(~15% beyond 100 kpc), so position and velocity errors are drawn independently of each other.

Determinism: every draw is a counter-based hash (splitmix64) of (seed, host id, line of sight, stream), so an
observation's centre does not depend on the region, the task, the order or the subset of hosts it is computed
with. Units: comoving Mpc/h, km/s (physical peculiar), masses Msun/h.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ingest.synth.nfw import MassConversion, duffy08_concentration
from ingest.synth.velocity import evrard08_sigma_dm
from pipeline.errors import ConfigError
from pipeline.snapshot import Snapshot

#: the published centring model (position: Zhang et al. 2019; velocity: Lauer et al. 2014), and no error at all
CENTRING_MODELS = ("zhang19-lauer14", "none")
#: Zhang et al. (2019): fraction of redMaPPer clusters well centred (abstract: 75 +- 8 per cent)
ZHANG19_CENTRED_FRACTION = 0.75
#: Zhang et al. (2019): scale of the miscentred offsets' Gamma distribution, in units of R_lambda
ZHANG19_TAU = 0.18
#: Rykoff et al. (2014): R_lambda = R_LAMBDA_0 (lambda / 100)^R_LAMBDA_SLOPE, physical h^-1 Mpc
R_LAMBDA_0, R_LAMBDA_SLOPE = 1.0, 0.2
#: Simet et al. (2017): log10 M200m [h^-1 Msun] at lambda = 40, and the power-law index of M200m in lambda
SIMET17_LOG10_M40, SIMET17_SLOPE = 14.344, 1.33
#: Lauer et al. (2014): scale of the exponential distribution of |BCG peculiar velocity| / cluster dispersion
LAUER14_VELOCITY_SCALE = 0.39

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class CentringSpec:
    """Where a mock observation's cylinder is centred.

    model : ``"zhang19-lauer14"`` (default: the published centring errors of this module's docstring) or ``"none"``
        (the true halo position and velocity, as before issue 19)
    seed : the seed of the draws, >= 0 (each observation's draw is a hash of it, the host id and the line of sight)
    """

    model: str = CENTRING_MODELS[0]
    seed: int = 0

    def __post_init__(self) -> None:
        if self.model not in CENTRING_MODELS:
            raise ConfigError(f"centring: expected one of {list(CENTRING_MODELS)}, got {self.model!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"centring: seed must be an integer >= 0, got {self.seed!r}")

    @property
    def enabled(self) -> bool:
        """Whether the centre differs from the halo's."""
        return self.model != "none"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CentreOffsets:
    """The centring error of each observation.

    r_mis : projected offset of the cylinder's axis from the halo centre, comoving Mpc/h (0 when well centred)
    phi : its direction in the plane of the sky, radians (from the first projected axis towards the second)
    dv : the centre's line-of-sight velocity minus the halo's, km/s
    """

    r_mis: np.ndarray
    phi: np.ndarray
    dv: np.ndarray

    def projected(self) -> np.ndarray:
        """The offsets along the two projected axes, (n, 2), comoving Mpc/h."""
        return np.column_stack([self.r_mis * np.cos(self.phi), self.r_mis * np.sin(self.phi)])


def hash_uniforms(seed: int, host_id: np.ndarray, los: int | np.ndarray, stream: int) -> np.ndarray:
    """Uniform numbers in (0, 1), one per host: splitmix64 of (seed, stream, host id, line of sight).

    A pure function of its arguments, element by element: the same (seed, host, los, stream) gives the same number
    whatever else is in the array.
    """
    ids = np.ascontiguousarray(np.asarray(host_id, dtype=np.int64)).view(np.uint64)
    los_u = np.broadcast_to(np.asarray(los, dtype=np.int64), ids.shape).astype(np.int64).view(np.uint64)
    key = _splitmix(np.full(ids.shape, (int(seed) * 0x100000001B3 + int(stream)) & _MASK64, dtype=np.uint64))
    key = _splitmix(key ^ ids)
    key = _splitmix(key ^ los_u)
    return ((key >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def _splitmix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of x + golden gamma (uint64 arithmetic wraps)."""
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def richness(m200c: np.ndarray, snapshot: Snapshot) -> np.ndarray:
    """redMaPPer richness lambda of hosts of ``m200c`` [Msun/h]: Simet et al. (2017)'s mass-richness relation
    inverted at M200m (NFW, Duffy et al. 2008 median c200c at the snapshot's redshift)."""
    m = np.asarray(m200c, dtype=np.float64)
    z = snapshot.redshift
    m200m = MassConversion.build(snapshot.cosmology, z, ("200m",), n_grid=401).mass(
        m, duffy08_concentration(m, z), "200m")
    return 40.0 * 10.0 ** ((np.log10(m200m) - SIMET17_LOG10_M40) / SIMET17_SLOPE)


def r_lambda(lam: np.ndarray, redshift: float) -> np.ndarray:
    """Rykoff et al. (2014)'s richness radius 1.0 h^-1 Mpc (lambda / 100)^0.2 (physical), as comoving Mpc/h."""
    return R_LAMBDA_0 * (np.asarray(lam, dtype=np.float64) / 100.0) ** R_LAMBDA_SLOPE * (1.0 + redshift)


def centre_offsets(spec: CentringSpec, host_id: np.ndarray, los: int, m200c: np.ndarray,
                   snapshot: Snapshot) -> CentreOffsets:
    """The centring error of every host ``host_id`` (with ``m200c`` in Msun/h) observed along line of sight
    ``los``: a projected offset (Zhang et al. 2019) and a velocity offset (Lauer et al. 2014); zero for ``none``."""
    host_id = np.asarray(host_id, dtype=np.int64)
    n = len(host_id)
    if not spec.enabled:
        zero = np.zeros(n)
        return CentreOffsets(zero, zero.copy(), zero.copy())
    u = [hash_uniforms(spec.seed, host_id, los, stream) for stream in range(6)]
    m = np.asarray(m200c, dtype=np.float64)
    z = snapshot.redshift
    # Gamma(2, tau) is the sum of two exponentials of scale tau
    x = -ZHANG19_TAU * (np.log(u[1]) + np.log(u[2]))
    r_mis = np.where(u[0] < ZHANG19_CENTRED_FRACTION, 0.0, x * r_lambda(richness(m, snapshot), z))
    phi = 2.0 * math.pi * u[3]
    sigma = evrard08_sigma_dm(m, snapshot.cosmology, z)
    dv = np.where(u[5] < 0.5, -1.0, 1.0) * (-LAUER14_VELOCITY_SCALE * np.log(u[4])) * sigma
    return CentreOffsets(r_mis, phi, dv)


def perpendicular_basis(n_hat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors (e1, e2) completing the unit vector ``n_hat`` to a right-handed orthonormal basis: the
    plane of the sky of a line of sight along ``n_hat``."""
    n = np.asarray(n_hat, dtype=np.float64)
    helper = np.eye(3)[int(np.argmin(np.abs(n)))]
    e1 = np.cross(n, helper)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(n, e1)
