"""Spatial relations between the objects of a room, computed from their map-frame boxes.

These are the ground truth behind every annotation. Decision (paper silent), the
thresholds: `near` = boxes closer than 0.5 m; a left/right or nearest answer is only asked when it wins
by a clear margin, so the truth does not hinge on centimetres.
"""

from __future__ import annotations

from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .rooms import Room, SceneObject

NEAR_M = 0.5


def box_gap(a: SceneObject, b: SceneObject) -> float:
    """Euclidean gap between two boxes (0 when they touch or overlap)."""
    sep = np.maximum(0.0, np.maximum(a.min - b.max, b.min - a.max))
    return float(np.linalg.norm(sep))


def footprints_overlap(a: SceneObject, b: SceneObject) -> bool:
    """True when the xy rectangles share a positive area."""
    return bool(np.all(a.min[:2] < b.max[:2]) and np.all(b.min[:2] < a.max[:2]))


def is_above(a: SceneObject, b: SceneObject, tol: float = 0.005) -> bool:
    """`a` is above `b`: footprints overlap and `a` starts where `b` ends or higher."""
    return footprints_overlap(a, b) and a.bottom >= b.top - tol


def near_pairs(room: Room, threshold: float = NEAR_M) -> list[tuple[int, int]]:
    """Pairs (i < j) closer than `threshold` that are not stacked on each other."""
    out = []
    for a, b in combinations(room.objects, 2):
        if a.support == b.id or b.support == a.id:
            continue
        if box_gap(a, b) <= threshold:
            out.append((a.id, b.id))
    return out


def side_of(viewer_xy: np.ndarray, facing_xy: np.ndarray, target_xy: np.ndarray,
            margin: float = 0.3) -> str | None:
    """"left"/"right" of `target` for a viewer at `viewer_xy` looking towards `facing_xy`.

    None when the target is within `margin` metres of the line of sight (ambiguous).
    """
    f = np.asarray(facing_xy, float) - np.asarray(viewer_xy, float)
    norm = np.linalg.norm(f)
    if norm < 1e-6:
        return None
    left = np.array([-f[1], f[0]]) / norm  # z-up frame: +90 degrees from the facing direction
    lateral = float(np.dot(np.asarray(target_xy, float) - viewer_xy, left))
    if abs(lateral) < margin:
        return None
    return "left" if lateral > 0 else "right"


def nearest(room: Room, obj: SceneObject, candidates: list[SceneObject],
            ratio: float = 1.3, min_diff: float = 0.3) -> SceneObject | None:
    """The candidate whose centre is nearest to `obj` in xy, if it clearly wins.

    It must beat every candidate of another category by `ratio` and `min_diff` metres.
    """
    others = [c for c in candidates if c.id != obj.id]
    if not others:
        return None
    d = [float(np.linalg.norm(c.center[:2] - obj.center[:2])) for c in others]
    best = int(np.argmin(d))
    rivals = [di for c, di in zip(others, d) if c.category != others[best].category]
    if rivals and (min(rivals) < d[best] * ratio or min(rivals) - d[best] < min_diff):
        return None
    return others[best]


def refer(room: Room, obj: SceneObject, allow_colour: bool = True) -> str | None:
    """Shortest noun phrase that picks out `obj` alone ("the sofa", "the red chair",
    "the mug on the desk"), or None when none of these forms is unique."""
    same = room.of_category(obj.category)
    if len(same) == 1:
        return f"the {obj.category}"
    if allow_colour and sum(o.colour == obj.colour for o in same) == 1:
        return f"the {obj.colour} {obj.category}"
    if obj.support is not None:
        sup_cat = room.object(obj.support).category
        if sum(o.support is not None and room.object(o.support).category == sup_cat for o in same) == 1:
            return f"the {obj.category} on the {sup_cat}"
    return None


def support_name(room: Room, obj: SceneObject) -> str:
    """Category of what `obj` stands on, or "floor"."""
    return "floor" if obj.support is None else room.object(obj.support).category
