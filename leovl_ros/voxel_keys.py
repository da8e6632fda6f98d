"""Voxel keys: integer voxel coordinates packed into one int64 whose order is (x, y, z).

21 bits per axis, signed by an offset: +-2^20 voxels = +-209 km at 0.2 m, far beyond any
robot map. Because x and y take the high bits, the voxels of one (x, y) column are one
contiguous run of sorted keys and ``key >> BITS`` is the column's id (also in raster order).
The voxel map's sorted index, the incremental CFG's column sums and the grids all key by this.
"""
from __future__ import annotations

import torch

__all__ = ["BITS", "MASK", "OFFSET", "column_coords", "column_ids", "unpack_keys", "voxel_keys"]

BITS = 21
OFFSET = 1 << (BITS - 1)  # coordinates must satisfy |c| < OFFSET
MASK = (1 << BITS) - 1


def voxel_keys(coords: torch.Tensor) -> torch.Tensor:
    """(N, 3) int64 voxel coords -> (N,) int64 keys whose order is lexicographic (x, y, z)."""
    c = coords + OFFSET
    return (c[:, 0] << (2 * BITS)) | (c[:, 1] << BITS) | c[:, 2]


def unpack_keys(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`voxel_keys`: (N,) keys -> (N, 3) int64 voxel coords."""
    return torch.stack([(keys >> (2 * BITS)) & MASK, (keys >> BITS) & MASK, keys & MASK], 1) - OFFSET


def column_ids(keys: torch.Tensor) -> torch.Tensor:
    """(N,) voxel keys -> (N,) ids of their (x, y) columns; voxel keys of column ``i`` lie in
    ``[i << BITS, (i + 1) << BITS)``."""
    return keys >> BITS


def column_coords(ids: torch.Tensor) -> torch.Tensor:
    """(C,) column ids -> (C, 2) int64 (x, y) voxel coords."""
    return torch.stack([ids >> BITS, ids & MASK], 1) - OFFSET
