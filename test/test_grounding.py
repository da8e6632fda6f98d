"""Answer grounding (gradient x input on the scene tokens): per-column weights, checked against
occlusion (the answer's log-probability with a token removed), and the flat map of a question
that names nothing in the scene."""
from __future__ import annotations

import pytest
import torch

from leovl_ros.model.grounding import answer_grounding
from leovl_ros.model.grounding import _answer_logprob
from leovl_ros.model.prompts import SceneQuery
from leovl_ros.model.tiny import tiny_leovl


@pytest.fixture(scope="module")
def scene():
    model = tiny_leovl(hidden_size=64)
    vmap = model.new_voxel_map()
    vmap.track_columns(rope=True)
    g = torch.Generator().manual_seed(0)
    points = torch.rand(2000, 3, generator=g) * torch.tensor([6.0, 5.0, 0.6])
    feats = torch.randn(2000, 64, generator=g) * 0.1
    mug = model.model.get_input_embeddings().weight.detach()[model.tokenizer.encode(" mug")[0]]
    spot = ((points[:, 0] - 1.0).abs() < 0.3) & ((points[:, 1] - 1.0).abs() < 0.3)
    feats[spot] = 3 * mug  # the only place that shows a mug
    vmap.fuse(points, feats)
    return model, vmap


def test_weights_are_a_distribution_over_the_columns(scene):
    model, vmap = scene
    g = answer_grounding(model, vmap, SceneQuery("qa", "What colour is the mug?"), "red", min_gain=-float("inf"))
    columns = torch.unique(vmap.coords[:, :2], dim=0).shape[0]
    assert g.xyz.shape == (columns, 3) and g.weight.shape == (columns,)
    assert not g.flat and bool((g.weight >= 0).all()) and float(g.weight.sum()) == pytest.approx(1.0, abs=1e-5)
    points, weights = g.top(5)
    assert points.shape == (5, 3) and bool((weights[:-1] >= weights[1:]).all())
    z = vmap.centers[:, 2]
    assert float(points[:, 2].min()) >= float(z.min()) and float(points[:, 2].max()) <= float(z.max())


def test_heaviest_tokens_are_those_whose_removal_costs_the_answer_most(scene):
    model, vmap = scene
    query = SceneQuery("qa", "What colour is the mug?")
    grid = model.scene_grid(vmap, query)
    g = answer_grounding(model, vmap, query, "red", min_gain=-float("inf"))
    tokens = model.scene_tokens(vmap, query).detach()
    # per token weight back from the columns (every token here is one column: the map is under the budget)
    assert grid.num_tokens == g.weight.numel()
    order = torch.argsort(g.weight, descending=True)
    with torch.no_grad():
        full = float(_answer_logprob(model, query, "red", tokens))

        def drop(t: int) -> float:  # occlusion: the answer without token t's content
            occluded = tokens.clone()
            occluded[t] = 0
            return full - float(_answer_logprob(model, query, "red", occluded))

        token_of = {tuple(c): i for i, c in enumerate(torch.floor(grid.xy / vmap.voxel_size).to(torch.int64).tolist())}
        col = torch.floor(g.xyz[:, :2] / vmap.voxel_size).to(torch.int64).tolist()
        top = [drop(token_of[tuple(col[i])]) for i in order[:5].tolist()]
        bottom = [drop(token_of[tuple(col[i])]) for i in order[-5:].tolist()]
    assert sum(top) > sum(bottom)


def test_an_answer_the_map_does_not_support_gets_a_flat_map_and_says_so(scene):
    model, vmap = scene
    query = SceneQuery("qa", "Tell me a joke.")
    gain = model.grounding_score(vmap, query, "no")  # log p with the map - without it, the scoring path
    g = answer_grounding(model, vmap, query, "no", min_gain=gain + 0.5)
    assert g.flat and "names nothing" in g.note and g.scene_gain == pytest.approx(gain, abs=1e-3)
    assert torch.allclose(g.weight, torch.full_like(g.weight, 1.0 / g.weight.numel()))
    assert not answer_grounding(model, vmap, query, "no", min_gain=gain - 0.5).flat
    empty = answer_grounding(model, model.new_voxel_map(), SceneQuery("qa", "What colour is the mug?"), "red")
    assert empty.flat and empty.weight.numel() == 0
