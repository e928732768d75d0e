"""An offline dataset in memory: one row per transition, as torch tensors."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from library.config import is_count
from library.errors import DataError, ShapeError, SpecError

# field -> (dtype, rank): rank 2 fields are [N, dim], rank 1 fields are [N]
_LAYOUT: dict[str, tuple[torch.dtype, int]] = {
    "obs": (torch.float32, 2),
    "actions": (torch.float32, 2),
    "rewards": (torch.float32, 1),
    "costs": (torch.float32, 1),
    "next_obs": (torch.float32, 2),
    "terminals": (torch.bool, 1),
    "timeouts": (torch.bool, 1),
    "episode": (torch.int64, 1),
}


@dataclass(frozen=True)
class OfflineData:
    """Transitions (s, a, r, c, s', done) of one dataset; every field has N rows."""

    obs: Tensor
    """States s: [N, S] float32."""
    actions: Tensor
    """Actions a in [-1, 1]: [N, A] float32."""
    rewards: Tensor
    """Rewards r: [N] float32."""
    costs: Tensor
    """Safety costs c (zeros for unconstrained tasks): [N] float32."""
    next_obs: Tensor
    """Next states s': [N, S] float32."""
    terminals: Tensor
    """True where s' is terminal (no bootstrapping): [N] bool."""
    timeouts: Tensor
    """True where the episode was cut by a time limit (s' not terminal): [N] bool."""
    episode: Tensor
    """Episode index of each transition: [N] int64."""

    @classmethod
    def from_arrays(
        cls,
        *,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminals: np.ndarray,
        timeouts: np.ndarray,
        episode: np.ndarray,
        costs: np.ndarray | None = None,
    ) -> OfflineData:
        """Validate numpy arrays (shapes, finiteness) and convert them to tensors."""
        raw = {
            "obs": obs, "actions": actions, "rewards": rewards, "next_obs": next_obs,
            "terminals": terminals, "timeouts": timeouts, "episode": episode,
            "costs": np.zeros(len(rewards), dtype=np.float32) if costs is None else costs,
        }
        tensors: dict[str, Tensor] = {}
        for name, (dtype, rank) in _LAYOUT.items():
            array = np.asarray(raw[name])
            if array.ndim != rank:
                want = "[N, dim]" if rank == 2 else "[N]"
                raise ShapeError(f"dataset field {name} must be {want}, got shape {list(array.shape)}")
            if dtype.is_floating_point and not np.issubdtype(array.dtype, np.number):
                raise DataError(f"dataset field {name} must be numeric, got {array.dtype}")
            if dtype.is_floating_point and not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).sum())
                raise DataError(f"dataset field {name} has {bad} non-finite value(s)")
            tensors[name] = torch.as_tensor(np.ascontiguousarray(array)).to(dtype)
        n = len(tensors["obs"])
        for name, tensor in tensors.items():
            if len(tensor) != n:
                raise ShapeError(f"dataset field {name} has {len(tensor)} rows, obs has {n}")
        if n == 0:
            raise DataError("dataset has no transitions")
        if tensors["next_obs"].shape[1] != tensors["obs"].shape[1]:
            raise ShapeError(
                f"next_obs has {tensors['next_obs'].shape[1]} dims, obs has {tensors['obs'].shape[1]}"
            )
        return cls(**tensors)

    def __len__(self) -> int:
        return self.obs.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    @property
    def act_dim(self) -> int:
        return self.actions.shape[1]

    def to(self, device: torch.device | str) -> OfflineData:
        """The same transitions with every field on `device` (kept there, a fit's batches
        need no copy per step; the row index is still drawn on the CPU generator)."""
        return OfflineData(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """`batch_size` transitions drawn uniformly with replacement, by field name, and
        their row numbers under "index" (what a per-state table such as
        `library.composition.ActionPool` is looked up by)."""
        if not is_count(batch_size):
            raise SpecError("batch_size", f"must be a positive integer, got {batch_size!r}")
        index = torch.randint(len(self), (batch_size,), generator=generator)
        return {**{f.name: getattr(self, f.name)[index] for f in fields(self)}, "index": index}
