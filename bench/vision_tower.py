"""What does leovl-tiny's vision tower recognise, category by category?

    python -m bench.vision_tower                     # make tiny-model's tower vs a random one (~1 min per tower, 2 cores)
    python -m bench.vision_tower --tower runs/leovl-tiny/base --tower runs/exp/base \\
        --cache-dir runs/leovl-tiny/scenes runs/exp/scenes

Existence and count questions need a room's map to say which categories it holds; the probe
of bench/scene_readout.py finds it does not (presence at its prior). This benchmark splits
that number by category and by where it is lost, for each tower given (a base or bundle dir):

cells  A linear category probe fitted on rendered frames of vision-pretraining rooms, scored on
       frames of rooms no stage uses: per category, the share of its cells (cells mostly showing
       it) predicted right. Baseline: the same architecture with seeded random weights.
rooms  For every cached voxel map built by that tower (``--cache-dir``; maps are matched by
       encoder id): max over voxels of the probe's probability of each category; a threshold
       per category fitted on the training rooms, accuracy on the held-out rooms. Baseline: the
       training rooms' majority answer per category.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

PROBE_ROOMS = (0, 80)  # vision-pretraining rooms: the probe is fitted where the tower was trained
NEW_ROOMS = (5000, 5030)  # no stage of make tiny-model uses these


def load_tower(path: str) -> nn.Module:
    """The vision tower of a full bundle or of a saved Qwen2.5-VL dir; "random" = seeded init."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    if path == "random":
        from leovl_ros.model.tiny import tiny_qwen25vl_config
        from leovl_ros.training.tiny_model import TINY_ARCH

        torch.manual_seed(0)
        return Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config(**TINY_ARCH)).model.visual.eval()
    from leovl_ros.model.bundle import is_full_bundle

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such directory (make tiny-model writes runs/leovl-tiny/base)")
    if is_full_bundle(Path(path)):
        from leovl_ros.model.leovl import LeoVL

        return LeoVL.from_pretrained(path).model.model.visual.float().eval()
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path, local_files_only=True).model.visual.float().eval()


def fit_probe(visual: nn.Module, frames: list) -> nn.Linear:
    """Linear category probe on the frozen tower's cell features."""
    from leovl_ros.training.vision_pretrain import cell_features, fit_linear_probe

    return fit_linear_probe(cell_features(visual, frames), torch.from_numpy(np.concatenate([f[1] for f in frames])))


@torch.no_grad()
def cell_recall(visual: nn.Module, probe: nn.Linear, frames: list) -> tuple[np.ndarray, np.ndarray]:
    """(C,) per-category recall over cells mostly showing it (NaN where none) and (C,) cell counts."""
    from leovl_ros.training.vision_pretrain import cell_features

    pred = probe(cell_features(visual, frames)).argmax(-1)
    label = torch.from_numpy(np.concatenate([f[1] for f in frames])).argmax(-1)
    counts = torch.bincount(label, minlength=probe.out_features).numpy()
    hits = torch.bincount(label[pred == label], minlength=probe.out_features).numpy()
    return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)[1:], counts[1:]


