"""Mock observations of every host along every line of sight, out of core.

1. Hosts: distinct halos (``upid == -1``) with M200c above the cut — small, held in memory.
2. One streaming pass over the galaxy catalog (dask partitions): galaxies above the stellar-mass cut get their
   redshift-space coordinate along each line of sight and are appended to one bucket file per
   (line of sight, region) — a column of the box padded by the aperture (:mod:`features.regions`) — and, for the
   optional random directions, to one bucket per direction holding the galaxies near the massive hosts.
3. Each bucket is an independent task: a KD-tree over its galaxies, the cylinder search of its hosts
   (:mod:`features.cylinder`), the features (:mod:`features.definitions`). No task holds the whole catalog.

Each cylinder is centred where a real cluster list would centre it (:mod:`features.centring`; ``none``: the halo's
own position and velocity): its axis displaced in the plane of the sky and its velocity zero point shifted, so
the search, the members' r_proj and v_los and the features are all measured from that centre. A host's region
(its column) is the one of its displaced axis, so the aperture around it stays inside the padded column.

The result is a pure function of (catalogs, configuration): regions are processed and concatenated in a fixed
order, then sorted by (cluster_id, los).
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from features.balance import balanced_hosts, every_host
from features.centring import centre_offsets, perpendicular_basis
from features.config import check_geometry
from features.cylinder import (
    CylinderSpec,
    ObservationSpec,
    redshift_space,
    search_axis,
    search_direction,
)
from features.definitions import FEATURES, compute_features
from features.members import Members
from features.regions import RegionGrid
from features.sky import absolute_limit
from ingest.catalog import Catalog
from pipeline.errors import ClusterMassError, ConfigError, InputError, OutputError, no_space
from pipeline.snapshot import Snapshot

AXIS_RECORD = np.dtype([("galaxy_id", "<i8"), ("upid", "<i8"), ("u", "<f4"), ("v", "<f4"), ("s", "<f4"),
                        ("log10_mstar", "<f4")])
DIRECTION_RECORD = np.dtype([("galaxy_id", "<i8"), ("upid", "<i8"), ("s", "<f4", (3,)), ("log10_mstar", "<f4")])

#: the default mock observations (every default of :class:`ObservationSpec`: Ho et al. (2019)'s cylinder, centred
#: with the published centring errors of :mod:`features.centring`)
DEFAULT_SPEC = ObservationSpec()
HOST_COLUMNS = ("halo_id", "upid", "m200c", "mvir", "x", "y", "z", "vx", "vy", "vz")
GALAXY_COLUMNS = ("galaxy_id", "upid", "x", "y", "z", "vx", "vy", "vz", "obs_sm")


@dataclass(frozen=True)
class Observations:
    """The feature table (one row per kept observation, sorted by cluster_id, los) and its member arrays."""

    table: pd.DataFrame
    members: Members
    dropped: dict[str, int]
    n_hosts: int
    config: ObservationSpec
    snapshot: Snapshot
    selection: dict = field(default_factory=every_host)


def select_hosts(halos: Catalog, log10_m200c_min: float) -> pd.DataFrame:
    """Distinct halos (upid = -1) with log10 M200c >= ``log10_m200c_min``, sorted by halo_id (small: in memory)."""
    cols = [c for c in HOST_COLUMNS if c in halos.frame.columns]
    frame = halos.frame[cols]
    hosts = frame[(frame["upid"] == -1) & (frame["m200c"] >= 10.0**log10_m200c_min)].compute()
    if "mvir" not in hosts:
        hosts["mvir"] = np.nan
    if hosts.empty:
        raise InputError(
            halos.path,
            f"empty selection: no distinct halo (upid = -1) has M200c >= 10^{log10_m200c_min:g} Msun/h; "
            "expected at least one host (lower the host mass cut or use a larger box)",
        )
    return hosts.sort_values("halo_id", kind="stable").reset_index(drop=True)


def observed_hosts(halos: Catalog, config: ObservationSpec) -> tuple[pd.DataFrame, dict]:
    """The hosts a set of observations covers: :func:`select_hosts` above the cut, mass-balanced by
    ``config.balance`` (:func:`features.balance.balanced_hosts`), and the selection function of that sample."""
    cut = config.cylinder.host_log10_m200c_min
    hosts = select_hosts(halos, cut)
    keep, selection = balanced_hosts(np.log10(hosts["m200c"].to_numpy(np.float64)), hosts["halo_id"].to_numpy(),
                                     config.balance, log10_m_min=cut)
    return hosts[keep].reset_index(drop=True), selection


@dataclass(frozen=True)
class RegionJob:
    """One independent task of the features stage.

    ``los`` 0-2 is a box axis and ``region`` a column of the box (:class:`RegionGrid`); ``los`` >= 3 is the
    random direction ``los - 3`` (``region`` = -1). ``bucket``: the bucket file's name in the plan directory.
    """

    los: int
    region: int
    bucket: str

    def to_dict(self) -> dict:
        return {"los": self.los, "region": self.region, "bucket": self.bucket}


@dataclass(frozen=True)
class ObservationPlan:
    """The hosts, the geometry and the region jobs of one set of mock observations; buckets in ``directory``.

    ``selection``: the kept fraction of hosts per mass bin of the mass-balanced sample
    (:func:`features.balance.balanced_hosts`; empty lists: every host above the cut kept)."""

    hosts: pd.DataFrame
    config: ObservationSpec
    snapshot: Snapshot
    jobs: tuple[RegionJob, ...]
    directory: Path
    selection: dict = field(default_factory=every_host)

    @property
    def grid(self) -> RegionGrid:
        return RegionGrid(self.snapshot.box_size, self.config.regions_per_side, self.config.cylinder.r_aperture)

    def extra_hosts(self) -> pd.DataFrame:
        """Hosts observed along the random directions (none without directions)."""
        if not len(self.config.los.directions()):
            return self.hosts.iloc[:0]
        logm = np.log10(self.hosts["m200c"].to_numpy())
        return self.hosts[logm >= self.config.los.extra_log10_m200c_min]

    def axis_centres(self, axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Where every host's cylinder along box axis ``axis`` is centred: its projected position (n, 2) on the two
        other axes (in [0, box)) and its redshift-space coordinate along ``axis`` (n,), comoving Mpc/h — the halo's,
        displaced by the observation's centring error (:func:`features.centring.centre_offsets`)."""
        return axis_centres(self.hosts, axis, self.config, self.snapshot)

    def direction_centres(self, direction: int) -> np.ndarray:
        """Redshift-space positions (m, 3) of the cylinders of :meth:`extra_hosts` along random direction
        ``direction`` (los ``3 + direction``), centring error included, comoving Mpc/h."""
        return direction_centres(self.extra_hosts(), direction, self.config, self.snapshot)


