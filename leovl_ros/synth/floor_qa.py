"""Floor-level QA records: what a user asks about a whole building.

qtypes: ``floor_colour`` (the colour of an object whose category occurs once on the whole
floor, worded like a room's colour question, so the two are comparable), ``which_room``
("Which room is the X in?", the room type), ``room_existence`` ("Is there an X in the
kitchen?", half yes / half no, every "no" names a category that is elsewhere on the floor, so
only the room decides) and ``floor_count`` (counts over the floor, answers drawn uniformly
over the values the floor offers, as the room counts in qa.py).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .catalog import CATEGORY_NAMES, PLURALS
from .floors import Floor
from .qa import COLOUR_Q, draw_by_count
from .text import a, colour_answers, count_answers, pick, record

WHICH_ROOM_Q = ("Which room is the {x} in?", "In which room is the {x}?", "Where is the {x}: in which room?")
ROOM_EXIST_Q = ("Is there {x} in the {r}?", "Does the {r} have {x}?", "Can I find {x} in the {r}?")
FLOOR_COUNT_Q = ("How many {p} are there on this floor?", "How many {p} are on the whole floor?",
                 "Count the {p} on this floor.")
FLOOR_QTYPES = ("floor_colour", "which_room", "room_existence", "floor_count")


def _qa(floor: Floor, qtype: str, question: str, answer: str, answers: list[str] | None = None) -> dict:
    return record(floor.scene_id, "qa", question, answer, answers=answers or [answer], qtype=qtype)


def _unique(floor: Floor) -> list[int]:
    """Ids of objects whose category occurs once on the floor."""
    count = Counter(o.category for o in floor.objects)
    return [o.id for o in floor.objects if count[o.category] == 1]


def floor_colour_qa(floor: Floor, rng: np.random.Generator, k: int) -> list[dict]:
    ids = [floor.objects[i] for i in rng.permutation(_unique(floor))[:k]]
    return [_qa(floor, "floor_colour", pick(rng, COLOUR_Q).format(x=f"the {o.category}"), o.colour,
                colour_answers(o.colour)) for o in ids]


def which_room_qa(floor: Floor, rng: np.random.Generator, k: int) -> list[dict]:
    ids = [floor.objects[i] for i in rng.permutation(_unique(floor))[:k]]
    return [_qa(floor, "which_room", pick(rng, WHICH_ROOM_Q).format(x=o.category), floor.room_of[o.id])
            for o in ids]


def room_existence_qa(floor: Floor, rng: np.random.Generator, k: int) -> list[dict]:
    on_floor = sorted({o.category for o in floor.objects})
    yes, no = [], []
    for r in floor.rooms:
        here = {floor.objects[i].category for i in r.object_ids}
        yes += [(c, r.type) for c in sorted(here)]
        no += [(c, r.type) for c in on_floor if c not in here]
    n_yes = (k + 1) // 2
    asked = ([(c, t, "yes") for c, t in (yes[i] for i in rng.permutation(len(yes))[:n_yes])]
             + [(c, t, "no") for c, t in (no[i] for i in rng.permutation(len(no))[:k - n_yes])])
    return [_qa(floor, "room_existence", pick(rng, ROOM_EXIST_Q).format(x=a(c), r=t), ans)
            for c, t, ans in (asked[i] for i in rng.permutation(len(asked)))]


def floor_count_qa(floor: Floor, rng: np.random.Generator, k: int) -> list[dict]:
    counts = Counter(o.category for o in floor.objects)
    by_answer: dict[int, list[str]] = {0: [c for c in CATEGORY_NAMES if c not in counts]}
    for c, n in sorted(counts.items()):
        by_answer.setdefault(n, []).append(c)
    return [_qa(floor, "floor_count", pick(rng, FLOOR_COUNT_Q).format(p=PLURALS[c]), str(n), count_answers(n))
            for c, n in draw_by_count(by_answer, rng, k)]  # each wording drawn right after its pair


FLOOR_QA = {"floor_colour": floor_colour_qa, "which_room": which_room_qa, "room_existence": room_existence_qa,
            "floor_count": floor_count_qa}


def floor_qa_records(floor: Floor, seed: int = 0, per_type: int = 6) -> list[dict]:
    """Up to ``per_type`` records of each floor question type; the same arguments give the same list."""
    return [r for i, fn in enumerate(FLOOR_QA.values())
            for r in fn(floor, np.random.default_rng([seed, floor.seed, 100 + i]), per_type)]
