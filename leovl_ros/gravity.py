"""Which way is up in a map: from the cameras that built it and the floor they saw.

Height RoPE and column pooling (condensed_grid.py) assume a z-up map frame (REP-103). Many
SLAM systems and datasets instead put the world frame at the first camera (y down), or
slightly tilted; the map then lies on its side and nothing fails loudly. This module
estimates the up direction so the node can report the tilt and, if asked, level the poses.

Decision (paper silent): a camera prior, then the floor fitted to depth points.
1. Prior from the cameras: a camera held without roll has a horizontal image-right axis
   (optical x) whatever its pitch, so once it has turned, up is the direction all keyframes'
   x axes are perpendicular to (least eigenvector of sum x x^T). The mean optical y (image
   down) gives the sign and, for a camera that never turned, the direction itself, off by
   the camera's pitch (robots pitch cameras by tens of degrees): the plane search cone is
   wide then.
2. Planes at sub-voxel precision: sequential MSAC (truncated quadratic cost, so a plane
   that cuts a staircase of voxel layers loses to a flat one) over depth points - a sample
   of the keyframes' back-projected pixels, or the voxel centres of a saved map - seeded by
   point triples within a metre of each other, normals within the cone of the prior, each
   refined by least squares on its inliers.
3. The floor: among the planes parallel (within 5 deg) to the best-supported one, the
   lowest that has a quarter of its support and real extent (not a strip). Its normal,
   signed like the prior, is "up". Without one, the prior alone is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from .geometry import Intrinsics, backproject

__all__ = ["CameraAxes", "GravityEstimate", "depth_samples", "estimate_up", "leveling_rotation"]

DEPTH_TOLERANCE_M = 0.04  # plane band for depth points: RGB-D noise at 3-4 m plus keyframe pose error
_PARALLEL_DEG = 5.0
_MIN_EXTENT_M = 0.2  # std of the plane's points along its narrower in-plane axis


@dataclass(frozen=True)
class GravityEstimate:
    up: np.ndarray  # (3,) unit vector, map frame
    angle_deg: float  # between ``up`` and the map's +z
    source: str  # "floor" or "camera prior"
    support: int  # points on the floor (0 for the camera prior)

    @property
    def from_plane(self) -> bool:
        return self.source != "camera prior"


class CameraAxes:
    """The keyframes' optical x and y axes in the map frame, summed (see step 1 above)."""

    def __init__(self) -> None:
        self.down_sum, self.right_outer, self.count = np.zeros(3), np.zeros((3, 3)), 0

    def add(self, R_map_camera: np.ndarray) -> None:
        x = np.asarray(R_map_camera, np.float64)[:3, 0]
        self.down_sum = self.down_sum + R_map_camera[:3, 1]  # optical y = image down
        self.right_outer = self.right_outer + np.outer(x, x)
        self.count += 1

    def rotate(self, R: np.ndarray) -> None:
        self.down_sum, self.right_outer = R @ self.down_sum, R @ self.right_outer @ R.T

    def copy(self) -> "CameraAxes":
        other = CameraAxes()
        other.down_sum, other.right_outer, other.count = self.down_sum.copy(), self.right_outer.copy(), self.count
        return other

    def prior(self) -> tuple[np.ndarray, float] | None:
        """(up, half-angle in degrees of the cone the true up lies in), None without a camera."""
        norm = float(np.linalg.norm(self.down_sum))
        if self.count == 0 or norm < 1e-9:
            return None
        up = -self.down_sum / norm
        values, vectors = np.linalg.eigh(self.right_outer / self.count)  # ascending
        if values[1] >= 0.03:  # the x axes span a plane: the camera turned by > ~10 deg
            normal = vectors[:, 0]
            return (normal if normal @ up > 0 else -normal), 30.0
        x = vectors[:, 2]  # one heading: only roll can be removed, pitch stays unknown
        up = up - (up @ x) * x
        return up / max(float(np.linalg.norm(up)), 1e-12), 45.0


def depth_samples(depth_m: np.ndarray, intrinsics: Intrinsics, T_map_camera: np.ndarray, depth_min: float,
                  depth_max: float, count: int = 1200) -> np.ndarray:
    """About ``count`` map-frame points of a depth image on a regular pixel lattice, (N, 3) float32."""
    h, w = depth_m.shape[:2]
    step = max(1, int(round(math.sqrt(h * w / max(count, 1)))))
    sub = np.ascontiguousarray(depth_m[::step, ::step], dtype=np.float32)
    # pixel u' of the lattice is pixel step*u' of the image: same rays with f/step, c/step
    lattice = Intrinsics(intrinsics.fx / step, intrinsics.fy / step, intrinsics.cx / step, intrinsics.cy / step,
                         sub.shape[1], sub.shape[0])
    points = backproject(sub, lattice, T_map_camera, depth_min, depth_max).reshape(-1, 3)
    return points[np.isfinite(points).all(1)]


def _angle_to_z(up: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip(up[2], -1.0, 1.0))))


