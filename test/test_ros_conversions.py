"""Message <-> numpy conversions: every common camera encoding, padding, byte order, errors."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS message packages are not installed (run through `make test`)")
from geometry_msgs.msg import Pose, Quaternion  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from leovl_ros.ros.conversions import (  # noqa: E402
    grid_cloud_msg, image_to_depth, image_to_rgb, intrinsics_from_camera_info, matrix_to_pose,
    matrix_to_transform, numpy_to_image, pose_to_matrix, seconds_to_stamp, stamp_to_seconds,
    transform_to_matrix, xyz_quat_to_matrix,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def _raw(array: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False) -> Image:
    """An Image laid out by hand (not by numpy_to_image), with ``pad`` bytes after every row."""
    a = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = a.reshape(a.shape[0], -1).view(np.uint8)
    data = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], 1)
    return Image(height=a.shape[0], width=a.shape[1], encoding=encoding, is_bigendian=big_endian,
                 step=data.shape[1], data=data.tobytes())


@pytest.mark.parametrize("encoding,layout", [
    ("rgb8", lambda x: x),
    ("bgr8", lambda x: x[:, :, ::-1]),
    ("rgba8", lambda x: np.concatenate([x, np.full(x.shape[:2] + (1,), 9, np.uint8)], 2)),
    ("bgra8", lambda x: np.concatenate([x[:, :, ::-1], np.full(x.shape[:2] + (1,), 9, np.uint8)], 2)),
])
@pytest.mark.parametrize("pad", [0, 3])
def test_colour_encodings_give_rgb(encoding, layout, pad):
    msg = _raw(np.ascontiguousarray(layout(RGB)), encoding, pad)
    rgb = image_to_rgb(msg)
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, RGB)


def test_conversion_is_a_view_of_the_message_buffer():
    msg = numpy_to_image(RGB[:, :, ::-1], "bgr8", Header())
    rgb = image_to_rgb(msg)
    assert rgb.base is not None and not rgb.flags.owndata  # a strided view, no copy


def test_mono8_becomes_grey_rgb():
    grey = RGB[:, :, 0]
    rgb = image_to_rgb(_raw(grey[:, :, None], "mono8", pad=1))
    np.testing.assert_array_equal(rgb, np.repeat(grey[:, :, None], 3, 2))


@pytest.mark.parametrize("big_endian", [False, True])
def test_depth_encodings_keep_units_and_byte_order(big_endian):
    mm = np.array([[0, 1000, 65535], [1, 2, 3]], np.uint16)
    for encoding in ("16UC1", "mono16"):
        d = image_to_depth(_raw(mm[:, :, None], encoding, pad=2, big_endian=big_endian))
        assert d.dtype == np.uint16
        np.testing.assert_array_equal(d, mm)
    m = np.array([[np.nan, 1.5, 0.0]], np.float32)
    d = image_to_depth(_raw(m[:, :, None], "32FC1", pad=4, big_endian=big_endian))
    assert d.dtype == np.float32
    np.testing.assert_array_equal(d, m)


def test_numpy_to_image_round_trips_every_encoding():
    h = Header(frame_id="cam")
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(RGB, "rgb8", h)), RGB)
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(RGB, "bgr8", h)), RGB[:, :, ::-1])
    depth = RNG.integers(0, 5000, (4, 6)).astype(np.uint16)
    np.testing.assert_array_equal(image_to_depth(numpy_to_image(depth, "16UC1", h)), depth)
    with pytest.raises(ValueError, match="needs 3 channel"):
        numpy_to_image(depth, "rgb8", h)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported colour encoding 'yuv422'"),
    (lambda m: setattr(m, "step", 7 * 3 - 1), "shorter than a 7-pixel"),
    (lambda m: setattr(m, "height", 50), "needs"),
    (lambda m: setattr(m, "width", 0), "empty"),
])
def test_malformed_colour_images_are_rejected_with_the_reason(mutate, match):
    msg = _raw(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ValueError, match=match):
        image_to_rgb(msg)


def test_malformed_depth_images_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="unsupported depth encoding 'rgb8'"):
        image_to_depth(_raw(RGB, "rgb8"))
    with pytest.raises(ValueError, match="not a multiple of the 2-byte"):
        image_to_depth(Image(height=2, width=2, encoding="16UC1", step=5, data=bytes(10)))


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
