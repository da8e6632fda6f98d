"""Header stamps (``builtin_interfaces/Time``) as seconds: one conversion for every reader."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["stamp_to_seconds"]


def stamp_to_seconds(stamp: Any) -> float:
    """Seconds of a stamp: an rclpy or rosbags ``Time`` message (``sec``, ``nanosec``), or its
    dict form as the interaction log stores it (KeyError / TypeError where it is not one)."""
    if isinstance(stamp, Mapping):
        return float(stamp["sec"]) + float(stamp["nanosec"]) * 1e-9
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9
