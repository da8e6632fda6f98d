"""Instruction tuning (paper §3.2, App. B): prefix-LM loss on response tokens only, the
five tasks mixed in one shuffled stream. Prompt and scene tokens carry no loss.

Decision (paper silent): two normalisations (``optim.loss_norm``):
- ``token`` (default): - sum over the micro-batch's response tokens of log p(token | scene,
  prompt, earlier response tokens) / number of those tokens. It is what Qwen2.5-VL's own
  causal-LM loss (and so the usual Qwen2.5-VL fine-tuning code LEO-VL starts from)
  computes: every response token weighs the same, so the long responses of captions,
  plans and dialogue - which the paper credits for much of its gain (§4.3) - count by
  their length. It is also what the shipped leovl-tiny was trained with.
- ``sample``: each sample's per-token mean NLL, averaged over the samples, as LEO computes
  its loss (embodied-generalist: summed token loss / the sample's token count, then the
  batch mean): a one-word QA answer weighs as much as a 100-word caption.
"""
from __future__ import annotations

import math
import zlib
from typing import Callable, Sequence

import numpy as np
import torch

from leovl_ros.model.config import resolve_generation

from .config import TrainConfig
from .evaluate import answer_nll, generate_predictions
from .metrics import exact_match_scores
from .modeling import load_model
from .records import ConversionReport, Record, read_records
from .scenes import SceneStore
from .trainer import TrainResult, make_accelerator, prefetch_scenes, train_loop


def task_mix(records: Sequence[Record], task_repeat: dict[str, float], seed: int) -> list[Record]:
    """Oversample tasks by ``task_repeat[task]`` (default 1): whole copies plus a seeded
    random subset for the fraction. Order does not matter: the trainer shuffles."""
    rng = np.random.default_rng(seed)
    out: list[Record] = []
    for task in sorted({r.task for r in records}):
        group = [r for r in records if r.task == task]
        factor = float(task_repeat.get(task, 1.0))
        if factor < 0:
            raise ValueError(f"data.task_repeat[{task}] must be >= 0, got {factor}")
        whole, frac = int(math.floor(factor)), factor - math.floor(factor)
        out += group * whole
        if frac > 0:
            out += [group[i] for i in sorted(rng.choice(len(group), int(round(frac * len(group))), replace=False))]
    return out


def sft_loss(logp: torch.Tensor, tokens: torch.Tensor, norm: str = "token") -> torch.Tensor:
    """SFT loss from (B,) summed response log-probs and (B,) response token counts, per
    ``norm`` (see the module docstring)."""
    if norm == "token":
        return -logp.sum() / tokens.sum()
    if norm == "sample":
        return -(logp / tokens).mean()
    raise ValueError(f"loss_norm must be 'token' or 'sample', got {norm!r}")


class SFTStep:
    """One micro-batch: response-token NLL (see module docstring); with ``history_turns``
    the earlier assistant turns of chat-format sessions are targets too. The trainer calls
    :meth:`set_epoch` at each epoch's start (answers are drawn per epoch)."""

    def __init__(self, scenes: SceneStore, history_turns: bool = False, loss_norm: str = "token",
                 seed: int = 0) -> None:
        self.scenes = scenes
        self.history_turns = history_turns
        self.loss_norm = loss_norm
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, policy: Callable, batch: list[Record]) -> tuple[torch.Tensor, dict[str, float]]:
        logp, tokens = policy([self.scenes.get(r.scene_id) for r in batch], [_training_query(r) for r in batch],
                              [training_response(r, self.seed, self.epoch) for r in batch],
                              self.history_turns)  # (B,), (B,)
        return sft_loss(logp, tokens, self.loss_norm), {"tokens": float(tokens.sum())}


def training_response(record: Record, seed: int, epoch: int) -> str:
    """The answer a record trains on in ``epoch``: one of its accepted (non-empty) answers drawn
    at random per visit, as LEO samples ScanQA's answers (not always the first), else its response.

    Decision (paper silent): the draw is seeded by (seed, epoch, the record's text), not by a
    process's generator, so 1 and n processes and a resumed run train on the same answers."""
    answers = [a for a in record.answers or [] if a]
    if len(answers) < 2:
        return record.response
    key = zlib.crc32("\x1f".join([record.scene_id, record.id or "", record.instruction]).encode())
    return answers[int(np.random.default_rng([seed, epoch, key]).integers(len(answers)))]


def _training_query(record: Record):
    """A situated record with alternative descriptions trains on one drawn at random (LEO's
    SQA3D: ``random.choice([situation] + alternative_situation)``); evaluation uses the first.
    The draw uses torch's generator, whose state checkpoints keep, so a resumed run draws the same."""
    n = 1 + len(record.alternative_situations or [])
    return record.query(int(torch.randint(n, ())) if n > 1 else 0)


def make_eval_fn(model, scenes: SceneStore, records: Sequence[Record], cfg: TrainConfig) -> Callable[[], dict]:
    """Eval NLL per token on ``records`` and, with ``eval.generate`` > 0, EM / EM-R of that many
    generated answers among the records that carry accepted answers."""
    generation = resolve_generation(model.config.generation, cfg.eval.generation)
    qa = [r for r in records if r.answers][: cfg.eval.generate]

    def run() -> dict[str, float]:
        out = {"nll": answer_nll(model, scenes, records, cfg.optim.batch_size)}
        if qa:
            preds = generate_predictions(model, scenes, qa, generation, cfg.optim.batch_size)
            em = exact_match_scores(preds, [r.references for r in qa])["overall"]
            out.update({"EM": em["EM"], "EM-LEO": em["EM-LEO"], "EM-R": em["EM-R"],
                        "in_domain": (em["EM"] + em["EM-R"]) / 2})
        return out
    return run


def load_split(paths: Sequence[str], what: str, limit: int | None = None) -> list[Record]:
    report = ConversionReport()
    records = read_records(paths, report) if paths else []
    if report.skipped:
        print(f"{what}: {report.summary()}")
    return records[:limit] if limit is not None else records


def run_sft(cfg: TrainConfig) -> TrainResult:
    accelerator = make_accelerator(cfg)
    with accelerator.main_process_first():
        model = load_model(cfg.model, cfg.trainable, cfg.seed, accelerator.device)
    train = task_mix(load_split(cfg.data.train, "data.train"), cfg.data.task_repeat, cfg.seed)
    evals = load_split(cfg.data.eval, "data.eval", cfg.data.max_eval_records)
    scenes = SceneStore(model, cfg.scenes)
    prefetch_scenes(accelerator, scenes, {r.scene_id for r in train + evals}, cfg.progress)
    eval_fn = make_eval_fn(model, scenes, evals, cfg) if evals else None
    step = SFTStep(scenes, cfg.data.history_turns, cfg.optim.loss_norm, cfg.seed)
    return train_loop(cfg, accelerator, model, train, step, eval_fn, kind="sft")
