"""RGB-D rendering of synthetic rooms with Open3D's `RaycastingScene` along a walking path.

Decisions:
- Camera path: one loop along the walkway's centre line (see rooms.py, kept free of
  furniture) at a robot's camera height, looking towards a point above the room centre with
  sinusoidal head turns. Looking inwards from the ring sees the centre and the far walls;
  the near wall zone is seen from the other side of the loop. With `outward_every` = k,
  every k-th frame instead turns to the near wall zone, tilted down to the supporters'
  tops: from across the room a mug on a desk is ~10 px (under one 28 px feature cell at
  448x336), from the walkway ~40 px, the way a mapping robot looks around as it goes.
- Pixels follow the OpenCV / CameraInfo convention (integer coordinates at pixel centres).
- Shading: albedo x (ambient + directional light + camera-facing term) x texture noise that
  is fixed in the world (hashed 3 cm cells, so it is the same surface pattern in every
  frame) + small per-frame sensor noise. Colour stays nameable but is never one exact RGB.
- Category pattern: every object's surface also carries a world-fixed pattern (+-25 %
  of its albedo: stripes, diagonals or checks of a set period) that is fixed per category,
  the way mugs, sofas and shelves differ in material and not only in outline. Our objects
  are a few primitives in one flat colour, so without it a 28 px view of a bed's side and a
  sofa's side are the same pixels and a small vision tower cannot tell categories apart
  (held-out cell accuracy 0.49 with, and the LLM then cannot say what a room contains).
- Depth: the ray hit's z-depth, with optional noise growing as z^2 (structured-light
  sensors), dropouts at grazing angles and random holes, quantised to uint16 millimetres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import open3d as o3d

from ..geometry import Intrinsics, depth_to_metres, look_at
from ..rgbd_frame import RGBDFrame
from .catalog import CATEGORY_NAMES
from .rooms import Room, generate_room
from .shapes import Mesh, raycasting_scene

DEFAULT_START_NS = 1_700_000_000 * 10**9


@dataclass
class Frame:
    rgb: np.ndarray  # (H, W, 3) uint8
    depth_mm: np.ndarray  # (H, W) uint16, 0 = invalid
    K: np.ndarray  # (3, 3) float64
    T_map_camera: np.ndarray  # (4, 4) float64 camera-to-map, optical frame
    stamp_ns: int
    instance: np.ndarray  # (H, W) int32 object id, -1 = floor/walls/ceiling

    def rgbd(self) -> RGBDFrame:
        """As the shared frame record. A render keeps its own record because it also holds what the
        dataset writers need: object ids, depth as the uint16 mm written to files, integer ns stamps."""
        h, w = self.depth_mm.shape
        return RGBDFrame(self.rgb, depth_to_metres(self.depth_mm), Intrinsics.from_K(self.K, w, h),
                         self.T_map_camera, self.stamp_ns * 1e-9)


def intrinsics_matrix(width: int, height: int, hfov_deg: float = 60.0) -> np.ndarray:
    """Square-pixel pinhole K with the principal point at the image centre."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if not 10.0 <= hfov_deg <= 170.0:
        raise ValueError(f"hfov_deg must be within [10, 170], got {hfov_deg}")
    f = width / 2 / math.tan(math.radians(hfov_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


OUTWARD_PITCH = 0.5  # outward views look down by atan(0.5) = 27 deg, at desk and cabinet tops


def camera_path(room: Room, num_frames: int, camera_height: float = 1.3, look_at_height: float = 0.7,
                head_turn_deg: float = 35.0, head_turn_cycles: float = 3.0, outward_every: int = 0) -> np.ndarray:
    """(N, 4, 4) poses along one loop of the walkway centre line.

    outward_every: 0 = every frame looks inwards; k >= 2 = frames k-1, 2k-1, ... look at the
    nearest wall instead (same head turns), tilted down by :data:`OUTWARD_PITCH`.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if outward_every == 1 or outward_every < 0:
        raise ValueError(f"outward_every must be 0 (never) or >= 2, got {outward_every}")
    if not 0.2 <= camera_height < room.height - 0.1:
        raise ValueError(f"camera_height {camera_height} m must lie between 0.2 m and below the "
                         f"ceiling ({room.height:.2f} m)")
    ax = room.width / 2 - room.walkway_inset
    ay = room.depth / 2 - room.walkway_inset
    corners = np.array([[ax, ay], [-ax, ay], [-ax, -ay], [ax, -ay], [ax, ay]])
    seg = np.linalg.norm(np.diff(corners, axis=0), axis=1)
    s = np.arange(num_frames) / num_frames * seg.sum()  # arc length of each frame
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    poses = np.empty((num_frames, 4, 4))
    for i, si in enumerate(s):
        k = min(int(np.searchsorted(cum, si, side="right")) - 1, 3)
        xy = corners[k] + (corners[k + 1] - corners[k]) * (si - cum[k]) / seg[k]
        eye = np.array([xy[0], xy[1], camera_height])
        to_centre = np.array([0.0, 0.0, look_at_height]) - eye
        if outward_every and i % outward_every == outward_every - 1:
            x_wall_nearer = room.width / 2 - abs(xy[0]) < room.depth / 2 - abs(xy[1])
            wall = [np.sign(xy[0]), 0.0] if x_wall_nearer else [0.0, np.sign(xy[1])]
            to_centre = np.array([*wall, -OUTWARD_PITCH])
        turn = math.radians(head_turn_deg) * math.sin(2 * math.pi * head_turn_cycles * i / num_frames)
        c, sn = math.cos(turn), math.sin(turn)
        fwd = np.array([c * to_centre[0] - sn * to_centre[1], sn * to_centre[0] + c * to_centre[1], to_centre[2]])
        poses[i] = look_at(eye, fwd)
    return poses


def _texture(points: np.ndarray, salt: np.ndarray, cell: float = 0.03) -> np.ndarray:
    """World-fixed multiplicative texture in [0.88, 1.12] from hashed 3D cells. (N,3)->(N,)"""
    q = np.floor(points / cell).astype(np.int64)
    h = (q[:, 0] * 73856093) ^ (q[:, 1] * 19349663) ^ (q[:, 2] * 83492791) ^ (salt.astype(np.int64) * 2654435761)
    h = (h ^ (h >> 13)) * 1274126177
    return np.float32(0.88) + np.float32(0.24 / 65535) * ((h >> 7) & 0xFFFF).astype(np.float32)


_PATTERN_PERIODS_M = (0.025, 0.04, 0.065, 0.1)
_PATTERN_AMPLITUDE = np.float32(0.25)


def _category_pattern(points: np.ndarray, kind: np.ndarray, period: np.ndarray) -> np.ndarray:
    """Multiplicative pattern in [0.75, 1.25] of kind (0-5) and period (m), per point. (N,3)->(N,)

    kinds: 0 horizontal stripes, 1 vertical stripes, 2 and 3 diagonals (mirrored), 4 3D
    checks, 5 checks of vertical x horizontal stripes; every axis-aligned face shows it."""
    t = points / period[:, None]  # (N, 3) in periods
    x, y, z = t[:, 0], t[:, 1], t[:, 2]
    wave = {0: lambda: np.cos(2 * np.pi * z), 1: lambda: np.cos(2 * np.pi * (x + y)),
            2: lambda: np.cos(2 * np.pi * (x + y + z) / np.sqrt(3)), 3: lambda: np.cos(2 * np.pi * (x - y - z) / np.sqrt(3)),
            4: lambda: np.cos(np.pi * x) * np.cos(np.pi * y) * np.cos(np.pi * z),
            5: lambda: np.cos(np.pi * (x + y)) * np.cos(np.pi * z)}
    out = np.zeros(len(points), np.float32)
    for k, f in wave.items():
        sel = kind == k
        if sel.any():
            out[sel] = f()[sel]
    return np.float32(1) + _PATTERN_AMPLITUDE * out


def category_pattern_of(category: str) -> tuple[int, float]:
    """(kind, period in metres) of a category's surface pattern: distinct for every name."""
    k = CATEGORY_NAMES.index(category)
    return k // len(_PATTERN_PERIODS_M), _PATTERN_PERIODS_M[k % len(_PATTERN_PERIODS_M)]


class RoomRenderer:
    """Renders views of one room; builds the ray-casting scene once."""

    def __init__(self, room: Room, structure: Mesh | None = None) -> None:
        self.room = room
        self.scene, meshes, self.object_of_geometry = raycasting_scene(room, structure)
        counts = np.array([len(m.triangles) for m in meshes])
        self.tri_offset = np.concatenate([[0], np.cumsum(counts)[:-1]])  # (G,) first triangle
        self.tri_rgb = np.concatenate([m.rgb for m in meshes])  # (sum T, 3)
        patterns = [(-1, 1.0)] + [category_pattern_of(o.category) for o in room.objects]  # -1: structure, plain
        self.pattern_kind = np.array([k for k, _ in patterns])  # (G,)
        self.pattern_period = np.array([p for _, p in patterns], np.float32)  # (G,)
        self.light = (np.array([0.35, 0.25, 1.0]) / np.linalg.norm([0.35, 0.25, 1.0])).astype(np.float32)

    def render(self, K: np.ndarray, T_map_camera: np.ndarray, width: int, height: int,
               rng: np.random.Generator, depth_noise_m: float = 0.0, hole_fraction: float = 0.0,
               depth_max_m: float = 10.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One view: (rgb (H,W,3) uint8, depth_mm (H,W) uint16, instance (H,W) int32)."""
        # Open3D puts pixel centres at +0.5; shifting the principal point gives the
        # integer-centre convention that geometry.py and CameraInfo use.
        K_o3d = K.copy()
        K_o3d[0, 2] += 0.5
        K_o3d[1, 2] += 0.5
        rays = o3d.t.geometry.RaycastingScene.create_rays_pinhole(
            o3d.core.Tensor(K_o3d), o3d.core.Tensor(np.linalg.inv(T_map_camera)), width, height)
        hit = self.scene.cast_rays(rays)
        t = hit["t_hit"].numpy().reshape(-1)  # (H*W,) z-depth: ray directions have camera z = 1
        gid = hit["geometry_ids"].numpy().reshape(-1).astype(np.int64)
        valid = np.isfinite(t) & (gid != o3d.t.geometry.RaycastingScene.INVALID_ID)
        r = rays.numpy().reshape(-1, 6)[valid]  # (M, 6) float32 origin, direction
        n = hit["primitive_normals"].numpy().reshape(-1, 3)[valid]  # (M, 3)
        g = gid[valid]
        tri = self.tri_offset[g] + hit["primitive_ids"].numpy().reshape(-1)[valid]
        tv = t[valid]
        d_dot_n = np.einsum("ij,ij->i", n, r[:, 3:])
        cos_v = np.abs(d_dot_n) / np.sqrt(np.einsum("ij,ij->i", r[:, 3:], r[:, 3:]))  # (M,)
        n *= np.where(d_dot_n > 0, -1.0, 1.0).astype(np.float32)[:, None]  # face the camera
        points = r[:, :3] + r[:, 3:] * tv[:, None]
        shade = 0.35 + 0.45 * np.clip(n @ self.light, 0, None) + 0.25 * cos_v  # (M,)
        surface = _texture(points, g) * _category_pattern(points, self.pattern_kind[g], self.pattern_period[g])
        colour = self.tri_rgb[tri] * (shade * surface * 255)[:, None]
        colour += rng.standard_normal(colour.shape, dtype=np.float32) * 2.5

        rgb = np.zeros((width * height, 3), np.uint8)
        rgb[valid] = np.clip(colour + 0.5, 0, 255).astype(np.uint8)  # +0.5: round, then truncate
        z = tv
        if depth_noise_m > 0:
            z = z + rng.standard_normal(z.shape, dtype=np.float32) * np.float32(depth_noise_m) * z * z
        keep = (cos_v > 0.08) & (z > 0) & (z <= depth_max_m)  # grazing surfaces return nothing
        if hole_fraction > 0:
            keep &= rng.random(z.shape) >= hole_fraction
        depth = np.zeros(width * height, np.uint16)
        depth[np.flatnonzero(valid)[keep]] = np.clip(z[keep] * 1000 + 0.5, 1, 65535).astype(np.uint16)
        inst = np.full(width * height, -1, np.int32)
        inst[valid] = self.object_of_geometry[g]
        return rgb.reshape(height, width, 3), depth.reshape(height, width), inst.reshape(height, width)


def render_frames(room: Room, num_frames: int = 30, width: int = 640, height: int = 480, seed: int = 0,
                  depth_noise_m: float = 0.002, hole_fraction: float = 0.005, hfov_deg: float = 60.0,
                  camera_height: float = 1.3, rate_hz: float = 5.0, start_ns: int = DEFAULT_START_NS,
                  depth_max_m: float = 10.0, outward_every: int = 0) -> list[Frame]:
    """Render `num_frames` RGB-D frames along the room's camera path (see :func:`camera_path`).

    depth_noise_m: noise std at 1 m (scales with z^2); hole_fraction: share of valid depth
    pixels dropped at random; rate_hz: frame rate of the stamps (starting at `start_ns`).
    The same (room, arguments) always give identical frames.
    """
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    if depth_noise_m < 0 or not 0 <= hole_fraction < 1:
        raise ValueError(f"need depth_noise_m >= 0 and 0 <= hole_fraction < 1, got "
                         f"{depth_noise_m}, {hole_fraction}")
    K = intrinsics_matrix(width, height, hfov_deg)
    renderer = RoomRenderer(room)
    period_ns = round(1e9 / rate_hz)
    frames = []
    for i, T in enumerate(camera_path(room, num_frames, camera_height, outward_every=outward_every)):
        rng = np.random.default_rng([seed, room.seed, i])
        rgb, depth, inst = renderer.render(K, T, width, height, rng, depth_noise_m, hole_fraction, depth_max_m)
        frames.append(Frame(rgb, depth, K.copy(), T, start_ns + i * period_ns, inst))
    return frames


def tiny_scene(seed: int = 0, num_frames: int = 8, width: int = 160, height: int = 120,
               **render_kwargs) -> tuple[Room, list[Frame]]:
    """A room and a few small frames: the fast default for tests across the project."""
    room = generate_room(seed)
    return room, render_frames(room, num_frames, width, height, **render_kwargs)
