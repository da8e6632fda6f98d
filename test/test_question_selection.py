"""token_selection: question — relevance of columns to a question, the kept/coarse split, and the
model path (the question's embeddings choose the tokens)."""
from __future__ import annotations

import torch

from leovl_ros.condensed_grid import GridConfig, build_grid
from leovl_ros.model.prompts import SceneQuery
from leovl_ros.model.tiny import tiny_leovl
from leovl_ros.token_selection import QUESTION_SHARE, QuestionKey, column_relevance, question_relevance, ring_means, \
    select_tokens
from leovl_ros.voxel_map import VoxelMap


def _grid_cols(nx: int, ny: int) -> torch.Tensor:
    return torch.stack(torch.meshgrid(torch.arange(nx), torch.arange(ny), indexing="ij"), -1).reshape(-1, 2)


def test_most_relevant_columns_keep_a_token_each_and_nothing_is_dropped():
    g = torch.Generator().manual_seed(0)
    cols = _grid_cols(40, 30)  # 1200 columns, raster order
    counts = torch.randint(1, 10, (cols.shape[0],), generator=g)
    relevance = torch.randn(cols.shape[0], generator=g)
    col_token, xy, tcount = select_tokens(cols, counts, 64, "question", 0.3, None, relevance)
    assert xy.shape[0] <= 64 and int(col_token.min()) >= 0  # every column lands in some token
    assert int(tcount.sum()) == int(counts.sum())
    per_token = torch.bincount(col_token, minlength=xy.shape[0])
    top = torch.topk(relevance, round(64 * QUESTION_SHARE)).indices
    assert bool((per_token[col_token[top]] == 1).all())  # the relevant ones are single columns...
    assert torch.allclose(xy[col_token[top]], (cols[top].float() + 0.5) * 0.3)  # ...at their own centres
    first = torch.full((xy.shape[0],), cols.shape[0]).scatter_reduce(0, col_token, torch.arange(cols.shape[0]),
                                                                     "amin")
    assert bool((first[1:] > first[:-1]).all())  # tokens in raster order of their first column


def test_without_relevance_the_kept_part_is_the_densest():
    cols = _grid_cols(20, 20)
    counts = torch.arange(400) % 13 + 1
    col_token, _, _ = select_tokens(cols, counts, 40, "question", 1.0)
    single = torch.bincount(col_token)[col_token] == 1
    assert int(counts[single].min()) >= int(counts[~single].max())


def test_relevance_finds_the_column_that_shows_the_word():
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(500, 32, generator=g)
    word = torch.randn(32, generator=g)
    feats[123] += 3 * word  # the column that shows it
    filler = torch.randn(4, 32, generator=g)  # "what", "is", "the", "?": match nothing in particular
    rel = question_relevance(feats, torch.cat([filler, word[None]]))
    assert int(rel.argmax()) == 123
    assert question_relevance(feats, torch.zeros(0, 32)).abs().sum() == 0


def test_incremental_and_batch_grids_agree_under_question_selection():
    g = torch.Generator().manual_seed(2)
    vmap = VoxelMap(feature_dim=16, voxel_size=0.3)
    vmap.track_columns(rope=True)
    vmap.fuse(torch.rand(5000, 3, generator=g) * torch.tensor([10.0, 8.0, 2.0]), torch.randn(5000, 16, generator=g))
    question = torch.randn(3, 16, generator=g)
    config = GridConfig(max_tokens=100, token_selection="question")
    inc = build_grid(vmap, config, question=question)
    ref = build_grid(vmap, config, question=question, incremental=False)
    assert inc.num_tokens == ref.num_tokens <= 100 and inc.preservation_rate == 1.0
    assert torch.allclose(inc.xy, ref.xy) and torch.allclose(inc.features, ref.features, atol=1e-5)


