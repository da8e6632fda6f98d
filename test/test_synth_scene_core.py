"""A synthetic room's frames fused by the scene core give a sane voxel map and CFG.

Per-cell features are the cell's mean RGB lifted to d dims by a fixed random matrix, so
the map can be checked against the room's known colours without a vision model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from leovl_ros.condensed_grid import GridConfig, build_grid
from leovl_ros.geometry import Intrinsics, KeyframeSelector, cell_points, depth_to_metres
from leovl_ros.synth.render import render_frames
from leovl_ros.synth.rooms import generate_room
from leovl_ros.voxel_map import VoxelMap

D = 16
LIFT = np.random.default_rng(0).standard_normal((3, D)).astype(np.float32)  # rgb -> d


def cell_rgb(rgb: np.ndarray, grid_hw: tuple[int, int]) -> np.ndarray:
    """(h*w, 3) mean colour per feature cell, row-major, pixels assigned by their centres."""
    H, W, _ = rgb.shape
    h, w = grid_hw
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    cell = (rows[:, None] * w + cols[None, :]).ravel()
    sums = np.zeros((h * w, 3))
    np.add.at(sums, cell, rgb.reshape(-1, 3) / 255.0)
    return (sums / np.bincount(cell, minlength=h * w)[:, None]).astype(np.float32)


def fuse_room(room, frames, grid_hw=(15, 20)) -> VoxelMap:
    vmap = VoxelMap(D, voxel_size=0.2)
    keyframes = KeyframeSelector()
    for f in frames:
        if not keyframes.accept(f.T_map_camera, f.stamp_ns * 1e-9):
            continue
        h, w = f.depth_mm.shape
        points, idx = cell_points(depth_to_metres(f.depth_mm), Intrinsics.from_K(f.K, w, h), f.T_map_camera, grid_hw)
        vmap.fuse(points, cell_rgb(f.rgb, grid_hw)[idx] @ LIFT)
    return vmap


@pytest.fixture(scope="module")
def fused():
    room = generate_room(9)
    return room, fuse_room(room, render_frames(room, 24, 160, 120))


def test_voxel_map_covers_the_room_and_stays_inside(fused):
    room, vmap = fused
    c = vmap.centers.numpy()
    lo = np.array([-room.width / 2, -room.depth / 2, 0.0]) - 0.2
    hi = np.array([room.width / 2, room.depth / 2, room.height]) + 0.2
    assert np.all((c >= lo) & (c <= hi))
    assert vmap.num_voxels > 200
    footprint = np.ptp(c[:, :2], axis=0)
    assert np.all(footprint > 0.7 * np.array([room.width, room.depth]))  # the loop sees the whole floor


def test_cfg_statistics_are_sane(fused):
    _, vmap = fused
    grid = build_grid(vmap, GridConfig(max_tokens=750))
    assert 0 < grid.num_tokens <= 750 and grid.num_voxels == vmap.num_voxels
    assert 0.1 < grid.compression_rate < 1.0  # several voxels per (x, y) column
    assert 0.0 < grid.preservation_rate <= 1.0
    assert int(grid.voxel_count.sum()) == round(grid.preservation_rate * vmap.num_voxels)
    capped = build_grid(vmap, GridConfig(max_tokens=40))
    assert capped.num_tokens == 40 and capped.preservation_rate < grid.preservation_rate
    # the kept columns are the fullest ones
    assert int(capped.voxel_count.min()) >= int(torch.sort(grid.voxel_count, descending=True).values[39])


def test_fused_features_carry_the_room_colours(fused):
    room, vmap = fused
    rgb = vmap.means().numpy() @ np.linalg.pinv(LIFT)  # (V, 3) back to colour
    centres = vmap.centers.numpy()
    expected, got = [], []
    for o in room.objects:
        inside = np.all((centres > o.min + 0.05) & (centres < o.max - 0.05), axis=1)
        if inside.sum() >= 2:
            expected.append(o.rgb)
            got.append(np.median(rgb[inside], axis=0))
    assert len(expected) >= 4
    corr = np.corrcoef(np.ravel(expected), np.ravel(got))[0, 1]
    assert corr > 0.6, corr
