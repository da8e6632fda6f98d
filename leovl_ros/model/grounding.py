"""Where an answer came from: a weight per map column of how much its scene token mattered.

Method: gradient x input on the scene tokens. One forward and one backward pass of the LLM
over the prompt and the given answer; the weight of scene token t is
max(0, sum_d x_t,d * d log p(answer) / d x_t,d) (the first-order change of the answer's
log-probability if the token were removed: positive = the token supports the answer), and
a token's weight is spread over its columns by their voxels (a coarse token covers several).
Decision (paper silent): gradient x input rather than the alternatives —
- attention to the scene tokens says where the model looked, not what the answer rests on,
  and is spread over heads and layers (and needs the slow eager attention);
- occlusion (answer again with each token removed) is the most faithful but costs one
  forward pass per token: 256+ passes per answer;
- gradient x input costs about 3 forward passes (forward + backward) whatever the number of
  tokens, and is exact to first order.
Cost measured by bench/floors.py. A question that names nothing in the map still gets a map:
flat, and flagged so (MIN_SCENE_GAIN).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..condensed_grid import focus_point, voxel_tokens
from ..voxel_map import VoxelMap
from .prompts import SceneQuery

__all__ = ["GROUNDING_TOP_K", "Grounding", "MIN_SCENE_GAIN", "answer_grounding"]

GROUNDING_TOP_K = 16  # columns an answer reports (AskScene, Interaction); the topic carries them all

# Decision (paper silent): an answer rests on the map when the map makes it at least this many
# nats likelier than no map (log p(answer | map) - log p(answer | no scene tokens)); below it
# the question named nothing the model found there, and a gradient map would point somewhere
# for no reason: the map is flat instead. (Word-feature relevance cannot tell: filler words
# peak as high over a floor's columns as object names; bench/floors.py prints the gains.)
MIN_SCENE_GAIN = 1.0


@dataclass
class Grounding:
    xyz: torch.Tensor  # (C, 3) float32 metres: column centre (x, y) at the column's mean voxel height
    weight: torch.Tensor  # (C,) float32, sums to 1 (uniform when flat)
    flat: bool  # the question names nothing in the map: the weights say nothing either
    note: str  # one line for the user
    scene_gain: float = 0.0  # log p(answer | map) - log p(answer | no map), nats

    def top(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k heaviest columns: centres (k, 3) metres and weights (k,), heaviest first."""
        w, i = torch.sort(self.weight, descending=True, stable=True)
        return self.xyz[i[:k]], w[:k]


def _columns(vmap: VoxelMap, vox_token: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per column: centre xyz (C, 3), its token (C,) (-1: not in the grid), its voxels (C,)."""
    coords = vmap.coords
    keys = coords[:, 0] * (1 << 32) + coords[:, 1]
    ukeys, inv, n = torch.unique(keys, return_inverse=True, return_counts=True)
    C = ukeys.numel()
    z = torch.zeros(C).index_add_(0, inv.cpu(), vmap.centers[:, 2].cpu()) / n.cpu()
    first = torch.zeros(C, dtype=torch.int64).scatter_(0, inv.cpu(), torch.arange(coords.shape[0]))
    xy = (coords[first, :2].cpu().to(torch.float32) + 0.5) * vmap.voxel_size
    return torch.cat([xy, z[:, None]], 1), vox_token.cpu()[first], n.cpu()


def answer_grounding(model, vmap: VoxelMap, query: SceneQuery, answer: str,
                     min_gain: float = MIN_SCENE_GAIN) -> Grounding:
    """Per-column weights of ``answer`` to ``query`` about ``vmap`` under ``model`` (a LeoVL);
    flat when the map makes the answer less than ``min_gain`` nats likelier."""
    if vmap is None or vmap.num_voxels == 0:
        return Grounding(torch.zeros(0, 3), torch.zeros(0), True, "no map: nothing to ground the answer in")
    config = model.config.grid
    question = model.question_embeddings(query)
    center, size = query.anchor_center, query.anchor_size
    radius = query.anchor_radius if query.anchor_radius is not None else model.config.anchor_radius  # as scene_grid
    vox_token, _, tcount = voxel_tokens(vmap, config, focus_point(vmap, config, center), question,
                                        (center, radius, size))
    xyz, col_token, col_voxels = _columns(vmap, vox_token)
    with torch.enable_grad():
        tokens = model.scene_tokens(vmap, query).detach().requires_grad_(True)  # (T, d)
        logp = _answer_logprob(model, query, answer, tokens)
        (grad,) = torch.autograd.grad(logp, tokens)
    with torch.no_grad():
        gain = float(logp) - float(_answer_logprob(model, query, answer, tokens[:0]))
    token_w = (grad * tokens).sum(1).clamp(min=0).detach().cpu()  # (T,)
    col_w = torch.zeros(xyz.shape[0])
    kept = col_token >= 0
    col_w[kept] = token_w[col_token[kept]] * col_voxels[kept] / tcount.cpu()[col_token[kept]]
    if gain < min_gain or float(col_w.sum()) <= 0:
        note = (f"the question names nothing in the map: the map makes the answer only {gain:.1f} nats likelier"
                if gain < min_gain else "no scene token supports the answer")
        return Grounding(xyz, torch.full((xyz.shape[0],), 1.0 / xyz.shape[0]), True, note, gain)
    return Grounding(xyz, col_w / col_w.sum(), False, "gradient x input on the scene tokens", gain)


def _answer_logprob(model, query: SceneQuery, answer: str, tokens: torch.Tensor) -> torch.Tensor:
    """Summed log p(answer | prompt with ``tokens`` as the scene), differentiable in ``tokens``."""
    prompt = model.prompts.prompt_ids(query, tokens.shape[0])
    ans = model.prompts.answer_ids(answer)
    ids = torch.tensor([prompt + ans], device=model.device)  # (1, L)
    embeds = model.model.get_input_embeddings()(ids)  # (1, L, d)
    is_scene = (ids == model.prompts.image_pad_id).unsqueeze(-1)
    embeds = embeds.masked_scatter(is_scene, tokens.to(model.device, embeds.dtype))
    positions = torch.arange(ids.shape[1], device=model.device)[None]
    model.model.model.rope_deltas = None
    hidden = model.model.model(inputs_embeds=embeds, attention_mask=torch.ones_like(ids), position_ids=positions,
                               use_cache=False)[0]  # (1, L, d)
    model.model.model.rope_deltas = None
    logits = model.model.lm_head(hidden[0, len(prompt) - 1:-1]).float()  # (A, V): position t predicts t + 1
    return -torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):], reduction="sum")
