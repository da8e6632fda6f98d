"""Saved voxel maps: one safetensors file, written atomically, readable in every version.

Format ``leovl_ros.voxel_map`` version 1: tensors ``coords`` (V, 3) int64, ``counts`` (V,)
int64, ``acc`` (V, d) sums (or means for half storage) and, since eviction, ``last_seen``
(V,) int64; one sorted-JSON metadata entry holds the header. Keys added later (eviction,
evicted counts, frames, viewpoint, ``last_seen``) are optional on reading, so files saved
before them still load (as never-evicting maps whose voxels are all equally old).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

if TYPE_CHECKING:
    from .voxel_map import VoxelMap

__all__ = ["TEMP_SUFFIX", "read_map", "remove_stale_temps", "write_map"]

_FORMAT = "leovl_ros.voxel_map"
# Temp files of a save are ".<name>.<pid>.<random>.leovl-tmp": the writer's pid tells a
# killed save's leftovers (removed at start-up) from a save in progress.
TEMP_SUFFIX = ".leovl-tmp"
_VERSION = "1"


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
        if len(parts) == 3 and parts[1].isdigit() and not _pid_alive(int(parts[1])) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _header(vmap: "VoxelMap") -> dict:
    from .voxel_map import _DTYPE_NAMES  # that module imports this one

    return {
        "version": _VERSION,
        "feature_dim": vmap._d,
        "voxel_size": vmap._voxel_size,
        "storage_dtype": _DTYPE_NAMES[vmap._dtype],
        "max_voxels": vmap._max_voxels,
        "bounds": vmap.bounds,
        "dropped_full": vmap.dropped_full,
        "dropped_out_of_bounds": vmap.dropped_out_of_bounds,
        "metadata": vmap.metadata,
        # since eviction (absent from older files: read with these defaults)
        "eviction": vmap._eviction,
        "evicted_voxels": vmap.evicted_voxels,
        "evicted_points": vmap.evicted_points,
        "frames": vmap._frames,
        "viewpoint": vmap.viewpoint,
    }


def write_map(vmap: "VoxelMap", path: str | os.PathLike) -> None:
    """Write ``vmap`` to one safetensors file atomically (temp file in the same dir + os.replace).

    The header is one sorted-JSON metadata entry: safetensors stores metadata in a hash
    map, so several entries would make the bytes of identical maps differ between saves.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {
        "coords": vmap.coords.contiguous(),
        "counts": vmap.counts.contiguous(),
        "acc": vmap._acc[: vmap._n].contiguous(),
        "last_seen": vmap._last_seen[: vmap._n].contiguous(),
    }
    tensors = {k: v.cpu() for k, v in tensors.items()}
    header = {_FORMAT: json.dumps(_header(vmap), sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_map(cls: type, path: str | os.PathLike, device: str | torch.device = "cpu") -> "VoxelMap":
    """A ``cls`` (VoxelMap) read from a file :func:`write_map` wrote (any version of it) onto
    ``device``; ``ValueError`` on truncated or foreign files."""
    from .voxel_map import _DTYPE_NAMES, voxel_keys  # that module imports this one

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
        dtype = {v: k for k, v in _DTYPE_NAMES.items()}[header["storage_dtype"]]
        vmap = cls(header["feature_dim"], header["voxel_size"], dtype, header["bounds"], header["max_voxels"],
                   header.get("eviction", "none"), device)
        vmap.metadata = {str(k): str(v) for k, v in header["metadata"].items()}
        vmap.dropped_full = int(header["dropped_full"])
        vmap.dropped_out_of_bounds = int(header["dropped_out_of_bounds"])
        vmap.evicted_voxels = int(header.get("evicted_voxels", 0))
        vmap.evicted_points = int(header.get("evicted_points", 0))
        vmap._frames = int(header.get("frames", 0))
        view = header.get("viewpoint")
        vmap.viewpoint = None if view is None else tuple(float(v) for v in view)
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: voxel map header is incomplete or malformed ({e!r})") from e
    coords, counts, acc = tensors["coords"], tensors["counts"], tensors["acc"]
    n = coords.shape[0]
    last_seen = tensors.get("last_seen", torch.zeros(n, dtype=torch.int64))  # older files: all equally old
    if (
        coords.shape != (n, 3)
        or counts.shape != (n,)
        or acc.shape != (n, vmap.feature_dim)
        or last_seen.shape != (n,)
        or (coords.dtype, counts.dtype, acc.dtype, last_seen.dtype)
        != (torch.int64, torch.int64, dtype, torch.int64)
    ):
        raise ValueError(
            f"{path}: inconsistent voxel map tensors coords={tuple(coords.shape)} counts={tuple(counts.shape)} "
            f"acc={tuple(acc.shape)} {acc.dtype} for feature_dim={vmap.feature_dim} {header['storage_dtype']}"
        )
    if n > vmap.max_voxels:
        raise ValueError(f"{path}: {n} voxels exceed its max_voxels={vmap.max_voxels}")
    if not bool(torch.isfinite(acc).all()) or bool((counts <= 0).any()):
        raise ValueError(f"{path}: voxel map has non-finite features or empty voxels (corrupted)")
    dev = vmap.device
    vmap._acc, vmap._counts = acc.to(dev, copy=True), counts.to(dev, copy=True)
    vmap._coords, vmap._last_seen, vmap._n = coords.to(dev, copy=True), last_seen.to(dev, copy=True), n
    keys = voxel_keys(vmap._coords)
    vmap._sorted_keys, vmap._sorted_rows = torch.sort(keys)
    if n > 1 and bool((vmap._sorted_keys[1:] == vmap._sorted_keys[:-1]).any()):
        raise ValueError(f"{path}: voxel map has duplicate voxel coordinates")
    return vmap
