"""Per-column accumulators of the CFG, kept up to date at fusion time (incremental CFG).

The CFG token of an (x, y) column is (1 / n) sum_v R(z_v) m_v over its n voxels (RoPE by
height R is linear, m_v the voxel's mean feature). This keeps, per occupied column, that
sum S and n, so a question's grid is a gather of ``max_tokens`` rows: O(tokens x d),
whatever the map size (``cfg.build_grid`` uses it when the map tracks columns).

Exactness over drift: a fusion changes the means of the voxels it touches, so the columns
holding them are recomputed from their voxels' current means (voxels of a column are
contiguous in the map's sorted key index, found with two ``searchsorted``), never updated
by differences: S is the same sum the batch CFG computes (only the summation order
differs, ~1e-7 relative), after any number of frames. Cost per keyframe: the voxels of the
columns it touched x d, a few times the fusion itself.

Columns emptied by eviction release their storage row for reuse, so memory is bounded by
the map's ``max_voxels`` however long the robot runs.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from .voxel_keys import BITS, column_coords, column_ids

if TYPE_CHECKING:  # the map builds these sums; only its type is needed here
    from .voxel_map import VoxelMap

__all__ = ["ColumnSums", "column_voxels", "rope_phase"]

_CHUNK = 4096  # voxel rows per block when (re)computing sums: bounded temporaries at any map size


def rope_phase(levels: torch.Tensor, d: int, base: float = 10000.0) -> torch.Tensor:
    """(L, d/2) complex64 e^{i p theta_i} for integer heights p, theta_i = base^(-2i/d), on levels' device."""
    if d % 2:
        raise ValueError(f"RoPE needs an even feature dimension, got d={d}")
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64, device=levels.device) / d)  # (d/2,)
    angles = levels.to(torch.float64)[:, None] * theta[None, :]  # (L, d/2), float64: p*theta is exact enough
    return torch.polar(torch.ones_like(angles), angles).to(torch.complex64)