def axis_centres(hosts: pd.DataFrame, axis: int, config: ObservationSpec, snap: Snapshot
                 ) -> tuple[np.ndarray, np.ndarray]:
    """See :meth:`ObservationPlan.axis_centres`."""
    i, j = [a for a in range(3) if a != axis]
    uv = hosts[["xyz"[i], "xyz"[j]]].to_numpy(np.float64)
    velocity = hosts["v" + "xyz"[axis]].to_numpy()
    if config.centring.enabled:
        off = centre_offsets(config.centring, hosts["halo_id"].to_numpy(), axis, hosts["m200c"].to_numpy(), snap)
        uv = _in_box(uv + off.projected(), snap.box_size)
        velocity = velocity + off.dv
    return uv, redshift_space(hosts["xyz"[axis]].to_numpy(), velocity, snap.hubble_per_comoving(), snap.box_size)


def direction_centres(hosts: pd.DataFrame, direction: int, config: ObservationSpec, snap: Snapshot) -> np.ndarray:
    """See :meth:`ObservationPlan.direction_centres`."""
    n_hat = config.los.directions()[direction]
    pos = hosts[["x", "y", "z"]].to_numpy()
    vel = hosts[["vx", "vy", "vz"]].to_numpy()
    if config.centring.enabled:
        off = centre_offsets(config.centring, hosts["halo_id"].to_numpy(), 3 + direction, hosts["m200c"].to_numpy(),
                             snap)
        e1, e2 = perpendicular_basis(n_hat)
        pos = pos + off.projected() @ np.vstack([e1, e2])
        vel = vel + np.outer(off.dv, n_hat)
    return _direction_s(pos, vel, n_hat, snap.hubble_per_comoving(), snap.box_size)


