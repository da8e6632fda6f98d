"""Which way is up in a map: from the cameras that built it and the horizontal planes it holds.

Height RoPE and column pooling (cfg.py) assume a z-up map frame (REP-103). Many SLAM systems
and datasets instead put the world frame at the first camera (y down), or slightly tilted;
the map then lies on its side and nothing fails loudly. This module estimates the up
direction so the node can report the tilt and, if asked, level the poses.

Method (the paper is silent; a standard two-step choice):
1. Prior from the cameras: an RGB-D camera is held roughly upright, so the mean of the
   optical y axes (image down) of the keyframes points roughly down. Robots pitch cameras
   by tens of degrees, so this is only a prior.
2. Refinement by a horizontal plane: RANSAC over voxel centres for planes whose normal is
   within ``max_prior_deg`` of the prior (floor, table tops, ceiling: all horizontal), the
   one with most inliers wins and is refitted by least squares. Its normal, signed like
   the prior, is "up". With too little support the prior alone is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["GravityEstimate", "estimate_up", "leveling_rotation"]


@dataclass(frozen=True)
class GravityEstimate:
    up: np.ndarray  # (3,) unit vector, map frame
    angle_deg: float  # between ``up`` and the map's +z
    source: str  # "horizontal plane" or "camera prior"
    support: int  # voxel centres on the plane (0 for the camera prior)


def _angle_to_z(up: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip(up[2], -1.0, 1.0))))


def estimate_up(centers: np.ndarray, camera_down_sum: np.ndarray, voxel_size: float,
                max_prior_deg: float = 35.0, min_support: int = 30, iterations: int = 200,
                max_points: int = 20000, seed: int = 0) -> GravityEstimate | None:
    """Up direction of a map from its voxel centres (V, 3) and the sum of its keyframes'
    optical y axes in the map frame (3,); None without any camera."""
    norm = float(np.linalg.norm(camera_down_sum))
    if norm < 1e-9:
        return None
    prior = -np.asarray(camera_down_sum, np.float64) / norm
    points = np.asarray(centers, np.float64).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    if len(points) > max_points:
        points = points[rng.choice(len(points), max_points, replace=False)]
    best, best_inliers = None, None
    if len(points) >= max(min_support, 3):
        cos_max, tol = math.cos(math.radians(max_prior_deg)), 0.5 * voxel_size
        samples = rng.integers(0, len(points), (iterations, 3))
        for i, j, k in samples:
            n = np.cross(points[j] - points[i], points[k] - points[i])
            length = np.linalg.norm(n)
            if length < 1e-9 or abs(n @ prior) / length < cos_max:
                continue
            n /= length
            inliers = np.abs((points - points[i]) @ n) <= tol
            if best_inliers is None or inliers.sum() > best_inliers.sum():
                best, best_inliers = n, inliers
    if best is None or best_inliers.sum() < min_support:
        return GravityEstimate(prior, _angle_to_z(prior), "camera prior", 0)
    on_plane = points[best_inliers]
    normal = np.linalg.svd(on_plane - on_plane.mean(0), full_matrices=False)[2][-1]  # least-squares refit
    up = normal if normal @ prior > 0 else -normal
    return GravityEstimate(up, _angle_to_z(up), "horizontal plane", int(best_inliers.sum()))


def leveling_rotation(up: np.ndarray) -> np.ndarray:
    """(3, 3) rotation taking ``up`` to +z by the smallest turn (no spin about z)."""
    up = np.asarray(up, np.float64) / np.linalg.norm(up)
    axis = np.cross(up, [0.0, 0.0, 1.0])
    s, c = np.linalg.norm(axis), float(up[2])
    if s < 1e-12:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    return Rotation.from_rotvec(axis / s * math.atan2(s, c)).as_matrix()
