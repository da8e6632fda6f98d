"""Triangle meshes of rooms and objects, built from Open3D's primitive meshes.

Every object is a few parts, each a unit primitive (box, cylinder, sphere, cone) stretched to
a sub-box given in coordinates normalised to the object's own box ([0, 1]^3, front = -y).
So a mesh always lies inside its object's box, and most shapes touch all six box faces,
which keeps box-based relations honest. Parts may override the object's colour (a plant's
pot, a lamp's pole) so that the named colour is the part a person would name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import open3d as o3d

from .rooms import Room, SceneObject

_POT = (0.62, 0.32, 0.2)
_METAL = (0.55, 0.55, 0.58)
_SCREEN = (0.05, 0.05, 0.07)
_WOOD = (0.42, 0.3, 0.2)


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # (V, 3) float32, map frame
    triangles: np.ndarray  # (T, 3) uint32
    rgb: np.ndarray  # (T, 3) float32 albedo per triangle


@cache
def _unit(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Primitive scaled/shifted to fill [0, 1]^3 exactly: (vertices (V,3), triangles (T,3))."""
    if kind == "box":
        m = o3d.geometry.TriangleMesh.create_box(1.0, 1.0, 1.0)
    elif kind == "cylinder":
        m = o3d.geometry.TriangleMesh.create_cylinder(0.5, 1.0, resolution=16, split=1)
    elif kind == "sphere":
        m = o3d.geometry.TriangleMesh.create_sphere(0.5, resolution=8)
    elif kind == "cone":
        m = o3d.geometry.TriangleMesh.create_cone(0.5, 1.0, resolution=16, split=1)
    else:
        raise ValueError(f"unknown primitive {kind!r}")
    v = np.asarray(m.vertices, dtype=np.float64)
    lo, hi = v.min(0), v.max(0)
    return (v - lo) / (hi - lo), np.asarray(m.triangles, dtype=np.uint32)


Part = tuple[str, tuple[float, float, float], tuple[float, float, float], tuple[float, float, float] | None]


def _legs(z1: float, t: float = 0.08, kind: str = "box") -> list[Part]:
    return [(kind, (x, y, 0.0), (x + t, y + t, z1), None)
            for x in (0.0, 1 - t) for y in (0.0, 1 - t)]


def _parts(obj: SceneObject) -> list[Part]:
    c, v = obj.category, obj.variant
    if c == "bed":
        return _legs(0.25) + [("box", (0, 0, 0.25), (1, 1, 0.55), _WOOD),
                              ("box", (0.01, 0.01, 0.55), (0.99, 0.99, 1.0), None)]
    if c in ("sofa", "armchair"):
        arm = 0.12 if c == "sofa" else 0.18
        return _legs(0.1, 0.06) + [
            ("box", (0, 0, 0.1), (1, 1, 0.5), None), ("box", (0, 0.75, 0.5), (1, 1, 1), None),
            ("box", (0, 0, 0.5), (arm, 0.75, 0.7), None), ("box", (1 - arm, 0, 0.5), (1, 0.75, 0.7), None)]
    if c == "cabinet":
        return [("box", (0, 0.03, 0), (1, 1, 1), None), ("box", (0.49, 0, 0.45), (0.51, 0.03, 0.85), _METAL)]
    if c == "wardrobe":
        return [("box", (0, 0.03, 0), (1, 1, 1), None), ("box", (0.46, 0, 0.4), (0.48, 0.03, 0.6), _METAL),
                ("box", (0.52, 0, 0.4), (0.54, 0.03, 0.6), _METAL)]
    if c == "shelf":  # open front: sides, back, boards; the top board carries items
        boards = [("box", (0.04, 0.0, z), (0.96, 1, z + 0.03), None) for z in (0.0, 0.32, 0.64)]
        return boards + [("box", (0, 0, 0), (0.04, 1, 1), None), ("box", (0.96, 0, 0), (1, 1, 1), None),
                         ("box", (0.04, 0.9, 0), (0.96, 1, 1), None), ("box", (0, 0, 0.96), (1, 1, 1), None)]
    if c in ("table", "desk"):
        return _legs(0.95, 0.06) + [("box", (0, 0, 0.95), (1, 1, 1), None)]
    if c == "chair":
        return _legs(0.45, 0.1) + [("box", (0, 0, 0.45), (1, 1, 0.52), None), ("box", (0, 0.85, 0.52), (1, 1, 1), None)]
    if c == "stool":
        return _legs(0.9, 0.12) + [("box", (0, 0, 0.9), (1, 1, 1), None)]
    if c in ("bin", "mug", "vase", "bowl", "bottle"):
        body = [("cylinder", (0, 0, 0), (1, 1, 1), None)]
        if c == "bottle":
            body = [("cylinder", (0, 0, 0), (1, 1, 0.65), None), ("cone", (0.2, 0.2, 0.65), (0.8, 0.8, 1), None)]
        if c == "mug":
            body = [("cylinder", (0, 0, 0), (0.8, 0.8, 1), None), ("box", (0.8, 0.35, 0.2), (1, 0.65, 0.8), None)]
        return body
    if c == "plant":
        return [("cylinder", (0.2, 0.2, 0), (0.8, 0.8, 0.35), _POT), ("sphere", (0, 0, 0.3), (1, 1, 1), None)]
    if c == "lamp":
        pole = 0.06 if v == "floor" else 0.1
        return [("cylinder", (0.25, 0.25, 0), (0.75, 0.75, 0.05), _METAL),
                ("cylinder", (0.5 - pole / 2, 0.5 - pole / 2, 0.05), (0.5 + pole / 2, 0.5 + pole / 2, 0.7), _METAL),
                ("cone", (0, 0, 0.6), (1, 1, 1), None)]
    if c == "box" or c == "book" or c == "pillow":
        return [("box", (0, 0, 0), (1, 1, 1), None)]
    if c == "laptop":
        return [("box", (0, 0, 0), (1, 1, 0.1), None), ("box", (0, 0.92, 0.1), (1, 1, 1), None)]
    if c == "monitor":
        return [("box", (0.35, 0.3, 0), (0.65, 0.7, 0.04), None), ("box", (0.47, 0.45, 0.04), (0.53, 0.55, 0.3), None),
                ("box", (0, 0.4, 0.3), (1, 0.6, 1), None), ("box", (0.02, 0.38, 0.32), (0.98, 0.4, 0.98), _SCREEN)]
    raise ValueError(f"no shape for category {c!r}")


