"""Recorder benchmark: does ``leovl_recorder`` keep up with a camera, and what does a crash lose?

Run from the repo root through the ROS environment:
``env/ros_env.sh $(make -s venv-path) python -m bench.recorder_load [--seconds 8]``.

This process streams to a recorder process either a camera (640x480 ``rgb8`` + ``16UC1`` +
camera_info at 15 Hz, best effort, as a driver does; the large-image Fast DDS profile is set for
both processes) or only ``interactions`` (small reliable messages, 15 Hz: the supervision),
then stops the recorder with SIGINT (clean close) or SIGKILL (crash), and reads the recording
back the way ``leovl-data`` does (recovering an unfinished segment). Recorders:

- ``buffered``: flush_period 1e6 s, i.e. rosbags' own buffering only (chunks reach the disk
  once they hold 1 MiB; the baseline);
- ``crash-safe``: the default flush_period 0.2 s (chunk closed, written and fsync'd).

Columns: messages sent (image pairs or interactions), read back / sent, time from the last send
to the newest message read back (s; one period, 1/15 s, when nothing was lost at the end),
recorder CPU seconds per stream second and its ratio to the baseline, MB on disk.

Measured here (2 shared cores, 8 s streams): camera 120 pairs, 100% read back in all four
rows (rosbags writes image chunks at once: they exceed 1 MiB), CPU 0.08-0.20 s/s (noise of a
shared machine); interactions: buffered + SIGKILL read back 0 of 120 (the mcap file was still
empty), crash-safe + SIGKILL 120 of 120, at 0.02 CPU s/s.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from leovl_ros.msg import Interaction
from leovl_ros.ros.dds import use_large_image_profile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))
from conftest import next_domain_id, wait_for  # noqa: E402
from support.node_harness import start  # noqa: E402

from leovl_ros.scans.bag_reader import BagTopics, _open  # noqa: E402

W, H, RATE = 640, 480, 15.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(stream: str, flush_period: float, stop: signal.Signals, seconds: float, tmp: Path) -> dict:
    domain = next_domain_id()
    rec = tmp / f"rec_{stream}_{flush_period}_{stop.name}"
    proc = start("leovl_ros.ros.recorder", ["-p", f"output:={rec}", "-p", f"flush_period:={flush_period}",
                                            "-p", "topics:=[rgb/image, depth/image, rgb/camera_info, interactions]"],
                 domain, tmp / f"{rec.name}.log")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("camera", context=context)
    if stream == "camera":
        pubs = {t: node.create_publisher(m, t, qos_profile_sensor_data)
                for t, m in (("rgb/image", Image), ("depth/image", Image), ("rgb/camera_info", CameraInfo))}
    else:
        pubs = {"interactions": node.create_publisher(Interaction, "interactions", 100)}
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8).tobytes()
    depth = np.full((H, W), 1500, np.uint16).tobytes()
    try:
        wait_for(lambda: all(p.get_subscription_count() for p in pubs.values()), 60.0, "the recorder")
        sent, t0 = 0, time.monotonic()
        cpu0 = _cpu_s(proc.pid)
        while time.monotonic() - t0 < seconds:
            header = Header(stamp=node.get_clock().now().to_msg(), frame_id="camera")
            if stream == "camera":
                pubs["rgb/camera_info"].publish(CameraInfo(header=header, width=W, height=H))
                pubs["rgb/image"].publish(Image(header=header, width=W, height=H, encoding="rgb8", step=3 * W,
                                                data=rgb))
                pubs["depth/image"].publish(Image(header=header, width=W, height=H, encoding="16UC1", step=2 * W,
                                                  data=depth))
            else:
                pubs["interactions"].publish(Interaction(header=header, interaction_id=str(sent), kind="feedback",
                                                         task="qa", instruction="how many chairs?",
                                                         answer="three", corrected_answer="two"))
            sent += 1
            time.sleep(max(0.0, t0 + sent / RATE - time.monotonic()))
        last_sent = time.time()
        time.sleep(0.3)  # let the last messages arrive; a flush period of 0.2 s writes them
        cpu = _cpu_s(proc.pid) - cpu0
        proc.send_signal(stop)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        node.destroy_node()
        context.try_shutdown()
    topics = BagTopics()
    wanted = (topics.rgb, topics.depth) if stream == "camera" else (topics.interactions,)
    try:
        with _open(rec) as reader:
            conns = [c for c in reader.connections if c.topic in wanted]
            stamps = [t for _, t, _ in reader.messages(connections=conns)]
    except ValueError:  # nothing reached the disk
        stamps = []
    size = sum(f.stat().st_size for f in rec.rglob("*") if f.is_file())
    return {"sent": sent, "read": len(stamps) / (len(wanted) * sent),
            "lost_s": max(0.0, last_sent - max(stamps) * 1e-9) if stamps else float("nan"),
            "cpu": cpu / seconds, "mb": size / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    args = parser.parse_args()
    use_large_image_profile()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stream in ("camera", "interactions"):
            for name, flush in (("buffered", 1e6), ("crash-safe", 0.2)):
                for stop in (signal.SIGINT, signal.SIGKILL):
                    rows.append((stream, name, stop.name, run(stream, flush, stop, args.seconds, Path(tmp))))
    base = {(stream, stop): r for stream, name, stop, r in rows if name == "buffered"}
    print(f"{'stream':<13} {'recorder':<11} {'stop':<8} {'sent':>5} {'read/sent':>9} {'lost (s)':>9} {'cpu/s':>6} "
          f"{'x base':>6} {'MB':>7}")
    for stream, name, stop, r in rows:
        print(f"{stream:<13} {name:<11} {stop:<8} {r['sent']:>5} {r['read']:>9.1%} {r['lost_s']:>9.2f} "
              f"{r['cpu']:>6.2f} {r['cpu'] / max(base[stream, stop]['cpu'], 1e-9):>6.2f} {r['mb']:>7.1f}")


if __name__ == "__main__":
    main()
