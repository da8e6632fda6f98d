"""Does leovl-tiny look at the scene? Learning-validity report on held-out synthetic rooms.

    python -m bench.learning                         # the bundled model (+ the runs below if present)
    python -m bench.learning --train-ablations 400   # also train the ablations (about 20 min each)

For each model, QA on held-out rooms is answered by generation (greedy) under three scene
conditions, EM per question type:
  scene  - the room's own voxel map (the real use)
  empty  - no scene tokens at all
  other  - another held-out room's map (right format, wrong content)
A model that reads the scene scores well only with its own room; answer priors score the
same in all three. "scene-acc" is the paper's scene-preference accuracy (Fig. 8): how often
the true answer is more likely given the room than given another room.

Ablations (paper §4.2) at this scale branch off the shared stage-2b model (object maps, see
leovl_ros/training/tiny_model.py): each is a stage-3 SFT run (recipes/leovl_tiny_sft.yaml) of the same
reduced budget that changes one thing: ``grid.pos_z: none`` (no height RoPE),
``grid.grid: voxel_sample`` (a uniform voxel sample instead of the CFG), against the CFG
itself at that budget; plus the shipped SFT model vs SFT + SceneDPO, whose pairs of each kind
(the model's wrong answers, correct answers rephrased by rules or an endpoint, given pairs)
are printed from the run's dpo_pairs.json. TARGET_TYPES carry the issue's goal (>= 70 % EM
with the scene, >= 30 points lower without it).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

TARGET_TYPES = ("colour", "count", "existence", "above_below")
CONDITIONS = ("scene", "empty", "other")
ABLATIONS = {"cfg (same budget)": [], "pos_z: none": ["model.leovl.grid.pos_z=none"],
             "grid: voxel_sample": ["model.leovl.grid.grid=voxel_sample"]}


def qa_records(path: str, per_room: int | None = None):
    from leovl_ros.training.records import read_records

    records = [r for r in read_records([path]) if r.task == "qa" and r.answers]
    if per_room is None:
        return records
    seen: dict[tuple, int] = {}
    out = []
    for r in records:
        key = (r.scene_id, r.qtype)
        if seen.get(key, 0) < per_room:
            seen[key] = seen.get(key, 0) + 1
            out.append(r)
    return out


def scene_conditions(model, store, records, batch_size: int = 16) -> dict[str, dict[str, float]]:
    """{condition: {qtype | 'target' | 'all': EM}} for greedy answers."""
    from leovl_ros.model.config import GenerationConfig
    from leovl_ros.training.metrics import exact_match_scores

    gen = GenerationConfig(num_beams=1, max_new_tokens=8, repetition_penalty=1.0)
    rooms = sorted({r.scene_id for r in records})
    other_of = {sid: rooms[(i + 1) % len(rooms)] for i, sid in enumerate(rooms)}
    scene_of = {"scene": lambda r: store.get(r.scene_id), "empty": lambda r: None,
                "other": lambda r: store.get(other_of[r.scene_id])}
    out = {}
    for cond in CONDITIONS:
        preds = []
        for i in range(0, len(records), batch_size):
            batch = records[i:i + batch_size]
            preds += model.generate([scene_of[cond](r) for r in batch], [r.query() for r in batch], gen)
        em = exact_match_scores(preds, [r.references for r in records], [r.qtype for r in records])
        row = {q: v["EM"] for q, v in em.items() if q != "overall"}
        row["all"] = em["overall"]["EM"]
        row["target"] = sum(row.get(q, 0.0) for q in TARGET_TYPES) / len(TARGET_TYPES)
        out[cond] = row
    wins = 0
    for i in range(0, len(records), batch_size):
        batch = records[i:i + batch_size]
        queries, answers = [r.query() for r in batch], [r.response for r in batch]
        own = model.score([scene_of["scene"](r) for r in batch], queries, answers)
        other = model.score([scene_of["other"](r) for r in batch], queries, answers)
        wins += int((own > other).sum())
    out["scene"]["scene-acc"] = 100.0 * wins / len(records)
    return out


def load(path: Path):
    from leovl_ros.model.leovl import LeoVL

    return LeoVL.from_pretrained(path)


def store_for(model, cache_dir: str):
    from leovl_ros.training.config import load_config
    from leovl_ros.training.scenes import SceneStore

    cfg = load_config("recipes/leovl_tiny_sft.yaml")
    cfg.scenes.cache_dir = cache_dir
    return SceneStore(model, cfg.scenes)


def train_ablations(steps: int, out_dir: Path) -> None:
    for name, overrides in ABLATIONS.items():
        target = out_dir / name.split(" ")[0].replace(":", "")
        if (target / "bundle").is_dir():
            continue
        print(f"training ablation {name!r} for {steps} steps -> {target}", flush=True)
        sets = [f"output_dir={target}", f"optim.max_steps={steps}", "eval.every=0", "save_every=0"] + overrides
        cmd = [sys.executable, "-m", "leovl_ros.training.train_cli", "sft", "--config", "recipes/leovl_tiny_sft.yaml"]
        for s in sets:
            cmd += ["--set", s]
        subprocess.run(cmd, check=True)


def fmt_table(rows: list[tuple[str, dict[str, dict[str, float]]]]) -> str:
    cols = list(TARGET_TYPES) + ["target", "all", "scene-acc"]
    lines = ["| model | condition | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for name, res in rows:
        for cond, row in res.items():
            lines.append(f"| {name} | {cond} | " + " | ".join(f"{row[c]:.1f}" if c in row else "" for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="leovl_ros/bundled_models/leovl-tiny", help="the model to check (full bundle)")
    p.add_argument("--dpo", default="runs/leovl-tiny/dpo/bundle", help="the SFT + SceneDPO bundle (SFT vs +SceneDPO)")
    p.add_argument("--eval", default="runs/leovl-tiny/data/eval.jsonl", help="held-out QA records")
    p.add_argument("--cache-dir", default="runs/leovl-tiny/scenes")
    p.add_argument("--per-room", type=int, default=None, help="at most N questions per room and type")
    p.add_argument("--ablations-dir", default="runs/leovl-tiny/ablations")
    p.add_argument("--train-ablations", type=int, default=0, metavar="STEPS",
                   help="train the missing ablation runs for STEPS optimizer steps first")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    if not Path(args.model).is_dir():
        print(f"bench.learning: no model at {args.model}: run `make tiny-model`", file=sys.stderr)
        return 2
    if not Path(args.eval).is_file():  # the held-out records are cheap to regenerate
        from leovl_ros.training.data_cli import main as data_main
        from leovl_ros.training.tiny_model import SEEDS

        data_main(["convert", "synthetic", "--seeds", SEEDS["eval"], "--out", args.eval])
    if args.train_ablations:
        train_ablations(args.train_ablations, Path(args.ablations_dir))
    records = qa_records(args.eval, args.per_room)
    models = [("leovl-tiny (SFT, shipped)", Path(args.model)), ("SFT + SceneDPO", Path(args.dpo))]
    models += [(f"ablation {name}", Path(args.ablations_dir) / name.split(" ")[0].replace(":", "") / "bundle")
               for name in ABLATIONS]
    rows = []
    for name, path in models:
        if not path.is_dir():
            print(f"({name}: {path} not found, skipped)")
            continue
        t0 = time.perf_counter()
        model = load(path)
        res = scene_conditions(model, store_for(model, args.cache_dir), records)
        rows.append((name, res if not name.startswith("ablation") else {"scene": res["scene"]}))
        print(f"{name}: {len(records)} questions x 3 conditions in {time.perf_counter() - t0:.0f} s", flush=True)
    rooms = len({r.scene_id for r in records})
    print(f"\nEM on {len(records)} held-out questions from {rooms} rooms (greedy decoding)\n")
    print(fmt_table(rows))
    pairs = Path(args.dpo).parent / "dpo_pairs.json"  # written by leovl-train dpo (leovl_ros/training/scene_dpo.py)
    if pairs.is_file():
        info = json.loads(pairs.read_text())
        print(f"\nSceneDPO pairs ({pairs}): {info['total']} = "
              + ", ".join(f"{n} {kind}" for kind, n in info["pairs"].items())
              + f"; from {info['generated']} generated answers: {info['mining']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
