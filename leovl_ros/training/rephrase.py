"""Hard negatives for SceneDPO: correct answers rephrased into plausible wrong ones (§4.4).

The paper lets LEO-VL answer the training questions, keeps its wrong answers as negatives
and has GPT-4o "rephrase correct predictions into hard negative samples". Here:

- :class:`RuleRephraser` (built in, no service) for short answers: one minimal edit that
  makes the answer wrong while keeping its form, tried in this order: yes <-> no; a number
  moved by 1 or 2 (digits stay digits, words stay words, never below zero); a direction
  word swapped for its opposite (left/right, front/behind, above/below, ...); a colour, then
  an object name, swapped for another colour / object name that occurs in the same scene's
  annotations (so the negative names something really there: hard, not absurd).
- :class:`EndpointRephraser`: any OpenAI-compatible chat endpoint (``dpo.rephrase.endpoint``,
  prompt ``dpo.rephrase.prompt``) for answers the rules cannot edit (free-form sentences).

A rephrasing is kept only when it is wrong by EM-R against every accepted answer, also with
colour and object synonyms unified (couch / sofa, rug / carpet, trash can / bin, painting /
picture, grey / gray, ...): a synonym or a superset of the right answer is not a negative.
Shades and materials (light, dark, wooden) are not colours; "light" is the object (a lamp).

Decision (paper silent): "short" is at most ``max_rule_words`` words (ScanQA / SQA3D
answers average 2-3); the scene vocabulary is every word of the scene's records
(instructions, responses, accepted answers, situations, history) that is a known colour or
object name; a rule with no in-scene alternative does not fire (the next rule is tried).
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from leovl_ros.synth.catalog import CATEGORY_NAMES, COLOURS

from .chat_endpoint import ChatClient, ChatError
from .metrics import answer_match, clean_answer
from .records import Record

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                 "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
_OPPOSITES = [("yes", "no"), ("left", "right"), ("front", "behind"), ("front", "back"), ("above", "below"),
              ("up", "down"), ("top", "bottom"), ("upper", "lower"), ("higher", "lower"), ("north", "south"),
              ("east", "west"), ("forward", "backward"), ("inside", "outside"), ("near", "far"),
              ("closer", "farther"), ("clockwise", "counterclockwise"), ("leftmost", "rightmost"),
              ("open", "closed")]
# A group holds synonyms, which are never swapped for each other and never count as wrong
# for each other. Shades (light, dark) and materials (wooden) are not colours.
_COLOUR_GROUPS = [{"gray", "grey"}, {"cyan", "turquoise", "teal"}, {"purple", "violet"}, {"gold", "golden"},
                  {"beige", "tan", "cream"}, {"maroon", "burgundy"}] + [
    {w} for w in (*COLOURS, "silver", "navy") if w not in ("gray", "cyan", "purple")]
_OBJECT_GROUPS = [
    {"sofa", "couch", "loveseat"}, {"rug", "carpet"}, {"painting", "picture", "artwork", "poster", "photo"},
    {"trash can", "trash bin", "bin", "garbage can", "garbage bin", "wastebasket", "waste bin", "recycling bin"},
    {"tv", "television"}, {"refrigerator", "fridge"}, {"nightstand", "night stand", "bedside table", "end table"},
    {"cabinet", "cupboard"}, {"closet", "wardrobe"}, {"bookshelf", "bookcase", "book shelf", "shelf", "shelves"},
    {"lamp", "light"}, {"monitor", "screen"}, {"pillow", "cushion"}, {"mug", "cup"},
    {"stairs", "staircase", "steps"}, {"clothes", "clothing"}, {"dresser", "chest of drawers"},
    {"bathtub", "tub"}, {"telephone", "phone"}]
# Indoor object names: the synthetic catalogue, the frequent ScanNet / 3RScan categories and their synonyms.
OBJECT_NAMES = sorted(set(CATEGORY_NAMES) | set().union(*_OBJECT_GROUPS) | {
    "armchair", "backpack", "bag", "basket", "bathtub", "bed", "bench", "bicycle", "bin", "blanket", "blinds",
    "board", "book", "bookshelf", "bottle", "bowl", "box", "bucket", "cabinet", "calendar", "carpet", "ceiling",
    "chair", "clock", "closet", "clothes", "coat rack", "coffee table", "computer", "couch", "counter", "cup",
    "curtain", "cushion", "desk", "door", "dresser", "drawer", "fan", "faucet", "file cabinet", "fireplace", "floor",
    "guitar", "heater", "jacket", "keyboard", "kitchen cabinet", "lamp", "laptop", "light", "microwave", "mirror",
    "monitor", "mug", "nightstand", "office chair", "ottoman", "oven", "painting", "paper", "person", "piano",
    "picture", "pillow", "plant", "printer", "radiator", "recycling bin", "refrigerator", "rug", "shelf", "shoes",
    "shower", "sink", "sofa", "speaker", "stairs", "stand", "stool", "suitcase", "table", "telephone", "toilet",
    "toilet paper", "towel", "trash can", "tv", "vase", "wall", "wardrobe", "washing machine", "whiteboard", "window"})
_COLOUR_WORDS = set().union(*_COLOUR_GROUPS)
_SHADES = {"light", "dark"}  # "light brown": a shade of a colour, not the object "light"
_SHADE_OF_COLOUR = re.compile(r" (?:light|dark) (?=(?:" + "|".join(sorted(_COLOUR_WORDS)) + r") )")
_WORD = re.compile(r"[a-z]+|\d+")

DEFAULT_PROMPT = (
    "You write hard negative answers for training a 3D scene question-answering model. Rewrite the correct "
    "answer below into a plausible but WRONG answer to the same question: keep its style, length and form, "
    "change the fact (an object, colour, number, direction or relation). Reply with the wrong answer only.\n"
    "Question: {question}\nCorrect answer: {answer}")


def _colour_group(word: str) -> frozenset[str] | None:
    for group in _COLOUR_GROUPS:
        if word in group:
            return frozenset(group)
    return None


def _object_group(name: str) -> frozenset[str]:
    return next((frozenset(g) for g in _OBJECT_GROUPS if name in g), frozenset([name]))


# Every synonym -> its group's first member (alphabetically), longest phrases first.
_CANONICAL = {w: min(g) for g in _COLOUR_GROUPS + _OBJECT_GROUPS for w in g}
_SYNONYM = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _CANONICAL), key=len, reverse=True)) + r")\b",
                      re.IGNORECASE)  # clean_answer writes "TV"


def canonical(text: str) -> str:
    """``text`` (cleaned) with every colour / object synonym replaced by one name of its group."""
    return _SYNONYM.sub(lambda m: _CANONICAL[m.group(1).lower()], text)


def _texts(record: Record) -> Iterable[str]:
    yield record.instruction
    yield record.response
    yield from record.answers or []
    if record.situation:
        yield record.situation
    for user, assistant in record.history or []:
        yield user
        yield assistant


@dataclass
class SceneVocabulary:
    """Per scene, the colour words and object names its annotations mention."""

    colours: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    objects: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def from_records(cls, records: Iterable[Record]) -> "SceneVocabulary":
        vocab = cls()
        for r in records:
            for text in _texts(r):
                low = " " + " ".join(_WORD.findall(text.lower())) + " "
                vocab.colours[r.scene_id] |= {w for w in low.split() if w in _COLOUR_WORDS}
                low = _SHADE_OF_COLOUR.sub(" ", low)  # "light brown" names no light
                vocab.objects[r.scene_id] |= {o for o in OBJECT_NAMES if f" {o} " in low}
        return vocab


def is_wrong(candidate: str, references: Sequence[str]) -> bool:
    """True when ``candidate`` matches no reference by EM-R, neither as written nor with
    colour / object synonyms unified (a sofa is not a wrong answer for a couch)."""
    cand, refs = clean_answer(candidate), [clean_answer(r) for r in references]
    return (answer_match(cand, refs) == (0, 0)
            and answer_match(canonical(cand), [canonical(r) for r in refs]) == (0, 0))


class RuleRephraser:
    """Rule-based hard negatives for short answers (see the module docstring)."""

    def __init__(self, vocabulary: SceneVocabulary, seed: int = 0, max_words: int = 4) -> None:
        self.vocab, self.seed, self.max_words = vocabulary, seed, max_words
        self.opposite = {}
        for a, b in _OPPOSITES:
            self.opposite.setdefault(a, []).append(b)
            self.opposite.setdefault(b, []).append(a)

    def _numbers(self, word: str) -> list[str]:
        if word.isdigit():
            n = int(word)
            return [str(n + k) for k in (-2, -1, 1, 2) if n + k >= 0]
        if word in _NUMBER_WORDS:
            n = _NUMBER_WORDS.index(word)
            return [_NUMBER_WORDS[n + k] for k in (-2, -1, 1, 2) if 0 <= n + k < len(_NUMBER_WORDS)]
        return []

    def _edits(self, words: list[str], scene_id: str) -> Iterable[list[tuple[int, int, str]]]:
        """Candidate edits, one rule at a time in the rule order: [(start, end, replacement)]."""
        yield [(i, i + 1, alt) for i, w in enumerate(words) if w in ("yes", "no") for alt in self.opposite[w]]
        yield [(i, i + 1, alt) for i, w in enumerate(words) for alt in self._numbers(w)]
        yield [(i, i + 1, alt) for i, w in enumerate(words) if w not in ("yes", "no")
               for alt in self.opposite.get(w, [])]
        colours = self.vocab.colours.get(scene_id, set())
        yield [(i, i + 1, alt) for i, w in enumerate(words) if _colour_group(w)
               for alt in sorted(colours - _colour_group(w))]
        objects = self.vocab.objects.get(scene_id, set())
        spans = []
        for name in sorted(OBJECT_NAMES, key=lambda o: -len(o.split())):  # "coffee table" before "table"
            n = len(name.split())
            for i in range(len(words) - n + 1):
                if name in _SHADES and i + 1 < len(words) and words[i + 1] in _COLOUR_WORDS:
                    continue
                if " ".join(words[i:i + n]) == name and not any(a < i + n and i < b for a, b, _ in spans):
                    spans += [(i, i + n, alt) for alt in sorted(objects - _object_group(name))]
        yield spans

    def rephrase(self, record: Record, answer: str, index: int = 0) -> str | None:
        """A wrong answer one edit away from ``answer`` (a correct prediction), or None."""
        words = _WORD.findall(answer.lower())
        if not words or len(answer.split()) > self.max_words:
            return None
        rng = np.random.default_rng([self.seed, index])
        for edits in self._edits(words, record.scene_id):
            for k in rng.permutation(len(edits)):
                a, b, alt = edits[k]
                candidate = " ".join(words[:a] + [alt] + words[b:])
                if is_wrong(candidate, record.references):
                    return candidate
        return None


class EndpointRephraser:
    """Hard negatives from an OpenAI-compatible chat model (the paper used GPT-4o)."""

    def __init__(self, client: ChatClient, prompt: str = DEFAULT_PROMPT) -> None:
        if "{answer}" not in prompt:
            raise ValueError("dpo.rephrase.prompt must contain {answer} (and may use {question}, {situation})")
        self.client, self.prompt = client, prompt

    def rephrase(self, record: Record, answer: str, index: int = 0) -> str | None:
        """The endpoint's wrong answer, or None when it gave no usable one. Raises ChatError
        when the endpoint cannot be reached."""
        text = self.prompt.format(question=record.instruction, answer=answer, situation=record.situation or "")
        reply = self.client.chat([{"role": "user", "content": text}], max_tokens=128)
        reply = reply.strip().strip('"').strip()
        return reply if reply and is_wrong(reply, record.references) else None


__all__ = ["ChatError", "DEFAULT_PROMPT", "EndpointRephraser", "OBJECT_NAMES", "RuleRephraser", "SceneVocabulary",
           "canonical", "is_wrong"]
