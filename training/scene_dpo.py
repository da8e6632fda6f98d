"""SceneDPO (paper §3.3): answer preference + scene preference + NLL.

For a tuple (s_w, s_l, q, a_w, a_l) (positive / negative scene, question, chosen / rejected
answer) and r(a | s) = log pi_theta(a | s, q) - log pi_ref(a | s, q):

    L_a   = -log sigmoid(beta_a * (r(a_w | s_w) - r(a_l | s_w)))
    L_s   = -log sigmoid(beta_s * (r(a_w | s_w) - r(a_w | s_l)))
    L_NLL = -log pi_theta(a_w | s_w, q)
    L     = w_a * L_a + w_s * L_s + L_NLL          (expectations = batch means)

log p are sums over the answer tokens (DPO's sequence log-likelihood). Reference-free by
default, as the paper's implementation (log pi_ref = 0); ``reference: initial | base``
uses the starting policy or the base with the adapter disabled, whose log-probs are
computed once before training (the reference never changes, so one no-grad pass replaces a
second model in memory).

Decisions (paper silent):
- L_NLL is per answer token by default (``nll: token``, the SFT loss scale, as in RPO);
  ``nll: sequence`` uses the summed log-likelihood literally.
- The negative scene of each pair is drawn once, seeded, from the other scenes of the
  training pairs (the paper: "a different scene from the training set"); fixed draws
  keep precomputed reference log-probs valid and runs reproducible.
- Negative answers: preference records (from bags' corrections or a file), and optionally
  the current model's own answers that are wrong by EM-R. The paper also rephrases correct
  answers into hard negatives with GPT-4o, which needs a service we do not call.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from leovl_ros.model.config import GenerationConfig

from .config import DPOSection, TrainConfig
from .evaluate import generate_predictions
from .metrics import answer_match, clean_answer
from .modeling import load_model
from .records import Record
from .scenes import SceneStore
from .sft import load_split, make_eval_fn
from .trainer import TrainResult, make_accelerator, train_loop


@dataclass
class SceneDPOOutput:
    loss: torch.Tensor  # () total
    answer_loss: torch.Tensor  # () L_a
    scene_loss: torch.Tensor  # () L_s
    nll_loss: torch.Tensor  # () L_NLL
    answer_margin: torch.Tensor  # (B,) r(a_w|s_w) - r(a_l|s_w)
    scene_margin: torch.Tensor  # (B,) r(a_w|s_w) - r(a_w|s_l)

    @property
    def answer_accuracy(self) -> float:
        """Share of pairs where the chosen answer beats the rejected one (Fig. 8)."""
        return float((self.answer_margin > 0).float().mean())

    @property
    def scene_accuracy(self) -> float:
        """Share of pairs where the right scene beats the negative scene (Fig. 8)."""
        return float((self.scene_margin > 0).float().mean())


def scene_dpo_loss(chosen: torch.Tensor, rejected: torch.Tensor, negative_scene: torch.Tensor,
                   chosen_tokens: torch.Tensor, ref_chosen: torch.Tensor | None = None,
                   ref_rejected: torch.Tensor | None = None, ref_negative_scene: torch.Tensor | None = None,
                   w_a: float = 0.5, w_s: float = 0.5, beta_a: float = 0.2, beta_s: float = 0.03,
                   w_nll: float = 1.0, nll: str = "token") -> SceneDPOOutput:
    """SceneDPO loss from (B,) summed answer log-probs (see module docstring).

    chosen = log pi(a_w | s_w, q), rejected = log pi(a_l | s_w, q),
    negative_scene = log pi(a_w | s_l, q); ``chosen_tokens`` (B,) answer token counts.
    The ``ref_*`` are all given (reference model) or all None (reference-free).
    """
    refs = (ref_chosen, ref_rejected, ref_negative_scene)
    if any(r is None for r in refs) and not all(r is None for r in refs):
        raise ValueError("give all three reference log-probs or none (reference-free)")
    if not chosen.shape == rejected.shape == negative_scene.shape == chosen_tokens.shape or chosen.ndim != 1:
        raise ValueError(f"log-probs must be (B,) tensors of one shape, got {tuple(chosen.shape)}, "
                         f"{tuple(rejected.shape)}, {tuple(negative_scene.shape)}, {tuple(chosen_tokens.shape)}")
    if nll not in ("token", "sequence"):
        raise ValueError(f"nll must be 'token' or 'sequence', got {nll!r}")
    r_w, r_l, r_n = chosen, rejected, negative_scene
    if ref_chosen is not None:
        r_w, r_l, r_n = chosen - ref_chosen, rejected - ref_rejected, negative_scene - ref_negative_scene
    answer_margin = r_w - r_l  # (B,)
    scene_margin = r_w - r_n  # (B,)
    answer_loss = -F.logsigmoid(beta_a * answer_margin).mean()
    scene_loss = -F.logsigmoid(beta_s * scene_margin).mean()
    nll_loss = -(chosen.sum() / chosen_tokens.sum()) if nll == "token" else -chosen.mean()
    loss = w_a * answer_loss + w_s * scene_loss + w_nll * nll_loss
    return SceneDPOOutput(loss, answer_loss, scene_loss, nll_loss, answer_margin.detach(), scene_margin.detach())


@dataclass
class PreferenceItem:
    record: Record  # response = chosen a_w, rejected = a_l, scene_id = s_w
    negative_scene: str  # s_l
    reference: tuple[float, float, float] | None = None  # log pi_ref of (a_w|s_w), (a_l|s_w), (a_w|s_l)


def preference_items(records: Sequence[Record], seed: int) -> list[PreferenceItem]:
    """One item per preference record, its negative scene drawn (seeded, per item) from the
    other scenes among ``records``."""
    scenes = sorted({r.scene_id for r in records})
    if len(scenes) < 2:
        raise ValueError(f"SceneDPO needs preference pairs from at least two scenes to draw negative scenes, "
                         f"got {scenes}")
    items = []
    for i, r in enumerate(records):
        if not r.rejected:
            raise ValueError(f"record {r.id or i} has no 'rejected' answer: not a preference record")
        others = [s for s in scenes if s != r.scene_id]
        pick = int(np.random.default_rng([seed, i]).integers(len(others)))
        items.append(PreferenceItem(r, others[pick]))
    return items


def _triples(scenes: SceneStore, batch: Sequence[PreferenceItem]):
    """Stacked inputs [chosen | rejected | negative scene] for one forward: 3B rows."""
    rec = [it.record for it in batch]
    pos = [scenes.get(r.scene_id) for r in rec]
    neg = [scenes.get(it.negative_scene) for it in batch]
    queries = [r.query() for r in rec]
    answers = [r.response for r in rec] + [r.rejected for r in rec] + [r.response for r in rec]
    return pos + pos + neg, queries * 3, answers


class SceneDPOStep:
    """One micro-batch of SceneDPO with a single stacked forward (TRL style)."""

    def __init__(self, scenes: SceneStore, dpo: DPOSection) -> None:
        self.scenes, self.dpo = scenes, dpo

    def __call__(self, policy: Callable, batch: list[PreferenceItem]) -> tuple[torch.Tensor, dict[str, float]]:
        B = len(batch)
        logp, tokens = policy(*_triples(self.scenes, batch))  # (3B,), (3B,)
        refs = {}
        if batch[0].reference is not None:
            ref = torch.tensor([it.reference for it in batch], device=logp.device, dtype=logp.dtype)  # (B, 3)
            refs = {"ref_chosen": ref[:, 0], "ref_rejected": ref[:, 1], "ref_negative_scene": ref[:, 2]}
        d = self.dpo
        out = scene_dpo_loss(logp[:B], logp[B:2 * B], logp[2 * B:], tokens[:B], **refs, w_a=d.w_a, w_s=d.w_s,
                             beta_a=d.beta_a, beta_s=d.beta_s, w_nll=d.w_nll, nll=d.nll)
        return out.loss, {"answer_loss": float(out.answer_loss.detach()), "scene_loss": float(out.scene_loss.detach()),
                          "nll": float(out.nll_loss.detach()), "answer_acc": out.answer_accuracy,
                          "scene_acc": out.scene_accuracy}


@torch.no_grad()
def compute_reference(model, scenes: SceneStore, items: Sequence[PreferenceItem], mode: str,
                      batch_size: int = 4) -> None:
    """Fill ``item.reference`` with the reference log-probs ('initial' or 'base')."""
    for i in range(0, len(items), batch_size):
        batch = items[i:i + batch_size]
        B = len(batch)
        if mode == "base":
            with model.adapter_disabled():
                lp = model.score(*_triples(scenes, batch))
        else:
            lp = model.score(*_triples(scenes, batch))
        for k, it in enumerate(batch):
            it.reference = (float(lp[k]), float(lp[B + k]), float(lp[2 * B + k]))


@torch.no_grad()
def preference_accuracy(model, scenes: SceneStore, items: Sequence[PreferenceItem],
                        batch_size: int = 4) -> dict[str, float]:
    """Answer- and scene-accuracy over ``items``: how often the chosen answer's (reference-
    relative) log-likelihood beats the rejected answer's, and the right scene's beats the
    negative scene's (Fig. 8)."""
    answer = scene = 0
    for i in range(0, len(items), batch_size):
        batch = items[i:i + batch_size]
        B = len(batch)
        lp = model.score(*_triples(scenes, batch)).view(3, B)  # rows: chosen, rejected, negative scene
        if batch[0].reference is not None:
            lp = lp - torch.tensor([it.reference for it in batch], device=lp.device, dtype=lp.dtype).T
        answer += int((lp[0] > lp[1]).sum())
        scene += int((lp[0] > lp[2]).sum())
    n = max(len(items), 1)
    return {"answer_acc": answer / n, "scene_acc": scene / n}


