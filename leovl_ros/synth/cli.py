"""`leovl-synth`: generate N synthetic rooms with frames, bags, annotations and a manifest.

Output layout under --out:
  manifest.json                      written last: its presence means the set is complete
  scenes/<scene_id>/                 ScanNet-style frames + scene_graph.json
  bags/<scene_id>/                   rosbag2 folder (only with --bag)
  annotations/{train,val,test}.jsonl normalised records, split by room
Room i uses seed `--seed + i` (scene_id synth_<seed>), so any room can be rebuilt alone.
With `--floors N` instead of `--rooms`: N floors of 3-8 typed rooms joined by a corridor
(synth/floors.py, scene_id floor_<seed>), rendered along one route through every room
(`--frames` per room), with floor-level QA (synth/floor_qa.py) and a room label per object.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from .annotate import AnnotateConfig, annotate_room, write_jsonl
from .floor_qa import floor_qa_records
from .floors import floor_id_of, generate_floor, render_floor
from .render import render_frames
from .rooms import generate_room, scene_id_of
from .writers import write_bag, write_scannet

SPLITS = ("train", "val", "test")
FORMAT = "leovl_synth/1"


def split_rooms(scene_ids: Sequence[str], ratios: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Seeded split by room. With 3 or more rooms, val and test get at least one each."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not abs(sum(ratios) - 1) < 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {list(ratios)}")
    n = len(scene_ids)
    n_val, n_test = round(n * ratios[1]), round(n * ratios[2])
    if n >= 3:
        n_val, n_test = max(1, n_val) if ratios[1] > 0 else 0, max(1, n_test) if ratios[2] > 0 else 0
    order = [scene_ids[i] for i in np.random.default_rng(seed).permutation(n)]
    return {"test": sorted(order[:n_test]), "val": sorted(order[n_test:n_test + n_val]),
            "train": sorted(order[n_test + n_val:])}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="leovl-synth", description=__doc__.split("\n")[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--rooms", type=int, help="number of rooms")
    what.add_argument("--floors", type=int, help="number of floors (3-8 typed rooms each) instead of rooms")
    p.add_argument("--seed", type=int, default=0, help="seed of the first room (room i uses seed+i)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--bag", choices=("mcap", "sqlite3"), help="also write a rosbag2 per room")
    p.add_argument("--frames", type=int, default=30, help="frames per room (per room of a floor with --floors)")
    p.add_argument("--outward-every", type=int, default=0,
                   help="every k-th frame looks at the nearest wall instead of the room centre (0 = never)")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--depth-noise", type=float, default=0.002, help="depth noise std at 1 m (metres)")
    p.add_argument("--hole-fraction", type=float, default=0.005, help="share of depth pixels dropped")
    p.add_argument("--qa-per-type", type=int, default=AnnotateConfig.qa_per_type)
    p.add_argument("--splits", type=float, nargs=3, default=(0.8, 0.1, 0.1), metavar=("TRAIN", "VAL", "TEST"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output set")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    count = args.floors if args.floors is not None else args.rooms
    if count < 1 or args.frames < 1 or args.seed < 0 or args.outward_every == 1 or args.outward_every < 0:
        print("leovl-synth: --rooms/--floors and --frames must be >= 1, --seed >= 0 and --outward-every 0 or >= 2",
              file=sys.stderr)
        return 2
    out: Path = args.out
    if (out / "manifest.json").exists() and not args.overwrite:
        print(f"leovl-synth: {out} already holds a set (manifest.json); use --overwrite", file=sys.stderr)
        return 2
    seeds = [args.seed + i for i in range(count)]
    scene_ids = [(floor_id_of if args.floors else scene_id_of)(s) for s in seeds]
    splits = split_rooms(scene_ids, args.splits, args.seed)
    split_of = {sid: name for name, ids in splits.items() for sid in ids}
    records: dict[str, list[dict]] = {name: [] for name in SPLITS}
    ann_cfg = AnnotateConfig(qa_per_type=args.qa_per_type)
    render = {"frames": args.frames, "width": args.width, "height": args.height,
              "depth_noise_m": args.depth_noise, "hole_fraction": args.hole_fraction,
              "outward_every": args.outward_every}
    rooms = []
    for seed in tqdm(seeds, desc="floors" if args.floors else "rooms", disable=args.quiet):
        room, frames, recs = _floor(seed, args, ann_cfg) if args.floors else _room(seed, args, ann_cfg)
        write_scannet(frames, out / "scenes" / room.scene_id, overwrite=True,
                      extra_json={"scene_graph.json": room.scene_graph()})
        if args.bag:
            write_bag(frames, out / "bags" / room.scene_id, storage=args.bag, overwrite=True)
        records[split_of[room.scene_id]].extend(recs)
        rooms.append({"scene_id": room.scene_id, "seed": seed, "split": split_of[room.scene_id],
                      "objects": len(room.objects), "records": len(recs),
                      "scene_dir": f"scenes/{room.scene_id}",
                      "bag": f"bags/{room.scene_id}" if args.bag else None})
    for name in SPLITS:
        write_jsonl(records[name], out / "annotations" / f"{name}.jsonl")
    manifest = {"format": FORMAT, "kind": "floors" if args.floors else "rooms", "seed": args.seed, "render": render,
                "bag_storage": args.bag, "annotate": asdict(ann_cfg), "splits": splits, "rooms": rooms,
                "annotations": {name: f"annotations/{name}.jsonl" for name in SPLITS},
                "records": {name: len(records[name]) for name in SPLITS}}
    _write_json(manifest, out / "manifest.json")
    if not args.quiet:
        kind = "floors" if args.floors else "rooms"
        print(f"wrote {count} {kind}, {sum(manifest['records'].values())} records to {out}")
    return 0


def _room(seed: int, args: argparse.Namespace, ann_cfg: AnnotateConfig):
    room = generate_room(seed)
    frames = render_frames(room, args.frames, args.width, args.height, seed=seed, depth_noise_m=args.depth_noise,
                           hole_fraction=args.hole_fraction, outward_every=args.outward_every)
    return room, frames, annotate_room(room, seed, ann_cfg)


def _floor(seed: int, args: argparse.Namespace, ann_cfg: AnnotateConfig):
    floor = generate_floor(seed)
    frames = render_floor(floor, args.frames, args.width, args.height, seed=seed, depth_noise_m=args.depth_noise,
                          hole_fraction=args.hole_fraction, outward_every=args.outward_every)
    return floor, frames, floor_qa_records(floor, seed, ann_cfg.qa_per_type)


def _write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
