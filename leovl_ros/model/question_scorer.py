"""A learned question key for ``token_selection: question``: which map columns a question is about.

    key = W^T (sum_t softmax_t(u . e_t) e_t),   W = I + U V^T   (rank r, V = 0 at init)

e_t (Q, d) are the question's input embeddings (frozen). The softmax over the question's
tokens learns which words name things (filler words such as "what", "the", "?" get little
weight); W maps the pooled words into the space of the column features the map holds (the
vision tower's outputs, RoPE'd by height as the column sums keep them). A column's
relevance is then ``key . (S / n)`` (token_selection.question_relevance with one key): one
(d,) x (d, C) product over the incremental column sums, cheaper than the untrained rule's
one product per question token.

Decision (paper silent): why learned. Scoring columns by the raw word embeddings (the
untrained rule) needs the tower's features and the LLM's word embeddings to stay aligned;
after SFT trains the LLM they are not (leovl-tiny: best cosine of a category word with any
voxel 0.14-0.47, filler words as high), and the question's filler words won most of the kept
columns. Trained on synthetic floors (training/question_scorer.py), the asked object is
among the 192 best of ~2,000-3,700 columns for 95 % of held-out floor questions (67 % with
the word rule), among the 16 best for 59 % (26 %).
W = I + U V^T, V = 0: the scorer starts as the plain mean of the words (like LoRA's B = 0),
and r bounds its size at 7B (2 d r + d = 0.92M weights at d = 3584, r = 128).

The reranker (optional, ``rerank_hidden`` = h > 0) reorders the key's 64 best columns:

    score_c = z_c + w2 . relu(W1 [k*f_c, k*g_c, f_c - g_c, k*(f_c - g_c), z_c, log n_c] + b1) + b2

f_c the column's mean feature, g_c the mean feature of its occupied 8 neighbours, z_c the
key's z-score, n_c its voxels; w2 = 0 at init, so it starts as the key's own ranking.
Decision (paper silent): why. The key reads one column's mean, and a mug on a desk looks like
whatever else is mug-coloured on the floor; what surrounds it (the desk) and a non-linear
match tell them apart. On leovl-tiny's held-out floors the asked object's column is the most
relevant for 31 % of colour questions with the key, 47 % reranked (docs/design.md). Cost: the
64 candidates' 8 neighbours looked up among the sorted columns and a (64, 4d + 2) x (4d + 2, h)
product, ~1 ms at 16k columns; (4d + 3) h + h + 1 weights (0.9M at d = 3584, h = 64).
"""
from __future__ import annotations

import torch
from torch import nn


class QuestionScorer(nn.Module):
    """(Q, d) question token embeddings -> (1, d) key for the map's column features; with
    ``rerank_hidden`` > 0 also a reranker of the key's best columns (``rerank``)."""

    def __init__(self, d: int, rank: int, rerank_hidden: int = 0) -> None:
        super().__init__()
        if not 0 < rank <= d:
            raise ValueError(f"question_scorer_rank must be in 1..{d} (the hidden size), got {rank}")
        if rerank_hidden < 0:
            raise ValueError(f"question_rerank_hidden must be >= 0 (0: no reranker), got {rerank_hidden}")
        self.word_weight = nn.Parameter(torch.zeros(d))  # u: all words equal at init
        self.up = nn.Parameter(torch.randn(d, rank) / d ** 0.5)  # U
        self.down = nn.Parameter(torch.zeros(d, rank))  # V: W = I at init
        # Drawn after U, so a scorer's key is the same with or without a reranker (same seed).
        self.rerank_in = nn.Linear(4 * d + 2, rerank_hidden) if rerank_hidden else None
        self.rerank_out = nn.Linear(rerank_hidden, 1) if rerank_hidden else None
        if self.rerank_out is not None:  # starts as the key's own ranking (like LoRA's B = 0)
            nn.init.zeros_(self.rerank_out.weight)
            nn.init.zeros_(self.rerank_out.bias)

    @property
    def rerank_hidden(self) -> int:
        return 0 if self.rerank_in is None else self.rerank_in.out_features

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        if words.ndim != 2 or words.shape[1] != self.word_weight.shape[0]:
            raise ValueError(f"question embeddings must be (Q, {self.word_weight.shape[0]}), got {tuple(words.shape)}")
        words = words.to(self.word_weight.device, torch.float32)
        pooled = torch.softmax(words @ self.word_weight, 0) @ words  # (d,)
        return (pooled + (pooled @ self.down) @ self.up.T)[None]  # (1, d)

    def rerank(self, key: torch.Tensor, features: torch.Tensor, ring: torch.Tensor, relevance: torch.Tensor,
               counts: torch.Tensor) -> torch.Tensor:
        """(K,) new relevance of K candidate columns: ``key`` (1, d) this scorer's key,
        ``features`` (K, d) their mean features, ``ring`` (K, d) the mean feature of their
        occupied 8-neighbours (their own column's where none), ``relevance`` (K,) the key's
        z-scores, ``counts`` (K,) voxels per column. The key's z-score plus a learned term."""
        if self.rerank_in is None:
            return relevance
        w = self.rerank_in.weight  # inputs come from the map's device, the weights live with the heads
        k, f, g = key.to(w.device, w.dtype).reshape(1, -1), features.to(w.device, w.dtype), ring.to(w.device, w.dtype)
        z, n = relevance.to(w.device, w.dtype), counts.to(w.device, w.dtype)
        x = torch.cat([k * f, k * g, f - g, k * (f - g), z[:, None], n.clamp(min=1).log()[:, None]], 1)  # (K, 4d + 2)
        return z + self.rerank_out(torch.relu(self.rerank_in(x)))[:, 0]
