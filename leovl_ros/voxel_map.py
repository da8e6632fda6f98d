"""Sparse voxel map of 2D-encoder features with an exact running mean per voxel.

Voxels are kept in rows in creation order (storage only grows, by doubling, up to
``max_voxels``); a sorted array of packed voxel keys maps a voxel to its row with
``torch.searchsorted``, so fusing a frame is a few vectorised ops: one scatter-add of its
points per voxel, then one indexed add into storage, whatever the map size (no Python dict,
no per-point loop).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

__all__ = ["TEMP_SUFFIX", "VoxelMap", "remove_stale_temps", "voxel_keys"]

_FORMAT = "leovl_ros.voxel_map"
# Temp files of a save are ".<name>.<pid>.<random>.leovl-tmp": the writer's pid tells a
# killed save's leftovers (removed at start-up) from a save in progress.
TEMP_SUFFIX = ".leovl-tmp"
_VERSION = "1"
# Voxel coordinates are packed into one int64 key with 21 bits per axis (signed by an
# offset): +-2^20 voxels = +-209 km at 0.2 m, far beyond any robot map.
_BITS = 21
_OFFSET = 1 << (_BITS - 1)
_EXACT_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)
_DTYPE_NAMES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


def voxel_keys(coords: torch.Tensor) -> torch.Tensor:
    """(N, 3) int64 voxel coords -> (N,) int64 keys whose order is lexicographic (x, y, z)."""
    c = coords + _OFFSET
    return (c[:, 0] << (2 * _BITS)) | (c[:, 1] << _BITS) | c[:, 2]


def _unpack(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`voxel_keys`: (N,) keys -> (N, 3) int64 voxel coords."""
    mask = (1 << _BITS) - 1
    return torch.stack([(keys >> (2 * _BITS)) & mask, (keys >> _BITS) & mask, keys & mask], 1) - _OFFSET


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


