"""Tiny real training runs on synthetic rooms: SFT, exact resume, SceneDPO, evaluation, scene sources.

The model is a random tiny Qwen2.5-VL (hidden 64, 2 layers) saved as a real safetensors
checkpoint; scenes are rendered synthetic rooms encoded by its vision tower. Learning
rates are far above the paper's because a handful of steps must show an effect.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from leovl_ros.model.leovl import LeoVL
from leovl_ros.synth.render import render_frames
from leovl_ros.synth.rooms import generate_room
from leovl_ros.synth.writers import write_bag, write_scannet
from leovl_ros.training.adapters import convert_synthetic
from leovl_ros.scans.bag_reader import bag_scene_id
from leovl_ros.training.config import ModelSection, load_config
from leovl_ros.training.eval_cli import main as eval_main
from leovl_ros.training.evaluate import answer_nll
from leovl_ros.training.modeling import load_model
from leovl_ros.training.records import ConversionReport, read_records, write_records
from leovl_ros.training.scenes import SceneStore
from leovl_ros.training.train_cli import main as train_main

LEOVL = {"grid": {"max_tokens": 64, "fourier_features": 16}, "max_pixels": 112 * 84}
SCENES = {"synthetic_frames": 6, "synthetic_width": 112, "synthetic_height": 84}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops on a loaded 2-core machine: with 2 intra-op threads a small index_add_ waits
    ~50 ms for a busy core; one thread keeps the runs in seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Records of two synthetic rooms: short QA answers (cheap) plus one record of every other task."""
    root = tmp_path_factory.mktemp("runs")
    records = list(convert_synthetic([0, 1], ConversionReport()))
    qa = [r for r in records if r.task == "qa"]
    others = [next(r for r in records if r.task == t) for t in ("object_caption", "scene_caption", "plan", "dialogue")]
    write_records(root / "train.jsonl", qa[:6] + qa[-6:] + others)
    write_records(root / "eval.jsonl", qa[:4] + qa[-4:])
    # Preference pairs whose chosen answer exists in one room only, rejected = an answer of the other room.
    by_scene = {s: {r.response for r in qa if r.scene_id == s} for s in ("synth_000000", "synth_000001")}
    prefs = []
    for r in qa:
        other = next(s for s in by_scene if s != r.scene_id)
        if r.response not in by_scene[other]:
            prefs.append(type(r).from_dict({**r.to_dict(), "rejected": sorted(by_scene[other])[0]}))
    write_records(root / "pref.jsonl", prefs)
    return root


def _config(root: Path, name: str, **over) -> Path:
    cfg = {"output_dir": str(root / name), "seed": 0, "progress": False, "log_every": 1,
           "model": {"base": str(root / "base"), "init_random": {"hidden_size": 64, "layers": 2}, "leovl": LEOVL},
           "data": {"train": [str(root / "train.jsonl")], "eval": [str(root / "eval.jsonl")]},
           "scenes": {"cache_dir": str(root / "cache"), **SCENES},
           "optim": {"lr": 5e-3, "warmup_steps": 0, "batch_size": 4, "grad_accum": 1, "max_steps": 8},
           "eval": {"every": 0}, "save_every": 0}
    for key, value in over.items():
        section, _, leaf = key.partition(".")
        if leaf:
            cfg.setdefault(section, {})[leaf] = value
        else:
            cfg[section] = value
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _model_and_scenes(root: Path, bundle: Path | None = None):
    cfg = load_config(_config(root, "probe"))
    if bundle is None:
        model = load_model(cfg.model, "adapter", 0, torch.device("cpu"))
    else:
        model = LeoVL.from_pretrained(root / "base", bundle=bundle)  # how the node loads a bundle
    return model, SceneStore(model, cfg.scenes)


