"""Loading the model to train: a Qwen2.5-VL base (optionally created at random) + bundle."""
from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from leovl_ros.model.config import LeoVLConfig
from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.tiny import tiny_qwen25vl_config
from leovl_ros.model.tokenizer import load_qwen_tokenizer

from .config import ModelSection

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' = bfloat16 on a CUDA device that supports it (paper: bf16 training), else float32."""
    if name == "auto":
        bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if bf16 else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"model.dtype must be auto | float32 | bfloat16, got {name!r}")
    return _DTYPES[name]


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
# (the paper's ablations branching off a shared earlier stage).
_BUNDLE_GRID_KEYS = ("pos_z", "grid", "max_tokens", "sample_seed")


def _override_grid(model: LeoVL, leovl: dict) -> None:
    """Apply ``model.leovl: {grid: {...}}`` on top of a bundle's config. Other keys may only
    repeat the bundle's own values (a config shared by the stages before and after)."""
    current = dataclasses.asdict(model.config)
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
    model.config.grid = dataclasses.replace(model.config.grid, **{k: grid[k] for k in _BUNDLE_GRID_KEYS if k in grid})


def load_model(section: ModelSection, trainable: str, seed: int, device: torch.device) -> LeoVL:
    """The model to train, on ``device``, in ``trainable`` mode ('adapter' | 'full')."""
    base = Path(section.base)
    if section.init_random is not None and not base.exists():
        create_random_base(base, section.init_random, seed)
    dtype = resolve_dtype(section.dtype, device)
    if section.bundle:
        model = LeoVL.from_pretrained(base, bundle=section.bundle, device=device, dtype=dtype,
                                      allow_network=section.allow_network)
        _override_grid(model, section.leovl)
        if model.config.train_mode != trainable:
            model.set_trainable(trainable)
        return model
    try:
        hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(base), dtype=dtype, local_files_only=not section.allow_network, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot load the base model {str(base)!r}: {exc}") from exc
    config = LeoVLConfig.from_dict({**section.leovl, "base_model": str(base),
                                    "hidden_size": hf.config.text_config.hidden_size, "train_mode": trainable})
    return LeoVL(hf.to(device), load_qwen_tokenizer(), config, seed=seed)
