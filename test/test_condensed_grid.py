"""Condensed feature grid: RoPE height, column pooling, token cap, anchor, Fourier input, ablations."""

import math

import numpy as np
import pytest
import torch

from leovl_ros.condensed_grid import (CondensedGrid, GridConfig, build_grid, fourier_input, fourier_matrix, rope_height,
                           voxel_tokens)
from leovl_ros.voxel_map import VoxelMap

VS = 0.2


def put(vmap: VoxelMap, voxels: dict) -> None:
    """Fuse one point at the centre of each voxel (x, y, z) index with the given feature."""
    coords = np.array(list(voxels.keys()), np.float32)
    vmap.fuse((coords + 0.5) * vmap.voxel_size, np.stack([np.asarray(f, np.float32) for f in voxels.values()]))


def rope_matrix(p: float, d: int) -> torch.Tensor:
    """The paper's block-diagonal R_p (Appendix D.1), built literally."""
    R = torch.zeros(d, d, dtype=torch.float64)
    for i in range(d // 2):
        a = p * 10000 ** (-2 * i / d)
        c, s = math.cos(a), math.sin(a)
        R[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, -s], [s, c]])
    return R


def test_rope_height_is_the_papers_rotation():
    d = 8
    x = torch.randn(5, d)
    z = torch.tensor([0, 3, -2, 3, 7])
    out = rope_height(x, z)
    for i in range(5):
        torch.testing.assert_close(out[i].double(), rope_matrix(float(z[i]), d) @ x[i].double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0], x[0])  # height 0: identity
    torch.testing.assert_close(out.norm(dim=1), x.norm(dim=1))  # a rotation
    with pytest.raises(ValueError, match="even"):
        rope_height(torch.randn(2, 7), torch.zeros(2, dtype=torch.long))


def test_swapped_heights_differ_with_rope_and_not_without():
    """Paper Fig. 9: objects A and B stacked in one column, then swapped."""
    d = 16
    a, b = torch.randn(d), torch.randn(d)
    grids = {}
    for pos_z in ("rope", "none"):
        for name, layout in {"A_low": {(3, 4, 1): a, (3, 4, 3): b}, "A_high": {(3, 4, 3): a, (3, 4, 1): b}}.items():
            vmap = VoxelMap(d, VS)
            put(vmap, layout)
            grids[pos_z, name] = build_grid(vmap, GridConfig(pos_z=pos_z))
    for g in grids.values():
        assert g.num_tokens == 1 and g.voxel_count.tolist() == [2]
    assert torch.equal(grids["none", "A_low"].features, grids["none", "A_high"].features)
    torch.testing.assert_close(grids["none", "A_low"].features[0], (a + b) / 2)
    diff = (grids["rope", "A_low"].features - grids["rope", "A_high"].features).abs().max()
    assert diff > 0.1


def test_column_tokens_are_means_of_rotated_voxels_with_centres():
    d = 8
    feats = {k: torch.randn(d) for k in [(0, 0, 0), (0, 0, 2), (0, 0, 5), (-2, 1, 1)]}
    vmap = VoxelMap(d, VS)
    put(vmap, feats)
    g = build_grid(vmap, GridConfig())
    assert isinstance(g, CondensedGrid) and g.num_tokens == 2
    # Raster order of (x, y): column (-2, 1) first.
    torch.testing.assert_close(g.xy, torch.tensor([[-1.5 * VS, 1.5 * VS], [0.5 * VS, 0.5 * VS]]))
    assert g.voxel_count.tolist() == [1, 3]
    col = torch.stack([rope_matrix(z, d).float() @ feats[(0, 0, z)] for z in (0, 2, 5)]).mean(0)
    torch.testing.assert_close(g.features[1], col, atol=1e-5, rtol=0)
    torch.testing.assert_close(g.features[0], rope_matrix(1, d).float() @ feats[(-2, 1, 1)], atol=1e-5, rtol=0)
    assert g.compression_rate == 2 / 4 and g.preservation_rate == 1.0


