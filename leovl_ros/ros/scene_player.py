"""``leovl_scene_player``: replays a synthetic room, a recorded scan or a rosbag2 bag as a live camera.

Sources (parameter ``source``; ``source_kind`` auto-detects from the folder layout):

- '' (default): synthetic room ``seed``, ``num_frames`` views rendered once;
- a scan folder in any layout the training side reads (ScanNet SensReader export, 3RScan,
  MultiScan, ARKitScenes, and any reader registered in ``leovl_ros.scans.scan_sources`` later): the
  frames ``leovl-data build-scenes`` fuses, with its alignment and ``stride``;
- a rosbag2 recording (folder or .mcap/.db3 file, read with rosbags, no ROS install needed):
  its Image, CameraInfo, TF and Odometry/PoseStamped messages are sent as recorded (same
  bytes, stamps and topic names: remap with ``--ros-args -r /cam/rgb:=/rgb/image``), at the
  recorded timing divided by ``speed``; ``clock:=true`` also publishes the recording's time on
  /clock for nodes with ``use_sim_time``.

Synthetic rooms and scans are sent at ``rate`` Hz stamped with the current time: colour,
depth, camera_info and the camera pose, over /tf where tf2_msgs is installed, else as
Odometry/PoseStamped on ``pose`` (the assistant's fallback). A bag's recorded TF is sent
as recorded where tf2_msgs is installed; elsewhere each image is posed from it (map_frame <-
image frame at the image stamp) on ``pose``. With ``wait_for_subscribers`` the replay starts
only once every camera stream has a subscriber, so a best-effort stream is not sent into the
void. Exits after the last frame unless ``loop``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from typing import Any, Callable, Iterator

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped, TransformStamped
from nav_msgs.msg import Odometry
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from ..rgbd_frame import RGBDFrame
from ..scans.images import RGB_ENCODINGS
from .conversions import matrix_to_pose, matrix_to_transform, numpy_to_image
from .dds import use_large_image_profile
from .replay_sources import bag_messages, bag_poses, bag_topics, detect_kind, scan_frames, \
    synthetic_frames

__all__ = ["PLAYER_PARAMETERS", "ScenePlayer", "main"]

PLAYER_PARAMETERS: dict[str, tuple[Any, str]] = {
    "source": ("", "what to play: '' = synthetic room `seed`; a scan folder (any layout training reads) or a "
                   "rosbag2 recording (folder or .mcap/.db3)"),
    "source_kind": ("auto", "auto (from the layout), synthetic, bag, or a scan kind: scannet, 3rscan, multiscan, "
                            "arkitscenes"),
    "stride": (1, "scans: send every n-th frame"),
    "seed": (0, "synthetic room seed"),
    "num_frames": (30, "synthetic: frames along one loop of the room"),
    "outward_every": (0, "synthetic: every k-th frame looks at the nearest wall instead of the room centre (0 = never)"),
    "width": (160, "synthetic: image width in pixels"),
    "height": (120, "synthetic: image height in pixels"),
    "rate": (15.0, "synthetic rooms and scans: frames per second"),
    "speed": (1.0, "bags: playback speed (1.0 = as recorded, 2.0 = twice as fast)"),
    "topics": ("", "bags: comma-separated topics to replay ('' = every Image, CameraInfo, TF, Odometry and "
                   "PoseStamped topic)"),
    "clock": (False, "bags: publish the recording's time on /clock (for nodes with use_sim_time)"),
    "loop": (False, "replay forever instead of exiting after the last frame"),
    "rgb_encoding": ("rgb8", "synthetic rooms and scans: colour encoding to send: rgb8, bgr8, rgba8, bgra8 or mono8"),
    "depth_encoding": ("16UC1", "synthetic rooms and scans: depth encoding to send: 16UC1 (mm) or 32FC1 "
                                "(m, NaN = invalid)"),
    "map_frame": ("map", "frame of the poses"),
    "camera_frame": ("camera_optical", "synthetic rooms and scans: frame_id of the images"),
    "pose_output": ("auto", "tf, odometry or pose_stamped (auto: tf if tf2_msgs is installed, else odometry)"),
    "wait_for_subscribers": (True, "start once every camera stream has a subscriber"),
    "wait_timeout": (120.0, "give up (exit 1) if nobody subscribes within this many seconds"),
}
_CLOCK_PERIOD_S = 0.04  # /clock while waiting for the next recorded message (ros2 bag play's 25 Hz)
_TF_STATIC_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


def _ros_type(msgtype: str):
    """'sensor_msgs/msg/Image' -> the rclpy class, or None where the package is not installed."""
    package, _, name = msgtype.split("/")
    try:
        return getattr(importlib.import_module(f"{package}.msg"), name)
    except (ImportError, AttributeError):
        return None


def _stamp(seconds: float) -> Time:
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 10**9, nanosec=ns % 10**9)


class ScenePlayer(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("leovl_scene_player", **kwargs)
        p = {name: self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value
             for name, (default, text) in PLAYER_PARAMETERS.items()}
        self.p = p
        if p["rgb_encoding"] not in RGB_ENCODINGS or p["depth_encoding"] not in ("16UC1", "32FC1"):
            raise ValueError(f"rgb_encoding {p['rgb_encoding']!r} / depth_encoding {p['depth_encoding']!r}: use "
                             f"one of {sorted(RGB_ENCODINGS)} / 16UC1, 32FC1")
        if p["rate"] <= 0 or p["speed"] <= 0 or p["stride"] < 1:
            raise ValueError("rate and speed must be positive and stride >= 1")
        kind = p["source_kind"]
        if not p["source"]:
            if kind not in ("auto", "synthetic"):
                raise ValueError(f"source_kind {kind!r} needs a source path")
            kind = "synthetic"
        elif kind == "auto":
            kind = detect_kind(p["source"])
        self.kind = kind
        out = p["pose_output"]
        if out == "auto":
            out = "tf" if importlib.util.find_spec("tf2_msgs") is not None else "odometry"
        if out not in ("tf", "odometry", "pose_stamped"):
            raise ValueError(f"pose_output must be auto, tf, odometry or pose_stamped, got {out!r}")
        if out == "tf" and _ros_type("tf2_msgs/msg/TFMessage") is None:
            raise ValueError("pose_output tf needs tf2_msgs, which is not installed (use odometry)")
        self.pose_output = out
        self._pose = None
        if out == "tf" and kind != "bag":
            self._tf_msg = _ros_type("tf2_msgs/msg/TFMessage")
            self._pose = self.create_publisher(self._tf_msg, "/tf", 100)
        elif out != "tf":
            self._pose = self.create_publisher(Odometry if out == "odometry" else PoseStamped, "pose",
                                               qos_profile_sensor_data)
        self._clock_pub, self._clock_origin = None, None  # (first recorded time ns, speed) of the replay
        if p["clock"]:
            from rosgraph_msgs.msg import Clock

            self._clock_msg = Clock
            self._clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.sent = 0  # frames (synthetic rooms, scans) or images (bags) sent
        self.unposed = 0  # bag images without a recorded pose (sent without one)
        if kind == "bag":
            self._setup_bag()
        else:
            self._setup_camera()

    # ------------------------------------------------------------------ synthetic rooms and scans
    def _setup_camera(self) -> None:
        p, qos = self.p, qos_profile_sensor_data
        self._rgb = self.create_publisher(Image, "rgb/image", qos)
        self._depth = self.create_publisher(Image, "depth/image", qos)
        self._info = self.create_publisher(CameraInfo, "rgb/camera_info", qos)
        self._waited_for = [self._rgb, self._depth, self._info, self._pose]
        if self.kind == "synthetic":
            frames = synthetic_frames(p["seed"], p["num_frames"], p["width"], p["height"], p["outward_every"])
            self._frames: Callable[[], Any] = lambda: frames
            what = f"synthetic room {p['seed']} ({len(frames)} frames)"
        else:
            next(iter(scan_frames(p["source"], self.kind, p["stride"])), None)  # a bad scan fails before waiting
            self._frames = lambda: scan_frames(p["source"], self.kind, p["stride"])
            what = f"{self.kind} scan {p['source']} (every {p['stride']}. frame)"
        self.get_logger().info(f"playing {what} at {p['rate']:g} Hz, poses as {self.pose_output}")

    def _camera_items(self) -> Iterator[tuple[float, Callable[[], None]]]:
        for i, f in enumerate(self._frames()):
            yield i / self.p["rate"], lambda f=f: self.publish_frame(f)

    def publish_frame(self, f: RGBDFrame) -> None:
        """Send one frame stamped now: pose first, so it is there when the images arrive."""
        p = self.p
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id=p["camera_frame"])
        self._publish_pose(f.T_map_camera, header.stamp, p["camera_frame"])
        H, W = f.rgb.shape[:2]
        # camera_info describes the colour image; a registered depth image of another size is the same view
        intr = f.intrinsics if (f.intrinsics.width, f.intrinsics.height) == (W, H) else f.intrinsics.scaled(W, H)
        K = intr.K.reshape(-1).tolist()
        P = np.concatenate([intr.K, np.zeros((3, 1))], 1).reshape(-1).tolist()
        self._info.publish(CameraInfo(header=header, width=W, height=H, distortion_model="plumb_bob",
                                      d=[0.0] * 5, k=K, p=P, r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]))
        self._rgb.publish(numpy_to_image(_encode_rgb(f.rgb, p["rgb_encoding"]), p["rgb_encoding"], header))
        with np.errstate(invalid="ignore"):
            valid = np.isfinite(f.depth_m) & (f.depth_m > 0)
        if p["depth_encoding"] == "32FC1":
            depth = np.where(valid, f.depth_m, np.float32(np.nan)).astype(np.float32)
        else:
            depth = np.where(valid, np.round(np.nan_to_num(f.depth_m) * 1000.0), 0).clip(0, 65535).astype(np.uint16)
        self._depth.publish(numpy_to_image(depth, p["depth_encoding"], header))
        self.sent += 1

    def _publish_pose(self, T: np.ndarray, stamp: Time, camera_frame: str) -> None:
        header = Header(stamp=stamp, frame_id=self.p["map_frame"])
        if self.pose_output == "tf":
            self._pose.publish(self._tf_msg(transforms=[TransformStamped(
                header=header, child_frame_id=camera_frame, transform=matrix_to_transform(T))]))
        elif self.pose_output == "odometry":
            odom = Odometry(header=header, child_frame_id=camera_frame)
            odom.pose.pose = matrix_to_pose(T)
            self._pose.publish(odom)
        else:
            self._pose.publish(PoseStamped(header=header, pose=matrix_to_pose(T)))

    # ------------------------------------------------------------------ bags
    def _setup_bag(self) -> None:
        p = self.p
        wanted = {t.strip() for t in p["topics"].split(",") if t.strip()}
        topics = {t: m for t, m in bag_topics(p["source"]).items() if not wanted or t in wanted}
        if not any(m == "sensor_msgs/msg/Image" for m in topics.values()):
            raise ValueError(f"recording {p['source']} has no Image topic to replay (replayable: {sorted(topics)})")
        raw_tf = self.pose_output == "tf"
        self._tf = None
        if not raw_tf and any(m == "tf2_msgs/msg/TFMessage" for m in topics.values()):
            self._tf = bag_poses(p["source"])  # each image is posed from the recorded TF on `pose`
        self._bag_pubs, self._waited_for = {}, [] if self._pose is None else [self._pose]
        for topic, msgtype in sorted(topics.items()):
            if msgtype == "tf2_msgs/msg/TFMessage" and not raw_tf:
                continue
            ros_type = _ros_type(msgtype)
            if ros_type is None:
                self.get_logger().warning(f"not replaying {topic}: {msgtype} is not installed")
                continue
            qos = _TF_STATIC_QOS if topic == "/tf_static" else 100 if topic == "/tf" else qos_profile_sensor_data
            self._bag_pubs[topic] = pub = self.create_publisher(ros_type, topic, qos)
            if msgtype in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CameraInfo"):
                self._waited_for.append(pub)
        self._wanted = set(self._bag_pubs)
        self._last_posed: tuple[float, str] | None = None
        poses = "as recorded" if raw_tf or self._tf is None else f"from the recorded TF as {self.pose_output}"
        self.get_logger().info(f"playing recording {p['source']} at {p['speed']:g}x: {', '.join(self._bag_pubs)}; "
                               f"poses {poses}" + ("; /clock from the recording" if self._clock_pub else ""))

    def _bag_items(self) -> Iterator[tuple[float, Callable[[], None]]]:
        t0 = None
        for m in bag_messages(self.p["source"], self._wanted):
            if t0 is None:
                t0, self._clock_origin = m.time_ns, (m.time_ns, self.p["speed"])
            yield (m.time_ns - t0) * 1e-9 / self.p["speed"], lambda m=m: self._send_recorded(m)

    def _send_recorded(self, m) -> None:
        if self._clock_pub is not None:
            self._clock_pub.publish(self._clock_msg(clock=_stamp(m.time_ns * 1e-9)))
        if m.stamp_s is not None and self._tf is not None and self._last_posed != (m.stamp_s, m.frame_id):
            self._last_posed = (m.stamp_s, m.frame_id)
            T = self._tf.lookup(self.p["map_frame"], m.frame_id, m.stamp_s)
            if T is None:
                self.unposed += 1
                if self.unposed == 1:
                    self.get_logger().warning(f"no recorded TF {self.p['map_frame']} <- {m.frame_id} at "
                                              f"{m.stamp_s:.3f}: such images are sent without a pose")
            else:
                self._publish_pose(T, _stamp(m.stamp_s), m.frame_id)
        self._bag_pubs[m.topic].publish(m.raw)
        self.sent += m.msgtype == "sensor_msgs/msg/Image"

    # ------------------------------------------------------------------ playing
    def _subscribed(self) -> bool:
        return all(pub.get_subscription_count() > 0 for pub in self._waited_for)

    def _sleep_until(self, deadline: float, start: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._clock_pub is not None and self._clock_origin is not None:
                t0, speed = self._clock_origin
                self._clock_pub.publish(self._clock_msg(clock=_stamp(t0 * 1e-9 + (time.monotonic() - start) * speed)))
                left = min(left, _CLOCK_PERIOD_S)
            time.sleep(left)

    def play(self) -> int:
        """Wait for subscribers, then send every item on time; 0 when done, 1 if nobody subscribed."""
        if self.p["wait_for_subscribers"]:
            deadline = time.monotonic() + self.p["wait_timeout"]
            while not self._subscribed():
                if time.monotonic() > deadline:
                    self.get_logger().error("no subscriber for the camera topics; giving up")
                    return 1
                time.sleep(0.05)
        while True:
            start = time.monotonic()
            for offset_s, send in (self._bag_items() if self.kind == "bag" else self._camera_items()):
                self._sleep_until(start + offset_s, start)
                send()
            if not self.p["loop"]:
                break
        unposed = f", {self.unposed} without a recorded pose" if self.unposed else ""
        what = "images" if self.kind == "bag" else "frames"
        self.get_logger().info(f"done: {self.sent} {what} sent{unposed}")
        return 0


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
    use_large_image_profile()  # it writes camera-size images: see dds.py (the user's profile wins)
    rclpy.init(args=args)
    node = None
    try:
        node = ScenePlayer()
        return node.play()
    except (ValueError, OSError) as exc:  # a bad parameter or source: one line, no traceback
        print(f"[leovl_scene_player] cannot play: {exc}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
