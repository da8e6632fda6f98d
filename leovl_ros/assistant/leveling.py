"""The session's view of gravity: the keyframes' axes and depth points, a periodic estimate,
and (with ``align_gravity``) the rotation that levels incoming poses. See :mod:`leovl_ros.gravity`.

Decision (paper silent): the estimate runs on a bounded sample of the keyframes' depth
points, kept beside the map and rotated exactly with it, so a levelled map is judged against
the data and not against its own re-binned grid (whose layers are horizontal by
construction). A saved map brings only its voxel centres, fitted with a band of 0.6 voxel.
The map is re-levelled only for a confirmed tilt (two halves of the points agree), past
2 deg the first time and 4 deg afterwards (hysteresis), since each re-binning of voxel
centres blurs the map by up to half a voxel.
"""
from __future__ import annotations

import time

import numpy as np

from ..gravity import DEPTH_TOLERANCE_M, CameraAxes, GravityEstimate, estimate_up, leveling_rotation
from ..voxel_map import VoxelMap

__all__ = ["GravityTracker", "relevel_map"]

_RELEVEL_DEG = (2.0, 4.0)  # first level, later corrections
_AGREE_DEG = 2.0  # two halves of the points on the same floor
_MAX_POINTS = 20000


class GravityTracker:
    """Not thread-safe: the session calls it under its map lock (estimates run outside)."""

    def __init__(self, align: bool, period_s: float = 2.0) -> None:
        self.align, self.period_s = align, period_s
        self.level = np.eye(3)  # applied to incoming poses (align_gravity)
        self._rng = np.random.default_rng(0)
        self.reset()

    def reset(self) -> None:
        self.cameras = CameraAxes()
        self.points = np.zeros((0, 3), np.float32)
        self.coarse = False  # the points include voxel centres of a saved map
        self.estimate: GravityEstimate | None = None
        self.confirmed: GravityEstimate | None = None
        self._at = (-1, -float("inf"))  # (map version, monotonic time) of the last estimate
        self.warned = False
        self.relevels = 0

    @property
    def leveled_deg(self) -> float:
        """Total rotation applied to incoming poses so far, degrees."""
        return float(np.degrees(np.arccos(np.clip((np.trace(self.level) - 1) / 2, -1, 1))))

    def plane_angle_deg(self) -> float:
        """The tilt of the map frame as reported: -1 until the floor was found (the camera prior
        alone is off by the camera's pitch)."""
        e = self.estimate
        return e.angle_deg if e is not None and e.from_plane else -1.0

    def level_pose(self, T: np.ndarray) -> np.ndarray:
        if not self.align or np.array_equal(self.level, np.eye(3)):
            return T
        L = np.eye(4)
        L[:3, :3] = self.level
        return L @ T

    def add_keyframe(self, T_map_camera: np.ndarray, points: np.ndarray) -> None:
        self.cameras.add(T_map_camera[:3, :3])
        self._add_points(points)

    def seed_from_map(self, centers: np.ndarray) -> None:
        """A loaded map's voxel centres stand in for the depth points it was built from."""
        self.coarse = True
        self._add_points(centers)

    def _add_points(self, points: np.ndarray) -> None:
        self.points = np.concatenate([self.points, np.asarray(points, np.float32).reshape(-1, 3)])
        if len(self.points) > _MAX_POINTS:  # thin uniformly: each point kept with the same chance
            keep = np.sort(self._rng.choice(len(self.points), _MAX_POINTS, replace=False))
            self.points = self.points[keep]

    def due(self, version: int) -> bool:
        return version != self._at[0] and time.monotonic() - self._at[1] >= self.period_s

    def inputs(self) -> tuple[np.ndarray, CameraAxes]:
        return self.points, self.cameras.copy()  # points are replaced, never written in place

    def update(self, version: int, points: np.ndarray, cameras: CameraAxes,
               voxel_size: float) -> np.ndarray | None:
        """New estimate; returns the rotation to level the map with when ``align`` asks for one."""
        self._at = (version, time.monotonic())
        tol = max(DEPTH_TOLERANCE_M, 0.6 * voxel_size) if self.coarse else DEPTH_TOLERANCE_M
        e = self.estimate = estimate_up(points, cameras, tol)
        if e is None or not e.from_plane or e.angle_deg <= _RELEVEL_DEG[0]:  # level: nothing to confirm
            return None
        halves = [estimate_up(points[i::2], cameras, tol, seed=1 + i) for i in range(2)]
        if not all(h is not None and h.from_plane and _angle(h.up, e.up) <= _AGREE_DEG for h in halves):
            return None
        self.confirmed = e
        threshold = _RELEVEL_DEG[self.leveled_deg > 0]
        return leveling_rotation(e.up) if self.align and e.angle_deg > threshold else None

    def rotate(self, R: np.ndarray) -> None:
        """The map was rotated by R: so are the poses to come, the axes and the points (exactly)."""
        self.level = R @ self.level
        self.relevels += 1
        self.cameras.rotate(R)
        self.points = (self.points.astype(np.float64) @ R.T).astype(np.float32)
        self.estimate = self.confirmed = None
        self._at = (-1, -float("inf"))  # judge the levelled data at the next report


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b, -1.0, 1.0))))


def relevel_map(vmap: VoxelMap, R: np.ndarray, new_map: VoxelMap) -> VoxelMap:
    """``vmap`` rotated by R into ``new_map`` (empty, same config): voxel centres re-binned.

    Each old voxel enters with its mean feature as one observation, so its history counts
    once from then on (VoxelMap keeps no per-observation weights to carry over)."""
    if vmap.num_voxels:
        centers = vmap.centers.cpu().numpy().astype(np.float64) @ R.T
        new_map.fuse(centers.astype(np.float32), vmap.means())
    return new_map
