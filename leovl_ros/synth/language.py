"""Free-text records from a room's scene graph: object captions, scene captions, plans and
two-turn dialogues. Responses are built from the same facts as the QA answers, in a few
fixed sentence shapes, so a small model can learn them and captions metrics mean something.
Plans are numbered steps, one per line ("1. Go to the desk.\n2. ...").
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .catalog import CATEGORY_NAMES, PLURALS, number_word
from .relations import box_gap, refer, support_name
from .rooms import Room, SceneObject
from .text import a, capitalise, join_words, pick, record

CAPTION_Q = ("Describe the object at the marked location.", "What is the object in the marked region?",
             "Give a short description of the marked object.", "Describe this object.")
SCENE_Q = ("Describe the room.", "Give a summary of this scene.", "What does this room look like?",
           "Describe the scene in a few sentences.")
# The last phrasing is exactly what the plan_task service sends (model.prompts.plan_instruction).
PLAN_Q = ("Make a plan to {g}.", "How can I {g}?", "Give me step-by-step instructions to {g}.",
          "I want to {g}. What should I do?", "Create a step-by-step plan for the task: {g}")
_SEATS = ("sofa", "armchair", "chair", "bed", "stool")
_STORAGE = ("shelf", "cabinet")


def _name(room: Room, o: SceneObject) -> str:
    """Unique phrase when there is one, else "the <colour> <category>" (still true, just
    not unique)."""
    return refer(room, o) or f"the {o.colour} {o.category}"


def _closest(room: Room, o: SceneObject, floor_only: bool = True) -> SceneObject | None:
    others = [b for b in room.objects if b.id != o.id and (b.support is None or not floor_only)
              and b.support != o.id and o.support != b.id]
    return min(others, key=lambda b: box_gap(o, b), default=None)


def describe_object(room: Room, o: SceneObject) -> str:
    """One or two sentences: what it is, where it stands, what is on it."""
    what = a(f"{o.colour} {o.category}")
    if o.support is not None:
        text = f"{what} on the {support_name(room, o)}"
    else:
        near = _closest(room, o)
        text = f"{what} standing on the floor" + (f" next to the {near.category}" if near and box_gap(o, near) < 1.0 else "")
    on_top = [c.category for c in room.children(o.id)]
    text = capitalise(text) + "."
    if on_top:
        text += f" There {'is' if len(on_top) == 1 else 'are'} {join_words([a(c) for c in on_top])} on it."
    return text


def object_captions(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    out = []
    for i in rng.permutation(len(room.objects))[:k]:
        o = room.objects[int(i)]
        radius = round(max(0.3, float(np.linalg.norm(o.size)) / 2), 3)
        anchor = {"center": [round(float(v), 4) for v in o.center], "radius": radius}
        out.append(record(room.scene_id, "object_caption", pick(rng, CAPTION_Q), describe_object(room, o),
                          anchor=anchor))
    return out


def room_type(room: Room) -> str:
    cats = {o.category for o in room.objects}
    for cat, kind in (("bed", "bedroom"), ("desk", "study"), ("sofa", "living room"), ("table", "dining room")):
        if cat in cats:
            return kind
    return "room"


def describe_room(room: Room) -> str:
    floor = [o for o in room.objects if o.support is None]
    floor.sort(key=lambda o: (-float(np.prod(o.size)), o.id))  # big furniture first
    groups = Counter((o.colour, o.category) for o in floor)
    seen, parts = set(), []
    for o in floor:
        key = (o.colour, o.category)
        if key not in seen:
            seen.add(key)
            n = groups[key]
            parts.append(a(f"{o.colour} {o.category}") if n == 1 else f"{number_word(n)} {o.colour} {PLURALS[o.category]}")
    text = f"This is {a(room_type(room))} with {join_words(parts)}."
    for sup in floor + [o for o in room.objects if o.support is not None]:  # stacks after furniture
        items = room.children(sup.id)
        if items:
            text += f" On the {sup.category} there {'is' if len(items) == 1 else 'are'} " \
                    f"{join_words([a(f'{c.colour} {c.category}') for c in items])}."
    return text


def scene_captions(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    text = describe_room(room)
    return [record(room.scene_id, "scene_caption", q, text) for q in
            [SCENE_Q[int(i)] for i in rng.permutation(len(SCENE_Q))[:k]]]


def _steps(lines: list[str]) -> str:
    return "\n".join(f"{i}. {capitalise(s)}." for i, s in enumerate(lines, 1))


def _plans(room: Room) -> list[tuple[str, list[str]]]:
    """All (goal, steps) this room allows; each names objects that are present."""
    by = {c: room.of_category(c) for c in CATEGORY_NAMES}
    plans = []
    storage = [o for c in _STORAGE for o in by[c]]
    for sup in (o for o in room.objects if o.category in ("table", "desk", "stool") and room.children(o.id)):
        dest = next((s for s in storage if s.id != sup.id), None)
        if dest is None:
            continue
        items = room.children(sup.id)
        steps = [f"go to {_name(room, sup)}"]
        for it in items:
            steps += [f"pick up the {it.colour} {it.category}", f"put it on {_name(room, dest)}"]
        steps.append(f"wipe {_name(room, sup)}")
        plans.append((f"tidy {_name(room, sup)}", steps))
    seats = [o for c in _SEATS for o in by[c]]
    for book in by["book"][:1]:
        if seats:
            seat = seats[0]
            plans.append(("read a book", [f"go to the {support_name(room, book)}", f"pick up the {book.colour} book",
                                          f"walk to {_name(room, seat)}", f"sit down on {_name(room, seat)}",
                                          "open the book and read"]))
    for plant in by["plant"][:1]:
        bottle = by["bottle"][0] if by["bottle"] else None
        fetch = ([f"go to the {support_name(room, bottle)}", f"pick up the {bottle.colour} bottle"]
                 if bottle else ["fetch a cup of water"])
        plans.append(("water the plant", fetch + [f"walk to {_name(room, plant)}", "pour the water into the pot",
                                                   "check that the soil is moist"]))
    if by["bin"]:
        for trash in (by["bottle"] + by["box"])[:1]:
            plans.append((f"throw away the {trash.colour} {trash.category}",
                          [f"go to the {support_name(room, trash)}", f"pick up the {trash.colour} {trash.category}",
                           f"walk to {_name(room, by['bin'][0])}", f"drop the {trash.category} into the bin"]))
    for desk in by["desk"][:1]:
        screens = [c for c in room.children(desk.id) if c.category in ("monitor", "laptop")]
        seat = (by["chair"] + by["stool"] + by["armchair"])[:1]
        steps = [f"walk to {_name(room, desk)}"]
        steps += [f"bring {_name(room, seat[0])} to the desk", "sit down"] if seat else ["stand at the desk"]
        steps += [f"turn on the {screens[0].category}"] if screens else ["take out a notebook"]
        plans.append(("work at the desk", steps + ["start working"]))
    for lamp in by["lamp"][:1]:
        plans.append(("make the room brighter", [f"walk to {_name(room, lamp)}", "find the switch of the lamp",
                                                  "turn on the lamp"]))
    for bed in by["bed"][:1]:
        pillows = [c for c in room.children(bed.id) if c.category == "pillow"]
        steps = [f"walk to {_name(room, bed)}", "straighten the sheet"]
        steps += [f"put the {p.colour} pillow at the head of the bed" for p in pillows] or ["smooth the blanket"]
        plans.append(("make the bed", steps))
    return plans


def plan_records(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    plans = _plans(room)
    return [record(room.scene_id, "plan", pick(rng, PLAN_Q).format(g=plans[int(i)][0]), _steps(plans[int(i)][1]))
            for i in rng.permutation(len(plans))[:k]]


def _dialogues(room: Room, rng: np.random.Generator) -> list[list[tuple[str, str, str, str]]]:
    """(q1, a1, q2, a2) candidates, one list per dialogue shape."""
    locate: list[tuple[str, str, str, str]] = []
    colours: list[tuple[str, str, str, str]] = []
    on_top: list[tuple[str, str, str, str]] = []
    missing_seat: list[tuple[str, str, str, str]] = []
    counts = Counter(o.category for o in room.objects)
    for o in room.objects:
        if counts[o.category] == 1:
            where = (f"It is on the {support_name(room, o)}." if o.support is not None else
                     f"It stands on the floor near the {_closest(room, o).category}." if _closest(room, o) else
                     "It stands on the floor.")
            locate.append((f"Is there {a(o.category)} in the room?",
                           f"Yes, there is {a(f'{o.colour} {o.category}')}.", "Where is it?", where))
    for cat, n in sorted(counts.items()):
        if n >= 2:
            cols = Counter(o.colour for o in room.of_category(cat))
            desc = join_words([f"{number_word(m)} {'is' if m == 1 else 'are'} {c}" for c, m in sorted(cols.items())])
            if len(cols) == 1:
                desc = f"all of them are {next(iter(cols))}"
            colours.append((f"How many {PLURALS[cat]} are there?", f"There are {number_word(n)} {PLURALS[cat]}.",
                            "What colours are they?", capitalise(desc) + "."))
    for sup in room.objects:
        items = room.children(sup.id)
        ref = refer(room, sup)
        uniq = [c for c in items if sum(x.category == c.category for x in items) == 1]
        if ref and uniq:
            it = uniq[0]
            on_top.append((f"What is on {ref}?", capitalise(join_words([a(c.category) for c in items])) + ".",
                           f"What colour is the {it.category}?", f"It is {it.colour}."))
    absent = [c for c in _SEATS if c not in counts]  # "no sofa here" -> "where can I sit then?"
    seats = sorted({o.category for o in room.objects if o.category in _SEATS})
    if absent and seats:
        missing = pick(rng, absent)
        missing_seat.append((f"Is there {a(missing)} here?", f"No, there is no {missing} in this room.",
                             "Where can I sit then?", f"You can sit on {join_words([f'the {s}' for s in seats], 'or')}."))
    return [locate, colours, on_top, missing_seat]


def dialogue_records(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    """Up to `k` dialogues, taking the dialogue shapes in turn so that no shape dominates."""
    shapes = [[kind[int(i)] for i in rng.permutation(len(kind))] for kind in _dialogues(room, rng)]
    chosen = [d for rank in range(max(map(len, shapes))) for kind in shapes if rank < len(kind)
              for d in [kind[rank]]][:k]
    return [record(room.scene_id, "dialogue", q2, a2, history=[[q1, a1]]) for q1, a1, q2, a2 in chosen]
