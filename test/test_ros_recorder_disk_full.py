"""The recorder survives a full disk (issue 27): a real, tiny tmpfs fills up under it while it
records; it stops writing, says so once and on /diagnostics, resumes in a new segment when
space returns, and everything it wrote stays readable."""
from __future__ import annotations

import shutil
import signal
import subprocess
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
pytest.importorskip("leovl_ros.msg", reason="interfaces not built (run through `make test`)")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rosbags.highlevel import AnyReader  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from leovl_ros.ros.conversions import numpy_to_image, seconds_to_stamp  # noqa: E402
from leovl_ros.scans.bag_files import recording_files  # noqa: E402
from leovl_ros.scans.bag_reader import bag_typestore  # noqa: E402

from support.node_harness import start  # noqa: E402

IMAGE = np.random.default_rng(0).integers(0, 255, (170, 200, 3), dtype=np.uint8)  # ~100 kB


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: a real ENOSPC from the kernel, not an injected one (needs root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _recorded_stamps(rec: Path) -> list[list[int]]:
    """The image stamps (s) each segment holds, read as leovl-data reads a recording."""
    segments = []
    with ExitStack() as stack:
        for f in recording_files(rec, stack):
            with AnyReader([f], default_typestore=bag_typestore()) as reader:
                segments.append([reader.deserialize(data, c.msgtype).header.stamp.sec
                                 for c, _, data in reader.messages()])
    return segments


def test_a_full_disk_suspends_the_recorder_which_resumes_in_a_new_segment(ros_context, small_disk, tmp_path):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (2 << 20))  # what someone else stored on the disk
    rec = small_disk / "rec"
    recorder = start("leovl_ros.ros.recorder", [
        "-p", f"output:={rec}", "-p", "flush_period:=0.05", "-p", "topics:=[rgb/image]",
        "-p", "resume_free_mb:=1.5"], ros_context.leovl_domain_id, tmp_path / "recorder.log")
    node = rclpy.create_node("camera", context=ros_context)
    diagnostics: list[DiagnosticStatus] = []
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: diagnostics.extend(s for s in m.status if "recording" in s.name), 10)
    executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)

    def log() -> str:
        return (tmp_path / "recorder.log").read_text(errors="replace")[-3000:]

    def spin_until(condition, what: str, timeout: float = 30.0) -> None:
        wait_for(lambda: executor.spin_once(timeout_sec=0.05) or condition(), timeout, f"{what}\n{log()}")

    sent = 0

    def send(n: int) -> None:
        nonlocal sent
        for _ in range(n):
            pub.publish(numpy_to_image(IMAGE, "rgb8", Header(stamp=seconds_to_stamp(float(sent)), frame_id="c")))
            sent += 1
            executor.spin_once(timeout_sec=0.02)

    try:
        pub = node.create_publisher(Image, "rgb/image", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        spin_until(lambda: pub.get_subscription_count() > 0, "the recorder to subscribe")
        spin_until(lambda: any(s.level == DiagnosticStatus.OK for s in diagnostics), "an OK report")
        while not any(s.level == DiagnosticStatus.ERROR for s in diagnostics) and sent < 200:
            send(5)  # ~25 MB would be needed to get through 200: the disk fills long before
        spin_until(lambda: any(s.level == DiagnosticStatus.ERROR for s in diagnostics), "the full disk reported")
        error = next(s for s in diagnostics if s.level == DiagnosticStatus.ERROR)
        assert "No space left on device" in error.message, error.message
        send(5)  # arrive while suspended: counted, not recorded
        assert recorder.poll() is None, log()
        full_at = sent
        filler.unlink()  # space returns
        diagnostics.clear()
        spin_until(lambda: any(s.level == DiagnosticStatus.OK and "00001" in s.message for s in diagnostics),
                   "recording resumed in segment 00001")
        send(4)
        spin_until(lambda: (values := {v.key: v.value for v in diagnostics[-1].values}) and
                   int(values["messages_not_recorded"]) >= 5, "the count of messages not recorded")
        recorder.send_signal(signal.SIGINT)
        assert recorder.wait(30) == 0, log()
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(10)
        executor.shutdown()
        node.destroy_node()
    text = log()
    assert text.count("recording suspended") == 1 and "Traceback" not in text, text
    first, second = _recorded_stamps(rec)
    assert first and first == list(range(len(first))), first  # everything up to the fill, in order, kept
    assert second and second[-1] == sent - 1 and second == list(range(second[0], sent)), second
    assert second[0] >= full_at  # the new segment starts after the space returned
    assert (rec / "00001" / "metadata.yaml").is_file()  # closed cleanly at SIGINT
    assert shutil.disk_usage(small_disk).free > 0
