"""SceneDPO (paper §3.3): answer preference + scene preference + NLL.

For a tuple (s_w, s_l, q, a_w, a_l) (positive / negative scene, question, chosen / rejected
answer) and r(a | s) = log pi_theta(a | s, q) - log pi_ref(a | s, q), the paper's loss:

    L_a   = -log sigmoid(beta_a * (r(a_w | s_w) - r(a_l | s_w)))
    L_s   = -log sigmoid(beta_s * (r(a_w | s_w) - r(a_w | s_l)))
    L_NLL = -log pi_theta(a_w | s_w, q)
    L     = w_a * L_a + w_s * L_s + L_NLL          (expectations = batch means)

log p are sums over the answer tokens (DPO's sequence log-likelihood), L_NLL included, as
written (``nll: sequence``, the default; ``nll: token`` divides by the answer's tokens, the
SFT scale, as RPO does). Reference-free by default, as the paper's implementation
(log pi_ref = 0); ``reference: initial | base`` uses the starting policy or the base with
the adapter disabled, whose log-probs are computed once before training (the reference
never changes, so one no-grad pass replaces a second model in memory; with negative
scenes redrawn every epoch, the pass scores each epoch's draw).

Pairs (§4.4: "we first let LEO-VL generate predictions on the training set ... employ
GPT-4o to rephrase correct predictions into hard negative samples. These rephrased
negatives, along with the original incorrect predictions, form the negative answer set"):
- ``given``: preference records (bags' corrections, ``negatives_file``, data with ``rejected``);
- ``wrong``: the model's own answers that are wrong by EM-R (``generate_negatives``);
- ``rephrased_rules`` / ``rephrased_endpoint``: its correct answers rephrased into wrong ones
  (``dpo.rephrase``: rules for short answers, an OpenAI-compatible endpoint if configured;
  training/rephrase.py). The counts of each kind are printed and written to
  ``output_dir/dpo_pairs.json``.

Negative scenes: "we randomly sample a different scene from the training set", redrawn for
every pair in every epoch (seeded by seed, pair and epoch, so runs and resumes repeat), from
the scenes of the training records. Decision (paper silent): the scene-preference accuracy
of periodic evaluation uses the epoch-0 draw, so the curve compares like with like.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import broadcast_object_list, gather_object

from leovl_ros.model.config import GenerationConfig, resolve_generation

from .config import DPOSection, TrainConfig
from .evaluate import generate_predictions
from .chat_endpoint import ChatClient
from .modeling import load_model
from .records import Record, atomic_write_text
from .rephrase import EndpointRephraser, RuleRephraser, SceneVocabulary, is_wrong
from .scenes import SceneStore
from .sft import load_split, make_eval_fn
from .trainer import TrainResult, make_accelerator, plan, prefetch_scenes, train_loop


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
                   w_nll: float = 1.0, nll: str = "sequence") -> SceneDPOOutput:
    """SceneDPO loss, paper §3.3 eq. L = w_a L_a + w_s L_s + L_NLL, from (B,) summed answer
    log-probs (a pure function, like TRL's ``dpo_loss``; see the module docstring).

    chosen = log pi(a_w | s_w, q), rejected = log pi(a_l | s_w, q),
    negative_scene = log pi(a_w | s_l, q); ``chosen_tokens`` (B,) answer token counts (for
    ``nll: token``). The ``ref_*`` are all given (reference model) or all None (reference-free).
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


PAIR_KINDS = ("given", "wrong", "rephrased_rules", "rephrased_endpoint")


@dataclass
class PreferenceItem:
    record: Record  # response = chosen a_w, rejected = a_l, scene_id = s_w
    index: int  # position among the pairs: seeds its negative-scene draws
    kind: str = "given"  # one of PAIR_KINDS
    reference: tuple[float, float] | None = None  # log pi_ref of (a_w|s_w), (a_l|s_w)
    reference_negative: dict[int, float] = field(default_factory=dict)  # epoch -> log pi_ref(a_w | s_l(epoch))


class NegativeScenes:
    """The negative scene s_l of each pair in each epoch: another training scene, drawn with
    ``default_rng([seed, pair, epoch])`` (reproducible, independent of the data order)."""

    def __init__(self, scene_ids: Sequence[str], seed: int) -> None:
        self.scenes = sorted(set(scene_ids))
        if len(self.scenes) < 2:
            raise ValueError(f"SceneDPO needs training scenes from at least two scenes to draw negative scenes, "
                             f"got {self.scenes}")
        self.seed = seed

    def __call__(self, item: PreferenceItem, epoch: int) -> str:
        others = [s for s in self.scenes if s != item.record.scene_id]
        return others[int(np.random.default_rng([self.seed, item.index, epoch]).integers(len(others)))]


def preference_items(records: Sequence[Record], kinds: Sequence[str] | None = None) -> list[PreferenceItem]:
    """One item per preference record (``kinds``: each one's pair kind, default "given")."""
    items = []
    for i, r in enumerate(records):
        if not r.rejected:
            raise ValueError(f"record {r.id or i} has no 'rejected' answer: not a preference record")
        items.append(PreferenceItem(r, i, kinds[i] if kinds is not None else "given"))
    return items


def _triples(scenes: SceneStore, batch: Sequence[PreferenceItem], negatives: NegativeScenes, epoch: int):
    """Stacked inputs [chosen | rejected | negative scene] for one forward: 3B rows."""
    rec = [it.record for it in batch]
    pos = [scenes.get(r.scene_id) for r in rec]
    neg = [scenes.get(negatives(it, epoch)) for it in batch]
    queries = [r.query() for r in rec]
    answers = [r.response for r in rec] + [r.rejected for r in rec] + [r.response for r in rec]
    return pos + pos + neg, queries * 3, answers


class SceneDPOStep:
    """One micro-batch of SceneDPO with a single stacked forward (TRL style); the trainer
    calls :meth:`set_epoch` at each epoch's start, which redraws the negative scenes."""

    def __init__(self, scenes: SceneStore, dpo: DPOSection, negatives: NegativeScenes) -> None:
        self.scenes, self.dpo, self.negatives = scenes, dpo, negatives
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __call__(self, policy: Callable, batch: list[PreferenceItem]) -> tuple[torch.Tensor, dict[str, float]]:
        B = len(batch)
        logp, tokens = policy(*_triples(self.scenes, batch, self.negatives, self.epoch))  # (3B,), (3B,)
        refs = {}
        if batch[0].reference is not None:
            if self.epoch not in batch[0].reference_negative:
                raise ValueError(f"no reference log-probs for epoch {self.epoch}: they were computed for "
                                 f"{len(batch[0].reference_negative)} epochs (was max_steps raised on resume?)")
            ref = torch.tensor([(*it.reference, it.reference_negative[self.epoch]) for it in batch],
                               device=logp.device, dtype=logp.dtype)  # (B, 3)
            refs = {"ref_chosen": ref[:, 0], "ref_rejected": ref[:, 1], "ref_negative_scene": ref[:, 2]}
        d = self.dpo
        out = scene_dpo_loss(logp[:B], logp[B:2 * B], logp[2 * B:], tokens[:B], **refs, w_a=d.w_a, w_s=d.w_s,
                             beta_a=d.beta_a, beta_s=d.beta_s, w_nll=d.w_nll, nll=d.nll)
        return out.loss, {"answer_loss": float(out.answer_loss.detach()), "scene_loss": float(out.scene_loss.detach()),
                          "nll": float(out.nll_loss.detach()), "answer_acc": out.answer_accuracy,
                          "scene_acc": out.scene_accuracy}


@torch.no_grad()
def compute_reference(model, scenes: SceneStore, items: Sequence[PreferenceItem], mode: str,
                      negatives: NegativeScenes, epochs: int, batch_size: int = 4) -> None:
    """Fill each item's reference log-probs ('initial' or 'base'): chosen and rejected once,
    the chosen answer under the negative scene of each of the ``epochs`` epochs."""
    def score(*inputs):
        if mode == "base":
            with model.adapter_disabled():
                return model.score(*inputs)
        return model.score(*inputs)

    for i in range(0, len(items), batch_size):
        batch = items[i:i + batch_size]
        B = len(batch)
        lp = score(*_triples(scenes, batch, negatives, 0))
        for k, it in enumerate(batch):
            it.reference = (float(lp[k]), float(lp[B + k]))
            it.reference_negative[0] = float(lp[2 * B + k])
        for epoch in range(1, epochs):
            rec = [it.record for it in batch]
            lp = score([scenes.get(negatives(it, epoch)) for it in batch], [r.query() for r in rec],
                       [r.response for r in rec])
            for k, it in enumerate(batch):
                it.reference_negative[epoch] = float(lp[k])


@torch.no_grad()
def preference_accuracy(model, scenes: SceneStore, items: Sequence[PreferenceItem], negatives: NegativeScenes,
                        batch_size: int = 4) -> dict[str, float]:
    """Answer- and scene-accuracy over ``items``: how often the chosen answer's (reference-
    relative) log-likelihood beats the rejected answer's, and the right scene's beats the
    negative scene's (Fig. 8; the epoch-0 negative scenes)."""
    answer = scene = 0
    for i in range(0, len(items), batch_size):
        batch = items[i:i + batch_size]
        B = len(batch)
        lp = model.score(*_triples(scenes, batch, negatives, 0)).view(3, B)  # rows: chosen, rejected, negative scene
        if batch[0].reference is not None:
            ref = [(*it.reference, it.reference_negative[0]) for it in batch]
            lp = lp - torch.tensor(ref, device=lp.device, dtype=lp.dtype).T
        answer += int((lp[0] > lp[1]).sum())
        scene += int((lp[0] > lp[2]).sum())
    n = max(len(items), 1)
    return {"answer_acc": answer / n, "scene_acc": scene / n}


def _rephrasers(d: DPOSection, records: Sequence[Record], seed: int) -> list[tuple[str, object]]:
    """(kind, rephraser) in the order they are tried on a correct answer."""
    r = d.rephrase
    out: list[tuple[str, object]] = []
    if not r.enabled:
        return out
    if r.rules:
        out.append(("rephrased_rules", RuleRephraser(SceneVocabulary.from_records(records), seed, r.max_rule_words)))
    if r.endpoint:
        out.append(("rephrased_endpoint",
                    EndpointRephraser(ChatClient(r.endpoint, r.model, r.api_key_env, r.timeout_s), r.prompt)))
    return out


def negative_pairs(records: Sequence[Record], predictions: Sequence[str],
                   rephrasers: Sequence[tuple[str, object]] = ()) -> tuple[list[Record], list[str], dict[str, int]]:
    """Preference records from the model's answers to ``records`` (§4.4): a wrong answer
    (EM-R 0 against the record's accepted answers and their synonyms) is the rejected one
    ("wrong"); a correct one is rephrased into a wrong one by the first of ``rephrasers``
    that can ("rephrased_*").
    Returns the records, their kinds and counts (incl. "correct_not_rephrased", "empty")."""
    out, kinds = [], []
    counts = {"wrong": 0, "correct_not_rephrased": 0, "empty": 0, **{k: 0 for k, _ in rephrasers}}
    for i, (r, p) in enumerate(zip(records, predictions)):
        p = p.strip()
        if not p:
            counts["empty"] += 1
            continue
        kind, rejected = "wrong", p
        if not is_wrong(p, r.references):  # right, or a synonym of a right answer
            kind, rejected = "correct_not_rephrased", None
            for name, rephraser in rephrasers:
                rejected = rephraser.rephrase(r, p, i)
                if rejected:
                    kind = name
                    break
        counts[kind] += 1
        if rejected:
            out.append(Record.from_dict({**r.to_dict(), "rejected": rejected}))
            kinds.append(kind)
    return out, kinds, counts


def mine_negatives(accelerator, model, scenes: SceneStore, records: Sequence[Record], generation: GenerationConfig,
                   rephrasers: Sequence[tuple[str, object]] = (),
                   batch_size: int = 4) -> tuple[list[Record], list[str], dict[str, int]]:
    """:func:`negative_pairs` of the model's generated answers to ``records``, mined once for
    all processes: each process answers its share of the records, the main process alone
    rephrases (one endpoint call per answer, whatever the process count) and every process
    receives the same pairs, so all train the same number of steps."""
    rank, n = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(records), n))
    answers = generate_predictions(model, scenes, [records[i] for i in mine], generation, batch_size)
    gathered = dict(gather_object(list(zip(mine, answers))) if n > 1 else zip(mine, answers))
    payload: list = [None]
    if accelerator.is_main_process:
        try:
            payload[0] = negative_pairs(records, [gathered[i] for i in range(len(records))], rephrasers)
        except Exception as exc:  # noqa: BLE001 - every process must hear of it, or the others wait forever
            payload[0] = exc
    if n > 1:
        broadcast_object_list(payload, from_process=0)
    if isinstance(payload[0], Exception):
        raise payload[0]
    return payload[0]


