"""Message <-> numpy conversions at the node's edge: images out, camera info, poses, stamps, clouds."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS message packages are not installed (run through `make test`)")
from geometry_msgs.msg import Pose, Quaternion  # noqa: E402
from sensor_msgs.msg import CameraInfo  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from leovl_ros.geometry import xyz_quat_to_matrix  # noqa: E402
from leovl_ros.ros.conversions import (  # noqa: E402
    grid_cloud_msg, intrinsics_from_camera_info, matrix_to_pose, matrix_to_transform, numpy_to_image,
    pose_to_matrix, seconds_to_stamp, stamp_to_seconds, transform_to_matrix,
)
from leovl_ros.scans.images import decode_image  # noqa: E402

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def test_an_rclpy_image_is_decoded_as_a_view_of_its_buffer():
    rgb = decode_image(numpy_to_image(RGB[:, :, ::-1], "bgr8", Header()), "rgb")  # test_image_decoding: the rest
    assert rgb.base is not None and not rgb.flags.owndata  # a strided view, no copy
    np.testing.assert_array_equal(rgb, RGB)  # the array was laid out as BGR


def test_numpy_to_image_round_trips_every_encoding():
    h = Header(frame_id="cam")
    np.testing.assert_array_equal(decode_image(numpy_to_image(RGB, "rgb8", h), "rgb"), RGB)
    np.testing.assert_array_equal(decode_image(numpy_to_image(RGB, "bgr8", h), "rgb"), RGB[:, :, ::-1])
    depth = RNG.integers(0, 5000, (4, 6)).astype(np.uint16)
    np.testing.assert_array_equal(decode_image(numpy_to_image(depth, "16UC1", h), "depth"), depth)
    with pytest.raises(ValueError, match="needs 3 channel"):
        numpy_to_image(depth, "rgb8", h)


def test_camera_info_gives_intrinsics_raw_or_rectified():
    info = CameraInfo(width=640, height=480, k=[500.0, 0, 319.5, 0, 505.0, 239.5, 0, 0, 1],
                      p=[480.0, 0, 320.0, 0, 0, 482.0, 240.0, 0, 0, 0, 1, 0])
    raw = intrinsics_from_camera_info(info)
    assert (raw.fx, raw.fy, raw.cx, raw.cy, raw.width, raw.height) == (500.0, 505.0, 319.5, 239.5, 640, 480)
    rect = intrinsics_from_camera_info(info, rectified=True)
    assert (rect.fx, rect.cy) == (480.0, 240.0)
    with pytest.raises(ValueError, match="not calibrated"):
        intrinsics_from_camera_info(CameraInfo(width=640, height=480))
    with pytest.raises(ValueError, match="no image size"):
        intrinsics_from_camera_info(CameraInfo(k=info.k))


def test_poses_transforms_and_stamps_round_trip():
    T = xyz_quat_to_matrix([1.0, -2.0, 0.5], [0.1, 0.2, 0.3, 0.9])  # normalised inside
    assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3))
    np.testing.assert_allclose(pose_to_matrix(matrix_to_pose(T)), T, atol=1e-12)
    np.testing.assert_allclose(transform_to_matrix(matrix_to_transform(T)), T, atol=1e-12)
    with pytest.raises(ValueError, match="all zeros"):
        pose_to_matrix(Pose(orientation=Quaternion(w=0.0)))  # e.g. a driver that never set it
    stamp = seconds_to_stamp(1_700_000_000.123456789)
    assert stamp.sec == 1_700_000_000 and abs(stamp.nanosec - 123456789) < 300
    assert stamp_to_seconds(stamp) == pytest.approx(1_700_000_000.123456789, abs=1e-6)


def test_grid_cloud_has_named_float_fields():
    xyz = RNG.normal(size=(4, 3)).astype(np.float32)
    intensity = np.linspace(0, 1, 4, dtype=np.float32)
    voxels = np.array([1, 2, 3, 4], np.float32)
    msg = grid_cloud_msg(xyz, intensity, voxels, Header(frame_id="map"))
    assert [f.name for f in msg.fields] == ["x", "y", "z", "intensity", "voxels"]
    assert (msg.width, msg.height, msg.point_step, msg.row_step) == (4, 1, 20, 80)
    back = np.frombuffer(bytes(msg.data), np.float32).reshape(4, 5)
    np.testing.assert_array_equal(back, np.concatenate([xyz, intensity[:, None], voxels[:, None]], 1))
    with pytest.raises(ValueError, match="disagree"):
        grid_cloud_msg(xyz, intensity[:3], voxels, Header())