def _in_box(x: np.ndarray, box: float) -> np.ndarray:
    """Periodic coordinates wrapped into [0, box)."""
    s = np.mod(x, box)
    return np.where(s >= box, 0.0, s)


def plan_observations(halos: Catalog, galaxies: Catalog, config: ObservationSpec, directory: str | Path, *,
                      host_ids: Sequence[int] | np.ndarray | None = None) -> ObservationPlan:
    """Select the hosts and stream the galaxy catalog once into bucket files under ``directory``.

    ``host_ids``: observe only these hosts (halo ids; e.g. a model's held-out hosts observed again with another
    centring); each observation is the one the whole set would give, since every centre is a function of (seed,
    host, line of sight) alone. Buckets already in ``directory`` are replaced. Returns the plan;
    :func:`observe_region` runs one job of it.
    """
    snap = halos.snapshot
    if not snap.agrees_with(galaxies.snapshot):
        raise InputError(galaxies.path, f"snapshot {galaxies.snapshot.to_dict()} differs from the halo catalog's "
                                        f"{snap.to_dict()}")
    spec = config.cylinder
    try:  # the cylinder and the region grid against the box, naming the [observe] key
        check_geometry(config, snap)
    except ConfigError as exc:
        raise exc.located("[observe]") from None
    hosts, selection = observed_hosts(halos, config)
    if host_ids is not None:
        hosts = hosts[hosts["halo_id"].isin(np.asarray(host_ids, dtype=np.int64))].reset_index(drop=True)
        if hosts.empty:
            raise InputError(halos.path, "empty selection: none of the requested hosts is a distinct halo with "
                                         f"M200c >= 10^{spec.host_log10_m200c_min:g} Msun/h in this catalog")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for f in directory.glob("bucket-*.bin"):
        f.unlink()
    provisional = ObservationPlan(hosts, config, snap, (), directory, selection)
    grid = provisional.grid
    directions = config.los.directions()
    extra_hosts = provisional.extra_hosts()
    hubble = snap.hubble_per_comoving()
    depth = spec.half_depth(snap)
    try:
        _bucket_galaxies(galaxies, spec, config.los.axes, grid, directions,
                         [provisional.direction_centres(d) for d in range(len(directions))] if len(extra_hosts)
                         else [], hubble, math.hypot(spec.r_aperture, depth), directory)
    except BaseException:  # half-filled buckets are of no use to anyone (a full disk: free the space now)
        remove_buckets(directory)
        raise
    jobs = []
    for axis in config.los.axes:
        home = grid.home(provisional.axis_centres(axis)[0])
        for region in np.unique(home):
            jobs.append(RegionJob(int(axis), int(region), _bucket_path(directory, axis, int(region)).name))
    if len(extra_hosts):
        for d in range(len(directions)):
            jobs.append(RegionJob(3 + d, -1, _direction_path(directory, d).name))
    for job in jobs:  # a bucket with no galaxies still exists, so a missing bucket always means a deleted one
        (directory / job.bucket).touch()
    return ObservationPlan(hosts, config, snap, tuple(jobs), directory, selection)


def observe_region(plan: ObservationPlan, job: RegionJob) -> tuple[pd.DataFrame, Members]:
    """The observations (unfiltered feature rows) and members of the hosts of one job: pure given its bucket."""
    spec, snap = plan.config.cylinder, plan.snapshot
    hubble = snap.hubble_per_comoving()
    depth = spec.half_depth(snap)
    path = plan.directory / job.bucket
    if not path.exists():
        raise InputError(path, "bucket file missing: expected the galaxies of this region, written by "
                               "plan_observations (re-run the plan)")
    if job.los < 3:
        grid = plan.grid
        hosts_uv, hosts_s = plan.axis_centres(job.los)
        rows = np.flatnonzero(grid.home(hosts_uv) == job.region)
        hosts = plan.hosts.iloc[rows]
        return _observe_axis_region(path, hosts, grid.to_local(hosts_uv[rows], job.region), hosts_s[rows], job.los,
                                    grid, spec, depth, hubble, snap.box_size)
    extra = plan.extra_hosts()
    n_hat = plan.config.los.directions()[job.los - 3]
    hs = plan.direction_centres(job.los - 3)
    return _observe_direction(path, extra, hs, n_hat, job.los, spec, depth, hubble, snap.box_size)


