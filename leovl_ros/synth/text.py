"""Small text helpers shared by the annotators: articles, template choice, record layout."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .catalog import COLOUR_SYNONYMS, number_word

SOURCE = "synth"


def a(noun_phrase: str) -> str:
    """Indefinite article + phrase ("an orange mug", "a chair")."""
    return ("an " if noun_phrase[:1] in "aeiou" else "a ") + noun_phrase


def pick(rng: np.random.Generator, templates: Sequence[str]) -> str:
    return templates[int(rng.integers(len(templates)))]


def join_words(items: Sequence[str], conj: str = "and") -> str:
    """"a", "a and b", "a, b and c"."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {conj} " + items[-1]


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def colour_answers(colour: str) -> list[str]:
    return [colour, *COLOUR_SYNONYMS.get(colour, ())]


def count_answers(n: int) -> list[str]:
    return [str(n), number_word(n)]


def record(scene_id: str, task: str, instruction: str, response: str, **optional) -> dict:
    """A normalised training record (design.md "Training data"); None-valued keys dropped."""
    rec = {"scene_id": scene_id, "task": task, "instruction": instruction, "response": response}
    rec.update({k: v for k, v in optional.items() if v is not None})
    rec["source"] = SOURCE
    return rec