def test_token_cap_keeps_densest_columns_and_reports_preservation():
    d = 4
    vmap = VoxelMap(d, VS)
    heights = {(0, 0): 3, (1, 0): 1, (2, 0): 5, (0, 1): 2, (1, 1): 5, (2, 1): 1}  # voxels per column
    put(vmap, {(x, y, z): torch.randn(d) for (x, y), n in heights.items() for z in range(n)})
    V = sum(heights.values())
    g = build_grid(vmap, GridConfig(max_tokens=3))
    # Densest: (2,0)=5, (1,1)=5, (0,0)=3, emitted in (x, y) raster order.
    kept_xy = (g.xy / VS - 0.5).round().long().tolist()
    assert kept_xy == [[0, 0], [1, 1], [2, 0]]
    assert g.voxel_count.tolist() == [3, 5, 5]
    assert g.preservation_rate == 13 / V and g.compression_rate == 3 / V
    # Tie at the cut (3 vs 2 vs ...): with 4 tokens (0,1)=2 joins; with a tie, the lower (x, y) wins.
    g4 = build_grid(vmap, GridConfig(max_tokens=5))
    assert (g4.xy / VS - 0.5).round().long().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]]
    assert g4.preservation_rate == (V - 1) / V


def test_token_order_does_not_depend_on_fusion_order():
    d = 4
    voxels = {(x, y, z): torch.randn(d) for x in range(4) for y in range(3) for z in range((x + y) % 3 + 1)}
    fwd, rev = VoxelMap(d, VS), VoxelMap(d, VS)
    put(fwd, voxels)
    put(rev, dict(reversed(list(voxels.items()))))
    g1, g2 = build_grid(fwd, GridConfig(max_tokens=7)), build_grid(rev, GridConfig(max_tokens=7))
    assert torch.equal(g1.xy, g2.xy)
    torch.testing.assert_close(g1.features, g2.features)


def test_fourier_input_formula_seed_and_gradient():
    xy = torch.tensor([[0.1, -2.0], [3.0, 0.5]])
    W = fourier_matrix(16, seed=3)
    assert W.shape == (16, 2) and torch.equal(W, torch.randn(16, 2, generator=torch.Generator().manual_seed(3),
                                                              dtype=torch.float64))
    f = fourier_input(xy, W)
    proj = 2 * math.pi * xy.double() @ W.T
    torch.testing.assert_close(f.double(), torch.cat([proj.cos(), proj.sin()], 1) / math.sqrt(32), atol=1e-6, rtol=0)
    torch.testing.assert_close(f.norm(dim=1), torch.full((2,), math.sqrt(0.5)))
    assert not torch.equal(f, fourier_input(xy, fourier_matrix(16, seed=4)))
    # W can learn: d f / d W is the analytic 2 pi p (-sin | cos) / sqrt(2F), through the cycle reduction.
    Wl = W.float().requires_grad_()
    fourier_input(xy, Wl)[:, 0].sum().backward()  # cos of the first frequency
    expected = -torch.sin(proj[:, 0]).float()[:, None] * 2 * math.pi * xy / math.sqrt(32)
    torch.testing.assert_close(Wl.grad[0], expected.sum(0), atol=1e-5, rtol=1e-5)
    assert not Wl.grad[1:].any()
    vmap = VoxelMap(4, VS)
    put(vmap, {(1, 2, 0): torch.ones(4)})
    g = build_grid(vmap, GridConfig(fourier_features=16, fourier_seed=3))
    torch.testing.assert_close(g.xy, torch.tensor([[0.3, 0.5]]))  # the column centre the model encodes


