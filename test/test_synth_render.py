"""Rendering: written depth + intrinsics + poses land on the room's surfaces; colour shows."""

from __future__ import annotations

import numpy as np
import open3d as o3d
import pytest
from PIL import Image

from leovl_ros.synth.catalog import COLOURS
from leovl_ros.synth.render import camera_path, intrinsics_matrix, render_frames, tiny_scene
from leovl_ros.synth.rooms import generate_room
from leovl_ros.synth.shapes import object_mesh, structure_mesh
from leovl_ros.synth.writers import write_scannet


@pytest.fixture(scope="module")
def scene():
    return tiny_scene(seed=5, num_frames=10)


def _surfaces(room) -> o3d.t.geometry.RaycastingScene:
    s = o3d.t.geometry.RaycastingScene()
    for m in [structure_mesh(room)] + [object_mesh(o) for o in room.objects]:
        s.add_triangles(o3d.core.Tensor(m.vertices), o3d.core.Tensor(m.triangles))
    return s


def _read_back(folder, i):
    depth = np.asarray(Image.open(folder / "depth" / f"{i}.png")).astype(np.float64) / 1000.0
    T = np.loadtxt(folder / "pose" / f"{i}.txt")
    K = np.loadtxt(folder / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
    return depth, K, T


def _backproject(depth, K, T):
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    cam = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], 1)
    return cam @ T[:3, :3].T + T[:3, 3], v, u


def test_frames_have_documented_types_and_stamps(scene):
    room, frames = scene
    assert len(frames) == 10
    for f in frames:
        assert f.rgb.shape == (120, 160, 3) and f.rgb.dtype == np.uint8
        assert f.depth_mm.shape == (120, 160) and f.depth_mm.dtype == np.uint16
        assert f.instance.dtype == np.int32 and f.instance.min() >= -1 and f.instance.max() < len(room.objects)
        assert np.allclose(f.T_map_camera[:3, :3] @ f.T_map_camera[:3, :3].T, np.eye(3))
        assert (f.depth_mm > 0).mean() > 0.9
    assert np.all(np.diff([f.stamp_ns for f in frames]) == 200_000_000)  # 5 Hz default
    assert np.allclose(frames[0].K, intrinsics_matrix(160, 120))


def test_rendering_is_deterministic(scene):
    room, frames = scene
    again = render_frames(room, 10, 160, 120)
    for a, b in zip(frames, again):
        assert np.array_equal(a.rgb, b.rgb) and np.array_equal(a.depth_mm, b.depth_mm)
        assert np.array_equal(a.T_map_camera, b.T_map_camera) and a.stamp_ns == b.stamp_ns
    other = render_frames(room, 10, 160, 120, seed=1)
    assert not np.array_equal(frames[3].rgb, other[3].rgb)  # the seed drives sensor noise


def test_written_depth_lands_on_surfaces(tmp_path):
    room = generate_room(11)
    frames = render_frames(room, 6, 320, 240, depth_noise_m=0.0, hole_fraction=0.02)
    folder = write_scannet(frames, tmp_path / "scene")
    surfaces = _surfaces(room)
    errors = []
    for i, f in enumerate(frames):
        depth, K, T = _read_back(folder, i)
        pts, v, u = _backproject(depth, K, T)
        errors.append(surfaces.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy())
        # the instance image agrees: a pixel's point lies in its object's box
        inst = f.instance[v, u]
        for o in room.objects:
            on = inst == o.id
            if on.any():
                assert np.all(pts[on] >= o.min - 0.01) and np.all(pts[on] <= o.max + 0.01), o.category
    err = np.concatenate(errors)
    # issue goal: mean < 1 cm. Without noise only mm quantisation remains, so hold it to 1 mm:
    # a half-pixel convention slip (Open3D vs OpenCV pixel centres) already gives ~3.5 mm.
    assert err.mean() < 0.001 and np.percentile(err, 99) < 0.002
    noisy = render_frames(room, 2, 320, 240, depth_noise_m=0.01)
    pts, _, _ = _backproject(noisy[1].depth_mm / 1000.0, noisy[1].K, noisy[1].T_map_camera)
    assert surfaces.compute_distance(o3d.core.Tensor(pts.astype(np.float32))).numpy().mean() > err.mean()


