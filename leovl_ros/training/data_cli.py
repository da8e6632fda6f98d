"""``leovl-data``: convert datasets and robot bags to normalised JSONL records, and fill the
scene feature cache.

    leovl-data convert scanqa ScanQA_v1.0_train.json --out scanqa_train.jsonl
    leovl-data convert sqa3d questions.json annotations.json --out sqa3d_train.jsonl
    leovl-data convert leo-plan 3rscan_plan_train.json --out plan.jsonl
    leovl-data convert msqa msqa_rscan_train.json --out msqa_rscan.jsonl
    leovl-data object-boxes --source scannet=/data/scannet/scans --source 3rscan=/data/3RScan --out boxes.json
    leovl-data convert scanrefer ScanRefer_filtered_train.json --boxes boxes.json --out scan2cap.jsonl
    leovl-data convert nr3d nr3d.csv --boxes boxes.json --out nr3d.jsonl
    leovl-data convert leo-object-caption 3rscan_prompted.json --boxes boxes.json --out objcap.jsonl
    leovl-data convert synthetic --seeds 0:100 --out synth.jsonl
    leovl-data convert synthetic --floors --seeds 700000:700020 --out floors.jsonl
    leovl-data from-bag robot_2024_05_01/ --out-sft sft.jsonl --out-pref pref.jsonl
    leovl-data from-bag ~/.ros/leovl_bags/leovl_* --interaction-log ~/.ros/leovl_interactions.jsonl \
        --out-sft sft.jsonl --out-pref pref.jsonl
    leovl-data sessions synth.jsonl --size 6 --out synth_sessions.jsonl
    leovl-data sessions synth.jsonl --size 8 --qtypes colour --out colour_sessions.jsonl
    leovl-data build-scenes --config recipes/sft.yaml
    leovl-data build-scenes --config recipes/sft.yaml --shard 3/16     # machine 3 of 16 (0-based)

Every command prints what it kept and what it skipped, with reasons; a malformed record is
skipped and counted, never fatal. Exit status 2 means the input itself was unusable.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from leovl_ros.scans.bag_reader import BagTopics, bag_scene_id, scan_bag

from . import adapters, caption_adapters
from .bags import records_from_scan
from .records import ConversionReport, atomic_write_text, read_records, write_records


def _load_json(path: str):
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"input file {p} does not exist")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON: {exc}") from exc


def _seeds(text: str) -> list[int]:
    try:
        if ":" in text:
            a, b = text.split(":", 1)
            return list(range(int(a), int(b)))
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as exc:
        raise ValueError(f"--seeds must be 'A:B' (range) or 'a,b,c', got {text!r}") from exc


def _convert(args: argparse.Namespace, report: ConversionReport) -> list:
    fmt, inputs = args.format, args.inputs
    if args.only and fmt not in ("nr3d", "sr3d"):
        raise ValueError(f"--only filters Nr3D / Sr3D rows, not {fmt}")
    need = {"sqa3d": 2, "synthetic": 0}.get(fmt, 1)
    if len(inputs) != need:
        raise ValueError(f"format {fmt} takes {need} input file(s), got {len(inputs)}")
    if args.floors and fmt != "synthetic":
        raise ValueError(f"--floors is for format synthetic, not {fmt}")
    if fmt == "synthetic":
        if not args.seeds:
            raise ValueError("format synthetic needs --seeds, e.g. --seeds 0:10")
        convert = adapters.convert_synthetic_floors if args.floors else adapters.convert_synthetic
        return list(convert(_seeds(args.seeds), report, args.qa_per_type))
    if fmt == "sqa3d":
        return list(adapters.convert_sqa3d(_load_json(inputs[0]), _load_json(inputs[1]), report))
    if fmt in OBJECT_FORMATS:
        boxes_file = args.boxes or args.centers
        if not boxes_file:
            raise ValueError(f"format {fmt} needs --boxes FILE (leovl-data object-boxes): object ids become regions")
        boxes = caption_adapters.Boxes(_load_json(boxes_file), id_rule=args.id_rule or ID_RULES.get(fmt, "native"))
        if fmt in ("nr3d", "sr3d"):
            path = Path(inputs[0])
            if not path.is_file():
                raise ValueError(f"input file {path} does not exist")
            records = list(caption_adapters.convert_referit3d(path.read_text(encoding="utf-8"), boxes, report, fmt,
                                                              args.only or ()))
        else:
            records = list(OBJECT_FORMATS[fmt](_load_json(inputs[0]), boxes, report))
        args.ids_matched = boxes.matches()
        for source, m in args.ids_matched.items():
            print(f"object ids of {source} matched to boxes ({m['id_rule']} ids): {m['matched']} of {m['looked_up']}")
        return records
    convert = {"scanqa": adapters.convert_scanqa, "leo-plan": adapters.convert_leo_plan,
               "leo-qa": adapters.convert_leo_qa, "leo-dialogue": adapters.convert_leo_dialogue,
               "leo-scene-caption": adapters.convert_leo_scene_caption, "msqa": adapters.convert_msqa,
               "scene-captions": caption_adapters.convert_scene_captions}[fmt]
    return list(convert(_load_json(inputs[0]), report))


OBJECT_FORMATS = {"leo-object-caption": caption_adapters.convert_leo_object_caption,
                  "scanrefer": caption_adapters.convert_scanrefer, "scanscribe": caption_adapters.convert_scanscribe,
                  "object-captions": caption_adapters.convert_object_captions, "nr3d": None, "sr3d": None}
FORMATS = adapters.FORMATS + tuple(OBJECT_FORMATS) + ("scene-captions",)
# Decision (paper silent): generic object-caption lists are read with SceneVerse's ids (LEO-VL's object captions
# come from SceneVerse; its ARKitScenes ids are list positions, caption_adapters); --id-rule native for others.
ID_RULES = {"object-captions": "sceneverse"}


def _shard(ids: list[str], shard: str | None) -> list[str]:
    """``i/n``: every n-th of the sorted scene ids from the i-th (0-based), so n machines
    given the same records build disjoint sets that cover every scene."""
    if not shard:
        return ids
    try:
        i, n = (int(v) for v in shard.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be i/n (0 <= i < n), got {shard!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard must be i/n (0 <= i < n), got {shard!r}")
    return sorted(ids)[i::n]


def _from_bag(args: argparse.Namespace, report: ConversionReport) -> tuple[list, list]:
    # Imported here: leovl_ros.assistant pulls in torch (~2 s), which the other commands do not need.
    from leovl_ros.assistant.interaction_log import read_interaction_log

    topics = BagTopics(interactions=args.interactions_topic)
    entries = []
    for log in args.interaction_log or []:
        if not Path(log).is_file():
            raise ValueError(f"interaction log {log} does not exist")
        got, bad = read_interaction_log(log)
        entries += got
        for _ in range(bad):
            report.skip("unreadable interaction-log line (torn by a crash or edited)", log)
    sft, prefs, used = [], [], set()
    for bag in args.bags:
        scan = scan_bag(bag, topics, args.msg_file)
        used.update(id(e) for e in scan.recorded_during(entries))
        s, p = records_from_scan(scan, bag_scene_id(bag), report, args.trust_answers, entries)
        sft += s
        prefs += p
    for e in entries:  # no frames of its scene were recorded: nothing to train it with
        if id(e) not in used:
            report.skip("interaction-log entry stamped outside every bag's recording time", str(e["interaction_id"]))
    return sft, prefs


_WORKER: dict = {}


def _init_scene_worker(config_path: str) -> None:
    import torch

    from .config import load_config
    from .modeling import load_model
    from .scenes import SceneStore

    torch.set_num_threads(1)  # one process per core: threads would only contend
    cfg = load_config(config_path)
    cfg.scenes.max_in_memory = 1  # the parent only needs the cache files
    model = load_model(cfg.model, cfg.trainable, cfg.seed, torch.device("cpu"))
    _WORKER["store"] = SceneStore(model, cfg.scenes)


def _build_scene(scene_id: str) -> bool:
    store = _WORKER["store"]
    built = store.built
    store.get(scene_id)
    return store.built > built


def _build_scenes(args: argparse.Namespace) -> None:
    # Imported here: the model stack (transformers, peft) takes seconds to import and
    # `convert` / `from-bag` do not need it.
    import torch

    from .config import load_config
    from .modeling import load_model
    from .scenes import SceneStore

    cfg = load_config(args.config)
    ids = _shard(sorted({r.scene_id for r in read_records(cfg.data.train + cfg.data.eval)}), args.shard)
    if args.workers > 1:
        # Scenes are independent and rendering/fusion is single-threaded numpy: one process
        # per core scales almost linearly. Cache writes are atomic, so workers never clash.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from tqdm import tqdm

        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.workers, ctx, initializer=_init_scene_worker,
                                 initargs=(args.config,)) as pool:
            built = sum(tqdm(pool.map(_build_scene, ids), total=len(ids), desc="scenes", unit="scene"))
        print(f"scenes: {built} built, {len(ids) - built} already cached, in {cfg.scenes.cache_dir}")
        return
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model = load_model(cfg.model, cfg.trainable, cfg.seed, device)
    store = SceneStore(model, cfg.scenes)
    store.prefetch(ids)
    print(f"scenes: {store.built} built, {store.cache.hits} already cached, in {cfg.scenes.cache_dir}")
    if store.frame_report.skipped:
        print(f"frames: {store.frame_report.summary()}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leovl-data", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a dataset file to records")
    c.add_argument("format", choices=FORMATS)
    c.add_argument("inputs", nargs="*", help="input file(s): sqa3d takes questions + annotations")
    c.add_argument("--out", required=True, help="output JSONL")
    c.add_argument("--boxes", help="object-caption formats: JSON {scan_id: {object_id: {center, size}}} "
                                    "(leovl-data object-boxes)")
    c.add_argument("--centers", help="like --boxes, for files of points {scan_id: {object_id: [x, y, z]}}")
    c.add_argument("--id-rule", choices=caption_adapters.ID_RULES,
                   help="how the captions number objects: native (the annotation's ids) or sceneverse (ARKitScenes "
                        "by list position); default sceneverse for object-captions, native otherwise")
    c.add_argument("--only", action="append", choices=caption_adapters.REFERIT3D_FILTERS,
                   help="nr3d / sr3d: keep rows whose column is True (ReferIt3D's filters; repeatable); "
                        "the others are counted as skipped")
    c.add_argument("--seeds", help="synthetic: room seeds, 'A:B' or 'a,b,c'")
    c.add_argument("--qa-per-type", type=int, help="synthetic: questions per room and question type (default 6)")
    c.add_argument("--floors", action="store_true", help="synthetic: the seeds are floors (synth/floors.py): "
                                                         "floor-level QA, scene ids floor_<seed>")
    c.add_argument("--report", help="also write the kept/skipped counts as JSON here")
    b = sub.add_parser("from-bag", help="SFT and preference records from recorded robot bags")
    b.add_argument("bags", nargs="+", help="rosbag2 folders or .mcap files; folders of leovl_ros recorder segments "
                                           "and recordings cut by a crash are read up to the cut")
    b.add_argument("--interaction-log", action="append",
                   help="the assistant's interaction log (JSONL, parameter interaction_log): its entries stamped "
                        "while a bag was recorded join that bag's interactions; repeatable")
    b.add_argument("--out-sft", required=True, help="output JSONL of SFT records")
    b.add_argument("--out-pref", required=True, help="output JSONL of preference records (SceneDPO)")
    b.add_argument("--trust-answers", action="store_true",
                   help="also keep the model's uncorrected answers as pseudo-label SFT records")
    b.add_argument("--interactions-topic", default="/interactions")
    b.add_argument("--msg-file", help="Interaction.msg for bags without embedded definitions")
    b.add_argument("--report", help="also write the kept/skipped counts as JSON here")
    q = sub.add_parser("sessions", help="regroup QA records into chat sessions of several questions per scene")
    q.add_argument("inputs", nargs="+", help="record JSONL files")
    q.add_argument("--size", type=int, required=True, help="questions per session")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--qtypes", help="keep only QA of these question types, e.g. 'colour' (drops every other record)")
    q.add_argument("--out", required=True, help="output JSONL")
    s = sub.add_parser("build-scenes", help="encode and cache every scene the config's records use")
    s.add_argument("--config", required=True)
    s.add_argument("--cpu", action="store_true", help="encode on the CPU even when a GPU is present")
    s.add_argument("--workers", type=int, default=1, help="CPU processes building scenes in parallel")
    s.add_argument("--shard", help="i/n: build only this machine's share (0-based), e.g. one job per node")
    o = sub.add_parser("object-boxes", help="object id -> box from the scans' instance annotations")
    o.add_argument("--source", action="append", required=True, metavar="KIND=ROOT",
                   help="KIND=ROOT with KIND scannet, 3rscan, multiscan or arkitscenes (repeatable)")
    o.add_argument("--out", required=True, help="output JSON {scan_id: {object_id: {center, size, label}}}")
    o.add_argument("--report", help="also write the kept/skipped counts as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    report = ConversionReport()
    try:
        if args.command == "convert":
            n = write_records(args.out, _convert(args, report))
            print(f"wrote {n} records to {args.out}")
        elif args.command == "sessions":
            from .sessions import qa_sessions

            records = read_records(args.inputs, report)
            if args.qtypes:
                keep = set(args.qtypes.split(","))
                records = [r for r in records if r.task == "qa" and r.qtype in keep]
                if not records:
                    raise ValueError(f"no QA records of question type(s) {args.qtypes} in {', '.join(args.inputs)}")
            n = write_records(args.out, qa_sessions(records, args.size, args.seed))
            print(f"wrote {n} records ({len(records)} before grouping) to {args.out}")
        elif args.command == "from-bag":
            sft, prefs = _from_bag(args, report)
            write_records(args.out_sft, sft)
            write_records(args.out_pref, prefs)
            print(f"wrote {len(sft)} SFT records to {args.out_sft} and {len(prefs)} preference pairs "
                  f"to {args.out_pref}")
        elif args.command == "object-boxes":
            from .object_boxes import object_boxes

            sources = [tuple(s.split("=", 1)) for s in args.source]
            if any(len(s) != 2 for s in sources):
                raise ValueError("--source takes KIND=ROOT, e.g. scannet=/data/scannet/scans")
            boxes = object_boxes(sources, report)
            atomic_write_text(args.out, json.dumps(boxes, indent=None, sort_keys=True))
            print(f"wrote boxes of {len(boxes)} scans to {args.out}")
        else:
            _build_scenes(args)
            return 0
    except (ValueError, FileNotFoundError) as exc:
        print(f"leovl-data: error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if getattr(args, "report", None):
        counts = report.to_dict()
        if getattr(args, "ids_matched", None):
            counts["ids_matched"] = args.ids_matched
        atomic_write_text(args.report, json.dumps(counts, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
