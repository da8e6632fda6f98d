"""How posed RGB-D frames become map points: the settings the node and ``build-scenes`` share.

One dataclass, :class:`FusionSettings`, is the live node's keyframe / depth parameters
(``keyframe_translation``, ``depth_min``, ...) and the training recipes' ``scenes.fusion``
keys alike, so a map the robot builds and a map trained on are made by the same rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Intrinsics, KeyframeSelector, cell_points
from .parameters import setting

__all__ = ["FusionSettings"]


@dataclass
class FusionSettings:
    keyframe_translation_m: float = setting("fuse a frame when the camera moved at least this many m", 0.1,
                                            param="keyframe_translation")
    keyframe_rotation_deg: float = setting("... or turned at least this many degrees since the last keyframe",
                                           10.0)
    depth_min: float = setting("depth below this (m) is invalid", 0.1)
    depth_max: float = setting("depth above this (m) is invalid", 10.0)
    min_valid_fraction: float = setting("a feature cell needs this fraction of valid depth pixels to be fused", 0.1)

    def __post_init__(self) -> None:
        # Decision (paper silent): depth 0 means "no measurement" in every depth format, so a
        # zero lower bound would fuse holes at the camera centre; both sides refuse it.
        if not 0 < self.depth_min < self.depth_max:
            raise ValueError(f"need 0 < depth_min < depth_max, got {self.depth_min}, {self.depth_max}")
        if self.keyframe_translation_m < 0 or self.keyframe_rotation_deg < 0:
            raise ValueError("keyframe translation and rotation thresholds must be >= 0")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ValueError(f"min_valid_fraction must be in [0, 1], got {self.min_valid_fraction}")

    def keyframe_selector(self, max_rate_hz: float) -> KeyframeSelector:
        """Keyframes by this rule; ``max_rate_hz`` 0 = no rate limit (offline fusion)."""
        return KeyframeSelector(self.keyframe_translation_m, self.keyframe_rotation_deg, max_rate_hz)

    def valid_pixels(self, depth_m: np.ndarray) -> int:
        """Pixels with a depth in [depth_min, depth_max] (NaN is invalid)."""
        with np.errstate(invalid="ignore"):
            return int(np.count_nonzero((depth_m >= self.depth_min) & (depth_m <= self.depth_max)))

    def cell_points(self, depth_m: np.ndarray, intrinsics: Intrinsics, T_map_camera: np.ndarray,
                    grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) map points and (N,) feature-cell indices of one frame, see :func:`cell_points`."""
        return cell_points(depth_m, intrinsics, T_map_camera, grid_hw, self.depth_min, self.depth_max,
                           self.min_valid_fraction)
