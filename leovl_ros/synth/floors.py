"""Seeded synthetic floors: 3-8 typed rooms along a corridor, joined by doors, with one camera
route through all of them.

Layout decisions (ours; the paper has no synthetic data):
- Rooms are ordinary generated rooms (rooms.py) kept to the categories their type plausibly
  holds (ROOM_TYPES): objects of other categories are removed with everything standing on
  them, and a room is redrawn (next sub-seed) until it holds its type's signature object
  (a bed in the bedroom, ...) and at least four objects. Types are distinct on a floor, so
  "the kitchen" names one room.
- Rooms sit north of an east-west corridor (from the fifth room on, also south of it), each
  with a door in the middle of its corridor wall; furniture in front of a door is removed.
  All rooms share one ceiling height.
- Map frame: x east along the corridor, y north, z up; the corridor's centre line is y = 0
  and starts at x = 0. Objects keep their room's numbering order, renumbered floor-wide.
- Camera route: along the corridor's centre line from door to door (looking ahead), through
  each door (looking in), one loop of the room's own walkway (render.camera_path, the path
  the model's training rooms were rendered along) and back out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import look_at
from .render import DEFAULT_START_NS, Frame, RoomRenderer, camera_path, intrinsics_matrix
from .rooms import Room, RoomConfig, SceneObject, generate_room
from .shapes import Mesh, _unit

ROOM_TYPES: dict[str, tuple[str, tuple[str, ...]]] = {  # type -> (signature category, categories it holds)
    "kitchen": ("table", ("table", "chair", "cabinet", "shelf", "stool", "bin", "box", "mug", "bowl", "bottle",
                          "vase", "plant")),
    "bedroom": ("bed", ("bed", "wardrobe", "cabinet", "lamp", "pillow", "book", "armchair", "box", "plant", "bin")),
    "office": ("desk", ("desk", "chair", "table", "monitor", "laptop", "shelf", "cabinet", "lamp", "book", "mug",
                        "plant", "bin", "box", "bottle")),
    "living room": ("sofa", ("sofa", "armchair", "table", "chair", "shelf", "cabinet", "lamp", "plant", "vase",
                             "book", "stool", "bowl", "box")),
    "bathroom": ("cabinet", ("cabinet", "shelf", "bin", "bottle", "box", "plant", "stool", "bowl", "vase")),
    "dining room": ("table", ("table", "chair", "cabinet", "shelf", "vase", "bowl", "bottle", "mug", "plant",
                              "lamp")),
    "storage room": ("shelf", ("shelf", "cabinet", "box", "bin", "book", "bottle", "wardrobe")),
    "study": ("desk", ("desk", "chair", "shelf", "book", "lamp", "laptop", "armchair", "plant", "mug", "cabinet")),
}
_WALL = 0.1  # wall thickness, metres
_SUB_SEED = 10_000_000  # room seeds of floors start here: no training or held-out room uses them


@dataclass(frozen=True)
class FloorConfig:
    rooms: tuple[int, int] = (3, 8)
    corridor_width: float = 1.6
    door_width: float = 1.0
    height_range: tuple[float, float] = (2.6, 3.0)
    min_objects: int = 4
    attempts: int = 40  # room redraws per typed room


@dataclass
class FloorRoom:
    type: str
    room: Room  # in its own frame (origin at its centre)
    offset: np.ndarray  # (2,) where its centre lies in the floor frame
    side: int  # +1 north of the corridor, -1 south
    object_ids: list[int]  # floor-wide ids of its objects

    @property
    def door_x(self) -> float:
        return float(self.offset[0])

    @property
    def bounds_xy(self) -> np.ndarray:
        """(2, 2) ((xmin, ymin), (xmax, ymax)) of its floor area in the floor frame."""
        half = np.array([self.room.width, self.room.depth]) / 2
        return np.stack([self.offset - half, self.offset + half])


@dataclass
class Floor:
    seed: int
    height: float
    rooms: list[FloorRoom]
    objects: list[SceneObject]  # floor-wide, ids = list positions
    room_of: list[str]  # room type of each object
    corridor: np.ndarray  # (2, 2) corridor floor area ((xmin, ymin), (xmax, ymax))
    config: FloorConfig = field(default_factory=FloorConfig)

    @property
    def scene_id(self) -> str:
        return floor_id_of(self.seed)

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) box of the whole floor (walls excluded), metres."""
        lo = np.min([r.bounds_xy[0] for r in self.rooms] + [self.corridor[0]], axis=0)
        hi = np.max([r.bounds_xy[1] for r in self.rooms] + [self.corridor[1]], axis=0)
        return np.array([[lo[0], lo[1], 0.0], [hi[0], hi[1], self.height]])

    def room(self, room_type: str) -> FloorRoom:
        return next(r for r in self.rooms if r.type == room_type)

    def scene_graph(self) -> dict:
        """JSON-ready: the rooms (type, floor-frame bounds) and objects with their room."""
        objects = [{**o.to_dict(), "room": t} for o, t in zip(self.objects, self.room_of)]
        rooms = [{"type": r.type, "seed": r.room.seed, "bounds_xy": r.bounds_xy.round(6).tolist(),
                  "door_x": round(r.door_x, 6)} for r in self.rooms]
        return {"scene_id": self.scene_id, "seed": self.seed, "height": self.height, "rooms": rooms,
                "corridor": self.corridor.round(6).tolist(), "objects": objects,
                "relations": [{"subject": o.id, "relation": "on", "object": o.support}
                              for o in self.objects if o.support is not None]}


