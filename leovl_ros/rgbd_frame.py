"""The one posed RGB-D frame record, shared by the live node, the scan readers, bags and training.

Units are in the field names. Depth is always float32 metres: the node converts a 16UC1
image when it builds the record (about 0.1 ms for 640x480 here), so every consumer reads
one unit and a millimetre array can never pass as metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import Intrinsics

__all__ = ["RGBDFrame"]


@dataclass(frozen=True)
class RGBDFrame:
    rgb: np.ndarray  # (H, W, 3) uint8, may be a read-only strided view of a message
    depth_m: np.ndarray  # (h, w) float32 metres registered to rgb (any h, w of rgb's aspect); 0 / NaN = invalid
    intrinsics: Intrinsics  # of the depth image
    T_map_camera: np.ndarray  # (4, 4) optical frame -> map
    stamp_s: float

    def __post_init__(self) -> None:
        rgb, depth = self.rgb, self.depth_m
        if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb must be a (H, W, 3) uint8 array, got {getattr(rgb, 'dtype', type(rgb))} "
                             f"{getattr(rgb, 'shape', '')}")
        if not isinstance(depth, np.ndarray) or depth.ndim != 2 or depth.dtype != np.float32:
            got = f"{getattr(depth, 'dtype', type(depth))} {getattr(depth, 'shape', '')}"
            raise ValueError(f"depth_m must be a (h, w) float32 array of metres, got {got} "
                             "(uint16 millimetres: convert with geometry.depth_to_metres)")
        if depth.shape != (self.intrinsics.height, self.intrinsics.width):
            raise ValueError(f"depth is {depth.shape[1]}x{depth.shape[0]} but the intrinsics are for "
                             f"{self.intrinsics.width}x{self.intrinsics.height}; use Intrinsics.scaled()")
        if np.shape(self.T_map_camera) != (4, 4):
            raise ValueError(f"T_map_camera must be 4x4, got shape {np.shape(self.T_map_camera)}")
