"""Pinhole camera geometry: intrinsics, depth decoding, back-projection, keyframes, poses.

Conventions: pixel (u, v) = (column, row) with integer coordinates at pixel centres (the
OpenCV / ROS CameraInfo convention); ``T_map_camera`` is a 4x4 camera-to-map transform in
the optical frame (x right, y down, z forward). Pure numpy/scipy: no rclpy, no torch.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "Intrinsics",
    "KeyframeSelector",
    "backproject",
    "cell_points",
    "depth_to_metres",
    "look_at",
    "pose_at",
    "xyz_quat_to_matrix",
]


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels (no distortion)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self) -> None:
        if not (self.fx > 0 and self.fy > 0 and math.isfinite(self.fx) and math.isfinite(self.fy)):
            raise ValueError(f"focal lengths must be positive and finite, got fx={self.fx}, fy={self.fy}")
        if not (math.isfinite(self.cx) and math.isfinite(self.cy)):
            raise ValueError(f"principal point must be finite, got cx={self.cx}, cy={self.cy}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    @property
    def K(self) -> np.ndarray:
        """(3, 3) float64 camera matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]], dtype=np.float64)

    @classmethod
    def from_K(cls, K: np.ndarray | Sequence[float], width: int, height: int) -> "Intrinsics":
        """From a (3, 3) matrix (or its 9 row-major values). Skew must be zero."""
        K = np.asarray(K, dtype=np.float64)
        if K.size != 9:
            raise ValueError(f"K must have 9 values (3x3), got shape {K.shape}")
        K = K.reshape(3, 3)
        if abs(K[0, 1]) > 1e-9 or not np.allclose(K[2], [0.0, 0.0, 1.0]) or abs(K[1, 0]) > 1e-9:
            raise ValueError(f"K must be [[fx,0,cx],[0,fy,cy],[0,0,1]] (no skew), got {K.tolist()}")
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), int(width), int(height))

    @classmethod
    def from_camera_info(
        cls,
        k: Sequence[float],
        p: Sequence[float],
        width: int,
        height: int,
        rectified: bool = False,
    ) -> "Intrinsics":
        """From sensor_msgs/CameraInfo ``k`` (9 values) and ``p`` (12 values).

        ``rectified=True`` takes the intrinsics of the rectified image from ``p`` (as the
        CameraInfo docs prescribe for ``image_rect``); an all-zero ``p`` is rejected then.
        """
        if not rectified:
            return cls.from_K(k, width, height)
        P = np.asarray(p, dtype=np.float64)
        if P.size != 12:
            raise ValueError(f"CameraInfo p must have 12 values (3x4), got {P.size}")
        P = P.reshape(3, 4)
        if P[0, 0] <= 0:
            raise ValueError("CameraInfo p is empty (fx'=0): the camera is not calibrated for rectified images")
        return cls.from_K(P[:, :3], width, height)

    def scaled(self, width: int, height: int) -> "Intrinsics":
        """Intrinsics of the same camera after resizing the whole image to ``width`` x ``height``.

        Pixel centres map as u' + 0.5 = (u + 0.5) * sx, so cx' = (cx + 0.5) * sx - 0.5 (the
        convention of cv2.resize / PIL with pixel-centre sampling).
        """
        if width <= 0 or height <= 0:
            raise ValueError(f"target size must be positive, got {width}x{height}")
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, int(width), int(height)
        )


