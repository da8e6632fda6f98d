"""Approximate-time pairing of two streams (RGB and depth), shared by the live node and the bag reader.

ROS-free. Hand-written because ``message_filters`` (ApproximateTimeSynchronizer) is not
installable from PyPI, and the node must run where it is absent.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Generic, TypeVar

__all__ = ["ApproximateTimePairer"]

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

    def unpaired(self) -> int:
        """Messages without a partner so far: the discarded ones plus those still waiting."""
        return self.discarded + sum(self.pending())
