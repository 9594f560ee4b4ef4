"""Member galaxies of every observation, in compact ragged form.

Observation ``i`` owns members ``offsets[i]:offsets[i+1]`` of each per-member array. Set-based models read these
directly; the feature table is computed from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

#: per-member arrays: name -> (dtype, unit, description)
MEMBER_COLUMNS: dict[str, tuple[str, str, str]] = {
    "r_proj": ("f4", "Mpc/h", "projected comoving distance to the host"),
    "v_los": ("f4", "km/s", "line-of-sight velocity relative to the host (Hubble flow + peculiar)"),
    "log10_mstar": ("f4", "dex(Msun)", "log10 of the observed stellar mass, Msun (no h)"),
    "galaxy_id": ("i8", "", "UniverseMachine id of the galaxy"),
    "is_true_member": ("?", "", "the galaxy belongs to the host (central or satellite); False for interlopers"),
}


@dataclass(frozen=True)
class Members:
    """Ragged member arrays (see :data:`MEMBER_COLUMNS` for units)."""

    offsets: np.ndarray
    r_proj: np.ndarray
    v_los: np.ndarray
    log10_mstar: np.ndarray
    galaxy_id: np.ndarray
    is_true_member: np.ndarray

    def __post_init__(self) -> None:
        n = int(self.offsets[-1]) if len(self.offsets) else 0
        if len(self.offsets) == 0 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) < 0):
            raise ValueError("members: offsets must start at 0 and be non-decreasing")
        for name in MEMBER_COLUMNS:
            arr = getattr(self, name)
            if arr.shape != (n,):
                raise ValueError(f"members: expected {name} of shape ({n},), got {arr.shape}")

    @property
    def n_obs(self) -> int:
        return len(self.offsets) - 1

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def arrays(self) -> dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "offsets"}

    def take(self, rows: np.ndarray) -> Members:
        """The observations ``rows`` (an integer index or boolean mask), in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        starts = self.offsets[:-1][rows]
        counts = self.counts[rows]
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        idx = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1], dtype=np.int64)
        return Members(offsets, **{k: v[idx] for k, v in self.arrays().items()})

    @classmethod
    def empty(cls) -> Members:
        return cls(np.zeros(1, dtype=np.int64),
                   **{k: np.empty(0, dtype=dt) for k, (dt, _, _) in MEMBER_COLUMNS.items()})

    @classmethod
    def concat(cls, parts: Sequence[Members]) -> Members:
        parts = [p for p in parts if p.n_obs]
        if not parts:
            return cls.empty()
        counts = np.concatenate([p.counts for p in parts])
        offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=offsets[1:])
        return cls(offsets, **{k: np.concatenate([getattr(p, k) for p in parts]) for k in MEMBER_COLUMNS})
