"""Synthetic floors: typed rooms along a corridor, the camera route through them, floor-level QA
checked against the geometry, and `leovl-synth --floors`."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

from leovl_ros.synth.cli import main as synth_main
from leovl_ros.synth.floor_qa import floor_qa_records
from leovl_ros.synth.floors import ROOM_TYPES, camera_route, floor_area, generate_floor, render_floor
from leovl_ros.training.records import read_records

BUDGET = 256  # the bundled model's max_tokens
VOXEL = 0.3


def _room_at(floor, xy) -> str | None:
    for r in floor.rooms:
        (x0, y0), (x1, y1) = r.bounds_xy
        if x0 <= xy[0] <= x1 and y0 <= xy[1] <= y1:
            return r.type
    return None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_floor_layout_is_typed_seeded_and_big(seed):
    floor = generate_floor(seed)
    again = generate_floor(seed)
    assert [o.to_dict() for o in floor.objects] == [o.to_dict() for o in again.objects]
    types = [r.type for r in floor.rooms]
    assert 3 <= len(types) <= 8 and len(set(types)) == len(types)
    for o, room_type in zip(floor.objects, floor.room_of):
        assert o.category in ROOM_TYPES[room_type][1]
        assert _room_at(floor, o.center[:2]) == room_type  # the label is where the object is
        assert o.support is None or floor.room_of[o.support] == room_type
    for r in floor.rooms:
        assert ROOM_TYPES[r.type][0] in {floor.objects[i].category for i in r.object_ids}
    # ≥ 5x the budget in columns of floor alone (every column of floor holds at least its floor voxel)
    assert floor_area(floor) / VOXEL ** 2 >= 5 * BUDGET


def test_route_visits_every_room_and_sees_mostly_that_room():
    floor = generate_floor(3)
    poses, where = camera_route(floor, 6)
    assert {w for w in where if w} == {r.type for r in floor.rooms}
    for T, w in zip(poses, where):  # every camera stands inside its room (or the corridor)
        assert _room_at(floor, T[:2, 3]) == w or (w and abs(T[1, 3]) < 1.5)
    frames = render_floor(floor, 6, 96, 72)
    assert len(frames) == len(poses)
    own = other = 0
    for f, w in zip(frames, where):
        ids = f.instance[f.instance >= 0]
        if w is None or ids.size == 0:
            continue
        rooms = np.array(floor.room_of)[ids]
        own += int((rooms == w).sum())
        other += int((rooms != w).sum())
    assert own > 0.9 * (own + other)  # walls and doors keep the other rooms out of view


def test_floor_questions_match_the_geometry():
    floor = generate_floor(4)
    records = floor_qa_records(floor, per_type=8)
    by_type = Counter(r["qtype"] for r in records)
    assert set(by_type) == {"floor_colour", "which_room", "room_existence", "floor_count"}
    count = Counter(o.category for o in floor.objects)
    for r in records:
        q, ans = r["instruction"], r["response"]
        if r["qtype"] in ("floor_colour", "which_room"):
            cat = next(c for c in count if re.search(rf"\b{c}\b", q))
            assert count[cat] == 1
            obj = next(o for o in floor.objects if o.category == cat)
            assert ans == (obj.colour if r["qtype"] == "floor_colour" else _room_at(floor, obj.center[:2]))
        elif r["qtype"] == "room_existence":
            room = next(t for t in ROOM_TYPES if f"the {t}" in q)
            cat = next(c for c in count if re.search(rf"\b{c}\b", q))
            present = any(o.category == cat and _room_at(floor, o.center[:2]) == room for o in floor.objects)
            assert ans == ("yes" if present else "no")
        else:
            n = int(ans)
            assert any(re.search(rf"\b{p}\b", q) for p in _plurals_with(count, n))
    answers = Counter(r["response"] for r in records if r["qtype"] == "room_existence")
    assert abs(answers["yes"] - answers["no"]) <= 1


def _plurals_with(count: Counter, n: int) -> list[str]:
    from leovl_ros.synth.catalog import CATEGORY_NAMES, PLURALS

    return [PLURALS[c] for c in CATEGORY_NAMES if count.get(c, 0) == n]


def test_cli_writes_floors_with_the_same_writers(tmp_path):
    out = tmp_path / "floors"
    assert synth_main(["--floors", "1", "--seed", "5", "--out", str(out), "--frames", "2", "--width", "64",
                       "--height", "48", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "floors" and manifest["rooms"][0]["scene_id"] == "floor_000005"
    graph = json.loads((out / "scenes" / "floor_000005" / "scene_graph.json").read_text())
    assert {o["room"] for o in graph["objects"]} == {r["type"] for r in graph["rooms"]}
    assert len(list((out / "scenes" / "floor_000005" / "color").iterdir())) == len(camera_route(generate_floor(5),
                                                                                                   2)[0])
    recs = [r for split in ("train", "val", "test") for r in read_records([out / "annotations" / f"{split}.jsonl"])]
    assert recs and {r.scene_id for r in recs} == {"floor_000005"}
    assert synth_main(["--floors", "0", "--out", str(tmp_path / "x")]) == 2
