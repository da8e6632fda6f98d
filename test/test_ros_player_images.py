"""scene_player started bare (as the README shows it, no DDS profile in its environment) still
delivers every camera-size frame (issue 27 item 3: 40 of 100 real 640x480 frames arrived)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import wait_for

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402

from leovl_ros.ros.dds import PROFILE_VARIABLES  # noqa: E402

from support.node_harness import REPO, env  # noqa: E402

FRAMES = 20


def test_a_bare_scene_player_sends_every_640x480_frame(ros_context, tmp_path):
    node = rclpy.create_node("camera_user", context=ros_context)
    received = {"rgb": 0, "depth": 0}
    qos = qos_profile_sensor_data  # the player's: a camera driver's best effort
    node.create_subscription(Image, "rgb/image", lambda m: received.__setitem__("rgb", received["rgb"] + 1), qos)
    node.create_subscription(Image, "depth/image", lambda m: received.__setitem__("depth", received["depth"] + 1), qos)
    node.create_subscription(CameraInfo, "rgb/camera_info", lambda m: None, qos)
    node.create_subscription(Odometry, "pose", lambda m: None, qos)
    executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
    executor.add_node(node)
    bare = env(ros_context.leovl_domain_id)
    for variable in PROFILE_VARIABLES:
        bare.pop(variable, None)
    log = tmp_path / "player.log"
    with open(log, "w") as out:
        player = subprocess.Popen([sys.executable, "-m", "leovl_ros.ros.scene_player", "--ros-args",
                                   "-p", f"num_frames:={FRAMES}", "-p", "width:=640", "-p", "height:=480",
                                   "-p", "rate:=10.0", "-p", "pose_output:=odometry"],
                                  cwd=REPO, env=bare, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: executor.spin_once(timeout_sec=0.05) or player.poll() is not None, 120.0,
                 "the player to finish")
        assert player.returncode == 0, log.read_text()
        wait_for(lambda: executor.spin_once(timeout_sec=0.05) or received == {"rgb": FRAMES, "depth": FRAMES},
                 10.0, f"all {FRAMES} frames (got {received})")
    finally:
        if player.poll() is None:
            player.kill()
            player.wait(10)
        executor.shutdown()
        node.destroy_node()
    assert not any(os.environ.get(v) is None for v in PROFILE_VARIABLES)  # the test process keeps its own
