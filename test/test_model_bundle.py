"""Adapter bundles and checkpoint loading: exact round trips, atomic writes, clear refusals."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from leovl_ros.condensed_grid import GridConfig
from leovl_ros.model.bundle import ADAPTER_WEIGHTS, CONFIG_FILE, HEADS_FILE
from leovl_ros.model.config import LeoVLConfig
from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.prompts import SceneQuery
from leovl_ros.model.tiny import random_scene, tiny_leovl, tiny_qwen25vl_config
from leovl_ros.model.tokenizer import load_qwen_tokenizer

Q = SceneQuery("object_caption", "Describe the object here.", anchor_center=(1.0, 1.0, 0.5))


@pytest.fixture(scope="module")
def tok():
    return load_qwen_tokenizer()


def _train(model, scene, steps=3, answer="A red chair."):
    """A few real optimiser steps so LoRA B, the MLP output layer and the anchor are non-trivial."""
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(steps):
        lp, n = model.sequence_logprobs([scene], [Q], [answer])
        opt.zero_grad()
        (-(lp / n).mean()).backward()
        opt.step()


def _logits(model, scene):
    """Logits of the last 8 positions: every scene token, LoRA and head weight reaches them."""
    with torch.no_grad():
        return model.logits(model.prepare_batch([scene, None], [Q, Q]), logits_to_keep=8)


def test_adapter_bundle_reproduces_logits_exactly(tmp_path, tok):
    model = tiny_leovl(seed=0, tokenizer=tok)
    scene = random_scene(model, 200, seed=1)
    _train(model, scene)
    path = tmp_path / "bundle"
    model.save_bundle(path)
    names = {p.name for p in path.iterdir()}
    assert {CONFIG_FILE, HEADS_FILE, ADAPTER_WEIGHTS, "adapter_config.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no temp dirs left behind

    fresh = tiny_leovl(seed=0, tokenizer=tok)
    assert not torch.equal(_logits(fresh, scene), _logits(model, scene))
    fresh.load_bundle(path)
    assert torch.equal(_logits(fresh, scene), _logits(model, scene))
    assert fresh.num_trainable_parameters() == model.num_trainable_parameters()

    # hot swap back and forth on a live model, and overwrite an existing bundle
    _train(model, scene, steps=1)
    model.save_bundle(path)
    fresh.load_bundle(path)
    assert torch.equal(_logits(fresh, scene), _logits(model, scene))
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_bundle_with_other_lora_rank_and_settings(tmp_path, tok):
    model = tiny_leovl(seed=0, tokenizer=tok, lora_r=4, lora_alpha=8, fourier_mlp_hidden=32, anchor_radius=0.3)
    scene = random_scene(model, 200, seed=1)
    _train(model, scene)
    model.save_bundle(tmp_path / "r4")
    live = tiny_leovl(seed=0, tokenizer=tok)  # r=16 by default: the bundle's config wins
    live.load_bundle(tmp_path / "r4")
    assert live.config.lora_r == 4 and live.config.anchor_radius == 0.3
    assert torch.equal(_logits(live, scene), _logits(model, scene))


def test_bundles_from_before_learned_fourier_w_keep_their_width_and_fixed_w(tmp_path, tok):
    """A bundle written before W could learn: its config has no ``fourier_w`` and a stored
    width, its heads file no W. It loads as "fixed" at that width and gives the same logits."""
    model = tiny_leovl(seed=0, tokenizer=tok, fourier_w="fixed", grid=GridConfig(fourier_features=8))
    scene = random_scene(model, 200, seed=1)
    _train(model, scene)
    model.save_bundle(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / CONFIG_FILE).read_text())
    del cfg["fourier_w"]  # the file as the older code wrote it
    (tmp_path / "old" / CONFIG_FILE).write_text(json.dumps(cfg))
    live = tiny_leovl(seed=0, tokenizer=tok)  # a new model: learned W, F = d
    assert live.config.fourier_w == "learned" and live.config.fourier_dim == 64
    live.load_bundle(tmp_path / "old")
    assert live.config.fourier_w == "fixed" and live.config.fourier_dim == 16
    assert torch.equal(_logits(live, scene), _logits(model, scene))
    # A learned W is saved with the heads and comes back exactly.
    learned = tiny_leovl(seed=0, tokenizer=tok)
    _train(learned, scene, steps=4)
    learned.save_bundle(tmp_path / "new")
    live.load_bundle(tmp_path / "new")
    assert live.config.fourier_w == "learned" and torch.equal(live.heads.fourier_w, learned.heads.fourier_w)
    assert torch.equal(_logits(live, scene), _logits(learned, scene))


def test_from_pretrained_local_checkpoint_plus_bundle(tmp_path, tok):
    torch.manual_seed(2)
    base_dir = tmp_path / "base"  # a plain Qwen2.5-VL checkpoint, as published ones are
    Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config()).save_pretrained(base_dir, safe_serialization=True)
    model = LeoVL.from_pretrained(base_dir, tokenizer=tok)
    assert model.config.base_model == str(base_dir) and model.config.hidden_size == 64
    scene = random_scene(model, 200, seed=1)
    _train(model, scene)
    model.save_bundle(tmp_path / "adapter")
    loaded = LeoVL.from_pretrained(base_dir, bundle=tmp_path / "adapter", tokenizer=tok)
    assert torch.equal(_logits(loaded, scene), _logits(model, scene))
    assert loaded.encoder.encoder_id == model.encoder.encoder_id
    assert not torch.equal(_logits(LeoVL.from_pretrained(base_dir, tokenizer=tok), scene), _logits(model, scene))


def test_full_mode_bundle_carries_its_weights(tmp_path, tok):
    model = tiny_leovl(seed=3, tokenizer=tok)
    model.set_trainable("full")
    scene = random_scene(model, 200, seed=1)
    _train(model, scene)
    model.save_bundle(tmp_path / "full")
    assert (tmp_path / "full" / "model.safetensors").is_file()
    loaded = LeoVL.from_pretrained(tmp_path / "full", tokenizer=tok)  # no separate base needed
    assert loaded.config.train_mode == "full" and loaded.peft_model is None
    assert torch.equal(_logits(loaded, scene), _logits(model, scene))
    # a live adapter-mode model of the same size can hot-load it too
    live = tiny_leovl(seed=0, tokenizer=tok)
    live.load_bundle(tmp_path / "full")
    assert torch.equal(_logits(live, scene), _logits(model, scene))


def test_mismatched_or_damaged_bundles_fail_clearly(tmp_path, tok):
    model = tiny_leovl(seed=0, tokenizer=tok)
    model.save_bundle(tmp_path / "b")
    reference = _logits(model, None)

    other_base = tiny_leovl(seed=1, tokenizer=tok)
    with pytest.raises(ValueError, match="trained on base model 'tiny-random-h64-s0'"):
        other_base.load_bundle(tmp_path / "b")
    smaller = tiny_leovl(seed=0, tokenizer=tok, hidden_size=32)
    with pytest.raises(ValueError, match="hidden size 64"):
        smaller.load_bundle(tmp_path / "b")
    with pytest.raises(ValueError, match="not a directory"):
        model.load_bundle(tmp_path / "missing")

    heads = tmp_path / "b" / HEADS_FILE
    heads.write_bytes(heads.read_bytes()[:40])  # truncated
    with pytest.raises(ValueError, match="truncated"):
        model.load_bundle(tmp_path / "b")
    model.save_bundle(tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / CONFIG_FILE).read_text())
    cfg["lora_r"] = 8  # config no longer matches the saved LoRA tensors
    (tmp_path / "b" / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match its LoRA config"):
        model.load_bundle(tmp_path / "b")
    assert torch.equal(_logits(model, None), reference)  # failed loads leave the live model untouched
    (tmp_path / "b" / CONFIG_FILE).write_text("{}")
    with pytest.raises(ValueError, match="required keys"):
        model.load_bundle(tmp_path / "b")
    with pytest.raises(ValueError, match="not valid JSON"):
        LeoVLConfig.from_json("{")
    with pytest.raises(ValueError, match="unknown keys"):
        LeoVLConfig.from_json(json.dumps({**cfg, "colour": 1}))


def test_from_pretrained_never_reaches_network_by_default(tmp_path, tok):
    with pytest.raises(ValueError, match="allow_network"):
        LeoVL.from_pretrained("Qwen/Qwen2.5-VL-7B-Instruct-not-cached", tokenizer=tok)
    with pytest.raises(ValueError, match="checkpoint"):
        LeoVL.from_pretrained(tmp_path, tokenizer=tok)  # empty directory