def mine_negatives(model, scenes: SceneStore, records: Sequence[Record], generation: GenerationConfig,
                   batch_size: int = 4) -> list[Record]:
    """Preference records from the model's own answers to ``records`` that are wrong (EM-R 0
    against the record's accepted answers); right answers are dropped."""
    preds = generate_predictions(model, scenes, records, generation, batch_size)
    out = []
    for r, p in zip(records, preds):
        if p.strip() and answer_match(clean_answer(p), [clean_answer(a) for a in r.references]) == (0, 0):
            out.append(Record.from_dict({**r.to_dict(), "rejected": p.strip()}))
    return out


def run_dpo(cfg: TrainConfig) -> TrainResult:
    d = cfg.dpo
    accelerator = make_accelerator(cfg)
    with accelerator.main_process_first():
        model = load_model(cfg.model, cfg.trainable, cfg.seed, accelerator.device)
    records = load_split(cfg.data.train, "data.train")
    prefs = [r for r in records if r.rejected]
    if d.negatives_file:
        prefs += load_split([d.negatives_file], "dpo.negatives_file")
    evals = load_split(cfg.data.eval, "data.eval", cfg.data.max_eval_records)
    scenes = SceneStore(model, cfg.scenes)
    unlabelled = [r for r in records if not r.rejected and r.task in d.generate_tasks]
    with accelerator.main_process_first():
        scenes.prefetch({r.scene_id for r in records + prefs + evals},
                        progress=cfg.progress and accelerator.is_main_process)
    if d.generate_negatives and unlabelled:
        generation = GenerationConfig(**{**dataclasses.asdict(model.config.generation), **cfg.eval.generation})
        mined = mine_negatives(model, scenes, unlabelled, generation, cfg.optim.batch_size)
        accelerator.print(f"negatives: {len(mined)} wrong answers of {len(unlabelled)} generated")
        prefs += mined
    if not prefs:
        raise ValueError("no preference records (records with 'rejected'): put some in data.train or "
                         "dpo.negatives_file, or set dpo.generate_negatives to mine them from QA records")
    items = preference_items(prefs, cfg.seed)
    if d.reference != "none":
        compute_reference(model, scenes, items, d.reference, cfg.optim.batch_size)
    acc_items = items[: cfg.data.max_eval_records]
    sft_eval = make_eval_fn(model, scenes, evals, cfg) if evals else None

    def eval_fn() -> dict[str, float]:
        out = preference_accuracy(model, scenes, acc_items, cfg.optim.batch_size)
        return {**out, **(sft_eval() if sft_eval else {})}
    return train_loop(cfg, accelerator, model, items, SceneDPOStep(scenes, d), eval_fn, kind="dpo")