def run_dpo(cfg: TrainConfig) -> TrainResult:
    d = cfg.dpo
    accelerator = make_accelerator(cfg)
    with accelerator.main_process_first():
        model = load_model(cfg.model, cfg.trainable, cfg.seed, accelerator.device)
    records = load_split(cfg.data.train, "data.train")
    prefs = [r for r in records if r.rejected]
    if d.negatives_file:
        prefs += load_split([d.negatives_file], "dpo.negatives_file")
    kinds = ["given"] * len(prefs)
    evals = load_split(cfg.data.eval, "data.eval", cfg.data.max_eval_records)
    scenes = SceneStore(model, cfg.scenes)
    unlabelled = [r for r in records if not r.rejected and r.task in d.generate_tasks]
    prefetch_scenes(accelerator, scenes, {r.scene_id for r in records + prefs + evals}, cfg.progress)
    mined_counts: dict[str, int] = {}
    if d.generate_negatives and unlabelled:
        generation = resolve_generation(model.config.generation, cfg.eval.generation)
        mined, mined_kinds, mined_counts = mine_negatives(accelerator, model, scenes, unlabelled, generation,
                                                          _rephrasers(d, records + prefs, cfg.seed),
                                                          cfg.optim.batch_size)
        prefs, kinds = prefs + mined, kinds + mined_kinds
    if not prefs:
        raise ValueError("no preference records (records with 'rejected'): put some in data.train or "
                         "dpo.negatives_file, or set dpo.generate_negatives to mine them from QA records")
    items = preference_items(prefs, kinds)
    pairs = {k: kinds.count(k) for k in PAIR_KINDS}
    summary = {"pairs": pairs, "total": len(items), "generated": len(unlabelled) if d.generate_negatives else 0,
               "mining": mined_counts}
    accelerator.print(f"SceneDPO pairs: {len(items)} = " + ", ".join(f"{v} {k}" for k, v in pairs.items())
                      + (f" (from {summary['generated']} generated answers: {mined_counts})" if mined_counts else ""))
    if accelerator.is_main_process:
        atomic_write_text(Path(cfg.output_dir) / "dpo_pairs.json", json.dumps(summary, indent=1))
    negatives = NegativeScenes([r.scene_id for r in records + prefs], cfg.seed)
    if d.reference != "none":
        steps_per_epoch, total_steps, _ = plan(len(items), cfg, accelerator.num_processes)
        epochs = math.ceil(total_steps / steps_per_epoch)  # the epochs the loop reaches before its last step
        compute_reference(model, scenes, items, d.reference, negatives, epochs, cfg.optim.batch_size)
    acc_items = items[: cfg.data.max_eval_records]
    sft_eval = make_eval_fn(model, scenes, evals, cfg) if evals else None

    def eval_fn() -> dict[str, float]:
        out = preference_accuracy(model, scenes, acc_items, negatives, cfg.optim.batch_size)
        return {**out, **(sft_eval() if sft_eval else {})}
    return train_loop(cfg, accelerator, model, items, SceneDPOStep(scenes, d, negatives), eval_fn, kind="dpo")
