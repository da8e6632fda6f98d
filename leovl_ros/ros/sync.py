"""Time alignment of sensor streams: approximate-time RGB/depth pairing and a pose buffer.

ROS-free (plain Python + numpy/scipy), so both are unit-tested without DDS. Hand-written
because ``message_filters`` (ApproximateTimeSynchronizer) and ``tf2_ros`` (BufferCore) are
not installable from PyPI, and the node must run where they are absent.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from typing import Any, Generic, TypeVar

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = ["ApproximateTimePairer", "CameraInfoCache", "PoseBuffer", "PoseLookupError"]

T = TypeVar("T")
U = TypeVar("U")


class ApproximateTimePairer(Generic[T, U]):
    """Pairs two streams (e.g. RGB and depth) whose stamps differ by at most ``slop_s``.

    Greedy policy (simpler than message_filters' ApproximateTime, enough for cameras that
    stamp both images from one trigger): a new message is paired with the closest waiting
    message of the other stream within the slop; that pair is emitted and every older
    waiting message of both streams is discarded (it can only pair with something older
    than what was just emitted). Each queue keeps at most ``queue_size`` messages, so a
    stream whose partner never arrives costs bounded memory. Not thread-safe: call from one
    thread (the node's sensor callback group is mutually exclusive).
    """

    def __init__(self, slop_s: float = 0.02, queue_size: int = 10) -> None:
        if not slop_s >= 0:
            raise ValueError(f"slop must be >= 0 seconds, got {slop_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.slop_s = float(slop_s)
        self._queues: tuple[deque, deque] = (deque(maxlen=queue_size), deque(maxlen=queue_size))
        self.discarded = 0  # messages dropped without a partner (queue overflow or overtaken)
        self.nearest_miss_s: float | None = None  # smallest stamp gap of a message that found no partner

    def add_first(self, stamp_s: float, item: T) -> tuple[T, U, float] | None:
        """Add a message of the first stream; returns (first, second, stamp of first) when paired."""
        return self._add(0, stamp_s, item)

    def add_second(self, stamp_s: float, item: U) -> tuple[T, U, float] | None:
        """Add a message of the second stream; returns (first, second, stamp of first) when paired."""
        return self._add(1, stamp_s, item)

    def pending(self) -> tuple[int, int]:
        return len(self._queues[0]), len(self._queues[1])

    def _add(self, side: int, stamp_s: float, item: Any) -> tuple[Any, Any, float] | None:
        other = self._queues[1 - side]
        best = None
        for i, (s, _) in enumerate(other):
            dt = abs(s - stamp_s)
            if dt <= self.slop_s and (best is None or dt < best[1]):
                best = (i, dt)
        if best is None:
            if other:
                gap = min(abs(s - stamp_s) for s, _ in other)
                self.nearest_miss_s = gap if self.nearest_miss_s is None else min(self.nearest_miss_s, gap)
            mine = self._queues[side]
            self.discarded += len(mine) == mine.maxlen  # the oldest waiting message falls out
            mine.append((stamp_s, item))
            return None
        other_stamp, other_item = other[best[0]]
        for _ in range(best[0] + 1):
            other.popleft()  # the match and everything that arrived before it
        self.discarded += best[0]
        mine = self._queues[side]
        while mine and mine[0][0] <= stamp_s:
            mine.popleft()
            self.discarded += 1
        if side == 0:
            return item, other_item, stamp_s
        return other_item, item, other_stamp


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
            stamps = self._stamps
            i = bisect.bisect_left(stamps, stamp_s)
            if i < len(stamps) and stamps[i] == stamp_s:
                return self._poses[i].copy()
            if 0 < i < len(stamps):
                t0, t1 = stamps[i - 1], stamps[i]
                if t1 - t0 <= self.max_gap_s:
                    return _interpolate(self._poses[i - 1], self._poses[i], (stamp_s - t0) / (t1 - t0))
                near = i - 1 if stamp_s - t0 <= t1 - stamp_s else i
            else:
                near = 0 if i == 0 else len(stamps) - 1
            gap = abs(stamps[near] - stamp_s)
            if gap <= self.tolerance_s:
                return self._poses[near].copy()
            newest = stamps[-1]
            raise PoseLookupError(
                f"no pose within {self.tolerance_s:.3f} s of stamp {stamp_s:.3f} "
                f"(buffered poses cover {stamps[0]:.3f}..{newest:.3f}; nearest is {gap:.3f} s away)"
            )


def _interpolate(T0: np.ndarray, T1: np.ndarray, a: float) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (1.0 - a) * T0[:3, 3] + a * T1[:3, 3]
    # Slerp as R0 * exp(a * log(R0^-1 R1)): scipy's Slerp result at half its per-call set-up cost.
    r0, r1 = Rotation.from_matrix(T0[:3, :3]), Rotation.from_matrix(T1[:3, :3])
    T[:3, :3] = (r0 * Rotation.from_rotvec(a * (r0.inv() * r1).as_rotvec())).as_matrix()
    return T
