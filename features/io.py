"""Writing and reading mock observations.

``DIR/observations/part-NNNNN.parquet``: the feature table, partitioned so dask reads it in parallel; units and
the configuration in the Parquet schema metadata and in ``DIR/observations/_meta.json``.
``DIR/members.h5``: the ragged member arrays (``offsets`` plus one dataset per member column with a ``unit``
attribute) and the (cluster_id, los) of every row, in the table's row order.
Both appear under their final names only when complete: they are written to hidden ``.<name>.partial``
temporaries (:mod:`pipeline.files`) that any failure removes; a full disk is one
:class:`~pipeline.errors.OutputError` line, ``<file>: no space left on device``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import dask.dataframe as dd
import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.balance import every_host
from features.cylinder import ObservationSpec
from features.definitions import FEATURES
from features.members import MEMBER_COLUMNS, Members
from features.observe import ObservationPlan, Observations, RegionJob
from pipeline.errors import InputError
from pipeline.files import atomic_output, hdf5_output
from pipeline.snapshot import Snapshot

TABLE_UNITS: dict[str, str] = {
    "cluster_id": "",
    "los": "",
    "log10_m200c_true": "dex(Msun/h)",
    "log10_mvir_true": "dex(Msun/h)",
    "n_true_members": "",
    "sigma_v_true_std": "km/s",
    **{f.name: f.unit for f in FEATURES},
}
OBSERVATIONS_DIR = "observations"
MEMBERS_FILE = "members.h5"


def observation_metadata(obs: Observations, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "n_observations": len(obs.table),
        "n_hosts": obs.n_hosts,
        "dropped": obs.dropped,
        "host_selection": obs.selection,
        "config": obs.config.to_dict(),
        "snapshot": obs.snapshot.to_dict(),
        "units": {c: TABLE_UNITS.get(c, "") for c in obs.table.columns},
        "features": [f.name for f in FEATURES],
        **(extra or {}),
    }


def write_observations(out_dir: str | os.PathLike[str], obs: Observations, *, rows_per_part: int = 100_000,
                       extra_meta: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """Write the feature table and member arrays into ``out_dir``; returns (observations dir, members file)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = observation_metadata(obs, extra_meta)
    final_dir = out / OBSERVATIONS_DIR
    members_path = out / MEMBERS_FILE
    schema_meta = {b"clustermass": json.dumps(meta).encode()}
    table = obs.table
    with atomic_output(final_dir, directory=True) as tmp_dir:
        for k, start in enumerate(range(0, max(len(table), 1), rows_per_part)):
            part = pa.Table.from_pandas(table.iloc[start:start + rows_per_part], preserve_index=False)
            part = part.replace_schema_metadata({**(part.schema.metadata or {}), **schema_meta})
            pq.write_table(part, tmp_dir / f"part-{k:05d}.parquet")
        (tmp_dir / "_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        with hdf5_output(members_path) as fh:
            for name, data in (("offsets", obs.members.offsets), ("cluster_id", table["cluster_id"].to_numpy()),
                               ("los", table["los"].to_numpy())):
                fh.create_dataset(name, data=data)
                fh.flush()  # a full disk raises here, not in a destructor (pipeline.files)
            for name, (_, unit, desc) in MEMBER_COLUMNS.items():
                ds = fh.create_dataset(name, data=getattr(obs.members, name), chunks=True if len(table) else None)
                ds.attrs["unit"] = unit
                ds.attrs["description"] = desc
                fh.flush()
                del ds
            fh.attrs["metadata"] = json.dumps(meta)
    return final_dir, members_path


def read_observations(run_dir: str | os.PathLike[str]) -> tuple[dd.DataFrame, dict[str, Any]]:
    """The feature table as a lazy dask DataFrame (one partition per Parquet part) and its metadata."""
    path = Path(run_dir) / OBSERVATIONS_DIR
    if not (path / "_meta.json").exists():
        raise InputError(path, "no mock observations here (expected part-*.parquet and _meta.json)")
    meta = json.loads((path / "_meta.json").read_text())
    return dd.read_parquet(str(path / "part-*.parquet")), meta


def load_observation_table(run_dir: str | os.PathLike[str]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The whole feature table in memory (pandas, rows in stored order) and its metadata."""
    frame, meta = read_observations(run_dir)
    return frame.compute().reset_index(drop=True), meta


def read_members(run_dir: str | os.PathLike[str]) -> Members:
    """The ragged member arrays, in the feature table's row order."""
    path = Path(run_dir) / MEMBERS_FILE
    if not path.exists():
        raise InputError(path, "no member arrays here")
    with h5py.File(path, "r") as fh:
        return Members(np.asarray(fh["offsets"][...]), **{k: np.asarray(fh[k][...]) for k in MEMBER_COLUMNS})


# -- the flow's intermediate products: a plan (hosts + region jobs; buckets beside) and one file per region job --
PLAN_FILE = "plan.json"
HOSTS_FILE = "hosts.parquet"


def save_plan(plan: ObservationPlan) -> list[Path]:
    """Write ``plan``'s hosts and jobs next to its buckets (``plan.directory``); returns the files written."""
    d = plan.directory
    with atomic_output(d / HOSTS_FILE) as tmp:
        pq.write_table(pa.Table.from_pandas(plan.hosts, preserve_index=False), tmp)
    payload = {"config": plan.config.to_dict(), "cylinder": dataclasses.asdict(plan.config.cylinder),
               "los": dataclasses.asdict(plan.config.los), "snapshot": plan.snapshot.to_dict(),
               "jobs": [j.to_dict() for j in plan.jobs], "selection": plan.selection}
    with atomic_output(d / PLAN_FILE) as tmp:
        tmp.write_text(json.dumps(payload, indent=1) + "\n")
    return [d / HOSTS_FILE, d / PLAN_FILE]


def load_plan(directory: str | os.PathLike[str]) -> ObservationPlan:
    """The plan saved by :func:`save_plan` in ``directory``."""
    d = Path(directory)
    if not (d / PLAN_FILE).exists() or not (d / HOSTS_FILE).exists():
        raise InputError(d, f"no observation plan here (expected {PLAN_FILE} and {HOSTS_FILE})")
    payload = json.loads((d / PLAN_FILE).read_text())
    config = ObservationSpec.from_dict(payload["config"])
    hosts = pq.read_table(d / HOSTS_FILE).to_pandas()
    jobs = tuple(RegionJob(**j) for j in payload["jobs"])
    selection = payload.get("selection") or every_host()
    return ObservationPlan(hosts, config, Snapshot.from_dict(payload["snapshot"]), jobs, d, selection)


def write_region(path: str | os.PathLike[str], table: pd.DataFrame, members: Members) -> Path:
    """One region job's feature rows and members in one ``.npz`` file (written whole, then renamed)."""
    path = Path(path)
    arrays = {f"table/{c}": table[c].to_numpy() for c in table.columns}
    arrays.update({f"members/{k}": v for k, v in members.arrays().items()})
    arrays["members/offsets"] = members.offsets
    with atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    return path


def read_region(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, Members]:
    """The (table, members) written by :func:`write_region`."""
    with np.load(path) as z:
        table = pd.DataFrame({k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("table/")})
        cols = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("members/")}
    offsets = cols.pop("offsets")
    return table, Members(offsets=offsets, **cols)
