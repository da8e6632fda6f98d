"""The node under hostile input, over real DDS: every failure found by driving it as a
hostile user and a reliability engineer would (issue 16), each reproduced here first.

One node process (tiny random model, long greedy answers so a request can be cancelled
mid-way) is shared; the test process publishes its own frames, poses and camera_info,
and calls services and actions as an operator would.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
pytest.importorskip("leovl_ros.action", reason="interfaces not built (run through `make test`)")
import torch  # noqa: E402
from action_msgs.msg import GoalStatus  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from leovl_ros.action import AskScene as AskSceneAction  # noqa: E402
from leovl_ros.model.config import LeoVLConfig  # noqa: E402
from leovl_ros.model.leovl import LeoVL  # noqa: E402
from leovl_ros.model.tiny import tiny_qwen25vl_config  # noqa: E402
from leovl_ros.ros.conversions import matrix_to_pose, numpy_to_image, seconds_to_stamp  # noqa: E402
from leovl_ros.srv import AskScene, LoadAdapter, LoadScene, SaveScene  # noqa: E402
from leovl_ros.voxel_map import TEMP_SUFFIX, VoxelMap  # noqa: E402

from support.node_harness import Operator, running_assistant, start, stop  # noqa: E402

W, H = 224, 168  # a 8x6 feature grid for the tiny model
K = [160.0, 0.0, 111.5, 0.0, 160.0, 83.5, 0.0, 0.0, 1.0]


def _dead_pid() -> int:
    """A pid no process has now (a killed saver's)."""
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid -= 1


class Camera:
    """Publishes colour + depth + camera_info + odometry like a camera driver and odometry."""

    def __init__(self, op: Operator) -> None:
        node = op.node
        self.op = op
        self.pose = node.create_publisher(Odometry, "pose", 50)
        self.info = node.create_publisher(CameraInfo, "rgb/camera_info", 50)
        self.rgb = node.create_publisher(Image, "rgb/image", 50)
        self.depth = node.create_publisher(Image, "depth/image", 50)
        for pub in (self.pose, self.info, self.rgb, self.depth):
            wait_for(lambda: pub.get_subscription_count() > 0, 30.0, f"the node to subscribe {pub.topic_name}")
        self.stamp, self.n = 1000.0, 0

    def pair(self, x: float | None = None, depth_hw: tuple[int, int] = (H, W), info: bool = True,
             depth_stamp_offset: float = 0.0, k: list[float] = K) -> None:
        """One RGB-D pair, by default 1 m and 1 s on from the last (a keyframe), else at ``x`` m."""
        self.stamp += 1.0
        self.n += 1
        header = Header(stamp=seconds_to_stamp(self.stamp), frame_id="camera_optical")
        T = np.eye(4)
        T[0, 3] = float(self.n) if x is None else x
        odom = Odometry(header=Header(stamp=header.stamp, frame_id="map"))
        odom.pose.pose = matrix_to_pose(T)
        self.pose.publish(odom)
        if info:
            self.info.publish(CameraInfo(header=header, width=W, height=H, k=k))
        rgb = np.random.default_rng(int(self.stamp)).integers(0, 255, (H, W, 3), dtype=np.uint8)
        self.rgb.publish(numpy_to_image(rgb, "rgb8", header))
        depth_header = Header(stamp=seconds_to_stamp(self.stamp + depth_stamp_offset), frame_id="camera_optical")
        self.depth.publish(numpy_to_image(np.full(depth_hw, 1500, np.uint16), "16UC1", depth_header))

    def settled_pairs(self, before: int, sent: int):
        """Wait until the node counted ``sent`` more pairs as fused or dropped; the last status."""
        return self.op.wait_status(lambda s: s.frames_received >= before + sent
                                   and s.keyframes_fused + s.frames_dropped == s.frames_received, 30.0,
                                   f"{sent} pairs counted")


def _drops(status) -> dict[str, int]:
    return dict(zip(status.drop_reasons, status.drop_counts))


@pytest.fixture(scope="module")
def op(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robust")
    scenes = tmp / "scenes"
    scenes.mkdir()
    dead = scenes / f".old.safetensors.{_dead_pid()}.x1{TEMP_SUFFIX}"
    live = scenes / f".busy.safetensors.{os.getpid()}.x2{TEMP_SUFFIX}"
    for temp in (dead, live):
        temp.write_bytes(b"\0" * 1024)
    with running_assistant(tmp, num_beams=1, max_new_tokens=256, compute_grounding="false", scene_dir=scenes,
                           status_rate=5.0, log_throttle=0.0, interaction_log=tmp / "log.jsonl") as operator:
        operator.scenes, operator.temps = scenes, (dead, live)
        operator.diagnostics = []
        operator.node.create_subscription(DiagnosticArray, "/diagnostics", operator.diagnostics.append, 50)
        operator.wait_status(lambda s: True, 30.0, "a first status")
        operator.camera = Camera(operator)
        yield operator


def test_the_first_pair_waits_for_camera_info_and_bad_keyframes_never_stop_mapping(op):
    cam = op.camera
    cam.pair()  # camera_info published right before the images: used, not "no camera_info"
    status = cam.settled_pairs(0, 1)
    assert status.keyframes_fused == 1 and "no camera_info" not in _drops(status), _drops(status)
    before = status.frames_received
    cases = [dict(depth_hw=(20, W)),  # depth of another aspect ratio (not registered): a warning ...
             dict(x=1e6),  # ... then a pose 10^6 m out (UTM), which once killed the mapping thread
             dict(depth_hw=(3, 4)),  # depth coarser than the 8x6 feature grid (same aspect ratio)
             dict(k=[0.0] * 9)]  # an uncalibrated camera_info
    for i, case in enumerate(cases):  # one at a time: a newer keyframe would replace a waiting one
        cam.pair(**case)
        status = cam.settled_pairs(before, i + 1)
    drops = _drops(status)
    for reason in ("bad camera_info", "pose out of range", "depth too small", "depth size mismatch"):
        assert drops.get(reason) == 1, drops
    assert status.keyframes_fused == 1 and status.worker_restarts == 0
    cam.pair()  # mapping goes on (each image is matched with the camera_info of its own stamp)
    status = cam.settled_pairs(before + len(cases), 1)
    assert status.keyframes_fused == 2 and op.alive()
    text = op.log.read_text()
    assert "ValueError" not in text and "Logger severity" not in text
    assert "pose out of range" in text and "not registered" in text  # each logged (log_throttle 0)


def test_pairs_whose_stamps_never_match_are_counted_and_logged(op):
    cam = op.camera
    before = op.status[-1].images_unpaired
    for _ in range(12):  # more than sync_queue_size (10): the oldest fall out unpaired
        cam.pair(depth_stamp_offset=0.5)
        reports = len(op.status)  # paced by the 5 Hz status: a burst would overflow the sensor-QoS history
        wait_for(lambda: len(op.status) > reports, 10.0, "the next status")
    op.wait_status(lambda s: s.images_unpaired >= before + 2, 20.0, f"unpaired images counted (from {before})")
    wait_for(lambda: "found no partner within sync_slop" in op.log.read_text(), 20.0, "the unpaired warning")


def test_diagnostics_report_mapping_requests_memory_and_model(op):
    wait_for(lambda: len(op.diagnostics) >= 2, 20.0, "/diagnostics")
    names = {s.name for s in op.diagnostics[-1].status}
    assert names == {f"leovl_assistant: {n}" for n in ("mapping", "requests", "memory", "model")}
    mapping = [s for a in op.diagnostics for s in a.status if s.name.endswith("mapping")]
    warned = [s for s in mapping if s.level == bytes([1])]
    assert warned and any("dropping frames" in s.message for s in warned), [s.message for s in mapping]
    memory = next(s for s in op.diagnostics[-1].status if s.name.endswith("memory"))
    assert int({kv.key: kv.value for kv in memory.values}["rss_bytes"]) > 10 * 2**20


def test_save_scene_writes_only_scenes_inside_scene_dir(op):
    dead, live = op.temps
    assert not dead.exists() and live.exists()  # a killed save's temp is removed, a running one's kept
    for path in ("../../etc/leovl_x.safetensors", str(op.tmp / "outside.safetensors")):
        res = op.call("save_scene", SaveScene.Request(path=path))
        assert not res.success and "refusing to write" in res.message, res.message
        assert not (op.tmp / "outside.safetensors").exists()
    notes = op.scenes / "notes.txt"
    notes.write_text("not a scene")
    res = op.call("save_scene", SaveScene.Request(path="notes.txt"))
    assert not res.success and "overwrite=true" in res.message and notes.read_text() == "not a scene"
    res = op.call("save_scene", SaveScene.Request(path="notes.txt", overwrite=True))
    assert res.success and VoxelMap.load(notes).num_voxels == res.num_voxels > 0
    res = op.call("save_scene", SaveScene.Request(path="kitchen/"))
    assert res.success and Path(res.path).parent == op.scenes / "kitchen" and Path(res.path).is_file()
    again = op.call("save_scene", SaveScene.Request(path=res.path))  # a scene may be replaced
    assert again.success and again.path == res.path


def test_a_scene_with_nan_features_is_refused(op):
    good = op.scenes / "notes.txt"
    tensors = load_file(str(good))
    with safe_open(str(good), framework="pt") as f:
        meta = f.metadata()
    tensors["acc"][0, 0] = float("nan")
    save_file(tensors, str(op.tmp / "nan.safetensors"), metadata=meta)
    res = op.call("load_scene", LoadScene.Request(path=str(op.tmp / "nan.safetensors")))
    assert not res.success and "non-finite" in res.message, res.message
    received = len(op.status)
    wait_for(lambda: len(op.status) > received + 2, 10.0, "status after the refusal")  # timer alive
    assert op.alive()


def _base() -> LeoVL:
    qwen = tiny_qwen25vl_config()  # the node's tiny-random base: same seed, same weights
    return LeoVL.from_config(qwen, LeoVLConfig(base_model="tiny-random", hidden_size=qwen.text_config.hidden_size))


def test_broken_bundles_are_refused_and_the_old_adapter_keeps_answering(op):
    model = _base()
    model.save_bundle(op.tmp / "nan_bundle")
    heads = op.tmp / "nan_bundle" / "leovl_heads.safetensors"
    with safe_open(str(heads), framework="pt") as f:
        meta = f.metadata()
    tensors = {k: torch.full_like(v, float("nan")) for k, v in load_file(str(heads)).items()}
    save_file(tensors, str(heads), metadata=meta)
    model.set_trainable("full")
    model.save_bundle(op.tmp / "no_config")
    (op.tmp / "no_config" / "config.json").unlink()
    model.save_bundle(op.tmp / "truncated")
    weights = op.tmp / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    for bundle, match in (("nan_bundle", "NaN/inf weights"), ("no_config", "no config.json"),
                          ("truncated", "truncated or corrupted")):
        res = op.call("load_adapter", LoadAdapter.Request(bundle_path=str(op.tmp / bundle)))
        assert not res.success and match in res.message and "internal error" not in res.message, res.message
        assert "previous adapter stays in use" in res.message and res.model == "tiny-random"
    answer = op.call("ask_scene", AskScene.Request(question="what is here?"))
    assert answer.success and answer.answer


class _Goal:
    """One AskScene action goal: its feedback, its handle and its result."""

    def __init__(self, client: ActionClient, question: str) -> None:
        self.feedback: list = []
        self.result = None
        self._done = threading.Event()
        future = client.send_goal_async(AskSceneAction.Goal(question=question, task="scene_caption"),
                                        feedback_callback=lambda m: self.feedback.append(m.feedback))
        wait_for(future.done, 30.0, "the goal to be accepted")
        self.handle = future.result()
        assert self.handle.accepted
        self.handle.get_result_async().add_done_callback(self._finished)

    def _finished(self, future) -> None:
        self.result = future.result()
        self._done.set()

    def wait(self, timeout: float = 60.0):
        wait_for(self._done.is_set, timeout, "the goal's result")
        return self.result


def test_a_cancelled_request_frees_the_model_at_once(op):
    client = ActionClient(op.node, AskSceneAction, "ask_scene")
    assert client.wait_for_server(timeout_sec=30.0)
    running = _Goal(client, "describe the room")
    wait_for(lambda: any(f.state == "answering" and f.partial_answer for f in running.feedback), 30.0,
             "partial answers")
    queued = _Goal(client, "describe it again")
    wait_for(lambda: any(f.state == "queued" for f in queued.feedback), 30.0, "the second goal to queue")
    assert [f.queue_position for f in queued.feedback if f.state == "queued"][0] == 1
    queued.handle.cancel_goal_async()
    assert queued.wait().status == GoalStatus.STATUS_CANCELED and not queued.result.result.success
    assert not any(f.state == "answering" for f in queued.feedback)  # never reached the model
    running.handle.cancel_goal_async()
    result = running.wait()
    assert result.status == GoalStatus.STATUS_CANCELED and "cancelled" in result.result.message
    partial = max(len(f.partial_answer) for f in running.feedback)
    assert partial > 0
    after = _Goal(client, "what is here?")  # the model is free: answered without queueing
    done = after.wait()
    assert done.status == GoalStatus.STATUS_SUCCEEDED and done.result.success and done.result.answer
    assert after.feedback and after.feedback[0].state == "answering", after.feedback[:2]
    assert after.feedback[-1].partial_answer == done.result.answer
    client.destroy()


def test_camera_size_images_arrive_and_every_keyframe_is_fused(op, tmp_path):
    """640x480 rgb8 (921,600 bytes) + 16UC1 at 15 Hz between processes, through the shipped
    Fast DDS profile (conftest exports it, as the launch file does on a robot)."""
    assert op.call("reset_scene", Trigger.Request()).success
    op.wait_status(lambda s: s.frames_received == 0, 20.0, "an empty scene")
    frames = 30
    player = start("leovl_ros.ros.scene_player", [
        "-p", f"num_frames:={frames}", "-p", "rate:=15.0", "-p", "seed:=3", "-p", "width:=640", "-p", "height:=480",
    ], op.domain_id, tmp_path / "player.log")
    try:
        assert player.wait(120) == 0, (tmp_path / "player.log").read_text()
    finally:
        stop(player)
    status = op.wait_status(lambda s: s.frames_received == frames
                            and s.keyframes_fused + s.frames_dropped == s.frames_received, 60.0,
                            f"all {frames} pairs counted")
    drops = _drops(status)
    assert set(drops) <= {"not a keyframe"}, drops  # none lost, none unfused for lack of time
    assert status.keyframes_fused >= 5
    level = op.wait_status(lambda s: s.gravity_angle_deg >= 0, 20.0, "a gravity estimate")
    assert level.gravity_angle_deg < 5.0 and level.leveled_deg == 0.0  # the synthetic room is z-up


def test_the_node_logs_every_severity_from_its_one_log_function(ros_context):
    """rclpy raises when one call site logs a second severity; the node's _log used to be one
    call site for all, so warn-then-error killed the mapping thread (and error-then-warn the node)."""
    from leovl_ros.ros.assistant_node import AssistantNode
    node = rclpy.create_node("log_probe", context=ros_context)
    try:
        for level in ("warn", "error", "info", "warn", "error"):
            AssistantNode._log(node, level, f"a {level} message")
    finally:
        node.destroy_node()