def test_camera_path_covers_the_room_without_entering_furniture():
    room = generate_room(2)
    poses = camera_path(room, 30)
    for o in room.objects:
        inside = np.all((poses[:, :3, 3] > o.min) & (poses[:, :3, 3] < o.max), axis=1)
        assert not inside.any()
    frames = render_frames(room, 30, 96, 72)
    seen = set(np.unique(np.concatenate([f.instance.ravel() for f in frames]))) - {-1}
    assert len(seen) >= 0.9 * len(room.objects)


def test_outward_views_face_the_nearest_wall_and_show_surface_items_larger():
    room = generate_room(2)
    inward, outward = camera_path(room, 12), camera_path(room, 12, outward_every=3)
    turned = [i for i in range(12) if not np.allclose(inward[i], outward[i])]
    assert turned == [2, 5, 8, 11]
    half = np.array([room.width / 2, room.depth / 2])
    for i in turned:
        eye, fwd = outward[i][:3, 3], outward[i][:3, 2]  # optical z = viewing direction
        wall_axis = int(np.argmin(half - np.abs(eye[:2])))
        assert fwd[2] < -0.2  # tilted down at the supporters' tops
        assert np.sign(fwd[wall_axis]) == np.sign(eye[wall_axis])  # towards that wall, not the centre
    near, far = [], []  # per item on a supporter: its pixel count in the view showing it largest
    for seed in range(4):
        room = generate_room(seed)
        items = [o.id for o in room.objects if o.support is not None]
        for frames, out in ((render_frames(room, 24, 160, 120, outward_every=2), near),
                            (render_frames(room, 24, 160, 120), far)):
            out += [max((f.instance == k).sum() for f in frames) for k in items]
    assert len(near) >= 15 and np.median(near) > 1.5 * np.median(far)


def test_named_colour_is_visible_but_not_constant():
    names = list(COLOURS)
    palette = np.array([COLOURS[n] for n in names])
    hits = total = 0
    for seed in (0, 1):
        room, frames = tiny_scene(seed, num_frames=12)
        for o in room.objects:
            px = np.concatenate([f.rgb[f.instance == o.id] for f in frames]) / 255.0
            if len(px) < 30:
                continue
            assert px.std(0).max() > 0.01  # shading + texture: never one flat colour
            med = np.median(px, 0)
            scale = np.clip(palette @ med / np.sum(palette**2, 1), 0.5, 1.3)  # allow for shading
            best = names[int(np.argmin(np.linalg.norm(med - scale[:, None] * palette, axis=1)))]
            hits += best == o.colour
            total += 1
    assert total >= 15 and hits / total >= 0.85


def test_bad_arguments():
    room = generate_room(0)
    with pytest.raises(ValueError, match="camera_height"):
        camera_path(room, 4, camera_height=5.0)
    with pytest.raises(ValueError, match="num_frames"):
        camera_path(room, 0)
    with pytest.raises(ValueError, match="outward_every"):
        camera_path(room, 4, outward_every=1)
    with pytest.raises(ValueError, match="hfov"):
        intrinsics_matrix(64, 48, hfov_deg=200)
    with pytest.raises(ValueError, match="hole_fraction"):
        render_frames(room, 1, 32, 24, hole_fraction=1.5)


def test_every_category_has_its_own_surface_pattern():
    from leovl_ros.synth.catalog import CATEGORY_NAMES
    from leovl_ros.synth.render import _category_pattern, category_pattern_of

    patterns = [category_pattern_of(c) for c in CATEGORY_NAMES]
    assert len(set(patterns)) == len(CATEGORY_NAMES)
    pts = np.random.default_rng(0).uniform(0, 1, (2000, 3)).astype(np.float32)
    for kind, period in patterns:
        f = _category_pattern(pts, np.full(len(pts), kind), np.full(len(pts), period, np.float32))
        assert 0.75 - 1e-6 <= f.min() and f.max() <= 1.25 + 1e-6 and f.std() > 0.05  # albedo stays nameable
