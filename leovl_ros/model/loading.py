"""The one way a LEO-VL model is loaded: base (checkpoint, full bundle or ``tiny-random``) +
optional adapter bundle + run-time overrides, on a device in a dtype.

The node (``ros/model_source.py``: parameter errors), training (``training/modeling.py``:
recipe sections) and :meth:`LeoVL.from_pretrained` all come here; only the translation of
their own inputs and errors stays with them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from . import bundle as bundle_io
from .config import ConfigOverrides, LeoVLConfig
from .leovl import LeoVL
from .tiny import tiny_qwen25vl_config
from .tokenizer import load_qwen_tokenizer

__all__ = ["DTYPES", "TINY_RANDOM", "load_model", "torch_dtype"]

TINY_RANDOM = "tiny-random"  # a seeded random tiny Qwen2.5-VL (hidden 64) with the real tokenizer
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | torch.dtype, device: str | torch.device = "cpu") -> torch.dtype:
    """A dtype by name; 'auto' = bfloat16 on a CUDA device that supports it (paper: bf16
    training), else float32."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        device = torch.device(device)
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ValueError(f"dtype must be auto or one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def load_model(base: str | Path, bundle: str | Path | None = None, *, device: str | torch.device = "cpu",
               dtype: str | torch.dtype = "float32", allow_network: bool = False,
               new_config: Mapping[str, Any] | None = None, overrides: ConfigOverrides | None = None,
               train_mode: str | None = None, seed: int = 0, tokenizer=None) -> LeoVL:
    """A LeoVL model, eval mode, on ``device``.

    ``base``: a Qwen2.5-VL checkpoint directory (hub id with ``allow_network``), a full bundle
    (its own base), or ``tiny-random``. ``bundle``: an adapter bundle loaded on top.
    ``new_config``: LeoVLConfig keys of a model that loads no bundle (its heads start fresh).
    ``overrides``: run-time settings that hold across later bundle loads (the node's
    parameters). ``train_mode``: 'adapter' | 'full', switched to after loading.
    Weights are read with safetensors only; every failure is a ValueError.
    """
    device = torch.device(device)
    dtype = torch_dtype(dtype, device)
    if str(base) == TINY_RANDOM:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hf = Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config())
        hf = hf.to(dtype=dtype)
    else:
        hf = bundle_io.load_qwen(Path(base), dtype, allow_network)
    fresh = {**(new_config or {}), "base_model": str(base), "hidden_size": hf.config.text_config.hidden_size}
    if train_mode is not None:
        fresh["train_mode"] = train_mode
    model = LeoVL(hf.to(device), tokenizer or load_qwen_tokenizer(), LeoVLConfig.from_dict(fresh), seed=seed,
                  overrides=overrides)
    if bundle is not None:
        model.load_bundle(bundle)
    elif str(base) != TINY_RANDOM and bundle_io.is_full_bundle(Path(base)):
        model.load_bundle(base, weights_loaded=True)
    if train_mode is not None and model.config.train_mode != train_mode:
        model.set_trainable(train_mode)
    return model
