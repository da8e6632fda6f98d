"""Train a model's QuestionScorer (model/question_scorer.py) on synthetic floors or on referred objects.

    python -m leovl_ros.training.question_scorer --model leovl_ros/bundled_models/leovl-tiny \\
        --out runs/leovl-tiny/question_scorer/bundle --floors 700000:700016 --eval-floors 700016:700020
    python -m leovl_ros.training.question_scorer --model runs/7b/sft/bundle --out runs/7b/scorer/bundle \\
        --records scanrefer_train.jsonl --eval-records scanrefer_val.jsonl --config recipes/7b_sft.yaml

Floors (synth/floors.py: 3-8 typed rooms) are rendered along their route and fused with the
model's own vision tower (maps cached under ``--cache-dir``); every object visible in the map
is asked about with a template that names it once (colour, existence, "which room").
Records (``leovl-data convert scanrefer / nr3d / sr3d / object-captions``: an object's box and
a sentence that refers to it) bring real scans: each record's scene comes from the scene store
of ``--config``'s ``scenes`` section (the maps SFT trains on) and its text is the question.
The loss is the negative log of the softmax mass, over the map's columns, on the referred
object's columns (from the generator's scene graph or the dataset's box: never from the
model). Only the scorer trains; everything else of the model is frozen and unchanged, and
the bundle is written atomically with the scorer in its heads.

Decision (paper silent): floors, not rooms, for the tiny model, because selection matters where
the map is many times the budget, and a floor's thousands of columns are the negatives it must
beat; for a real model, referring expressions name objects the way users do.
"""
from __future__ import annotations

import argparse
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from ..condensed_grid import referred_voxels
from ..model.leovl import LeoVL
from ..synth.floor_qa import ROOM_EXIST_Q, WHICH_ROOM_Q
from ..synth.floors import FloorConfig, generate_floor, render_floor
from ..synth.qa import COLOUR_Q, EXIST_Q
from ..synth.text import a
from ..token_selection import QuestionKey, column_relevance, rerank_candidates
from ..voxel_map import VoxelMap
from .records import Record, read_records
from .scenes import FusionConfig, SceneStore, fuse_frames

__all__ = ["TEMPLATES", "ReferredObject", "SceneColumns", "column_recall", "floor_columns", "main", "record_columns",
           "train_question_reranker", "train_question_scorer"]

# Decision (paper silent): a precise scorer keeps few columns at full resolution and gives the
# rest of the budget to a finer cover of the map; the share (12 of 256 tokens) was chosen on 104
# validation floors no stage trained on (docs/design.md).
QUESTION_SHARE_WITH_SCORER = 3 / 64
RERANK_HIDDEN = 64  # Decision (paper silent): 33k weights at d = 128; the reranker sees 64 columns per question

# One-object questions of the synthetic QA (qa.py, floor_qa.py); {c} the category, {r} a room type.
TEMPLATES = ([t.format(x="the {c}") for t in COLOUR_Q] + [t.format(x="{ac}") for t in EXIST_Q]
             + [t.format(x="{c}") for t in WHICH_ROOM_Q] + [t.format(x="{ac}", r="{r}") for t in ROOM_EXIST_Q])


class ReferredObject(NamedTuple):
    texts: tuple[str, ...]  # sentences that refer to it (one is drawn per use)
    mask: torch.Tensor  # (C,) bool: its columns
    category: str = ""  # synthetic floors: its category and room type
    room: str = ""


@dataclass
class SceneColumns:
    """A map as selection sees it: column mean features and, per referred object, its columns."""

    scene_id: str
    cols: torch.Tensor  # (C, 2) int64 column indices (x, y)
    features: torch.Tensor  # (C, d) column sums / counts (RoPE'd by height, as selected); float16 from records
    counts: torch.Tensor  # (C,) voxels per column
    objects: list[ReferredObject]


def _columns(model: LeoVL, vmap: VoxelMap) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    vmap.track_columns(rope=model.config.grid.pos_z == "rope")
    _, cols, counts, rows = vmap.columns.columns()
    return cols, vmap.columns.sums(rows).float() / counts.float()[:, None], counts