def test_sft_lowers_loss_and_writes_a_bundle_the_node_loads(workdir):
    cfg = _config(workdir, "sft", save_every=4, **{"optim.grad_accum": 2, "optim.max_steps": 6, "optim.lr": 2e-2})
    assert train_main(["sft", "--config", str(cfg)]) == 0
    out = workdir / "sft"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    lrs = [h["lr"] for h in history if "lr" in h]
    assert max(lrs) <= 2e-2 and lrs[-1] == pytest.approx(0.0)  # cosine decay to zero
    assert (out / "checkpoint-4" / "bundle" / "leovl_heads.safetensors").is_file()

    train = read_records(workdir / "eval.jsonl")  # the short-answer QA records of the training set
    before_model, scenes = _model_and_scenes(workdir)
    before = answer_nll(before_model, scenes, train)
    after_model, scenes = _model_and_scenes(workdir, out / "bundle")
    after = answer_nll(after_model, scenes, train)
    assert after < before - 0.5, (before, after)
    assert after_model.config.grid.max_tokens == 64  # the bundle carries the model config
    assert scenes.built == 0 and scenes.cache.hits >= 2  # scenes came from the cache of the run


def test_sft_loss_per_token_over_the_batch_or_per_sample_mean():
    from leovl_ros.training.sft import sft_loss

    logp, tokens = torch.tensor([-2.0, -12.0]), torch.tensor([1.0, 4.0])  # a 1-token answer and a 4-token one
    assert sft_loss(logp, tokens).item() == pytest.approx(14.0 / 5)  # every token weighs the same
    assert sft_loss(logp, tokens, "sample").item() == pytest.approx((2.0 + 3.0) / 2)  # every answer (LEO)
    with pytest.raises(ValueError, match="loss_norm"):
        sft_loss(logp, tokens, "batch")


def test_each_visit_trains_on_one_accepted_answer_drawn_at_random():
    """LEO samples one of ScanQA's accepted answers per visit; always answers[0] would never
    teach the others. Seeded by (seed, epoch, record): any process count draws the same."""
    from leovl_ros.training.records import Record
    from leovl_ros.training.sft import training_response

    rec = Record(scene_id="s", task="qa", instruction="What colour?", response="brown", source="scanqa",
                 answers=["brown", "", "dark brown", "tan"], id="q1")
    drawn = [training_response(rec, 0, epoch) for epoch in range(300)]
    counts = {a: drawn.count(a) for a in set(drawn)}
    assert set(counts) == {"brown", "dark brown", "tan"}  # never the empty one
    assert all(70 <= n <= 130 for n in counts.values()), counts  # ~100 each (binomial sd ~8)
    assert drawn == [training_response(rec, 0, epoch) for epoch in range(300)]  # reproducible
    assert drawn != [training_response(rec, 1, epoch) for epoch in range(300)]  # the seed decides
    single = Record(scene_id="s", task="qa", instruction="q?", response="two", source="t", answers=["two"])
    assert training_response(single, 0, 5) == "two"
    caption = Record(scene_id="s", task="scene_caption", instruction="Describe.", response="A room.", source="t")
    assert training_response(caption, 0, 5) == "A room."


