"""Up direction of a map: estimated from the cameras and the floor in the depth, reported, levelled."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from leovl_ros.assistant import AssistantConfig, SceneSession
from leovl_ros.gravity import CameraAxes, estimate_up, leveling_rotation
from leovl_ros.model.config import LeoVLConfig
from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.tiny import tiny_qwen25vl_config
from leovl_ros.synth.render import tiny_scene

TILT = Rotation.from_euler("x", 20, degrees=True).as_matrix()
VOXEL = 0.3  # the bundled leovl-tiny's: the coarsest map the estimate must level


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1))))


def _cameras(world: np.ndarray, pitch_deg: float, yaws=range(0, 360, 40)) -> CameraAxes:
    """Keyframes of a camera pitched down by ``pitch_deg`` turning on the spot, in a map frame rotated by ``world``."""
    cameras = CameraAxes()
    for yaw in yaws:  # optical frame: x right, y down, z forward; Rx(-90) looks along +y level
        cameras.add(world @ Rotation.from_euler("ZX", [yaw, -90 - pitch_deg], degrees=True).as_matrix())
    return cameras


def _room(rng: np.random.Generator) -> np.ndarray:
    floor = np.c_[rng.uniform(-3, 3, (3000, 2)), rng.normal(0, 0.01, 3000)]
    table = np.c_[rng.uniform(0.5, 1.7, (400, 2)), rng.normal(0.75, 0.01, 400)]
    wall = np.c_[rng.uniform(-3, 3, 2000), np.full(2000, 3.0), rng.uniform(0, 2.5, 2000)]
    return np.vstack([floor, table, wall])


def test_a_floor_beats_a_pitched_camera_prior():
    points = _room(np.random.default_rng(0)) @ TILT.T  # the whole room tilted 20 deg about x
    cameras = _cameras(TILT, pitch_deg=25.0)
    prior, _ = cameras.prior()
    assert _angle(prior, TILT @ [0, 0, 1]) < 1.0  # image-right axes are level whatever the pitch
    estimate = estimate_up(points, cameras, tolerance=0.04)
    assert estimate.source == "floor" and estimate.support >= 1500  # the floor, not the smaller table top
    assert _angle(estimate.up, TILT @ [0, 0, 1]) < 0.5 and estimate.angle_deg == pytest.approx(20.0, abs=0.5)
    one_heading = _cameras(TILT, pitch_deg=25.0, yaws=[0, 5])  # never turned: the pitch stays in the prior
    assert _angle(one_heading.prior()[0], TILT @ [0, 0, 1]) == pytest.approx(25.0, abs=1.0)
    assert _angle(estimate_up(points, one_heading, 0.04).up, TILT @ [0, 0, 1]) < 0.5  # the floor fixes it
    assert estimate_up(points[:10], cameras, 0.04).source == "camera prior"  # too few points
    assert estimate_up(points, CameraAxes(), 0.04) is None  # no camera, no sign for "up"
    for up in (TILT @ [0, 0, 1], np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -1.0])):
        np.testing.assert_allclose(leveling_rotation(up) @ up, [0, 0, 1], atol=1e-9)


@pytest.mark.parametrize("tilt_deg", [0.0, 8.0])
def test_coarse_voxel_centres_give_the_floor_not_a_plane_across_layers(tilt_deg):
    """At 0.3 m voxels a plane tilted 8 deg cuts three layers and holds more centres than the
    floor's one layer: counting centres in a +-half-voxel band chose it (issue 27)."""
    R = Rotation.from_euler("y", tilt_deg, degrees=True).as_matrix()
    points = _room(np.random.default_rng(1)) @ R.T
    centres = (np.unique(np.floor(points / VOXEL), axis=0) + 0.5) * VOXEL
    estimate = estimate_up(centres, _cameras(R, pitch_deg=20.0), tolerance=0.6 * VOXEL)
    assert estimate.source == "floor" and _angle(estimate.up, R @ [0, 0, 1]) < 2.0, estimate


@pytest.fixture(scope="module")
def model() -> LeoVL:
    qwen = tiny_qwen25vl_config()
    return LeoVL.from_config(qwen, LeoVLConfig(base_model="tiny-random", hidden_size=qwen.text_config.hidden_size))