def _object_columns(vmap: VoxelMap, cols: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
    """(C,) bool: the columns holding any of the voxels ``inside`` (V,)."""
    own = torch.unique(vmap.coords[inside, :2], dim=0)
    return (cols[:, None, :] == own[None]).all(2).any(1)


def floor_columns(model: LeoVL, seed: int, cache_dir: Path | None, config: FloorConfig | None = None,
                  frames_per_room: int = 30, size: tuple[int, int] = (448, 336)) -> SceneColumns:
    """The floor of ``seed`` rendered and fused with ``model``'s tower (cached as safetensors)."""
    floor = generate_floor(seed, config)
    path = cache_dir / f"floor_{seed}_{frames_per_room}_{size[0]}x{size[1]}.safetensors" if cache_dir else None
    vmap = VoxelMap.load(path) if path is not None and path.is_file() else None
    if vmap is None or vmap.metadata.get("encoder_id") != model.encoder.encoder_id:  # none, or another tower's
        vmap = model.new_voxel_map()
        frames = render_floor(floor, frames_per_room, *size)
        fuse_frames(model.encoder, vmap, (f.rgbd() for f in frames), FusionConfig())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            vmap.save(path)  # atomic
    cols, features, counts = _columns(model, vmap)
    objects = []
    for o in floor.objects:
        lo = torch.tensor(o.min, dtype=torch.float32) - vmap.voxel_size / 2
        hi = torch.tensor(o.max, dtype=torch.float32) + vmap.voxel_size / 2
        inside = ((vmap.centers >= lo) & (vmap.centers <= hi)).all(1)  # voxels in the object's box
        if inside.any():
            room = floor.room_of[o.id]
            texts = tuple(t.format(c=o.category, ac=a(o.category), r=room) for t in TEMPLATES)
            objects.append(ReferredObject(texts, _object_columns(vmap, cols, inside), o.category, room))
    return SceneColumns(f"floor_{seed}", cols, features, counts, objects)


def record_text(record: Record) -> str:
    """What a record says about its referred object: the caption (a referring expression) of an
    object_caption record, else its question."""
    return record.response if record.task == "object_caption" else record.instruction


def record_columns(model: LeoVL, store: SceneStore, records: list[Record],
                   progress: bool = True) -> tuple[list[SceneColumns], int]:
    """Per scene of ``records`` with an anchor: its map's columns and each record's referred
    columns (the voxels the anchor marks, as the model's anchor does). Returns the scenes and
    the number of records skipped because their region holds no voxel of the map."""
    by_scene: dict[str, list[Record]] = {}
    for r in records:
        if r.anchor is not None:
            by_scene.setdefault(r.scene_id, []).append(r)
    out, empty = [], 0
    for scene_id in tqdm(sorted(by_scene), desc="scenes", unit="scene", disable=not progress):
        vmap = store.get(scene_id)
        cols, features, counts = _columns(model, vmap)
        features = features.to(torch.float16)  # a real dataset's scenes held at once: C x d x 2 bytes each
        objects = []
        for r in by_scene[scene_id]:
            inside = referred_voxels(vmap, r.anchor.center, r.anchor.radius or model.config.anchor_radius,
                                     r.anchor.size)  # a box when it has a size
            if inside.any():
                objects.append(ReferredObject((record_text(r),), _object_columns(vmap, cols, inside)))
            else:
                empty += 1
        if objects:
            out.append(SceneColumns(scene_id, cols, features, counts, objects))
    return out, empty


def train_question_scorer(model: LeoVL, floors: list[SceneColumns], steps: int, lr: float = 3e-3,
                          batch: int = 16, seed: int = 0, progress: bool = True) -> list[float]:
    """Train ``model.heads.question_scorer`` in place; returns the loss of every step."""
    scorer = model.heads.question_scorer
    if scorer is None:
        raise ValueError("the model has no question scorer: call model.add_question_scorer(rank) first")
    pool = [(f, i) for f in floors for i in range(len(f.objects))]
    if not pool:
        raise ValueError("no referred object of the training scenes is in its map: nothing to train the scorer on")
    rng = random.Random(seed)
    opt = torch.optim.Adam(scorer.parameters(), lr=lr)
    losses = []
    with torch.enable_grad():
        for _ in tqdm(range(steps), desc="question scorer", disable=not progress):
            loss = torch.zeros((), device=scorer.word_weight.device)
            for floor, i in rng.choices(pool, k=batch):
                texts, mask = floor.objects[i][:2]
                key = scorer(model.question_words(rng.choice(texts)))  # (1, d)
                logp = torch.log_softmax(floor.features.to(key.device, key.dtype) @ key[0], 0)  # (C,)
                loss = loss - torch.logsumexp(logp[mask.to(key.device)], 0) / batch  # mass on the object's columns
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    return losses


def train_question_reranker(model: LeoVL, scenes: list[SceneColumns], steps: int, lr: float = 1e-3,
                            batch: int = 16, seed: int = 0, progress: bool = True) -> list[float]:
    """Train the reranker of ``model.heads.question_scorer`` in place, its key frozen; returns the
    loss of every step. Per question the key's best ``RERANK_CANDIDATES`` columns are
    reranked; the loss is -log of the softmax mass over them on the asked object's columns
    (a question whose object is not among them has nothing to teach and is skipped)."""
    scorer = model.heads.question_scorer
    if scorer is None or not scorer.rerank_hidden:
        raise ValueError("the model's question scorer has no reranker: add_question_scorer(rank, rerank_hidden=h)")
    pool = [(f, i) for f in scenes for i in range(len(f.objects))]
    if not pool:
        raise ValueError("no referred object of the training scenes is in its map: nothing to train the reranker on")
    rng = random.Random(seed)
    params = [*scorer.rerank_in.parameters(), *scorer.rerank_out.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    losses = []
    with torch.enable_grad():
        for _ in tqdm(range(steps), desc="question reranker", disable=not progress):
            terms = []
            for scene, i in rng.choices(pool, k=batch):
                texts, mask = scene.objects[i][:2]
                with torch.no_grad():
                    key = scorer(model.question_words(rng.choice(texts)))  # (1, d)
                _, top, inputs = rerank_candidates(key, scene.cols, scene.features, scene.counts, summed=False)
                hit = mask[top].to(key.device)
                if bool(hit.any()):
                    new = scorer.rerank(key, *inputs)  # (K,)
                    terms.append(-torch.logsumexp(torch.log_softmax(new, 0)[hit], 0))
            if terms:
                loss = torch.stack(terms).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
    return losses


def column_recall(model: LeoVL, floors: list[SceneColumns], keep: int, seed: int = 1) -> dict[str, float]:
    """Share of one-object questions whose object has a column among the ``keep`` most relevant
    (the columns ``token_selection: question`` keeps one token each), the share whose most
    relevant column is the object's (``first``), and the mean share of the object's voxels in
    the ``keep`` columns; under the model's current scoring (words, scorer, reranker)."""
    rng, hits, firsts, voxels = random.Random(seed), [], [], []
    scorer = model.heads.question_scorer
    for floor in floors:
        for texts, mask, *_ in floor.objects:
            words = model.question_words(rng.choice(texts))
            with torch.no_grad():
                question = words if scorer is None else scorer(words)
            if scorer is not None and scorer.rerank_hidden:
                question = QuestionKey(question, scorer.rerank)
            rel = column_relevance(question, floor.cols, floor.features, floor.counts, summed=False)
            order = torch.topk(rel, min(keep, rel.numel())).indices
            top = torch.zeros_like(mask)
            top[order] = True
            hits.append(bool((top & mask).any()))
            firsts.append(bool(mask[order[0]]))
            voxels.append(float(floor.counts[top & mask].sum()) / float(floor.counts[mask].sum()))
    mean = (lambda v: float(np.mean(v)) if v else float("nan"))
    return {"questions": len(hits), "recall": mean(hits), "first": mean(firsts), "voxels_kept": mean(voxels)}


def _seeds(text: str) -> range:
    lo, _, hi = text.partition(":")
    try:
        out = range(int(lo), int(hi))
    except ValueError:
        raise ValueError(f"seed range must be START:END, got {text!r}") from None
    if not out:
        raise ValueError(f"seed range {text!r} is empty")
    return out


def _floor_seeds(args: argparse.Namespace) -> tuple[range, range]:
    train_seeds, eval_seeds = _seeds(args.floors), _seeds(args.eval_floors)
    if set(train_seeds) & set(eval_seeds):
        raise ValueError(f"--floors {args.floors} and --eval-floors {args.eval_floors} overlap")
    return train_seeds, eval_seeds


def _load_scenes(model: LeoVL, args: argparse.Namespace) -> tuple[list[SceneColumns], list[SceneColumns], str]:
    """(training scenes, held-out scenes, what they are) from floors or from records."""
    if args.records:
        from .config import load_config
        from .scenes import ScenesConfig

        scenes_config = load_config(args.config).scenes if args.config else ScenesConfig()
        store = SceneStore(model, scenes_config)
        train, empty = record_columns(model, store, read_records(args.records))
        held_out, empty_eval = record_columns(model, store, read_records(args.eval_records)) if args.eval_records \
            else (train, 0)
        if empty or empty_eval:
            print(f"question-scorer: {empty + empty_eval} records skipped: their region holds no voxel of the map",
                  file=sys.stderr)
        what = "held-out records" if args.eval_records else "training records (no --eval-records)"
        return train, held_out, what
    train_seeds, eval_seeds = _floor_seeds(args)
    load = [floor_columns(model, s, args.cache_dir, frames_per_room=args.frames_per_room)
            for s in tqdm(list(train_seeds) + list(eval_seeds), desc="floor maps")]
    return load[:len(train_seeds)], load[len(train_seeds):], "held-out floors"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m leovl_ros.training.question_scorer",
                                description="train a model's question scorer (token_selection: question) "
                                            "on synthetic floors or referred objects and write the bundle with it")
    p.add_argument("--model", required=True, type=Path, help="bundle (or base) to add the scorer to")
    p.add_argument("--out", required=True, type=Path, help="bundle to write (atomically)")
    p.add_argument("--floors", default="700000:700016", help="training floor seeds START:END")
    p.add_argument("--eval-floors", default="700016:700020", help="held-out floor seeds for the recall line")
    p.add_argument("--records", nargs="+", help="train on these JSONL records instead of floors: each record "
                                                "with an anchor (the referred object's box) and its text")
    p.add_argument("--eval-records", nargs="+", help="held-out records for the recall line (with --records)")
    p.add_argument("--config", type=Path, help="training config whose 'scenes' section builds the records' maps "
                                               "(default: synthetic scene ids only, cache/scenes)")
    p.add_argument("--rank", type=int, default=None, help="scorer rank (default: min(hidden size, 128))")
    p.add_argument("--question-share", type=float, default=QUESTION_SHARE_WITH_SCORER,
                   help="grid.question_share stored with the scorer: budget share of single relevant columns")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch", type=int, default=16, help="questions per step")
    p.add_argument("--rerank-hidden", type=int, default=RERANK_HIDDEN,
                   help="width of the reranker of the scorer's best columns (0: the key alone ranks them)")
    p.add_argument("--rerank-steps", type=int, default=3000, help="reranker steps, after the key's")
    p.add_argument("--rerank-lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", type=Path, default=Path("runs/floor_maps"), help="rendered floors' maps")
    p.add_argument("--frames-per-room", type=int, default=30)
    args = p.parse_args(argv)
    try:
        if (args.eval_records or args.config) and not args.records:
            raise ValueError("--eval-records and --config go with --records")
        if not args.records:
            _floor_seeds(args)  # bad ranges fail before the model loads
        model = LeoVL.from_pretrained(args.model)
        train, held_out, what = _load_scenes(model, args)
        keep = max(1, round(model.config.grid.max_tokens * args.question_share))  # what selection will keep
        before = column_recall(model, held_out, keep)  # the model's scoring so far (words, or its scorer)
        model.add_question_scorer(args.rank or min(model.config.hidden_size, 128), args.seed, args.question_share,
                                  args.rerank_hidden)
        losses = train_question_scorer(model, train, args.steps, args.lr, args.batch, args.seed)
        keyed = column_recall(model, held_out, keep) if args.rerank_hidden else None
        if args.rerank_hidden:
            train_question_reranker(model, train, args.rerank_steps, args.rerank_lr, args.batch, args.seed)
        after = column_recall(model, held_out, keep)
        model.save_bundle(args.out)
    except (ValueError, OSError) as exc:
        print(f"question-scorer: {exc}", file=sys.stderr)
        return 2
    print(f"question scorer: {len(train)} scenes, {sum(len(f.objects) for f in train)} objects, {args.steps} steps, "
          f"loss {np.mean(losses[:20]):.2f} -> {np.mean(losses[-20:]):.2f}; {what}: asked object among "
          f"the {keep} most relevant columns {100 * before['recall']:.0f} % -> {100 * after['recall']:.0f} % of "
          f"{after['questions']} questions, its voxels kept {100 * before['voxels_kept']:.0f} % -> "
          f"{100 * after['voxels_kept']:.0f} %, the most relevant column on it {100 * before['first']:.0f} % -> "
          + (f"{100 * keyed['first']:.0f} % (key) -> " if keyed else "")
          + f"{100 * after['first']:.0f} %; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
