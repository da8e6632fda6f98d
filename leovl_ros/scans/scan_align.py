"""Z-up, floor-centred map frames for scans whose world frame is not (3RScan, MultiScan,
ARKitScenes; ScanNet has its own ``axisAlignment``).

LEO and SceneVerse put every scan z-up with the origin at the centre of the floor
(data-formats.md); height RoPE (floor(z / voxel) as the position) and column pooling only
mean the same thing across scans in such a frame. Each reader states where its up axis
comes from (the dataset's world convention or its alignment file). The origin is then found
from the data, because none of these datasets stores it:

- floor: the 2nd percentile of the heights of the scan's depth points (every 8th pixel of
  every frame the reader reads). A low percentile, not the minimum: real depth has a few
  points below the floor (reflections, noise). An alignment file that already puts the floor
  at z = 0 (MultiScan) keeps its height.
- centre: the middle of the points' x and y extent between their 2nd and 98th percentiles.

Decision (paper silent): no yaw alignment of walls to axes (SceneVerse's own alignment
matrices are not published with the scans), so boxes and situations given in SceneVerse's
frame for these scans can be off by a yaw and a small shift; anchors converted from the
scans' own annotations (object_boxes.py) use this same alignment and are exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from leovl_ros.geometry import Intrinsics, backproject

FLOOR_PERCENTILE = 2.0
PIXEL_STEP = 8


@dataclass(frozen=True)
class Alignment:
    """``T``: native world -> map (z up, floor at z = 0, origin at the floor's centre)."""

    T: np.ndarray
    gravity: str  # how the up axis was obtained
    origin: str  # how the origin was obtained

    def describe(self) -> str:
        return f"gravity: {self.gravity}; origin: {self.origin}"


def sample_points(depth_m: np.ndarray, intrinsics: Intrinsics, T_world_camera: np.ndarray,
                  step: int = PIXEL_STEP) -> np.ndarray:
    """(N, 3) world points of every ``step``-th pixel with valid depth (0.1 .. 10 m)."""
    pts = backproject(depth_m, intrinsics, T_world_camera)[::step, ::step].reshape(-1, 3)
    return pts[np.isfinite(pts).all(1)]


def down_angle_deg(T_up_world: np.ndarray, camera_poses: Iterable[np.ndarray]) -> float | None:
    """Angle between -z (after ``T_up_world``) and the cameras' mean down axis (optical +y).

    A hand-held or robot camera is held roughly upright, so a large angle means the up axis
    is wrong; readers put it in the gravity text so a wrong convention shows in the logs.
    """
    downs = [(T_up_world[:3, :3] @ T[:3, :3])[:, 1] for T in camera_poses]
    if not downs:
        return None
    mean = np.mean(downs, axis=0)
    norm = float(np.linalg.norm(mean))
    if norm < 1e-6:
        return None
    return math.degrees(math.acos(float(np.clip(-mean[2] / norm, -1.0, 1.0))))


def floor_centre_alignment(T_up_world: np.ndarray, gravity: str, points: np.ndarray,
                           keep_height: bool = False) -> Alignment:
    """Alignment = translation to the floor centre after ``T_up_world`` (a z-up rotation,
    or a full alignment when ``keep_height``); ``points`` are native world points."""
    if len(points) < 10:
        raise ValueError("too few valid depth points to find the floor (check depth units and poses)")
    up = points @ T_up_world[:3, :3].T + T_up_world[:3, 3]
    lo, hi = np.percentile(up[:, :2], [FLOOR_PERCENTILE, 100 - FLOOR_PERCENTILE], axis=0)
    shift = -np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2,
                       0.0 if keep_height else np.percentile(up[:, 2], FLOOR_PERCENTILE)])
    T = np.eye(4)
    T[:3, 3] = shift
    origin = ("floor height from the alignment, xy centre of the depth points" if keep_height else
              f"floor = {FLOOR_PERCENTILE:g} % height percentile, xy centre of the depth points")
    return Alignment(T @ T_up_world, gravity, origin)


# One counter-clockwise quarter turn of an image: new camera axes x' = y, y' = -x, z' = z.
_QUARTER = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def upright_turns(T_map_camera: np.ndarray) -> int:
    """Counter-clockwise quarter turns (0-3) that bring the map's up (+z) closest to the
    image's up (-y): 1 for a frame held on its side with up pointing to the image's right.

    Decision (paper silent): the vision tower sees every frame upright. Phones and tablets
    record portrait scans sideways in landscape buffers (some ARKitScenes and 3RScan
    sequences), and a 2D encoder trained on upright photos sees such frames as turned; the
    turn changes nothing in the geometry (pixels, intrinsics and pose turn together).
    """
    up = T_map_camera[:3, :3].T @ np.array([0.0, 0.0, 1.0])  # map up in camera axes
    return int(np.argmax([-(np.linalg.matrix_power(_QUARTER, k) @ up)[1] for k in range(4)]))


def turn_view(rgb: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics, T_map_camera: np.ndarray,
              turns: int) -> tuple[np.ndarray, np.ndarray, Intrinsics, np.ndarray]:
    """The same view turned ``turns`` quarter turns counter-clockwise (np.rot90): colour,
    depth, the depth intrinsics and the camera pose, consistently."""
    k = turns % 4
    intr, T = intrinsics, T_map_camera.copy()
    for _ in range(k):  # pixel (u, v) of a W-wide image goes to (v, W - 1 - u)
        intr = Intrinsics(intr.fy, intr.fx, intr.cy, intr.width - 1 - intr.cx, intr.height, intr.width)
        T[:3, :3] = T[:3, :3] @ _QUARTER.T
    return np.ascontiguousarray(np.rot90(rgb, k)), np.ascontiguousarray(np.rot90(depth_m, k)), intr, T
