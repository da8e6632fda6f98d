"""Adapter bundles: one directory, safetensors only, written atomically.

    leovl_config.json          LeoVLConfig (voxel size, token cap, position modes, base id, ...)
    leovl_heads.safetensors    Fourier MLP + anchor; metadata: format, base fingerprint, hidden size
    adapter_config.json        } train_mode 'adapter': peft LoRA files
    adapter_model.safetensors  }
    config.json                } train_mode 'full': a complete Qwen2.5-VL checkpoint
    model*.safetensors         } (so the bundle is also a loadable base)

The base check uses a fingerprint of the base weights (bf16-rounded slices of the token
embedding and patch embedding) rather than the base's path or hub id, which differ between
machines for the same checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from .config import LeoVLConfig
from .scene_tokens import SceneHeads

if TYPE_CHECKING:
    from .leovl import LeoVL

CONFIG_FILE = "leovl_config.json"
HEADS_FILE = "leovl_heads.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FORMAT = "leovl_ros.bundle"
VERSION = "1"


def is_full_bundle(path: Path) -> bool:
    """True for a bundle that carries its own base weights (train_mode 'full')."""
    weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    return path.is_dir() and (path / CONFIG_FILE).is_file() and weights


def read_config(path: Path) -> LeoVLConfig:
    if not path.is_dir():
        raise ValueError(f"adapter bundle {path} is not a directory")
    if not (path / CONFIG_FILE).is_file():
        raise ValueError(f"{path} is not a LEO-VL bundle: {CONFIG_FILE} is missing")
    return LeoVLConfig.from_json((path / CONFIG_FILE).read_text())


def _read_heads(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    file = path / HEADS_FILE
    if not file.is_file():
        raise ValueError(f"bundle {path} has no {HEADS_FILE}")
    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{file} is not a readable safetensors file (truncated?): {exc}") from exc
    if meta.get("format") != FORMAT:
        raise ValueError(f"{file} was not written by leovl_ros (format {meta.get('format')!r})")
    return tensors, meta


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move a finished temp dir into place; an existing bundle is swapped out, then deleted."""
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / path.name)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_bundle(leovl: "LeoVL", path: Path) -> None:
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / CONFIG_FILE).write_text(leovl.config.to_json())
        meta = {"format": FORMAT, "version": VERSION, "base_model": leovl.config.base_model,
                "base_fingerprint": leovl.base_fingerprint, "hidden_size": str(leovl.config.hidden_size),
                "train_mode": leovl.config.train_mode}
        heads = {k: v.detach().to("cpu").contiguous() for k, v in leovl.heads.state_dict().items()}
        save_file(heads, str(tmp / HEADS_FILE), metadata=meta)
        if leovl.peft_model is not None:
            leovl.peft_model.save_pretrained(str(tmp), safe_serialization=True)
        else:
            leovl.model.save_pretrained(str(tmp), safe_serialization=True)
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _expected_lora_shapes(model: torch.nn.Module, config: LeoVLConfig) -> dict[str, tuple[int, ...]]:
    """Keys and shapes peft saves for ``config``'s LoRA on ``model`` (LoRA-wrapped or not)."""
    pattern = re.compile(config.lora_target_modules)
    shapes = {}
    for name, module in model.named_modules():
        if pattern.fullmatch(name) and hasattr(module, "in_features"):
            key = f"base_model.model.{name}"
            shapes[f"{key}.lora_A.weight"] = (config.lora_r, module.in_features)
            shapes[f"{key}.lora_B.weight"] = (module.out_features, config.lora_r)
    return shapes


