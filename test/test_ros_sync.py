"""Approximate-time RGB/depth pairing and the interpolating pose buffer (ROS-free)."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from leovl_ros.ros.sync import PoseBuffer, PoseLookupError
from leovl_ros.scans.pairing import ApproximateTimePairer


def _pose(x: float, yaw_deg: float = 0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    T[0, 3] = x
    return T


def test_pairs_equal_stamps_in_either_arrival_order():
    pairer = ApproximateTimePairer(slop_s=0.01)
    assert pairer.add_first(1.0, "rgb1") is None
    assert pairer.add_second(1.0, "depth1") == ("rgb1", "depth1", 1.0)
    assert pairer.add_second(2.0, "depth2") is None
    assert pairer.add_first(2.005, "rgb2") == ("rgb2", "depth2", 2.005)  # stamp of the colour image
    assert pairer.pending() == (0, 0)


def test_never_pairs_beyond_the_slop_and_picks_the_closest():
    pairer = ApproximateTimePairer(slop_s=0.02)
    pairer.add_first(1.00, "a")
    assert pairer.add_second(1.05, "far") is None
    assert pairer.add_first(1.06, "b") == ("b", "far", 1.06)
    assert pairer.pending() == (0, 0)  # "a" is older than the emitted pair: it can no longer pair
    pairer.add_second(1.11, "x")
    pairer.add_second(1.13, "y")
    assert pairer.add_first(1.125, "c") == ("c", "y", 1.125)  # 0.005 beats 0.015
    assert pairer.pending() == (0, 0)  # "x" went with it


def test_queues_stay_bounded_when_a_stream_is_missing():
    pairer = ApproximateTimePairer(slop_s=0.01, queue_size=3)
    for i in range(100):
        assert pairer.add_first(float(i), i) is None
    assert pairer.pending() == (3, 0)
    assert pairer.add_second(99.0, "d") == (99, "d", 99.0)


def test_bad_pairer_settings_are_rejected():
    with pytest.raises(ValueError, match="slop"):
        ApproximateTimePairer(slop_s=-1)
    with pytest.raises(ValueError, match="queue_size"):
        ApproximateTimePairer(queue_size=0)


def test_pose_buffer_interpolates_translation_and_rotation():
    buf = PoseBuffer(tolerance_s=0.01, max_gap_s=0.5)
    buf.add(10.0, _pose(0.0, 0.0))
    buf.add(10.2, _pose(1.0, 90.0))
    np.testing.assert_allclose(buf.lookup(10.0), _pose(0.0, 0.0))
    mid = buf.lookup(10.05)
    np.testing.assert_allclose(mid, _pose(0.25, 22.5), atol=1e-9)


def test_pose_buffer_uses_near_ends_and_explains_misses():
    buf = PoseBuffer(tolerance_s=0.05, max_gap_s=0.5)
    with pytest.raises(PoseLookupError, match="no pose received"):
        buf.lookup(1.0)
    buf.add(1.0, _pose(1.0))
    buf.add(3.0, _pose(3.0))  # 2 s gap: too long to interpolate over
    np.testing.assert_allclose(buf.lookup(3.04), _pose(3.0))
    np.testing.assert_allclose(buf.lookup(1.03), _pose(1.0))
    with pytest.raises(PoseLookupError, match=r"within 0.050 s .* nearest is 1.000 s away"):
        buf.lookup(2.0)
    with pytest.raises(PoseLookupError, match="1.000..3.000"):
        buf.lookup(5.0)


def test_pose_buffer_sorts_late_poses_bounds_memory_and_restarts_on_replay():
    buf = PoseBuffer(max_poses=5, tolerance_s=0.0, max_gap_s=1.0)
    for t in (1.0, 3.0, 2.0):
        buf.add(t, _pose(t))
    np.testing.assert_allclose(buf.lookup(2.5)[0, 3], 2.5)
    for t in range(4, 20):
        buf.add(float(t), _pose(t))
    assert len(buf) == 5
    buf.add(0.5, _pose(0.5))  # far older than the buffer: a bag replayed from the start
    assert len(buf) == 1
    with pytest.raises(ValueError, match="finite 4x4"):
        buf.add(1.0, np.full((4, 4), np.nan))


def test_pose_buffer_waits_for_a_pose_newer_than_the_image():
    buf = PoseBuffer(tolerance_s=0.0)
    buf.add(1.0, _pose(1.0))
    with pytest.raises(PoseLookupError):
        buf.lookup(2.0, timeout_s=0.05)
    adder = threading.Thread(target=buf.add, args=(2.0, _pose(2.0)))
    adder.start()
    np.testing.assert_allclose(buf.lookup(2.0, timeout_s=10.0), _pose(2.0))
    adder.join()


def test_pairer_counts_images_that_never_find_a_partner():
    pairer = ApproximateTimePairer(slop_s=0.02, queue_size=3)
    for i in range(5):  # depth always 0.5 s late: nothing pairs, the oldest fall out
        assert pairer.add_first(float(i), f"rgb{i}") is None
        assert pairer.add_second(i + 0.5, f"depth{i}") is None
    assert pairer.discarded == 4 and pairer.nearest_miss_s == pytest.approx(0.5)
    assert pairer.add_first(4.5, "rgb-late") == ("rgb-late", "depth4", 4.5)
    assert pairer.discarded == 4 + 3 + 2  # the match overtook 3 waiting colour and 2 depth images
    assert pairer.unpaired() == 9 + 0  # nothing waits any more
    pairer.add_second(9.0, "depth-alone")
    assert pairer.unpaired() == 10


def test_camera_info_cache_gives_each_image_the_info_with_its_stamp():
    from leovl_ros.ros.sync import CameraInfoCache
    cache = CameraInfoCache(first_wait_s=5.0, match_wait_s=5.0)
    threading.Timer(0.05, cache.add, (1.0, "info@1")).start()
    assert cache.get(1.0) == "info@1"  # the first image waited for its info
    cache.add(2.0, "info@2")
    threading.Timer(0.05, cache.add, (3.0, "info@3")).start()
    assert cache.get(3.0) == "info@3"  # stamped like the images: waits for its own, not the latest
    latched = CameraInfoCache(first_wait_s=0.0, match_wait_s=5.0)
    latched.add(0.0, "once")
    assert latched.get(7.0) == "once"  # a driver that publishes one info: the latest, no wait