def combine_observations(plan: ObservationPlan, results: Sequence[tuple[pd.DataFrame, Members]]) -> Observations:
    """Concatenate the jobs' results, sort by (cluster_id, los) and drop observations below ``min_members``."""
    spec = plan.config.cylinder
    tables = [r[0] for r in results]
    members = Members.concat([r[1] for r in results])
    table = pd.concat(tables, ignore_index=True) if tables else _empty_table()
    order = np.lexsort((table["los"].to_numpy(), table["cluster_id"].to_numpy()))
    table = table.iloc[order].reset_index(drop=True)
    members = members.take(order)
    n_before = len(table)
    keep = table["n_members"].to_numpy() >= spec.min_members
    dropped = {f"los_{k}": int(((~keep) & (table["los"].to_numpy() == k)).sum())
               for k in sorted(set(table["los"].tolist()))}
    table = table.loc[keep].reset_index(drop=True)
    members = members.take(keep)
    dropped["total"] = int(n_before - len(table))
    if table.empty:
        raise ClusterMassError(
            f"empty selection: all {n_before} observations of {len(plan.hosts)} hosts have fewer than "
            f"{spec.min_members} members (galaxies with log10 M* >= {spec.log10_mstar_min:g} in "
            f"{spec.r_aperture:g} Mpc/h, |v_los| < {spec.v_cut:g} km/s); expected at least one"
        )
    return Observations(table, members, dropped, len(plan.hosts), plan.config, plan.snapshot, plan.selection)


def remove_buckets(directory: str | Path) -> None:
    """Delete a plan's bucket files (and the directory, if that leaves it empty)."""
    directory = Path(directory)
    for f in directory.glob("bucket-*.bin"):
        f.unlink()
    if directory.exists() and not any(directory.iterdir()):
        directory.rmdir()


def make_observations(
    halos: Catalog,
    galaxies: Catalog,
    config: ObservationSpec = DEFAULT_SPEC,
    *,
    scratch: str | Path | None = None,
    scheduler: str = "threads",
    num_workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    host_ids: Sequence[int] | np.ndarray | None = None,
) -> Observations:
    """Mock observations and features for every host and line of sight, in one call (``host_ids``: of these
    hosts only, see :func:`plan_observations`).

    ``scratch``: directory for the temporary galaxy buckets (removed at the end; default: a temporary directory).
    ``scheduler``/``num_workers``: how the region jobs run (dask's local schedulers). The Prefect flow runs the
    same three steps (:func:`plan_observations`, :func:`observe_region`, :func:`combine_observations`) as tasks.
    """
    owned = scratch is None
    scratch_dir = Path(tempfile.mkdtemp(prefix="clustermass-buckets-")) if owned else Path(scratch)
    try:
        plan = plan_observations(halos, galaxies, config, scratch_dir, host_ids=host_ids)
        tasks = [dask.delayed(observe_region)(plan, job) for job in plan.jobs]
        results = _run(tasks, scheduler, num_workers, progress)
    finally:
        if owned:
            shutil.rmtree(scratch_dir, ignore_errors=True)
        else:
            remove_buckets(scratch_dir)
    return combine_observations(plan, results)


# -- streaming pass ------------------------------------------------------------------------------------------------
def _bucket_galaxies(galaxies: Catalog, spec: CylinderSpec, axes: Sequence[int], grid: RegionGrid,
                     directions: np.ndarray, direction_centres: list[np.ndarray], hubble: float, reach: float,
                     scratch: Path) -> None:
    box = galaxies.snapshot.box_size
    mag_r_max = None
    columns = list(GALAXY_COLUMNS)
    if spec.r_limit is not None:
        if "mag_r" not in galaxies.frame.columns:
            raise InputError(galaxies.path, f"[observe] r_limit = {spec.r_limit} needs an r-band absolute magnitude "
                                            "per galaxy; this catalog has none (the synthetic box's HDF5 files do)",
                             column="mag_r")
        snap = galaxies.snapshot
        mag_r_max = absolute_limit(spec.r_limit, snap.redshift, snap.cosmology)
        columns.append("mag_r")
    frame = galaxies.frame[columns]
    # the massive hosts' cylinder centres along each random direction (none without such hosts)
    host_trees = [cKDTree(centres, boxsize=box) for centres in direction_centres]
    parts = frame.to_delayed()
    step = 2
    for start in range(0, len(parts), step):
        chunk = dask.compute(*[dask.delayed(_bucketize)(p, spec.log10_mstar_min, mag_r_max, tuple(axes), grid,
                                                        directions, host_trees, hubble, reach, box)
                               for p in parts[start:start + step]], scheduler="threads")
        for buckets in chunk:
            for (kind, key), records in buckets.items():
                path = _bucket_path(scratch, *key) if kind == "axis" else _direction_path(scratch, key)
                # opened per write, not held: 3 n^2 buckets would exceed the open-file limit for n >= 19
                try:
                    with open(path, "ab") as fh:
                        fh.write(records.tobytes())
                except OSError as exc:
                    if no_space(exc):
                        raise OutputError(path, "no space left on device (writing the galaxy buckets)") from exc
                    raise


