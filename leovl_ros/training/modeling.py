"""Loading the model to train: a Qwen2.5-VL base (optionally created at random) + bundle."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from leovl_ros.model import loading
from leovl_ros.model.config import ConfigOverrides, LeoVLConfig
from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.loading import torch_dtype
from leovl_ros.model.tiny import tiny_qwen25vl_config

from .config import ModelSection


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' = bfloat16 on a CUDA device that supports it (paper: bf16 training), else float32."""
    if name not in ("auto", "float32", "bfloat16"):
        raise ValueError(f"model.dtype must be auto | float32 | bfloat16, got {name!r}")
    return torch_dtype(name, device)


def save_pretrained_atomic(model: Qwen2_5_VLForConditionalGeneration, path: str | os.PathLike) -> Path:
    """``model.save_pretrained(path)`` as safetensors via a temp folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def create_random_base(path: str | os.PathLike, tiny_kwargs: dict, seed: int = 0) -> Path:
    """Save a randomly initialised Qwen2.5-VL (``tiny_qwen25vl_config(**tiny_kwargs)``) at
    ``path`` as safetensors, atomically; the same seed gives the same weights."""
    try:
        qwen_config = tiny_qwen25vl_config(**tiny_kwargs)
    except TypeError as exc:
        raise ValueError(f"model.init_random: {exc}") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(qwen_config)
    return save_pretrained_atomic(model, path)


# Grid settings that change no weight shape: a trained bundle can continue under another one
# (the paper's ablations branching off a shared earlier stage; fine-tuning on whole floors
# under token_selection: question or coarsen).
_BUNDLE_GRID_KEYS = ("pos_z", "grid", "max_tokens", "sample_seed", "token_selection", "question_share")


def _bundle_overrides(config: LeoVLConfig, leovl: dict) -> ConfigOverrides:
    """``model.leovl: {grid: {...}}`` on top of a bundle's config, as run-time overrides (saved
    with the trained bundle). Other keys may only repeat the bundle's own values (a config
    shared by the stages before and after)."""
    current = dataclasses.asdict(config)
    grid = dict(leovl.get("grid", {}))
    changed = sorted(k for k, v in leovl.items() if k != "grid" and current.get(k, v) != v)
    changed += sorted(f"grid.{k}" for k, v in grid.items()
                      if k not in _BUNDLE_GRID_KEYS and current["grid"].get(k, v) != v)
    if changed:
        raise ValueError(f"model.leovl keys {changed} cannot change a bundle's model (its config and weights "
                         f"belong together); with model.bundle only grid.{{{', '.join(_BUNDLE_GRID_KEYS)}}} "
                         "may differ from the bundle's config")
    unknown = sorted(set(leovl) - set(current)) + sorted(f"grid.{k}" for k in set(grid) - set(current["grid"]))
    if unknown:
        raise ValueError(f"unknown model.leovl keys {unknown}")
    return ConfigOverrides(grid={k: grid[k] for k in _BUNDLE_GRID_KEYS if k in grid})


def load_model(section: ModelSection, trainable: str, seed: int, device: torch.device) -> LeoVL:
    """The model to train, on ``device``, in ``trainable`` mode ('adapter' | 'full')."""
    base = Path(section.base)
    if section.init_random is not None and not base.exists():
        create_random_base(base, section.init_random, seed)
    dtype = resolve_dtype(section.dtype, device)
    if not section.bundle:
        return loading.load_model(base, device=device, dtype=dtype, allow_network=section.allow_network,
                                  new_config=section.leovl, train_mode=trainable, seed=seed)
    model = loading.load_model(base, section.bundle, device=device, dtype=dtype,
                               allow_network=section.allow_network, train_mode=trainable)
    model.set_overrides(_bundle_overrides(model.stored_config, section.leovl))
    return model
