"""Evaluation (paper §4): answers by generation, EM / EM-LEO / EM-R per question type,
BLEU-4, METEOR, ROUGE-L and CIDEr per task, optional GPT-Score, per-benchmark scores and
their overall average, as a JSON report and a readable table.

EM / EM-R are reported for records that carry accepted ``answers`` (QA); the n-gram
metrics for every task (LEO reports CIDEr / BLEU-4 for ScanQA too). ``EM`` counts a
prediction among the references, ``EM-LEO`` is LEO's order-dependent rule (metrics.py).

Benchmarks are the records' ``source``s; MSQA is split into its three domains as the paper
reports it (``msqa_scannet``, ``msqa_3rscan``, ``msqa_arkitscenes``; records converted
before the split are assigned by their scan id's form). As LEO-VL (Tables 3 and 5: "metrics
averaged per benchmark", then "averaged across all benchmarks"), a benchmark's score is the
mean of its Table-2 metrics: ScanQA CIDEr and BLEU-4, SQA3D EM-LEO and EM-R (LEO's rule,
as the published numbers: its ``in_domain_leo``), MSQA GPT-Score (:data:`BENCHMARK_METRICS`,
the paper's benchmarks); other sources (ours, LEO's 3RScan QA,
...) use EM and EM-R when their records carry accepted answers, else CIDEr and BLEU-4.
``in_domain`` = mean of EM and EM-R (§4.4, SQA3D's in-domain score; ``in_domain_leo`` with
EM-LEO: the number comparable with LEO's published ones). ``overall`` averages the paper's
benchmarks whose metrics were all computed; those that were not are listed under
``overall_missing`` (MSQA without a GPT-Score endpoint, ScanQA with ``--no-ngram``); every
other source is scored apart under ``other_sources``, never in ``overall``.
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

from .adapters import msqa_domain
from .gpt_score import GPTScorer, summarise
from .metrics import NgramScorer, exact_match_scores
from .records import Record

BENCHMARK_METRICS: dict[str, tuple[str, ...]] = {
    "scanqa": ("CIDEr", "BLEU-4"), "sqa3d": ("EM-LEO", "EM-R"), "msqa_scannet": ("GPT-Score",),
    "msqa_3rscan": ("GPT-Score",), "msqa_arkitscenes": ("GPT-Score",)}


def benchmark_of(record: Record) -> str:
    """The benchmark a record counts for: its source, MSQA by domain."""
    source = record.source.lower()
    domain = msqa_domain(record.scene_id) if source == "msqa" else None
    return f"msqa_{domain}" if domain else source


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


def _exact_match(records: Sequence[Record], predictions: Sequence[str], idx: list[int]) -> dict[str, Any]:
    em = exact_match_scores([predictions[i] for i in idx], [records[i].references for i in idx],
                            [records[i].qtype for i in idx])
    entry: dict[str, Any] = {k: em["overall"][k] for k in ("EM", "EM-LEO", "EM-R")}
    entry["in_domain"] = (entry["EM"] + entry["EM-R"]) / 2
    entry["in_domain_leo"] = (entry["EM-LEO"] + entry["EM-R"]) / 2
    qtypes = {k: v for k, v in em.items() if k != "overall"}
    if qtypes:
        entry["qtypes"] = qtypes
    return entry


def _metrics(records: Sequence[Record], predictions: Sequence[str], idx: list[int], scorer: NgramScorer | None,
             judged: dict[int, float | None]) -> dict[str, Any]:
    entry: dict[str, Any] = {"count": len(idx)}
    with_answers = [i for i in idx if records[i].answers]
    if with_answers:
        entry.update(_exact_match(records, predictions, with_answers))
    if scorer is not None:
        entry.update(scorer.score({str(i): predictions[i] for i in idx}, {str(i): records[i].references for i in idx}))
    if any(i in judged for i in idx):
        entry.update(summarise([judged[i] for i in idx if i in judged]))
    return entry


def benchmark_score(source: str, entry: dict[str, Any]) -> float | None:
    """Mean of the benchmark's headline metrics (see the module docstring); None if one is missing."""
    names = BENCHMARK_METRICS.get(source.lower()) or (("EM", "EM-R") if "EM" in entry else ("CIDEr", "BLEU-4"))
    if not all(n in entry for n in names):
        return None
    return sum(entry[n] for n in names) / len(names)