def _bucketize(part: pd.DataFrame, log10_mstar_min: float, mag_r_max: float | None, axes: tuple[int, ...],
               grid: RegionGrid, directions: np.ndarray, host_trees: list, hubble: float, reach: float,
               box: float) -> dict:
    sm = part["obs_sm"].to_numpy()
    observed = sm >= 10.0**log10_mstar_min
    if mag_r_max is not None:  # a magnitude-limited survey at the snapshot's redshift
        observed &= part["mag_r"].to_numpy() <= mag_r_max
    sel = np.flatnonzero(observed)
    out: dict = {}
    if not len(sel):
        return out
    gid = part["galaxy_id"].to_numpy()[sel]
    upid = part["upid"].to_numpy()[sel]
    logm = np.log10(sm[sel].astype(np.float64)).astype(np.float32)
    pos = part[["x", "y", "z"]].to_numpy(np.float64)[sel]
    vel = part[["vx", "vy", "vz"]].to_numpy(np.float64)[sel]
    for axis in axes:
        i, j = [a for a in range(3) if a != axis]
        s = redshift_space(pos[:, axis], vel[:, axis], hubble, box)
        idx, region = grid.assign(pos[:, [i, j]])
        order = np.argsort(region, kind="stable")
        idx, region = idx[order], region[order]
        bounds = np.flatnonzero(np.diff(region)) + 1
        for chunk_idx in np.split(np.arange(len(idx)), bounds):
            if not len(chunk_idx):
                continue
            rows = idx[chunk_idx]
            rec = np.empty(len(rows), dtype=AXIS_RECORD)
            rec["galaxy_id"], rec["upid"] = gid[rows], upid[rows]
            rec["u"], rec["v"], rec["s"] = pos[rows, i], pos[rows, j], s[rows]
            rec["log10_mstar"] = logm[rows]
            out[("axis", (axis, int(region[chunk_idx[0]])))] = rec
    for d, (n_hat, tree) in enumerate(zip(directions, host_trees, strict=False)):
        s3 = _direction_s(pos, vel, n_hat, hubble, box)
        dist, _ = tree.query(s3, k=1, distance_upper_bound=reach * (1 + 1e-6))
        near = np.flatnonzero(np.isfinite(dist))
        if len(near):
            rec = np.empty(len(near), dtype=DIRECTION_RECORD)
            rec["galaxy_id"], rec["upid"] = gid[near], upid[near]
            rec["s"], rec["log10_mstar"] = s3[near], logm[near]
            out[("direction", d)] = rec
    return out


# -- region tasks --------------------------------------------------------------------------------------------------
def _observe_axis_region(path: Path, hosts: pd.DataFrame, host_uv: np.ndarray, host_s: np.ndarray, axis: int,
                         grid: RegionGrid, spec: CylinderSpec, depth: float, hubble: float,
                         box: float) -> tuple[pd.DataFrame, Members]:
    rec = np.fromfile(path, dtype=AXIS_RECORD)
    region = int(path.stem.rsplit("-", 1)[1])
    gal_uv = grid.to_local(np.column_stack([rec["u"], rec["v"]]), region)
    period = grid.local_period
    m = search_axis(host_uv, host_s, gal_uv, rec["s"].astype(np.float64), r_aperture=spec.r_aperture,
                    half_depth=depth, hubble=hubble, period_xy=(period, period), period_s=box)
    return _assemble(hosts, axis, m.offsets, m.r_proj, m.v_los, rec[m.index], spec)


