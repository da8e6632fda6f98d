"""Robot bags as training data: frames posed by TF, interactions -> SFT and preference records."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from leovl_ros.synth.render import tiny_scene
from leovl_ros.synth.writers import BagExtra, write_bag
from leovl_ros.geometry import xyz_quat_to_matrix as pose_matrix
from leovl_ros.scans.bag_reader import BagTopics, bag_frames, bag_scene_id, bag_typestore, scan_bag
from leovl_ros.training.bags import records_from_bag
from leovl_ros.training.data_cli import main as data_main
from leovl_ros.training.records import ConversionReport, read_records
from leovl_ros.scans.tf_buffer import TfBuffer

MSG = (Path(__file__).resolve().parents[1] / "msg" / "Interaction.msg").read_text()
T0 = 1_700_000_000 * 10**9


def _interaction(i: int, kind: str, task: str, instruction: str, answer: str, corrected: str = "", **extra):
    return (T0 + i * 10**8, {"interaction_id": extra.pop("iid", f"id{i}"), "kind": kind, "task": task,
                             "instruction": instruction, "answer": answer, "corrected_answer": corrected, **extra})


INTERACTIONS = [
    _interaction(1, "ask", "qa", "What colour is the bed?", "red"),  # never corrected: unlabelled
    _interaction(2, "ask", "qa", "How many chairs are there?", "three", iid="q2"),
    _interaction(3, "feedback", "qa", "How many chairs are there?", "three", "two", iid="q2",
                 situation="I am at the door."),
    _interaction(4, "ask", "dialogue", "Is there a lamp?", "no", iid="d1", session_id="s1"),
    _interaction(5, "feedback", "dialogue", "Is there a lamp?", "no", "yes, on the desk", iid="d1", session_id="s1"),
    _interaction(6, "ask", "dialogue", "What colour is it?", "blue", iid="d2", session_id="s1"),
    _interaction(7, "feedback", "dialogue", "What colour is it?", "blue", "green", iid="d2", session_id="s1"),
    _interaction(8, "plan", "plan", "tidy the desk", "1. pick up the mug.", iid="p1"),
    _interaction(9, "feedback", "object_caption", "Describe this object.", "A red box.", "a red box", iid="o1",
                 has_anchor=True, anchor={"x": 1.0, "y": 2.0, "z": 0.5}, anchor_radius=0.4),
    _interaction(10, "feedback", "qa", "Where is the mug?", "on the desk", "", iid="bad"),
    _interaction(11, "feedback", "object_caption", "Describe this object.", "A bed.", "a wide bed", iid="o2",
                 has_anchor=True, anchor={"x": 0.0, "y": 1.0, "z": 0.3}, anchor_size={"x": 2.0, "y": 1.6, "z": 0.6}),
]


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> tuple[Path, list]:
    _, frames = tiny_scene(seed=0, num_frames=4, width=64, height=48)
    path = tmp_path_factory.mktemp("bags") / "robot_run"
    write_bag(frames, path, storage="mcap",
              extra_messages=[BagExtra("interactions", "leovl_ros/msg/Interaction", MSG, INTERACTIONS)])
    return path, frames


def test_from_bag_yields_expected_sft_and_preference_records(bag, tmp_path, capsys):
    path, _ = bag
    sft, pref = tmp_path / "sft.jsonl", tmp_path / "pref.jsonl"
    assert data_main(["from-bag", str(path), "--out-sft", str(sft), "--out-pref", str(pref)]) == 0
    scene = bag_scene_id(path)
    assert scene == "bag_robot_run"
    base = {"scene_id": scene, "source": "bag_feedback"}
    expected_sft = [
        {**base, "task": "qa", "instruction": "How many chairs are there?", "response": "two",
         "situation": "I am at the door.", "id": "q2"},
        {**base, "task": "dialogue", "instruction": "Is there a lamp?", "response": "yes, on the desk", "id": "d1"},
        {**base, "task": "dialogue", "instruction": "What colour is it?", "response": "green",
         "history": [["Is there a lamp?", "yes, on the desk"]], "id": "d2"},  # earlier turn, corrected
        {**base, "task": "object_caption", "instruction": "Describe this object.", "response": "a red box",
         "anchor": {"center": [1.0, 2.0, 0.5], "radius": pytest.approx(0.4)}, "id": "o1"},
        {**base, "task": "object_caption", "instruction": "Describe this object.", "response": "a wide bed",
         "anchor": {"center": [0.0, 1.0, pytest.approx(0.3)], "size": [2.0, pytest.approx(1.6), pytest.approx(0.6)]},
         "id": "o2"},  # a box region (AskScene anchor_size) stays a box
    ]
    assert [r.to_dict() for r in read_records(sft)] == expected_sft
    prefs = [r.to_dict() for r in read_records(pref)]
    assert [(p["id"], p["response"], p["rejected"], p["source"]) for p in prefs] == [
        ("q2", "two", "three", "bag_preference"), ("d1", "yes, on the desk", "no", "bag_preference"),
        ("d2", "green", "blue", "bag_preference"), ("o2", "a wide bed", "A bed.", "bag_preference")]  # "a red box" equals the answer after cleaning: no pair
    out = capsys.readouterr().out
    assert "wrote 5 SFT records" in out and "4 preference pairs" in out
    assert "unlabelled Q&A (pseudo-labels off" in out and "feedback without a corrected_answer" in out


def test_trusted_answers_become_pseudo_labels(bag):
    report = ConversionReport()
    sft, prefs = records_from_bag(bag[0], report, trust_answers=True)
    pseudo = [r for r in sft if r.source == "bag_pseudo"]
    assert [(r.id, r.response) for r in pseudo] == [("id1", "red"), ("p1", "1. pick up the mug.")]
    assert pseudo[1].instruction == "Create a step-by-step plan for the task: tidy the desk"
    assert len(prefs) == 4 and report.skipped["answer superseded by a correction (kept as the feedback record)"] == 3


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_frames_pair_images_and_poses(tmp_path, storage):
    _, frames = tiny_scene(seed=1, num_frames=3, width=64, height=48)
    path = write_bag(frames, tmp_path / f"b_{storage}", storage=storage)
    stats: dict[str, int] = {}
    got = list(bag_frames(path, stats=stats))
    assert stats == {"frames": 3, "no_pose": 0, "unpaired": 0}
    for f, g in zip(frames, got):
        assert np.array_equal(g.rgb, f.rgb)
        assert np.allclose(g.depth_m, f.depth_mm.astype(np.float32) / 1000)
        assert np.allclose(g.T_map_camera, f.T_map_camera, atol=1e-9)
        assert np.allclose(g.intrinsics.K, f.K) and g.stamp_s == pytest.approx(f.stamp_ns * 1e-9)
    with pytest.raises(ValueError, match="no messages on '/cam/info'"):
        list(bag_frames(path, BagTopics(camera_info="/cam/info")))


def _depth_msg(stamp_ns: int, depth_mm: np.ndarray) -> tuple[int, dict]:
    h, w = depth_mm.shape
    return stamp_ns, {"header": {"stamp": {"sec": stamp_ns // 10**9, "nanosec": stamp_ns % 10**9},
                                 "frame_id": "camera_optical"},
                      "height": h, "width": w, "encoding": "16UC1", "step": 2 * w,
                      "data": depth_mm.astype("<u2").view(np.uint8).reshape(-1)}


def test_bag_frames_pair_the_closest_depth_and_skip_invalid_transforms(tmp_path):
    _, frames = tiny_scene(seed=1, num_frames=3, width=64, height=48)
    ms = 10**6
    depth = [m for f in frames for m in (_depth_msg(f.stamp_ns - 15 * ms, np.zeros_like(f.depth_mm)),  # a decoy
                                          _depth_msg(f.stamp_ns - 2 * ms, f.depth_mm))]  # the closer one
    bad_tf = {"transforms": [{"header": {"stamp": {"sec": frames[0].stamp_ns // 10**9}, "frame_id": "map"},
                              "child_frame_id": "imu", "transform": {"rotation": {"w": 0.0}}}]}  # zero quaternion
    path = write_bag(frames, tmp_path / "b", depth_topic="depth/unused", extra_messages=[
        BagExtra("depth/image", "sensor_msgs/msg/Image", None, depth),
        BagExtra("tf_static", "tf2_msgs/msg/TFMessage", None, [(frames[0].stamp_ns, bad_tf)])])
    scan = scan_bag(path)
    assert scan.invalid_poses == 1  # skipped and counted; the rest of the TF is read
    stats: dict[str, int] = {}
    got = list(bag_frames(path, scan=scan, stats=stats))
    assert stats == {"frames": 3, "no_pose": 0, "unpaired": 3}  # each decoy was overtaken
    for f, g in zip(frames, got):  # the first depth within the 20 ms tolerance would be the decoy
        np.testing.assert_allclose(g.depth_m, f.depth_mm.astype(np.float32) / 1000, rtol=1e-6)


def test_one_typestore_knows_every_message_of_the_package():
    ts = bag_typestore()
    for name in ("Interaction", "Plan", "PlanStep", "SceneStatus"):
        assert f"leovl_ros/msg/{name}" in ts.types
    assert "sensor_msgs/msg/Image" in ts.types


def test_pose_topic_with_camera_extrinsic(tmp_path):
    _, frames = tiny_scene(seed=2, num_frames=2, width=64, height=48)
    shift = np.eye(4)
    shift[0, 3] = 1.0  # the odometry says the robot base is 1 m further along x than TF says the camera is
    extrinsic = np.eye(4)
    extrinsic[2, 3] = 0.1  # camera 10 cm along the base's z
    poses = []
    for f in frames:
        T = shift @ f.T_map_camera
        q = Rotation.from_matrix(T[:3, :3]).as_quat()
        poses.append((f.stamp_ns, {
            "header": {"stamp": {"sec": f.stamp_ns // 10**9, "nanosec": f.stamp_ns % 10**9}, "frame_id": "map"},
            "pose": {"position": dict(zip("xyz", T[:3, 3])), "orientation": dict(zip("xyzw", q))}}))
    path = write_bag(frames, tmp_path / "odom_bag",
                     extra_messages=[BagExtra("robot/pose", "geometry_msgs/msg/PoseStamped", None, poses)])
    topics = BagTopics(pose_topic="/robot/pose", camera_extrinsic=extrinsic.tolist())
    got = list(bag_frames(path, topics))
    assert len(got) == 2
    for f, g in zip(frames, got):
        assert np.allclose(g.T_map_camera, shift @ f.T_map_camera @ extrinsic, atol=1e-9)


def test_tf_buffer_chains_and_interpolates():
    tf = TfBuffer(tolerance_s=0.05)
    tf.add("map", "odom", 0.0, pose_matrix((1, 0, 0), (0, 0, 0, 1)), static=True)
    yaw90 = (0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4))
    tf.add("odom", "base", 1.0, pose_matrix((0, 0, 0), (0, 0, 0, 1)))
    tf.add("odom", "base", 2.0, pose_matrix((2, 0, 0), yaw90))
    tf.add("base", "camera", 0.0, pose_matrix((0, 0, 1), (0, 0, 0, 1)), static=True)
    T = tf.lookup("map", "camera", 1.5)  # halfway: x = 1 + 1, 45 degrees of yaw, camera 1 m up
    assert np.allclose(T[:3, 3], [2, 0, 1])
    assert np.isclose(np.degrees(np.arctan2(T[1, 0], T[0, 0])), 45.0)
    assert np.allclose(tf.lookup("camera", "map", 1.5), np.linalg.inv(T))
    assert tf.lookup("map", "camera", 2.04) is not None  # within tolerance of the last pose
    assert tf.lookup("map", "camera", 2.2) is None  # no extrapolation
    assert tf.lookup("map", "elsewhere", 1.5) is None


def test_interactions_file_matches_message_definition():
    # The test bag encodes every field above; a renamed field in Interaction.msg must fail here.
    fields = {line.split()[1] for line in MSG.splitlines() if line.strip() and not line.startswith("#")}
    for _, msg in INTERACTIONS:
        assert set(msg) <= fields, json.dumps(sorted(set(msg) - fields))
