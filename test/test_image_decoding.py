"""The one image decoder (leovl_ros.scans.images): every common camera encoding, padding, byte
order, case, the message shapes of rclpy and rosbags, and clear errors. ROS-free."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from leovl_ros.scans.images import decode_image

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


@dataclass
class _Image:  # any object with sensor_msgs/Image's fields will do
    height: int
    width: int
    encoding: str
    is_bigendian: bool
    step: int
    data: Any


def _raw(array: np.ndarray, encoding: str, pad: int = 0, big_endian: bool = False, as_array: bool = False) -> _Image:
    """An image laid out by hand with ``pad`` bytes after every row; data as bytes (rclpy-like)
    or as a uint8 array (as rosbags deserialises it)."""
    a = array.astype(array.dtype.newbyteorder(">" if big_endian else "<"))
    rows = a.reshape(a.shape[0], -1).view(np.uint8)
    data = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], 1)
    return _Image(a.shape[0], a.shape[1], encoding, big_endian, data.shape[1],
                  data.reshape(-1) if as_array else data.tobytes())


@pytest.mark.parametrize("encoding,layout", [
    ("rgb8", lambda x: x),
    ("bgr8", lambda x: x[:, :, ::-1]),
    ("RGBA8", lambda x: np.concatenate([x, np.full(x.shape[:2] + (1,), 9, np.uint8)], 2)),
    ("bgra8", lambda x: np.concatenate([x[:, :, ::-1], np.full(x.shape[:2] + (1,), 9, np.uint8)], 2)),
])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("as_array", [False, True])
def test_colour_encodings_give_rgb(encoding, layout, pad, as_array):
    rgb = decode_image(_raw(np.ascontiguousarray(layout(RGB)), encoding, pad, as_array=as_array), "rgb")
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, RGB)


@pytest.mark.parametrize("as_array", [False, True])
def test_decoding_is_a_view_of_the_message_buffer(as_array):
    msg = _raw(np.ascontiguousarray(RGB[:, :, ::-1]), "bgr8", pad=2, as_array=as_array)
    rgb = decode_image(msg, "rgb")
    assert not rgb.flags.owndata and not rgb.flags.writeable  # a read-only strided view, no copy
    if as_array:
        assert np.shares_memory(rgb, msg.data)


def test_mono8_becomes_grey_rgb():
    grey = RGB[:, :, 0]
    rgb = decode_image(_raw(grey[:, :, None], "mono8", pad=1), "rgb")
    np.testing.assert_array_equal(rgb, np.repeat(grey[:, :, None], 3, 2))


@pytest.mark.parametrize("big_endian", [False, True])
@pytest.mark.parametrize("as_array", [False, True])
def test_depth_encodings_keep_units_and_byte_order(big_endian, as_array):
    mm = np.array([[0, 1000, 65535], [1, 2, 3]], np.uint16)
    for encoding in ("16UC1", "mono16", "16uc1"):  # some drivers write the lower-case name
        d = decode_image(_raw(mm[:, :, None], encoding, pad=2, big_endian=big_endian, as_array=as_array), "depth")
        assert d.dtype == np.uint16 and d.dtype.isnative
        np.testing.assert_array_equal(d, mm)
    m = np.array([[np.nan, 1.5, 0.0]], np.float32)
    d = decode_image(_raw(m[:, :, None], "32FC1", pad=4, big_endian=big_endian, as_array=as_array), "depth")
    assert d.dtype == np.float32 and d.dtype.isnative
    np.testing.assert_array_equal(d, m)


@pytest.mark.parametrize("mutate,match", [
    (lambda m: setattr(m, "encoding", "yuv422"), "unsupported colour encoding 'yuv422'"),
    (lambda m: setattr(m, "encoding", "16UC1"), "unsupported colour encoding '16UC1'"),
    (lambda m: setattr(m, "step", 7 * 3 - 1), "shorter than a 7-pixel"),
    (lambda m: setattr(m, "height", 50), "needs"),
    (lambda m: setattr(m, "width", 0), "empty"),
])
def test_malformed_colour_images_are_rejected_with_the_reason(mutate, match):
    msg = _raw(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ValueError, match=match):
        decode_image(msg, "rgb")


def test_malformed_depth_images_are_rejected_with_the_reason():
    with pytest.raises(ValueError, match="unsupported depth encoding 'rgb8'"):
        decode_image(_raw(RGB, "rgb8"), "depth")
    with pytest.raises(ValueError, match="not a multiple of the 2-byte"):
        decode_image(_Image(2, 2, "16UC1", False, 5, bytes(10)), "depth")
    with pytest.raises(ValueError, match="kind must be"):
        decode_image(_raw(RGB, "rgb8"), "colour")
