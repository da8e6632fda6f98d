"""Saved voxel maps: one safetensors file, written atomically, readable in every version.

Format ``leovl_ros.voxel_map`` version 1: tensors ``coords`` (V, 3) int64, ``counts`` (V,)
int64, ``acc`` (V, d) sums (or means for half storage) and, since eviction, ``last_seen``
(V,) int64; one sorted-JSON metadata entry holds the header. Keys added later (eviction,
evicted counts, frames, viewpoint, ``last_seen``) are optional on reading, so files saved
before them still load (as never-evicting maps whose voxels are all equally old).
This module knows the file, not the map: it reads and writes a :class:`VoxelMapState`,
which ``VoxelMap.state()`` gives and ``VoxelMap.from_state()`` takes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

__all__ = ["STORAGE_DTYPES", "TEMP_SUFFIX", "VoxelMapState", "read_state", "remove_stale_temps", "write_state"]

_FORMAT = "leovl_ros.voxel_map"
# A save writes in a temp folder ".<name>.<pid>.<random>.leovl-tmp" (safetensors >= 0.7 writes
# its own ".tmpXXXXXX" beside the file and renames it: inside our folder, a killed save leaves
# nothing outside it); the writer's pid tells a killed save's leftovers (removed at start-up)
# from a save in progress.
TEMP_SUFFIX = ".leovl-tmp"
_VERSION = "1"
STORAGE_DTYPES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16",
                  torch.bfloat16: "bfloat16"}  # as written in the header
_BY_NAME = {v: k for k, v in STORAGE_DTYPES.items()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temp files that killed saves left in ``directory``; returns what was removed."""
    removed = []
    for tmp in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        parts = tmp.name[: -len(TEMP_SUFFIX)].rsplit(".", 2)  # ['.<name>', '<pid>', '<random>']
        if len(parts) == 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:  # the single temp file of earlier versions
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@dataclass
class VoxelMapState:
    """Everything a voxel map is, as plain values (:meth:`VoxelMap.state` / ``from_state``):
    what a file holds, and what a map is rebuilt from. Tensors hold the used rows only."""

    feature_dim: int
    voxel_size: float
    storage_dtype: torch.dtype
    max_voxels: int
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None
    eviction: str
    coords: torch.Tensor  # (V, 3) int64 voxel indices
    counts: torch.Tensor  # (V,) int64 points per voxel
    acc: torch.Tensor  # (V, d) storage dtype: sums (exact dtypes) or means (half dtypes)
    last_seen: torch.Tensor  # (V,) int64 keyframe that last touched each voxel
    metadata: dict[str, str] = field(default_factory=dict)
    dropped_full: int = 0
    dropped_out_of_bounds: int = 0
    evicted_voxels: int = 0
    evicted_points: int = 0
    frames: int = 0  # fuse() calls so far (the clock of least_recent)
    viewpoint: tuple[float, float, float] | None = None

    def check(self) -> None:
        """ValueError unless the tensors are consistent with each other and the header."""
        n = self.coords.shape[0]
        if (self.coords.shape != (n, 3) or self.counts.shape != (n,) or self.acc.shape != (n, self.feature_dim)
                or self.last_seen.shape != (n,)
                or (self.coords.dtype, self.counts.dtype, self.acc.dtype, self.last_seen.dtype)
                != (torch.int64, torch.int64, self.storage_dtype, torch.int64)):
            raise ValueError(
                f"inconsistent voxel map tensors coords={tuple(self.coords.shape)} counts={tuple(self.counts.shape)} "
                f"acc={tuple(self.acc.shape)} {self.acc.dtype} for feature_dim={self.feature_dim} "
                f"{STORAGE_DTYPES.get(self.storage_dtype, self.storage_dtype)}")
        if n > self.max_voxels:
            raise ValueError(f"{n} voxels exceed its max_voxels={self.max_voxels}")
        if not bool(torch.isfinite(self.acc).all()) or bool((self.counts <= 0).any()):
            raise ValueError("voxel map has non-finite features or empty voxels (corrupted)")


def _header(state: VoxelMapState) -> dict:
    return {
        "version": _VERSION,
        "feature_dim": state.feature_dim,
        "voxel_size": state.voxel_size,
        "storage_dtype": STORAGE_DTYPES[state.storage_dtype],
        "max_voxels": state.max_voxels,
        "bounds": state.bounds,
        "dropped_full": state.dropped_full,
        "dropped_out_of_bounds": state.dropped_out_of_bounds,
        "metadata": state.metadata,
        # since eviction (absent from older files: read with these defaults)
        "eviction": state.eviction,
        "evicted_voxels": state.evicted_voxels,
        "evicted_points": state.evicted_points,
        "frames": state.frames,
        "viewpoint": state.viewpoint,
    }


def write_state(state: VoxelMapState, path: str | os.PathLike) -> None:
    """Write a map's state to one safetensors file atomically (temp file in the same dir + os.replace).

    The header is one sorted-JSON metadata entry: safetensors stores metadata in a hash
    map, so several entries would make the bytes of identical maps differ between saves.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"coords": state.coords, "counts": state.counts, "acc": state.acc, "last_seen": state.last_seen}
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    header = {_FORMAT: json.dumps(_header(state), sort_keys=True)}
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        save_file(tensors, tmp / path.name, metadata=header)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_state(path: str | os.PathLike) -> VoxelMapState:
    """The state in a file :func:`write_state` wrote (any version of it), checked; ``ValueError``
    (naming the file) on truncated, foreign or inconsistent files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"voxel map file {path} does not exist")
    try:
        with safe_open(path, framework="pt") as f:
            raw = (f.metadata() or {}).get(_FORMAT)
            if raw is None:
                raise ValueError(f"{path} is a safetensors file but not a leovl_ros voxel map (no {_FORMAT})")
            tensors = {k: f.get_tensor(k) for k in ("coords", "counts", "acc", "last_seen") if k in f.keys()}
    except SafetensorError as e:
        raise ValueError(f"{path} is not a readable safetensors voxel map (truncated or corrupted?): {e}") from e
    try:
        header = json.loads(raw)
        if header["version"] != _VERSION:
            raise ValueError(f"{path}: voxel map version {header['version']!r} unsupported (expected {_VERSION})")
        n = tensors["coords"].shape[0]
        view = header.get("viewpoint")
        state = VoxelMapState(
            header["feature_dim"], header["voxel_size"], _BY_NAME[header["storage_dtype"]], header["max_voxels"],
            None if header["bounds"] is None else tuple(tuple(b) for b in header["bounds"]),
            header.get("eviction", "none"), tensors["coords"], tensors["counts"], tensors["acc"],
            tensors.get("last_seen", torch.zeros(n, dtype=torch.int64)),  # older files: all equally old
            {str(k): str(v) for k, v in header["metadata"].items()}, int(header["dropped_full"]),
            int(header["dropped_out_of_bounds"]), int(header.get("evicted_voxels", 0)),
            int(header.get("evicted_points", 0)), int(header.get("frames", 0)),
            None if view is None else tuple(float(v) for v in view))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: voxel map header is incomplete or malformed ({e!r})") from e
    try:
        state.check()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    return state
