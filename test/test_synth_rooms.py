"""Room generator: reproducibility, variety, physical consistency, meshes inside their boxes."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from leovl_ros.synth.catalog import CATEGORIES, COLOURS
from leovl_ros.synth.relations import footprints_overlap, is_above, refer, side_of
from leovl_ros.synth.rooms import RoomConfig, generate_room
from leovl_ros.synth.shapes import object_mesh

ROOMS = [generate_room(s) for s in range(30)]


def test_same_seed_same_room_and_different_seeds_differ():
    assert generate_room(7).scene_graph() == generate_room(7).scene_graph()
    assert generate_room(7).scene_graph() != generate_room(8).scene_graph()
    assert generate_room(7).scene_id == "synth_000007"


def test_variety_of_categories_colours_heights():
    cats = {o.category for r in ROOMS for o in r.objects}
    colours = {o.colour for r in ROOMS for o in r.objects}
    assert len(cats) >= 15 and len(colours) >= 10
    assert all(len(r.objects) >= 10 for r in ROOMS)
    # stacked objects: most rooms have something standing on something, some two levels up
    assert sum(any(o.support is not None for o in r.objects) for r in ROOMS) >= 25
    assert any(r.object(o.support).support is not None for r in ROOMS for o in r.objects if o.support is not None)
    bottoms = [o.bottom for r in ROOMS for o in r.objects]
    assert len({round(b, 1) for b in bottoms}) >= 5  # objects at many heights


def test_sizes_within_catalog_ranges():
    ranges = {(c.name, c.variant): (np.array(c.size_min), np.array(c.size_max)) for c in CATEGORIES}
    for r in ROOMS:
        for o in r.objects:
            lo, hi = ranges[(o.category, o.variant)]
            local = o.size[[1, 0, 2]] if abs(np.sin(o.yaw)) > 0.5 else o.size
            assert np.all(local >= lo - 1e-9) and np.all(local <= hi + 1e-9), o


def test_no_interpenetration_and_supports_are_physical():
    for r in ROOMS:
        lo, hi = r.bounds
        assert np.allclose(hi - lo, [r.width, r.depth, r.height])
        for o in r.objects:
            assert np.all(o.min >= lo - 1e-9) and np.all(o.max <= hi + 1e-9), f"{o} leaves the room"
            if o.support is None:
                assert abs(o.bottom) < 1e-9
            else:
                s = r.object(o.support)
                assert abs(o.bottom - s.top) < 1e-9 and is_above(o, s)
                assert np.all(o.min[:2] >= s.min[:2] - 1e-9) and np.all(o.max[:2] <= s.max[:2] + 1e-9)
        for a, b in combinations(r.objects, 2):
            overlap = np.all(a.min < b.max - 1e-9) and np.all(b.min < a.max - 1e-9)
            assert not overlap, f"{a.category} {a.id} and {b.category} {b.id} interpenetrate in {r.scene_id}"


def test_walkway_is_free_of_floor_objects():
    for r in ROOMS:
        inset = r.walkway_inset
        ax, ay = r.width / 2 - inset, r.depth / 2 - inset
        # sample the camera loop densely; no floor object may cover it (with 0.2 m clearance)
        t = np.linspace(0, 1, 200)
        loop = np.concatenate([np.stack([ax * (2 * t - 1), np.full_like(t, s * ay)], 1) for s in (-1, 1)]
                              + [np.stack([np.full_like(t, s * ax), ay * (2 * t - 1)], 1) for s in (-1, 1)])
        for o in r.objects:
            inside = np.all((loop > o.min[:2] - 0.2) & (loop < o.max[:2] + 0.2), axis=1)
            assert not inside.any(), f"{o.category} blocks the walkway of {r.scene_id}"


def test_meshes_fill_their_boxes():
    for o in ROOMS[0].objects + ROOMS[1].objects:
        v = object_mesh(o).vertices
        assert np.all(v >= o.min - 1e-4) and np.all(v <= o.max + 1e-4), o.category
        assert abs(v[:, 2].max() - o.top) < 1e-4 and abs(v[:, 2].min() - o.bottom) < 1e-4


def test_relation_helpers():
    assert side_of(np.zeros(2), np.array([1.0, 0.0]), np.array([1.0, 1.0])) == "left"
    assert side_of(np.zeros(2), np.array([1.0, 0.0]), np.array([1.0, -1.0])) == "right"
    assert side_of(np.zeros(2), np.array([1.0, 0.0]), np.array([3.0, 0.1])) is None
    r = ROOMS[3]
    for o in r.objects:
        ref = refer(r, o)
        if ref is not None:
            assert o.category in ref
    stacked = [o for o in r.objects if o.support is not None]
    assert all(footprints_overlap(o, r.object(o.support)) for o in stacked)


def test_bad_arguments():
    with pytest.raises(ValueError, match="seed"):
        generate_room(-1)
    small = generate_room(0, RoomConfig(wall_objects=(0, 0), floor_objects=(0, 0), table_probability=0.0,
                                        centre_extras=(0, 0)))
    assert small.objects == []
    assert set(COLOURS) >= {o.colour for r in ROOMS for o in r.objects}
