"""Scene tokens: CFG column features + learned Fourier-feature MLP (xy) + learned anchor.

f_Fourier(x, p) = x + MLP([cos 2piWp || sin 2piWp] / sqrt(2F))   (paper §3.1, App. D.2)

The RoPE/pooling come from ``leovl_ros.condensed_grid``; this module owns the learned parts ("heads":
W, the MLP, the anchor), kept in float32 whatever the LLM dtype (they are tiny and fp32
keeps their updates exact under bf16 LLMs).
"""
from __future__ import annotations

import torch
from torch import nn

from ..condensed_grid import CondensedGrid, build_grid, fourier_input, fourier_matrix
from ..token_selection import QuestionKey
from ..voxel_map import VoxelMap
from .config import LeoVLConfig
from .prompts import SceneQuery
from .question_scorer import QuestionScorer


class SceneHeads(nn.Module):
    """Learned parts of the scene tokens: ``fourier_w`` and ``fourier_mlp`` (absent when
    pos_xy='none'), ``anchor``, and ``question_scorer`` (which columns become tokens under
    ``token_selection: question``; None unless ``question_scorer_rank`` is set).

    ``fourier_w`` (F, 2) starts at the N(0, 1) draw of ``grid.fourier_seed`` (App. D.2); it
    is a parameter with ``fourier_w: learned`` (see LeoVLConfig) and a buffer, not saved,
    with "fixed" (so bundles of fixed-W models hold the same tensors as before W could
    learn). The trainer decays it like every matrix (weight decay 0.05 x lr 3e-5 shrinks it
    by ~1.5e-6 a step). The fixed buffer stays float64: it is exactly the W old bundles
    were trained with.
    Decision (paper silent): at init the MLP's output layer is zero, so training starts from
    the pure vision features; the anchor is N(0, 0.02^2), small against feature norms but
    not zero so the referred region is marked from the first step.
    """

    def __init__(self, config: LeoVLConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.pos_xy = config.pos_xy
        if config.pos_xy == "fourier":
            W = fourier_matrix(config.fourier_frequencies, config.grid.fourier_seed)  # (F, 2) float64
            if config.fourier_w == "learned":
                self.fourier_w = nn.Parameter(W.to(torch.float32))
            else:
                self.register_buffer("fourier_w", W, persistent=False)
            hidden = config.fourier_mlp_hidden or d
            self.fourier_mlp = nn.Sequential(nn.Linear(config.fourier_dim, hidden), nn.GELU(), nn.Linear(hidden, d))
            nn.init.zeros_(self.fourier_mlp[2].weight)
            nn.init.zeros_(self.fourier_mlp[2].bias)
        self.anchor = nn.Parameter(torch.randn(d) * 0.02)
        rank = config.question_scorer_rank
        self.question_scorer = QuestionScorer(d, rank, config.question_rerank_hidden) if rank is not None else None

    def forward(self, grid: CondensedGrid) -> torch.Tensor:
        """(T, d) scene tokens in float32 on the heads' device."""
        device = self.anchor.device
        tokens = grid.features.to(device, torch.float32)  # (T, d)
        if self.pos_xy == "fourier" and grid.num_tokens:
            tokens = tokens + self.fourier_mlp(fourier_input(grid.xy, self.fourier_w))
        return tokens


def check_map(vmap: VoxelMap, config: LeoVLConfig, encoder_id: str) -> None:
    """Reject maps whose features cannot mean anything to this model (clear message)."""
    if vmap.feature_dim != config.hidden_size:
        raise ValueError(
            f"voxel map has {vmap.feature_dim}-dim features but the model expects {config.hidden_size}: "
            "it was built with another model's vision encoder; rebuild it with model.new_voxel_map()"
        )
    other = vmap.metadata.get("encoder_id")
    if other is not None and other != encoder_id:
        raise ValueError(
            f"voxel map was built with encoder {other!r}, this model's is {encoder_id!r}; "
            "features of different encoders are not comparable: rebuild the map"
        )
    if abs(vmap.voxel_size - config.voxel_size) > 1e-9:
        raise ValueError(
            f"voxel map has voxel size {vmap.voxel_size} m, the model was configured for {config.voxel_size} m"
        )


def scene_grid(vmap: VoxelMap | None, query: SceneQuery | None, config: LeoVLConfig,
               heads: SceneHeads, question: torch.Tensor | QuestionKey | None = None) -> CondensedGrid | None:
    """The CFG of ``vmap`` for ``query`` (anchor applied when the query gives a centre;
    ``question``: its token embeddings, scorer key or QuestionKey, for ``token_selection: question``)."""
    if vmap is None or vmap.num_voxels == 0:
        return None
    center = radius = size = None
    if query is not None and query.anchor_center is not None:
        center, size = query.anchor_center, query.anchor_size
        radius = query.anchor_radius if query.anchor_radius is not None else config.anchor_radius
    return build_grid(vmap, config.grid, anchor_center=center, anchor_radius=radius,
                      anchor_embedding=heads.anchor if center is not None else None, anchor_size=size,
                      question=question)