def floor_id_of(seed: int) -> str:
    return f"floor_{seed:06d}"


def _typed_room(room_type: str, seed: int, height: float, side: int, cfg: FloorConfig) -> Room:
    signature, allowed = ROOM_TYPES[room_type]
    rcfg = RoomConfig(height_range=(height, height))
    for attempt in range(cfg.attempts):
        room = generate_room(seed + attempt, rcfg)
        door_y = -side * room.depth / 2  # the corridor wall
        keep = set()
        for o in room.objects:  # supporters come before what stands on them
            blocks_door = (o.support is None and abs(o.center[0]) - o.size[0] / 2 < cfg.door_width / 2 + 0.3
                           and abs(o.center[1] - door_y) - o.size[1] / 2 < room.walkway_inset)
            if o.category in allowed and not blocks_door and (o.support is None or o.support in keep):
                keep.add(o.id)
        kept = [o for o in room.objects if o.id in keep]
        if len(kept) >= cfg.min_objects and any(o.category == signature for o in kept):
            new_id = {o.id: i for i, o in enumerate(kept)}
            room.objects = [SceneObject(new_id[o.id], o.category, o.colour, o.size, o.center,
                                        None if o.support is None else new_id[o.support], o.yaw, o.variant, o.rgb)
                            for o in kept]
            return room
    raise RuntimeError(f"no {room_type} with a {signature} in {cfg.attempts} rooms from seed {seed}")


def generate_floor(seed: int, config: FloorConfig | None = None) -> Floor:
    """The floor of ``seed``; the same seed and config always give the same floor."""
    if seed < 0:
        raise ValueError(f"floor seed must be >= 0, got {seed}")
    cfg = config or FloorConfig()
    if not 1 <= cfg.rooms[0] <= cfg.rooms[1] <= len(ROOM_TYPES):
        raise ValueError(f"rooms per floor must satisfy 1 <= min <= max <= {len(ROOM_TYPES)}, got {cfg.rooms}")
    rng = np.random.default_rng([seed, 7])
    n = int(rng.integers(cfg.rooms[0], cfg.rooms[1] + 1))
    types = [list(ROOM_TYPES)[i] for i in rng.permutation(len(ROOM_TYPES))[:n]]
    height = float(rng.uniform(*cfg.height_range))
    north = n if n <= 4 else (n + 1) // 2
    rooms: list[FloorRoom] = []
    x_end = {1: 0.0, -1: 0.0}
    objects, room_of = [], []
    for i, room_type in enumerate(types):
        side = 1 if i < north else -1
        room = _typed_room(room_type, _SUB_SEED + seed * 1000 + i * cfg.attempts, height, side, cfg)
        x0 = x_end[side] + _WALL
        offset = np.array([x0 + room.width / 2, side * (cfg.corridor_width / 2 + _WALL + room.depth / 2)])
        x_end[side] = x0 + room.width
        ids = []
        base = len(objects)
        for o in room.objects:
            ids.append(base + o.id)
            objects.append(SceneObject(base + o.id, o.category, o.colour, o.size.copy(),
                                       o.center + np.array([offset[0], offset[1], 0.0]),
                                       None if o.support is None else base + o.support, o.yaw, o.variant, o.rgb))
            room_of.append(room_type)
        rooms.append(FloorRoom(room_type, room, offset, side, ids))
    length = max(x_end.values()) + _WALL
    corridor = np.array([[0.0, -cfg.corridor_width / 2], [length, cfg.corridor_width / 2]])
    return Floor(seed, height, rooms, objects, room_of, corridor, cfg)


def _slab(lo, hi, rgb) -> tuple[np.ndarray, np.ndarray, tuple]:
    return np.asarray(lo, float), np.asarray(hi, float), rgb


