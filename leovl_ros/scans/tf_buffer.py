"""Offline transform lookup over the /tf and /tf_static messages of a recorded bag.

Hand-written rather than tf2: training must run from a plain ``pip install`` without ROS,
and offline we hold the whole TF history, so a lookup is a walk up a small tree with one
interpolation per edge (``geometry.pose_at``: linear translation, slerp rotation).

Each child frame has one parent (a TF tree). Dynamic edges are interpolated between the two
nearest stamps; a stamp outside an edge's recorded range by more than ``tolerance_s`` has
no transform (the frame is dropped, not extrapolated). Static edges hold at all times.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from leovl_ros.geometry import pose_at


@dataclass
class _Edge:
    parent: str
    stamps: list[float] = field(default_factory=list)  # seconds, kept sorted
    transforms: list[np.ndarray] = field(default_factory=list)  # (4, 4) T_parent_child
    static: bool = False

    def add(self, stamp: float, T: np.ndarray) -> None:
        i = bisect.bisect_right(self.stamps, stamp)
        self.stamps.insert(i, stamp)
        self.transforms.insert(i, T)

    def at(self, stamp: float, tolerance_s: float) -> np.ndarray | None:
        if self.static:
            return self.transforms[-1]
        return pose_at(self.stamps, self.transforms, stamp, tolerance_s)


class TfBuffer:
    """All transforms of a bag; ``lookup(target, source, stamp)`` -> T_target_source or None."""

    def __init__(self, tolerance_s: float = 0.1) -> None:
        self.tolerance_s = float(tolerance_s)
        self._edges: dict[str, _Edge] = {}

    def add(self, parent: str, child: str, stamp_s: float, T_parent_child: np.ndarray, static: bool = False) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent:
            # A re-parented frame keeps only its newest parent, as tf2 does.
            edge = self._edges[child] = _Edge(parent, static=static)
        edge.static = edge.static or static
        edge.add(float(stamp_s), np.asarray(T_parent_child, dtype=np.float64))

    @property
    def frames(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def _to_root(self, frame: str, stamp: float) -> tuple[str, np.ndarray] | None:
        """(root frame, T_root_frame) by walking parents; None if an edge has no data then."""
        T = np.eye(4)
        seen = set()
        while frame in self._edges:
            if frame in seen:
                raise ValueError(f"TF tree has a cycle through frame {frame!r}")
            seen.add(frame)
            edge = self._edges[frame]
            T_edge = edge.at(stamp, self.tolerance_s)
            if T_edge is None:
                return None
            T = T_edge @ T
            frame = edge.parent
        return frame, T

    def lookup(self, target: str, source: str, stamp_s: float) -> np.ndarray | None:
        """(4, 4) T_target_source at ``stamp_s`` (maps points in ``source`` into ``target``)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return np.eye(4)
        a = self._to_root(source, stamp_s)
        b = self._to_root(target, stamp_s)
        if a is None or b is None or a[0] != b[0]:
            return None
        return np.linalg.inv(b[1]) @ a[1]
