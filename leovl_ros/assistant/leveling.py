"""The session's view of gravity: the cameras' prior, a periodic estimate, and (with
``align_gravity``) the rotation that levels incoming poses. See :mod:`leovl_ros.gravity`."""
from __future__ import annotations

import time

import numpy as np

from ..gravity import GravityEstimate, estimate_up, leveling_rotation
from ..voxel_map import VoxelMap

__all__ = ["GravityTracker", "relevel_map"]

# Re-level only for a clear tilt from a plane: re-binning the map for noise would blur it.
_RELEVEL_MIN_DEG = 1.0


class GravityTracker:
    """Not thread-safe: the session calls it under its map lock (estimates run outside)."""

    def __init__(self, align: bool, period_s: float = 2.0) -> None:
        self.align, self.period_s = align, period_s
        self.level = np.eye(3)  # applied to incoming poses (align_gravity)
        self.reset()

    def reset(self) -> None:
        self.down_sum = np.zeros(3)
        self.estimate: GravityEstimate | None = None
        self._at = (-1, -float("inf"))  # (map version, monotonic time) of the last estimate
        self.warned = False

    @property
    def leveled_deg(self) -> float:
        """Total rotation applied to incoming poses so far, degrees."""
        return float(np.degrees(np.arccos(np.clip((np.trace(self.level) - 1) / 2, -1, 1))))

    def plane_angle_deg(self) -> float:
        """The tilt of the map frame as reported: -1 until a horizontal plane confirmed it (the
        camera prior alone is off by the camera's pitch)."""
        e = self.estimate
        return e.angle_deg if e is not None and e.source == "horizontal plane" else -1.0

    def level_pose(self, T: np.ndarray) -> np.ndarray:
        if not self.align or np.array_equal(self.level, np.eye(3)):
            return T
        L = np.eye(4)
        L[:3, :3] = self.level
        return L @ T

    def add_keyframe(self, T_map_camera: np.ndarray) -> None:
        self.down_sum += T_map_camera[:3, 1]  # optical y = image down

    def due(self, version: int) -> bool:
        return version != self._at[0] and time.monotonic() - self._at[1] >= self.period_s

    def update(self, version: int, centers: np.ndarray, down_sum: np.ndarray, voxel_size: float) -> np.ndarray | None:
        """New estimate; returns the rotation to level the map with when ``align`` asks for one."""
        self._at = (version, time.monotonic())
        self.estimate = estimate_up(centers, down_sum, voxel_size)
        e = self.estimate
        if self.align and e is not None and e.source == "horizontal plane" and e.angle_deg > _RELEVEL_MIN_DEG:
            return leveling_rotation(e.up)
        return None


def relevel_map(vmap: VoxelMap, R: np.ndarray, new_map: VoxelMap) -> VoxelMap:
    """``vmap`` rotated by R into ``new_map`` (empty, same config): voxel centres re-binned.

    Each old voxel enters with its mean feature as one observation, so its history counts
    once from then on (VoxelMap keeps no per-observation weights to carry over)."""
    if vmap.num_voxels:
        centers = vmap.centers.cpu().numpy().astype(np.float64) @ R.T
        new_map.fuse(centers.astype(np.float32), vmap.means())
    return new_map
