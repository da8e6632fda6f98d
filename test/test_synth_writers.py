"""Writers: ScanNet-style folders and rosbag2 files read back with the right content."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation

from leovl_ros.synth.render import tiny_scene
from leovl_ros.synth.writers import BagExtra, from_dict, write_bag, write_scannet

INTERACTION = """std_msgs/Header header
string question
string answer
float32 grounding_score
string[] tags
"""


@pytest.fixture(scope="module")
def scene():
    return tiny_scene(seed=4, num_frames=5)


def test_scannet_folder_round_trip(scene, tmp_path):
    room, frames = scene
    out = write_scannet(frames, tmp_path / room.scene_id, extra_json={"scene_graph.json": room.scene_graph()})
    assert sorted(p.name for p in (out / "color").iterdir()) == [f"{i}.jpg" for i in range(5)]
    K4 = np.loadtxt(out / "intrinsic" / "intrinsic_depth.txt")
    assert K4.shape == (4, 4) and np.allclose(K4[:3, :3], frames[0].K, atol=1e-6)
    for i, f in enumerate(frames):
        depth = np.asarray(Image.open(out / "depth" / f"{i}.png"))
        assert depth.dtype == np.uint16 and np.array_equal(depth, f.depth_mm)
        assert np.allclose(np.loadtxt(out / "pose" / f"{i}.txt"), f.T_map_camera, atol=1e-8)
        rgb = np.asarray(Image.open(out / "color" / f"{i}.jpg"))
        assert rgb.shape == f.rgb.shape and np.abs(rgb.astype(int) - f.rgb).mean() < 6  # jpeg loss only
        assert np.array_equal(np.asarray(Image.open(out / "instance" / f"{i}.png")).astype(int), f.instance + 1)
    assert (out / "scene_graph.json").read_text().count('"category"') == len(room.objects)
    assert [p.name for p in tmp_path.iterdir()] == [room.scene_id]  # no temporary leftovers


def test_scannet_refuses_to_clobber_and_checks_frames(scene, tmp_path):
    _, frames = scene
    write_scannet(frames[:1], tmp_path / "s")
    with pytest.raises(FileExistsError, match="overwrite"):
        write_scannet(frames[:1], tmp_path / "s")
    write_scannet(frames[:2], tmp_path / "s", overwrite=True)
    assert len(list((tmp_path / "s" / "depth").iterdir())) == 2
    with pytest.raises(ValueError, match="no frames"):
        write_scannet([], tmp_path / "t")
    bad = frames[0].__class__(**{**frames[0].__dict__, "depth_mm": frames[0].depth_mm.astype(np.float32)})
    with pytest.raises(ValueError, match="uint16"):
        write_scannet([bad], tmp_path / "t")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bag_reads_back_with_types_counts_stamps(scene, tmp_path, storage):
    _, frames = scene
    msg = {"question": "how many chairs?", "answer": "2", "grounding_score": 1.5, "tags": ["qa", "count"]}
    extra = BagExtra("interactions", "leovl_ros/msg/Interaction", INTERACTION, [(frames[2].stamp_ns + 1, msg)])
    if storage == "sqlite3":  # the plain-tuple form of the contract
        extra = ("interactions", "leovl_ros/msg/Interaction", INTERACTION, [(frames[2].stamp_ns + 1, msg)])
    path = write_bag(frames, tmp_path / "bag", storage=storage, extra_messages=[extra])
    stamps = [f.stamp_ns for f in frames]
    with AnyReader([path], default_typestore=get_typestore(Stores.ROS2_JAZZY)) as reader:
        types = {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}
        assert types == {"/tf": ("tf2_msgs/msg/TFMessage", 5), "/rgb/camera_info": ("sensor_msgs/msg/CameraInfo", 5),
                         "/rgb/image": ("sensor_msgs/msg/Image", 5), "/depth/image": ("sensor_msgs/msg/Image", 5),
                         "/interactions": ("leovl_ros/msg/Interaction", 1)}
        seen = {t: [] for t in types}
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            seen[conn.topic].append(t)
            if conn.topic == "/interactions":
                assert (msg.question, msg.answer, list(msg.tags)) == ("how many chairs?", "2", ["qa", "count"])
                assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == t
                continue
            i = stamps.index(t)
            f = frames[i]
            header = msg.transforms[0].header if conn.topic == "/tf" else msg.header
            assert header.stamp.sec * 10**9 + header.stamp.nanosec == t
            if conn.topic == "/rgb/image":
                assert msg.encoding == "rgb8" and msg.header.frame_id == "camera_optical"
                assert np.array_equal(msg.data.reshape(msg.height, msg.width, 3), f.rgb)
            elif conn.topic == "/depth/image":
                assert msg.encoding == "16UC1" and msg.step == 2 * msg.width
                assert np.array_equal(msg.data.view("<u2").reshape(msg.height, msg.width), f.depth_mm)
            elif conn.topic == "/rgb/camera_info":
                assert np.allclose(msg.k.reshape(3, 3), f.K) and (msg.width, msg.height) == (160, 120)
            else:
                tf = msg.transforms[0]
                assert (tf.header.frame_id, tf.child_frame_id) == ("map", "camera_optical")
                q = tf.transform.rotation
                R = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()
                p = tf.transform.translation
                assert np.allclose(R, f.T_map_camera[:3, :3], atol=1e-9)
                assert np.allclose([p.x, p.y, p.z], f.T_map_camera[:3, 3])
        for topic in ("/tf", "/rgb/camera_info", "/rgb/image", "/depth/image"):
            assert sorted(seen[topic]) == stamps


def test_bag_errors(scene, tmp_path):
    _, frames = scene
    with pytest.raises(ValueError, match="storage"):
        write_bag(frames, tmp_path / "b", storage="rosbag1")
    write_bag(frames[:1], tmp_path / "b")
    with pytest.raises(FileExistsError):
        write_bag(frames[:1], tmp_path / "b")
    ts = get_typestore(Stores.ROS2_JAZZY)
    with pytest.raises(ValueError, match="no field"):
        from_dict(ts, "std_msgs/msg/Header", {"frame": "map"})
    with pytest.raises(ValueError, match="msgdef"):
        from_dict(ts, "leovl_ros/msg/Nope", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
