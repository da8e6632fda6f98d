"""Pretraining a tiny Qwen2.5-VL vision tower on synthetic frames (for ``leovl-tiny``).

The real LEO-VL inherits a vision tower pretrained on web images: its per-cell features
already say *what* is seen. A tiny model has no such tower, and a seeded random one keeps
colour but not category (a from-scratch LLM on such features learns answer priors only). So
the tiny tower is pretrained first, on rendered frames of synthetic rooms whose per-pixel
instance ids give every 28 px feature cell a soft label: the share of its pixels showing
each category and each colour ("background" / "none" for floor, walls and ceiling). The
loss is soft-target cross-entropy through two linear probes on the merged cell features;
the probes are thrown away and the tower is frozen for everything after (the voxel-map
cache stays valid because the tower never changes again).

Calibration (after pretraining): the output is shifted so that "nothing there" (floor,
wall, ceiling cells) is the zero vector and scaled so an object cell has norm ~1, folded
into the merger's last linear layer. Uncalibrated, every cell shares a large background
component (norm ~15, cosine ~0.7 between any two scene tokens): a column token is then
mostly wall, the object standing in it a small perturbation, and scene tokens dwarf the
text embeddings (norm ~0.2) in the LLM's residual stream. The LLM learned answer priors
only; centred and scaled, an object is what a column token points at.

Word alignment: Qwen2.5-VL's merger writes into the LLM's token-embedding space, so the
word "red" and a red patch start out related. A from-scratch LLM has no such link and must
discover it from answers alone, which 2 CPU cores cannot afford. So linear probes are fitted
on the frozen calibrated features and each class's direction becomes the initial embedding
(tied: also the output row) of the words naming it ("red", " red", " laptop", " laptops"...).
Reading "what colour is the laptop" then starts as near-linear lookups the LLM refines.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from leovl_ros.model.encoder import CELL_PX, VisionEncoder
from leovl_ros.synth.catalog import CATEGORY_NAMES, COLOURS

CATEGORY_CLASSES = ("background",) + CATEGORY_NAMES
COLOUR_CLASSES = ("none",) + tuple(COLOURS)


@dataclass
class VisionPretrainConfig:
    """What the tower is pretrained on and how (rooms are not the LLM's held-out rooms)."""

    # Many rooms, few frames each: with 60 rooms x 16 frames the tower learned those rooms
    # (category accuracy 0.49 on their held-out frames, 0.29 on new rooms).
    seeds: tuple[int, int] = (0, 300)  # synthetic room seeds [a, b)
    frames_per_room: int = 6
    width: int = 448  # multiples of 28 px: cells line up with the rendered pixels
    height: int = 336
    steps: int = 2500
    frames_per_step: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.01
    seed: int = 0
    # Category loss weight of class c = (pixel share of c / mean share) ** -class_balance. Tables,
    # chairs and walls fill most cells; at 0 the tower barely learns stools, bins or lamps (held-out
    # cell recall < 0.1) and the voxel maps do not say whether a room has one. 0.5 lifts mid-size
    # categories' room-level presence 0.71 -> 0.78 (bench/vision_tower.py); leovl-tiny shipped with 0.
    class_balance: float = 0.0
    # Every k-th frame looks at the near wall zone (synth/render.py camera_path); 0 = never, as
    # leovl-tiny shipped. k = 2 shows surface objects larger (~2.5x the pixels in their best view) but
    # this tower got no better at naming them and worse on inward views (README, bench/vision_tower.py).
    outward_every: int = 0


def cell_label_shares(instance: np.ndarray, object_category: np.ndarray, object_colour: np.ndarray,
                      grid_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Soft labels of the (h, w) cell grid from an (H, W) instance image (-1 = structure).

    object_category / object_colour: class index per object id (background/none excluded).
    Returns (h*w, C_cat) and (h*w, C_col) float32 pixel shares, row-major like the features.
    """
    h, w = grid_hw
    H, W = instance.shape
    if (H, W) != (h * CELL_PX, w * CELL_PX):
        raise ValueError(f"instance image {W}x{H} does not match the {w}x{h} cell grid (render at multiples of 28)")
    cat = np.where(instance >= 0, object_category[np.maximum(instance, 0)], 0)  # (H, W) 0 = background
    col = np.where(instance >= 0, object_colour[np.maximum(instance, 0)], 0)
    cell = (np.arange(H)[:, None] // CELL_PX) * w + np.arange(W)[None, :] // CELL_PX  # (H, W) cell index

    def shares(labels: np.ndarray, classes: int) -> np.ndarray:
        counts = np.bincount((cell * classes + labels).ravel(), minlength=h * w * classes)
        return (counts.reshape(h * w, classes) / (CELL_PX * CELL_PX)).astype(np.float32)

    return shares(cat, len(CATEGORY_CLASSES)), shares(col, len(COLOUR_CLASSES))


def labelled_frames(config: VisionPretrainConfig, progress: bool = True) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rgb, category shares, colour shares) of every rendered frame."""
    from leovl_ros.synth.render import render_frames
    from leovl_ros.synth.rooms import generate_room

    cat_index = {c: i for i, c in enumerate(CATEGORY_CLASSES)}
    col_index = {c: i for i, c in enumerate(COLOUR_CLASSES)}
    grid = (config.height // CELL_PX, config.width // CELL_PX)
    out = []
    for seed in tqdm(range(*config.seeds), desc="render rooms", unit="room", disable=not progress):
        room = generate_room(seed)
        n = max(o.id for o in room.objects) + 1
        obj_cat, obj_col = np.zeros(n, np.int64), np.zeros(n, np.int64)
        for o in room.objects:
            obj_cat[o.id], obj_col[o.id] = cat_index[o.category], col_index[o.colour]
        for f in render_frames(room, config.frames_per_room, config.width, config.height, seed=seed,
                               outward_every=config.outward_every):
            out.append((f.rgb, *cell_label_shares(f.instance, obj_cat, obj_col, grid)))
    return out


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Soft-target cross-entropy; with ``weight`` (C,), class-weighted and normalised by the
    cells' total target weight (as torch's weighted cross_entropy does for hard targets)."""
    if weight is None:
        return -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
    wt = target * weight
    return -(wt * torch.log_softmax(logits, -1)).sum() / wt.sum().clamp_min(1e-8)


def class_weights(frames: list, balance: float) -> torch.Tensor | None:
    """(C_cat,) category loss weights ``(share / mean share) ** -balance``; None at balance 0."""
    if balance == 0:
        return None
    share = torch.from_numpy(np.concatenate([f[1] for f in frames])).sum(0).clamp_min(1.0)
    return (share / share.mean()) ** -balance


def _check_size(config: VisionPretrainConfig) -> None:
    if config.width % CELL_PX or config.height % CELL_PX:
        raise ValueError(f"width/height must be multiples of {CELL_PX} px, got {config.width}x{config.height}")


@torch.no_grad()
def cell_features(visual: nn.Module, frames: list, batch: int = 16) -> torch.Tensor:
    """(cells, d) output of ``visual`` for every frame, cells in frame then row-major order."""
    encoder = VisionEncoder(visual, max_pixels=max(f[0].shape[0] * f[0].shape[1] for f in frames),
                            min_pixels=CELL_PX * CELL_PX)
    visual.eval()
    return torch.cat([torch.cat([e.features for e in encoder.encode_batch([f[0] for f in frames[i:i + batch]])])
                      for i in range(0, len(frames), batch)])


@torch.no_grad()
def calibrate_output(visual: nn.Module, frames: list) -> dict[str, float]:
    """Fold f' = (f - mu_background) / s into the merger's last layer (see module doc).

    mu_background: mean feature of cells >= 90% floor/wall/ceiling; s: mean norm of
    f - mu over cells mostly (> 50%) showing an object.
    """
    feats = cell_features(visual, frames)  # (cells, d)
    background = torch.from_numpy(np.concatenate([f[1][:, 0] for f in frames]))  # (cells,) share
    mu = feats[background >= 0.9].mean(0)
    scale = (feats[background < 0.5] - mu).norm(dim=1).mean()
    last = visual.merger.mlp[-1]
    last.weight.div_(scale.to(last.weight.device))
    last.bias.sub_(mu.to(last.bias.device, last.bias.dtype)).div_(scale.to(last.bias.device))
    return {"background_norm": float(mu.norm()), "scale": float(scale)}


def pretrain_vision_tower(visual: nn.Module, config: VisionPretrainConfig, progress: bool = True,
                          frames: list | None = None) -> dict[str, float]:
    """Train ``visual`` in place (probes discarded) and calibrate its output; returns the probe
    accuracies on held-out rooms, the mean training loss of the first and last tenth of the steps and
    the calibration. ``frames``: :func:`labelled_frames` of ``config`` (rendered if None). Runs on
    the device ``visual`` is on (frames are rendered on the CPU either way)."""
    _check_size(config)
    frames = labelled_frames(config, progress) if frames is None else frames
    rng = np.random.default_rng(config.seed)
    # Held out by room (the last twentieth of the rooms): new rooms are what the tower will see.
    n_held = max(1, (config.seeds[1] - config.seeds[0]) // 20) * config.frames_per_room
    held, train = frames[-n_held:], frames[:-n_held]
    encoder = VisionEncoder(visual, max_pixels=config.width * config.height, min_pixels=CELL_PX * CELL_PX)
    d = encoder.feature_dim
    device = next(visual.parameters()).device
    torch.manual_seed(config.seed)
    probes = nn.ModuleDict({"cat": nn.Linear(d, len(CATEGORY_CLASSES)), "col": nn.Linear(d, len(COLOUR_CLASSES))})
    probes.to(device)
    params = list(visual.parameters()) + list(probes.parameters())
    weight = class_weights(train, config.class_balance)
    weight = None if weight is None else weight.to(device)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1)

    def forward(batch):
        pixels, grid_thw = encoder.preprocess([b[0] for b in batch])
        feats = visual(pixels.to(device), grid_thw=grid_thw.to(device)).pooler_output  # (sum cells, d)
        cat = torch.from_numpy(np.concatenate([b[1] for b in batch])).to(device)
        col = torch.from_numpy(np.concatenate([b[2] for b in batch])).to(device)
        return probes["cat"](feats), probes["col"](feats), cat, col

    losses = []
    visual.train()
    bar = tqdm(range(config.steps), desc="pretrain vision tower", unit="step", disable=not progress)
    for step in bar:
        idx = rng.choice(len(train), config.frames_per_step, replace=False)
        lc, lo, cat, col = forward([train[i] for i in idx])
        loss = soft_cross_entropy(lc, cat, weight) + soft_cross_entropy(lo, col)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    visual.eval()
    with torch.no_grad():
        lc, lo, cat, col = forward(held)
        obj = cat[:, 0] < 0.5  # cells mostly showing an object
        tenth = max(1, len(losses) // 10)
        probe = {"loss_start": float(np.mean(losses[:tenth])), "loss_end": float(np.mean(losses[-tenth:])),
                "category_acc": float((lc.argmax(-1) == cat.argmax(-1))[obj].float().mean()),
                "category_recall_mean": _mean_recall(lc.argmax(-1), cat.argmax(-1)),
                "colour_acc": float((lo.argmax(-1) == col.argmax(-1))[obj].float().mean()),
                "object_cells": int(obj.sum())}
    return {**probe, **calibrate_output(visual, frames)}


def _mean_recall(pred: torch.Tensor, label: torch.Tensor) -> float:
    """Mean over object categories present in ``label`` of the share of their cells predicted right."""
    recalls = [float((pred[label == c] == c).float().mean()) for c in range(1, len(CATEGORY_CLASSES))
               if (label == c).any()]
    return float(np.mean(recalls))


def fit_linear_probe(feats: torch.Tensor, target: torch.Tensor, steps: int = 300, seed: int = 0) -> nn.Linear:
    """Soft-target linear probe (d -> C) on frozen (cells, d) features and (cells, C) shares."""
    torch.manual_seed(seed)
    probe = nn.Linear(feats.shape[1], target.shape[1])
    opt = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(steps):  # full batch: the features fit in memory and the problem is convex
        loss = soft_cross_entropy(probe(feats), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return probe.eval()


def class_directions(visual: nn.Module, frames: list, steps: int = 300, seed: int = 0) -> dict[str, torch.Tensor]:
    """Unit directions of each category / colour class in the tower's output space: the
    rows of soft-target linear probes fitted on the frozen features, centred over classes."""
    feats = cell_features(visual, frames)  # (cells, d)
    out = {}
    for i, name in enumerate(("category", "colour")):
        target = torch.from_numpy(np.concatenate([f[1 + i] for f in frames]))  # (cells, C)
        w = fit_linear_probe(feats, target, steps, seed).weight.detach()
        out[name] = nn.functional.normalize(w - w.mean(0), dim=1)  # (C, d)
    return out


def class_words(name: str) -> list[str]:
    """How a class is written in questions and answers (own word, plural, synonyms)."""
    from leovl_ros.synth.catalog import COLOUR_SYNONYMS, PLURALS

    words = [name, PLURALS.get(name, name), *COLOUR_SYNONYMS.get(name, ())]
    return list(dict.fromkeys(w for word in words for w in (word, " " + word)))


@torch.no_grad()
def align_word_embeddings(embed: nn.Embedding, tokenizer, directions: dict[str, torch.Tensor],
                          norm: float = 1.0) -> list[str]:
    """Set the embedding of every single-token class word to ``norm`` x its class direction
    (background / none are not words); returns the words set."""
    done = []
    for key, classes in (("category", CATEGORY_CLASSES), ("colour", COLOUR_CLASSES)):
        for k, name in enumerate(classes[1:], start=1):
            for word in class_words(name):
                ids = tokenizer.encode(word, add_special_tokens=False)
                if len(ids) == 1:
                    embed.weight[ids[0]] = norm * directions[key][k].to(embed.weight.dtype)
                    done.append(word)
    return done