def _observe_direction(path: Path, hosts: pd.DataFrame, host_s: np.ndarray, n_hat: np.ndarray, los: int,
                       spec: CylinderSpec, depth: float, hubble: float,
                       box: float) -> tuple[pd.DataFrame, Members]:
    rec = np.fromfile(path, dtype=DIRECTION_RECORD)
    m = search_direction(host_s, rec["s"].astype(np.float64), n_hat, r_aperture=spec.r_aperture,
                         half_depth=depth, hubble=hubble, box_size=box)
    return _assemble(hosts, los, m.offsets, m.r_proj, m.v_los, rec[m.index], spec)


def _assemble(hosts: pd.DataFrame, los: int, offsets: np.ndarray, r_proj: np.ndarray, v_los: np.ndarray,
              rec: np.ndarray, spec: CylinderSpec) -> tuple[pd.DataFrame, Members]:
    host_id = hosts["halo_id"].to_numpy()
    counts = np.diff(offsets)
    owner = np.repeat(host_id, counts)
    true_member = (rec["galaxy_id"] == owner) | (rec["upid"] == owner)
    members = Members(offsets, r_proj.astype(np.float32), v_los.astype(np.float32),
                      rec["log10_mstar"].astype(np.float32), rec["galaxy_id"].astype(np.int64), true_member)
    feats = compute_features(offsets, r_proj, v_los, rec["log10_mstar"], r_aperture=spec.r_aperture)
    m200c = hosts["m200c"].to_numpy(np.float64)
    mvir = hosts["mvir"].to_numpy(np.float64)
    row = np.repeat(np.arange(len(hosts)), counts)
    n_true = np.bincount(row, weights=true_member, minlength=len(hosts))
    table = pd.DataFrame({
        "cluster_id": host_id.astype(np.int64),
        "los": np.full(len(hosts), los, dtype=np.int16),
        "log10_m200c_true": np.log10(m200c).astype(np.float32),
        "log10_mvir_true": np.log10(np.where(mvir > 0, mvir, np.nan)).astype(np.float32),
        "n_true_members": n_true.astype(np.int32),
        "sigma_v_true_std": _true_member_dispersion(row, v_los, true_member, n_true),
        **{name: np.asarray(values) for name, values in feats.items()},
    })
    return table, members


def _true_member_dispersion(row: np.ndarray, v_los: np.ndarray, true_member: np.ndarray,
                            n_true: np.ndarray) -> np.ndarray:
    """Standard deviation (ddof = 1) of v_los [km/s] over each observation's true members (Ho et al. 2019's "pure"
    dispersion; truth, never a model input); NaN below two true members."""
    v = np.where(true_member, np.asarray(v_los, dtype=np.float64), 0.0)
    s1 = np.bincount(row, weights=v, minlength=len(n_true))
    s2 = np.bincount(row, weights=v * v, minlength=len(n_true))
    with np.errstate(invalid="ignore", divide="ignore"):
        var = (s2 - s1 * s1 / n_true) / (n_true - 1.0)
    return np.where(n_true >= 2, np.sqrt(np.maximum(var, 0.0)), np.nan).astype(np.float32)


def _run(tasks: list, scheduler: str, num_workers: int | None, progress: Callable[[int, int], None] | None) -> list:
    if not tasks:
        return []
    out = []
    batch = max(1, num_workers or 2) * 2
    for start in range(0, len(tasks), batch):
        out.extend(dask.compute(*tasks[start:start + batch], scheduler=scheduler, num_workers=num_workers))
        if progress is not None:
            progress(min(start + batch, len(tasks)), len(tasks))
    return out


def _direction_s(pos: np.ndarray, vel: np.ndarray, n_hat: np.ndarray, hubble: float, box: float) -> np.ndarray:
    s = np.mod(pos + np.outer(vel @ n_hat / hubble, n_hat), box)
    return np.where(s >= box, 0.0, s)


def _bucket_path(scratch: Path, axis: int, region: int) -> Path:
    return scratch / f"bucket-axis{axis}-{region}.bin"


def _direction_path(scratch: Path, d: int) -> Path:
    return scratch / f"bucket-dir{d}.bin"


def _empty_table() -> pd.DataFrame:
    cols = ["cluster_id", "los", "log10_m200c_true", "log10_mvir_true", "n_true_members", "sigma_v_true_std",
            *[f.name for f in FEATURES]]
    return pd.DataFrame({c: [] for c in cols})
