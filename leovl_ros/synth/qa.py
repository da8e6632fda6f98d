"""Question answering records from a room's scene graph.

Question types (`qtype`): colour, count, existence, above_below, left_right, nearest.
Answers are one canonical word or number ("red", "3", "yes", "above", "left", "chair"), so
exact match is a fair metric; `answers` adds accepted variants ("three", "grey").
Every object a question names is referred to by a phrase that is unique in its room
(relations.refer), and left/right and nearest are only asked when they win by a margin.

Answers are balanced where the wording alone would give them away, so that a model that
ignores the scene scores low (what bench/learning.py measures): count questions draw their
answer value first, uniformly over the values the room offers (0 from an absent category,
1, 2, ...), then a question with that answer; above/below mixes "is X above or below Y"
(decided by the categories: a mug is never under a table) with "what is X standing on" on
objects that stand on different things in different rooms and "what is on top of Y".
"""

from __future__ import annotations

from collections import Counter
from typing import Iterator

import numpy as np

from .catalog import CATEGORY_NAMES, PLURALS, categories_by_placement
from .relations import is_above, nearest, refer, side_of, support_name
from .rooms import Room
from .text import a, colour_answers, count_answers, pick, record

COLOUR_Q = ("What colour is {x}?", "What is the colour of {x}?", "Which colour does {x} have?",
            "Tell me the colour of {x}.")
COUNT_Q = ("How many {p} are there in the room?", "How many {p} are in this room?",
           "Count the {p} in the room.", "What is the number of {p} here?")
EXIST_Q = ("Is there {x} in the room?", "Is there {x} here?", "Can you see {x} in this room?",
           "Does this room have {x}?")
ABOVE_Q = ("Is {x} above or below {y}?", "Is {x} located above or below {y}?",
           "Would I find {x} above or below {y}?")
ON_TOP_Q = ("What is on top of {y}?", "What is standing on {y}?", "What can I find on top of {y}?")
SUPPORT_Q = ("What is {x} standing on?", "What is {x} placed on?", "What is directly under {x}?",
             "What does {x} rest on?")
SITUATION = (("You are standing next to {a} and facing {b}.", "Is {c} on your left or on your right?"),
             ("You stand beside {a}, looking towards {b}.", "Is {c} to your left or to your right?"),
             ("I am standing next to {a} and I am facing {b}.", "Is {c} on my left or on my right?"),
             ("I am by {a}, looking at {b}.", "On which side of me is {c}, left or right?"))
NEAREST_Q = ("Which piece of furniture is closest to {x}?", "What furniture stands nearest to {x}?",
             "Name the piece of furniture that is closest to {x}.")


def _qa(room: Room, qtype: str, question: str, answer: str, answers: list[str] | None = None,
        situation: str | None = None) -> dict:
    return record(room.scene_id, "qa", question, answer, answers=answers or [answer], qtype=qtype,
                  situation=situation)


def _sample(rng: np.random.Generator, items: list, k: int) -> list:
    return [items[i] for i in rng.permutation(len(items))[:k]]


def draw_by_count(by_answer: dict[int, list[str]], rng: np.random.Generator, k: int) -> Iterator[tuple[str, int]]:
    """Up to ``k`` (phrase, count) pairs without repeats: a count value first, each equally
    likely (so answers are balanced, not mostly 1), then one of its phrases."""
    for _ in range(k):
        values = sorted(n for n, phrases in by_answer.items() if phrases)
        if not values:
            return
        n = values[int(rng.integers(len(values)))]
        yield by_answer[n].pop(int(rng.integers(len(by_answer[n])))), n


