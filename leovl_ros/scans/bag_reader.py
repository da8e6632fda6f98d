"""Robot recordings (rosbag2, read with ``rosbags``: no ROS install needed) as posed RGB-D frames.

A bag recorded on the robot holds the frames (rgb / depth / camera_info), the poses
(``/tf`` + ``/tf_static``, or a PoseStamped / Odometry topic plus a fixed camera
extrinsic) and every exchange with the assistant on ``/interactions``
(``leovl_ros/msg/Interaction``). :func:`scan_bag` reads the small topics (TF, camera infos,
interactions), :func:`bag_frames` pairs and poses the images. Turning interactions into
training records is ``leovl_ros.training.bags``.
"""
from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from leovl_ros.geometry import Intrinsics, depth_to_metres

from .bag_files import recording_files
from .frames import RGBDFrame
from .tf_buffer import TfBuffer, pose_matrix

INTERACTION_TYPE = "leovl_ros/msg/Interaction"
_MAX_PENDING = 64  # images waiting for their rgb/depth partner
_ENCODINGS = {  # encoding -> (channels, dtype)
    "rgb8": (3, "u1"), "bgr8": (3, "u1"), "rgba8": (4, "u1"), "bgra8": (4, "u1"), "mono8": (1, "u1"),
    "16uc1": (1, "u2"), "mono16": (1, "u2"), "32fc1": (1, "f4"),
}


def bag_scene_id(path: str | os.PathLike) -> str:
    return f"bag_{Path(path).resolve().name}"


def _find_interaction_msg(msg_file: str | os.PathLike | None) -> Path | None:
    candidates = [Path(msg_file)] if msg_file else []
    candidates.append(Path(__file__).resolve().parents[2] / "msg" / "Interaction.msg")  # source checkout
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / "leovl_ros" / "msg" / "Interaction.msg")
    return next((p for p in candidates if p.is_file()), None)


def bag_typestore(msg_file: str | os.PathLike | None = None):
    """ROS 2 Jazzy types + ``leovl_ros/msg/Interaction`` registered from its .msg text.

    Used for bags without embedded definitions; bags that embed theirs (rosbag2 >= Iron,
    and everything our writer produces) are decoded with their own.
    """
    ts = get_typestore(Stores.ROS2_JAZZY)
    path = _find_interaction_msg(msg_file)
    if path is not None:
        ts.register(get_types_from_msg(path.read_text(), INTERACTION_TYPE))
    return ts


def image_to_numpy(msg: Any) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, 3) uint8 RGB, or (H, W) uint16 / float32 for depth."""
    enc = msg.encoding.lower()
    if enc not in _ENCODINGS:
        raise ValueError(f"unsupported image encoding {msg.encoding!r} (supported: {', '.join(_ENCODINGS)})")
    ch, kind = _ENCODINGS[enc]
    dt = np.dtype(kind).newbyteorder(">" if msg.is_bigendian else "<")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * ch * dt.itemsize
    data = np.asarray(msg.data, dtype=np.uint8)
    if step < row or data.size < h * step:
        raise ValueError(f"image data of {data.size} bytes is too short for {w}x{h} {msg.encoding} with step {step}")
    img = data[: h * step].reshape(h, step)[:, :row].copy().view(dt).reshape(h, w, ch).astype(dt.newbyteorder("="))
    if enc in ("bgr8", "bgra8"):
        img = img[..., 2::-1]
    elif ch == 4:
        img = img[..., :3]
    elif enc == "mono8":
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[..., 0] if ch == 1 and enc != "mono8" else img)


def _stamp(header: Any) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


@dataclass
class BagTopics:
    """Topic names and frames of a bag (absolute topic names, as stored in bags)."""

    rgb: str = "/rgb/image"
    depth: str = "/depth/image"
    camera_info: str = "/rgb/camera_info"
    interactions: str = "/interactions"
    map_frame: str = "map"
    pose_topic: str | None = None  # PoseStamped / Odometry instead of TF
    camera_extrinsic: list[list[float]] | None = None  # 4x4 T_posed-frame_camera for pose_topic
    sync_tolerance_s: float = 0.02  # rgb/depth stamps closer than this are one frame
    tf_tolerance_s: float = 0.1  # how far past the recorded poses a frame may lie


@dataclass
class BagScan:
    """What one pass over the small topics found."""

    tf: TfBuffer
    camera_info: list[tuple[float, Intrinsics]] = field(default_factory=list)
    interactions: list[dict[str, Any]] = field(default_factory=list)
    span_s: tuple[float, float] = (0.0, -1.0)  # first and last message time (receive time) in the bag

    def recorded_during(self, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The interaction-log entries stamped while this bag was recorded, plus corrections given
        later of an answer given then (the scene it refers to is in this bag)."""
        inside = [e for e in entries if self.span_s[0] <= _stamp_of(e) <= self.span_s[1]]
        asked = {m.get("interaction_id") for m in self.interactions + inside}
        late = [e for e in entries if e.get("kind") == "feedback" and e.get("interaction_id") in asked
                and _stamp_of(e) > self.span_s[1]]
        return inside + late


@contextmanager
def _open(path: str | os.PathLike, msg_file=None) -> Iterator[AnyReader]:
    """An open reader of every storage file of the recording (see bag_files: segments, files of a
    killed recorder)."""
    with ExitStack() as stack:
        files = recording_files(path, stack)
        with AnyReader(files, default_typestore=bag_typestore(msg_file)) as reader:
            yield reader


