"""Whole floors with leovl-tiny: which token selection keeps what a question asks about, and where
answers come from.

    python -m bench.floors [--floors 3] [--seed 910000] [--cache-dir runs/bench-floors]

Held-out floors (synth/floors.py; their rooms' seeds start at 10,000,000, no training stage
used them) are rendered along their route and fused with the bundled model's tower (maps
cached under --cache-dir). On the floor colour questions (a category named once on the
floor) the model answers greedily:
  room      - the map of the object's room alone, rendered as a training room (the
              single-room colour EM, same objects and questions)
  <policy>  - the whole floor's map under each token_selection
  other     - another floor's map under ``question`` (right format, wrong content)
"sharp" is the share of the asked object's voxels in a token of their own column (kept at
full resolution; coarse tokens and dropped columns do not count). Grounding (gradient x input,
model/grounding.py) on correctly answered questions: weight on the object's columns divided
by their share of the map's columns, beside random weights on the same columns. Timing: the
question selection (relevance + selection) against densest on a 200k-voxel map, one thread.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # before torch starts its pools
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.table import print_table  # noqa: E402
from bench.timing import median_time  # noqa: E402
from leovl_ros.condensed_grid import GridConfig, focus_point, voxel_tokens  # noqa: E402
from leovl_ros.model.config import ConfigOverrides, GenerationConfig  # noqa: E402
from leovl_ros.model.grounding import answer_grounding  # noqa: E402
from leovl_ros.model.leovl import LeoVL  # noqa: E402
from leovl_ros.model.prompts import SceneQuery  # noqa: E402
from leovl_ros.model.question_scorer import QuestionScorer  # noqa: E402
from leovl_ros.synth.floor_qa import floor_colour_qa  # noqa: E402
from leovl_ros.synth.floors import Floor, camera_route, generate_floor, render_floor  # noqa: E402
from leovl_ros.synth.render import render_frames  # noqa: E402
from leovl_ros.token_selection import QuestionKey, column_relevance, select_tokens  # noqa: E402
from leovl_ros.training.metrics import exact_match_scores  # noqa: E402
from leovl_ros.training.scenes import FusionConfig, fuse_frames  # noqa: E402
from leovl_ros.voxel_map import VoxelMap  # noqa: E402

TINY = Path(__file__).resolve().parents[1] / "leovl_ros" / "bundled_models" / "leovl-tiny"
POLICIES = ("densest", "nearest", "coarsen", "question")
FILLER = ("Tell me a joke.", "What time is it?", "How are you today?", "Please say something nice.")


def build_map(model: LeoVL, frames, path: Path) -> VoxelMap:
    if path.is_file():
        vmap = VoxelMap.load(path)
    else:
        vmap = model.new_voxel_map()
        vmap.track_columns(rope=True)
        fuse_frames(model.encoder, vmap, (f.rgbd() for f in frames), FusionConfig())
        path.parent.mkdir(parents=True, exist_ok=True)
        vmap.save(path)
    if vmap.columns is None:
        vmap.track_columns(rope=True)
    return vmap


def object_voxels(vmap: VoxelMap, obj) -> torch.Tensor:
    """(V,) bool: voxels whose centre lies in the object's box grown by half a voxel."""
    lo = torch.tensor(obj.min, dtype=torch.float32) - vmap.voxel_size / 2
    hi = torch.tensor(obj.max, dtype=torch.float32) + vmap.voxel_size / 2
    c = vmap.centers
    return ((c >= lo) & (c <= hi)).all(1)


def asked_object(floor: Floor, question: str):
    return next(o for o in floor.objects if re.search(rf"\b{o.category}\b", question))


def answer(model: LeoVL, scenes, queries, batch: int = 8) -> list[str]:
    gen = GenerationConfig(num_beams=1, max_new_tokens=8, repetition_penalty=1.0)
    out = []
    for i in range(0, len(queries), batch):
        out += model.generate(scenes[i:i + batch], queries[i:i + batch], gen)
    return out


def sharp_share(model: LeoVL, vmap: VoxelMap, query: SceneQuery, mask: torch.Tensor) -> float:
    config = model.config.grid
    token, _, tcount = voxel_tokens(vmap, config, focus_point(vmap, config, None), model.question_embeddings(query))
    cols = vmap.coords[:, :2]
    _, col_of, per_col = torch.unique(cols, dim=0, return_inverse=True, return_counts=True)
    own = (token >= 0) & (tcount[token.clamp(min=0)] == per_col[col_of])  # token pools exactly its column
    return float((own & mask).sum()) / max(1, int(mask.sum()))