def structure(floor: Floor) -> Mesh:
    """Floors, ceiling, walls with door gaps and the corridor's ends, as box slabs."""
    t, h, cw = _WALL, floor.height, floor.config.corridor_width / 2
    grey = (0.6, 0.6, 0.58)
    lo, hi = floor.bounds[0], floor.bounds[1]
    slabs = [_slab((lo[0] - t, lo[1] - t, h), (hi[0] + t, hi[1] + t, h + t), (0.86, 0.84, 0.8)),
             _slab((floor.corridor[0, 0] - t, -cw, -t), (floor.corridor[1, 0] + t, cw, 0), grey),
             _slab((floor.corridor[0, 0] - t, -cw, 0), (floor.corridor[0, 0], cw, h), grey),
             _slab((floor.corridor[1, 0], -cw, 0), (floor.corridor[1, 0] + t, cw, h), grey)]
    for side in (1, -1):  # corridor wall where a row of rooms ends early
        end = max([r.bounds_xy[1, 0] + t for r in floor.rooms if r.side == side], default=floor.corridor[0, 0])
        if end < floor.corridor[1, 0]:
            y = sorted([side * cw, side * (cw + t)])
            slabs.append(_slab((end, y[0], 0), (floor.corridor[1, 0], y[1], h), grey))
    for r in floor.rooms:
        (x0, y0), (x1, y1) = r.bounds_xy
        wall = r.room.wall_rgb
        slabs += [_slab((x0 - t, y0 - t, -t), (x1 + t, y1 + t, 0), r.room.floor_rgb),
                  _slab((x0 - t, y0 - t, 0), (x0, y1 + t, h), wall), _slab((x1, y0 - t, 0), (x1 + t, y1 + t, h), wall)]
        far, near = (y1, y0 - t) if r.side == 1 else (y0 - t, y1)  # near: the corridor wall (door)
        slabs.append(_slab((x0, far, 0), (x1, far + t, h), wall))
        d = floor.config.door_width / 2
        slabs += [_slab((x0, near, 0), (r.door_x - d, near + t, h), wall),
                  _slab((r.door_x + d, near, 0), (x1, near + t, h), wall),
                  _slab((r.door_x - d, near, 2.1), (r.door_x + d, near + t, h), wall)]  # over the door
    uv, ut = _unit("box")
    verts = [lo_ + uv * (hi_ - lo_) for lo_, hi_, _ in slabs]
    tris = [ut + i * len(uv) for i in range(len(slabs))]
    rgb = [np.tile(np.asarray(c, np.float32), (len(ut), 1)) for _, _, c in slabs]
    return Mesh(np.concatenate(verts).astype(np.float32), np.concatenate(tris).astype(np.uint32),
                np.concatenate(rgb))


def camera_route(floor: Floor, frames_per_room: int, camera_height: float = 1.3, step: float = 0.6,
                 outward_every: int = 0) -> tuple[np.ndarray, list[str | None]]:
    """(N, 4, 4) poses of the route through every room and the room each pose is in (None: corridor)."""
    poses, where = [], []
    x = floor.corridor[0, 0] + 0.4
    for r in sorted(floor.rooms, key=lambda r: (r.door_x, r.side)):
        for xi in np.arange(x, r.door_x, step):  # along the corridor, looking ahead
            poses.append(look_at(np.array([xi, 0.0, camera_height]), np.array([1.0, 0.0, -0.15])))
            where.append(None)
        x = r.door_x
        inside = np.array([r.door_x, r.side * (floor.config.corridor_width / 2 + _WALL + 0.6), camera_height])
        for eye in (np.array([r.door_x, 0.0, camera_height]), inside):  # through the door, looking in
            poses.append(look_at(eye, np.array([0.0, r.side, -0.3])))
            where.append(r.type)
        shift = np.eye(4)
        shift[:2, 3] = r.offset
        for T in camera_path(r.room, frames_per_room, camera_height, outward_every=outward_every):
            poses.append(shift @ T)
            where.append(r.type)
        poses.append(look_at(inside, np.array([0.0, -r.side, -0.2])))  # and out again
        where.append(r.type)
    return np.stack(poses), where


def render_floor(floor: Floor, frames_per_room: int = 30, width: int = 448, height: int = 336, seed: int = 0,
                 depth_noise_m: float = 0.002, hole_fraction: float = 0.005, hfov_deg: float = 60.0,
                 rate_hz: float = 5.0, start_ns: int = DEFAULT_START_NS, outward_every: int = 0) -> list[Frame]:
    """RGB-D frames along :func:`camera_route` (same conventions and noise as render.render_frames)."""
    K = intrinsics_matrix(width, height, hfov_deg)
    renderer = RoomRenderer(floor, structure(floor))
    period_ns = round(1e9 / rate_hz)
    frames = []
    for i, T in enumerate(camera_route(floor, frames_per_room, outward_every=outward_every)[0]):
        rng = np.random.default_rng([seed, floor.seed, i, 1])
        rgb, depth, inst = renderer.render(K, T, width, height, rng, depth_noise_m, hole_fraction)
        frames.append(Frame(rgb=rgb, depth_mm=depth, K=K.copy(), T_map_camera=T, stamp_ns=start_ns + i * period_ns,
                            instance=inst))
    return frames


def floor_area(floor: Floor) -> float:
    """Square metres of floor (rooms + corridor)."""
    return float(sum(r.room.width * r.room.depth for r in floor.rooms) + np.prod(np.diff(floor.corridor, axis=0)))


__all__ = ["Floor", "FloorConfig", "FloorRoom", "ROOM_TYPES", "camera_route", "floor_area", "floor_id_of",
           "generate_floor", "render_floor", "structure"]
