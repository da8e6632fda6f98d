"""Evaluation (paper §4): answers by generation, EM / EM-R per question type, BLEU-4,
METEOR, ROUGE-L and CIDEr per task, as a JSON report and a readable table.

EM / EM-R are reported for records that carry accepted ``answers`` (QA); the n-gram
metrics for every task (LEO reports CIDEr / BLEU-4 for ScanQA too).
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from tqdm.auto import tqdm

from leovl_ros.model.config import GenerationConfig

from .metrics import NgramScorer, exact_match_scores
from .records import Record


def _batches(seq: Sequence, n: int):
    for i in range(0, len(seq), n):
        yield seq[i:i + n]


@torch.no_grad()
def generate_predictions(model, scenes, records: Sequence[Record], generation: GenerationConfig | None = None,
                         batch_size: int = 4, progress: bool = False) -> list[str]:
    """The model's answer to each record (its scene from ``scenes``, a SceneStore)."""
    out: list[str] = []
    for batch in tqdm(list(_batches(records, batch_size)), desc="generate", disable=not progress, unit="batch"):
        out += model.generate([scenes.get(r.scene_id) for r in batch], [r.query() for r in batch], generation)
    return out


@torch.no_grad()
def answer_nll(model, scenes, records: Sequence[Record], batch_size: int = 4) -> float:
    """Mean negative log-likelihood per response token (the SFT loss) over ``records``."""
    total, tokens = 0.0, 0
    for batch in _batches(records, batch_size):
        lp, n = model.sequence_logprobs([scenes.get(r.scene_id) for r in batch], [r.query() for r in batch],
                                        [r.response for r in batch])
        total -= float(lp.sum())
        tokens += int(n.sum())
    return total / max(tokens, 1)


def score_predictions(records: Sequence[Record], predictions: Sequence[str], ngram: bool = True,
                      tokenizer: Literal["clean", "ptb"] = "clean") -> dict[str, Any]:
    """``{"count": N, "tasks": {task: {"count", "EM", "EM-R", "qtypes": {...}, "BLEU-4", ...}}}``."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    by_task: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_task[r.task].append(i)
    tasks: dict[str, Any] = {}
    scorer = NgramScorer(tokenizer) if ngram else None
    for task, idx in sorted(by_task.items()):
        entry: dict[str, Any] = {"count": len(idx)}
        with_answers = [i for i in idx if records[i].answers]
        if with_answers:
            em = exact_match_scores([predictions[i] for i in with_answers],
                                    [records[i].references for i in with_answers],
                                    [records[i].qtype for i in with_answers])
            entry.update({k: em["overall"][k] for k in ("EM", "EM-R")})
            qtypes = {k: v for k, v in em.items() if k != "overall"}
            if qtypes:
                entry["qtypes"] = qtypes
        if scorer is not None:
            entry.update(scorer.score({str(i): predictions[i] for i in idx},
                                      {str(i): records[i].references for i in idx}))
        tasks[task] = entry
    return {"count": len(records), "tasks": tasks}


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width table: one row per task (and per question type), metrics in columns."""
    cols = ["count", "EM", "EM-R", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
    rows = []
    for task, entry in report["tasks"].items():
        rows.append((task, entry))
        rows += [(f"  {task}/{q}", v) for q, v in entry.get("qtypes", {}).items()]
    width = max([len(name) for name, _ in rows] + [4])
    lines = [f"{'task':<{width}}  " + "  ".join(f"{c:>7}" for c in cols)]
    for name, entry in rows:
        cells = [f"{entry[c]:>7}" if c == "count" else (f"{entry[c]:>7.2f}" if c in entry else f"{'-':>7}")
                 for c in cols]
        lines.append(f"{name:<{width}}  " + "  ".join(cells))
    return "\n".join(lines)


def read_predictions(path: str | os.PathLike, records: Sequence[Record]) -> list[str]:
    """Predictions JSONL (``{"id", "prediction"}`` per line) aligned with ``records``:
    by id when every record has one, else by line order."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if any(not isinstance(p, dict) or not isinstance(p.get("prediction"), str) for p in lines):
        raise ValueError(f"{path}: every line must be an object with a string 'prediction'")
    if all(r.id is not None for r in records) and all("id" in p for p in lines):
        by_id = {str(p["id"]): p["prediction"] for p in lines}
        missing = [r.id for r in records if r.id not in by_id]
        if missing:
            raise ValueError(f"{path}: no prediction for {len(missing)} record ids, e.g. {missing[0]!r}")
        return [by_id[r.id] for r in records]
    if len(lines) != len(records):
        raise ValueError(f"{path}: {len(lines)} predictions for {len(records)} records (no ids to join on)")
    return [p["prediction"] for p in lines]


def predictions_jsonl(records: Sequence[Record], predictions: Sequence[str]) -> str:
    return "".join(json.dumps({"id": r.id if r.id is not None else str(i), "scene_id": r.scene_id, "task": r.task,
                               "instruction": r.instruction, "prediction": p, "references": r.references}) + "\n"
                   for i, (r, p) in enumerate(zip(records, predictions)))
