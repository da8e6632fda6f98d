"""QA sessions: several questions about one scene as one chat-format record.

With ``data.history_turns`` every assistant turn of a session is a target, so one pass over
a scene's tokens supervises ``size`` answers instead of one. The scene prefix dominates the
cost of a short-answer sample (hundreds of scene tokens vs ~20 question tokens), so this is
the cheapest way to give a small model enough supervision per CPU second.

Decision (paper silent): sessions group one scene's QA records in a seeded random order (so no question
type always comes first); a turn's situation is put in front of its question, as the prompt
does for the final turn; non-QA records and records that already have a history pass through.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np

from .records import Record


def qa_sessions(records: Sequence[Record], size: int, seed: int = 0) -> list[Record]:
    """Records with QA regrouped into sessions of up to ``size`` turns (history + final)."""
    if size < 1:
        raise ValueError(f"session size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    by_scene: dict[str, list[Record]] = defaultdict(list)
    out: list[Record] = []
    for r in records:
        if r.task == "qa" and not r.history:
            by_scene[r.scene_id].append(r)
        else:
            out.append(r)
    for scene_id in sorted(by_scene):
        group = [by_scene[scene_id][i] for i in rng.permutation(len(by_scene[scene_id]))]
        for start in range(0, len(group), size):
            *earlier, last = group[start:start + size]
            history = [[f"{r.situation} {r.instruction}" if r.situation else r.instruction, r.response]
                       for r in earlier]
            out.append(Record.from_dict({**last.to_dict(), **({"history": history} if history else {})}))
    return out
