"""Seeded procedural rooms: floor, walls and non-interpenetrating objects with known truth.

Map frame (REP-103): x east, y north, z up; origin at the room centre on the floor.

Layout decisions (the paper has no synthetic data; these are ours):
- The floor is split by inset from the walls into a *wall zone* (furniture with its back to
  a wall), a *walkway* ring (kept free, the camera path runs along its centre line so the
  camera never sits inside furniture) and a *centre zone* (table group, stools, ...).
- Objects are yawed by multiples of 90 degrees, so each object's map-frame axis-aligned box
  (`center`, `size`) is exact and relations (on, above, near, left/right) are box geometry.
- "No interpenetration" is enforced on boxes: two objects' boxes are disjoint unless one
  stands on the other (then they touch at exactly the supporter's top).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .catalog import CATEGORIES, COLOURS, Category, categories_by_placement, surface_category
from .relations import near_pairs

_YAW_BY_BACK = {(0, 1): 0.0, (0, -1): math.pi, (1, 0): -math.pi / 2, (-1, 0): math.pi / 2}


@dataclass
class SceneObject:
    """One object. `center`/`size` are its map-frame axis-aligned box (metres, (3,))."""

    id: int
    category: str
    colour: str
    size: np.ndarray  # (3,) extents along map x, y, z
    center: np.ndarray  # (3,) box centre in the map frame
    support: int | None  # id of the object it stands on; None = the floor
    yaw: float = 0.0  # radians about z; the object's front faces its local -y
    variant: str = ""  # shape variant ("floor"/"table" lamp, ...)
    rgb: tuple[float, float, float] = (0.5, 0.5, 0.5)  # albedo actually rendered

    @property
    def min(self) -> np.ndarray:
        return self.center - self.size / 2

    @property
    def max(self) -> np.ndarray:
        return self.center + self.size / 2

    @property
    def bottom(self) -> float:
        return float(self.center[2] - self.size[2] / 2)

    @property
    def top(self) -> float:
        return float(self.center[2] + self.size[2] / 2)

    def to_dict(self) -> dict:
        return {
            "id": self.id, "category": self.category, "colour": self.colour,
            "size": [round(float(v), 6) for v in self.size],
            "center": [round(float(v), 6) for v in self.center],
            "support": self.support, "yaw": round(self.yaw, 6), "variant": self.variant,
            "rgb": [round(v, 6) for v in self.rgb],
        }


@dataclass(frozen=True)
class RoomConfig:
    """Ranges the generator samples from (metres unless named otherwise)."""

    width_range: tuple[float, float] = (5.5, 8.0)
    depth_range: tuple[float, float] = (5.0, 7.0)
    height_range: tuple[float, float] = (2.6, 3.0)
    wall_zone: float = 1.1  # depth of the band along the walls that holds wall furniture
    walkway: float = 0.5  # width of the free ring between wall zone and centre zone
    wall_objects: tuple[int, int] = (3, 6)
    table_probability: float = 0.85
    chairs: tuple[int, int] = (2, 4)
    same_colour_chairs: float = 0.6  # probability that a table's chairs match
    floor_objects: tuple[int, int] = (1, 4)
    centre_extras: tuple[int, int] = (0, 2)
    items_per_supporter: tuple[int, int] = (0, 3)
    gap: float = 0.04  # minimum horizontal clearance between floor objects
    attempts: int = 60  # rejection-sampling tries per object


@dataclass
class Room:
    seed: int
    width: float  # x extent
    depth: float  # y extent
    height: float
    objects: list[SceneObject]
    config: RoomConfig = field(default_factory=RoomConfig)
    floor_rgb: tuple[float, float, float] = (0.7, 0.6, 0.45)
    wall_rgb: tuple[float, float, float] = (0.85, 0.83, 0.78)

    @property
    def scene_id(self) -> str:
        return scene_id_of(self.seed)

    @property
    def bounds(self) -> np.ndarray:
        """(2, 3) room box ((xmin, ymin, zmin), (xmax, ymax, zmax)) in metres, e.g. VoxelMap bounds."""
        return np.array([[-self.width / 2, -self.depth / 2, 0.0], [self.width / 2, self.depth / 2, self.height]])

    @property
    def walkway_inset(self) -> float:
        """Distance from the walls of the walkway's centre line (the camera path)."""
        return self.config.wall_zone + self.config.walkway / 2

    def object(self, object_id: int) -> SceneObject:
        return self.objects[object_id]  # ids are list positions by construction

    def of_category(self, category: str) -> list[SceneObject]:
        return [o for o in self.objects if o.category == category]

    def children(self, object_id: int) -> list[SceneObject]:
        return [o for o in self.objects if o.support == object_id]

    def categories(self) -> list[str]:
        return sorted({o.category for o in self.objects})

    def scene_graph(self) -> dict:
        """JSON-ready scene graph: room box, objects and on/near relations."""
        on = [{"subject": o.id, "relation": "on", "object": o.support}
              for o in self.objects if o.support is not None]
        near = [{"subject": a, "relation": "near", "object": b} for a, b in near_pairs(self)]
        return {
            "scene_id": self.scene_id, "seed": self.seed,
            "room": {"width": self.width, "depth": self.depth, "height": self.height,
                     "floor_rgb": list(self.floor_rgb), "wall_rgb": list(self.wall_rgb)},
            "objects": [o.to_dict() for o in self.objects],
            "relations": on + near,
        }


