"""Resolve the node's ``model`` / ``adapter`` parameters before anything heavy is imported.

Kept free of torch/transformers so that a wrong parameter fails the node in well under a
second with one line that names the parameter, instead of after loading a model stack.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import leovl_ros

__all__ = ["BUNDLED_MODEL", "TINY_RANDOM", "ModelSource", "ParameterError", "load_model", "resolve_model"]

BUNDLED_MODEL = "leovl-tiny"
TINY_RANDOM = "tiny-random"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ParameterError(ValueError):
    """A node parameter that cannot be used (model, adapter, device, ...); the text is for the user."""


@dataclass(frozen=True)
class ModelSource:
    base: str  # TINY_RANDOM, a checkpoint/bundle directory, or a hub id
    bundle: str | None  # adapter bundle directory

    @property
    def name(self) -> str:
        """As reported in SceneStatus.model: ``base[+bundle]``."""
        return self.base + (f"+{self.bundle}" if self.bundle else "")


def bundled_model_dirs() -> list[Path]:
    """Where ``leovl-tiny`` may be installed (source tree and install tree, see __init__)."""
    return [Path(p) / "bundled_models" / BUNDLED_MODEL for p in leovl_ros.__path__]


def resolve_model(model: str, adapter: str = "", allow_network: bool = False) -> ModelSource:
    """Check ``model`` (tiny-random | leovl-tiny | directory | hub id) and ``adapter`` (directory or '')."""
    model, adapter = model.strip(), adapter.strip()
    bundle = None
    if adapter:
        path = Path(adapter).expanduser()
        if not path.is_dir():
            raise ParameterError(f"parameter 'adapter': {adapter!r} is not an adapter bundle directory")
        bundle = str(path.resolve())
    if model == TINY_RANDOM:
        return ModelSource(TINY_RANDOM, bundle)
    if model == BUNDLED_MODEL:
        for path in bundled_model_dirs():
            if path.is_dir():
                return ModelSource(str(path), bundle)
        raise ParameterError(
            f"parameter 'model': the bundled model '{BUNDLED_MODEL}' is not installed (looked in "
            f"{', '.join(str(p) for p in bundled_model_dirs())}); set model:=<Qwen2.5-VL checkpoint dir> "
            f"or model:={TINY_RANDOM} for an untrained test model"
        )
    if not model:
        raise ParameterError("parameter 'model' is empty: give a Qwen2.5-VL checkpoint directory or hub id")
    path = Path(model).expanduser()
    if path.is_dir():
        return ModelSource(str(path.resolve()), bundle)
    if path.exists():
        raise ParameterError(f"parameter 'model': {model!r} is a file; give a checkpoint directory")
    if _HUB_ID.match(model) and allow_network:
        return ModelSource(model, bundle)
    hub_hint = " (hub ids are downloaded only with allow_network:=true)"
    hint = "" if allow_network or not _HUB_ID.match(model) else hub_hint
    raise ParameterError(f"parameter 'model': {model!r} is not a directory{hint}")


def load_model(source: ModelSource, device: str = "cpu", dtype: str = "float32", allow_network: bool = False):
    """The LeoVL model of ``source`` (:func:`leovl_ros.model.loading.load_model`), every failure
    a ParameterError naming the parameter; torch/transformers are imported only here (see module doc).

    ``tiny-random`` is a seeded random tiny Qwen2.5-VL (hidden 64, real Qwen2.5 tokenizer):
    deterministic gibberish, for tests and for trying the ROS plumbing without a checkpoint.
    """
    import torch

    from ..model import loading

    if dtype not in loading.DTYPES:
        raise ParameterError(f"parameter 'dtype': {dtype!r} is not one of {', '.join(loading.DTYPES)}")
    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ParameterError(f"parameter 'device': {device!r} is not a torch device ({exc})") from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"parameter 'device': {device!r} but CUDA is not available here; use cpu")
    try:
        return loading.load_model(source.base, source.bundle, device=device, dtype=dtype, allow_network=allow_network)
    except (ValueError, OSError, RuntimeError) as exc:
        which = "adapter" if source.bundle and "bundle" in str(exc) else "model"
        raise ParameterError(f"parameter '{which}': cannot load {source.name}: {exc}") from exc
