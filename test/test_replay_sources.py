"""What scene_player plays, without ROS: every scan layout training reads is recognised and
read by training's reader (same frames as build-scenes), and a bag's camera messages come
back in recorded order with their image stamps."""
from __future__ import annotations

import numpy as np
import pytest

from leovl_ros.ros.replay_sources import bag_messages, bag_topics, detect_kind, scan_frames
from leovl_ros.synth.render import render_frames
from leovl_ros.synth.rooms import generate_room
from leovl_ros.synth.writers import write_bag, write_scannet
from support.native_scans import Z_UP_TO_Y_UP, rigid, write_3rscan, write_arkitscenes, write_multiscan
from leovl_ros.scans.frames import FrameReport
from leovl_ros.scans.scan_sources import KINDS, ScanSource

WRITERS = {  # kind: (writer, scan id, room map -> the dataset's world frame)
    "scannet": (lambda frames, path, native: write_scannet(frames, path), "scene0000_00", None),
    "3rscan": (write_3rscan, "0988ea72-eb32-2e61-8344-ef2d4e3b2f1a", rigid(30, [0.7, -0.4, -1.3])),
    "multiscan": (write_multiscan, "scene_00000_00", Z_UP_TO_Y_UP @ rigid(-70, [1.5, 0.2, -1.1])),
    "arkitscenes": (write_arkitscenes, "41069025", rigid(120, [2.0, 3.0, 0.1])),
}


@pytest.fixture(scope="module")
def frames():
    return render_frames(generate_room(0), 4, 112, 84)


def test_every_registered_scan_kind_has_a_fixture_here():
    assert set(WRITERS) == set(KINDS)  # a new reader in leovl_ros.scans.scan_sources gets a case here


@pytest.mark.parametrize("kind", list(WRITERS))
def test_a_scan_is_recognised_and_read_as_build_scenes_reads_it(kind, frames, tmp_path):
    write, scan_id, native = WRITERS[kind]
    folder = tmp_path / kind / scan_id
    write(frames, folder, native)
    assert detect_kind(folder) == kind
    played = list(scan_frames(folder, kind, 1))
    source = ScanSource(kind, str(folder.parent), 1)
    built = list(source.frames(source.locate(scan_id), FrameReport()))
    assert len(played) == len(built) == len(frames)
    for p, b in zip(played, built):
        assert np.array_equal(p.T_map_camera, b.T_map_camera) and np.array_equal(p.depth_m, b.depth_m)
        assert np.array_equal(p.rgb, b.rgb) and p.intrinsics == b.intrinsics


@pytest.mark.parametrize("given", ["video", "frames"])
def test_an_arkitscenes_3dod_video_is_recognised_by_either_folder(given, frames, tmp_path):
    """Apple's 3DOD layout (``<id>/<id>_frames/lowres_depth/...``): the video folder or its
    ``_frames`` folder plays the frames build-scenes reads for the video id."""
    write, scan_id, native = WRITERS["arkitscenes"]
    video = write(frames, tmp_path / "Training" / scan_id, native, layout="3dod")
    folder = video if given == "video" else video / f"{scan_id}_frames"
    assert detect_kind(folder) == "arkitscenes"
    played = list(scan_frames(folder, "arkitscenes", 1))
    source = ScanSource("arkitscenes", str(tmp_path), 1)
    built = list(source.frames(source.locate(scan_id), FrameReport()))
    assert len(played) == len(built) == len(frames)
    assert all(np.array_equal(p.T_map_camera, b.T_map_camera) and np.array_equal(p.depth_m, b.depth_m)
               for p, b in zip(played, built))


def test_a_bag_folder_or_file_is_recognised_and_its_camera_messages_come_in_order(frames, tmp_path):
    bag = write_bag(frames, tmp_path / "bag")
    assert detect_kind(bag) == detect_kind(next(bag.glob("*.mcap"))) == "bag"
    assert bag_topics(bag) == {"/tf": "tf2_msgs/msg/TFMessage", "/rgb/camera_info": "sensor_msgs/msg/CameraInfo",
                               "/rgb/image": "sensor_msgs/msg/Image", "/depth/image": "sensor_msgs/msg/Image"}
    messages = list(bag_messages(bag, {"/rgb/image", "/depth/image"}))
    assert [m.topic for m in messages] == ["/rgb/image", "/depth/image"] * len(frames)
    assert [m.time_ns for m in messages] == sorted(m.time_ns for m in messages)
    assert [m.stamp_s for m in messages[::2]] == pytest.approx([f.stamp_ns * 1e-9 for f in frames])
    assert {m.frame_id for m in messages} == {"camera_optical"} and all(m.raw[:4] == b"\x00\x01\x00\x00"
                                                                          for m in messages)  # CDR, little endian


def test_a_folder_of_no_known_layout_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="neither a rosbag2 recording nor a scan folder"):
        detect_kind(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        detect_kind(tmp_path / "missing")