@pytest.fixture(scope="module")
def frames():
    # depth noise of a structured-light camera: 3 mm at 1 m, growing with z^2 (4.8 cm at 4 m)
    return [f.rgbd() for f in tiny_scene(seed=5, num_frames=10, depth_noise_m=0.003)[1]]


def _session(model, **config) -> SceneSession:
    return SceneSession(model, AssistantConfig(num_beams=1, max_new_tokens=4, max_keyframe_rate=0.0,
                                               voxel_size=VOXEL, **config), "tiny-random")


def _feed(session: SceneSession, frames, world: np.ndarray, report: bool = False) -> None:
    """The room's frames with every pose pre-multiplied by ``world`` (4x4); ``report``: a status
    report (and so a gravity estimate) after each keyframe, as a node at 1 Hz does on a slow stream."""
    for f in frames:
        session.offer(replace(f, T_map_camera=world @ f.T_map_camera))
        assert session.wait_idle(60.0)
        if report:
            session.stats()


def _homogeneous(R: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    return T


def _world(name: str, frames) -> np.ndarray:
    if name == "y-down (first camera's frame)":
        return np.linalg.inv(frames[0].T_map_camera)
    return _homogeneous(Rotation.from_euler("xy", [float(name.split()[0]), 2.0], degrees=True).as_matrix())


STREAMS = ["0 deg", "5 deg", "20 deg", "y-down (first camera's frame)"]


@pytest.mark.parametrize("name", STREAMS)
def test_the_session_reports_the_tilt_of_its_map_frame(model, frames, name):
    world = _world(name, frames) if name != "0 deg" else np.eye(4)
    expected = _angle(world[:3, :3] @ [0, 0, 1], [0, 0, 1])
    logged = []
    session = _session(model)
    session._log = lambda level, text: logged.append((level, text))
    try:
        _feed(session, frames, world)
        angle = session.stats().gravity_angle_deg
        assert angle == pytest.approx(expected, abs=3.0), (name, angle)
        warned = [text for level, text in logged if level == "warn" and "tilted" in text]
        assert len(warned) == (expected > 10), logged  # a level map is never called tilted
        session.stats()
        assert len([t for _, t in logged if "tilted" in t]) == len(warned)  # once, not per report
    finally:
        session.close()


@pytest.mark.parametrize("name", STREAMS)
def test_align_gravity_levels_the_map_to_within_3_deg_of_true_gravity(model, frames, name):
    """Judged against the true gravity of the stream, not the estimate's own view of its map."""
    world = _world(name, frames) if name != "0 deg" else np.eye(4)
    logged = []
    session = _session(model, align_gravity=True)
    session._log = lambda level, text: logged.append((level, text))
    try:
        session._gravity.period_s = 0.0  # an estimate at every report: re-levelling must still be rare
        _feed(session, frames[:5], world, report=True)
        _feed(session, frames[5:], world, report=True)  # later frames arrive tilted and are levelled on the way in
        true_up = session._gravity.level @ world[:3, :3] @ [0, 0, 1]
        residual = _angle(true_up, [0, 0, 1])
        assert residual <= 3.0, (name, residual, session._gravity.leveled_deg)
        reported = session.stats().gravity_angle_deg
        assert 0 <= reported <= 3.0 and abs(reported - residual) <= 1.5  # honest: what is left, measured
        assert session._gravity.relevels <= 1
        assert not [t for level, t in logged if level == "warn"], logged
        if name == "0 deg":
            assert session._gravity.leveled_deg == 0.0  # a level input stays untouched
    finally:
        session.close()


def test_a_levelled_map_keeps_the_rooms_floor_and_height(model, frames):
    upright = _session(model)
    session = _session(model, align_gravity=True)
    try:
        _feed(upright, frames, np.eye(4))
        _feed(session, frames[:6], _homogeneous(TILT))
        assert session.stats().leveled_deg == pytest.approx(20.0, abs=3.0)  # estimates and levels
        _feed(session, frames[6:], _homogeneous(TILT))
        z, z_ref = session.snapshot().centers[:, 2], upright.snapshot().centers[:, 2]
        assert abs(float(z.min()) - float(z_ref.min())) <= VOXEL + 0.05  # the floor is the lowest level again
        assert abs(float(z.max() - z.min()) - float(z_ref.max() - z_ref.min())) <= 2 * VOXEL  # the room's height
    finally:
        session.close()
        upright.close()
