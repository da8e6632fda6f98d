"""leovl-tiny: vision-tower pretraining, export, and the bundled model itself."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from leovl_ros.model.encoder import CELL_PX
from leovl_ros.training.vision_pretrain import (CATEGORY_CLASSES, COLOUR_CLASSES, VisionPretrainConfig, align_word_embeddings,
                                      calibrate_output, cell_label_shares, class_directions, class_weights,
                                      class_words, labelled_frames, pretrain_vision_tower, soft_cross_entropy)

BUNDLED = Path(__file__).resolve().parents[1] / "leovl_ros" / "bundled_models" / "leovl-tiny"


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_cell_label_shares_count_pixels_per_cell():
    inst = np.full((2 * CELL_PX, 2 * CELL_PX), -1, np.int32)
    inst[:CELL_PX, :CELL_PX] = 0  # cell (0, 0): all object 0
    inst[:CELL_PX, CELL_PX:CELL_PX + 7] = 1  # cell (0, 1): a quarter object 1
    cat, col = cell_label_shares(inst, np.array([3, 5]), np.array([2, 4]), (2, 2))
    assert cat.shape == (4, len(CATEGORY_CLASSES)) and col.shape == (4, len(COLOUR_CLASSES))
    np.testing.assert_allclose(cat.sum(1), 1.0)
    assert cat[0, 3] == 1.0 and col[0, 2] == 1.0
    assert cat[1, 5] == pytest.approx(0.25) and cat[1, 0] == pytest.approx(0.75)
    assert col[1, 4] == pytest.approx(0.25) and col[1, 0] == pytest.approx(0.75)
    assert cat[2, 0] == cat[3, 0] == 1.0  # background only


def test_cell_label_shares_reject_an_image_off_the_cell_grid():
    with pytest.raises(ValueError, match="multiples of 28"):
        cell_label_shares(np.zeros((50, 56), np.int32), np.zeros(1, np.int64), np.zeros(1, np.int64), (2, 2))


def test_class_balance_weighs_rare_categories_up_and_is_off_at_zero():
    C = len(CATEGORY_CLASSES)
    cat = np.zeros((10, C), np.float32)
    cat[:8, 0] = 1.0  # 8 background cells
    cat[8:, 1] = 1.0  # 2 cells of category 1
    frames = [(None, cat, None)]
    assert class_weights(frames, 0.0) is None
    w = class_weights(frames, 0.5)
    assert w[1] == pytest.approx(2.0 * w[0])  # 4x rarer -> 2x the weight at balance 0.5
    assert w[2] > w[1]  # never seen: counted as one pixel share, the largest weight

    logits, target = torch.randn(10, C), torch.from_numpy(cat)
    assert soft_cross_entropy(logits, target, torch.ones(C)) == pytest.approx(float(soft_cross_entropy(logits, target)))
    # Weighted: the category-1 cells count as much as the 4x more background cells.
    per_cell = -(target * logits.log_softmax(-1)).sum(-1)
    expected = (w[0] * per_cell[:8].sum() + w[1] * per_cell[8:].sum()) / (8 * w[0] + 2 * w[1])
    assert soft_cross_entropy(logits, target, w) == pytest.approx(float(expected), rel=1e-5)


def test_vision_pretraining_lowers_the_probe_loss_and_centres_the_output_on_background():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from leovl_ros.model.tiny import tiny_qwen25vl_config

    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config(hidden_size=32, heads=2, kv_heads=1,
                                                                     vision_hidden=32))
    before = model.model.visual.merger.mlp[-1].weight.clone()
    cfg = VisionPretrainConfig(seeds=(0, 2), frames_per_room=4, width=112, height=84, steps=40,
                               frames_per_step=4, lr=5e-3)
    frames = labelled_frames(cfg, progress=False)
    out = pretrain_vision_tower(model.model.visual, cfg, progress=False, frames=frames)
    assert out["loss_end"] < 0.8 * out["loss_start"]
    assert out["background_norm"] > 0 and out["scale"] > 0
    # Calibrated: background cells average to zero and object cells have mean norm 1, so a
    # second calibration on the same frames changes (almost) nothing.
    again = calibrate_output(model.model.visual, frames)
    assert again["background_norm"] < 1e-4 and again["scale"] == pytest.approx(1.0, abs=1e-4)

    # Class words start at their class's direction in the feature space (tied: output rows too).
    directions = class_directions(model.model.visual, frames, steps=30)
    assert directions["category"].shape == (len(CATEGORY_CLASSES), 32)
    assert directions["colour"].norm(dim=1).sub(1).abs().max() < 1e-5
    from leovl_ros.model.tokenizer import load_qwen_tokenizer

    tok = load_qwen_tokenizer()
    embed = model.get_input_embeddings()
    untouched = embed.weight[tok.encode(" the", add_special_tokens=False)[0]].clone()
    words = align_word_embeddings(embed, tok, directions, norm=0.5)
    assert {" red", "red", " grey", " bed", " beds"} <= set(words) and "background" not in words
    red = tok.encode(" red", add_special_tokens=False)[0]
    assert torch.allclose(embed.weight[red], 0.5 * directions["colour"][COLOUR_CLASSES.index("red")])
    assert torch.equal(model.lm_head.weight[red], embed.weight[red])
    assert torch.equal(embed.weight[tok.encode(" the", add_special_tokens=False)[0]], untouched)

    assert not torch.equal(before, model.model.visual.merger.mlp[-1].weight)
    assert not model.model.visual.training
    with pytest.raises(ValueError, match="multiples of 28"):
        pretrain_vision_tower(model.model.visual, VisionPretrainConfig(width=100), progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: this checks the path make "
                                                           "tiny-model takes on a GPU machine")
def test_vision_pretraining_on_the_gpu_lowers_the_loss_and_calibrates_in_place():
    from transformers import Qwen2_5_VLForConditionalGeneration

    from leovl_ros.model.tiny import tiny_qwen25vl_config

    torch.manual_seed(0)
    visual = Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config(hidden_size=32, heads=2, kv_heads=1,
                                                                      vision_hidden=32)).model.visual.cuda()
    cfg = VisionPretrainConfig(seeds=(0, 2), frames_per_room=4, width=112, height=84, steps=40,
                               frames_per_step=4, lr=5e-3, class_balance=0.5)
    frames = labelled_frames(cfg, progress=False)
    out = pretrain_vision_tower(visual, cfg, progress=False, frames=frames)
    assert out["loss_end"] < 0.8 * out["loss_start"]
    assert next(visual.parameters()).is_cuda
    again = calibrate_output(visual, frames)
    assert again["background_norm"] < 1e-3 and again["scale"] == pytest.approx(1.0, abs=1e-3)


def test_base_command_builds_the_tower_size_asked_for_and_records_it(tmp_path, capsys):
    from transformers import AutoConfig

    from leovl_ros.training.tiny_model import TINY_ARCH, main

    args = ["base", "--out", str(tmp_path / "base"), "--seeds", "0:2", "--frames-per-room", "2", "--width", "112",
            "--height", "84", "--steps", "2", "--frames-per-step", "2", "--vision-hidden", "48", "--vision-depth", "1"]
    assert main(args + ["--outward-every", "2"]) == 0
    vision = AutoConfig.from_pretrained(tmp_path / "base").vision_config
    assert (vision.hidden_size, vision.depth, vision.num_heads) == (48, 1, TINY_ARCH["vision_heads"])
    info = json.loads((tmp_path / "base" / "leovl_tiny_base.json").read_text())
    assert info["arch"] == {**TINY_ARCH, "vision_hidden": 48, "vision_depth": 1}
    assert info["vision_pretrain"]["outward_every"] == 2
    capsys.readouterr()
    assert main(args + ["--vision-heads", "5"]) == 2  # 48 is not divisible by 5: one line, no traceback
    assert capsys.readouterr().err.count("\n") == 1


def test_export_writes_float16_weights_that_answer_like_the_original(tmp_path):
    from leovl_ros.model.leovl import LeoVL
    from leovl_ros.model.prompts import SceneQuery
    from leovl_ros.model.tiny import random_scene, tiny_leovl
    from leovl_ros.training.tiny_model import export

    model = tiny_leovl(seed=3, train_mode="full")
    model.save_bundle(tmp_path / "trained")
    export(tmp_path / "trained", tmp_path / "shipped", {"command": "make tiny-model", "train_seeds": "1:2"})
    shipped = tmp_path / "shipped"
    prov = json.loads((shipped / "training.json").read_text())
    assert prov == {"command": "make tiny-model", "train_seeds": "1:2"}
    from safetensors import safe_open

    with safe_open(str(shipped / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    loaded = LeoVL.from_pretrained(shipped)
    assert loaded.config.base_model == "leovl-tiny" and loaded.dtype == torch.float32
    query = SceneQuery(task="qa", instruction="What colour is the chair?")
    # Same points and features; each map carries its own model's encoder id.
    a = model.score([random_scene(model, seed=1)], [query], ["red"])
    b = loaded.score([random_scene(loaded, seed=1)], [query], ["red"])
    assert torch.allclose(a, b, atol=0.05)


def test_export_refuses_an_adapter_bundle(tmp_path):
    from leovl_ros.model.tiny import tiny_leovl
    from leovl_ros.training.tiny_model import export

    tiny_leovl(seed=0).save_bundle(tmp_path / "adapter")
    with pytest.raises(ValueError, match="not a full bundle"):
        export(tmp_path / "adapter", tmp_path / "out", {})


def test_class_words_cover_plurals_and_synonyms():
    assert class_words("shelf") == ["shelf", " shelf", "shelves", " shelves"]
    assert class_words("gray") == ["gray", " gray", "grey", " grey"]


@pytest.fixture(scope="module")
def mapped_rooms():
    """The bundled model as the node loads it, and two held-out rooms it mapped the way its
    training stage did (recipes/leovl_tiny_sft.yaml's frames): {seed: (room, voxel map)}."""
    from leovl_ros.ros.model_source import BUNDLED_MODEL, load_model, resolve_model
    from leovl_ros.synth.rooms import generate_room
    from leovl_ros.training.config import load_config
    from leovl_ros.scans.frames import synthetic_frames
    from leovl_ros.training.scenes import fuse_frames
    from leovl_ros.training.tiny_model import FLOOR_SEEDS, SEEDS

    assert BUNDLED.is_dir(), "leovl_ros/bundled_models/leovl-tiny is missing: run `make tiny-model`"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model = load_model(resolve_model(BUNDLED_MODEL))
    sc = load_config(Path(__file__).resolve().parents[1] / "recipes" / "leovl_tiny_sft.yaml").scenes
    rooms = {}
    for seed in (int(SEEDS["eval"].split(":")[0]) + i for i in (2, 3)):
        rooms[seed] = (generate_room(seed), model.new_voxel_map())
        fuse_frames(model.encoder, rooms[seed][1], synthetic_frames(seed, sc.synthetic_frames, sc.synthetic_width,
                                                                    sc.synthetic_height))
    torch.set_num_threads(n)
    return model, rooms


def test_the_bundled_model_is_small_documented_and_answers_in_kind(mapped_rooms):
    """The shipped leovl-tiny: float16 safetensors under 50 MB, its training recorded, and,
    asked about a room it mapped, each question type answered with the right kind of word."""
    from leovl_ros.model.config import GenerationConfig
    from leovl_ros.model.prompts import SceneQuery
    from leovl_ros.synth.catalog import CATEGORY_NAMES, COLOURS
    from leovl_ros.synth.qa import qa_records
    from leovl_ros.training.tiny_model import FLOOR_SEEDS, SEEDS

    files = list(BUNDLED.iterdir())
    assert sum(f.stat().st_size for f in files) <= 50e6
    assert not [f for f in files if f.suffix in (".bin", ".pt", ".pth", ".pkl")]  # safetensors only
    prov = json.loads((BUNDLED / "training.json").read_text())
    assert prov["room_seeds"] == SEEDS and any("train_cli sft" in c for c in prov["commands"])
    assert any("train_cli dpo" in c for c in prov["commands"]) and prov["shipped_stage"] == "question_scorer"
    assert any("training.question_scorer" in c for c in prov["commands"]) and prov["floor_seeds"] == FLOOR_SEEDS

    model, rooms = mapped_rooms
    assert model.config.train_mode == "full" and model.config.base_model == "leovl-tiny"
    room, scene = next(iter(rooms.values()))
    kinds = {"colour": set(COLOURS), "existence": {"yes", "no"}, "count": {str(n) for n in range(10)},
             "nearest": set(CATEGORY_NAMES)}
    asked = [r for r in qa_records(room, np.random.default_rng(0), per_type=2) if r["qtype"] in kinds]
    answers = model.generate([scene] * len(asked), [SceneQuery("qa", r["instruction"]) for r in asked],
                             GenerationConfig(num_beams=1, max_new_tokens=6, repetition_penalty=1.0))
    assert {r["qtype"] for r in asked} == set(kinds)
    for r, a in zip(asked, answers):
        assert a in kinds[r["qtype"]], (r["instruction"], a)


def test_the_bundled_model_reads_colours_from_the_room_it_mapped(mapped_rooms):
    """Colour questions about two held-out rooms, each answered with its own map and with the
    other room's (right format, wrong content): only the room's own map gives its colours."""
    from leovl_ros.model.config import GenerationConfig
    from leovl_ros.model.prompts import SceneQuery
    from leovl_ros.synth.qa import colour_qa
    from leovl_ros.training.metrics import exact_match_scores

    model, rooms = mapped_rooms
    (a, (room_a, map_a)), (b, (room_b, map_b)) = rooms.items()
    asked = [(r, own, other) for room, own, other in ((room_a, map_a, map_b), (room_b, map_b, map_a))
             for r in colour_qa(room, np.random.default_rng(0), 20)]
    queries = [SceneQuery("qa", r["instruction"]) for r, _, _ in asked]
    gen = GenerationConfig(num_beams=1, max_new_tokens=4, repetition_penalty=1.0)
    em = {}
    for cond, col in (("own", 1), ("other", 2)):
        answers = model.generate([x[col] for x in asked], queries, gen)
        em[cond] = exact_match_scores(answers, [r["answers"] for r, _, _ in asked])["overall"]["EM"]
    assert len(asked) >= 15 and em["own"] >= 40 and em["own"] >= em["other"] + 20, em


def test_the_bundled_model_keeps_its_fourier_width_and_fixed_w_and_answers_as_before(mapped_rooms):
    """leovl-tiny was trained before W could learn and before F = d: its stored config (no
    ``fourier_w``, 32 frequencies) loads as a fixed W at that width, its scene tokens are the
    formula it was trained with, and it gives the answers it gave before (pinned from the
    code at that time: greedy answers to a held-out room's questions, and the tokens' sum)."""
    import math

    from leovl_ros.model.config import GenerationConfig
    from leovl_ros.model.prompts import SceneQuery
    from leovl_ros.synth.qa import qa_records

    model, rooms = mapped_rooms
    assert model.config.fourier_w == "fixed" and model.config.fourier_dim == 64
    assert "fourier_w" not in model.heads.state_dict() and model.heads.fourier_w.dtype == torch.float64
    room, scene = rooms[min(rooms)]
    grid = model.scene_grid(scene)
    W = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cycles = grid.xy.double() @ W.T
    angle = (2 * math.pi * (cycles - cycles.round())).float()
    with torch.no_grad():
        expected = grid.features + model.heads.fourier_mlp(torch.cat([angle.cos(), angle.sin()], 1) / math.sqrt(64))
        tokens = model.scene_tokens(scene)
    assert torch.equal(tokens, expected)
    assert float(tokens.double().sum()) == pytest.approx(104.01324400978046, abs=1e-3)
    asked = qa_records(room, np.random.default_rng(0), per_type=2)
    answers = model.generate([scene] * len(asked), [SceneQuery("qa", r["instruction"]) for r in asked],
                             GenerationConfig(num_beams=1, max_new_tokens=6, repetition_penalty=1.0))
    assert answers == ["cyan", "green", "2", "1", "no", "no", "bottle", "table", "right", "right", "box", "chair"]
