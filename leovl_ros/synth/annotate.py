"""Annotations of all five tasks for one room, as normalised JSONL-ready records.

Record keys (design.md "Training data"): scene_id, task, instruction, response, source, and
where they apply: answers (QA, for EM), qtype (QA), situation (left/right QA),
anchor ({"center": [x, y, z] metres map frame, "radius": metres}, object captions),
history ([[user, assistant], ...] earlier dialogue turns).
Each task draws from its own random stream, so changing one task's count leaves the
others' records unchanged.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from .language import dialogue_records, object_captions, plan_records, scene_captions
from .qa import qa_records
from .rooms import Room

TASKS = ("qa", "object_caption", "scene_caption", "plan", "dialogue")


@dataclass(frozen=True)
class AnnotateConfig:
    qa_per_type: int = 6  # per question type (colour, count, existence, above_below, left_right, nearest)
    object_captions: int = 6
    scene_captions: int = 2
    plans: int = 4
    dialogues: int = 4


def annotate_room(room: Room, seed: int = 0, config: AnnotateConfig | None = None) -> list[dict]:
    """All records of `room`; the same (room, seed, config) always give the same list."""
    cfg = config or AnnotateConfig()

    def rng(task: str) -> np.random.Generator:
        return np.random.default_rng([seed, room.seed, TASKS.index(task)])

    return (qa_records(room, rng("qa"), cfg.qa_per_type)
            + object_captions(room, rng("object_caption"), cfg.object_captions)
            + scene_captions(room, rng("scene_caption"), cfg.scene_captions)
            + plan_records(room, rng("plan"), cfg.plans)
            + dialogue_records(room, rng("dialogue"), cfg.dialogues))


def write_jsonl(records: Iterable[dict], path: str | os.PathLike) -> int:
    """Atomically write one JSON object per line; returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
                n += 1
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return n
