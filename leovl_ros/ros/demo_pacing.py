"""How `make demo` paces a stream so the node maps it as well as it can, and when the map is done.

Decision (paper silent): what a robot user expects of a demo.

- Rate: below the node's ``max_keyframe_rate`` (at 60 % of it), so timing jitter between the
  player and the node never makes the rate limit drop a frame that moved far enough.
- Stride of a scan: every n-th frame such that consecutive played frames move about one
  keyframe threshold (``keyframe_translation`` or ``keyframe_rotation_deg``, whichever is
  reached first, median over the scan): each played frame is then a keyframe and none of
  the path is skipped; at most ``max_frames`` frames are played (a long scan is thinned).
- Done: once the player has exited and the node has received every frame it sent and fused or
  dropped each; frames lost on the way never arrive, so two reports after the player's exit
  with unchanged counts settle it too.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml
from scipy.spatial.transform import Rotation

__all__ = ["MapSettled", "choose_rate", "choose_stride", "node_settings", "scan_poses"]

RATE_SHARE = 0.6


def node_settings(params_file: Path) -> dict:
    """The node's parameters as a params file sets them."""
    return yaml.safe_load(params_file.read_text())["leovl_assistant"]["ros__parameters"]


def choose_rate(requested: float | None, max_keyframe_rate: float) -> float:
    """``requested`` (Hz) if given, else 60 % of the node's keyframe rate limit (0 = no limit: 5 Hz)."""
    if requested:
        return requested
    return RATE_SHARE * max_keyframe_rate if max_keyframe_rate > 0 else 5.0


def scan_poses(path: Path, kind: str) -> list[np.ndarray]:
    """Camera poses of every frame of a scan, without reading its images."""
    from ..scans.frames import FrameReport
    from ..scans.scan_readers import READERS

    if kind == "scannet":
        files = [p for p in (path / "pose").glob("*.txt") if p.stem.isdigit()]
        poses = [np.loadtxt(p) for p in sorted(files, key=lambda p: int(p.stem))]
        return [T for T in poses if T.shape == (4, 4) and np.isfinite(T).all()]
    return [v.T_world_camera for v in READERS[kind](path).views(1, FrameReport(), colour=False)]


def choose_stride(poses: list[np.ndarray], translation: float, rotation_deg: float, max_frames: int = 200) -> int:
    """Every n-th frame so that consecutive ones move about one keyframe threshold (see above)."""
    if len(poses) < 2:
        return 1
    T = np.stack(poses)
    moved = np.linalg.norm(np.diff(T[:, :3, 3], axis=0), axis=1) / max(translation, 1e-9)
    turns = Rotation.from_matrix(T[:-1, :3, :3].transpose(0, 2, 1) @ T[1:, :3, :3]).magnitude()
    progress = np.maximum(moved, np.degrees(turns) / max(rotation_deg, 1e-9))  # thresholds per frame
    per_frame = float(np.median(progress))
    stride = max(1, int(round(1.0 / per_frame))) if per_frame > 0 else len(poses)
    return max(stride, math.ceil(len(poses) / max_frames))


class MapSettled:
    """Fed every scene_status; ``done`` once the stream's last frame has been processed."""

    def __init__(self) -> None:
        self.sent: int | None = None  # frames the player reports as sent, once it has exited
        self._after_exit: list[tuple[int, int, int]] = []

    def player_exited(self, sent: int | None) -> None:
        self.sent = -1 if sent is None else sent

    def status(self, frames_received: int, keyframes_fused: int, frames_dropped: int) -> None:
        if self.sent is not None:
            self._after_exit.append((frames_received, keyframes_fused, frames_dropped))

    @property
    def done(self) -> bool:
        if not self._after_exit:
            return False
        received, fused, dropped = self._after_exit[-1]
        if fused + dropped < received:  # a keyframe still waits for the encoder
            return False
        return received >= self.sent >= 0 or (len(self._after_exit) >= 2 and self._after_exit[-2] ==
                                               self._after_exit[-1])

    @property
    def lost(self) -> int:
        """Frames the player sent that never reached the node (known once done)."""
        return max(0, self.sent - self._after_exit[-1][0]) if self._after_exit and self.sent else 0
