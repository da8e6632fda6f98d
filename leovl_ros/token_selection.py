"""Which (x, y) columns become scene tokens when a map has more occupied columns than ``max_tokens``.

One function, used by the batch CFG (from voxel coordinates) and by the incremental one
(from per-column accumulators), so both pick exactly the same tokens:

- ``densest`` (the paper's CFG): the ``max_tokens`` columns with the most voxels, ties to
  the lowest (x, y). Keeps most of a room; on a whole floor it keeps the cluttered parts.
- ``nearest``: the columns whose centres are closest (in x, y) to the focus point, the
  latest camera position (``VoxelMap.viewpoint``): what the robot sees now and around it.
- ``anchor``: the columns closest to the question's referred region (its centre); without
  an anchor it behaves as ``nearest``.
  ``nearest``/``anchor`` without a focus point fall back to ``densest``.
- ``coarsen``: nothing is dropped. Columns are merged quadtree-wise into aligned 2^j x 2^j
  blocks of columns (block = floor(column / 2^j), aligned to the map origin so it does not
  depend on arrival order): level by level, the blocks holding the fewest voxels merge
  first, and only as many as needed to fit ``max_tokens``, so sparse areas get coarse,
  dense ones keep single columns and the token budget is used. A merged token is
  the CFG of the block as if it were one column: the mean over all the block's voxels of
  their height-rotated features (so each voxel weighs the same, exactly as in a column),
  and its position is the voxel-weighted centroid of the block's column centres (the
  centre of what is occupied, not of the empty square; one column = its centre).
- ``question``: the columns most relevant to the question (``question_relevance``) keep a
  token each (``question_share`` of the budget: 3/4 unless the model's config says otherwise),
  the rest of the map is covered by uniform 2^j x 2^j blocks of columns in the remaining
  budget, so nothing is dropped and the asked-about part stays sharp. Ties
  (and no relevance at all: a question that names nothing) go to the denser column. With an
  anchor, the columns of the referred region (``region_columns``) come first, the most
  relevant of them if they are more than the share: the object to describe stays sharp.

Ties in ``nearest``/``anchor`` go to the lowest (x, y); tokens are always emitted in (x, y)
raster order of their column (block), so token order never depends on frame order.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Sequence

import torch

__all__ = ["QUESTION_SHARE", "RERANK_CANDIDATES", "TOKEN_SELECTIONS", "QuestionKey", "column_relevance",
           "question_relevance", "region_columns", "rerank_candidates", "ring_means", "select_tokens"]

TOKEN_SELECTIONS = ("densest", "nearest", "anchor", "coarsen", "question")
# Decision (paper silent): by default 3/4 of the budget for the most relevant columns, 1/4 for a
# coarse cover of the rest (context for counts and "which room" questions); a model with a
# learned question scorer stores its own share (GridConfig.question_share; see docs/design.md).
QUESTION_SHARE = 0.75
_Z_SAMPLE = 2048  # columns a token's relevance mean and spread are estimated from
# Decision (paper silent): the reranker sees the key's 64 best columns: the asked object is among
# them for 85 % of held-out floor colour questions, and 128 or 256 moved its top 16 by 0-2 points.
RERANK_CANDIDATES = 64


class QuestionKey(NamedTuple):
    """A question as ``question`` selection reads it when the model has a learned scorer with a
    reranker (model/question_scorer.py): the (1, d) key and the scorer's ``rerank``."""

    key: torch.Tensor  # (1, d)
    rerank: Callable[..., torch.Tensor]  # (key, features, ring, relevance, counts) of K columns -> (K,)
    candidates: int = RERANK_CANDIDATES


