"""Posed RGB-D frame sources: ScanNet SensReader exports and synthetic rooms (bags: bag_reader.py;
3RScan, MultiScan and ARKitScenes: scan_readers.py), as ``leovl_ros.rgbd_frame.RGBDFrame`` s.

Decision (paper silent) for ScanNet: colour and depth are used at their own resolutions (the
feature grid covers the whole image either way; the small difference between ScanNet's
colour and depth fields of view is ignored, as is common practice); frames with
non-finite poses (failed tracking) are skipped; when the export holds ``<scene_id>.txt``
with ``axisAlignment``, poses are aligned with it so that z is up and heights (RoPE) are
comparable across scenes.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from leovl_ros.geometry import Intrinsics, depth_to_metres
from leovl_ros.rgbd_frame import RGBDFrame


@dataclass
class FrameReport:
    """Frames read from a scan and frames skipped (per reason, with the first example):
    a missing or unreadable file, a non-finite pose... is counted, never fatal."""

    frames: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_seen: dict[str, str] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.first_seen.setdefault(reason, where)

    def merge(self, other: "FrameReport") -> None:
        self.frames += other.frames
        self.skipped.update(other.skipped)
        for k, v in other.first_seen.items():
            self.first_seen.setdefault(k, v)

    def summary(self) -> str:
        lines = [f"read {self.frames} frames; skipped {sum(self.skipped.values())}"]
        lines += [f"  skipped {n} x {reason} (first: {self.first_seen[reason]})"
                  for reason, n in self.skipped.most_common()]
        return "\n".join(lines)


def _axis_alignment(scene_dir: Path) -> np.ndarray:
    meta = scene_dir / f"{scene_dir.name}.txt"
    if meta.is_file():
        for line in meta.read_text().splitlines():
            if line.strip().startswith("axisAlignment"):
                values = [float(v) for v in line.split("=", 1)[1].split()]
                if len(values) == 16:
                    return np.asarray(values).reshape(4, 4)
    return np.eye(4)


def scannet_frames(scene_dir: str | os.PathLike, stride: int = 10,
                   report: FrameReport | None = None) -> Iterator[RGBDFrame]:
    """Frames of a ScanNet SensReader export: color/*.jpg, depth/*.png (uint16 mm),
    pose/*.txt (camera-to-world), intrinsic/intrinsic_depth.txt. Gravity: the export's
    ``axisAlignment`` (z up, floor at z = 0); without it the poses are used as they are."""
    scene_dir = Path(scene_dir)
    report = report if report is not None else FrameReport()
    for sub in ("color", "depth", "pose", "intrinsic/intrinsic_depth.txt"):
        if not (scene_dir / sub).exists():
            raise ValueError(f"{scene_dir} is not a ScanNet export folder: {sub} is missing")
    K = np.loadtxt(scene_dir / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
    align = _axis_alignment(scene_dir)
    indices = sorted(int(p.stem) for p in (scene_dir / "color").glob("*.jpg") if p.stem.isdigit())
    intr = None
    for i in indices[:: max(1, stride)]:
        depth_path, pose_path = scene_dir / "depth" / f"{i}.png", scene_dir / "pose" / f"{i}.txt"
        where = f"{scene_dir.name}/{i}"
        if not depth_path.is_file() or not pose_path.is_file():
            report.skip("missing depth or pose file", where)
            continue
        try:
            T = np.loadtxt(pose_path)
        except ValueError as exc:
            report.skip(f"unreadable pose ({exc})", where)
            continue
        if T.shape != (4, 4) or not np.isfinite(T).all():
            report.skip("non-finite pose (lost tracking)", where)  # ScanNet marks failed tracking with inf
            continue
        try:
            depth = depth_to_metres(np.asarray(Image.open(depth_path)).astype(np.uint16))
            rgb = np.asarray(Image.open(scene_dir / "color" / f"{i}.jpg").convert("RGB"))
        except (OSError, ValueError) as exc:
            report.skip(f"unreadable image ({type(exc).__name__})", where)
            continue
        if intr is None or (intr.width, intr.height) != (depth.shape[1], depth.shape[0]):
            intr = Intrinsics.from_K(K, depth.shape[1], depth.shape[0])
        report.frames += 1
        yield RGBDFrame(rgb, depth, intr, align @ T, float(i))  # exports have no stamps: the index stands in


def synthetic_frames(seed: int, num_frames: int, width: int, height: int,
                     outward_every: int = 0) -> Iterator[RGBDFrame]:
    """Frames of the procedurally generated room ``seed`` along its camera path."""
    # Imported here: rendering needs open3d (the optional "synth" extra), other sources do not.
    from leovl_ros.synth.render import render_frames
    from leovl_ros.synth.rooms import generate_room

    for f in render_frames(generate_room(seed), num_frames, width, height, outward_every=outward_every):
        yield f.rgbd()


def synthetic_floor_frames(seed: int, frames_per_room: int, width: int, height: int,
                           outward_every: int = 0) -> Iterator[RGBDFrame]:
    """Frames of the synthetic floor ``seed`` (synth/floors.py) along its route through every room."""
    from leovl_ros.synth.floors import generate_floor, render_floor

    for f in render_floor(generate_floor(seed), frames_per_room, width, height, outward_every=outward_every):
        yield f.rgbd()