def score_predictions(records: Sequence[Record], predictions: Sequence[str], ngram: bool = True,
                      tokenizer: Literal["clean", "ptb"] = "clean", judge: GPTScorer | None = None,
                      judged_tasks: Sequence[str] = ("qa",)) -> dict[str, Any]:
    """``{"count", "tasks": {task: {...}}, "benchmarks": {source: {..., "score"}}, "overall",
    "overall_missing", "other_sources": {source: score}}``; each entry holds count, EM,
    EM-LEO, EM-R, in_domain(_leo), qtypes, the n-gram metrics and, with a ``judge``,
    GPT-Score (records of ``judged_tasks``)."""
    if len(records) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(records)} records")
    by_task: dict[str, list[int]] = defaultdict(list)
    by_source: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_task[r.task].append(i)
        by_source[benchmark_of(r)].append(i)
    scorer = NgramScorer(tokenizer) if ngram else None
    judged: dict[int, float | None] = {}
    if judge is not None:  # each answer is judged once, then averaged per task and per benchmark
        ids = [i for i, r in enumerate(records) if r.task in judged_tasks]
        judged = dict(zip(ids, judge.score_each([records[i].instruction for i in ids], [predictions[i] for i in ids],
                                                [records[i].response for i in ids])))  # its first non-empty answer
    tasks = {task: _metrics(records, predictions, idx, scorer, judged) for task, idx in sorted(by_task.items())}
    benchmarks = {}
    for source, idx in sorted(by_source.items()):
        entry = _metrics(records, predictions, idx, scorer, judged)
        entry["score"] = benchmark_score(source, entry)
        benchmarks[source] = entry
    paper = {s: b for s, b in benchmarks.items() if s in BENCHMARK_METRICS}
    scored = [b["score"] for b in paper.values() if b["score"] is not None]
    return {"count": len(records), "tasks": tasks, "benchmarks": benchmarks,
            "overall": sum(scored) / len(scored) if scored else None,
            "overall_missing": sorted(s for s, b in paper.items() if b["score"] is None),
            "other_sources": {s: b["score"] for s, b in benchmarks.items() if s not in paper}}


def format_table(report: dict[str, Any]) -> str:
    """Fixed-width tables: one row per task (and question type) with its metrics; then one
    row per benchmark with its score, and the overall average."""
    cols = ["count", "EM", "EM-LEO", "EM-R", "in_domain", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr", "GPT-Score"]
    heads = {"in_domain": "in-dom", "GPT-Score": "GPT"}
    rows = []
    for task, entry in report["tasks"].items():
        rows.append((task, entry))
        rows += [(f"  {task}/{q}", v) for q, v in entry.get("qtypes", {}).items()]
    bench = list(report.get("benchmarks", {}).items())
    width = max([len(name) for name, _ in rows + bench] + [9])

    def line(name: str, entry: dict, columns: list[str]) -> str:
        cells = [f"{entry[c]:>7}" if c == "count" else
                 (f"{entry[c]:>7.2f}" if entry.get(c) is not None else f"{'-':>7}") for c in columns]
        return f"{name:<{width}}  " + "  ".join(cells)

    lines = [f"{'task':<{width}}  " + "  ".join(f"{heads.get(c, c)[:7]:>7}" for c in cols)]
    lines += [line(name, entry, cols) for name, entry in rows]
    if bench:
        lines += ["", f"{'benchmark':<{width}}  " + "  ".join(f"{heads.get(c, c)[:7]:>7}" for c in cols + ["score"])]
        lines += [line(name, entry, cols + ["score"]) for name, entry in bench]
        overall = report.get("overall")
        missing = report.get("overall_missing") or []
        lines.append(f"{'overall':<{width}}  " + (f"{overall:.2f}" if overall is not None else "-")
                     + "  (the paper's benchmarks"
                     + (f"; without {', '.join(missing)}: metrics not computed)" if missing else ")"))
        others = report.get("other_sources") or {}
        if others:
            lines.append("not in overall (not the paper's benchmarks): " + ", ".join(
                f"{s} {v:.2f}" if v is not None else f"{s} -" for s, v in others.items()))
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