def colour_qa(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    refs = [(o, refer(room, o, allow_colour=False)) for o in room.objects]
    refs = [(o, r) for o, r in refs if r is not None]
    return [_qa(room, "colour", pick(rng, COLOUR_Q).format(x=r), o.colour, colour_answers(o.colour))
            for o, r in _sample(rng, refs, k)]


def count_qa(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    counts = Counter(o.category for o in room.objects)
    by_answer: dict[int, list[str]] = {0: [PLURALS[c] for c in CATEGORY_NAMES if c not in counts]}
    for c, n in counts.items():
        by_answer.setdefault(n, []).append(PLURALS[c])
    for (c, col), n in Counter((o.category, o.colour) for o in room.objects).items():
        if counts[c] >= 2:
            by_answer.setdefault(n, []).append(f"{col} {PLURALS[c]}")
    out = list(draw_by_count(by_answer, rng, k))  # all drawn before the question wordings
    return [_qa(room, "count", pick(rng, COUNT_Q).format(p=p), str(n), count_answers(n)) for p, n in out]


def existence_qa(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    """Half yes, half no; half of each names a colour too. A "no" with a colour is a hard
    negative: the category is present, just not in that colour."""
    present = sorted({o.category for o in room.objects})
    absent = [c for c in CATEGORY_NAMES if c not in present]
    pairs = sorted({(o.category, o.colour) for o in room.objects})
    colours = sorted({o.colour for o in room.objects})
    wrong = [(c, col) for c in present for col in colours if (c, col) not in pairs]
    n_yes = (k + 1) // 2
    n_no = k - n_yes
    asked = ([(c, "yes") for c in _sample(rng, present, n_yes - n_yes // 2)]
             + [(f"{col} {c}", "yes") for c, col in _sample(rng, pairs, n_yes // 2)]
             + [(c, "no") for c in _sample(rng, absent, n_no - n_no // 2)]
             + [(f"{col} {c}", "no") for c, col in _sample(rng, wrong, n_no // 2)])
    return [_qa(room, "existence", pick(rng, EXIST_Q).format(x=a(x)), ans)
            for x, ans in _sample(rng, asked, len(asked))]


def above_below_qa(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    """A third each (as the room allows): "is X above or below Y", "what is X standing on"
    (items, and the boxes, plants and lamps that stand on the floor in other rooms) and
    "what is on top of Y" (supporters whose items are all of one category)."""
    pairs = []
    for o in room.objects:
        for b in room.objects:
            if o.id != b.id and is_above(o, b):
                ro, rb = refer(room, o), refer(room, b)
                if ro and rb:
                    pairs.append((ro, rb))
    out = []
    for ro, rb in _sample(rng, pairs, k // 3):
        if rng.random() < 0.5:
            out.append(_qa(room, "above_below", pick(rng, ABOVE_Q).format(x=ro, y=rb), "above"))
        else:
            out.append(_qa(room, "above_below", pick(rng, ABOVE_Q).format(x=rb, y=ro), "below"))
    tops = []
    for y in room.objects:
        on = {o.category for o in room.objects if o.support == y.id}
        if len(on) == 1 and refer(room, y):
            tops.append((refer(room, y), on.pop()))
    for ry, cat in _sample(rng, tops, (k - len(out)) // 2):
        out.append(_qa(room, "above_below", pick(rng, ON_TOP_Q).format(y=ry), cat))
    movable = {c.name for c in categories_by_placement("surface")}
    standing = [o for o in room.objects if (o.support is not None or o.category in movable) and refer(room, o)]
    for o in _sample(rng, standing, k - len(out)):
        out.append(_qa(room, "above_below", pick(rng, SUPPORT_Q).format(x=refer(room, o)), support_name(room, o)))
    return out


def left_right_qa(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    floor = [(o, refer(room, o)) for o in room.objects if o.support is None]
    floor = [(o, r) for o, r in floor if r]
    out: list[dict] = []
    for _ in range(k * 20):
        if len(out) >= k or len(floor) < 3:
            break
        (va, ra), (fb, rb), (tc, rc) = _sample(rng, floor, 3)
        if np.linalg.norm(fb.center[:2] - va.center[:2]) < 1.5:
            continue
        side = side_of(va.center[:2], fb.center[:2], tc.center[:2], margin=0.4)
        if side is None:
            continue
        situation, question = SITUATION[int(rng.integers(len(SITUATION)))]
        out.append(_qa(room, "left_right", question.format(c=rc), side,
                       situation=situation.format(a=ra, b=rb)))
    return out


def nearest_qa(room: Room, rng: np.random.Generator, k: int) -> list[dict]:
    floor = [o for o in room.objects if o.support is None]
    out = []
    for o in _sample(rng, floor, len(floor)):
        ref, best = refer(room, o), nearest(room, o, floor)
        if ref and best is not None:
            out.append(_qa(room, "nearest", pick(rng, NEAREST_Q).format(x=ref), best.category))
        if len(out) >= k:
            break
    return out


QA_TYPES = {"colour": colour_qa, "count": count_qa, "existence": existence_qa,
            "above_below": above_below_qa, "left_right": left_right_qa, "nearest": nearest_qa}


def qa_records(room: Room, rng: np.random.Generator, per_type: int) -> list[dict]:
    """Up to `per_type` QA records of each question type (fewer when the room lacks cases)."""
    return [r for fn in QA_TYPES.values() for r in fn(room, rng, per_type)]