def _fit(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares plane: (normal, centroid, singular values)."""
    centroid = points.mean(0)
    _, s, vt = np.linalg.svd(points - centroid, full_matrices=False)
    return vt[-1], centroid, s


def _best_plane(points: np.ndarray, prior: np.ndarray, cos_min: float, tol: float, rng: np.random.Generator,
                iterations: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(normal, inlier mask) of the lowest-cost plane within the cone, refined; None if no sample fits."""
    # seed triples from near neighbours (a random triple of a room rarely lies on one surface),
    # the two partners from the farthest third of the 64 nearest: on coarse voxel centres a
    # short baseline only ever sees one grid layer, and its normal is the grid's
    seeds = rng.integers(0, len(points), iterations)
    _, near = cKDTree(points).query(points[seeds], k=min(64, len(points)))
    pick = rng.integers(near.shape[1] * 2 // 3, near.shape[1], (iterations, 2))
    a, b, c = points[seeds], points[np.take_along_axis(near, pick[:, :1], 1)[:, 0]], \
        points[np.take_along_axis(near, pick[:, 1:], 1)[:, 0]]
    normals = np.cross(b - a, c - a)
    length = np.linalg.norm(normals, axis=1)
    ok = length > 1e-9
    normals, a = normals[ok] / length[ok, None], a[ok]
    ok = np.abs(normals @ prior) >= cos_min
    if not ok.any():
        return None
    normals, offsets = normals[ok], np.einsum("ij,ij->i", normals[ok], a[ok])
    residual = np.abs(points.astype(np.float32) @ normals.T.astype(np.float32) - offsets.astype(np.float32))
    cost = (np.minimum(residual, tol) ** 2).sum(0)
    best = None
    for index in np.argsort(cost)[:5]:  # refine the best few: a local triple's normal is noisy
        normal, offset = normals[index], offsets[index]
        for _ in range(6):
            inliers = np.abs(points @ normal - offset) <= tol
            if inliers.sum() < 3:
                break
            normal, centroid, _ = _fit(points[inliers])
            offset = float(normal @ centroid)
        if abs(normal @ prior) < cos_min:
            continue
        refined = float((np.minimum(np.abs(points @ normal - offset), tol) ** 2).sum())
        if best is None or refined < best[0]:
            best = (refined, normal, np.abs(points @ normal - offset) <= tol)
    return None if best is None else (best[1], best[2])


def estimate_up(points: np.ndarray, cameras: CameraAxes, tolerance: float, min_support: int = 60,
                max_planes: int = 4, iterations: int = 200, max_points: int = 4000,
                seed: int = 0) -> GravityEstimate | None:
    """Up direction of a map from depth points or voxel centres (N, 3) and the keyframes' axes;
    ``tolerance`` is the plane band in metres. None without any camera."""
    found = cameras.prior()
    if found is None:
        return None
    prior, cone_deg = found
    fallback = GravityEstimate(prior, _angle_to_z(prior), "camera prior", 0)
    rng = np.random.default_rng(seed)
    points = np.asarray(points, np.float64).reshape(-1, 3)
    if len(points) > max_points:
        points = points[rng.choice(len(points), max_points, replace=False)]
    cos_min = math.cos(math.radians(cone_deg))
    planes = []  # (normal signed up, inlier points)
    remaining = points
    for _ in range(max_planes):
        if len(remaining) < max(min_support, 3):
            break
        plane = _best_plane(remaining, prior, cos_min, tolerance, rng, iterations)
        if plane is None or plane[1].sum() < min_support:
            break
        normal, inliers = plane
        planes.append((normal if normal @ prior > 0 else -normal, remaining[inliers]))
        remaining = remaining[~inliers]
    if not planes:
        return fallback
    reference = max(planes, key=lambda p: len(p[1]))
    cos_parallel = math.cos(math.radians(_PARALLEL_DEG))
    candidates = []
    for normal, on_plane in planes:
        if normal @ reference[0] < cos_parallel or len(on_plane) < len(reference[1]) / 4:
            continue
        normal, centroid, s = _fit(on_plane)
        if s[1] / math.sqrt(len(on_plane)) < _MIN_EXTENT_M:  # a strip: its normal is not determined
            continue
        normal = normal if normal @ prior > 0 else -normal
        candidates.append((float(centroid @ reference[0]), normal, len(on_plane)))
    if not candidates:
        return fallback
    _, up, support = min(candidates, key=lambda c: c[0])  # the lowest: the floor
    return GravityEstimate(up, _angle_to_z(up), "floor", support)


def leveling_rotation(up: np.ndarray) -> np.ndarray:
    """(3, 3) rotation taking ``up`` to +z by the smallest turn (no spin about z)."""
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    axis = np.cross(up, [0.0, 0.0, 1.0])
    s, c = np.linalg.norm(axis), float(up[2])
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    return Rotation.from_rotvec(axis / s * math.atan2(s, c)).as_matrix()