def object_mesh(obj: SceneObject) -> Mesh:
    """The object's mesh in the map frame (inside its box `center` ± `size`/2)."""
    # The box is given in map axes; the local (pre-yaw) extents swap for quarter turns.
    size = obj.size.copy()
    quarter = abs(math.sin(obj.yaw)) > 0.5
    if quarter:
        size[[0, 1]] = size[[1, 0]]
    c, s = math.cos(obj.yaw), math.sin(obj.yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    verts, tris, rgb, n = [], [], [], 0
    for kind, lo, hi, colour in _parts(obj):
        uv, ut = _unit(kind)
        lo_, hi_ = np.asarray(lo), np.asarray(hi)
        local = (lo_ + uv * (hi_ - lo_) - 0.5) * size  # (V,3) centred on the object box
        local[:, 2] += size[2] / 2  # z from the object's bottom
        verts.append(local @ rot.T + np.array([obj.center[0], obj.center[1], obj.bottom]))
        tris.append(ut + n)
        rgb.append(np.tile(np.asarray(colour or obj.rgb, np.float32), (len(ut), 1)))
        n += len(uv)
    return Mesh(np.concatenate(verts).astype(np.float32), np.concatenate(tris).astype(np.uint32),
                np.concatenate(rgb))


def structure_mesh(room: Room, thickness: float = 0.1) -> Mesh:
    """Floor, four walls and ceiling as slabs just outside the room's box."""
    hx, hy, h, t = room.width / 2, room.depth / 2, room.height, thickness
    slabs = [((-hx - t, -hy - t, -t), (hx + t, hy + t, 0.0), room.floor_rgb),
             ((-hx - t, -hy - t, h), (hx + t, hy + t, h + t), room.wall_rgb),
             ((-hx - t, -hy - t, 0.0), (-hx, hy + t, h), room.wall_rgb),
             ((hx, -hy - t, 0.0), (hx + t, hy + t, h), room.wall_rgb),
             ((-hx, -hy - t, 0.0), (hx, -hy, h), room.wall_rgb),
             ((-hx, hy, 0.0), (hx, hy + t, h), room.wall_rgb)]
    uv, ut = _unit("box")
    verts, tris, rgb = [], [], []
    for i, (lo, hi, colour) in enumerate(slabs):
        verts.append(np.asarray(lo) + uv * (np.asarray(hi) - np.asarray(lo)))
        tris.append(ut + i * len(uv))
        rgb.append(np.tile(np.asarray(colour, np.float32), (len(ut), 1)))
    return Mesh(np.concatenate(verts).astype(np.float32), np.concatenate(tris).astype(np.uint32),
                np.concatenate(rgb))


def raycasting_scene(room: Room, structure: Mesh | None = None
                     ) -> tuple[o3d.t.geometry.RaycastingScene, list[Mesh], np.ndarray]:
    """Open3D scene of the room: (scene, meshes by geometry id, object id by geometry id).

    Geometry id 0 is the structure (object id -1): ``structure``, or the room's box by default
    (a floor of several rooms brings its own walls and doors); object meshes follow in id order.
    """
    scene = o3d.t.geometry.RaycastingScene()
    meshes = [structure or structure_mesh(room)] + [object_mesh(o) for o in room.objects]
    ids = []
    for m in meshes:
        ids.append(scene.add_triangles(o3d.core.Tensor(m.vertices), o3d.core.Tensor(m.triangles)))
    if ids != list(range(len(meshes))):
        raise RuntimeError(f"Open3D assigned unexpected geometry ids {ids[:5]}...")
    return scene, meshes, np.arange(-1, len(room.objects), dtype=np.int32)
