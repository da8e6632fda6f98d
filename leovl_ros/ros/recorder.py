"""``leovl_recorder``: records what fine-tuning needs into mcap with ``rosbags``, crash-safe.

The launch file runs it for ``record:=true`` where ``ros2 bag`` is not installed (ROS from
PyPI). Decisions:

- Segments: the recording is a folder of rosbag2 bags ``<output>/00000/``, ``00001/``, ...
  (each closed by rosbags: ``metadata.yaml`` + one mcap, playable by ``ros2 bag play``), a new
  one every ``segment_seconds``. ``leovl-data from-bag <output>`` reads them as one bag.
- Flush: rosbags keeps the open mcap chunk in memory (up to 1 MiB), so every
  ``flush_period`` s the chunk is closed, written and fsync'd. A SIGKILL or a power loss then
  loses at most that much; the unfinished last segment has no footer, and ``leovl-data``
  recovers it up to its last complete record (training/bag_files.py).
- Messages are stored as the serialized bytes that arrive (raw subscriptions: no decoding),
  stamped with the receive time (never decreasing, as rosbag2 does), under the type the graph
  reports once a publisher appears, with definitions from rosbags' typestore (ROS 2 Jazzy
  types + this package's msg/*.msg: bag_types.bag_typestore, the readers' too). A
  topic of an unknown type is reported once and skipped.
- QoS per topic as ``ros2 bag`` picks it: reliable only if every publisher is, transient local
  only if every publisher is (so /tf_static and the latched plan arrive). Latched messages are
  written again at the start of every segment so that each segment is complete on its own.
- A full disk (or any write error) never stops the recorder: the open segment is abandoned as
  it is (what was flushed stays; leovl-data recovers it like a killed recorder's), messages are
  counted as not recorded, the error is logged once and reported on ``/diagnostics``, and a new
  segment starts once ``resume_free_mb`` are free again.
"""
from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header
from rosbags.rosbag2 import StoragePlugin, Writer

from ..bag_types import bag_typestore

__all__ = ["RECORDED_TOPICS", "RecorderNode", "main"]

# What training/bags.py reads (frames, poses, supervision) plus the plan and status for context.
RECORDED_TOPICS = ["rgb/image", "depth/image", "rgb/camera_info", "/tf", "/tf_static", "interactions", "plan",
                   "scene_status"]
PARAMETERS: dict[str, tuple[Any, str]] = {
    "output": ("", "recording folder (created; must not hold a recording yet); '' = "
                   "~/.ros/leovl_bags/leovl_<date>-<time>"),
    "topics": (RECORDED_TOPICS, "topics to record (relative names follow the recorder's namespace)"),
    "segment_seconds": (60.0, "start a new, separately closed segment bag after this many seconds"),
    "flush_period": (0.2, "s between writes to disk (fsync'd): the most a crash can lose"),
    "resume_free_mb": (64.0, "after a full disk: start a new segment once this many MiB are free"),
}


def _message_class(msgtype: str):
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


class RecorderNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("leovl_recorder", **kwargs)
        p = {name: self.declare_parameter(name, default, ParameterDescriptor(description=text, read_only=True)).value
             for name, (default, text) in PARAMETERS.items()}
        if p["segment_seconds"] <= 0 or p["flush_period"] <= 0 or p["resume_free_mb"] < 0:
            raise ValueError("segment_seconds and flush_period must be > 0, resume_free_mb >= 0")
        self.output = Path(p["output"] or f"~/.ros/leovl_bags/leovl_{time.strftime('%Y%m%d-%H%M%S')}").expanduser()
        if self.output.exists() and any(self.output.iterdir()):
            raise ValueError(f"output {self.output} is not empty: give a new folder")
        self.output.mkdir(parents=True, exist_ok=True)
        self._segment_seconds = p["segment_seconds"]
        self._resume_free_bytes = int(p["resume_free_mb"] * 2**20)
        self._failure = ""  # why recording is suspended ('' = writing)
        self._not_recorded = 0  # messages received while suspended
        self._wanted = {self.resolve_topic_name(t) for t in p["topics"]}
        self._typestore = bag_typestore()
        self._types: dict[str, str] = {}  # topic -> msgtype, once subscribed
        self._latched: dict[str, bytes] = {}  # last message of transient-local topics
        self._skipped: set[str] = set()
        self._subs: dict[str, Any] = {}
        self._last_ns = 0
        self._segments = 0
        self._writer: Writer | None = None
        self._open_segment()
        self._diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(0.5, self._discover)
        self.create_timer(p["flush_period"], self._flush)
        self.create_timer(1.0, self._report)
        self._discover()
        self.get_logger().info(f"recording {', '.join(sorted(self._wanted))} to {self.output}")

    # ------------------------------------------------------------------ segments
    def _open_segment(self) -> None:
        self._writer = Writer(self.output / f"{self._segments:05d}", version=9, storage_plugin=StoragePlugin.MCAP)
        self._segments += 1  # first: a segment that failed to open is never reused
        self._writer.open()
        self._segment_start = time.monotonic()
        self._conns = {topic: self._writer.add_connection(topic, msgtype, typestore=self._typestore)
                       for topic, msgtype in self._types.items()}
        for topic, data in self._latched.items():
            self._write(topic, data)

    def _disk(self, what: str, action) -> bool:
        """Run a write; an OSError (disk full, I/O error) suspends recording instead of ending it."""
        try:
            action()
            return True
        except OSError as exc:
            writer, self._writer = self._writer, None
            if writer is not None:
                try:  # closes the file without writing more; what was flushed stays on disk
                    writer.abort()
                except OSError:
                    pass
            self._failure = f"{what} failed: {exc.strerror or exc}"
            self.get_logger().error(
                f"recording suspended: {self._failure}; {self.output} keeps everything written so far; a new "
                f"segment starts once {self._resume_free_bytes / 2**20:g} MiB are free (parameter resume_free_mb)")
            return False

    def close(self) -> None:
        """Close the open segment (mcap footer + metadata.yaml)."""
        writer = self._writer
        if writer is not None and self._disk("closing the segment", writer.close):
            self._writer = None

    def _flush(self) -> None:
        if self._writer is None:
            self._resume()
            return
        self._disk("writing", self._sync)

    def _sync(self) -> None:
        # rosbags' McapWriter (pinned 0.11.9) holds the open chunk in memory until it reaches
        # 1 MiB; close it early so what arrived is on disk and survives a crash.
        storage = self._writer.storage
        if storage is None:
            return
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        os.fsync(storage.bio.fileno())

    def _resume(self) -> None:
        if not self._failure or shutil.disk_usage(self.output).free < self._resume_free_bytes:
            return
        if self._disk("opening a new segment", self._open_segment):
            self.get_logger().info(f"recording resumed in segment {self._segments - 1:05d} ({self._not_recorded} "
                                   "messages were not recorded)")
            self._failure = ""

    def _report(self) -> None:
        level, message = (DiagnosticStatus.ERROR, f"suspended: {self._failure}") if self._failure else \
            (DiagnosticStatus.OK, f"recording segment {self._segments - 1:05d}")
        values = {"output": str(self.output), "segments": str(self._segments),
                  "messages_not_recorded": str(self._not_recorded),
                  "free_bytes": str(shutil.disk_usage(self.output).free)}
        self._diagnostics.publish(DiagnosticArray(header=Header(stamp=self.get_clock().now().to_msg()), status=[
            DiagnosticStatus(level=level, name=f"{self.get_name()}: recording", message=message,
                             hardware_id=self.get_fully_qualified_name(),
                             values=[KeyValue(key=k, value=v) for k, v in values.items()])]))

    # ------------------------------------------------------------------ topics
    def _qos(self, topic: str) -> QoSProfile | None:
        pubs = self.get_publishers_info_by_topic(topic)
        if not pubs:
            return None
        reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in pubs)
        latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in pubs)
        return QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE if reliable else
                          ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)

    def _discover(self) -> None:
        for topic, types in self.get_topic_names_and_types():
            if topic not in self._wanted or topic in self._subs or topic in self._skipped:
                continue
            msgtype = types[0]
            if msgtype not in self._typestore.types:
                self._skipped.add(topic)
                self.get_logger().warning(f"not recording {topic}: type {msgtype} is unknown to the recorder")
                continue
            qos = self._qos(topic)
            if qos is None:
                continue
            try:
                cls = _message_class(msgtype)
            except (ImportError, AttributeError, ValueError) as exc:
                self._skipped.add(topic)
                self.get_logger().warning(f"not recording {topic}: cannot import {msgtype} ({exc})")
                continue
            self._types[topic] = msgtype
            if self._writer is not None:  # else the next segment adds it
                self._conns[topic] = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
            latched = qos.durability == DurabilityPolicy.TRANSIENT_LOCAL
            self._subs[topic] = self.create_subscription(
                cls, topic, lambda data, t=topic, keep=latched: self._on_message(t, data, keep), qos, raw=True)
            self.get_logger().info(f"recording {topic} ({msgtype})")

    def _on_message(self, topic: str, data: bytes, latched: bool) -> None:
        if latched:
            self._latched[topic] = data  # before writing: a segment opened now writes it too
        if self._writer is not None and time.monotonic() - self._segment_start >= self._segment_seconds:
            self.close()
            if not self._failure:
                self._disk("opening a new segment", self._open_segment)  # writes the latched messages
            if self._writer is not None and latched:
                return
        if self._writer is None or not self._disk("writing", lambda: self._write(topic, data)):
            self._not_recorded += 1

    def _write(self, topic: str, data: bytes) -> None:
        self._last_ns = max(time.time_ns(), self._last_ns)  # scanned (unindexed) mcap must be in time order
        self._writer.write(self._conns[topic], self._last_ns, data)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = RecorderNode()
    except ValueError as exc:
        print(f"[leovl_recorder] cannot start: {exc}", file=sys.stderr, flush=True)
        rclpy.try_shutdown()
        return 2
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()  # SIGINT / SIGTERM: a complete last segment (a SIGKILL leaves one to recover)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
