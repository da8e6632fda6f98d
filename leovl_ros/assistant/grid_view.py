"""Cheap views of the CFG a question would get: its size (for the status) and its cells (for RViz)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..condensed_grid import GridConfig, build_grid, focus_point, voxel_tokens
from ..token_selection import select_tokens
from ..voxel_keys import voxel_keys
from ..voxel_map import VoxelMap

__all__ = ["grid_cloud", "grid_stats"]


def grid_stats(vmap: VoxelMap, config: GridConfig) -> tuple[int, float, float]:
    """(tokens, compression rate, preservation rate) that ``build_grid`` would report (for a
    question without an anchor), from coordinates only: the status topic needs them every
    second, the feature pooling is not. O(columns) when the map tracks its columns."""
    V = vmap.num_voxels
    if V == 0:
        return 0, 0.0, 1.0
    if config.grid == "voxel_full":
        return V, 1.0, 1.0
    if vmap.columns is not None:
        _, cols, counts, _ = vmap.columns.columns()
    else:
        keys, inverse, counts = torch.unique(voxel_keys(vmap.coords * torch.tensor([1, 1, 0], device=vmap.device)),
                                           return_inverse=True, return_counts=True)
        cols = torch.zeros(keys.numel(), 2, dtype=torch.int64, device=vmap.device).index_copy_(
            0, inverse, vmap.coords[:, :2])  # (C, 2) coords of each column (all its voxels agree)
    if config.grid == "voxel_sample":
        T = min(counts.numel(), config.max_tokens)
        return T, T / V, T / V
    tcount = select_tokens(cols, counts, config.max_tokens, config.token_selection, vmap.voxel_size,
                           focus_point(vmap, config, None))[2]
    return tcount.numel(), tcount.numel() / V, int(tcount.sum()) / V


def grid_cloud(vmap: VoxelMap, config: GridConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CFG cells for display: xyz (T, 3) at the mean voxel height of each column, a feature
    summary (T,) in [0, 1] (first principal component of the un-rotated column features, so
    similar surfaces get similar values) and the voxels per cell (T,)."""
    grid = build_grid(vmap, replace(config, grid="cfg", pos_z="none"))
    T = grid.num_tokens
    if T == 0:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
    token = voxel_tokens(vmap, config, focus_point(vmap, config, None))[0].cpu()  # (V,) -1: column not kept
    hit = token >= 0
    z = torch.zeros(T).index_add_(0, token[hit], vmap.centers[hit, 2].cpu()) / grid.voxel_count.cpu()
    x = grid.features.cpu() - grid.features.cpu().mean(0)  # (T, d)
    summary = torch.zeros(T)
    if T > 1 and bool(torch.isfinite(x).all()):  # a display must not fail on a corrupted map
        v = torch.linalg.svd(x, full_matrices=False).Vh[0]  # (d,)
        v = v * torch.sign(v[v.abs().argmax()])  # fix the SVD's sign ambiguity
        p = x @ v
        summary = (p - p.min()) / (p.max() - p.min()).clamp(min=1e-12)
    xyz = torch.cat([grid.xy.cpu(), z[:, None]], 1)
    return tuple(t.numpy().astype(np.float32) for t in (xyz, summary, grid.voxel_count.cpu()))