def test_the_model_selects_tokens_by_the_question_it_is_asked():
    model = tiny_leovl(hidden_size=32, grid=GridConfig(max_tokens=24, token_selection="question"))
    vmap = model.new_voxel_map()
    vmap.track_columns(rope=True)
    g = torch.Generator().manual_seed(3)
    emb = model.model.get_input_embeddings().weight.detach()
    ids = {w: model.tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in ("mug", "sofa")}
    points = torch.rand(3000, 3, generator=g) * torch.tensor([12.0, 9.0, 1.0])
    feats = torch.randn(3000, 32, generator=g) * 0.1
    spots = {"mug": (1.0, 1.0), "sofa": (10.0, 8.0)}  # each word shown in one corner column
    for word, (x, y) in spots.items():
        near = ((points[:, 0] - x).abs() < 0.3) & ((points[:, 1] - y).abs() < 0.3)
        feats[near] = emb[ids[word]] / emb[ids[word]].norm()  # a clear view: stronger than the clutter around
    vmap.fuse(points, feats)
    grids = {w: model.scene_grid(vmap, SceneQuery("qa", f"What colour is the {w}?")) for w in spots}
    for word, (x, y) in spots.items():
        single = grids[word].voxel_count <= 3  # token of one column: the map holds ~1 m of height, 3 voxels
        close = ((grids[word].xy - torch.tensor([x, y])).abs() < 0.45).all(1)
        assert bool((single & close).any()), word
    assert not torch.equal(grids["mug"].xy, grids["sofa"].xy)
    batch = model.prepare_batch([vmap, vmap], [SceneQuery("qa", "What colour is the mug?"),
                                               SceneQuery("qa", "What colour is the sofa?")])
    assert batch.num_scene_tokens == [grids["mug"].num_tokens, grids["sofa"].num_tokens]


def test_budgets_below_four_tokens_cover_a_map_around_the_origin():
    """Blocks are aligned to the map origin, so the four quadrants around it never merge: a budget
    of 1-3 cover tokens (a small max_tokens, or question_share near 1) once looped until the block
    side overflowed. Every column must still land in a token, within the budget, with all voxels."""
    g = torch.Generator().manual_seed(3)
    cols = torch.unique(torch.randint(-40, 40, (300, 2), generator=g), dim=0)  # raster order, all quadrants
    counts = torch.randint(1, 9, (cols.shape[0],), generator=g)
    relevance = torch.rand(cols.shape[0], generator=g)
    cases = [("coarsen", t, QUESTION_SHARE) for t in (1, 2, 3, 4)]
    cases += [("question", t, QUESTION_SHARE) for t in (2, 3, 4)] + [("question", 256, 0.99)]
    for policy, budget, share in cases:
        col_token, xy, tcount = select_tokens(cols, counts, budget, policy, 0.5, None, relevance, share)
        assert 1 <= tcount.numel() <= budget, (policy, budget)
        assert bool((col_token >= 0).all()), (policy, budget)
        assert int(tcount.sum()) == int(counts.sum())
    _, xy, tcount = select_tokens(cols, counts, 1, "coarsen", 0.5)
    w = counts.double()[:, None]
    assert torch.allclose(xy[0].double(), ((cols.double() + 0.5) * 0.5 * w).sum(0) / w.sum(), atol=1e-4)


def test_an_anchor_keeps_the_referred_region_sharp_under_question_selection():
    """'Describe this object' names nothing: without the anchor the object's columns merge into
    coarse blocks; with it, every column its box stands on keeps a token of its own, in both grid
    paths, and the incremental and batch grids still agree."""
    g = torch.Generator().manual_seed(4)
    vmap = VoxelMap(feature_dim=16, voxel_size=0.3)
    vmap.track_columns(rope=True)
    vmap.fuse(torch.rand(6000, 3, generator=g) * torch.tensor([12.0, 9.0, 2.0]), torch.randn(6000, 16, generator=g))
    box_lo, box_hi = torch.tensor([7.05, 2.05]), torch.tensor([7.85, 2.85])  # 0.8 m square: 4 x 4 columns below it
    question = torch.randn(1, 16, generator=g)
    config = GridConfig(max_tokens=64, token_selection="question", question_share=0.5)
    centre, size = (7.45, 2.45, 1.0), (0.8, 0.8, 2.0)
    truth = [(x, y) for x in range(23, 27) for y in range(6, 10)]  # columns (x, y) the box's footprint overlaps
    assert all(box_lo[0] < (x + 1) * 0.3 and x * 0.3 < box_hi[0] and box_lo[1] < (y + 1) * 0.3 and y * 0.3 < box_hi[1]
               for x, y in truth)

    def single_at(grid) -> int:
        one = torch.zeros(grid.num_tokens, dtype=torch.bool)
        for x, y in truth:  # a token exactly at the column's centre that pools only that column
            at = ((grid.xy - torch.tensor([(x + 0.5) * 0.3, (y + 0.5) * 0.3])).abs() < 1e-4).all(1)
            one |= at
        return int(one.sum())

    plain = build_grid(vmap, config, question=question)
    anchored = build_grid(vmap, config, anchor_center=centre, anchor_radius=None, anchor_size=size,
                          anchor_embedding=torch.zeros(16), question=question)
    batch = build_grid(vmap, config, anchor_center=centre, anchor_radius=None, anchor_size=size,
                       anchor_embedding=torch.zeros(16), question=question, incremental=False)
    assert single_at(plain) < len(truth) and single_at(anchored) == len(truth)
    assert torch.allclose(anchored.xy, batch.xy) and torch.allclose(anchored.features, batch.features, atol=1e-5)