class VoxelMap:
    """Per-voxel feature sum and point count; the mean is exact however many frames arrive.

    Not thread-safe: callers that fuse and read from different threads must lock.

    Storage: with ``storage_dtype`` float32/float64 each voxel keeps the sum of its features,
    so means are exact (up to float rounding) for any number of frames. With float16/bfloat16
    (half the memory) it keeps the running *mean* instead, updated in float32 as
    m += (batch_sum - k*m) / (n + k): a half-precision sum would overflow (fp16 max 65504) or
    stop growing (bf16, 8-bit mantissa) after a few hundred points, a mean stays in range.

    Bounds: ``bounds=((xmin, ymin, zmin), (xmax, ymax, zmax))`` metres; points outside are
    dropped (``dropped_out_of_bounds``).

    Full policy: once ``max_voxels`` exist, points that would create a new voxel are dropped
    (``dropped_full``) while points falling into existing voxels keep being fused, so the map
    keeps refining what it has. When a frame can create only some of its new voxels, those
    with the most points in that frame win (ties: lowest voxel key), deterministically.
    """

    def __init__(
        self,
        feature_dim: int,
        voxel_size: float = 0.2,
        storage_dtype: torch.dtype = torch.float32,
        bounds: Sequence[Sequence[float]] | None = None,
        max_voxels: int = 200_000,
    ):
        if int(feature_dim) <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        if not (voxel_size > 0 and math.isfinite(voxel_size)):
            raise ValueError(f"voxel_size must be a positive number of metres, got {voxel_size}")
        if storage_dtype not in _EXACT_DTYPES + _HALF_DTYPES:
            raise ValueError(f"storage_dtype must be one of {list(_DTYPE_NAMES.values())}, got {storage_dtype}")
        if int(max_voxels) <= 0:
            raise ValueError(f"max_voxels must be positive, got {max_voxels}")
        self._bounds = None
        if bounds is not None:
            b = np.asarray(bounds, dtype=np.float64)
            if b.shape != (2, 3) or not (b[0] < b[1]).all():
                raise ValueError(f"bounds must be ((xmin, ymin, zmin), (xmax, ymax, zmax)), min < max; got {bounds}")
            self._bounds = (tuple(b[0].tolist()), tuple(b[1].tolist()))
            self._bounds_t = torch.as_tensor(b, dtype=torch.float32)  # (2, 3), compared with float32 points
        self._d = int(feature_dim)
        self._voxel_size = float(voxel_size)
        self._dtype = storage_dtype
        self._max_voxels = int(max_voxels)
        self.metadata: dict[str, str] = {}
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Drop every voxel and the drop counters (metadata is kept)."""
        self._n = 0
        self._acc = torch.zeros(0, self._d, dtype=self._dtype)  # (capacity, d) sums or means
        self._counts = torch.zeros(0, dtype=torch.int64)  # (capacity,) points per voxel
        self._coords = torch.zeros(0, 3, dtype=torch.int64)  # (capacity, 3) voxel indices
        self._sorted_keys = torch.zeros(0, dtype=torch.int64)  # (V,) ascending
        self._sorted_rows = torch.zeros(0, dtype=torch.int64)  # (V,) row of each sorted key
        self.dropped_full = 0
        self.dropped_out_of_bounds = 0

    @property
    def num_voxels(self) -> int:
        return self._n

    @property
    def feature_dim(self) -> int:
        return self._d

    @property
    def voxel_size(self) -> float:
        return self._voxel_size

    @property
    def storage_dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def max_voxels(self) -> int:
        return self._max_voxels

    @property
    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return self._bounds

    @property
    def max_extent_m(self) -> float:
        """Points farther than this from the origin along any axis cannot be keyed (see _BITS)."""
        return (_OFFSET - 1) * self._voxel_size

    @property
    def coords(self) -> torch.Tensor:
        """(V, 3) int64 voxel indices floor(p / voxel_size), rows in creation order."""
        return self._coords[: self._n]

    @property
    def centers(self) -> torch.Tensor:
        """(V, 3) float32 voxel centres in metres."""
        return (self.coords.to(torch.float32) + 0.5) * self._voxel_size

    @property
    def counts(self) -> torch.Tensor:
        """(V,) int64 number of points fused into each voxel."""
        return self._counts[: self._n]

    def means(self, rows: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """(V, d) float32 mean feature of each voxel, or (R, d) of the given ``rows`` only.

        ``rows`` + ``out`` (a reusable (R, d) float32 buffer) let callers stream through a large
        map in cache-sized chunks: fresh multi-MB tensors cost more in page faults than the copy.
        """
        if rows is None:
            rows = torch.arange(self._n)
        acc, counts = self._acc[: self._n], self._counts[: self._n]  # views: out-of-range rows raise IndexError
        if out is None:
            out = torch.empty(rows.numel(), self._d)
        if self._dtype == torch.float32:
            torch.index_select(acc, 0, rows, out=out)
            return out.div_(counts.index_select(0, rows).unsqueeze(1))
        sel = acc.index_select(0, rows)  # (R, d) storage dtype
        if self._dtype in _EXACT_DTYPES:
            sel.div_(counts.index_select(0, rows).unsqueeze(1))
        return out.copy_(sel)

    def memory_bytes(self) -> int:
        """Bytes held by the map's tensors (allocated capacity, not just used rows)."""
        tensors = (self._acc, self._counts, self._coords, self._sorted_keys, self._sorted_rows)
        return sum(t.numel() * t.element_size() for t in tensors)

    # ---------------------------------------------------------------- fusion
    def fuse(self, points: np.ndarray | torch.Tensor, features: np.ndarray | torch.Tensor) -> int:
        """Add N points (N, 3) metres with their features (N, d); returns voxels newly created."""
        pts = torch.as_tensor(points)
        feats = torch.as_tensor(features)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got shape {tuple(pts.shape)}")
        if feats.ndim != 2 or feats.shape != (pts.shape[0], self._d):
            raise ValueError(f"features must be (N={pts.shape[0]}, d={self._d}), got shape {tuple(feats.shape)}")
        if pts.shape[0] == 0:
            return 0
        pts = pts.to(torch.float32)
        feats = feats.to(torch.float32)
        if not bool(torch.isfinite(pts).all()):
            raise ValueError("points contain NaN/inf: mask invalid depth before fusing")
        # A finite sum implies finite features (inf/NaN propagate); the full check, 10x slower,
        # runs only to rule out a finite-feature overflow of the sum.
        if not bool(torch.isfinite(feats.sum())) and not bool(torch.isfinite(feats).all()):
            raise ValueError("features contain NaN/inf: they would poison the voxel means")

        if self._bounds is not None:
            inside = ((pts >= self._bounds_t[0]) & (pts <= self._bounds_t[1])).all(1)
            if not bool(inside.all()):
                self.dropped_out_of_bounds += int((~inside).sum())
                pts, feats = pts[inside], feats[inside]
                if pts.shape[0] == 0:
                    return 0

        coords = torch.floor(pts / self._voxel_size).to(torch.int64)  # (N, 3)
        if bool((coords.abs() >= _OFFSET).any()):
            raise ValueError(f"points beyond +-{_OFFSET * self._voxel_size:.0f} m from the map origin")
        keys = voxel_keys(coords)  # (N,)
        ukeys, inverse, ucount = torch.unique(keys, return_inverse=True, return_counts=True)  # (U,), (N,), (U,)
        urows, created = self._lookup_or_create(ukeys, ucount)  # (U,) row, -1 where the map is full
        live = urows >= 0  # (U,)
        if not bool(live.all()):
            keep = live[inverse]  # (N,)
            self.dropped_full += int((~keep).sum())
            feats, inverse = feats[keep], inverse[keep]
        rows, k = urows[live], ucount[live]  # (U',), (U',)

        # Sum the frame per voxel first, then add once per voxel: fusing the same frame twice
        # then gives exactly 2*sum / 2*count, i.e. bit-identical means.
        batch = torch.zeros(ukeys.shape[0], self._d).index_add_(0, inverse, feats)[live]  # (U', d)
        if self._dtype in _HALF_DTYPES:
            m = self._acc[rows].to(torch.float32)  # (U', d) current means
            n = self._counts[rows].unsqueeze(1)
            self._acc[rows] = (m + (batch - k.unsqueeze(1) * m) / (n + k.unsqueeze(1))).to(self._dtype)
        else:
            self._acc.index_add_(0, rows, batch.to(self._dtype))
        self._counts[rows] += k
        return created

    def _lookup_or_create(self, ukeys: torch.Tensor, ucount: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Row of each unique key (U,), creating rows for new keys while room is left (-1 if not)."""
        urows = torch.full_like(ukeys, -1)
        found = torch.zeros_like(ukeys, dtype=torch.bool)
        if self._n:
            pos = torch.searchsorted(self._sorted_keys, ukeys).clamp_(max=self._n - 1)  # (U,)
            found = self._sorted_keys[pos] == ukeys
            urows[found] = self._sorted_rows[pos[found]]

        new = torch.nonzero(~found).squeeze(1)  # (M,) indices into ukeys, key-ascending
        room = self._max_voxels - self._n
        if new.numel() > room:
            # Most points first, ties by key: stable sort of key-ordered candidates.
            order = torch.sort(ucount[new], descending=True, stable=True).indices
            new = torch.sort(new[order[:room]]).values
        m = new.numel()
        if m == 0:
            return urows, 0
        self._reserve(self._n + m)
        new_rows = torch.arange(self._n, self._n + m)
        urows[new] = new_rows
        self._coords[new_rows] = _unpack(ukeys[new])
        self._merge_sorted(ukeys[new], new_rows)
        self._n += m
        return urows, m

    def _merge_sorted(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Merge ascending new ``keys`` into the sorted index in O(V + M log V), no full re-sort."""
        old_pos = torch.arange(self._n) + torch.searchsorted(keys, self._sorted_keys)
        new_pos = torch.arange(keys.numel()) + torch.searchsorted(self._sorted_keys, keys)
        total = self._n + keys.numel()
        merged_keys = torch.empty(total, dtype=torch.int64)
        merged_rows = torch.empty(total, dtype=torch.int64)
        merged_keys[old_pos], merged_rows[old_pos] = self._sorted_keys, self._sorted_rows
        merged_keys[new_pos], merged_rows[new_pos] = keys, rows
        self._sorted_keys, self._sorted_rows = merged_keys, merged_rows

    def _reserve(self, needed: int) -> None:
        """Grow row storage by doubling (amortised O(1) per voxel), never past max_voxels."""
        capacity = self._acc.shape[0]
        if needed <= capacity:
            return
        new_cap = min(max(needed, 2 * capacity, 1024), self._max_voxels)
        acc = torch.zeros(new_cap, self._d, dtype=self._dtype)
        acc[: self._n] = self._acc[: self._n]
        counts = torch.zeros(new_cap, dtype=torch.int64)
        counts[: self._n] = self._counts[: self._n]
        coords = torch.zeros(new_cap, 3, dtype=torch.int64)
        coords[: self._n] = self._coords[: self._n]
        self._acc, self._counts, self._coords = acc, counts, coords

    # ------------------------------------------------------------------ io
    def _header(self) -> dict:
        return {
            "version": _VERSION,
            "feature_dim": self._d,
            "voxel_size": self._voxel_size,
            "storage_dtype": _DTYPE_NAMES[self._dtype],
            "max_voxels": self._max_voxels,
            "bounds": self.bounds,
            "dropped_full": self.dropped_full,
            "dropped_out_of_bounds": self.dropped_out_of_bounds,
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike) -> None:
        """Write the map to one safetensors file atomically (temp file in the same dir + os.replace).

        The header is one sorted-JSON metadata entry: safetensors stores metadata in a hash
        map, so several entries would make the bytes of identical maps differ between saves.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {
            "coords": self.coords.contiguous(),
            "counts": self.counts.contiguous(),
            "acc": self._acc[: self._n].contiguous(),
        }
        header = {_FORMAT: json.dumps(self._header(), sort_keys=True)}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=header)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> "VoxelMap":
        """Read a map written by :meth:`save`; ``ValueError`` on truncated or foreign files."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"voxel map file {path} does not exist")
        try:
            with safe_open(path, framework="pt") as f:
                raw = (f.metadata() or {}).get(_FORMAT)
                if raw is None:
                    raise ValueError(f"{path} is a safetensors file but not a leovl_ros voxel map (no {_FORMAT})")
                tensors = {k: f.get_tensor(k) for k in ("coords", "counts", "acc")}
        except SafetensorError as e:
            raise ValueError(f"{path} is not a readable safetensors voxel map (truncated or corrupted?): {e}") from e
        try:
            header = json.loads(raw)
            if header["version"] != _VERSION:
                raise ValueError(f"{path}: voxel map version {header['version']!r} unsupported (expected {_VERSION})")
            dtype = {v: k for k, v in _DTYPE_NAMES.items()}[header["storage_dtype"]]
            vmap = cls(header["feature_dim"], header["voxel_size"], dtype, header["bounds"], header["max_voxels"])
            vmap.metadata = {str(k): str(v) for k, v in header["metadata"].items()}
            vmap.dropped_full = int(header["dropped_full"])
            vmap.dropped_out_of_bounds = int(header["dropped_out_of_bounds"])
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: voxel map header is incomplete or malformed ({e!r})") from e
        coords, counts, acc = tensors["coords"], tensors["counts"], tensors["acc"]
        n = coords.shape[0]
        if (
            coords.shape != (n, 3)
            or counts.shape != (n,)
            or acc.shape != (n, vmap.feature_dim)
            or (coords.dtype, counts.dtype, acc.dtype) != (torch.int64, torch.int64, dtype)
        ):
            raise ValueError(
                f"{path}: inconsistent voxel map tensors coords={tuple(coords.shape)} counts={tuple(counts.shape)} "
                f"acc={tuple(acc.shape)} {acc.dtype} for feature_dim={vmap.feature_dim} {header['storage_dtype']}"
            )
        if n > vmap.max_voxels:
            raise ValueError(f"{path}: {n} voxels exceed its max_voxels={vmap.max_voxels}")
        if not bool(torch.isfinite(acc).all()) or bool((counts <= 0).any()):
            raise ValueError(f"{path}: voxel map has non-finite features or empty voxels (corrupted)")
        vmap._acc, vmap._counts, vmap._coords, vmap._n = acc.clone(), counts.clone(), coords.clone(), n
        keys = voxel_keys(coords)
        vmap._sorted_keys, vmap._sorted_rows = torch.sort(keys)
        if n > 1 and bool((vmap._sorted_keys[1:] == vmap._sorted_keys[:-1]).any()):
            raise ValueError(f"{path}: voxel map has duplicate voxel coordinates")
        return vmap