def test_anchor_is_added_before_rope_and_pooling_and_is_differentiable():
    d = 8
    vmap = VoxelMap(d, VS)
    feats = {(0, 0, 0): torch.randn(d), (0, 0, 1): torch.randn(d), (5, 0, 0): torch.randn(d)}
    put(vmap, feats)
    emb = torch.randn(d, requires_grad=True)
    centre = (0.1, 0.1, 0.1)  # inside voxel (0,0,0); radius 0.25 reaches (0,0,1)'s centre (0.2 m away) only
    g = build_grid(vmap, GridConfig(), anchor_center=centre, anchor_radius=0.25, anchor_embedding=emb)
    e = emb.detach()
    R0, R1 = rope_matrix(0, d).float(), rope_matrix(1, d).float()
    expect = (R0 @ (feats[(0, 0, 0)] + e) + R1 @ (feats[(0, 0, 1)] + e)) / 2
    torch.testing.assert_close(g.features[0], expect, atol=1e-5, rtol=0)
    torch.testing.assert_close(g.features[1], feats[(5, 0, 0)], atol=1e-6, rtol=0)  # far column untouched
    g.features[0].sum().backward()
    expect_grad = (rope_matrix(0, d) + rope_matrix(1, d)).sum(0).float() / 2
    torch.testing.assert_close(emb.grad, expect_grad, atol=1e-5, rtol=0)
    # Zero radius still marks the voxel holding the centre.
    g0 = build_grid(vmap, GridConfig(pos_z="none"), anchor_center=centre, anchor_radius=0.0, anchor_embedding=e)
    torch.testing.assert_close(g0.features[0], (feats[(0, 0, 0)] + e + feats[(0, 0, 1)]) / 2)
    # An embedding without a centre is ignored; a centre without embedding or radius is an error.
    plain = build_grid(vmap, GridConfig())
    torch.testing.assert_close(build_grid(vmap, GridConfig(), anchor_embedding=emb).features, plain.features)
    with pytest.raises(ValueError, match="anchor_embedding"):
        build_grid(vmap, GridConfig(), anchor_center=centre, anchor_radius=1.0)
    with pytest.raises(ValueError, match="anchor_radius"):
        build_grid(vmap, GridConfig(), anchor_center=centre, anchor_embedding=e)
    with pytest.raises(ValueError, match="shape"):
        build_grid(vmap, GridConfig(), anchor_center=centre, anchor_radius=1.0, anchor_embedding=torch.zeros(3))


def test_voxel_ablations():
    d = 4
    vmap = VoxelMap(d, VS)
    # 20 columns of 3 voxels
    put(vmap, {(x, y, z): torch.randn(d) for x in range(5) for y in range(4) for z in range(3)})
    full = build_grid(vmap, GridConfig(grid="voxel_full", max_tokens=10))
    assert full.num_tokens == 60 and full.compression_rate == 1.0 and full.preservation_rate == 1.0
    torch.testing.assert_close(full.features.norm(dim=1).sort().values, vmap.means().norm(dim=1).sort().values)
    none = build_grid(vmap, GridConfig(grid="voxel_full", pos_z="none"))
    assert {tuple(r) for r in none.features.tolist()} == {tuple(r) for r in vmap.means().tolist()}
    sample = build_grid(vmap, GridConfig(grid="voxel_sample", max_tokens=12, pos_z="none"))
    assert sample.num_tokens == 12 and sample.preservation_rate == 12 / 60 and sample.voxel_count.tolist() == [1] * 12
    assert {tuple(r) for r in sample.features.tolist()} <= {tuple(r) for r in vmap.means().tolist()}
    again = build_grid(vmap, GridConfig(grid="voxel_sample", max_tokens=12, pos_z="none"))
    other = build_grid(vmap, GridConfig(grid="voxel_sample", max_tokens=12, pos_z="none", sample_seed=1))
    assert torch.equal(sample.features, again.features) and not torch.equal(sample.features, other.features)
    # With no cap hit, voxel_sample matches the CFG token count (20 columns).
    assert build_grid(vmap, GridConfig(grid="voxel_sample")).num_tokens == 20


def test_empty_map_gives_no_tokens():
    g = build_grid(VoxelMap(6), GridConfig(fourier_features=4))
    assert g.num_tokens == 0 and g.features.shape == (0, 6) and g.xy.shape == (0, 2) and g.num_voxels == 0