def select_tokens(
    cols: torch.Tensor,
    counts: torch.Tensor,
    max_tokens: int,
    policy: str = "densest",
    voxel_size: float = 1.0,
    focus: Sequence[float] | torch.Tensor | None = None,
    relevance: torch.Tensor | None = None,
    question_share: float = QUESTION_SHARE,
    preferred: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tokens for occupied columns ``cols`` (C, 2) int64 in (x, y) raster order with ``counts`` (C,) voxels.

    ``relevance`` (C,) float: per column, how much it matters to the question (``question``
    only; None = all equal). ``question_share``: the share of ``max_tokens`` given to the most
    relevant columns, one token each (``question`` only). ``preferred`` (C,) bool: columns
    that take those single tokens before any other (``question`` only: the anchor's region).

    Returns per column its token (C,) (-1 if dropped), per token its xy (T, 2) float32 metres
    and its voxel count (T,) int64.
    """
    if policy not in TOKEN_SELECTIONS:
        raise ValueError(f"token_selection must be one of {TOKEN_SELECTIONS}, got {policy!r}")
    C, dev = cols.shape[0], cols.device
    if C <= max_tokens:
        return torch.arange(C, device=dev), _centres(cols, voxel_size), counts.clone()
    if policy == "coarsen":
        return _coarsen(cols, counts, max_tokens, voxel_size)
    if policy == "question":
        return _question(cols, counts, max_tokens, voxel_size, relevance, question_share, preferred)
    if policy in ("nearest", "anchor") and focus is not None:
        f = torch.as_tensor(focus, dtype=torch.float64).reshape(-1)[:2].to(dev)
        dist = (((cols.to(torch.float64) + 0.5) * voxel_size - f) ** 2).sum(1)  # (C,)
        order = torch.sort(dist, stable=True).indices  # stable over raster order: ties to the lowest (x, y)
    else:
        order = torch.sort(counts, descending=True, stable=True).indices
    kept = torch.sort(order[:max_tokens]).values  # (T,) back to raster order
    col_token = torch.full((C,), -1, dtype=torch.int64, device=dev)
    col_token[kept] = torch.arange(kept.numel(), device=dev)
    return col_token, _centres(cols[kept], voxel_size), counts[kept]


def question_relevance(features: torch.Tensor, queries: torch.Tensor,
                       counts: torch.Tensor | None = None) -> torch.Tensor:
    """(C,) relevance of columns with (C, d) mean ``features`` to a question's (Q, d) token embeddings,
    or to the (1, d) key of a model's learned QuestionScorer (model/question_scorer.py)
    (``counts`` (C,): the features are sums over that many voxels, e.g. the column sums).

    Per question token: the dot product of each column's feature with the token's embedding,
    standardised over the columns (so centred on the map's mean column: floor and walls, the
    bulk of every map, score ~0); a column's relevance is its best token's z-score. The
    column is not normalised: a column that shows an object strongly (a large centred
    feature) should outrank one that resembles it faintly (on a 14x-budget floor the asked
    object is among the 192 best columns for 82 % of objects, 58 % with the cosine). Tokens
    such as "what" or "the" match no column in particular; a word that names what a column
    shows stands out. O(C x d x Q), no model call.
    """
    C = features.shape[0]
    if C == 0 or queries.shape[0] == 0:
        return torch.zeros(C, device=features.device)
    score = queries.to(features.device, torch.float32) @ features.float().T  # (Q, C)
    if counts is not None:
        score /= counts.to(score.dtype)[None]
    if C == 1:
        return score.amax(0)
    # Each token's mean and spread over the columns, from an even sample of them: a z-score
    # needs no more precision, and the full pass would double the cost on a floor.
    sample = score[:, :: max(1, C // _Z_SAMPLE)]
    std, mean = torch.std_mean(sample, 1)
    return ((score - mean[:, None]) / std.clamp(min=1e-6)[:, None]).amax(0)


def column_relevance(question: torch.Tensor | QuestionKey, cols: torch.Tensor, features: torch.Tensor,
                     counts: torch.Tensor, summed: bool = True) -> torch.Tensor:
    """(C,) relevance of the (C, 2) raster-ordered columns ``cols`` with ``counts`` (C,) voxels
    and (C, d) ``features`` (their sums, or their means when not ``summed``) to ``question``:
    word embeddings or a scorer's key (``question_relevance``), or a ``QuestionKey``, whose
    reranker reorders the key's ``candidates`` best columns by what they show and what
    surrounds them (their ``ring_means``); those stay above every other column."""
    if not isinstance(question, QuestionKey):
        return question_relevance(features, question, counts if summed else None)
    rel, top, inputs = rerank_candidates(question.key, cols, features, counts, summed, question.candidates)
    with torch.no_grad():
        new = question.rerank(question.key, *inputs).to(rel.device, rel.dtype)
    out = rel.clone()
    if top.numel():
        out[top] = new - new.min() + rel.max() + 1.0  # the candidates, in the reranker's order, first
    return out


def rerank_candidates(key: torch.Tensor, cols: torch.Tensor, features: torch.Tensor, counts: torch.Tensor,
                      summed: bool, k: int = RERANK_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """The key's (C,) relevance, its ``k`` best columns (K,) and what a reranker reads of them:
    (mean features (K, d), ring means (K, d), relevance (K,), voxels (K,)). One function for
    selection and for training the reranker (training/question_scorer.py), so both see alike."""
    sums = counts if summed else None
    with torch.no_grad():
        rel = question_relevance(features, key, sums)
        top = torch.topk(rel, min(k, rel.numel())).indices  # (K,)
        inputs = (_means(features, sums, top), ring_means(cols, features, top, sums), rel[top], counts[top])
    return rel, top, inputs


def ring_means(cols: torch.Tensor, features: torch.Tensor, rows: torch.Tensor,
               counts: torch.Tensor | None = None) -> torch.Tensor:
    """(R, d) mean feature of the occupied 8-neighbour columns of each of ``rows`` of the (C, 2)
    raster-ordered ``cols`` with (C, d) ``features`` (sums over ``counts`` voxels when given,
    else means); a column with no occupied neighbour gets its own. O(R log C): 8 keys per row
    looked up among the sorted columns, only those rows' neighbours divided."""
    keys = _key(cols)  # ascending: raster order
    step = torch.tensor([[dx, dy] for dx in (-1, 0, 1) for dy in (-1, 0, 1) if dx or dy], device=cols.device)
    want = _key((cols[rows][:, None, :] + step[None]).reshape(-1, 2))  # (R * 8,)
    pos = torch.searchsorted(keys, want).clamp(max=keys.numel() - 1)
    hit = keys[pos] == want  # (R * 8,)
    own = _means(features, counts, rows)  # (R, d)
    total = torch.zeros_like(own).index_add_(0, torch.nonzero(hit).squeeze(1) // 8, _means(features, counts, pos[hit]))
    found = hit.reshape(-1, 8).sum(1, keepdim=True)  # (R, 1)
    return torch.where(found > 0, total / found.clamp(min=1), own)


def _means(features: torch.Tensor, counts: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    f = features[rows].float()
    return f if counts is None else f / counts[rows].to(f.dtype)[:, None]


def region_columns(cols: torch.Tensor, voxel_size: float, center: Sequence[float], radius: float | None,
                   size: Sequence[float] | None = None) -> torch.Tensor:
    """(C,) bool: the columns a referred region stands on: those whose square the box's
    footprint (``size``) overlaps or whose centre lies within ``radius`` of the region's centre
    (horizontally), and the column holding the centre."""
    c = torch.as_tensor(center, dtype=torch.float64).reshape(-1)[:2].to(cols.device)
    centres = (cols.to(torch.float64) + 0.5) * voxel_size  # (C, 2)
    if size is not None:
        half = torch.as_tensor(size, dtype=torch.float64).reshape(-1)[:2].to(cols.device) / 2
        inside = ((centres - c).abs() < half + voxel_size / 2).all(1)
    else:
        inside = (centres - c).norm(dim=1) <= (radius or 0.0)
    return inside | (cols == torch.floor(c / voxel_size).to(cols.dtype)).all(1)


def _question(cols: torch.Tensor, counts: torch.Tensor, max_tokens: int, voxel_size: float,
              relevance: torch.Tensor | None, share: float,
              preferred: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``share`` x ``max_tokens`` most relevant columns one token each, the rest coarsened into what is left."""
    C, dev = cols.shape[0], cols.device
    n_keep = max(1, min(max_tokens - 1, round(max_tokens * share))) if max_tokens > 1 else 1
    key = counts.to(torch.float64)  # ties of relevance (and no relevance at all): the denser column
    if relevance is not None:
        if relevance.shape != (C,):
            raise ValueError(f"relevance must have one value per column ({C},), got {tuple(relevance.shape)}")
        score = torch.nan_to_num(relevance.to(dev, torch.float64), nan=-1e9, posinf=1e9, neginf=-1e9)
        key = score + key / (2.0 * float(counts.max()) + 1.0) * 1e-6  # counts only break ties
    if preferred is None:
        top = torch.topk(key, n_keep).indices
    else:  # the region's columns first, each group by relevance
        order = torch.argsort(key, descending=True, stable=True)
        top = order[torch.argsort((~preferred.to(dev))[order].to(torch.int8), stable=True)][:n_keep]
    keep = torch.zeros(C, dtype=torch.bool, device=dev)
    keep[top] = True
    if n_keep == max_tokens:  # a budget of one token: nothing left to cover the rest with
        col_token = torch.where(keep, 0, -1)
        return col_token, _centres(cols[keep], voxel_size), counts[keep]
    rest = torch.nonzero(~keep).squeeze(1)  # (R,) raster order
    rest_token, rest_xy, rest_count = _blocks(cols[rest], counts[rest], max_tokens - n_keep, voxel_size)
    # One raster order over kept columns and coarse groups (each group at its first column).
    first = torch.full((rest_count.numel(),), C, dtype=torch.int64, device=dev).scatter_reduce_(
        0, rest_token, rest, "amin")
    anchor_col = torch.cat([torch.nonzero(keep).squeeze(1), first])  # (T,) a column of each token
    xy = torch.cat([_centres(cols[keep], voxel_size), rest_xy])
    tcount = torch.cat([counts[keep], rest_count])
    rank = torch.argsort(anchor_col)  # token order = raster order of that column
    new_of = torch.empty_like(rank)
    new_of[rank] = torch.arange(rank.numel(), device=dev)
    col_token = torch.empty(C, dtype=torch.int64, device=dev)
    col_token[keep] = new_of[: int(keep.sum())]
    col_token[rest] = new_of[int(keep.sum()) + rest_token]
    return col_token, xy[rank], tcount[rank]


def _blocks(cols: torch.Tensor, counts: torch.Tensor, budget: int,
            voxel_size: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The columns merged into aligned 2^j x 2^j blocks, j the finest level with at most ``budget``
    occupied blocks. Decision (paper silent): a uniform level, not ``coarsen``'s adaptive merge,
    for the question's background cover: it is found in one or two ``unique`` passes (the
    adaptive merge costs ~6 ms at 16k columns, over the selection's 5 ms budget) and the cover
    is context, not detail. Tokens as in ``coarsen``: voxel-weighted centroid, raster order."""
    R = cols.shape[0]
    j = max(0, math.ceil(math.log(max(R / budget, 1.0), 4)))  # 4^j columns per block at best
    span = int(cols.abs().max()) + 1 if R else 1
    while True:
        bkeys, token = torch.unique(_key(torch.div(cols, 1 << j, rounding_mode="floor")), return_inverse=True)
        if bkeys.numel() <= budget:
            break
        if (1 << j) >= span:  # Decision (paper silent): the <= 4 quadrants around the origin never merge: one token
            bkeys, token = bkeys[:1], torch.zeros_like(token)
            break
        j += 1
    T = bkeys.numel()
    tcount = torch.zeros(T, dtype=torch.int64, device=cols.device).index_add_(0, token, counts)
    w = counts.to(torch.float64)[:, None]
    centroid = torch.zeros(T, 2, dtype=torch.float64, device=cols.device).index_add_(
        0, token, (cols.to(torch.float64) + 0.5) * w) / tcount.to(torch.float64)[:, None]
    return token, centroid.to(torch.float32) * voxel_size, tcount


def _centres(cols: torch.Tensor, voxel_size: float) -> torch.Tensor:
    return (cols.to(torch.float32) + 0.5) * voxel_size


def _coarsen(cols: torch.Tensor, counts: torch.Tensor, max_tokens: int,
             voxel_size: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quadtree merge: level j groups columns in aligned 2^j x 2^j blocks. Per level, the
    blocks with the fewest voxels merge first (ties: lowest block), only as many as needed:
    sparse areas get coarse, dense ones keep their columns, and the budget is used."""
    C, dev = cols.shape[0], cols.device
    corner = cols.clone()  # min corner (in columns) of each column's group: groups are nested, corners distinct
    groups, j = C, 0
    span = int(cols.abs().max()) + 1
    while groups > max_tokens:
        j += 1
        if (1 << (j - 1)) >= span:  # the last level left only the <= 4 quadrants around the origin: one token
            corner[:] = corner.min(0).values
            break
        block = torch.div(cols, 1 << j, rounding_mode="floor")  # (C, 2)
        bkeys, binv = torch.unique(_key(block), return_inverse=True)  # raster order of blocks
        ginv = torch.unique(_key(corner), return_inverse=True)[1]  # current group of each column
        pairs = torch.unique(binv * C + ginv)  # distinct (block, group)
        saving = torch.bincount(pairs // C, minlength=bkeys.numel()) - 1  # groups a merge removes, per block
        voxels = torch.zeros(bkeys.numel(), dtype=torch.int64, device=dev).index_add_(0, binv, counts)
        need = groups - max_tokens
        if int(saving.sum()) <= need:
            merge = saving >= 0  # every block of this level
        else:
            order = torch.sort(voxels, stable=True).indices  # sparsest first; stable: ties to the lowest block
            order = order[saving[order] > 0]
            upto = int(torch.searchsorted(torch.cumsum(saving[order], 0), need)) + 1  # first prefix saving >= need
            merge = torch.zeros(bkeys.numel(), dtype=torch.bool, device=dev)
            merge[order[:upto]] = True
        groups -= int(saving[merge].sum())
        into = merge[binv]  # columns whose block merges now
        corner[into] = block[into] << j
    tkeys, col_token = torch.unique(_key(corner), return_inverse=True)  # raster order of group corners
    T = tkeys.numel()
    tcount = torch.zeros(T, dtype=torch.int64, device=dev).index_add_(0, col_token, counts)
    w = counts.to(torch.float64)[:, None]
    centroid = torch.zeros(T, 2, dtype=torch.float64, device=dev).index_add_(
        0, col_token, (cols.to(torch.float64) + 0.5) * w) / tcount.to(torch.float64)[:, None]  # column units
    return col_token, centroid.to(torch.float32) * voxel_size, tcount


def _key(xy: torch.Tensor) -> torch.Tensor:
    """(N, 2) int64 -> (N,) keys in (x, y) raster order (|y| < 2^31)."""
    return xy[:, 0] * (1 << 32) + xy[:, 1]
