"""Cheap views of the CFG a question would get: its size (for the status) and its cells (for RViz)."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..cfg import GridConfig, build_grid
from ..voxel_map import VoxelMap, voxel_keys

__all__ = ["grid_cloud", "grid_stats"]


def grid_stats(vmap: VoxelMap, config: GridConfig) -> tuple[int, float, float]:
    """(tokens, compression rate, preservation rate) that ``build_grid`` would report, from
    coordinates only: the status topic needs them every second, the feature pooling is not."""
    V = vmap.num_voxels
    if V == 0:
        return 0, 0.0, 1.0
    cols = vmap.coords * torch.tensor([1, 1, 0])
    counts = torch.unique(voxel_keys(cols), return_counts=True)[1]  # (C,) voxels per column
    if config.grid == "voxel_full":
        return V, 1.0, 1.0
    T = min(counts.numel(), config.max_tokens)
    kept = T if config.grid == "voxel_sample" else int(torch.topk(counts, T).values.sum())
    return T, T / V, kept / V


def grid_cloud(vmap: VoxelMap, config: GridConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CFG cells for display: xyz (T, 3) at the mean voxel height of each column, a feature
    summary (T,) in [0, 1] (first principal component of the un-rotated column features, so
    similar surfaces get similar values) and the voxels per cell (T,)."""
    grid = build_grid(vmap, replace(config, grid="cfg", pos_z="none"))
    T = grid.num_tokens
    if T == 0:
        return np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
    vs = vmap.voxel_size
    tok_cols = torch.floor(grid.xy / vs).to(torch.int64)  # (T, 2)
    tkeys = voxel_keys(torch.cat([tok_cols, torch.zeros(T, 1, dtype=torch.int64)], 1))  # (T,) ascending: CFG tokens come in raster order
    vkeys = voxel_keys(vmap.coords * torch.tensor([1, 1, 0]))  # (V,)
    pos = torch.searchsorted(tkeys, vkeys).clamp(max=T - 1)  # (V,)
    hit = tkeys[pos] == vkeys  # voxels whose column became a token
    z_sum = torch.zeros(T).index_add_(0, pos[hit], vmap.centers[hit, 2])
    z = z_sum / torch.zeros(T).index_add_(0, pos[hit], torch.ones(int(hit.sum())))
    x = grid.features - grid.features.mean(0)  # (T, d)
    summary = torch.zeros(T)
    if T > 1 and bool(torch.isfinite(x).all()):  # a display must not fail on a corrupted map
        v = torch.linalg.svd(x, full_matrices=False).Vh[0]  # (d,)
        v = v * torch.sign(v[v.abs().argmax()])  # fix the SVD's sign ambiguity
        p = x @ v
        summary = (p - p.min()) / (p.max() - p.min()).clamp(min=1e-12)
    xyz = torch.cat([grid.xy, z[:, None]], 1)
    return tuple(t.numpy().astype(np.float32) for t in (xyz, summary, grid.voxel_count))
