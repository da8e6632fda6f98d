"""`make demo` paces a recording for the node and waits for its last frame (issue 27 item 2)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from leovl_ros.ros.demo_pacing import MapSettled, choose_rate, choose_stride, scan_poses
from leovl_ros.synth.render import tiny_scene

from support.native_scans import rigid, write_3rscan


def _walk(n: int, step_m: float = 0.0, turn_deg: float = 0.0) -> list[np.ndarray]:
    poses = []
    for i in range(n):
        T = np.eye(4)
        T[:3, :3] = Rotation.from_euler("y", i * turn_deg, degrees=True).as_matrix()
        T[:3, 3] = [i * step_m, 0.0, 0.0]
        poses.append(T)
    return poses


def test_the_stride_makes_each_played_frame_about_one_keyframe_step():
    assert choose_stride(_walk(300, step_m=0.01), 0.1, 10.0) == 10  # a 30 Hz walk at 0.3 m/s: every 10th
    assert choose_stride(_walk(300, turn_deg=2.0), 0.1, 10.0) == 5  # turning on the spot: rotation decides
    assert choose_stride(_walk(150, step_m=0.2), 0.1, 10.0) == 1  # already sparse: every frame
    assert choose_stride(_walk(5000, step_m=0.01), 0.1, 10.0) == 25  # long: thinned to 200 frames
    assert choose_stride(_walk(1), 0.1, 10.0) == 1


def test_the_rate_stays_below_the_nodes_keyframe_rate_limit():
    assert choose_rate(None, 5.0) == pytest.approx(3.0)  # not 5 Hz against max_keyframe_rate 5: jitter drops
    assert choose_rate(4.0, 5.0) == 4.0  # RATE= wins
    assert choose_rate(None, 0.0) == 5.0  # no limit


def test_the_map_is_done_only_after_the_players_last_frame_was_processed():
    settled = MapSettled()
    settled.status(4, 4, 0)  # published while the player still sends: the old demo stopped here
    assert not settled.done
    settled.player_exited(sent=7)
    settled.status(4, 4, 0)  # sent before the last frames arrived
    assert not settled.done
    settled.status(7, 6, 0)  # all arrived, one still waits for the encoder
    assert not settled.done
    settled.status(7, 6, 1)
    assert settled.done and settled.lost == 0


def test_frames_lost_on_the_way_settle_after_two_unchanged_reports():
    settled = MapSettled()
    settled.player_exited(sent=10)
    settled.status(8, 5, 3)
    assert not settled.done
    settled.status(8, 5, 3)
    assert settled.done and settled.lost == 2
    unknown = MapSettled()  # a bag: the player counts images, not pairs
    unknown.player_exited(sent=None)
    unknown.status(5, 5, 0)
    unknown.status(5, 5, 0)
    assert unknown.done


def test_scan_poses_are_read_without_the_images(tmp_path):
    frames = tiny_scene(seed=1, num_frames=6)[1]
    native = rigid(30.0, [1.0, 2.0, 0.0])  # the scan's own world frame
    scan = write_3rscan(frames, tmp_path / "3rscan" / "scan0", native)
    for image in scan.glob("sequence/*.color.jpg"):
        image.unlink()  # not needed for the stride: a pose-only read never opens them
    poses = scan_poses(scan, "3rscan")
    np.testing.assert_allclose(np.stack(poses), np.stack([native @ f.T_map_camera for f in frames]), atol=1e-6)
