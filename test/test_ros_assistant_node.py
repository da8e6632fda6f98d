"""The leovl_assistant node end to end over real DDS (own domain id, loopback only).

One node process (tiny random model, the shipped config/assistant.yaml plus a few fast
overrides) and one scene_player process streaming a synthetic room at 15 Hz are shared by
the tests. Both pick their pose transport automatically: /tf where tf2_ros/tf2_msgs are
installed (a ROS install), else nav_msgs/Odometry on `pose` (PyPI, as here);
the test process talks to them as an operator would, through services and topics.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from conftest import next_domain_id, wait_for

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
pytest.importorskip("leovl_ros.msg", reason="interfaces not built (run through `make test`)")
from nav_msgs.msg import Odometry  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image, PointCloud2  # noqa: E402
from std_msgs.msg import Header  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from leovl_ros.ros.conversions import matrix_to_pose, numpy_to_image, seconds_to_stamp  # noqa: E402
from leovl_ros.srv import AskScene, Feedback, LoadAdapter, LoadScene, PlanTask, SaveScene  # noqa: E402

from support.node_harness import LATCHED, REPO, running_assistant, start as _start, stop as _stop  # noqa: E402

PLAYER_FRAMES = 30


@pytest.fixture(scope="module")
def operator(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("assistant")
    with running_assistant(tmp, num_beams=1, max_new_tokens=8, scene_dir=tmp / "scenes", status_rate=5.0,
                           request_timeout=60.0, interaction_log=tmp / "interactions.jsonl") as op:
        player = _start("leovl_ros.ros.scene_player", [
            "-p", f"num_frames:={PLAYER_FRAMES}", "-p", "rate:=15.0", "-p", "seed:=1",
            "-p", "rgb_encoding:=bgra8", "-p", "depth_encoding:=32FC1",  # not the defaults: more conversions
        ], op.domain_id, tmp / "player.log")
        try:
            wait_for(lambda: player.poll() is not None, 90.0, "the player to stream its frames")
            assert player.returncode == 0, (tmp / "player.log").read_text()
            # Settled = the last three reports agree and every received pair is fused or dropped.
            def settled() -> bool:
                last = op.status[-3:]
                return (len(last) == 3 and len({(s.frames_received, s.keyframes_fused) for s in last}) == 1
                        and last[-1].frames_received >= PLAYER_FRAMES // 2
                        and last[-1].keyframes_fused + last[-1].frames_dropped == last[-1].frames_received)

            try:
                wait_for(lambda: settled() or not op.alive(), 90.0, "the stream to be fused")
            except pytest.fail.Exception:  # say which part never settled: frames lost, fusion behind, no status
                counts = [(s.frames_received, s.keyframes_fused, s.frames_dropped) for s in op.status[-3:]]
                pytest.fail(f"stream not fused within 90 s: {len(op.status)} scene_status reports, last "
                            f"(received, fused, dropped) {counts}\n{op.log_tail()}")
            yield op
        finally:
            _stop(player)


def test_streamed_keyframes_are_fused_and_questions_answered(operator):
    status = operator.status[-1]
    assert status.keyframes_fused >= 3 and status.num_voxels > 0 and 0 < status.num_tokens <= 750
    assert status.model == "tiny-random" and status.memory_bytes > 0 and status.newest_frame_age >= 0.0
    assert status.header.frame_id == "map" and 0 < status.preservation_rate <= 1.0
    res = operator.call("ask_scene", AskScene.Request(question="what is next to the sofa?"))
    assert res.success and res.answer.strip() and res.message == ""
    assert res.scene_tokens == status.num_tokens and res.latency > 0 and res.interaction_id
    wait_for(lambda: any(i.interaction_id == res.interaction_id for i in operator.interactions), 20.0, "interaction")
    got = next(i for i in operator.interactions if i.interaction_id == res.interaction_id)
    assert (got.kind, got.task, got.instruction, got.answer) == ("ask", "qa", "what is next to the sofa?", res.answer)
    assert got.scene_stamp.sec > 0 and got.scene_tokens == res.scene_tokens and got.header.frame_id == "map"
    assert got.grounding_score == pytest.approx(res.grounding_score)
    # where the answer came from: the top columns in the reply and the record, every column on the topic
    assert 0 < len(res.grounding_points) == len(res.grounding_weights) <= 16
    assert list(res.grounding_weights) == sorted(res.grounding_weights, reverse=True)
    assert [(p.x, p.y, p.z) for p in got.grounding_points] == [(p.x, p.y, p.z) for p in res.grounding_points]
    assert list(got.grounding_weights) == pytest.approx(list(res.grounding_weights))
    clouds = []
    operator.node.create_subscription(PointCloud2, "answer_grounding", clouds.append, LATCHED)
    wait_for(lambda: clouds, 20.0, "the answer_grounding point cloud")
    assert [f.name for f in clouds[-1].fields] == ["x", "y", "z", "weight"] and clouds[-1].header.frame_id == "map"
    cells = np.frombuffer(bytes(clouds[-1].data), np.float32).reshape(-1, 4)
    assert cells[:, 3].sum() == pytest.approx(1.0, abs=1e-4) and cells[:, 3].max() == pytest.approx(
        res.grounding_weights[0])
    wait_for(lambda: operator.grids, 20.0, "the scene_grid point cloud")
    assert operator.grids[-1].width == status.num_tokens and operator.grids[-1].header.frame_id == "map"


def test_plan_task_returns_steps_and_publishes_the_same_plan(operator):
    res = operator.call("plan_task", PlanTask.Request(goal="tidy the room"))
    assert res.success and res.plan.steps and res.plan.goal == "tidy the room" and res.latency > 0
    assert [s.index for s in res.plan.steps] == list(range(1, len(res.plan.steps) + 1))
    wait_for(lambda: any(p.interaction_id == res.plan.interaction_id for p in operator.plans), 20.0, "the plan topic")
    assert next(p for p in operator.plans if p.interaction_id == res.plan.interaction_id) == res.plan
    wait_for(lambda: any(i.interaction_id == res.plan.interaction_id and i.kind == "plan"
                         for i in operator.interactions), 20.0, "the plan interaction")


def test_feedback_is_published_and_bad_requests_are_refused(operator):
    asked = operator.call("ask_scene", AskScene.Request(question="how many chairs?", session_id="s1"))
    assert asked.success
    res = operator.call("scene_feedback", Feedback.Request(interaction_id=asked.interaction_id,
                                                           corrected_answer="three", comment="counted twice"))
    assert res.success and res.message == ""
    wait_for(lambda: any(i.kind == "feedback" and i.interaction_id == asked.interaction_id
                         for i in operator.interactions), 20.0, "the feedback interaction")
    fb = next(i for i in operator.interactions if i.kind == "feedback")
    assert (fb.answer, fb.corrected_answer, fb.session_id, fb.task) == (asked.answer, "three", "s1", "dialogue")
    assert fb.comment == "counted twice"
    refusals = [
        ("scene_feedback", Feedback.Request(interaction_id="nope", corrected_answer="x"), "unknown interaction_id"),
        ("ask_scene", AskScene.Request(question="x" * 501), "limit is 500"),
        ("ask_scene", AskScene.Request(question="describe", task="object_caption"), "needs use_anchor"),
        ("plan_task", PlanTask.Request(goal=""), "goal is empty"),
        ("load_adapter", LoadAdapter.Request(bundle_path="/nonexistent"), "not a bundle directory"),
    ]
    for name, request, match in refusals:
        res = operator.call(name, request)
        assert not res.success and match in res.message, (name, res.message)


def test_save_reset_load_restores_the_same_grid(operator):
    from leovl_ros.condensed_grid import GridConfig, build_grid
    from leovl_ros.voxel_map import VoxelMap

    saved = operator.call("save_scene", SaveScene.Request(path="before.safetensors"))
    assert saved.success and Path(saved.path) == operator.tmp / "scenes" / "before.safetensors" and saved.num_voxels > 0
    assert operator.call("reset_scene", Trigger.Request()).success
    operator.wait_status(lambda s: s.num_voxels == 0 and s.keyframes_fused == 0, 20.0, "an empty scene")
    empty = operator.call("ask_scene", AskScene.Request(question="anything here?"))
    assert not empty.success and "scene is empty" in empty.message
    (operator.tmp / "junk.safetensors").write_bytes(b"\x00" * 64)
    bad = operator.call("load_scene", LoadScene.Request(path=str(operator.tmp / "junk.safetensors")))
    assert not bad.success and "cannot load scene" in bad.message
    loaded = operator.call("load_scene", LoadScene.Request(path=saved.path))
    assert loaded.success and loaded.num_voxels == saved.num_voxels
    operator.wait_status(lambda s: s.num_voxels == saved.num_voxels, 20.0, "the loaded scene")
    again = operator.call("save_scene", SaveScene.Request(path=str(operator.tmp / "scenes" / "after.safetensors")))
    a, b = (build_grid(VoxelMap.load(p), GridConfig()) for p in (saved.path, again.path))
    assert a.num_tokens == b.num_tokens > 0
    np.testing.assert_array_equal(a.features.numpy(), b.features.numpy())


def _broken_frames(operator, publishers, stamp0: float) -> int:
    """Publish malformed pairs one by one (each with a valid pose far from earlier keyframes),
    waiting until the node counted each; returns the pairs sent."""
    pose_pub, info_pub, rgb_pub, depth_pub = publishers
    w, h = 32, 24
    rgb, mm = np.full((h, w, 3), 90, np.uint8), np.full((h, w), 1500, np.uint16)
    cases = [
        ("rgb8", rgb, "16UC1", mm, dict(encoding="yuv422")),  # unknown encoding
        ("rgb8", rgb, "16UC1", mm, dict(step=10)),  # step shorter than a row
        ("rgb8", rgb, "16UC1", mm, dict(height=h * 4)),  # data shorter than height * step
        ("rgb8", rgb, "32FC1", np.full((h, w), np.nan, np.float32), {}),  # NaN depth
        ("bgr8", rgb, "16UC1", np.zeros((h, w), np.uint16), {}),  # zero depth
        ("rgb8", rgb[:12], "16UC1", mm[:12], {}),  # image size disagrees with camera_info
        ("rgb8", rgb, "16UC1", mm, {"no pose": True}),  # no pose near the image stamp
    ]
    k = [30.0, 0.0, 15.5, 0.0, 30.0, 11.5, 0.0, 0.0, 1.0]
    for i, (rgb_enc, colour, depth_enc, depth, broken) in enumerate(cases):
        received = operator.status[-1].frames_received
        stamp = seconds_to_stamp(stamp0 + i)
        header = Header(stamp=stamp, frame_id="camera_optical")
        T = np.eye(4)
        T[0, 3] = 10.0 + 5 * i  # a new place each time: every pair is a keyframe candidate
        odom = Odometry(header=Header(stamp=stamp, frame_id="map"))
        odom.pose.pose = matrix_to_pose(T)
        if not broken.pop("no pose", False):
            pose_pub.publish(odom)
        info_pub.publish(CameraInfo(header=header, width=w, height=h, k=k))
        colour_msg = numpy_to_image(colour, rgb_enc, header)
        for key, value in broken.items():
            setattr(colour_msg, key, value)
        rgb_pub.publish(colour_msg)
        depth_pub.publish(numpy_to_image(depth, depth_enc, header))
        operator.wait_status(lambda s: s.frames_received > received, 30.0, f"broken pair {i} received")
    return len(cases)


def test_broken_frames_and_a_burst_of_questions_leave_the_node_alive(operator):
    node = operator.node
    publishers = (node.create_publisher(Odometry, "pose", 50), node.create_publisher(CameraInfo, "rgb/camera_info", 50),
                  node.create_publisher(Image, "rgb/image", 50), node.create_publisher(Image, "depth/image", 50))
    for pub in publishers:
        wait_for(lambda: pub.get_subscription_count() > 0, 20.0, f"the node to subscribe {pub.topic_name}")
    before = operator.status[-1]
    burst = [operator.call_async("ask_scene", AskScene.Request(question=f"question {i}?")) for i in range(20)]
    sent = _broken_frames(operator, publishers, stamp0=time.time() + 1000.0)
    wait_for(lambda: all(f.done() for f in burst) or not operator.alive(), 180.0, f"20 answers\n{operator.log_tail()}")
    assert operator.alive(), operator.log_tail()
    results = [f.result() for f in burst]
    answered = [r for r in results if r.success]
    refused = [r for r in results if not r.success]
    assert answered and all(r.answer for r in answered)
    assert all("busy" in r.message for r in refused), [r.message for r in refused]
    status = operator.wait_status(lambda s: s.frames_dropped >= before.frames_dropped + sent
                                  and s.keyframes_fused + s.frames_dropped == s.frames_received, 30.0,
                                  "the broken frames dropped")
    assert status.keyframes_fused == before.keyframes_fused and status.num_voxels == before.num_voxels
    assert operator.call("ask_scene", AskScene.Request(question="still there?")).success


def test_load_adapter_switches_bundles(operator):
    from leovl_ros.model.config import LeoVLConfig
    from leovl_ros.model.leovl import LeoVL
    from leovl_ros.model.tiny import tiny_qwen25vl_config
    from leovl_ros.model.tokenizer import load_qwen_tokenizer
    import torch

    qwen = tiny_qwen25vl_config()  # the node's tiny-random base: same seed, same weights
    model = LeoVL.from_config(qwen, LeoVLConfig(base_model="tiny-random", hidden_size=qwen.text_config.hidden_size))
    with torch.no_grad():
        model.heads.anchor.add_(1.0)
    model.save_bundle(operator.tmp / "bundle_a")
    (operator.tmp / "broken_bundle").mkdir()
    bad = operator.call("load_adapter", LoadAdapter.Request(bundle_path=str(operator.tmp / "broken_bundle")))
    assert not bad.success and "previous adapter stays in use" in bad.message and bad.model == "tiny-random"
    res = operator.call("load_adapter", LoadAdapter.Request(bundle_path=str(operator.tmp / "bundle_a")))
    assert res.success, res.message
    assert res.model == f"tiny-random+{operator.tmp / 'bundle_a'}"
    operator.wait_status(lambda s: s.model == res.model, 20.0, "the new model name")
    reply = operator.call("ask_scene", AskScene.Request(question="what is here?"))
    assert reply.success
    # The node's max_new_tokens:=8 still holds over the bundle's own 256 (an untrained model rambles on).
    assert len(load_qwen_tokenizer()(reply.answer)["input_ids"]) <= 12, reply.answer


@pytest.mark.parametrize("args,match", [
    (["model:=" + str(REPO / "README.md")], "is a file; give a checkpoint directory"),
    (["model:=/nonexistent/qwen"], "parameter 'model': '/nonexistent/qwen' is not a directory"),
    (["model:=tiny-random", "depth_min:=5.0", "depth_max:=1.0"], "invalid parameters: need"),
])
def test_an_unusable_parameter_stops_the_node_with_one_line(args, match, tmp_path):
    log = tmp_path / "node.log"
    proc = _start("leovl_ros.ros.assistant_node", [a for arg in args for a in ("-p", arg)], next_domain_id(), log)
    assert proc.wait(60) == 2
    text = log.read_text()
    ours = [line for line in text.splitlines() if "leovl_assistant" in line]  # not rcl's own notices
    assert "Traceback" not in text and len(ours) == 1, text
    assert "cannot start: " in ours[0] and match in ours[0], ours


def test_the_shipped_params_file_runs_the_bundled_model(tmp_path):
    """config/assistant.yaml as shipped (model: leovl-tiny, paper decoding) over real DDS."""
    with running_assistant(tmp_path, ["ask_scene"], model=None, scene_dir=tmp_path,
                           interaction_log=tmp_path / "log.jsonl") as op:
        status = op.wait_status(lambda s: True, 20.0, "any status")
        assert status.model.endswith("models/leovl-tiny"), status.model
        player = _start("leovl_ros.ros.scene_player", ["-p", "num_frames:=6", "-p", "rate:=10.0", "-p", "seed:=900001"],
                        op.domain_id, tmp_path / "player.log")
        assert player.wait(90) == 0, (tmp_path / "player.log").read_text()
        op.wait_status(lambda s: s.keyframes_fused >= 1, 30.0, "a fused keyframe")
        res = op.call("ask_scene", AskScene.Request(question="How many chairs are there in the room?"))
        assert res.success and res.answer in {str(n) for n in range(10)}, res  # a trained model answers in kind
        plan = op.call("plan_task", PlanTask.Request(goal="read a book"))
        assert plan.success and len(plan.plan.steps) >= 2, plan
