"""The shipped LEO-VL recipe runs as shipped: ``recipes/sft_leovl_7b.yaml`` and
``recipes/dpo_sqa3d_7b.yaml``, byte for byte, in a folder laid out as the README's data
preparation leaves it, with a tiny random Qwen2.5-VL at the config's base path.

Fixtures: four synthetic rooms written as a ScanNet export (+ instance annotation), a 3RScan
scan (+ semseg and instance mesh), a MultiScan scan and an ARKitScenes video folder, and a
small file of every annotation format in the recipe (native fields); each goes through its
``leovl-data`` command. Then ``build-scenes`` in two shards, ``leovl-train sft``, ``leovl-train
dpo``, and the DPO bundle is loaded the way the node loads one and answers about a scene.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.prompts import SceneQuery
from leovl_ros.synth.render import render_frames
from leovl_ros.synth.rooms import generate_room
from leovl_ros.synth.writers import write_scannet
from support.native_scans import (Z_UP_TO_Y_UP, rigid, write_3rscan, write_3rscan_instances, write_arkitscenes,
                          write_multiscan, write_scannet_instances)
from leovl_ros.training.config import load_config
from leovl_ros.training.data_cli import main as data_main
from leovl_ros.training.modeling import create_random_base
from leovl_ros.training.records import read_records
from leovl_ros.training.scenes import SceneStore
from leovl_ros.training.train_cli import main as train_main

pytestmark = pytest.mark.slow  # the whole recipe, SFT + SceneDPO: ~70 s on 2 cores
REPO = Path(__file__).resolve().parents[1]
SCANNET, SCANNET2, MULTISCAN, ARKIT = "scene0000_00", "scene0001_00", "scene_00000_00", "41069025"
RSCAN = "0988ea72-eb32-2e61-8344-ef2d4e3b2f1a"


def _write_scans(data: Path) -> tuple[list, list]:
    rooms = [generate_room(seed) for seed in range(5)]
    frames = [render_frames(room, 20, 112, 84) for room in rooms]
    write_scannet(frames[4], data / "scannet/scans" / SCANNET2, instances=False)  # SceneDPO's other scene
    align = rigid(20, [3.0, -2.0, 0.0])  # ScanNet: poses unaligned, axisAlignment in <scene>.txt
    unaligned = [dataclasses.replace(f, T_map_camera=np.linalg.inv(align) @ f.T_map_camera) for f in frames[0]]
    write_scannet(unaligned, data / "scannet/scans" / SCANNET, instances=False)
    write_scannet_instances(rooms[0], data / "scannet/scans" / SCANNET, align)
    native = rigid(30, [0.7, -0.4, -1.3])
    write_3rscan(frames[1], data / "3RScan" / RSCAN, native)
    write_3rscan_instances(rooms[1], data / "3RScan" / RSCAN, native)
    write_multiscan(frames[2], data / "multiscan" / MULTISCAN, Z_UP_TO_Y_UP @ rigid(-70, [1.5, 0.2, -1.1]))
    write_arkitscenes(frames[3], data / "arkitscenes/raw/Training" / ARKIT, rigid(120, [2.0, 3.0, 0.1]))
    return rooms, frames


def _annotations(raw: Path, rooms) -> list[list[str]]:
    """Native-format annotation files and the leovl-data command converting each."""
    sn, rs = rooms[0].objects, rooms[1].objects

    def put(name: str, obj) -> str:
        path = raw / name
        path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
        return str(path)

    sqa_q = {"questions": [{"scene_id": (SCANNET, SCANNET2)[i % 2], "question_id": 10 + i,
                            "situation": "I am standing by the table.",
                            "alternative_situation": ["The table is in front of me."], "question": q}
                           for i, q in enumerate(["What's behind me?", "Is the lamp on my left?"])]}
    sqa_a = {"annotations": [{"scene_id": (SCANNET, SCANNET2)[i % 2], "question_id": 10 + i,
                              "answers": [{"answer": a, "answer_id": 1}],
                              "position": {"x": 0.5, "y": 0.2, "z": 0.0},
                              "rotation": {"_x": 0, "_y": 0, "_z": 0.0, "_w": 1.0},
                              "question_type": "N/A", "answer_type": "other"}
                             for i, a in enumerate(["sofa", "yes"])]}
    msqa = lambda scan, n: [{"scan_id": scan, "question": f"What is near the <chair-{k}-IMG>?",  # noqa: E731
                             "answers": ["table"], "situation": "I am facing the wall.", "location": [0.1, 0.2, 0.0],
                             "orientation": [1.0, 0.0, 0.0], "type": "spatial", "index": k, "raw_thought": ""}
                            for k in range(n)]
    caps = {RSCAN: {f"{o.category}-{o.id + 1}": [{"response": f"A {o.colour} {o.category}."}] for o in rs[:3]}}
    c = lambda path, *args: ["convert", *args, "--out", path]  # noqa: E731
    b = lambda path, *args: c(path, *args, "--boxes", "data/boxes.json")  # noqa: E731
    return [
        c("data/scanqa_train.jsonl", "scanqa", put("ScanQA_v1.0_train.json", [
            {"scene_id": SCANNET, "question_id": f"train-{SCANNET}-{i}", "question": f"What color is the {o.category}?",
             "answers": [o.colour], "object_ids": [o.id], "object_names": [o.category]}
            for i, o in enumerate(sn[:3])])),
        c("data/sqa3d_train.jsonl", "sqa3d", put("q_train.json", sqa_q), put("a_train.json", sqa_a)),
        c("data/sqa3d_val.jsonl", "sqa3d", put("q_val.json", sqa_q),  # one question: generation is the slow part
          put("a_val.json", {"annotations": sqa_a["annotations"][:1]})),
        c("data/msqa_scannet_train.jsonl", "msqa", put("msqa_scannet_train.json", msqa(SCANNET, 2))),
        c("data/msqa_rscan_train.jsonl", "msqa", put("msqa_rscan_train.json", msqa(RSCAN, 2))),
        c("data/msqa_arkitscenes_train.jsonl", "msqa", put("msqa_arkitscenes_train.json", msqa(ARKIT, 2))),
        c("data/leo_3rscan_qa_train.jsonl", "leo-qa", put("3rscan_qa_train.json", {RSCAN: {
            "query": "{}", "response": [{"Q": f"What is the {o.category} made of?", "T": f"{o.category}-{o.id + 1}",
                                         "A": ["wood"]} for o in rs[:2]]}})),
        b("data/scan2cap_train.jsonl", "scanrefer", put("ScanRefer_filtered_train.json", [
            {"scene_id": SCANNET, "object_id": str(o.id), "object_name": o.category, "ann_id": "0",
             "description": f"This is a {o.colour} {o.category}.", "token": []} for o in sn[:2]])),
        b("data/nr3d_train.jsonl", "nr3d", put("nr3d.csv", "assignmentid,scan_id,target_id,instance_type,"
                                                      f"utterance\na1,{SCANNET},{sn[0].id},{sn[0].category},"
                                                      f"the {sn[0].category} by the wall\n")),
        b("data/leo_3rscan_objcap_train.jsonl", "leo-object-caption", put("3rscan_prompted.json", caps)),
        b("data/scanscribe_train.jsonl", "scanscribe", put("scanscribe.json", [
            {"scan_id": RSCAN, "object_id": o.id + 1, "sentence": f"The {o.category} is {o.colour}."}
            for o in rs[:2]])),
        b("data/sceneverse_objcap_train.jsonl", "object-captions", put("sceneverse_objcap.json", [
            {"scan_id": SCANNET, "target_id": o.id, "utterance": f"a {o.category}"} for o in sn[:2]])),
        c("data/leo_scene_caption_train.jsonl", "leo-scene-caption", put("3rscan_scenecap_train.json", {
            RSCAN: [{"query": "{}", "response": "A room with a bed and a desk."}]})),
        c("data/sceneverse_scenecap_train.jsonl", "scene-captions", put("sceneverse_scenecap.json", [
            {"scan_id": s, "caption": f"A small room ({s})."} for s in (SCANNET, RSCAN, MULTISCAN, ARKIT)])),
        c("data/leo_plan_train.jsonl", "leo-plan", put("3rscan_plan_train.json", {RSCAN: {"response": [
            {"instruction": "tidy the desk", "plan": "1. walk to the desk. 2. stack the books."}]}})),
        c("data/leo_dialogue_train.jsonl", "leo-dialogue", put("3rscan_dialog_train.json", {RSCAN: {"response": [[
            {"role": "Human", "content": "Is there a bed?"}, {"role": "Robot", "content": "Yes, by the wall."}]]}})),
    ]


def test_the_7b_recipe_runs_as_shipped(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    sft_cfg, dpo_cfg = str(REPO / "recipes/sft_leovl_7b.yaml"), str(REPO / "recipes/dpo_sqa3d_7b.yaml")
    base = load_config(sft_cfg).model.base
    create_random_base(base, {"hidden_size": 64, "layers": 2})  # the tiny stand-in for Qwen2.5-VL-7B
    data, raw = Path("data"), Path("raw")
    raw.mkdir()
    rooms, _ = _write_scans(data)
    assert data_main(["object-boxes", "--source", "scannet=data/scannet/scans", "--source", "3rscan=data/3RScan",
                      "--out", "data/boxes.json"]) == 0
    assert "skipped 1 x object without mesh vertices" in capsys.readouterr().out  # the fixture's empty group
    for command in _annotations(raw, rooms):
        assert data_main(command) == 0, command
    out = capsys.readouterr().out
    assert "skipped 0" in out and "skipped 1" not in out  # every fixture item converted
    cfg = load_config(sft_cfg)
    records = read_records(cfg.data.train)
    assert {r.task for r in records} == {"qa", "object_caption", "scene_caption", "plan", "dialogue"}
    # Table 1's mix: no LEO 3RScan QA ("+QA", §4.3), no grounding texts as captions (§3.2) ...
    extras = {"leo_qa", "scanrefer", "nr3d"}
    assert not extras & {r.source for r in records}
    assert {r.source for r in records if r.task == "qa"} == {"scanqa", "sqa3d", "msqa_scannet", "msqa_3rscan",
                                                             "msqa_arkitscenes"}
    # ... which the named ablation adds, identical otherwise
    ablation = load_config(REPO / "recipes/sft_leovl_7b_extras.yaml")
    assert extras <= {r.source for r in read_records(ablation.data.train)}
    assert len(ablation.data.train) == len(cfg.data.train) + 3 and set(cfg.data.train) < set(ablation.data.train)
    same = lambda c: {**dataclasses.asdict(c), "output_dir": None, "data": {**dataclasses.asdict(c.data),  # noqa: E731
                                                                               "train": None}}
    assert same(ablation) == same(cfg) and ablation.output_dir != cfg.output_dir
    assert {r.scene_id for r in records} == {SCANNET, SCANNET2, RSCAN, MULTISCAN, ARKIT}
    assert all(r.anchor is not None and r.anchor.size is not None for r in records if r.task == "object_caption")

    for shard in ("0/2", "1/2"):  # two machines' shares of the five scans
        assert data_main(["build-scenes", "--config", sft_cfg, "--shard", shard]) == 0
    built = capsys.readouterr().out
    assert "scenes: 3 built, 0 already cached" in built and "scenes: 2 built, 0 already cached" in built, built
    assert len(list(Path("cache/scenes").glob("*.safetensors"))) == 5

    assert train_main(["sft", "--config", sft_cfg]) == 0
    assert train_main(["dpo", "--config", dpo_cfg]) == 0
    out = capsys.readouterr().out
    assert "scene cache: 0 maps built" in out  # the sharded build filled the cache for both stages
    bundle = Path("runs/dpo_sqa3d_7b/bundle")
    model = LeoVL.from_pretrained(base, bundle=bundle)  # how the node loads a bundle
    vmap = SceneStore(model, cfg.scenes).get(RSCAN)
    answer = model.generate([vmap], [SceneQuery(task="qa", instruction="What is on the desk?")])[0]
    assert isinstance(answer, str)
    assert model.config.grid.max_tokens == 750 and model.config.voxel_size == 0.2