def column_share(vmap: VoxelMap, xyz: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(weight on the object's columns, the object's share of columns)."""
    obj_cols = torch.unique(vmap.coords[mask, :2], dim=0)
    col = torch.floor(xyz[:, :2] / vmap.voxel_size).to(torch.int64)
    on = (col[:, None, :] == obj_cols[None]).all(2).any(1)
    return float(weight[on].sum()), float(on.float().mean())


def draw_picture(model: LeoVL, vmap: VoxelMap, query: SceneQuery, grounding, said: str, out: Path) -> None:
    from leovl_ros.scene_picture import draw_scene

    image, _ = draw_scene(vmap, model.config.grid.max_tokens, 0, None, 0.5, "question", grounding,
                          model.question_embeddings(query), model.config.grid.question_share)
    tmp = out.with_name(f".{out.name}.tmp")
    image.save(tmp, format="PNG", optimize=True)
    tmp.replace(out)
    print(f"picture: {out} — {query.instruction!r} -> {said!r}")


def timing_rows(d: int) -> list:
    """Question selection on a 200k-voxel map: by 12 word embeddings (no scorer), by one scorer
    key, and by the key with its reranker of 64 candidates, each beside densest."""
    from bench.scene_core import synthetic_map

    torch.set_num_threads(1)
    vmap = synthetic_map(200_000, d, np.random.default_rng(0))
    _, cols, counts, rows = vmap.columns.columns()
    td = median_time(lambda: select_tokens(cols, counts, 256, "densest", vmap.voxel_size), repeats=30)
    out = []
    scorer = QuestionScorer(d, min(d, 128), 64)
    for what, q in (("12 word embeddings", torch.randn(12, d)), ("1 scorer key", torch.randn(1, d)),
                    ("1 scorer key + reranker", QuestionKey(torch.randn(1, d), scorer.rerank))):
        def question(q=q):
            rel = column_relevance(q, cols, vmap.columns.sums(rows), counts)
            return select_tokens(cols, counts, 256, "question", vmap.voxel_size, None, rel)

        tq, tq_min = median_time(question, repeats=30), min_time(question, repeats=30)
        out.append(("select 256 tokens", f"200k voxels, {cols.shape[0]} columns, d={d}", what,
                    f"{1e3 * tq:.2f} ms (best {1e3 * tq_min:.2f})", f"densest {1e3 * td:.2f} ms",
                    f"{tq / td:.1f}x (target <= 5 ms)"))
    return out


def min_time(fn, repeats: int) -> float:
    """Fastest of ``repeats`` calls: the uncontended cost on a machine shared with other jobs."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--floors", type=int, default=3)
    p.add_argument("--seed", type=int, default=910000, help="first held-out floor seed")
    p.add_argument("--per-floor", type=int, default=12, help="colour questions per floor (at most)")
    p.add_argument("--cache-dir", type=Path, default=Path("runs/bench-floors"))
    p.add_argument("--model", type=Path, default=TINY)
    p.add_argument("--picture", type=Path, help="PNG of the first correctly answered question's floor with its "
                                                "grounding heat layer (the README's)")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    model = LeoVL.from_pretrained(args.model)
    budget = model.config.grid.max_tokens
    floors, maps, room_maps, recs = [], [], {}, []
    t0 = time.perf_counter()
    for seed in range(args.seed, args.seed + args.floors):
        floor = generate_floor(seed)
        vmap = build_map(model, render_floor(floor) if not (args.cache_dir / f"floor_{seed}.safetensors").is_file()
                         else [], args.cache_dir / f"floor_{seed}.safetensors")
        vmap.viewpoint = tuple(float(v) for v in camera_route(floor, 30)[0][-1][:3, 3])  # where the route ends
        floors.append(floor)
        maps.append(vmap)
        for r in floor.rooms:
            path = args.cache_dir / f"room_{r.room.seed}.safetensors"
            room_maps[(seed, r.type)] = build_map(model, [] if path.is_file() else render_frames(
                r.room, 30, 448, 336, seed=r.room.seed), path)
        recs += [(len(floors) - 1, r) for r in floor_colour_qa(floor, np.random.default_rng([seed, 1]),
                                                                args.per_floor)]
    print(f"{len(floors)} floors, {len(recs)} colour questions; maps ready in {time.perf_counter() - t0:.0f} s")
    columns = [vm.columns.num_columns for vm in maps]
    print(f"occupied columns per floor {columns} = {[round(c / budget, 1) for c in columns]} x the budget "
          f"({budget}); voxels {[vm.num_voxels for vm in maps]}")

    queries = [SceneQuery("qa", r["instruction"]) for _, r in recs]
    refs = [r["answers"] for _, r in recs]
    objs = [asked_object(floors[i], r["instruction"]) for i, r in recs]
    rooms = [floors[i].room_of[o.id] for (i, _), o in zip(recs, objs)]
    em_rows, sharp = [], {}
    conditions = [("room (single-room map)", "densest", [room_maps[(floors[i].seed, t)] for (i, _), t in
                                                         zip(recs, rooms)])]
    conditions += [(f"floor, {pol}", pol, [maps[i] for i, _ in recs]) for pol in POLICIES]
    conditions += [("other floor, question", "question", [maps[(i + 1) % len(maps)] for i, _ in recs])]
    preds_q = None
    for name, pol, scenes in conditions:
        model.set_overrides(ConfigOverrides(grid={"token_selection": pol}))
        t = time.perf_counter()
        preds = answer(model, scenes, queries)
        em = exact_match_scores(preds, refs, ["floor_colour"] * len(preds))["overall"]["EM"]
        if name.startswith("floor"):
            sharp[pol] = np.mean([sharp_share(model, maps[i], q, object_voxels(maps[i], o))
                                  for (i, _), q, o in zip(recs, queries, objs)])
        if name == "floor, question":
            preds_q = preds
        em_rows.append((name, f"{em:.1f}", f"{100 * sharp[pol]:.1f}" if pol in sharp and name.startswith("floor")
                        else "", f"{time.perf_counter() - t:.0f} s"))
    print(f"\nEM on {len(recs)} floor colour questions (greedy), and the asked object's voxels kept sharp\n")
    print_table(("condition", "EM %", "sharp %", "time"), em_rows)

    model.set_overrides(ConfigOverrides(grid={"token_selection": "question"}))
    ratios, random_ratios, flat, cost, gains = [], [], 0, [], []
    gen = torch.Generator().manual_seed(0)
    shown = None
    for (i, r), q, o, pred in zip(recs, queries, objs, preds_q):
        if exact_match_scores([pred], [r["answers"]], ["c"])["overall"]["EM"] < 100:
            continue
        t = time.perf_counter()
        g = answer_grounding(model, maps[i], q, pred)
        cost.append(time.perf_counter() - t)
        flat += g.flat
        gains.append(g.scene_gain)
        shown = shown or (None if g.flat else (maps[i], q, g, pred))
        mask = object_voxels(maps[i], o)
        w_on, share = column_share(maps[i], g.xyz, g.weight, mask)
        rnd = torch.rand(g.weight.shape[0], generator=gen)
        r_on, _ = column_share(maps[i], g.xyz, rnd / rnd.sum(), mask)
        ratios.append(w_on / share)
        random_ratios.append(r_on / share)
    print(f"\nGrounding on {len(ratios)} correct answers (question selection): weight on the asked object's "
          f"columns / their column share, median {np.median(ratios) if ratios else float('nan'):.1f}x "
          f"(mean {np.mean(ratios) if ratios else float('nan'):.1f}x), random weights "
          f"{np.median(random_ratios) if ratios else float('nan'):.1f}x (goal >= 3x); {flat} flat; "
          f"{1e3 * np.median(cost) if cost else float('nan'):.0f} ms per answer")
    if args.picture and shown:
        draw_picture(model, *shown, args.picture)
    filler = [answer_grounding(model, vm, q, answer(model, [vm], [q])[0]) for vm in maps
              for q in (SceneQuery("qa", f) for f in FILLER)]
    print(f"map's gain for the answer (log p with - without it): correct colour answers median "
          f"{np.median(gains) if gains else float('nan'):.1f} nats; questions naming nothing median "
          f"{np.median([g.scene_gain for g in filler]):.1f}, flat {sum(g.flat for g in filler)} of {len(filler)}\n")
    print_table(("what", "map", "question as", "time", "baseline", "ratio"), timing_rows(model.config.hidden_size))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