def scene_id_of(seed: int) -> str:
    """Scene id of the room built from `seed`."""
    return f"synth_{seed:06d}"


class _Placer:
    """Rejection sampler that keeps the placed boxes and the zones consistent."""

    def __init__(self, rng: np.random.Generator, room: Room) -> None:
        self.rng, self.room, self.cfg = rng, room, room.config
        hx, hy = room.width / 2, room.depth / 2
        inner = room.config.wall_zone
        # xy box of everything inside the wall zone (its inside is walkway + centre)
        self.inner = (np.array([-hx + inner, -hy + inner]), np.array([hx - inner, hy - inner]))
        ring = inner + room.config.walkway
        self.centre = (np.array([-hx + ring, -hy + ring]), np.array([hx - ring, hy - ring]))

    def _size(self, cat: Category) -> np.ndarray:
        return self.rng.uniform(cat.size_min, cat.size_max)

    def _colour(self, cat: Category) -> str:
        names = cat.colours or tuple(COLOURS)
        return str(names[self.rng.integers(len(names))])

    def _free(self, lo: np.ndarray, hi: np.ndarray) -> bool:
        g = self.cfg.gap
        for o in self.room.objects:
            if o.support is None and np.all(lo < o.max[:2] + g) and np.all(hi > o.min[:2] - g):
                return False
        return True

    def _add(self, cat: Category, size_local: np.ndarray, xy: np.ndarray, z0: float, yaw: float,
             support: int | None, colour: str | None = None) -> SceneObject:
        size = size_local.copy()
        if abs(math.sin(yaw)) > 0.5:  # a quarter turn swaps the footprint axes
            size[[0, 1]] = size[[1, 0]]
        colour = colour or self._colour(cat)
        base = np.asarray(COLOURS[colour])
        rgb = np.clip(base * self.rng.uniform(0.85, 1.1) + self.rng.normal(0, 0.02, 3), 0, 1)
        obj = SceneObject(len(self.room.objects), cat.name, colour, size,
                          np.array([xy[0], xy[1], z0 + size[2] / 2]), support, yaw, cat.variant,
                          tuple(round(float(v), 6) for v in rgb))
        self.room.objects.append(obj)
        return obj

    def wall_object(self, cat: Category) -> SceneObject | None:
        hx, hy = self.room.width / 2, self.room.depth / 2
        for _ in range(self.cfg.attempts):
            size = self._size(cat)
            if size[1] + 0.05 > self.cfg.wall_zone:
                continue
            back = list(_YAW_BY_BACK)[self.rng.integers(4)]
            yaw = _YAW_BY_BACK[back]
            along, half_wall = (0, hx) if back[0] == 0 else (1, hy)
            if size[0] / 2 + 0.05 > half_wall:
                continue
            t = self.rng.uniform(-half_wall + size[0] / 2 + 0.02, half_wall - size[0] / 2 - 0.02)
            off = (hy if back[0] == 0 else hx) - size[1] / 2 - self.rng.uniform(0.02, 0.05)
            xy = np.zeros(2)
            xy[along], xy[1 - along] = t, off * (back[1] if back[0] == 0 else back[0])
            half = (size[[1, 0]] if along == 1 else size[:2]) / 2
            if self._free(xy - half, xy + half):
                return self._add(cat, size, xy, 0.0, yaw, None)
        return None

    def zone_object(self, cat: Category, zone: str, xy: np.ndarray | None = None,
                    yaw: float | None = None, size: np.ndarray | None = None,
                    colour: str | None = None, pad: float = 0.0) -> SceneObject | None:
        """A free-standing object inside the centre zone or the wall zone.

        `pad` keeps a sampled position that far from the zone border (room for chairs).
        """
        for _ in range(self.cfg.attempts if xy is None else 1):
            s = self._size(cat) if size is None else size
            y = float(self.rng.integers(4)) * math.pi / 2 if yaw is None else yaw
            half = (s[[1, 0]] if abs(math.sin(y)) > 0.5 else s[:2]) / 2
            if xy is None:
                lo, hi = (self.centre if zone == "centre" else
                          (np.array([-self.room.width / 2, -self.room.depth / 2]),
                           np.array([self.room.width / 2, self.room.depth / 2])))
                margin = half + 0.02 + pad
                if np.any(hi - lo < 2 * margin):
                    margin = half + 0.02  # no room for the pad: place it anyway
                    if np.any(hi - lo < 2 * margin):
                        continue
                p = self.rng.uniform(lo + margin, hi - margin)
            else:
                p = xy
            if zone == "centre" and not (np.all(p - half >= self.centre[0]) and
                                         np.all(p + half <= self.centre[1])):
                continue
            if zone == "wall" and np.all(p - half < self.inner[1]) and np.all(p + half > self.inner[0]):
                continue  # would poke into the walkway
            if self._free(p - half, p + half):
                return self._add(cat, s, p, 0.0, y, None, colour)
        return None

    def table_group(self, table_cat: Category, chair_cat: Category) -> None:
        table = self.zone_object(table_cat, "centre", pad=0.7)
        if table is None:
            return
        n = int(self.rng.integers(self.cfg.chairs[0], self.cfg.chairs[1] + 1))
        colour = self._colour(chair_cat) if self.rng.random() < self.cfg.same_colour_chairs else None
        sides = [(0, 1), (0, -1), (1, 0), (-1, 0)]
        # long sides first: chairs go where people actually sit
        long_axis = 0 if table.size[0] >= table.size[1] else 1
        sides.sort(key=lambda s: s[long_axis] != 0)
        for side in sides[:n]:
            size = self._size(chair_cat)
            gap = self.rng.uniform(0.05, 0.15)
            axis = 1 if side[0] == 0 else 0
            xy = table.center[:2].copy()
            xy[axis] += side[axis] * (table.size[axis] / 2 + gap + size[1] / 2)
            self.zone_object(chair_cat, "centre", xy, _YAW_BY_BACK[side], size, colour)

    def items_on(self, supporter: SceneObject) -> list[SceneObject]:
        sup_cat = next(c for c in CATEGORIES if c.name == supporter.category
                       and c.variant == supporter.variant)
        k = int(self.rng.integers(self.cfg.items_per_supporter[0], self.cfg.items_per_supporter[1] + 1))
        names = list(sup_cat.supports)
        self.rng.shuffle(names)
        placed: list[SceneObject] = []
        for name in names[:k]:
            cat = surface_category(name)
            for _ in range(self.cfg.attempts // 4):
                size = self._size(cat)
                yaw = supporter.yaw if name in ("monitor", "laptop") else float(self.rng.integers(4)) * math.pi / 2
                half = (size[[1, 0]] if abs(math.sin(yaw)) > 0.5 else size[:2]) / 2
                lo, hi = supporter.min[:2] + half + 0.02, supporter.max[:2] - half - 0.02
                if np.any(hi <= lo) or supporter.top + size[2] > self.room.height - 0.3:
                    break
                p = self.rng.uniform(lo, hi)
                if all(np.any(p - half >= o.max[:2] + 0.01) or np.any(p + half <= o.min[:2] - 0.01)
                       for o in placed):
                    placed.append(self._add(cat, size, p, supporter.top, yaw, supporter.id))
                    break
        return placed


def generate_room(seed: int, config: RoomConfig | None = None) -> Room:
    """Build the room of `seed`; the same seed and config always give the same room."""
    if seed < 0:
        raise ValueError(f"room seed must be >= 0, got {seed}")
    cfg = config or RoomConfig()
    rng = np.random.default_rng(seed)
    room = Room(seed, float(rng.uniform(*cfg.width_range)), float(rng.uniform(*cfg.depth_range)),
                float(rng.uniform(*cfg.height_range)), [], cfg)
    room.floor_rgb = tuple(round(float(v), 6) for v in np.clip(np.array([0.62, 0.50, 0.36]) + rng.normal(0, 0.05, 3), 0, 1))
    room.wall_rgb = tuple(round(float(v), 6) for v in np.clip(np.array([0.86, 0.84, 0.80]) + rng.normal(0, 0.03, 3), 0, 1))
    placer = _Placer(rng, room)
    by_name = {c.name: c for c in CATEGORIES if c.placement != "surface"}

    wall = categories_by_placement("wall")
    for i in rng.permutation(len(wall))[: rng.integers(cfg.wall_objects[0], cfg.wall_objects[1] + 1)]:
        placer.wall_object(wall[i])
    if rng.random() < cfg.table_probability:
        placer.table_group(by_name["table"], by_name["chair"])
    for _ in range(rng.integers(cfg.centre_extras[0], cfg.centre_extras[1] + 1)):
        placer.zone_object(by_name["stool" if rng.random() < 0.5 else "box"], "centre")
    floor = categories_by_placement("floor")
    for _ in range(rng.integers(cfg.floor_objects[0], cfg.floor_objects[1] + 1)):
        placer.zone_object(floor[rng.integers(len(floor))], "wall" if rng.random() < 0.7 else "centre")

    queue = [o for o in room.objects if o.support is None]
    while queue:  # breadth first, so small boxes placed on supporters get items too
        sup = queue.pop(0)
        if any(c.name == sup.category and c.variant == sup.variant and c.supports for c in CATEGORIES):
            queue.extend(placer.items_on(sup))
    return room
