"""What ``scene_player`` plays: a synthetic room, any scan the training side reads, or a rosbag2 recording.

Readers: ``leovl_ros.scans`` (``scan_sources`` for ScanNet, 3RScan, MultiScan, ARKitScenes and whatever
kind is registered there next; ``bag_reader`` / ``bag_files`` for recordings), the same code
``leovl-data build-scenes`` reads with, so the player replays exactly the frames training fuses.
They are imported lazily (the node itself never needs them). Nothing here imports rclpy.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..rgbd_frame import RGBDFrame
from ..scans.stamps import stamp_to_seconds

__all__ = ["BAG_TYPES", "BagMessage", "bag_messages", "bag_poses", "bag_topics", "detect_kind",
           "scan_frames", "scan_kinds", "synthetic_frames"]

# Message types a recording is replayed with (the camera and its pose); other topics are skipped.
BAG_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo", "tf2_msgs/msg/TFMessage",
             "nav_msgs/msg/Odometry", "geometry_msgs/msg/PoseStamped")
BAG_SUFFIXES = (".mcap", ".db3")


@dataclass
class BagMessage:
    """One recorded message: its CDR bytes as stored, replayed without decoding."""

    topic: str
    msgtype: str
    time_ns: int  # when it was recorded (schedules the replay)
    raw: bytes
    stamp_s: float | None = None  # images: header stamp and frame (to pose them from the recorded TF)
    frame_id: str = ""


def scan_kinds() -> tuple[str, ...]:
    from leovl_ros.scans.scan_sources import KINDS

    return KINDS


def detect_kind(path: str | os.PathLike) -> str:
    """'bag' for a rosbag2 folder or storage file, else the scan kind whose layout ``path`` has
    (the kinds, their layouts and readers are training's: scan_sources.ScanSource)."""
    path = Path(path)
    if path.is_file() and path.suffix in BAG_SUFFIXES:
        return "bag"
    if not path.is_dir():
        raise ValueError(f"source {str(path)!r} does not exist (give a scan folder or a rosbag2 recording)")
    # a rosbag2 folder, or a folder of recorder segments (one rosbag2 folder each: bag_files.py)
    if any(path.glob("metadata.yaml")) or any(p.suffix in BAG_SUFFIXES for p in [*path.glob("*"), *path.glob("*/*")]):
        return "bag"
    from leovl_ros.scans.scan_sources import ScanSource

    for kind in scan_kinds():  # the first reader that locates the scan and reads its first frame
        if ScanSource(kind, str(path.parent)).locate(path.name) is not None:
            try:
                next(iter(scan_frames(path, kind, 1)), None)
                return kind
            except ValueError:
                continue
    raise ValueError(f"source {str(path)!r} is neither a rosbag2 recording nor a scan folder in a layout the "
                     f"training side reads ({', '.join(scan_kinds())}); set source_kind to say which")


def scan_frames(path: str | os.PathLike, kind: str, stride: int) -> Iterator[RGBDFrame]:
    """The frames ``build-scenes`` fuses for this scan (same reader, alignment and stride)."""
    from leovl_ros.scans.frames import FrameReport
    from leovl_ros.scans.scan_sources import ScanSource

    path = Path(path)
    if kind not in scan_kinds():
        raise ValueError(f"source_kind {kind!r} is not a scan kind ({', '.join(scan_kinds())}), 'bag' or 'synthetic'")
    source = ScanSource(kind, str(path.parent), stride)
    located = source.locate(path.name)
    if located is None:
        raise ValueError(f"{path} is not a {kind} scan folder")
    yield from source.frames(located, FrameReport())


def synthetic_frames(seed: int, num_frames: int, width: int, height: int,
                     outward_every: int = 0) -> list[RGBDFrame]:
    """Room ``seed`` along its camera path as ``build-scenes`` renders it (rendered once: replays
    and loops reuse it)."""
    from leovl_ros.scans import frames

    return list(frames.synthetic_frames(seed, num_frames, width, height, outward_every))


def _header(msg: Any) -> tuple[float, str]:
    return stamp_to_seconds(msg.header.stamp), msg.header.frame_id


def bag_messages(path: str | os.PathLike, topics: set[str] | None = None) -> Iterator[BagMessage]:
    """The camera messages of a recording in recorded order (every storage file of it, read as
    training reads bags: bag_files.recording_files, also the files of a killed recorder)."""
    from rosbags.highlevel import AnyReader
    from leovl_ros.scans.bag_files import recording_files
    from leovl_ros.bag_types import bag_typestore

    with ExitStack() as stack:
        with AnyReader(recording_files(path, stack), default_typestore=bag_typestore()) as reader:
            conns = [c for c in reader.connections
                     if c.msgtype in BAG_TYPES and (not topics or c.topic in topics)]
            for conn, time_ns, raw in reader.messages(connections=conns):
                out = BagMessage(conn.topic, conn.msgtype, time_ns, bytes(raw))
                if conn.msgtype == "sensor_msgs/msg/Image":
                    out.stamp_s, out.frame_id = _header(reader.deserialize(raw, conn.msgtype))
                yield out


def bag_topics(path: str | os.PathLike) -> dict[str, str]:
    """{topic: type} of the replayable topics of a recording."""
    from rosbags.highlevel import AnyReader
    from leovl_ros.scans.bag_files import recording_files
    from leovl_ros.bag_types import bag_typestore

    with ExitStack() as stack:
        with AnyReader(recording_files(path, stack), default_typestore=bag_typestore()) as reader:
            return {c.topic: c.msgtype for c in reader.connections if c.msgtype in BAG_TYPES}


def bag_poses(path: str | os.PathLike):
    """The recording's TF (leovl_ros.scans.tf_buffer.TfBuffer), for players that send poses on a topic."""
    from leovl_ros.scans.bag_reader import BagTopics, scan_bag

    return scan_bag(path, BagTopics(camera_info="")).tf
