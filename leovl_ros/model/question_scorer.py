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
"""
from __future__ import annotations

import torch
from torch import nn


class QuestionScorer(nn.Module):
    """(Q, d) question token embeddings -> (1, d) key for the map's column features."""

    def __init__(self, d: int, rank: int) -> None:
        super().__init__()
        if not 0 < rank <= d:
            raise ValueError(f"question_scorer_rank must be in 1..{d} (the hidden size), got {rank}")
        self.word_weight = nn.Parameter(torch.zeros(d))  # u: all words equal at init
        self.up = nn.Parameter(torch.randn(d, rank) / d ** 0.5)  # U
        self.down = nn.Parameter(torch.zeros(d, rank))  # V: W = I at init

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        if words.ndim != 2 or words.shape[1] != self.word_weight.shape[0]:
            raise ValueError(f"question embeddings must be (Q, {self.word_weight.shape[0]}), got {tuple(words.shape)}")
        words = words.to(self.word_weight.device, torch.float32)
        pooled = torch.softmax(words @ self.word_weight, 0) @ words  # (d,)
        return (pooled + (pooled @ self.down) @ self.up.T)[None]  # (1, d)
