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

from leovl_ros.bag_types import bag_typestore
from leovl_ros.geometry import Intrinsics, depth_to_metres, xyz_quat_to_matrix
from leovl_ros.rgbd_frame import RGBDFrame

from .bag_files import recording_files
from .images import decode_image
from .pairing import ApproximateTimePairer
from .stamps import stamp_to_seconds
from .tf_buffer import TfBuffer

_MAX_PENDING = 64  # images waiting for their rgb/depth partner


def bag_scene_id(path: str | os.PathLike) -> str:
    return f"bag_{Path(path).resolve().name}"


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
    invalid_poses: int = 0  # recorded transforms / poses skipped as invalid (non-finite, zero quaternion)

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
                    _add_pose(out, t.header.frame_id, t.child_frame_id, stamp_to_seconds(t.header.stamp),
                              (r.x, r.y, r.z), (q.x, q.y, q.z, q.w), static=conn.topic == "/tf_static")
            elif conn.topic == topics.camera_info:
                out.camera_info.append((stamp_to_seconds(msg.header.stamp), Intrinsics.from_camera_info(
                    list(msg.k), list(msg.p), int(msg.width), int(msg.height))))
            elif conn.topic == topics.interactions:
                out.interactions.append(_msg_to_dict(msg))
            elif conn.topic == topics.pose_topic:
                pose = msg.pose.pose if hasattr(msg.pose, "pose") else msg.pose  # Odometry | PoseStamped
                p, q = pose.position, pose.orientation
                _add_pose(out, msg.header.frame_id, "__pose__", stamp_to_seconds(msg.header.stamp), (p.x, p.y, p.z),
                          (q.x, q.y, q.z, q.w))
    return out


def _add_pose(scan: BagScan, parent: str, child: str, stamp_s: float, xyz, quat_xyzw, static: bool = False) -> None:
    """One recorded transform into the TF buffer; an invalid one (NaN, zero quaternion) is counted
    and skipped, so one bad message does not cost the whole recording."""
    try:
        T = xyz_quat_to_matrix(xyz, quat_xyzw)
    except ValueError:
        scan.invalid_poses += 1
        return
    scan.tf.add(parent, child, stamp_s, T, static=static)


def bag_frames(path: str | os.PathLike, topics: BagTopics | None = None, scan: BagScan | None = None,
               stats: dict[str, int] | None = None, msg_file=None) -> Iterator[RGBDFrame]:
    """Posed RGB-D frames of a bag: rgb and depth paired by header stamp (closest within
    ``sync_tolerance_s``, as the node pairs them: scans.pairing), posed by TF (or the
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
    pairer: ApproximateTimePairer = ApproximateTimePairer(topics.sync_tolerance_s, _MAX_PENDING)
    with _open(path, msg_file) as reader:
        conns = [c for c in reader.connections if c.topic in (topics.rgb, topics.depth)]
        missing = {topics.rgb, topics.depth} - {c.topic for c in conns}
        if missing:
            raise ValueError(f"bag {path} has no {sorted(missing)} topic(s); topics are "
                             f"{sorted({c.topic for c in reader.connections})}")
        for conn, _, raw in reader.messages(connections=conns):
            msg = reader.deserialize(raw, conn.msgtype)
            add = pairer.add_first if conn.topic == topics.rgb else pairer.add_second
            pair = add(stamp_to_seconds(msg.header.stamp), msg)
            if pair is None:
                continue
            frame = _posed_frame(pair[0], pair[1], scan, info_stamps, topics, stats)
            if frame is not None:
                stats["frames"] += 1
                yield frame
    stats["unpaired"] += pairer.unpaired()


def _posed_frame(rgb_msg, depth_msg, scan: BagScan, info_stamps, topics: BagTopics, stats) -> RGBDFrame | None:
    stamp = stamp_to_seconds(rgb_msg.header.stamp)
    # The latest camera_info at or before the frame (the first one for earlier frames).
    i = max(0, int(np.searchsorted(info_stamps, stamp, side="right")) - 1)
    source = "__camera__" if topics.pose_topic else rgb_msg.header.frame_id
    T = scan.tf.lookup(topics.map_frame, source, stamp)
    if T is None:
        stats["no_pose"] += 1
        return None
    depth = depth_to_metres(decode_image(depth_msg, "depth"))
    intr = scan.camera_info[i][1]
    if (intr.width, intr.height) != (depth.shape[1], depth.shape[0]):
        intr = intr.scaled(depth.shape[1], depth.shape[0])
    # Contiguous, as training's batched encoder needs (a BGR or mono view has odd strides).
    return RGBDFrame(np.ascontiguousarray(decode_image(rgb_msg, "rgb")), depth, intr, T, stamp)


def _stamp_of(m: dict) -> float:
    try:
        return stamp_to_seconds(m["header"]["stamp"])
    except (KeyError, TypeError):
        return 0.0