def _msg_to_dict(msg: Any) -> Any:
    if hasattr(msg, "__dataclass_fields__"):
        return {k: _msg_to_dict(getattr(msg, k)) for k in msg.__dataclass_fields__}
    if isinstance(msg, np.ndarray):
        return msg.tolist()
    return msg


def scan_bag(path: str | os.PathLike, topics: BagTopics | None = None, msg_file=None) -> BagScan:
    """TF, camera infos and interactions of a bag (everything but the images)."""
    topics = topics or BagTopics()
    out = BagScan(TfBuffer(topics.tf_tolerance_s))
    if topics.pose_topic and topics.camera_extrinsic is not None:
        out.tf.add("__pose__", "__camera__", 0.0, np.asarray(topics.camera_extrinsic, dtype=np.float64), static=True)
    wanted = {"/tf", "/tf_static", topics.camera_info, topics.interactions, topics.pose_topic}
    with _open(path, msg_file) as reader:
        out.span_s = (reader.start_time * 1e-9, (reader.end_time - 1) * 1e-9)
        conns = [c for c in reader.connections if c.topic in wanted]
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic in ("/tf", "/tf_static"):
                for t in msg.transforms:
                    r, q = t.transform.translation, t.transform.rotation
                    out.tf.add(t.header.frame_id, t.child_frame_id, _stamp(t.header),
                               pose_matrix((r.x, r.y, r.z), (q.x, q.y, q.z, q.w)), static=conn.topic == "/tf_static")
            elif conn.topic == topics.camera_info:
                out.camera_info.append((_stamp(msg.header), Intrinsics.from_camera_info(
                    list(msg.k), list(msg.p), int(msg.width), int(msg.height))))
            elif conn.topic == topics.interactions:
                out.interactions.append(_msg_to_dict(msg))
            elif conn.topic == topics.pose_topic:
                pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose  # Odometry | PoseStamped
                p, q = pose.position, pose.orientation
                out.tf.add(msg.header.frame_id, "__pose__", _stamp(msg.header),
                           pose_matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w)))
    return out


def bag_frames(path: str | os.PathLike, topics: BagTopics | None = None, scan: BagScan | None = None,
               stats: dict[str, int] | None = None, msg_file=None) -> Iterator[RGBDFrame]:
    """Posed RGB-D frames of a bag: rgb and depth paired by header stamp, posed by TF (or the
    pose topic), intrinsics from the latest camera_info (scaled to the depth image size; depth
    is assumed registered to the rgb camera). Unposable or unpaired images are counted in
    ``stats`` and skipped."""
    topics = topics or BagTopics()
    scan = scan or scan_bag(path, topics, msg_file)
    stats = stats if stats is not None else {}
    for key in ("frames", "no_pose", "unpaired"):
        stats.setdefault(key, 0)
    if not scan.camera_info:
        raise ValueError(f"bag {path} has no messages on {topics.camera_info!r}: cannot back-project depth")
    info_stamps = [s for s, _ in scan.camera_info]
    pending: dict[str, list[tuple[float, Any]]] = {topics.rgb: [], topics.depth: []}
    with _open(path, msg_file) as reader:
        conns = [c for c in reader.connections if c.topic in pending]
        missing = set(pending) - {c.topic for c in conns}
        if missing:
            raise ValueError(f"bag {path} has no {sorted(missing)} topic(s); topics are "
                             f"{sorted({c.topic for c in reader.connections})}")
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = _stamp(msg.header)
            other = topics.depth if conn.topic == topics.rgb else topics.rgb
            match = next((i for i, (s, _) in enumerate(pending[other])
                          if abs(s - stamp) <= topics.sync_tolerance_s), None)
            if match is None:
                pending[conn.topic].append((stamp, msg))
                if len(pending[conn.topic]) > _MAX_PENDING:  # a stream without partners must not grow
                    del pending[conn.topic][0]
                    stats["unpaired"] += 1
                continue
            # Anything older than the match has no partner any more (streams are in time order).
            stats["unpaired"] += match
            partner = pending[other].pop(match)[1]
            del pending[other][:match]
            rgb_msg, depth_msg = (msg, partner) if conn.topic == topics.rgb else (partner, msg)
            frame = _posed_frame(rgb_msg, depth_msg, scan, info_stamps, topics, stats)
            if frame is not None:
                stats["frames"] += 1
                yield frame
    stats["unpaired"] += sum(len(v) for v in pending.values())


def _posed_frame(rgb_msg, depth_msg, scan: BagScan, info_stamps, topics: BagTopics, stats) -> RGBDFrame | None:
    stamp = _stamp(rgb_msg.header)
    # The latest camera_info at or before the frame (the first one for earlier frames).
    i = max(0, int(np.searchsorted(info_stamps, stamp, side="right")) - 1)
    source = "__camera__" if topics.pose_topic else rgb_msg.header.frame_id
    T = scan.tf.lookup(topics.map_frame, source, stamp)
    if T is None:
        stats["no_pose"] += 1
        return None
    depth = depth_to_metres(image_to_numpy(depth_msg))
    intr = scan.camera_info[i][1]
    if (intr.width, intr.height) != (depth.shape[1], depth.shape[0]):
        intr = intr.scaled(depth.shape[1], depth.shape[0])
    return RGBDFrame(image_to_numpy(rgb_msg), depth, intr, T, stamp)


def _stamp_of(m: dict) -> float:
    try:
        s = m["header"]["stamp"]
        return float(s["sec"]) + float(s["nanosec"]) * 1e-9
    except (KeyError, TypeError):
        return 0.0
