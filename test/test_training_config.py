"""Training config from YAML, CLI overrides, task mixing and the scene feature cache."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from leovl_ros.voxel_map import VoxelMap
from leovl_ros.training.cache import SceneCache
from leovl_ros.training.config import describe, load_config
from leovl_ros.training.records import Record
from leovl_ros.training.sft import task_mix
from leovl_ros.training.train_cli import main as train_main
from leovl_ros.training.train_cli import parse_overrides


def _yaml(tmp_path, data) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
    return str(path)


def test_defaults_are_the_papers_and_numbers_parse(tmp_path):
    # PyYAML reads "3e-5" as a string (YAML 1.1); the loader must still get the number.
    cfg = load_config(_yaml(tmp_path, "output_dir: out\nmodel: {base: /models/qwen}\noptim: {lr: 1e-4}\n"))
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    o, d = cfg.optim, cfg.dpo
    assert (o.weight_decay, o.betas, o.warmup_steps, o.schedule, o.max_grad_norm, o.batch_size, o.grad_accum) == \
           (0.05, [0.9, 0.999], 400, "cosine", 5.0, 2, 5)
    assert (d.w_a, d.w_s, d.beta_a, d.beta_s, d.reference) == (0.5, 0.5, 0.2, 0.03, "none")
    assert d.nll == "sequence" and d.rephrase.enabled and d.rephrase.endpoint is None  # §3.3 / §4.4
    assert o.loss_norm == "token" and cfg.eval.gpt_score.endpoint is None  # our choice; GPT-Score off
    assert cfg.trainable == "adapter" and cfg.scenes.fusion.keyframe_translation_m == 0.1
    over = load_config(_yaml(tmp_path, {"output_dir": "o", "model": {"base": "b"}}),
                       parse_overrides(["optim.max_steps=7", "dpo.reference=initial", "scenes.bags=[a, b]"]))
    assert (over.optim.max_steps, over.dpo.reference, over.scenes.bags) == (7, "initial", ["a", "b"])


@pytest.mark.parametrize("data, message", [
    ({"output_dir": "o", "model": {"base": "b"}, "optim": {"lrr": 1}}, "unknown config key(s) optim.lrr"),
    ({"output_dir": "o", "model": {"bundle": "x"}}, "missing required key 'model.base'"),
    ({"model": {"base": "b"}}, "missing required key 'output_dir'"),
    ({"output_dir": "o", "model": {"base": "b"}, "optim": {"schedule": "step"}}, "optim.schedule must be"),
    ({"output_dir": "o", "model": {"base": "b"}, "optim": {"loss_norm": "batch"}}, "optim.loss_norm must be"),
    ({"output_dir": "o", "model": {"base": "b"}, "dpo": {"rephrase": {"endpont": "x"}}},
     "unknown config key(s) dpo.rephrase.endpont"),
    ({"output_dir": "o", "model": {"base": "b"}, "optim": {"batch_size": "two"}}, "optim.batch_size must be"),
    ({"output_dir": "o", "model": {"base": "b"}, "trainable": "lora"}, "trainable must be 'adapter' or 'full'"),
    ({"output_dir": "o", "model": {"base": "b"}, "scenes": {"fusion": {"depth_max": "far"}}},
     "scenes.fusion.depth_max must be a number"),
    ({"output_dir": "o", "model": {"base": "b"}, "log_with": ["tensorbord"]}, "log_with: ['tensorbord'] is not"),
    ({"output_dir": "o", "model": {"base": "b"}, "log_with": "tensorboard"}, "log_with must be of type list"),
])
def test_config_errors_name_the_key(tmp_path, data, message):
    with pytest.raises(ValueError) as info:
        load_config(_yaml(tmp_path, data))
    assert message in str(info.value)


def test_cli_reports_config_errors_and_shows_keys(tmp_path, capsys):
    assert train_main(["sft", "--config", _yaml(tmp_path, {"output_dir": "o", "model": {"base": "b"},
                                                          "optim": {"lrr": 1}})]) == 2
    assert "valid keys of optim." in capsys.readouterr().err
    assert train_main(["show-config"]) == 0
    shown = capsys.readouterr().out
    assert "  lr: 3e-05  # peak learning rate (Table 7)" in shown and "  beta_s: 0.03" in shown
    assert len(describe()) > 50
    with pytest.raises(ValueError, match="key=value"):
        parse_overrides(["optim.lr"])


def _records(task: str, n: int) -> list[Record]:
    return [Record(scene_id="s", task=task, instruction=f"q{i}?", response="a", source="t") for i in range(n)]


def test_task_mix_oversamples_deterministically():
    records = _records("qa", 10) + _records("plan", 4) + _records("dialogue", 6)
    mixed = task_mix(records, {"plan": 2.5, "dialogue": 0.5}, seed=1)
    counts = {t: sum(r.task == t for r in mixed) for t in ("qa", "plan", "dialogue")}
    assert counts == {"qa": 10, "plan": 10, "dialogue": 3}
    assert mixed == task_mix(records, {"plan": 2.5, "dialogue": 0.5}, seed=1)
    with pytest.raises(ValueError, match="must be >= 0"):
        task_mix(records, {"qa": -1}, seed=0)


def _map(encoder_id: str = "enc-A") -> VoxelMap:
    vmap = VoxelMap(feature_dim=8, voxel_size=0.2)
    vmap.fuse(np.random.default_rng(0).uniform(0, 2, (50, 3)).astype(np.float32), torch.randn(50, 8))
    vmap.metadata["encoder_id"] = encoder_id
    return vmap


def test_scene_cache_keys_and_recovery(tmp_path, caplog):
    cache = SceneCache(tmp_path)
    vmap = _map()
    path = cache.store(vmap, "scene0000_00", recipe="stride=10")
    loaded = cache.load("scene0000_00", "enc-A", 0.2, "stride=10")
    assert loaded is not None and torch.equal(loaded.coords, vmap.coords) and cache.hits == 1
    assert torch.allclose(loaded.means(), vmap.means())
    # Any part of the key changes the file: never a stale map.
    assert cache.load("scene0000_00", "enc-B", 0.2, "stride=10") is None
    assert cache.load("scene0000_00", "enc-A", 0.1, "stride=10") is None
    assert cache.load("scene0000_00", "enc-A", 0.2, "stride=5") is None
    assert cache.load("scene0001_00", "enc-A", 0.2, "stride=10") is None
    assert cache.misses == 4 and len(list(tmp_path.iterdir())) == 1
    path.write_bytes(path.read_bytes()[:100])  # a copy cut short
    assert cache.load("scene0000_00", "enc-A", 0.2, "stride=10") is None
    assert "unreadable cached scene" in caplog.text
    with pytest.raises(ValueError, match="no 'encoder_id' metadata"):
        cache.store(VoxelMap(feature_dim=8), "x")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.output_dir.startswith("runs/") and cfg.model.base


def test_trackers_auto_is_tensorboard_and_a_missing_one_is_an_error():
    import importlib.util

    from leovl_ros.training.trainer import trackers

    assert trackers(["auto"]) == ["tensorboard"] and trackers([]) == []  # tensorboard is a training dependency
    if importlib.util.find_spec("wandb") is None:
        with pytest.raises(ValueError, match="log_with: wandb not installed"):
            trackers(["tensorboard", "wandb"])
