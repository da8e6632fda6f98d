"""Condensed feature grid (CFG): a voxel map turned into at most ``max_tokens`` scene tokens.

LEO-VL §3.1 / Appendix D: rotate each voxel feature with RoPE by its height, mean-pool the
rotated features of each (x, y) column into one token, and keep each token's column centre
``xy``: its 2D Fourier features are computed by the model, which owns W (learned or fixed,
``LeoVLConfig.fourier_w``; ``fourier_input`` here is the formula). Built on demand from the
map, never stored.

Decision (paper silent):
- RoPE position = the integer voxel height index floor(z / voxel_size) in the map frame (z
  up, so heights are floor-relative in voxel steps); channel pairs are adjacent
  (x_2i, x_2i+1) as in the paper's block-diagonal R_p, theta_i = 10000^(-2i/d).
- Pooling is the plain mean over a column's voxels (each voxel weighs the same whatever its
  number of points), as the paper pools voxel features.
- Fourier positions are column centres in metres; W (F rows, 2 columns) is drawn N(0, 1)
  from ``fourier_seed`` (``fourier_matrix``); the paper's F = [cos 2piWp || sin 2piWp] has
  2F entries (App. D.2: W has d/2 rows, so the feature has the model's width d) and its
  1/sqrt(d) scale is 1/sqrt(2F). ``fourier_features`` = None means F = d/2, resolved by the
  model, which knows d.
- Token cap (``token_selection``, see ``leovl_ros.token_selection``): by default the
  ``max_tokens`` columns with the most voxels (ties: lowest (x, y)); also nearest to the
  camera, nearest to the question's anchor, or coarser merged columns (nothing dropped).
  Tokens come in (x, y) raster order so token order does not depend on the order frames arrived.
- Incremental CFG: when the map tracks per-column sums (``VoxelMap.track_columns``, kept at
  fusion time), a ``cfg`` grid with the same ``pos_z`` is a gather of those sums plus the
  anchor correction of the few columns the referred region touches: O(tokens x d) at any
  map size. The batch path below is the reference; both use the same token selection, so
  they agree up to float summation order (tested at 1e-5).
- Anchor (§3.1: "voxels that fall within the referred region"): with ``anchor_size`` the
  region is the object's axis-aligned box (centre + extents) and every voxel the box
  intersects (overlap beyond 1/1000 of a voxel, float slack) gets the anchor embedding, so a
  rug, picture or whiteboard thinner than a voxel marks all the voxels it lies in, not only
  those whose centre it contains; otherwise the region is the sphere of ``anchor_radius``
  around ``anchor_center`` and voxels whose centre lies inside get it. The voxel containing
  the centre always does, so a zero radius still marks the referred point.
- Ablations (§4.2): ``voxel_full`` emits every voxel (no cap), ``voxel_sample`` a uniform
  sample (``sample_seed``) of as many voxels as the CFG would have tokens; both keep RoPE
  per ``pos_z`` and the Fourier input, so only the condensation changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from .column_sums import column_voxels, rope_phase
from .token_selection import QUESTION_SHARE, TOKEN_SELECTIONS, QuestionKey, column_relevance, region_columns, \
    select_tokens
from .voxel_keys import voxel_keys
from .voxel_map import VoxelMap

__all__ = ["CondensedGrid", "GridConfig", "build_grid", "focus_point", "fourier_input", "fourier_matrix",
           "referred_voxels", "rope_height", "voxel_tokens"]

_POS_Z = ("rope", "none")
_GRIDS = ("cfg", "voxel_full", "voxel_sample")
_CHUNK = 1024  # voxel rows per streamed block: 8 MB at d = 2048, cache-friendly
_OVERLAP_SLACK = 1e-3  # of a voxel: a box that only touches a voxel's face does not mark it


@dataclass
class GridConfig:
    max_tokens: int = 750
    pos_z: Literal["rope", "none"] = "rope"
    grid: Literal["cfg", "voxel_full", "voxel_sample"] = "cfg"
    fourier_features: int | None = None  # rows F of W (the feature has 2F dims); None = d/2 (App. D.2)
    fourier_seed: int = 0
    sample_seed: int = 0
    token_selection: Literal["densest", "nearest", "anchor", "coarsen", "question"] = "densest"
    question_share: float = QUESTION_SHARE  # token_selection question: budget share of single relevant columns

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")
        if self.pos_z not in _POS_Z:
            raise ValueError(f"pos_z must be one of {_POS_Z}, got {self.pos_z!r}")
        if self.grid not in _GRIDS:
            raise ValueError(f"grid must be one of {_GRIDS}, got {self.grid!r}")
        if self.token_selection not in TOKEN_SELECTIONS:
            raise ValueError(f"token_selection must be one of {TOKEN_SELECTIONS}, got {self.token_selection!r}")
        if not 0.0 < self.question_share <= 1.0:
            raise ValueError(f"question_share must be in (0, 1], got {self.question_share}")
        if self.fourier_features is not None and self.fourier_features <= 0:
            raise ValueError(f"fourier_features must be positive, got {self.fourier_features}")


@dataclass
class CondensedGrid:
    features: torch.Tensor  # (T, d) float32: RoPE'd, pooled, anchor term included
    xy: torch.Tensor  # (T, 2) float32 metres: column (or voxel) centres (the Fourier positions)
    voxel_count: torch.Tensor  # (T,) int64 voxels pooled into each token
    num_voxels: int  # voxels in the map
    compression_rate: float  # tokens / voxels (0 for an empty map)
    preservation_rate: float  # voxels kept / voxels (1 for an empty map: nothing was dropped)

    @property
    def num_tokens(self) -> int:
        return int(self.features.shape[0])


_rope_phase = rope_phase  # (L, d/2) phases; lives with the column sums that also rotate


def rope_height(features: torch.Tensor, height_index: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate (N, d) features by height: pair (x_2i, x_2i+1) turns by p * base^(-2i/d). Differentiable."""
    n, d = features.shape
    levels, inverse = torch.unique(height_index, return_inverse=True)  # (L,), (N,)
    phase = _rope_phase(levels, d, base)[inverse]  # (N, d/2)
    x = torch.view_as_complex(features.float().contiguous().view(n, d // 2, 2))  # (N, d/2)
    return torch.view_as_real(x * phase).view(n, d)


def fourier_matrix(num_features: int, seed: int) -> torch.Tensor:
    """(F, 2) float64 W ~ N(0, 1), the same draw for the same ``seed`` on every machine."""
    return torch.randn(num_features, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64,
                       device="cpu")  # explicit: also under a meta-device context (parameter counting)


def fourier_input(xy: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """(T, 2) metres -> (T, 2F) float32 [cos 2piWp || sin 2piWp] / sqrt(2F); differentiable in W.

    The phase is computed in float64 on W's device and reduced to its fraction of a cycle
    before the float32 cos/sin: |Wp| reaches 1e2 cycles in a large room.
    """
    cycles = xy.to(W.device, torch.float64) @ W.to(torch.float64).T  # (T, F)
    angle = (2.0 * math.pi * (cycles - cycles.detach().round())).to(torch.float32)  # (T, F) in [-pi, pi]
    return torch.cat([angle.cos(), angle.sin()], 1) / math.sqrt(2 * W.shape[0])


def referred_voxels(vmap: VoxelMap, center: Sequence[float], radius: float | None,
                    size: Sequence[float] | None = None) -> torch.Tensor:
    """(V,) bool: the map's voxels in a referred region, exactly as the anchor marks them."""
    return _anchor_mask(vmap, torch.arange(vmap.num_voxels, device=vmap.device), center, radius, size)


def _anchor_mask(vmap: VoxelMap, rows: torch.Tensor, center: Sequence[float], radius: float | None,
                 size: Sequence[float] | None = None) -> torch.Tensor:
    """(S,) bool: selected voxels the referred box (``size``) intersects or whose centre the
    sphere (``radius``) holds, plus the one holding its centre."""
    c = torch.as_tensor(center, dtype=torch.float32).reshape(-1).to(vmap.device)
    coords = vmap.coords[rows]  # (S, 3)
    centers = (coords.to(torch.float32) + 0.5) * vmap.voxel_size  # as VoxelMap.centers, for these rows only
    if c.shape != (3,) or not bool(torch.isfinite(c).all()):
        raise ValueError(f"anchor_center must be 3 finite coordinates in metres, got {center}")
    if size is not None:
        half = torch.as_tensor(size, dtype=torch.float32).reshape(-1).to(vmap.device) / 2
        if half.shape != (3,) or not bool(torch.isfinite(half).all()) or bool((half < 0).any()):
            raise ValueError(f"anchor_size must be 3 finite extents >= 0 metres, got {size}")
        reach = half + vmap.voxel_size * (0.5 - _OVERLAP_SLACK)  # centre distance at which the cubes overlap
        inside = ((centers - c).abs() < reach).all(1)
    elif radius is None or not (radius >= 0 and math.isfinite(radius)):
        raise ValueError(f"anchor_center needs a finite anchor_radius >= 0 metres, got {radius}")
    else:
        inside = (centers - c).norm(dim=1) <= radius
    holder = (coords == torch.floor(c / vmap.voxel_size).to(torch.int64)).all(1)
    return inside | holder


def _column_keys(coords: torch.Tensor) -> torch.Tensor:
    """(V,) key of each voxel's (x, y) column, ordered like (x, y)."""
    return voxel_keys(coords * torch.tensor([1, 1, 0], device=coords.device))


def focus_point(vmap: VoxelMap, config: GridConfig, anchor_center) -> Sequence[float] | None:
    """The point ``nearest``/``anchor`` selection centres on: the anchor (for ``anchor``) or the camera."""
    if config.token_selection == "anchor" and anchor_center is not None:
        return [float(v) for v in torch.as_tensor(anchor_center).reshape(-1)[:2]]
    return vmap.viewpoint


def question_region(config: GridConfig, cols: torch.Tensor, voxel_size: float,
                    region: tuple | None) -> torch.Tensor | None:
    """(C,) bool: the columns of the anchor's region (center, radius, size), which ``question``
    selection keeps first; None without an anchor or under another selection."""
    if region is None or region[0] is None or config.token_selection != "question":
        return None
    return region_columns(cols, voxel_size, *region)


def voxel_tokens(vmap: VoxelMap, config: GridConfig, focus: Sequence[float] | None = None,
                 question: torch.Tensor | QuestionKey | None = None,
                 region: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per voxel its token (-1 if its column was cut), per token its xy (T, 2) and voxel count (T,).

    ``question``: the question's (Q, d) token embeddings, a scorer's (1, d) key or a
    ``QuestionKey`` (key and reranker), for ``token_selection: question``;
    ``region``: the anchor's (center, radius, size), whose columns that selection keeps first."""
    coords = vmap.coords
    ckeys, inverse, ccount = torch.unique(_column_keys(coords), return_inverse=True, return_counts=True)  # (C,)
    first = torch.zeros_like(ckeys).scatter_(0, inverse, torch.arange(coords.shape[0], device=coords.device))
    relevance = None
    cols = coords[first, :2]
    if config.token_selection == "question" and question is not None and ckeys.numel() > config.max_tokens:
        means = _pool(vmap, torch.arange(coords.shape[0], device=coords.device), inverse, ccount,
                      config.pos_z == "rope", None, None)  # (C, d): what the column sums hold, from the voxels
        relevance = column_relevance(question, cols, means, ccount, summed=False)
    col_token, xy, count = select_tokens(cols, ccount, config.max_tokens, config.token_selection, vmap.voxel_size,
                                         focus, relevance, config.question_share,
                                         question_region(config, cols, vmap.voxel_size, region))
    return col_token[inverse], xy, count


def _add_anchor(pooled: torch.Tensor, vmap: VoxelMap, rows: torch.Tensor, token: torch.Tensor, rope: bool,
                embedding: torch.Tensor) -> torch.Tensor:
    """``pooled`` (T, d) plus R(z) e for each anchored voxel ``rows`` in its ``token``: O(anchored voxels x d).

    The anchor is linear, so its term is added in closed form, one rotated copy of e per
    anchored voxel; this is the only part that carries gradients.
    """
    heights = vmap.coords[rows, 2] if rope else torch.zeros_like(rows)
    e = embedding.to(pooled.device, torch.float32).expand(rows.numel(), vmap.feature_dim)  # (A, d)
    return pooled.index_add(0, token, rope_height(e, heights) if rope else e)


def _pool(
    vmap: VoxelMap,
    rows: torch.Tensor,
    token: torch.Tensor,
    voxel_count: torch.Tensor,
    rope: bool,
    anchor: torch.Tensor | None,
    anchor_embedding: torch.Tensor | None,
) -> torch.Tensor:
    """(T, d) mean over each token's voxels of R(z) (mean feature + anchor), streamed.

    The map can hold V x d = 10k x 2048 floats (80 MB): building all means, then all rotated
    copies would write several such arrays (slow first-touch pages, peak memory). Instead
    voxels go height level by height level in chunks of ``_CHUNK`` rows, each rotated in place
    by its level's single phase vector and scatter-added into the (T, d) output.
    """
    d, T, dev = vmap.feature_dim, voxel_count.numel(), vmap.device
    heights = vmap.coords.index_select(0, rows)[:, 2] if rope else torch.zeros_like(rows)  # (S,)
    levels, level_of, per_level = torch.unique(heights, return_inverse=True, return_counts=True)  # (L,), (S,), (L,)
    phase = _rope_phase(levels, d) if rope else None  # (L, d/2)
    by_level = torch.argsort(level_of, stable=True)  # (S,)
    pooled = torch.zeros(T, d, device=dev)
    buf = torch.empty(min(_CHUNK, rows.numel()), d, device=dev)  # reused: see VoxelMap.means
    start = 0
    for lvl, n in enumerate(per_level.tolist()):
        for lo in range(start, start + n, _CHUNK):
            idx = by_level[lo : min(lo + _CHUNK, start + n)]
            x = vmap.means(rows[idx], out=buf[: idx.numel()])  # (c, d)
            if phase is not None:
                torch.view_as_complex(x.view(-1, d // 2, 2)).mul_(phase[lvl])
            pooled.index_add_(0, token[idx], x)
        start += n
    if anchor is not None and bool(anchor.any()):
        pooled = _add_anchor(pooled, vmap, rows[anchor], token[anchor], rope, anchor_embedding)
    return pooled.div_(voxel_count.to(torch.float32)[:, None])


def _anchor_candidates(vmap: VoxelMap, ids: torch.Tensor, cols: torch.Tensor, center, radius,
                       size) -> tuple[torch.Tensor, torch.Tensor]:
    """Voxel rows of the occupied columns (``ids`` (C,) with coords ``cols`` (C, 2)) under the referred
    region's xy rectangle (one column of margin: float centres on the border), and the index
    into ``ids`` of each row's column."""
    c = torch.as_tensor(center, dtype=torch.float64).reshape(-1)
    half = (torch.as_tensor(size, dtype=torch.float64).reshape(-1)[:2] / 2 if size is not None
            else torch.full((2,), float(radius or 0.0), dtype=torch.float64))
    if c.shape != (3,) or not bool(torch.isfinite(c).all() & torch.isfinite(half).all()):
        return torch.zeros(0, dtype=torch.int64, device=ids.device), torch.zeros(0, dtype=torch.int64)
    lo = torch.floor((c[:2] - half) / vmap.voxel_size).to(torch.int64) - 1
    hi = torch.floor((c[:2] + half) / vmap.voxel_size).to(torch.int64) + 1
    under = ((cols >= lo.to(ids.device)) & (cols <= hi.to(ids.device))).all(1)
    which = torch.nonzero(under).squeeze(1)
    rows, owner = column_voxels(vmap, ids[which])
    return rows, which[owner]


def _grid_from_columns(vmap: VoxelMap, config: GridConfig, anchor_center, anchor_radius, anchor_embedding,
                       anchor_size, question=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features, xy, voxel_count) of the CFG from the map's column sums: O(tokens x d)
    (``question`` selection: O(columns x d), the relevance of every column)."""
    ids, cols, counts, srows = vmap.columns.columns()  # (C,), (C, 2), (C,), (C,)
    relevance = None
    if config.token_selection == "question" and question is not None and ids.numel() > config.max_tokens:
        relevance = column_relevance(question, cols, vmap.columns.sums(srows), counts)
    region = question_region(config, cols, vmap.voxel_size, (anchor_center, anchor_radius, anchor_size))
    col_token, xy, tcount = select_tokens(cols, counts, config.max_tokens, config.token_selection,
                                          vmap.voxel_size, focus_point(vmap, config, anchor_center), relevance,
                                          config.question_share, region)
    T = tcount.numel()
    if T == ids.numel() or config.token_selection not in ("coarsen", "question"):  # one column per token
        pooled = vmap.columns.sums(srows[col_token >= 0])  # (T, d)
    else:  # merged blocks: every column adds into its block (O(columns x d))
        pooled = vmap.columns.pool_into(torch.zeros(T + 1, vmap.feature_dim, device=vmap.device), srows,
                                        col_token)[:T]
    if anchor_center is not None:
        rows, col = _anchor_candidates(vmap, ids, cols, anchor_center, anchor_radius, anchor_size)
        token = col_token[col]
        rows, token = rows[token >= 0], token[token >= 0]
        inside = _anchor_mask(vmap, rows, anchor_center, anchor_radius, anchor_size)
        if bool(inside.any()):
            pooled = _add_anchor(pooled, vmap, rows[inside], token[inside], config.pos_z == "rope", anchor_embedding)
    return pooled.div_(tcount.to(torch.float32)[:, None]), xy, tcount


def build_grid(
    vmap: VoxelMap,
    config: GridConfig,
    anchor_center: Sequence[float] | torch.Tensor | None = None,
    anchor_radius: float | None = None,
    anchor_embedding: torch.Tensor | None = None,
    anchor_size: Sequence[float] | None = None,
    incremental: bool = True,
    question: torch.Tensor | QuestionKey | None = None,
) -> CondensedGrid:
    """CFG (or a voxel-token ablation) of ``vmap``; differentiable w.r.t. ``anchor_embedding``.

    The anchor applies when ``anchor_center`` is given (then radius and embedding are
    required); an embedding without a centre is ignored, so the model can always pass it.
    Tensors come back on the map's device; the model moves them to its own. With
    ``incremental`` (default) a ``cfg`` grid comes from the map's column sums when it tracks
    them with the same ``pos_z``; ``incremental=False`` forces the batch reference.
    ``question``: the question's (Q, d) token embeddings, a scorer's (1, d) key or a
    ``QuestionKey``, read by ``token_selection: question``.
    """
    d, V = vmap.feature_dim, vmap.num_voxels
    dev = vmap.device
    if anchor_center is not None and anchor_embedding is None:
        raise ValueError("anchor_center was given without anchor_embedding (the model's learned anchor)")
    if anchor_center is not None and tuple(anchor_embedding.shape) != (d,):
        raise ValueError(f"anchor_embedding must have shape ({d},), got {tuple(anchor_embedding.shape)}")
    if V == 0:
        return CondensedGrid(torch.zeros(0, d, device=dev), torch.zeros(0, 2, device=dev),
                             torch.zeros(0, dtype=torch.int64, device=dev), 0, 0.0, 1.0)
    coords = vmap.coords  # (V, 3)
    rope = config.pos_z == "rope"

    if config.grid == "cfg" and incremental and vmap.columns is not None and vmap.columns.rope == rope:
        if anchor_center is not None:
            _anchor_mask(vmap, coords[:0, 0], anchor_center, anchor_radius, anchor_size)  # validates, as below
        feats, xy, voxel_count = _grid_from_columns(vmap, config, anchor_center, anchor_radius, anchor_embedding,
                                                    anchor_size, question)
    else:
        if config.grid == "cfg":
            vox_token, xy, voxel_count = voxel_tokens(vmap, config, focus_point(vmap, config, anchor_center),
                                                      question, (anchor_center, anchor_radius, anchor_size))
            rows = torch.nonzero(vox_token >= 0).squeeze(1)  # (S,) voxels that survive the cap
            token = vox_token[rows]  # (S,)
        else:
            order = torch.argsort(voxel_keys(coords))  # (V,) raster order
            if config.grid == "voxel_sample":
                num_cols = torch.unique(_column_keys(coords)).numel()
                n = min(num_cols, config.max_tokens)
                pick = torch.randperm(V, generator=torch.Generator().manual_seed(config.sample_seed))[:n].to(dev)
                order = order[torch.sort(pick).values]
            rows = order  # (S,) one token per voxel
            token = torch.arange(rows.numel(), device=dev)
            xy = vmap.centers[rows, :2]  # (T, 2)
            voxel_count = torch.ones(rows.numel(), dtype=torch.int64, device=dev)
        anchor = None if anchor_center is None else _anchor_mask(vmap, rows, anchor_center, anchor_radius,
                                                                 anchor_size)  # (S,)
        feats = _pool(vmap, rows, token, voxel_count, rope, anchor, anchor_embedding)  # (T, d)

    kept = int(voxel_count.sum())
    return CondensedGrid(
        features=feats,
        xy=xy,
        voxel_count=voxel_count,
        num_voxels=V,
        compression_rate=voxel_count.numel() / V,
        preservation_rate=kept / V,
    )