def _check_adapter(path: Path, adapter: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> None:
    got = {k: tuple(v.shape) for k, v in adapter.items()}
    if got != expected:
        missing, extra = sorted(set(expected) - set(got))[:3], sorted(set(got) - set(expected))[:3]
        wrong = [k for k in set(got) & set(expected) if got[k] != expected[k]][:3]
        raise ValueError(f"{path / ADAPTER_WEIGHTS} does not match its LoRA config on this base: "
                         f"missing {missing}, unexpected {extra}, wrong shapes {wrong}")


def _check_finite(file: Path, tensors: dict[str, torch.Tensor]) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ValueError(f"{file} holds NaN/inf weights ({len(bad)} tensors, e.g. {bad[0]}): a diverged or "
                         "corrupted training run")


def check_full_config(path: Path, hidden_size: int) -> None:
    """A full bundle's config.json must exist and describe a Qwen2.5-VL of the bundle's width:
    without it transformers would build a default 7B-size model (tens of GB) instead."""
    file = path / "config.json"
    if not file.is_file():
        raise ValueError(f"full bundle {path} has model weights but no config.json")
    try:
        qwen = json.loads(file.read_text())
        width = (qwen.get("text_config") or {}).get("hidden_size", qwen.get("hidden_size"))
    except (json.JSONDecodeError, AttributeError) as exc:
        raise ValueError(f"{file} is not a readable model config: {exc}") from exc
    if qwen.get("model_type") != "qwen2_5_vl" or width != hidden_size:
        raise ValueError(f"{file} describes model_type {qwen.get('model_type')!r} with hidden size {width}; "
                         f"the bundle needs a qwen2_5_vl model of hidden size {hidden_size}")


def load_qwen(path: Path, dtype: torch.dtype, allow_network: bool = False) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL checkpoint (local directory; a hub id only with ``allow_network``), safetensors
    only: the one place weights are read with transformers."""
    if path.is_file():
        raise ValueError(f"{path} is a file; expected a Qwen2.5-VL checkpoint directory")
    try:
        return Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(path), dtype=dtype, local_files_only=not allow_network, use_safetensors=True)
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:  # missing, truncated or misshapen files
        hint = "" if allow_network else " (network disabled: pass allow_network=True to download hub ids)"
        raise ValueError(f"cannot load a Qwen2.5-VL checkpoint from {str(path)!r}{hint}: {exc}") from exc


def _load_full_weights(path: Path, config: LeoVLConfig, dtype: torch.dtype, device) -> torch.nn.Module:
    check_full_config(path, config.hidden_size)
    try:
        model = load_qwen(path, dtype).to(device).eval()
    except ValueError as exc:
        raise ValueError(f"cannot read the model weights of {path} (truncated or corrupted?): {exc}") from exc
    _check_finite(path / "model.safetensors", dict(model.named_parameters()))
    return model


def read_bundle(leovl: "LeoVL", path: Path, weights_loaded: bool = False) -> tuple[
        torch.nn.Module, LeoVLConfig, SceneHeads, dict[str, torch.Tensor] | None]:
    """(LLM, config, heads, LoRA weights or None) of a bundle for ``leovl``'s base, all read and
    checked before the live model changes (a safe hot swap): ``leovl`` assembles them.

    ``weights_loaded``: the live base was just loaded from this (full) bundle's weights.
    """
    config = read_config(path)
    heads_state, meta = _read_heads(path)
    if int(meta.get("hidden_size", -1)) != leovl.config.hidden_size or config.hidden_size != leovl.config.hidden_size:
        raise ValueError(
            f"bundle {path} was trained for hidden size {meta.get('hidden_size')} (base {meta.get('base_model')!r}) "
            f"but the loaded base {leovl.config.base_model!r} has hidden size {leovl.config.hidden_size}"
        )
    config.base_model = meta.get("base_model", config.base_model)
    _check_finite(path / HEADS_FILE, heads_state)
    heads = SceneHeads(config).to(leovl.device)
    try:
        heads.load_state_dict(heads_state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path / HEADS_FILE} does not fit the configured heads: {exc}") from exc

    model, adapter = leovl.model, None
    if config.train_mode == "adapter":
        if meta.get("base_fingerprint") != leovl.base_fingerprint:
            raise ValueError(
                f"bundle {path} was trained on base model {meta.get('base_model')!r} "
                f"(weights fingerprint {meta.get('base_fingerprint')}), but the loaded base is "
                f"{leovl.config.base_model!r} (fingerprint {leovl.base_fingerprint}); load the matching base"
            )
        if not (path / ADAPTER_WEIGHTS).is_file():
            raise ValueError(f"adapter bundle {path} has no {ADAPTER_WEIGHTS}")
        try:
            adapter = load_file(str(path / ADAPTER_WEIGHTS))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path / ADAPTER_WEIGHTS} is not a readable safetensors file: {exc}") from exc
        _check_adapter(path, adapter, _expected_lora_shapes(model, config))
        _check_finite(path / ADAPTER_WEIGHTS, adapter)
        if leovl.peft_model is not None:
            model = leovl.peft_model.unload()  # drop the old LoRA layers, keep the base weights
    elif weights_loaded:
        if leovl.peft_model is not None:
            model = leovl.peft_model.unload()  # untrained LoRA of the fresh model: base weights unchanged
    else:
        model = _load_full_weights(path, config, leovl.dtype, leovl.device)
    return model, config, heads, adapter
