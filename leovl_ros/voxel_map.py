"""Sparse voxel map of 2D-encoder features with an exact running mean per voxel.

Voxels are kept in rows (storage only grows, by doubling, up to ``max_voxels``; eviction
moves the last rows into the freed ones); a sorted array of packed voxel keys maps a voxel
to its row with ``torch.searchsorted``, so fusing a frame is a few vectorised ops: one scatter-add of its
points per voxel, then one indexed add into storage, whatever the map size (no Python dict,
no per-point loop).
"""

from __future__ import annotations

import copy
import math
import os
from typing import Sequence

import numpy as np
import torch

from .column_sums import ColumnSums
from .voxel_keys import OFFSET, unpack_keys, voxel_keys
from .voxel_map_io import STORAGE_DTYPES, TEMP_SUFFIX, VoxelMapState, read_state, remove_stale_temps, write_state

__all__ = ["EVICTIONS", "TEMP_SUFFIX", "VoxelMap", "VoxelMapState", "remove_stale_temps"]

EVICTIONS = ("none", "least_recent", "farthest")
_EXACT_DTYPES = (torch.float32, torch.float64)
_HALF_DTYPES = (torch.float16, torch.bfloat16)


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

    Full policy (``eviction``): once ``max_voxels`` exist,
    - ``none``: points that would create a new voxel are dropped (``dropped_full``) while
      points falling into existing voxels keep being fused, so the map keeps refining what it
      has (a room-sized map that must never forget);
    - ``least_recent``: the voxels fused longest ago (by keyframe; ties: oldest row) make room;
    - ``farthest``: the voxels farthest (3D) from the frame's ``origin`` (the camera; else the
      centroid of its points) make room.
    Evicting frees ``max_voxels // 20`` voxels at a time (at least what the frame needs):
    the sorted index is rebuilt once per batch, not per frame. The frame's own voxels are
    never evicted; evicted voxels and their points are counted (``evicted_voxels``,
    ``evicted_points``). Storage never grows past ``max_voxels``, so memory stays flat. When a
    frame can create only some of its new voxels, those with the most points in that frame
    win (ties: lowest voxel key), deterministically.

    ``viewpoint`` is the latest ``origin`` given to :meth:`fuse` (the ``nearest`` token
    selection centres on it). ``track_columns`` keeps the incremental CFG's per-column sums
    (:class:`~leovl_ros.column_sums.ColumnSums`) up to date at every fusion and eviction.
    ``device``: where every tensor lives (e.g. ``cuda`` for 7B deployments); inputs are moved.
    """

    def __init__(
        self,
        feature_dim: int,
        voxel_size: float = 0.2,
        storage_dtype: torch.dtype = torch.float32,
        bounds: Sequence[Sequence[float]] | None = None,
        max_voxels: int = 200_000,
        eviction: str = "none",
        device: str | torch.device = "cpu",
    ):
        if int(feature_dim) <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        if not (voxel_size > 0 and math.isfinite(voxel_size)):
            raise ValueError(f"voxel_size must be a positive number of metres, got {voxel_size}")
        if storage_dtype not in _EXACT_DTYPES + _HALF_DTYPES:
            raise ValueError(f"storage_dtype must be one of {list(STORAGE_DTYPES.values())}, got {storage_dtype}")
        if int(max_voxels) <= 0:
            raise ValueError(f"max_voxels must be positive, got {max_voxels}")
        if eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {EVICTIONS}, got {eviction!r}")
        self._device = torch.device(device)
        self._eviction = eviction
        self._bounds = None
        if bounds is not None:
            b = np.asarray(bounds, dtype=np.float64)
            if b.shape != (2, 3) or not (b[0] < b[1]).all():
                raise ValueError(f"bounds must be ((xmin, ymin, zmin), (xmax, ymax, zmax)), min < max; got {bounds}")
            self._bounds = (tuple(b[0].tolist()), tuple(b[1].tolist()))
            # (2, 3), compared with float32 points
            self._bounds_t = torch.as_tensor(b, dtype=torch.float32, device=self._device)
        self._d = int(feature_dim)
        self._voxel_size = float(voxel_size)
        self._dtype = storage_dtype
        self._max_voxels = int(max_voxels)
        self.metadata: dict[str, str] = {}
        self.columns = None  # ColumnSums once track_columns() was called
        self.reset()

    # ----------------------------------------------------------------- state
    def reset(self) -> None:
        """Drop every voxel and the drop counters (metadata is kept)."""
        self._n = 0
        dev = self._device
        self._acc = torch.zeros(0, self._d, dtype=self._dtype, device=dev)  # (capacity, d) sums or means
        self._acc_shared = False  # a snapshot reads _acc: copy it before the next write
        self._counts = torch.zeros(0, dtype=torch.int64, device=dev)  # (capacity,) points per voxel
        self._coords = torch.zeros(0, 3, dtype=torch.int64, device=dev)  # (capacity, 3) voxel indices
        self._last_seen = torch.zeros(0, dtype=torch.int64, device=dev)  # (capacity,) keyframe that last touched it
        self._sorted_keys = torch.zeros(0, dtype=torch.int64, device=dev)  # (V,) ascending
        self._sorted_rows = torch.zeros(0, dtype=torch.int64, device=dev)  # (V,) row of each sorted key
        self._frames = 0  # fuse() calls so far (the clock of least_recent)
        self.viewpoint: tuple[float, float, float] | None = None
        self.dropped_full = 0
        self.dropped_out_of_bounds = 0
        self.evicted_voxels = self.evicted_points = 0
        if self.columns is not None:
            self.track_columns(self.columns.rope)

    def snapshot(self) -> "VoxelMap":
        """A consistent copy for readers (never modify it) that costs O(V) integers, not V x d floats.

        Counts, coordinates and stamps are copied; the features and the column sums are shared
        until this map next writes them, when this map copies them first (copy on write, paid
        by the fusing thread, not by the reader).
        """
        snap = copy.copy(self)
        snap.metadata = dict(self.metadata)
        n = self._n
        snap._counts, snap._coords, snap._last_seen = (t[:n].clone() for t in (self._counts, self._coords,
                                                                                  self._last_seen))
        snap._acc = self._acc[:n]
        self._acc_shared = True
        if self.columns is not None:
            snap.columns = self.columns.snapshot()
        return snap

    def _own_acc(self) -> None:
        if self._acc_shared:
            self._acc, self._acc_shared = self._acc.clone(), False

    def track_columns(self, rope: bool = True) -> None:
        """Keep per-column CFG sums (height-rotated with ``rope``) up to date from now on."""
        self.columns = ColumnSums(self, rope)

    def state(self) -> VoxelMapState:
        """Everything this map is (the used rows' tensors are views: read them, do not write)."""
        n = self._n
        return VoxelMapState(self._d, self._voxel_size, self._dtype, self._max_voxels, self._bounds, self._eviction,
                             self._coords[:n], self._counts[:n], self._acc[:n], self._last_seen[:n],
                             dict(self.metadata), self.dropped_full, self.dropped_out_of_bounds, self.evicted_voxels,
                             self.evicted_points, self._frames, self.viewpoint)

    @classmethod
    def from_state(cls, state: VoxelMapState, device: str | torch.device = "cpu") -> "VoxelMap":
        """A map (on ``device``, tensors copied) from :meth:`state`; ValueError if inconsistent."""
        state.check()
        vmap = cls(state.feature_dim, state.voxel_size, state.storage_dtype, state.bounds, state.max_voxels,
                   state.eviction, device)
        dev = vmap.device
        vmap._acc, vmap._counts = state.acc.to(dev, copy=True), state.counts.to(dev, copy=True)
        vmap._coords, vmap._last_seen = state.coords.to(dev, copy=True), state.last_seen.to(dev, copy=True)
        vmap._n = state.coords.shape[0]
        vmap._sorted_keys, vmap._sorted_rows = torch.sort(voxel_keys(vmap._coords))
        if vmap._n > 1 and bool((vmap._sorted_keys[1:] == vmap._sorted_keys[:-1]).any()):
            raise ValueError("voxel map has duplicate voxel coordinates")
        vmap.metadata = dict(state.metadata)
        vmap.dropped_full, vmap.dropped_out_of_bounds = state.dropped_full, state.dropped_out_of_bounds
        vmap.evicted_voxels, vmap.evicted_points = state.evicted_voxels, state.evicted_points
        vmap._frames, vmap.viewpoint = state.frames, state.viewpoint
        return vmap

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
    def eviction(self) -> str:
        return self._eviction

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return self._bounds

    @property
    def max_extent_m(self) -> float:
        """Points farther than this from the origin along any axis cannot be keyed (see voxel_keys)."""
        return (OFFSET - 1) * self._voxel_size

    @property
    def coords(self) -> torch.Tensor:
        """(V, 3) int64 voxel indices floor(p / voxel_size), rows in creation order."""
        return self._coords[: self._n]

    @property
    def sorted_keys(self) -> torch.Tensor:
        """(V,) int64 voxel keys, ascending (a column's voxels are one contiguous run); read-only."""
        return self._sorted_keys

    @property
    def sorted_rows(self) -> torch.Tensor:
        """(V,) int64 row of each of :attr:`sorted_keys`; read-only."""
        return self._sorted_rows

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
            rows = torch.arange(self._n, device=self._device)
        acc, counts = self._acc[: self._n], self._counts[: self._n]  # views: out-of-range rows raise IndexError
        if out is None:
            out = torch.empty(rows.numel(), self._d, device=self._device)
        if self._dtype == torch.float32:
            torch.index_select(acc, 0, rows, out=out)
            return out.div_(counts.index_select(0, rows).unsqueeze(1))
        sel = acc.index_select(0, rows)  # (R, d) storage dtype
        if self._dtype in _EXACT_DTYPES:
            sel.div_(counts.index_select(0, rows).unsqueeze(1))
        return out.copy_(sel)

    def memory_bytes(self) -> int:
        """Bytes held by the map's tensors (allocated capacity, not just used rows)."""
        tensors = (self._acc, self._counts, self._coords, self._last_seen, self._sorted_keys, self._sorted_rows)
        columns = self.columns.memory_bytes() if self.columns is not None else 0
        return sum(t.numel() * t.element_size() for t in tensors) + columns

    # ---------------------------------------------------------------- fusion
    def fuse(self, points: np.ndarray | torch.Tensor, features: np.ndarray | torch.Tensor,
             origin: Sequence[float] | None = None) -> int:
        """Add N points (N, 3) metres with their features (N, d) seen from ``origin`` (the camera
        position, optional); returns voxels newly created."""
        pts = torch.as_tensor(points)
        feats = torch.as_tensor(features)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got shape {tuple(pts.shape)}")
        if feats.ndim != 2 or feats.shape != (pts.shape[0], self._d):
            raise ValueError(f"features must be (N={pts.shape[0]}, d={self._d}), got shape {tuple(feats.shape)}")
        if pts.shape[0] == 0:
            return 0
        pts = pts.to(self._device, torch.float32)
        feats = feats.to(self._device, torch.float32)
        if origin is not None:
            o = [float(v) for v in origin]
            if len(o) != 3 or not all(math.isfinite(v) for v in o):
                raise ValueError(f"origin must be 3 finite coordinates in metres, got {origin}")
            self.viewpoint = (o[0], o[1], o[2])
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
        if bool((coords.abs() >= OFFSET).any()):
            raise ValueError(f"points beyond +-{OFFSET * self._voxel_size:.0f} m from the map origin")
        keys = voxel_keys(coords)  # (N,)
        ukeys, inverse, ucount = torch.unique(keys, return_inverse=True, return_counts=True)  # (U,), (N,), (U,)
        urows, created = self._lookup_or_create(ukeys, ucount, origin, pts)  # (U,) row, -1 where the map is full
        live = urows >= 0  # (U,)
        if not bool(live.all()):
            keep = live[inverse]  # (N,)
            self.dropped_full += int((~keep).sum())
            feats, inverse = feats[keep], inverse[keep]
        rows, k = urows[live], ucount[live]  # (U',), (U',)

        # Sum the frame per voxel first, then add once per voxel: fusing the same frame twice
        # then gives exactly 2*sum / 2*count, i.e. bit-identical means.
        batch = torch.zeros(ukeys.shape[0], self._d, device=self._device).index_add_(0, inverse, feats)[live]
        self._own_acc()
        if self._dtype in _HALF_DTYPES:
            m = self._acc[rows].to(torch.float32)  # (U', d) current means
            n = self._counts[rows].unsqueeze(1)
            self._acc[rows] = (m + (batch - k.unsqueeze(1) * m) / (n + k.unsqueeze(1))).to(self._dtype)
        else:
            self._acc.index_add_(0, rows, batch.to(self._dtype))
        self._counts[rows] += k
        self._frames += 1
        self._last_seen[rows] = self._frames
        if self.columns is not None:
            self.columns.refresh(self, ukeys[live])
        return created

    def _lookup_or_create(self, ukeys: torch.Tensor, ucount: torch.Tensor, origin: Sequence[float] | None,
                          pts: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Row of each unique key (U,), creating rows for new keys while room is left (-1 if not)."""
        urows = torch.full_like(ukeys, -1)
        found = torch.zeros_like(ukeys, dtype=torch.bool)
        if self._n:
            pos = torch.searchsorted(self._sorted_keys, ukeys).clamp_(max=self._n - 1)  # (U,)
            found = self._sorted_keys[pos] == ukeys
            urows[found] = self._sorted_rows[pos[found]]

        new = torch.nonzero(~found).squeeze(1)  # (M,) indices into ukeys, key-ascending
        room = self._max_voxels - self._n
        if new.numel() > room and self._eviction != "none":
            protect = urows[found]
            evict = min(max(new.numel() - room, self._max_voxels // 20), self._n - protect.numel())
            if evict > 0:
                centre = pts.mean(0) if origin is None else torch.tensor(origin, device=self._device)
                remap = self._evict(evict, protect, centre)
                urows[found] = remap[protect]
                room = self._max_voxels - self._n
        if new.numel() > room:
            # Most points first, ties by key: stable sort of key-ordered candidates.
            order = torch.sort(ucount[new], descending=True, stable=True).indices
            new = torch.sort(new[order[:room]]).values
        m = new.numel()
        if m == 0:
            return urows, 0
        self._reserve(self._n + m)
        new_rows = torch.arange(self._n, self._n + m, device=self._device)
        urows[new] = new_rows
        self._coords[new_rows] = unpack_keys(ukeys[new])
        self._merge_sorted(ukeys[new], new_rows)
        self._n += m
        return urows, m

    def _evict(self, num: int, protect: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        """Remove ``num`` voxels by the eviction policy, never ``protect``; returns old row -> new row (V,).

        The last rows move into the freed ones (O(num x d)); the sorted index is filtered and
        renumbered (O(V) integers), so no full re-sort and no copy of the whole map.
        """
        n, dev = self._n, self._device
        self._own_acc()
        if self._eviction == "least_recent":
            order_key = self._last_seen[:n].to(torch.float64)  # oldest first; stable: ties to the oldest row
        else:
            order_key = -(self.centers - centre.to(torch.float32)).norm(dim=1).to(torch.float64)  # farthest first
        order_key[protect] = math.inf
        victims = torch.sort(order_key, stable=True).indices[:num]
        m = n - num
        gone = torch.zeros(n, dtype=torch.bool, device=dev)
        gone[victims] = True
        self.evicted_voxels += num
        self.evicted_points += int(self._counts[victims].sum())
        evicted_keys = voxel_keys(self._coords[victims])
        holes = torch.nonzero(gone[:m]).squeeze(1)
        movers = torch.nonzero(~gone[m:]).squeeze(1) + m  # as many as holes
        for t in (self._acc, self._counts, self._coords, self._last_seen):
            t[holes] = t[movers]
            t[m:n] = 0  # rows past the end must read as empty when reused
        remap = torch.arange(n, device=dev)
        remap[movers] = holes
        keep = ~gone[self._sorted_rows]
        self._sorted_keys, self._sorted_rows = self._sorted_keys[keep], remap[self._sorted_rows[keep]]
        self._n = m
        if self.columns is not None:
            self.columns.refresh(self, evicted_keys)
        return remap

    def _merge_sorted(self, keys: torch.Tensor, rows: torch.Tensor) -> None:
        """Merge ascending new ``keys`` into the sorted index in O(V + M log V), no full re-sort."""
        dev = self._device
        old_pos = torch.arange(self._n, device=dev) + torch.searchsorted(keys, self._sorted_keys)
        new_pos = torch.arange(keys.numel(), device=dev) + torch.searchsorted(self._sorted_keys, keys)
        total = self._n + keys.numel()
        merged_keys = torch.empty(total, dtype=torch.int64, device=dev)
        merged_rows = torch.empty(total, dtype=torch.int64, device=dev)
        merged_keys[old_pos], merged_rows[old_pos] = self._sorted_keys, self._sorted_rows
        merged_keys[new_pos], merged_rows[new_pos] = keys, rows
        self._sorted_keys, self._sorted_rows = merged_keys, merged_rows

    def _reserve(self, needed: int) -> None:
        """Grow row storage by doubling (amortised O(1) per voxel), never past max_voxels."""
        capacity = self._acc.shape[0]
        if needed <= capacity:
            return
        new_cap = min(max(needed, 2 * capacity, 1024), self._max_voxels)
        grown = []
        for t in (self._acc, self._counts, self._coords, self._last_seen):
            g = torch.zeros(new_cap, *t.shape[1:], dtype=t.dtype, device=self._device)
            g[: self._n] = t[: self._n]
            grown.append(g)
        self._acc, self._counts, self._coords, self._last_seen = grown
        self._acc_shared = False

    # ------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike) -> None:
        """Write the map to one safetensors file atomically (see :mod:`leovl_ros.voxel_map_io`)."""
        write_state(self.state(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "VoxelMap":
        """Read a map written by :meth:`save` (any version of it) onto ``device``; ``ValueError``
        on truncated or foreign files."""
        state = read_state(path)
        try:
            return cls.from_state(state, device)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