def test_resume_continues_exactly(workdir):
    # log_every 10: the first checkpoint comes before any log line (and evaluation is off)
    straight = _config(workdir, "straight", save_every=2, log_every=10, **{"optim.max_steps": 4})
    assert train_main(["sft", "--config", str(straight)]) == 0
    resumed = _config(workdir, "resumed", resume=str(workdir / "straight" / "checkpoint-2"), **{"optim.max_steps": 4})
    assert train_main(["sft", "--config", str(resumed)]) == 0
    for name in ("adapter_model.safetensors", "leovl_heads.safetensors"):
        a = load_file(workdir / "straight" / "bundle" / name)
        b = load_file(workdir / "resumed" / "bundle" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        assert any(a[k].abs().sum() > 0 for k in a)
    steps = [json.loads(x)["step"] for x in (workdir / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 4, 4]  # only the resumed steps were trained (and the final evaluation)


def test_scene_dpo_raises_scene_accuracy(workdir):
    # The NLL term of a random 152k-vocabulary model dwarfs the preference terms in a
    # handful of steps; it is switched off here so the test isolates L_a + L_s.
    cfg = _config(workdir, "dpo", data={"train": [str(workdir / "pref.jsonl")]}, eval={"every": 8},
                  dpo={"beta_a": 0.1, "beta_s": 0.1, "w_nll": 0.0}, **{"optim.lr": 1e-3})
    assert train_main(["dpo", "--config", str(cfg)]) == 0
    evals = [h for h in map(json.loads, (workdir / "dpo" / "metrics.jsonl").read_text().splitlines())
             if "eval/scene_acc" in h]
    assert [h["step"] for h in evals] == [0, 8]
    assert evals[-1]["eval/scene_acc"] > evals[0]["eval/scene_acc"] + 0.2, evals
    train_logs = [h for h in map(json.loads, (workdir / "dpo" / "metrics.jsonl").read_text().splitlines())
                  if "scene_loss" in h]
    assert len(train_logs) == 8 and all(0 <= h["answer_acc"] <= 1 for h in train_logs)
    # The curves in TensorBoard (log_with: auto), read back from the event file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "dpo" / "leovl-dpo")).Reload()
    for key in ("answer_loss", "scene_loss", "nll", "answer_acc", "scene_acc", "loss", "lr"):  # L_a, L_s, L_NLL
        got = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert got == [(h["step"], pytest.approx(h[key], rel=1e-6, abs=1e-7)) for h in train_logs], key
    assert [(e.step, e.value) for e in events.Scalars("eval/scene_acc")] == [
        (h["step"], pytest.approx(h["eval/scene_acc"])) for h in evals]


def test_dpo_with_reference_and_mined_negatives(workdir, capsys):
    # Plain QA records, no rejected answers: the model's own wrong answers become the negatives.
    cfg = _config(workdir, "dpo_ref", data={"train": [str(workdir / "eval.jsonl")]}, eval={
        "every": 2, "generation": {"num_beams": 1, "max_new_tokens": 3}},
        dpo={"generate_negatives": True, "reference": "initial"}, **{"optim.max_steps": 2})
    assert train_main(["dpo", "--config", str(cfg)]) == 0
    assert "SceneDPO pairs:" in capsys.readouterr().out
    pairs = json.loads((workdir / "dpo_ref" / "dpo_pairs.json").read_text())
    assert pairs["generated"] == 8 and pairs["total"] == sum(pairs["pairs"].values()) > 0
    assert pairs["pairs"]["wrong"] == pairs["mining"]["wrong"] > 0  # a random model's answers are wrong
    evals = [h for h in map(json.loads, (workdir / "dpo_ref" / "metrics.jsonl").read_text().splitlines())
             if "eval/scene_acc" in h]
    # At step 0 the policy is the reference: every reference-relative margin is exactly 0.
    assert evals[0]["step"] == 0 and evals[0]["eval/answer_acc"] == 0.0 and evals[0]["eval/scene_acc"] == 0.0


def test_full_training_mode_writes_a_full_bundle(workdir):
    cfg = _config(workdir, "full", trainable="full", eval={"every": 0}, data={"train": [str(workdir / "eval.jsonl")]},
                  **{"optim.max_steps": 1})
    assert train_main(["sft", "--config", str(cfg)]) == 0
    bundle = workdir / "full" / "bundle"
    assert (bundle / "model.safetensors").is_file() and not (bundle / "adapter_model.safetensors").exists()
    model = LeoVL.from_pretrained(bundle)  # a full bundle is its own base
    assert model.config.train_mode == "full"
    base = load_file(workdir / "base" / "model.safetensors")
    trained = load_file(bundle / "model.safetensors")
    key = next(k for k in base if "layers.0.self_attn.q_proj.weight" in k)
    assert not torch.equal(base[key], trained[key])  # the LLM weights themselves were trained


def test_eval_cli_generates_with_a_bundle(workdir, capsys):
    cfg = _config(workdir, "evalrun", eval={"generation": {"num_beams": 1, "max_new_tokens": 3}})
    bundle = workdir / "sft" / "bundle"
    if not bundle.is_dir():
        pytest.skip("needs the SFT test's bundle")
    out = workdir / "report.json"
    assert eval_main(["--config", str(cfg), "--bundle", str(bundle), "--limit", "4", "--no-ngram",
                      "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["count"] == 4 and set(report["tasks"]["qa"]) >= {"EM", "EM-R", "qtypes"}
    preds = [json.loads(x) for x in out.with_suffix(".predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 4 and all(isinstance(p["prediction"], str) for p in preds)
    assert "qa" in capsys.readouterr().out


def test_scannet_and_bag_sources_give_the_synthetic_map(workdir, tmp_path):
    frames = render_frames(generate_room(0), SCENES["synthetic_frames"], SCENES["synthetic_width"],
                           SCENES["synthetic_height"])
    write_scannet(frames, tmp_path / "scannet" / "scene0000_00")
    bag = write_bag(frames, tmp_path / "robot_bag")
    model = load_model(ModelSection(base=str(workdir / "base"), leovl=LEOVL), "adapter", 0, torch.device("cpu"))
    cfg = load_config(_config(workdir, "sources", scenes={
        "cache_dir": str(tmp_path / "cache"), "scannet_root": str(tmp_path / "scannet"), "scannet_stride": 1,
        "bags": [str(bag)], **SCENES}))
    store = SceneStore(model, cfg.scenes)
    maps = {sid: store.get(sid) for sid in ("synth_000000", "scene0000_00", bag_scene_id(bag))}
    keys = {sid: {tuple(c) for c in m.coords.tolist()} for sid, m in maps.items()}
    ref = keys["synth_000000"]
    for sid, k in keys.items():
        assert len(k ^ ref) <= 0.02 * len(ref), sid  # same frames and poses -> the same voxels
    assert store.built == 3 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 3
    again = SceneStore(model, cfg.scenes)
    m = again.get("scene0000_00")
    assert again.built == 0 and again.cache.hits == 1
    assert torch.equal(m.coords, maps["scene0000_00"].coords)
    assert np.allclose(m.means().numpy(), maps["scene0000_00"].means().numpy())
    with pytest.raises(ValueError, match="no source for scene 'scene9999_00'"):
        store.get("scene9999_00")


def test_outward_views_are_cached_apart_from_the_inward_loop(workdir, tmp_path):
    model, _ = _model_and_scenes(workdir)
    stores = {k: SceneStore(model, load_config(_config(workdir, f"outward{k}", scenes={
        "cache_dir": str(tmp_path / "cache"), **SCENES, "synthetic_outward_every": k})).scenes) for k in (0, 2)}
    maps = {k: store.get("synth_000000") for k, store in stores.items()}
    assert [s.built for s in stores.values()] == [1, 1]  # one path's map is never served for the other
    assert ":outward2|" in stores[2].recipe("synth_000000") and "outward" not in stores[0].recipe("synth_000000")
    assert {tuple(c) for c in maps[0].coords.tolist()} != {tuple(c) for c in maps[2].coords.tolist()}


def test_build_scenes_with_worker_processes_fills_the_cache_once(workdir, capsys):
    from leovl_ros.training.data_cli import main as data_main

    cfg = _config(workdir, "parallel", **{"scenes.cache_dir": str(workdir / "parallel_cache"),
                                          "data.task_repeat": {"qa": 2.0, "plan": 0.5}})
    assert load_config(cfg).data.task_repeat == {"qa": 2.0, "plan": 0.5}  # dict[str, float] keys parse
    assert data_main(["build-scenes", "--config", str(cfg), "--workers", "2"]) == 0
    assert "2 built, 0 already cached" in capsys.readouterr().out
    assert len(list((workdir / "parallel_cache").glob("synth_*.safetensors"))) == 2
    assert data_main(["build-scenes", "--config", str(cfg), "--workers", "2"]) == 0
    assert "0 built, 2 already cached" in capsys.readouterr().out
    model, _ = _model_and_scenes(workdir)  # the maps the workers wrote are the ones the trainer reads
    store = SceneStore(model, load_config(cfg).scenes)
    store.get("synth_000000")
    assert store.built == 0 and store.cache.hits == 1


def test_object_maps_spell_each_object_in_word_space(workdir):
    from leovl_ros.training.object_maps import word_vector

    cfg = load_config(_config(workdir, "objects", scenes={"cache_dir": str(workdir / "object_cache"),
                                                          "source": "objects"}))
    model = load_model(cfg.model, "full", 0, torch.device("cpu"))
    store = SceneStore(model, cfg.scenes)
    room = generate_room(1)
    vmap = store.get(room.scene_id)
    assert store.built == 0 and store.cache.misses == 1  # built from the scene graph, no rendering
    from leovl_ros.synth.catalog import CATEGORY_NAMES, COLOURS

    means = vmap.means()
    assert vmap.num_voxels <= len(room.objects)
    for o in room.objects:  # every object sits in its voxel and points at its two words
        row = int(np.flatnonzero((vmap.coords.numpy() == np.floor(o.center / vmap.voxel_size)).all(1))[0])
        for words, own in ((CATEGORY_NAMES, o.category), (tuple(COLOURS), o.colour)):
            sims = torch.stack([torch.cosine_similarity(means[row], word_vector(model, w), dim=0) for w in words])
            assert words.index(own) in sims.topk(3).indices.tolist(), (o, words)
    again = SceneStore(model, cfg.scenes)
    assert torch.equal(again.get(room.scene_id).coords, vmap.coords) and again.cache.hits == 1
    with torch.no_grad():  # other word embeddings -> other maps: the cache must not serve the old ones
        model.model.get_input_embeddings().weight.mul_(-1)
    changed = SceneStore(model, cfg.scenes)
    changed.get(room.scene_id)
    assert changed.cache.misses == 1
    with pytest.raises(ValueError, match="synthetic rooms only"):
        store.get("scene0000_00")


def test_a_bundle_continues_under_another_grid_only(workdir):
    bundle = workdir / "sft" / "bundle"
    if not bundle.is_dir():
        pytest.skip("needs the SFT test's bundle")
    section = ModelSection(base=str(workdir / "base"), bundle=str(bundle), leovl={"grid": {"pos_z": "none"}})
    model = load_model(section, "adapter", 0, torch.device("cpu"))
    assert model.config.grid.pos_z == "none" and model.config.grid.max_tokens == 64  # the rest is the bundle's
    for leovl in ({"voxel_size": 0.5}, {"grid": {"fourier_features": 8}}):
        with pytest.raises(ValueError, match="cannot change a bundle's model"):
            load_model(ModelSection(base=str(workdir / "base"), bundle=str(bundle), leovl=leovl), "adapter", 0,
                       torch.device("cpu"))


def test_floor_scenes_are_rendered_along_the_route_and_match_floor_records(workdir, tmp_path):
    from leovl_ros.synth.floors import generate_floor
    from leovl_ros.training.data_cli import main as data_main
    from leovl_ros.training.records import read_records

    assert data_main(["convert", "synthetic", "--floors", "--seeds", "5:6", "--out", str(tmp_path / "f.jsonl")]) == 0
    records = read_records([tmp_path / "f.jsonl"])
    assert {r.scene_id for r in records} == {"floor_000005"} and {r.qtype for r in records} >= {
        "floor_colour", "which_room", "room_existence", "floor_count"}
    assert data_main(["convert", "sqa3d", "a", "b", "--floors", "--out", str(tmp_path / "x.jsonl")]) == 2
    model, store = _model_and_scenes(workdir)
    vmap = store.get("floor_000005")
    assert "synthetic-floor:6x112x84" in store.recipe("floor_000005")
    floor = generate_floor(5)
    v = vmap.voxel_size
    for room in floor.rooms:  # truth from the generator: every room's objects are in the map
        seen = [o for o in (floor.objects[i] for i in room.object_ids)
                if bool(((vmap.centers >= torch.tensor(o.min) - v) & (vmap.centers <= torch.tensor(o.max) + v))
                        .all(1).any())]
        assert seen, room.type
    with pytest.raises(ValueError, match="floor_<seed>"):
        store.get("building_000005")
