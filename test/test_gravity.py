"""Up direction of a map: estimated from cameras + horizontal planes, reported, and levelled."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from conftest import wait_for
from leovl_ros.assistant import AssistantConfig, SceneSession
from leovl_ros.gravity import estimate_up, leveling_rotation
from leovl_ros.model.config import GenerationConfig, LeoVLConfig
from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.tiny import tiny_qwen25vl_config
from leovl_ros.synth.render import tiny_scene

TILT = Rotation.from_euler("x", 20, degrees=True).as_matrix()


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def test_a_floor_beats_a_pitched_camera_prior():
    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(-3, 3, (2000, 2)), rng.normal(0, 0.02, 2000)]
    wall = np.c_[rng.uniform(-3, 3, 800), np.full(800, 3.0), rng.uniform(0, 2.5, 800)]
    points = np.vstack([floor, wall]) @ TILT.T  # the whole room tilted 20 deg about x
    pitched_down = TILT @ Rotation.from_euler("x", -25, degrees=True).apply([0.0, 0.0, -1.0])  # camera y: 25 deg off
    estimate = estimate_up(points, 10 * pitched_down, voxel_size=0.2)
    assert estimate.source == "horizontal plane" and estimate.support >= 1500
    assert _angle(estimate.up, TILT @ [0, 0, 1]) < 1.0 and estimate.angle_deg == pytest.approx(20.0, abs=1.0)
    assert estimate_up(points[:10], 10 * pitched_down, 0.2).source == "camera prior"  # too few points
    assert estimate_up(points, np.zeros(3), 0.2) is None  # no camera, no sign for "up"
    for up in (TILT @ [0, 0, 1], np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -1.0])):
        np.testing.assert_allclose(leveling_rotation(up) @ up, [0, 0, 1], atol=1e-9)


@pytest.fixture(scope="module")
def model() -> LeoVL:
    qwen = tiny_qwen25vl_config()
    return LeoVL.from_config(qwen, LeoVLConfig(base_model="tiny-random", hidden_size=qwen.text_config.hidden_size))


@pytest.fixture(scope="module")
def frames():
    return tiny_scene(seed=5, num_frames=10)[1]


def _stream(model, frames, world: np.ndarray, **config) -> SceneSession:
    """A session fed the room's frames with every pose pre-multiplied by ``world`` (4x4)."""
    session = SceneSession(model, AssistantConfig(generation=GenerationConfig(num_beams=1, max_new_tokens=4),
                                                  max_keyframe_rate=0.0, **config), "tiny-random")
    for f in frames:
        session.offer(replace(f.rgbd(), T_map_camera=world @ f.T_map_camera))
        assert session.wait_idle(60.0)
    return session


def _homogeneous(R: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    return T


@pytest.mark.parametrize("name", ["z-up", "tilted 20 deg", "y-down (first camera's frame)"])
def test_the_session_reports_the_tilt_of_its_map_frame(model, frames, name):
    world = {"z-up": np.eye(4), "tilted 20 deg": _homogeneous(TILT),
             "y-down (first camera's frame)": np.linalg.inv(frames[0].T_map_camera)}[name]
    expected = _angle(world[:3, :3] @ [0, 0, 1], [0, 0, 1])
    logged = []
    session = _stream(model, frames, world)
    session._log = lambda level, text: logged.append((level, text))
    try:
        angle = session.stats().gravity_angle_deg
        assert angle == pytest.approx(expected, abs=3.0), (name, angle)
        warned = [text for level, text in logged if level == "warn" and "tilted" in text]
        assert len(warned) == (expected > 10), logged
        session.stats()
        assert len([t for _, t in logged if "tilted" in t]) == len(warned)  # once, not per report
    finally:
        session.close()


def test_align_gravity_levels_the_map_and_later_poses(model, frames):
    upright = _stream(model, frames, np.eye(4))
    session = _stream(model, frames[:6], _homogeneous(TILT), align_gravity=True)
    try:
        first = session.stats()  # estimates the tilt and levels the map
        assert first.leveled_deg == pytest.approx(20.0, abs=3.0)
        for f in frames[6:]:  # later frames arrive tilted and are levelled on the way in
            session.offer(replace(f.rgbd(), T_map_camera=_homogeneous(TILT) @ f.T_map_camera))
            assert session.wait_idle(60.0)
        wait_for(lambda: 0 <= session.stats().gravity_angle_deg < 2.0, 15.0, "a level map")
        z, z_ref = session.snapshot().centers[:, 2], upright.snapshot().centers[:, 2]
        assert abs(float(z.min()) - float(z_ref.min())) <= 0.4  # the floor is the lowest level again
        assert abs(float(z.max() - z.min()) - float(z_ref.max() - z_ref.min())) <= 0.6  # the room's height
    finally:
        session.close()
        upright.close()
