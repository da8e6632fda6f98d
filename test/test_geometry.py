"""Camera geometry: intrinsics, depth decoding, back-projection, per-cell points, keyframes, poses;
the shared frame record."""

import math

import numpy as np
import pytest
from scipy.spatial.transform import Rotation, Slerp

from leovl_ros.geometry import (Intrinsics, KeyframeSelector, backproject, cell_points, depth_to_metres, pose_at,
                                xyz_quat_to_matrix)
from leovl_ros.rgbd_frame import RGBDFrame

INTR = Intrinsics(fx=60.0, fy=58.0, cx=31.3, cy=23.7, width=64, height=48)


def pose(rotvec_deg=(0.0, 0.0, 0.0), t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_rotvec(np.radians(rotvec_deg)).as_matrix()
    T[:3, 3] = t
    return T


def plane_depth(intr: Intrinsics, T: np.ndarray, normal, offset) -> np.ndarray:
    """Exact z-depth image of the map-frame plane normal . p = offset seen from pose T."""
    u, v = np.meshgrid(np.arange(intr.width), np.arange(intr.height))
    rays = np.stack([(u - intr.cx) / intr.fx, (v - intr.cy) / intr.fy, np.ones_like(u, float)], -1)  # z = 1
    n = np.asarray(normal, float)
    t = (offset - n @ T[:3, 3]) / (rays @ T[:3, :3].T @ n)  # ray parameter = z-depth
    return t.astype(np.float32)


# A camera 2 m above the floor, looking down and tilted, with a floor plane z = 0.
T_TILT = pose((170.0, 15.0, 30.0), (0.4, -0.3, 2.0))
FLOOR = ((0.0, 0.0, 1.0), 0.0)


def test_intrinsics_from_K_and_camera_info():
    K = INTR.K
    assert Intrinsics.from_K(K, 64, 48) == INTR
    assert Intrinsics.from_camera_info(K.ravel().tolist(), [0.0] * 12, 64, 48) == INTR
    P = np.zeros((3, 4))
    P[:3, :3] = [[50.0, 0, 30.0], [0, 51.0, 22.0], [0, 0, 1]]
    rect = Intrinsics.from_camera_info(K.ravel(), P.ravel(), 64, 48, rectified=True)
    assert (rect.fx, rect.fy, rect.cx, rect.cy) == (50.0, 51.0, 30.0, 22.0)
    with pytest.raises(ValueError, match="not calibrated"):
        Intrinsics.from_camera_info(K.ravel(), [0.0] * 12, 64, 48, rectified=True)
    with pytest.raises(ValueError, match="no skew"):
        Intrinsics.from_K([[60, 1, 30], [0, 60, 20], [0, 0, 1]], 64, 48)
    with pytest.raises(ValueError, match="focal"):
        Intrinsics(0.0, 1.0, 0.0, 0.0, 10, 10)


def test_scaled_intrinsics_keep_projection_consistent():
    p = np.array([0.3, -0.2, 1.7])  # a camera-frame point
    small = INTR.scaled(32, 16)
    for intr in (INTR, small):
        assert intr.K.shape == (3, 3)
    uv = (INTR.K @ p)[:2] / p[2]
    uv_small = (small.K @ p)[:2] / p[2]
    # The same physical point lands on the same place of the resized image (pixel-centre convention).
    np.testing.assert_allclose(uv_small, (uv + 0.5) * [32 / 64, 16 / 48] - 0.5, atol=1e-12)
    assert (small.width, small.height) == (32, 16)


def test_depth_to_metres():
    mm = np.array([[0, 1500], [65535, 1]], np.uint16)
    np.testing.assert_allclose(depth_to_metres(mm), [[0.0, 1.5], [65.535, 0.001]], rtol=1e-6)
    assert depth_to_metres(mm).dtype == np.float32
    f = np.array([[np.nan, 2.0]], np.float64)
    out = depth_to_metres(f)
    assert out.dtype == np.float32 and np.isnan(out[0, 0]) and out[0, 1] == 2.0
    with pytest.raises(ValueError, match="uint16"):
        depth_to_metres(np.ones((2, 2), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        depth_to_metres(np.ones((2, 2, 1), np.uint16))


def test_plane_depth_backprojects_onto_the_plane():
    depth = plane_depth(INTR, T_TILT, *FLOOR)
    assert depth.min() > 0.5  # the whole image sees the floor
    pts = backproject(depth, INTR, T_TILT)  # (H, W, 3)
    assert pts.shape == (48, 64, 3)
    np.testing.assert_allclose(pts[..., 2], 0.0, atol=1e-5)
    # And each point lies on its pixel's ray: it reprojects to the pixel.
    cam = (pts.reshape(-1, 3) - T_TILT[:3, 3]) @ T_TILT[:3, :3]
    uv = (cam @ INTR.K.T)[:, :2] / cam[:, 2:]
    u, v = np.meshgrid(np.arange(64), np.arange(48))
    np.testing.assert_allclose(uv, np.stack([u.ravel(), v.ravel()], 1), atol=1e-3)


def test_uint16_depth_is_millimetres_and_invalid_pixels_are_nan():
    depth = plane_depth(INTR, T_TILT, *FLOOR)
    mm = np.round(depth * 1000).astype(np.uint16)
    mm[0, 0] = 0
    pts = backproject(depth_to_metres(mm), INTR, T_TILT)
    assert np.isnan(pts[0, 0]).all()
    np.testing.assert_allclose(pts[1:, 1:, 2], 0.0, atol=2e-3)  # 0.5 mm quantisation along oblique rays


def reference_cell_points(depth, intr, T, grid_hw, dmin, dmax, frac):
    """Straightforward per-cell loop: the mean of each cell's valid back-projected pixels."""
    h, w = grid_hw
    pts = backproject(depth, intr, T, dmin, dmax)
    rows = np.minimum(((np.arange(intr.height) + 0.5) * h / intr.height).astype(int), h - 1)
    cols = np.minimum(((np.arange(intr.width) + 0.5) * w / intr.width).astype(int), w - 1)
    out, idx = [], []
    for i in range(h):
        for j in range(w):
            cell = pts[np.ix_(rows == i, cols == j)].reshape(-1, 3)
            valid = ~np.isnan(cell[:, 0])
            if valid.sum() > 0 and valid.sum() >= frac * len(cell):
                out.append(cell[valid].astype(np.float64).mean(0))
                idx.append(i * w + j)
    return np.array(out), np.array(idx)


def test_cell_points_match_per_cell_mean_with_holes():
    rng = np.random.default_rng(0)
    depth = plane_depth(INTR, T_TILT, *FLOOR) + rng.uniform(-0.3, 0.3, (48, 64)).astype(np.float32)
    holes = rng.random((48, 64))
    depth[holes < 0.1] = 0.0
    depth[(holes >= 0.1) & (holes < 0.15)] = np.nan
    depth[(holes >= 0.15) & (holes < 0.2)] = np.inf
    depth[(holes >= 0.2) & (holes < 0.25)] = 50.0  # beyond depth_max
    depth[:12, :10] = 0.0  # a fully invalid cell region
    depth[20:30, 40:50][rng.random((10, 10)) < 0.95] = 0.0  # a sparse region
    grid = (5, 7)  # does not divide 48x64: uneven cells
    pts, idx = cell_points(depth, INTR, T_TILT, grid, 0.1, 10.0, 0.3)
    ref_pts, ref_idx = reference_cell_points(depth, INTR, T_TILT, grid, 0.1, 10.0, 0.3)
    assert pts.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(pts, ref_pts, atol=1e-4)
    assert 0 not in idx  # the fully invalid top-left cell is gone
    assert np.all(np.diff(idx) > 0)


def test_cell_points_of_a_plane_lie_on_the_plane():
    normal = np.array([0.2, -0.5, 1.0]) / np.linalg.norm([0.2, -0.5, 1.0])
    depth = plane_depth(INTR, T_TILT, normal, 0.3)
    pts, idx = cell_points(depth, INTR, T_TILT, (6, 8))
    assert len(idx) == 48
    np.testing.assert_allclose(pts @ normal, 0.3, atol=1e-5)


def test_cell_points_rejects_bad_input():
    depth = np.ones((48, 64), np.float32)
    with pytest.raises(ValueError, match="Intrinsics.scaled"):
        cell_points(np.ones((24, 32), np.float32), INTR, np.eye(4), (4, 4))
    bad = np.eye(4)
    bad[0, 3] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        cell_points(depth, INTR, bad, (4, 4))
    with pytest.raises(ValueError, match="4x4"):
        cell_points(depth, INTR, np.eye(3), (4, 4))
    with pytest.raises(ValueError, match="finer"):
        cell_points(depth, INTR, np.eye(4), (100, 4))


def test_keyframe_selector_thresholds_and_rate():
    sel = KeyframeSelector(translation_m=0.1, rotation_deg=10.0, max_rate_hz=5.0)
    assert sel.accept(pose(), 0.0)  # the first frame is always a keyframe
    assert not sel.accept(pose(t=(0.05, 0, 0)), 1.0)  # moved too little
    assert sel.accept(pose(t=(0.1, 0, 0)), 1.0)  # moved 0.1 m from the last keyframe
    assert not sel.accept(pose((0, 0, 9.0), (0.1, 0, 0)), 2.0)  # turned 9 deg
    assert sel.accept(pose((0, 0, 10.5), (0.1, 0, 0)), 2.0)  # turned 10.5 deg
    assert not sel.accept(pose(t=(5.0, 0, 0)), 2.1)  # far, but only 0.1 s later at 5 Hz max
    assert sel.accept(pose(t=(5.0, 0, 0)), 2.2)
    assert sel.accept(pose(t=(0.0, 0, 0)), 0.0)  # time went backwards (bag replay): no rate block
    sel.reset()
    assert sel.accept(pose(t=(0.0, 0, 0)), 0.01)


def test_keyframe_selector_rejects_negative_thresholds():
    with pytest.raises(ValueError, match=">= 0"):
        KeyframeSelector(translation_m=-1.0)
    assert math.isclose(KeyframeSelector(max_rate_hz=0.0).min_interval_s, 0.0)


def test_xyz_quat_to_matrix_normalises_and_refuses_invalid_poses():
    q = np.array([0.1, 0.2, 0.3, 0.9])
    T = xyz_quat_to_matrix([1.0, -2.0, 0.5], 3 * q)  # a scaled quaternion is the same rotation
    np.testing.assert_allclose(T[:3, :3], Rotation.from_quat(q / np.linalg.norm(q)).as_matrix(), atol=1e-12)
    np.testing.assert_allclose(T[:3, 3], [1.0, -2.0, 0.5])
    with pytest.raises(ValueError, match="all zeros"):
        xyz_quat_to_matrix([0, 0, 0], [0, 0, 0, 0])  # an orientation that was never set
    with pytest.raises(ValueError, match="finite"):
        xyz_quat_to_matrix([0, np.nan, 0], [0, 0, 0, 1])
    with pytest.raises(ValueError, match="4 quaternion values"):
        xyz_quat_to_matrix([0, 0, 0], [0, 0, 1])


def test_pose_at_interpolates_like_scipy_slerp_and_never_extrapolates():
    a, b = pose((10, -20, 30), (0, 0, 0)), pose((-40, 15, 100), (2, -1, 4))
    stamps = [1.0, 3.0]
    for w in (0.0, 0.25, 0.5, 0.9):
        T = pose_at(stamps, [a, b], 1.0 + 2.0 * w)
        truth = Slerp([0.0, 1.0], Rotation.from_matrix(np.stack([a[:3, :3], b[:3, :3]])))([w]).as_matrix()[0]
        np.testing.assert_allclose(T[:3, :3], truth, atol=1e-9)
        np.testing.assert_allclose(T[:3, 3], (1 - w) * a[:3, 3] + w * b[:3, 3], atol=1e-12)
    assert pose_at(stamps, [a, b], 3.05) is None  # past the end, no tolerance
    np.testing.assert_array_equal(pose_at(stamps, [a, b], 3.05, tolerance_s=0.1), b)  # the end pose, not beyond
    assert pose_at([], [], 1.0, tolerance_s=1.0) is None
    # Across a gap wider than max_gap_s only a pose within the tolerance counts.
    assert pose_at(stamps, [a, b], 2.0, tolerance_s=0.5, max_gap_s=1.0) is None
    np.testing.assert_array_equal(pose_at(stamps, [a, b], 2.7, tolerance_s=0.5, max_gap_s=1.0), b)
    got = pose_at(stamps, [a, b], 1.0)
    got[0, 3] = 99.0  # a new array: the caller's poses stay as they were
    assert a[0, 3] == 0.0


def test_frame_record_refuses_millimetres_and_mismatched_sizes():
    rgb, depth = np.zeros((48, 64, 3), np.uint8), np.ones((48, 64), np.float32)
    frame = RGBDFrame(rgb, depth, INTR, np.eye(4), 1.5)
    assert frame.depth_m is depth and frame.stamp_s == 1.5
    with pytest.raises(ValueError, match="float32 array of metres.*depth_to_metres"):
        RGBDFrame(rgb, np.ones((48, 64), np.uint16), INTR, np.eye(4), 0.0)
    with pytest.raises(ValueError, match="intrinsics are for 64x48"):
        RGBDFrame(rgb, np.ones((24, 32), np.float32), INTR, np.eye(4), 0.0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        RGBDFrame(rgb[:, :, 0], depth, INTR, np.eye(4), 0.0)
    with pytest.raises(ValueError, match="4x4"):
        RGBDFrame(rgb, depth, INTR, np.eye(3), 0.0)
