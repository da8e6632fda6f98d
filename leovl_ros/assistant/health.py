"""The assistant's health as OK / WARN / ERROR checks (ROS-free; the node publishes them on
``/diagnostics`` as ``diagnostic_msgs/DiagnosticArray``, the form rqt_runtime_monitor and
fleet tools read).

Rates come from consecutive reports, so a check says what happened since the last one
(about a second), not since start-up.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass, field
from pathlib import Path

from .records import SceneStats

__all__ = ["OK", "WARN", "ERROR", "Check", "HealthMonitor", "process_rss_bytes"]

OK, WARN, ERROR = 0, 1, 2  # diagnostic_msgs/DiagnosticStatus levels
# Drops that are normal operation, not a fault: keyframe selection and a busy encoder.
_ROUTINE_DROPS = frozenset({"not a keyframe", "encoder busy", "scene reset"})
_STALE_S = 5.0  # frames stopped arriving this long after they did: warn


@dataclass
class Check:
    name: str
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


def process_rss_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class HealthMonitor:
    """Turns successive :class:`SceneStats` into checks: mapping, requests, memory, model."""

    def __init__(self, max_pending_requests: int, max_voxels: int, device: str) -> None:
        self.max_pending_requests, self.max_voxels, self.device = max_pending_requests, max_voxels, device
        self._last: tuple[float, SceneStats] | None = None
        self._last_frame_s: float | None = None
        self._restarts_seen = 0

    def update(self, stats: SceneStats, images_unpaired: int, now_s: float) -> list[Check]:
        prev_t, prev = self._last or (now_s, stats)
        dt = max(now_s - prev_t, 1e-9)
        self._last = (now_s, stats)
        received = max(stats.frames_received - prev.frames_received, 0)
        fused = max(stats.keyframes_fused - prev.keyframes_fused, 0)
        if received:
            self._last_frame_s = now_s
        faults = {r: n - prev.drops.get(r, 0) for r, n in stats.drops.items()
                  if r not in _ROUTINE_DROPS and n > prev.drops.get(r, 0)}
        return [self._mapping(stats, images_unpaired, received / dt, fused / dt, faults, now_s),
                self._requests(stats), self._memory(stats), self._model(stats)]

    def _mapping(self, s: SceneStats, unpaired: int, frame_rate: float, fuse_rate: float,
                 faults: dict[str, int], now_s: float) -> Check:
        values = {"frames_received": str(s.frames_received), "keyframes_fused": str(s.keyframes_fused),
                  "frame_rate_hz": f"{frame_rate:.2f}", "keyframe_rate_hz": f"{fuse_rate:.2f}",
                  "images_unpaired": str(unpaired), "worker_restarts": str(s.worker_restarts)}
        values.update({f"dropped: {reason}": str(n) for reason, n in sorted(s.drops.items())})
        if s.worker_restarts > self._restarts_seen:
            self._restarts_seen = s.worker_restarts
            return Check("mapping", ERROR, f"the mapping worker died and was restarted ({s.worker_restarts} times)",
                         values)
        if faults:
            worst = max(faults, key=faults.get)
            return Check("mapping", WARN, f"dropping frames: {worst} ({faults[worst]} since the last report)", values)
        if self._last_frame_s is not None and now_s - self._last_frame_s > _STALE_S:
            return Check("mapping", WARN, f"no RGB-D pair for {now_s - self._last_frame_s:.0f} s", values)
        if self._last_frame_s is None:
            return Check("mapping", OK, "waiting for RGB-D pairs", values)
        return Check("mapping", OK, f"{fuse_rate:.1f} keyframes/s from {frame_rate:.1f} pairs/s", values)

    def _requests(self, s: SceneStats) -> Check:
        values = {"pending": str(s.pending_requests), "max_pending_requests": str(self.max_pending_requests),
                  **{k: str(v) for k, v in s.answering.items()}}
        if s.pending_requests >= self.max_pending_requests:
            return Check("requests", WARN, "request queue full: new requests are refused busy", values)
        return Check("requests", OK, f"{s.pending_requests} pending", values)

    def _memory(self, s: SceneStats) -> Check:
        rss = process_rss_bytes()
        values = {"rss_bytes": str(rss), "map_bytes": str(s.memory_bytes), "num_voxels": str(s.num_voxels),
                  "max_voxels": str(self.max_voxels), "voxels_evicted": str(s.voxels_evicted),
                  "points_dropped_full": str(s.points_dropped_full)}
        if s.points_dropped_full:
            return Check("memory", WARN, "the voxel map is full (max_voxels) and eviction is off: new space is "
                                         "not mapped", values)
        return Check("memory", OK, f"{rss / 2**20:.0f} MiB resident, map {s.memory_bytes / 2**20:.1f} MiB", values)

    def _model(self, s: SceneStats) -> Check:
        return Check("model", OK, s.model, {"model": s.model, "device": self.device})