def test_ring_means_average_the_occupied_neighbours_by_hand():
    cols = torch.tensor([[-2, -1], [-2, 0], [-1, -1], [-1, 1], [0, 0], [5, 5]])  # raster order, around the origin
    counts = torch.tensor([1, 2, 4, 1, 2, 3])
    means = torch.arange(6 * 3, dtype=torch.float32).reshape(6, 3)
    sums = means * counts[:, None]
    rows = torch.tensor([2, 4, 5])
    # by hand: (-1,-1) touches (-2,-1), (-2,0), (0,0); (0,0) touches (-1,-1), (-1,1); (5,5) none: its own
    want = torch.stack([(means[0] + means[1] + means[4]) / 3, (means[2] + means[3]) / 2, means[5]])
    assert torch.allclose(ring_means(cols, means, rows), want)
    assert torch.allclose(ring_means(cols, sums, rows, counts), want)  # from the column sums: the same


def _left_first(key, features, ring, relevance, counts):
    """A reranker that knows where things are: the lower a candidate's first feature (its x), the better."""
    return -features[:, 0]


def test_a_reranker_orders_the_keys_best_columns_and_keeps_them_first():
    g = torch.Generator().manual_seed(4)
    cols = _grid_cols(30, 20)
    counts = torch.randint(1, 6, (600,), generator=g)
    means = torch.randn(600, 8, generator=g)
    means[:, 0] = cols[:, 0].float()  # feature 0 = the column's x, for the reranker above
    key = torch.randn(1, 8, generator=g)
    key[0, 0] = 0.0  # the key itself ignores x
    plain = question_relevance(means, key)
    rel = column_relevance(QuestionKey(key, _left_first, 10), cols, means * counts[:, None], counts)
    top10 = set(torch.topk(plain, 10).indices.tolist())
    order = torch.argsort(rel, descending=True).tolist()
    assert set(order[:10]) == top10  # the key's ten best stay the ten best...
    assert [int(cols[i, 0]) for i in order[:10]] == sorted(int(cols[i, 0]) for i in top10)  # ...in the reranker's order
    assert order[10:] == torch.argsort(plain, descending=True).tolist()[10:]  # the rest as the key ranks them


def test_incremental_and_batch_grids_agree_with_a_reranker():
    g = torch.Generator().manual_seed(5)
    vmap = VoxelMap(feature_dim=16, voxel_size=0.3)
    vmap.track_columns(rope=True)
    vmap.fuse(torch.rand(5000, 3, generator=g) * torch.tensor([10.0, 8.0, 2.0]) - 4.0,
              torch.randn(5000, 16, generator=g))
    ring_first = (lambda key, f, ring, rel, n: (ring @ key[0]) * n.log())  # neighbours and voxel counts matter
    question = QuestionKey(torch.randn(1, 16, generator=g), ring_first, 32)
    config = GridConfig(max_tokens=100, token_selection="question", question_share=0.1)
    inc = build_grid(vmap, config, question=question)
    ref = build_grid(vmap, config, question=question, incremental=False)
    plain = build_grid(vmap, config, question=question.key)
    assert inc.num_tokens == ref.num_tokens <= 100
    assert torch.allclose(inc.xy, ref.xy) and torch.allclose(inc.features, ref.features, atol=1e-5)
    assert not torch.equal(inc.xy, plain.xy)  # the reranker changed which columns stay single
