"""Z-up, floor-centred map frames for scans whose world frame is not (3RScan, MultiScan,
ARKitScenes; ScanNet has its own ``axisAlignment``).

LEO and SceneVerse put every scan z-up with the origin at the centre of the floor
(data-formats.md); height RoPE (floor(z / voxel) as the position) and column pooling only
mean the same thing across scans in such a frame. Each reader states where its up axis
comes from (the dataset's world convention or its alignment file). The origin is then found
from the data, because none of these datasets stores it:

- floor: the 2nd percentile of the heights of the scan's depth points (every 8th pixel of
  every frame the reader reads), as SceneVerse's preprocessing takes the lowest points. A
  low percentile, not the minimum: real depth has a few points below the floor
  (reflections, noise). Always from the data, even after an alignment file: MultiScan's
  aligned frame is z-up but centred at mid-height (floor at z = -1.3 m in real files).
- centre: the middle of the points' x and y extent between their 2nd and 98th percentiles.

Decision (paper silent): no yaw alignment of walls to axes (SceneVerse's own alignment
matrices are not published with the scans), so boxes and situations given in SceneVerse's
frame for these scans can be off by a yaw and a small shift; anchors converted from the
scans' own annotations (object_boxes.py) use this same alignment and are exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from leovl_ros.geometry import Intrinsics, backproject
from leovl_ros.gravity import DEPTH_TOLERANCE_M, CameraAxes, estimate_up

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


def floor_centre_alignment(T_up_world: np.ndarray, gravity: str, points: np.ndarray) -> Alignment:
    """Alignment = translation to the floor centre after ``T_up_world`` (a z-up rotation or
    alignment); ``points`` are native world points."""
    if len(points) < 10:
        raise ValueError("too few valid depth points to find the floor (check depth units and poses)")
    up = points @ T_up_world[:3, :3].T + T_up_world[:3, 3]
    lo, hi = np.percentile(up[:, :2], [FLOOR_PERCENTILE, 100 - FLOOR_PERCENTILE], axis=0)
    shift = -np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, np.percentile(up[:, 2], FLOOR_PERCENTILE)])
    T = np.eye(4)
    T[:3, 3] = shift
    return Alignment(T @ T_up_world, gravity,
                     f"floor = {FLOOR_PERCENTILE:g} % height percentile, xy centre of the depth points")


@dataclass(frozen=True)
class UprightCheck:
    """How far the scan's up axis (after ``T_up_world``) is from the scan's true up, and what says so."""

    angle_deg: float
    text: str


def upright_check(T_up_world: np.ndarray, camera_poses: Sequence[np.ndarray],
                  points: np.ndarray) -> UprightCheck | None:
    """Angle between +z (after ``T_up_world``) and the scan's up, judged modulo the four upright
    turns of the camera, then confirmed by the floor as the node does (gravity.py).

    Phones record portrait scans in landscape buffers, so a camera's image right may be its
    x or y axis. A scan is held one way: its image-right family is the one that stays
    horizontal ((axis . z)^2 smallest on average; pitch does not tilt it), the sign of its
    image down the one that points down. The camera angle is acos of the mean of that
    image-down axis along -z: a mean over cameras, not the angle of the summed axis, because
    with a wrong up axis the summed horizontal axes of a scan that turned around can point
    anywhere, including down. The floor (gravity.estimate_up, cameras turned upright) then
    gives the angle when found: a robot's pitched camera is not a tilted map. ``points``
    (N, 3) are native world points (depth samples); None without cameras.
    """
    if not len(camera_poses):
        return None
    R = np.stack([T_up_world[:3, :3] @ T[:3, :3] for T in camera_poses])  # (n, 3, 3) cameras in the z-up frame
    family = int(np.mean(R[:, 2, 1] ** 2) < np.mean(R[:, 2, 0] ** 2))  # 1: the y axes are the horizontal ones
    k = family if np.sum((R @ np.linalg.matrix_power(_QUARTER.T, family))[:, 2, 1]) <= 0 else family + 2
    turned = R @ np.linalg.matrix_power(_QUARTER.T, k)  # cameras turned upright (turn_view's convention)
    prior = math.degrees(math.acos(float(np.clip(-turned[:, 2, 1].mean(), -1.0, 1.0))))
    held = ("upright", "on their side (portrait)", "upside down", "on their side (portrait)")[k]
    text = f"cameras held {held}, their mean down axis is {prior:.0f} deg from -z"
    axes = CameraAxes()
    for r in turned:
        axes.add(r)
    up_points = points @ T_up_world[:3, :3].T + T_up_world[:3, 3]
    estimate = estimate_up(up_points, axes, DEPTH_TOLERANCE_M) if len(up_points) else None
    if estimate is None or not estimate.from_plane:
        return UprightCheck(prior, text + "; no floor found to confirm")
    return UprightCheck(estimate.angle_deg, text + f"; the floor ({estimate.support} depth points) puts up "
                                                   f"{estimate.angle_deg:.0f} deg from +z")


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