def test_grid_config_validation():
    with pytest.raises(ValueError, match="pos_z"):
        GridConfig(pos_z="additive")
    with pytest.raises(ValueError, match="grid"):
        GridConfig(grid="voxels")
    with pytest.raises(ValueError, match="max_tokens"):
        GridConfig(max_tokens=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_streamed_cfg_equals_the_direct_formula_on_a_multi_chunk_map(dtype):
    """Over 1024 voxels on one height level, so the per-level streaming spans several chunks."""
    d = 6
    rng = np.random.default_rng(0)
    coords = np.stack(np.meshgrid(np.arange(-20, 20), np.arange(-20, 20), np.arange(2)), -1).reshape(-1, 3)  # 3200
    vmap = VoxelMap(d, VS, storage_dtype=dtype)
    for keep in (np.ones(len(coords), bool), rng.random(len(coords)) < 0.5):  # 1 or 2 points per voxel
        pts = (coords[keep] + rng.uniform(0, 1, (int(keep.sum()), 3))) * VS
        vmap.fuse(pts, rng.standard_normal((int(keep.sum()), d)))
    g = build_grid(vmap, GridConfig(max_tokens=1500))
    cols = vmap.coords[:, :2]
    kept = {tuple(c): i for i, c in enumerate((g.xy / VS - 0.5).round().long().tolist())}
    token = torch.tensor([kept.get(tuple(c), -1) for c in cols.tolist()])
    sel = token >= 0
    direct = torch.zeros(g.num_tokens, d).index_add_(0, token[sel], rope_height(vmap.means()[sel], vmap.coords[sel, 2]))
    direct /= g.voxel_count[:, None]
    assert int(sel.sum()) == int(g.voxel_count.sum()) > 1024
    torch.testing.assert_close(g.features, direct, atol=1e-5, rtol=1e-5)


def test_odd_feature_dim_needs_pos_z_none():
    vmap = VoxelMap(5, VS)
    put(vmap, {(0, 0, 0): torch.ones(5), (0, 0, 1): torch.zeros(5)})
    with pytest.raises(ValueError, match="even"):
        build_grid(vmap, GridConfig())
    torch.testing.assert_close(build_grid(vmap, GridConfig(pos_z="none")).features, torch.full((1, 5), 0.5))


def _stream(vmap: VoxelMap, rng: np.random.Generator, frames: int = 12) -> None:
    """Frames walking along x, overlapping (means of old voxels change), each from its camera."""
    for i in range(frames):
        pts = rng.uniform([0.4 * i, 0, 0], [0.4 * i + 2.5, 2.0, 1.6], (250, 3))
        vmap.fuse(pts, rng.standard_normal((250, vmap.feature_dim)).astype(np.float32), origin=(0.4 * i + 1, 1, 1))


@pytest.mark.parametrize("eviction", ["none", "least_recent"])
def test_incremental_cfg_equals_the_batch_cfg_for_every_selection_position_and_anchor(eviction):
    """Column sums kept at fusion (and eviction) time give the batch CFG: same tokens, features <= 1e-5."""
    d, rng = 16, np.random.default_rng(0)
    for pos_z in ("rope", "none"):
        vmap = VoxelMap(d, VS, max_voxels=600, eviction=eviction)
        vmap.track_columns(rope=pos_z == "rope")
        _stream(vmap, rng)
        assert (vmap.dropped_full if eviction == "none" else vmap.evicted_voxels) > 0
        c = vmap.centers  # regions around voxels the map holds
        anchors = [{}, {"anchor_center": tuple(c[100].tolist()), "anchor_radius": 0.5},
                   {"anchor_center": tuple(c[400].tolist()), "anchor_size": (0.8, 0.6, 0.4)}]
        for policy in ("densest", "nearest", "anchor", "coarsen"):
            for grid in ("cfg", "voxel_full", "voxel_sample"):
                config = GridConfig(max_tokens=40, pos_z=pos_z, token_selection=policy, grid=grid)
                for anchor in anchors:
                    emb = torch.randn(d, requires_grad=True)
                    kw = {**anchor, "anchor_embedding": emb} if anchor else {}
                    fast, ref = build_grid(vmap, config, **kw), build_grid(vmap, config, incremental=False, **kw)
                    what = (pos_z, policy, grid, anchor)
                    assert torch.equal(fast.xy, ref.xy) and torch.equal(fast.voxel_count, ref.voxel_count), what
                    torch.testing.assert_close(fast.features, ref.features, atol=1e-5, rtol=0, msg=str(what))
                    assert fast.preservation_rate == ref.preservation_rate
                    # The anchor's gradient flows through the incremental path too (when a kept token holds it;
                    # always with the anchor policy).
                    assert fast.features.requires_grad == ref.features.requires_grad
                    assert ref.features.requires_grad or not anchor or policy != "anchor" or grid != "cfg"
                    if anchor and ref.features.requires_grad:
                        (g_fast,) = torch.autograd.grad(fast.features.sum(), emb)
                        (g_ref,) = torch.autograd.grad(ref.features.sum(), emb)
                        torch.testing.assert_close(g_fast, g_ref, atol=1e-5, rtol=0)


def test_nearest_and_anchor_keep_the_columns_around_their_focus():
    d = 4
    vmap = VoxelMap(d, VS)
    put(vmap, {(x, 0, z): torch.randn(d) for x in range(10) for z in range(1 + (x == 0) * 5)})  # (0, 0) densest
    kept = lambda g: (g.xy[:, 0] / VS - 0.5).round().long().tolist()  # noqa: E731
    assert kept(build_grid(vmap, GridConfig(max_tokens=3, token_selection="nearest")))[0] == 0  # no camera: densest
    vmap.viewpoint = (7 * VS + 0.1, 0.0, 1.5)  # camera above column 7
    assert kept(build_grid(vmap, GridConfig(max_tokens=3, token_selection="nearest"))) == [6, 7, 8]
    anchored = GridConfig(max_tokens=3, token_selection="anchor")
    g = build_grid(vmap, anchored, anchor_center=(2 * VS + 0.1, 0.1, 0.1), anchor_radius=0.0,
                   anchor_embedding=torch.zeros(d))
    assert kept(g) == [1, 2, 3] and g.preservation_rate == 3 / vmap.num_voxels
    assert kept(build_grid(vmap, anchored)) == [6, 7, 8]  # no anchor: around the camera


def test_coarsen_represents_every_column_with_block_means_at_voxel_weighted_centroids():
    d = 8
    vmap = VoxelMap(d, VS)
    feats = {(x, y, z): torch.randn(d) for x in range(7) for y in range(5) for z in range((x * y) % 3 + 1)}
    put(vmap, feats)
    config = GridConfig(max_tokens=10, token_selection="coarsen")
    g = build_grid(vmap, config)
    # 35 columns: all 12 2x2 blocks merge (23 fewer tokens), then the sparsest 4x4 blocks until <= 10.
    assert 8 <= g.num_tokens <= 10 and g.preservation_rate == 1.0 and int(g.voxel_count.sum()) == len(feats)
    token = voxel_tokens(vmap, config)[0]  # (V,) every voxel in some token
    assert bool((token >= 0).all())
    for t in range(g.num_tokens):
        mine = [tuple(c) for c in vmap.coords[token == t].tolist()]
        cols = {(x, y) for x, y, _ in mine}
        assert any(len({(x >> j, y >> j) for x, y in cols}) == 1 for j in range(3))  # an aligned 1, 2 or 4 block
        expect = torch.stack([rope_matrix(k[2], d).float() @ feats[k] for k in mine]).mean(0)
        torch.testing.assert_close(g.features[t], expect, atol=1e-5, rtol=0)
        centroid = torch.tensor([[k[0] + 0.5, k[1] + 0.5] for k in mine]).mean(0) * VS  # each voxel weighs one
        torch.testing.assert_close(g.xy[t], centroid)
    fits = build_grid(vmap, GridConfig(max_tokens=35, token_selection="coarsen"))
    assert torch.equal(fits.xy, build_grid(vmap, GridConfig(max_tokens=35)).xy)  # fits: plain columns
    with pytest.raises(ValueError, match="token_selection"):
        GridConfig(token_selection="random")