def depth_to_metres(depth: np.ndarray) -> np.ndarray:
    """(H, W) depth as float32 metres: uint16 is millimetres (16UC1), floats are metres (32FC1).

    Invalid values pass through (0 stays 0, NaN/inf stay), callers mask them.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise ValueError(f"depth must be a 2-D (H, W) image, got shape {depth.shape}")
    if depth.dtype == np.uint16:
        return depth.astype(np.float32) * np.float32(0.001)
    if np.issubdtype(depth.dtype, np.floating):
        return depth.astype(np.float32, copy=False)
    raise ValueError(f"depth must be uint16 millimetres or float metres, got dtype {depth.dtype}")


def _check_pose(T_map_camera: np.ndarray) -> np.ndarray:
    T = np.asarray(T_map_camera, dtype=np.float64)
    if T.shape != (4, 4):
        raise ValueError(f"T_map_camera must be 4x4, got shape {T.shape}")
    if not np.isfinite(T).all():
        raise ValueError("T_map_camera has non-finite values (an invalid pose, e.g. ScanNet's inf poses)")
    return T


def _check_depth(depth_m: np.ndarray, intrinsics: Intrinsics) -> None:
    if depth_m.shape != (intrinsics.height, intrinsics.width):
        raise ValueError(
            f"depth is {depth_m.shape[1]}x{depth_m.shape[0]} but intrinsics are for "
            f"{intrinsics.width}x{intrinsics.height}; use Intrinsics.scaled() after resizing"
        )


def _valid_depth(depth_m: np.ndarray, depth_min: float, depth_max: float) -> np.ndarray:
    """(H, W) float32 depth with every invalid pixel (0, NaN, inf, out of range) set to 0."""
    with np.errstate(invalid="ignore"):
        ok = (depth_m >= depth_min) & (depth_m <= depth_max)  # NaN compares False
    return np.where(ok, depth_m, np.float32(0.0)).astype(np.float32, copy=False)


@lru_cache(maxsize=8)
def _pixel_rays(intrinsics: Intrinsics) -> tuple[np.ndarray, np.ndarray]:
    """Per-column x/z and per-row y/z ratios of the pixel rays: (W,) and (H,) float32.

    With no distortion K^-1 [u, v, 1] = [(u-cx)/fx, (v-cy)/fy, 1] is separable, so the cached
    "pixel grid" is two vectors instead of an (H, W, 3) array.
    """
    rx = (np.arange(intrinsics.width, dtype=np.float64) - intrinsics.cx) / intrinsics.fx
    ry = (np.arange(intrinsics.height, dtype=np.float64) - intrinsics.cy) / intrinsics.fy
    return rx.astype(np.float32), ry.astype(np.float32)


def backproject(
    depth_m: np.ndarray,
    intrinsics: Intrinsics,
    T_map_camera: np.ndarray,
    depth_min: float = 0.1,
    depth_max: float = 10.0,
) -> np.ndarray:
    """(H, W, 3) float32 map-frame point of every pixel, p = T [D(q) K^-1 q; 1]; NaN where invalid."""
    depth_m = np.asarray(depth_m, dtype=np.float32)
    _check_depth(depth_m, intrinsics)
    T = _check_pose(T_map_camera)
    rx, ry = _pixel_rays(intrinsics)
    d = _valid_depth(depth_m, depth_min, depth_max)  # (H, W)
    cam = np.stack([d * rx[None, :], d * ry[:, None], d], axis=-1)  # (H, W, 3) camera frame
    pts = cam @ T[:3, :3].T.astype(np.float32) + T[:3, 3].astype(np.float32)
    pts[d == 0] = np.nan
    return pts


@lru_cache(maxsize=8)
def _cell_pooling(intrinsics: Intrinsics, grid_hw: tuple[int, int]) -> dict[str, np.ndarray]:
    """Pixel-to-cell membership matrices, cached per (intrinsics, grid).

    Row v belongs to cell row floor((v + 0.5) * h / H) (pixel centres, so the grid covers the
    whole image however it was resized for the encoder); columns likewise. Membership is
    separable, so per-cell sums are two small matmuls S_rows @ X @ S_cols^T instead of a
    scatter over all H*W pixels.
    """
    h, w = grid_hw
    H, W = intrinsics.height, intrinsics.width
    rx, ry = _pixel_rays(intrinsics)
    row_cell = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    col_cell = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    s_rows = np.zeros((h, H), np.float32)
    s_rows[row_cell, np.arange(H)] = 1.0
    s_cols = np.zeros((w, W), np.float32)
    s_cols[col_cell, np.arange(W)] = 1.0
    return {
        "s_rows": s_rows,  # (h, H)
        "s_rows_ry": s_rows * ry[None, :],  # (h, H) weights y/z
        "s_cols_t": np.ascontiguousarray(s_cols.T),  # (W, w)
        "s_cols_rx_t": np.ascontiguousarray((s_cols * rx[None, :]).T),  # (W, w) weights x/z
        "pixels": np.outer(s_rows.sum(1), s_cols.sum(1)).astype(np.float32),  # (h, w) pixels per cell
    }


def cell_points(
    depth_m: np.ndarray,
    intrinsics: Intrinsics,
    T_map_camera: np.ndarray,
    grid_hw: tuple[int, int],
    depth_min: float = 0.1,
    depth_max: float = 10.0,
    min_valid_fraction: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """One map-frame point per feature cell: the mean of the cell's valid back-projected pixels.

    Returns ``points`` (N, 3) float32 and ``cell_index`` (N,) int64, the row-major index into
    the h*w feature map, ascending. Cells with fewer than ``min_valid_fraction`` of their
    pixels valid are dropped. The mean is taken in the camera frame and then transformed,
    which is the same point since the transform is affine.
    """
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if h <= 0 or w <= 0:
        raise ValueError(f"grid_hw must be positive, got {grid_hw}")
    depth_m = np.asarray(depth_m, dtype=np.float32)
    _check_depth(depth_m, intrinsics)
    if h > intrinsics.height or w > intrinsics.width:
        raise ValueError(f"feature grid {h}x{w} is finer than the {intrinsics.height}x{intrinsics.width} depth image")
    if not 0.0 <= min_valid_fraction <= 1.0:
        raise ValueError(f"min_valid_fraction must be in [0, 1], got {min_valid_fraction}")
    T = _check_pose(T_map_camera)
    pool = _cell_pooling(intrinsics, (h, w))

    d = _valid_depth(depth_m, depth_min, depth_max)  # (H, W)
    rows_d = pool["s_rows"] @ d  # (h, W)
    sum_z = rows_d @ pool["s_cols_t"]  # (h, w) sum of z
    sum_x = rows_d @ pool["s_cols_rx_t"]  # (h, w) sum of z * x/z
    sum_y = (pool["s_rows_ry"] @ d) @ pool["s_cols_t"]  # (h, w) sum of z * y/z
    count = pool["s_rows"] @ (d > 0).astype(np.float32) @ pool["s_cols_t"]  # (h, w) valid pixels

    keep = (count > 0) & (count >= min_valid_fraction * pool["pixels"])
    cell_index = np.flatnonzero(keep).astype(np.int64)  # row-major, ascending
    n = count.reshape(-1)[cell_index]
    cam = np.stack([sum_x.reshape(-1)[cell_index], sum_y.reshape(-1)[cell_index], sum_z.reshape(-1)[cell_index]], 1)
    cam /= n[:, None]  # (N, 3) camera frame
    points = cam.astype(np.float64) @ T[:3, :3].T + T[:3, 3]
    return points.astype(np.float32), cell_index


class KeyframeSelector:
    """Accepts a frame when the camera moved or turned enough since the last keyframe.

    A frame is a keyframe when it is the first one, or when it comes at least
    1/``max_rate_hz`` s after the last keyframe AND the camera moved >= ``translation_m`` or
    rotated >= ``rotation_deg`` since then. A stamp earlier than the last keyframe's (a bag
    replayed from its start, sim time reset) skips the rate check instead of blocking fusion
    until time catches up. ``max_rate_hz=0`` disables the rate limit.
    """

    def __init__(self, translation_m: float = 0.1, rotation_deg: float = 10.0, max_rate_hz: float = 5.0):
        if translation_m < 0 or rotation_deg < 0 or max_rate_hz < 0:
            raise ValueError(
                f"keyframe thresholds must be >= 0, got translation_m={translation_m}, "
                f"rotation_deg={rotation_deg}, max_rate_hz={max_rate_hz}"
            )
        self.translation_m = float(translation_m)
        self.rotation_rad = math.radians(rotation_deg)
        self.min_interval_s = 1.0 / max_rate_hz if max_rate_hz > 0 else 0.0
        self.reset()

    def reset(self) -> None:
        """Forget the last keyframe: the next frame is accepted."""
        self._last_T: np.ndarray | None = None
        self._last_stamp = 0.0

    def accept(self, T_map_camera: np.ndarray, stamp_s: float) -> bool:
        """True (and remember this pose) if the frame at ``stamp_s`` seconds is a keyframe."""
        T = _check_pose(T_map_camera)
        if self._last_T is not None:
            dt = stamp_s - self._last_stamp
            if 0.0 <= dt < self.min_interval_s:
                return False
            moved = np.linalg.norm(T[:3, 3] - self._last_T[:3, 3]) >= self.translation_m
            turned = Rotation.from_matrix(self._last_T[:3, :3].T @ T[:3, :3]).magnitude() >= self.rotation_rad
            if not (moved or turned):
                return False
        self._last_T, self._last_stamp = T, float(stamp_s)
        return True


def look_at(eye: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """(4, 4) camera-to-map pose of an optical frame at `eye` looking along `forward`."""
    f = forward / np.linalg.norm(forward)
    r = np.cross(f, [0.0, 0.0, 1.0])  # x right = forward x up (z-up map)
    if np.linalg.norm(r) < 1e-6:
        raise ValueError("camera cannot look straight up or down")
    r /= np.linalg.norm(r)
    T = np.eye(4)
    T[:3, :3] = np.stack([r, np.cross(f, r), f], axis=1)  # columns: x right, y down, z forward
    T[:3, 3] = eye
    return T


def xyz_quat_to_matrix(xyz: Sequence[float], quat_xyzw: Sequence[float]) -> np.ndarray:
    """(4, 4) from a translation and a quaternion (x, y, z, w; normalised here). Raises
    ValueError for non-finite values or an all-zero quaternion (an uninitialised orientation)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    t = np.asarray(xyz, dtype=np.float64)
    if q.shape != (4,) or t.shape != (3,) or not (np.isfinite(q).all() and np.isfinite(t).all()):
        raise ValueError(f"pose needs 3 finite coordinates and 4 quaternion values, got {list(xyz)}, {list(quat_xyzw)}")
    if np.linalg.norm(q) < 1e-6:
        raise ValueError("pose quaternion is all zeros (an uninitialised orientation)")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q).as_matrix()
    T[:3, 3] = t
    return T


