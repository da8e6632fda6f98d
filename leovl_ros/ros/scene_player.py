"""``leovl_scene_player``: streams a synthetic room as a live RGB-D camera (for demos and tests).

Renders ``num_frames`` views of room ``seed`` once, then publishes them at ``rate`` Hz with
the current time as stamp: colour, depth, camera_info and the camera pose, over /tf where
tf2_msgs is installed, else as Odometry/PoseStamped on ``pose`` (the assistant's fallback).
With ``wait_for_subscribers`` it starts only once every stream has a subscriber, so a
best-effort stream is not sent into the void. Exits after the last frame unless ``loop``.
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Any

import numpy as np
import rclpy
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..synth.render import render_frames
from ..synth.rooms import generate_room
from .conversions import RGB_ENCODINGS, matrix_to_pose, matrix_to_transform, numpy_to_image

__all__ = ["PLAYER_PARAMETERS", "ScenePlayer", "main"]

PLAYER_PARAMETERS: dict[str, tuple[Any, str]] = {
    "seed": (0, "synthetic room seed"),
    "num_frames": (30, "frames along one loop of the room"),
    "outward_every": (0, "every k-th frame looks at the nearest wall instead of the room centre (0 = never)"),
    "width": (160, "image width in pixels"),
    "height": (120, "image height in pixels"),
    "rate": (15.0, "frames per second"),
    "loop": (False, "replay forever instead of exiting after the last frame"),
    "rgb_encoding": ("rgb8", "colour encoding to send: rgb8, bgr8, rgba8, bgra8 or mono8"),
    "depth_encoding": ("16UC1", "depth encoding to send: 16UC1 (mm) or 32FC1 (m, NaN = invalid)"),
    "map_frame": ("map", "frame of the poses"),
    "camera_frame": ("camera_optical", "frame_id of the images"),
    "pose_output": ("auto", "tf, odometry or pose_stamped (auto: tf if tf2_msgs is installed, else odometry)"),
    "wait_for_subscribers": (True, "start streaming once every output topic has a subscriber"),
    "wait_timeout": (120.0, "give up (exit 1) if nobody subscribes within this many seconds"),
}


class ScenePlayer(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("leovl_scene_player", **kwargs)
        p = {name: self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value
             for name, (default, text) in PLAYER_PARAMETERS.items()}
        self.p = p
        if p["rgb_encoding"] not in RGB_ENCODINGS or p["depth_encoding"] not in ("16UC1", "32FC1"):
            raise ValueError(f"rgb_encoding {p['rgb_encoding']!r} / depth_encoding {p['depth_encoding']!r}: use "
                             f"one of {sorted(RGB_ENCODINGS)} / 16UC1, 32FC1")
        room = generate_room(p["seed"])
        self.frames = render_frames(room, p["num_frames"], p["width"], p["height"], seed=p["seed"],
                                    outward_every=p["outward_every"])
        out = p["pose_output"]
        if out == "auto":
            out = "tf" if importlib.util.find_spec("tf2_msgs") is not None else "odometry"
        self.pose_output = out
        qos = qos_profile_sensor_data
        self._rgb = self.create_publisher(Image, "rgb/image", qos)
        self._depth = self.create_publisher(Image, "depth/image", qos)
        self._info = self.create_publisher(CameraInfo, "rgb/camera_info", qos)
        if out == "tf":
            from tf2_msgs.msg import TFMessage

            self._tf_msg = TFMessage
            self._pose = self.create_publisher(TFMessage, "/tf", 100)
        elif out in ("odometry", "pose_stamped"):
            self._pose = self.create_publisher(Odometry if out == "odometry" else PoseStamped, "pose", qos)
        else:
            raise ValueError(f"pose_output must be auto, tf, odometry or pose_stamped, got {out!r}")
        self.next_index, self.done, self.failed = 0, False, False
        self._waited = 0.0
        self._timer = self.create_timer(1.0 / p["rate"], self._tick)

    def _ready(self) -> bool:
        pubs = (self._rgb, self._depth, self._info, self._pose)
        return not self.p["wait_for_subscribers"] or all(pub.get_subscription_count() > 0 for pub in pubs)

    def _tick(self) -> None:
        if self.next_index == 0 and not self._ready():
            self._waited += 1.0 / self.p["rate"]
            if self._waited > self.p["wait_timeout"]:
                self.get_logger().error("no subscriber for the camera topics; giving up")
                self.done = self.failed = True
            return
        if self.next_index >= len(self.frames):
            if not self.p["loop"]:
                self.done = True
                return
            self.next_index = 0
        self.publish(self.next_index)
        self.next_index += 1

    def publish(self, index: int) -> None:
        """Send frame ``index`` stamped now: pose first, so it is there when the images arrive."""
        f, p = self.frames[index], self.p
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=p["camera_frame"])
        if self.pose_output == "tf":
            self._pose.publish(self._tf_msg(transforms=[TransformStamped(
                header=Header(stamp=header.stamp, frame_id=p["map_frame"]), child_frame_id=p["camera_frame"],
                transform=matrix_to_transform(f.T_map_camera))]))
        elif self.pose_output == "odometry":
            odom = Odometry(header=Header(stamp=header.stamp, frame_id=p["map_frame"]),
                            child_frame_id=p["camera_frame"])
            odom.pose.pose = matrix_to_pose(f.T_map_camera)
            self._pose.publish(odom)
        else:
            self._pose.publish(PoseStamped(header=Header(stamp=header.stamp, frame_id=p["map_frame"]),
                                           pose=matrix_to_pose(f.T_map_camera)))
        h, w = f.depth_mm.shape
        K = f.K.reshape(-1).tolist()
        P = np.concatenate([f.K, np.zeros((3, 1))], 1).reshape(-1).tolist()
        self._info.publish(CameraInfo(header=header, width=w, height=h, distortion_model="plumb_bob",
                                      d=[0.0] * 5, k=K, p=P, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]))
        self._rgb.publish(numpy_to_image(_encode_rgb(f.rgb, p["rgb_encoding"]), p["rgb_encoding"], header))
        if p["depth_encoding"] == "32FC1":
            depth = np.where(f.depth_mm > 0, f.depth_mm.astype(np.float32) / 1000.0, np.float32(np.nan))
        else:
            depth = f.depth_mm
        self._depth.publish(numpy_to_image(depth, p["depth_encoding"], header))


def _encode_rgb(rgb: np.ndarray, encoding: str) -> np.ndarray:
    """(H, W, 3) RGB -> the channel layout of ``encoding``."""
    if encoding == "mono8":
        return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    bgr = encoding.startswith("bgr")
    out = rgb[:, :, ::-1] if bgr else rgb
    if encoding.endswith("a8"):
        out = np.concatenate([out, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)
    return out


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    node = None
    try:
        node = ScenePlayer()
        while rclpy.ok() and not node.done:
            rclpy.spin_once(node, timeout_sec=0.1)
        return 1 if node.failed else 0
    except ValueError as exc:  # a bad parameter: one line, no traceback
        print(f"[leovl_scene_player] cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
