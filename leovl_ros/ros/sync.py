"""Time alignment of the node's sensor streams: camera_info per image and a pose buffer
(RGB/depth pairing is ``leovl_ros.scans.pairing``, shared with the bag reader).

ROS-free (plain Python + numpy/scipy), so both are unit-tested without DDS. Hand-written
because ``message_filters`` and ``tf2_ros`` (BufferCore) are not installable from PyPI, and
the node must run where they are absent.
"""
from __future__ import annotations

import bisect
import threading
from typing import Generic, TypeVar

import numpy as np

from ..geometry import pose_at

__all__ = ["CameraInfoCache", "PoseBuffer", "PoseLookupError"]

T = TypeVar("T")


class CameraInfoCache(Generic[T]):
    """The camera_info for an image: the one with the image's stamp when the driver stamps
    them alike (as image_transport's CameraPublisher does), else the latest.

    camera_info and images arrive on different subscriptions, so an image may be handled
    before the info sent with it. :meth:`get` waits up to ``first_wait_s`` for the first info
    and, once infos have been seen carrying image stamps, up to ``match_wait_s`` for the
    image's own; a driver that publishes one latched info never waits. Thread-safe.
    """

    def __init__(self, first_wait_s: float = 1.0, match_wait_s: float = 0.2, keep: int = 32) -> None:
        self.first_wait_s, self.match_wait_s, self.keep = first_wait_s, match_wait_s, keep
        self._latest: T | None = None
        self._by_stamp: dict[float, T] = {}  # insertion order = arrival order
        self._stamped = False  # an info has carried an image's stamp
        self._cond = threading.Condition()

    def add(self, stamp_s: float, info: T) -> None:
        with self._cond:
            self._latest = info
            self._by_stamp[stamp_s] = info
            while len(self._by_stamp) > self.keep:
                del self._by_stamp[next(iter(self._by_stamp))]
            self._cond.notify_all()

    def get(self, stamp_s: float) -> T | None:
        """The info for an image stamped ``stamp_s``; None if no info arrived in time."""
        with self._cond:
            if self._latest is None:
                self._cond.wait_for(lambda: self._latest is not None, self.first_wait_s)
            if self._stamped or self._latest is not None and stamp_s in self._by_stamp:
                self._cond.wait_for(lambda: stamp_s in self._by_stamp, self.match_wait_s)
            match = self._by_stamp.get(stamp_s)
            self._stamped = self._stamped or match is not None
            return match if match is not None else self._latest


class PoseLookupError(LookupError):
    """No pose can be given for a stamp; the message says why (for the node's log)."""


class PoseBuffer:
    """Stamped 4x4 poses; ``lookup`` interpolates at any stamp inside the buffered range.

    Between two buffered poses at most ``max_gap_s`` apart the pose is interpolated
    (translation linearly, rotation by slerp). Outside the range, the nearest end pose is
    used when it is within ``tolerance_s``. ``lookup(..., timeout_s)`` waits for a newer
    pose when the stamp is ahead of the buffer (images often arrive before odometry).
    Thread-safe: poses arrive on one callback thread, lookups come from another.
    """

    def __init__(self, max_poses: int = 400, tolerance_s: float = 0.05, max_gap_s: float = 0.5) -> None:
        if tolerance_s < 0 or max_gap_s <= 0 or max_poses < 2:
            raise ValueError(
                f"need tolerance_s >= 0, max_gap_s > 0, max_poses >= 2; got {tolerance_s}, {max_gap_s}, {max_poses}"
            )
        self.tolerance_s = float(tolerance_s)
        self.max_gap_s = float(max_gap_s)
        self.max_poses = int(max_poses)
        self._stamps: list[float] = []  # ascending
        self._poses: list[np.ndarray] = []
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._stamps)

    def add(self, stamp_s: float, T: np.ndarray) -> None:
        """Buffer a (4, 4) pose. Out-of-order stamps are inserted in order; a stamp far
        older than the buffer (a replayed bag restarting) clears it first."""
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.isfinite(T).all():
            raise ValueError(f"pose must be a finite 4x4 matrix, got shape {T.shape}")
        with self._cond:
            if self._stamps and stamp_s < self._stamps[0] - self.max_gap_s:
                self._stamps.clear()
                self._poses.clear()
            i = bisect.bisect_right(self._stamps, stamp_s)
            self._stamps.insert(i, stamp_s)
            self._poses.insert(i, T)
            if len(self._stamps) > self.max_poses:
                del self._stamps[0], self._poses[0]
            self._cond.notify_all()

    def lookup(self, stamp_s: float, timeout_s: float = 0.0) -> np.ndarray:
        """(4, 4) pose at ``stamp_s``; raises :class:`PoseLookupError` with the reason."""
        with self._cond:
            if timeout_s > 0:
                self._cond.wait_for(lambda: bool(self._stamps) and self._stamps[-1] >= stamp_s, timeout_s)
            if not self._stamps:
                raise PoseLookupError("no pose received yet")
            pose = pose_at(self._stamps, self._poses, stamp_s, self.tolerance_s, self.max_gap_s)
            if pose is not None:
                return pose
            stamps = self._stamps
            i = bisect.bisect_left(stamps, stamp_s)
            gap = min(abs(stamps[j] - stamp_s) for j in (i - 1, i) if 0 <= j < len(stamps))
            raise PoseLookupError(
                f"no pose within {self.tolerance_s:.3f} s of stamp {stamp_s:.3f} "
                f"(buffered poses cover {stamps[0]:.3f}..{stamps[-1]:.3f}; nearest is {gap:.3f} s away)"
            )