def column_voxels(vmap: VoxelMap, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel rows (R,) of the columns ``ids`` (K,) (see :func:`~leovl_ros.voxel_keys.column_ids`) and the index
    into ``ids`` of each row's column (R,)."""
    keys = vmap.sorted_keys  # (V,) ascending: a column's voxels are one contiguous run
    lo = torch.searchsorted(keys, ids << BITS)
    lens = torch.searchsorted(keys, (ids + 1) << BITS) - lo  # (K,)
    owner = torch.repeat_interleave(torch.arange(ids.numel(), device=ids.device), lens)  # (R,)
    start = torch.cumsum(lens, 0) - lens
    pos = lo[owner] + torch.arange(owner.numel(), device=ids.device) - start[owner]
    return vmap.sorted_rows[pos], owner


class ColumnSums:
    """S (sum of height-rotated voxel means, or plain means with ``rope=False``) and voxel count
    per occupied column of ``vmap``; attach with ``VoxelMap.track_columns``."""

    def __init__(self, vmap: VoxelMap, rope: bool) -> None:
        self.rope = rope
        dev = vmap.device
        self._ids = torch.zeros(0, dtype=torch.int64, device=dev)  # (C,) ascending column ids
        self._rows = torch.zeros(0, dtype=torch.int64, device=dev)  # (C,) storage row of each id
        self._sums = torch.zeros(0, vmap.feature_dim, device=dev)  # (capacity, d)
        self._count = torch.zeros(0, dtype=torch.int64, device=dev)  # (capacity,) voxels; 0 = free row
        self._free = torch.zeros(0, dtype=torch.int64, device=dev)  # storage rows to reuse
        self._top = 0  # storage rows handed out so far (used or free)
        self._shared = False  # a snapshot reads _sums/_count: copy them before the next write
        self.refresh(vmap, vmap.sorted_keys)

    def snapshot(self) -> "ColumnSums":
        """A copy sharing the sums until this object next writes them (see VoxelMap.snapshot)."""
        self._shared = True
        return copy.copy(self)

    @property
    def num_columns(self) -> int:
        return int(self._ids.numel())

    def memory_bytes(self) -> int:
        tensors = (self._ids, self._rows, self._sums, self._count, self._free)
        return sum(t.numel() * t.element_size() for t in tensors)

    def columns(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids (C,), column coords (C, 2) int64, voxel counts (C,), storage rows (C,)), raster order."""
        cols = column_coords(self._ids)
        return self._ids, cols, self._count[self._rows], self._rows

    def sums(self, rows: torch.Tensor) -> torch.Tensor:
        """(K, d) S of the given storage rows."""
        return self._sums.index_select(0, rows)

    def pool_into(self, out: torch.Tensor, rows: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Add the sums of storage ``rows`` into ``out[token]`` (out: (T + 1, d), row T a scratch row).

        Straight from storage, no gathered (C, d) copy: at 200k voxels a fresh 130 MB copy
        costs more in page faults than the additions themselves.
        """
        row_token = torch.full((self._top,), out.shape[0] - 1, dtype=torch.int64, device=out.device)
        row_token[rows] = token
        return out.index_add_(0, row_token, self._sums[: self._top])

    def refresh(self, vmap: VoxelMap, voxel_keys: torch.Tensor) -> None:
        """Recompute the columns holding ``voxel_keys`` (any voxel keys, present or evicted)."""
        ids = torch.unique(column_ids(voxel_keys))  # (K,)
        if ids.numel() == 0:
            return
        rows, owner = column_voxels(vmap, ids)  # (R,), (R,)
        n = torch.bincount(owner, minlength=ids.numel())  # (K,) voxels now in each column
        fresh = torch.zeros(ids.numel(), vmap.feature_dim, device=self._sums.device)  # (K, d)
        for lo in range(0, rows.numel(), _CHUNK):
            r = rows[lo : lo + _CHUNK]
            x = vmap.means(r)  # (c, d)
            if self.rope:
                levels, inverse = torch.unique(vmap.coords[r, 2], return_inverse=True)
                x = torch.view_as_real(torch.view_as_complex(x.view(-1, x.shape[1] // 2, 2))
                                       * rope_phase(levels, x.shape[1])[inverse]).view(x.shape)
            fresh.index_add_(0, owner[lo : lo + _CHUNK], x)
        self._store(ids, fresh, n)

    def _store(self, ids: torch.Tensor, fresh: torch.Tensor, n: torch.Tensor) -> None:
        if self._shared:
            self._sums, self._count, self._shared = self._sums.clone(), self._count.clone(), False
        C = self._ids.numel()
        pos = torch.searchsorted(self._ids, ids).clamp_(max=max(C - 1, 0))
        found = (self._ids[pos] == ids) if C else torch.zeros_like(ids, dtype=torch.bool)
        live = n > 0
        old = found & live  # still occupied: overwrite
        self._sums[self._rows[pos[old]]] = fresh[old]
        self._count[self._rows[pos[old]]] = n[old]
        gone = found & ~live  # emptied by eviction: release the row
        if bool(gone.any()):
            released = self._rows[pos[gone]]
            self._count[released] = 0
            self._free = torch.cat([self._free, released])
            keep = torch.ones(C, dtype=torch.bool, device=ids.device)
            keep[pos[gone]] = False
            self._ids, self._rows = self._ids[keep], self._rows[keep]
        new = ~found & live
        m = int(new.sum())
        if m:
            rows = self._allocate(m)
            self._sums[rows] = fresh[new]
            self._count[rows] = n[new]
            ids_all, order = torch.sort(torch.cat([self._ids, ids[new]]))
            self._ids, self._rows = ids_all, torch.cat([self._rows, rows])[order]

    def _allocate(self, m: int) -> torch.Tensor:
        """m storage rows: released ones first, then new ones (storage grows by doubling)."""
        take = min(m, self._free.numel())
        rows, self._free = self._free[:take], self._free[take:]
        extra = torch.arange(self._top, self._top + m - take, device=rows.device)  # never handed out yet
        self._top += m - take
        cap = self._sums.shape[0]
        if self._top > cap:
            new_cap = max(self._top, 2 * cap, 256)
            sums = torch.zeros(new_cap, self._sums.shape[1], device=self._sums.device)
            sums[:cap] = self._sums
            count = torch.zeros(new_cap, dtype=torch.int64, device=self._count.device)
            count[:cap] = self._count
            self._sums, self._count = sums, count
        return torch.cat([rows, extra])
