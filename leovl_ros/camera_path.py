"""The camera's path through a map: keyframe positions in fusion order, saved in the scene's metadata.

A scene file then says where the robot was when it mapped (``leovl-scene show`` draws it).
Decision: positions only (no orientation), rounded to millimetres, at most ``max_points``:
past that every other point is dropped, so hours of mapping keep a bounded, evenly thinned path.
"""
from __future__ import annotations

import json

import numpy as np

__all__ = ["CAMERA_PATH_KEY", "CameraPath"]

CAMERA_PATH_KEY = "camera_path"  # VoxelMap.metadata key: JSON [[x, y, z], ...] in the map frame, metres


class CameraPath:
    def __init__(self, points: np.ndarray | None = None, max_points: int = 4096) -> None:
        self.max_points = max_points
        self._points: list[tuple[float, float, float]] = [] if points is None else [tuple(p) for p in points]
        self._stride = 1  # keyframes per stored point (doubles at each thinning)
        self._seen = 0

    def add(self, T_map_camera: np.ndarray) -> None:
        """Record a fused keyframe's camera position."""
        self._seen += 1
        if (self._seen - 1) % self._stride:
            return
        self._points.append(tuple(round(float(v), 3) for v in T_map_camera[:3, 3]))
        if len(self._points) > self.max_points:
            self._points = self._points[::2]
            self._stride *= 2

    def rotate(self, R: np.ndarray) -> None:
        """Turn the path with its map (gravity levelling rotates the map about the origin)."""
        self._points = [tuple(round(float(v), 3) for v in p) for p in self.points @ np.asarray(R).T]

    @property
    def points(self) -> np.ndarray:
        """(N, 3) positions, oldest first."""
        return np.asarray(self._points, dtype=np.float64).reshape(-1, 3)

    def to_metadata(self) -> str:
        return json.dumps(self._points, separators=(",", ":"))

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "CameraPath":
        """The path saved with a scene; empty for scenes saved without one. ValueError if malformed."""
        raw = metadata.get(CAMERA_PATH_KEY, "")
        if not raw:
            return cls()
        try:
            points = np.asarray(json.loads(raw), dtype=np.float64)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"metadata {CAMERA_PATH_KEY!r} is not a list of [x, y, z]: {exc}") from exc
        if points.size and (points.ndim != 2 or points.shape[1] != 3 or not np.isfinite(points).all()):
            raise ValueError(f"metadata {CAMERA_PATH_KEY!r} is not a list of finite [x, y, z]")
        return cls(points.reshape(-1, 3))