@torch.no_grad()
def room_presence(visual: nn.Module, probe: nn.Linear, cache_dirs: list[Path], size: tuple[int, int],
                  outward_every: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """(C,) held-out presence accuracy from this tower's cached maps of ``size`` (W, H) frames along
    the camera path with ``outward_every`` and (C,) the majority-answer accuracy; None when no such
    map of training and held-out rooms exists."""
    from leovl_ros.model.encoder import VisionEncoder
    from leovl_ros.synth.catalog import CATEGORY_NAMES
    from leovl_ros.synth.rooms import generate_room
    from leovl_ros.voxel_map import VoxelMap
    from leovl_ros.training.scenes import synthetic_view_recipe
    from leovl_ros.training.tiny_model import SEEDS

    encoder_id = VisionEncoder(visual, max_pixels=150528).encoder_id  # the id ignores the pixel cap
    frames_recipe = synthetic_view_recipe(*size, outward_every) + "|"
    elo = int(SEEDS["eval"].split(":")[0])
    rooms: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for path in sorted(p for d in cache_dirs for p in d.glob("synth_*.safetensors")):
        vmap = VoxelMap.load(path)
        meta = vmap.metadata
        seed = int(meta.get("scene_id", "synth_-1").split("_")[1])
        recipe = meta.get("recipe", "")
        if (meta.get("encoder_id") != encoder_id or not recipe.startswith("synthetic:")
                or frames_recipe not in recipe or seed in rooms):
            continue
        score = probe(vmap.means().float()).softmax(-1)[:, 1:].max(0).values.numpy()  # (C,)
        have = Counter(o.category for o in generate_room(seed).objects)
        rooms[seed] = score, np.array([c in have for c in CATEGORY_NAMES], bool)
    train = [v for s, v in rooms.items() if s < elo]
    held = [v for s, v in rooms.items() if s >= elo]
    if not train or not held:
        return None
    xt, yt = np.stack([r[0] for r in train]), np.stack([r[1] for r in train])
    xh, yh = np.stack([r[0] for r in held]), np.stack([r[1] for r in held])
    acc, prior = [], []
    for c in range(xt.shape[1]):
        cuts = np.concatenate([np.unique(xt[:, c]), [np.inf]])
        best = max(cuts, key=lambda t: ((xt[:, c] >= t) == yt[:, c]).mean())
        acc.append(((xh[:, c] >= best) == yh[:, c]).mean())
        prior.append((yh[:, c] == (yt[:, c].mean() > 0.5)).mean())
    return np.array(acc), np.array(prior)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tower", action="append",
                   help="base or bundle dir (repeatable); default: make tiny-model's stage 1, whose float32 tower "
                        "built the cached maps (the shipped float16 copy has another encoder id)")
    p.add_argument("--size", default="448x336", help="WxH of the rendered frames, multiples of 28 (default %(default)s: "
                                                     "make tiny-model's)")
    p.add_argument("--outward-every", type=int, default=0,
                   help="every k-th frame looks at the near wall (synth/render.py camera_path; default 0: never, "
                        "as make tiny-model renders)")
    p.add_argument("--cache-dir", nargs="*", type=Path, default=[Path("runs/leovl-tiny/scenes")],
                   help="dirs of cached voxel maps (make tiny-model's by default)")
    args = p.parse_args(argv)
    try:
        width, height = (int(v) for v in args.size.lower().split("x"))
        if width % 28 or height % 28 or args.outward_every == 1 or args.outward_every < 0:
            raise ValueError
    except ValueError:
        print(f"bench.vision_tower: --size {args.size!r} is not WxH in multiples of 28 px, or --outward-every "
              f"{args.outward_every} is not 0 or >= 2", file=sys.stderr)
        return 2
    torch.set_num_threads(min(2, torch.get_num_threads()))
    from leovl_ros.synth.catalog import CATEGORY_NAMES
    from leovl_ros.training.vision_pretrain import VisionPretrainConfig, labelled_frames

    paths = ["random"] + (args.tower or ["runs/leovl-tiny/base"])
    try:  # all of them before the minutes of rendering and probing
        towers = {path: load_tower(path) for path in paths}
    except (OSError, ValueError) as exc:
        print(f"bench.vision_tower: cannot load a vision tower: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    size = {"width": width, "height": height, "outward_every": args.outward_every}
    fit_frames = labelled_frames(VisionPretrainConfig(seeds=PROBE_ROOMS, **size), progress=False)
    new_frames = labelled_frames(VisionPretrainConfig(seeds=NEW_ROOMS, **size), progress=False)
    cols, counts = [], None
    for path, visual in towers.items():
        probe = fit_probe(visual, fit_frames)
        recall, counts = cell_recall(visual, probe, new_frames)
        cols.append((f"{Path(path).name} cells", recall))
        rooms = None if path == "random" else room_presence(visual, probe, args.cache_dir, (width, height),
                                                                args.outward_every)
        if rooms is not None:
            cols.append((f"{Path(path).name} rooms", rooms[0]))
            if not any(name == "prior rooms" for name, _ in cols):
                cols.append(("prior rooms", rooms[1]))
        print(f"{path}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    path_note = f", one in {args.outward_every} looking at the near wall" if args.outward_every else ""
    print(f"cells: {width}x{height} frames{path_note} of rooms {NEW_ROOMS[0]}:{NEW_ROOMS[1]}; "
          "rooms: held-out rooms of make tiny-model")
    print("| category | cells | " + " | ".join(name for name, _ in cols) + " |\n|---|---|" + "---|" * len(cols))
    for c, name in enumerate(CATEGORY_NAMES):
        print(f"| {name} | {counts[c]} | " + " | ".join(f"{v[c]:.2f}" for _, v in cols) + " |")
    print("| **mean** | | " + " | ".join(f"**{np.nanmean(v):.2f}**" for _, v in cols) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
