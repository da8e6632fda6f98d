"""Camera poses for image stamps: from TF (tf2_ros, where installed) or from a pose topic.

Both answer ``lookup(stamp_s, camera_frame) -> T_map_camera (4, 4)`` or raise
:class:`PoseLookupError`. tf2_ros is imported only when TF is used: PyPI has no build of it,
so machines without an apt ROS install run on the topic source.
"""
from __future__ import annotations

import importlib.util
from typing import Protocol

import numpy as np
from geometry_msgs.msg import PoseStamped
from nav_msgs.msg import Odometry
from rclpy.callback_groups import CallbackGroup
from rclpy.clock import ClockType
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time

from .conversions import pose_to_matrix, stamp_to_seconds, transform_to_matrix
from .sync import PoseBuffer, PoseLookupError

__all__ = ["PoseSource", "TfPoseSource", "TopicPoseSource", "make_pose_source", "tf_available"]


class PoseSource(Protocol):
    description: str

    def lookup(self, stamp_s: float, camera_frame: str) -> np.ndarray: ...


def tf_available() -> bool:
    return importlib.util.find_spec("tf2_ros") is not None


class TfPoseSource:
    """``map_frame`` <- ``camera_frame`` from the TF tree at the image stamp."""

    def __init__(self, node: Node, map_frame: str, timeout_s: float) -> None:
        import tf2_ros

        self._tf2 = tf2_ros
        self._buffer = tf2_ros.Buffer(node=node)
        self._listener = tf2_ros.TransformListener(self._buffer, node, spin_thread=True)
        self._map_frame, self._timeout = map_frame, Duration(seconds=timeout_s)
        self.description = f"tf ({map_frame} <- image frame)"

    def lookup(self, stamp_s: float, camera_frame: str) -> np.ndarray:
        if not camera_frame:
            raise PoseLookupError("the image has no header.frame_id; set the camera_frame parameter")
        try:
            stamp = Time(nanoseconds=int(round(stamp_s * 1e9)), clock_type=ClockType.ROS_TIME)
            t = self._buffer.lookup_transform(self._map_frame, camera_frame, stamp, timeout=self._timeout)
        except (self._tf2.LookupException, self._tf2.ConnectivityException, self._tf2.ExtrapolationException) as exc:
            raise PoseLookupError(f"no TF {self._map_frame} <- {camera_frame} at {stamp_s:.3f}: {exc}") from exc
        return transform_to_matrix(t.transform)


class TopicPoseSource:
    """Poses of a body from Odometry / PoseStamped, times a fixed body -> camera extrinsic."""

    def __init__(self, node: Node, topic: str, msg_kind: str, map_frame: str, T_body_camera: np.ndarray,
                 buffer: PoseBuffer, timeout_s: float, group: CallbackGroup | None) -> None:
        if msg_kind not in ("odometry", "pose_stamped"):
            raise ValueError(f"pose topic type must be odometry or pose_stamped, got {msg_kind!r}")
        self._node, self._map_frame, self._extrinsic = node, map_frame, np.asarray(T_body_camera, np.float64)
        self._buffer, self._timeout = buffer, timeout_s
        msg_type = Odometry if msg_kind == "odometry" else PoseStamped
        self._sub = node.create_subscription(msg_type, topic, self._on_pose, qos_profile_sensor_data,
                                             callback_group=group)
        self.description = f"{msg_kind} on {self._sub.topic_name} + camera_extrinsic"

    def _on_pose(self, msg: Odometry | PoseStamped) -> None:
        frame = msg.header.frame_id
        if frame and frame.lstrip("/") != self._map_frame:
            self._node.get_logger().warning(
                f"ignoring poses in frame '{frame}': map_frame is '{self._map_frame}' (set map_frame or remap "
                "pose_topic)", throttle_duration_sec=5.0)
            return
        pose = msg.pose.pose if isinstance(msg, Odometry) else msg.pose
        try:
            self._buffer.add(stamp_to_seconds(msg.header.stamp), pose_to_matrix(pose))
        except ValueError as exc:
            self._node.get_logger().warning(f"ignoring an invalid pose: {exc}", throttle_duration_sec=5.0)

    def lookup(self, stamp_s: float, camera_frame: str) -> np.ndarray:
        return self._buffer.lookup(stamp_s, self._timeout) @ self._extrinsic


def make_pose_source(node: Node, source: str, *, map_frame: str, topic: str, T_body_camera: np.ndarray,
                     tolerance_s: float, max_gap_s: float, timeout_s: float,
                     group: CallbackGroup | None = None) -> PoseSource:
    """The pose source named by the ``pose_source`` parameter ('auto': tf if installed, else odometry)."""
    if source == "auto":
        source = "tf" if tf_available() else "odometry"
    if source == "tf":
        if not tf_available():
            raise ValueError("pose_source 'tf' needs tf2_ros, which is not installed; install ros-<distro>-tf2-ros "
                             "or use pose_source odometry / pose_stamped")
        return TfPoseSource(node, map_frame, timeout_s)
    return TopicPoseSource(node, topic, source, map_frame, T_body_camera,
                           PoseBuffer(tolerance_s=tolerance_s, max_gap_s=max_gap_s), timeout_s, group)