def pose_at(stamps: Sequence[float], poses: Sequence[np.ndarray], stamp_s: float, tolerance_s: float = 0.0,
            max_gap_s: float = math.inf) -> np.ndarray | None:
    """(4, 4) pose at ``stamp_s`` from ``poses`` at ascending ``stamps`` (a new array), or None.

    Between two poses at most ``max_gap_s`` apart: translation linearly, rotation by slerp.
    Otherwise (outside the range, or across a wider gap) the nearest pose if it lies within
    ``tolerance_s``: a pose is never extrapolated.
    """
    if not stamps:
        return None
    i = bisect.bisect_left(stamps, stamp_s)
    if i < len(stamps) and stamps[i] == stamp_s:
        return np.array(poses[i], dtype=np.float64)
    if 0 < i < len(stamps):
        t0, t1 = stamps[i - 1], stamps[i]
        if t1 - t0 <= max_gap_s:
            return _slerp_pose(np.asarray(poses[i - 1]), np.asarray(poses[i]), (stamp_s - t0) / (t1 - t0))
        near = i - 1 if stamp_s - t0 <= t1 - stamp_s else i
    else:
        near = 0 if i == 0 else len(stamps) - 1
    return np.array(poses[near], dtype=np.float64) if abs(stamps[near] - stamp_s) <= tolerance_s else None


def _slerp_pose(T0: np.ndarray, T1: np.ndarray, a: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (1.0 - a) * T0[:3, 3] + a * T1[:3, 3]
    # Slerp as R0 * exp(a * log(R0^-1 R1)): scipy's Slerp result at half its per-call set-up cost.
    r0, r1 = Rotation.from_matrix(T0[:3, :3]), Rotation.from_matrix(T1[:3, :3])
    T[:3, :3] = (r0 * Rotation.from_rotvec(a * (r0.inv() * r1).as_rotvec())).as_matrix()
    return T
