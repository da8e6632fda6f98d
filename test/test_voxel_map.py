"""VoxelMap: exact running means, caps, reduced-precision storage, atomic safetensors io."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from leovl_ros.voxel_keys import voxel_keys
from leovl_ros.voxel_map import VoxelMap


def frame(seed: int, n: int = 300, d: int = 16, extent: float = 2.0):
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-extent, extent, (n, 3)).astype(np.float32)
    feats = rng.standard_normal((n, d)).astype(np.float32)
    return pts, feats


def reference_means(frames, voxel_size):
    """dict voxel coord -> (mean feature float64, count), by brute force."""
    sums, counts = {}, {}
    for pts, feats in frames:
        for p, f in zip(np.floor(pts / np.float32(voxel_size)).astype(int), feats.astype(np.float64), strict=True):
            k = tuple(p)
            sums[k] = sums.get(k, 0.0) + f
            counts[k] = counts.get(k, 0) + 1
    return {k: (sums[k] / counts[k], counts[k]) for k in sums}


def as_dict(vmap: VoxelMap):
    means = vmap.means().numpy()
    return {tuple(c): (m, int(n)) for c, m, n in zip(vmap.coords.tolist(), means, vmap.counts.tolist(), strict=True)}


def test_same_frame_twice_keeps_means_bit_identical_and_doubles_counts():
    vmap = VoxelMap(16)
    pts, feats = frame(0)
    created = vmap.fuse(pts, feats)
    assert created == vmap.num_voxels > 0
    means, counts = vmap.means().clone(), vmap.counts.clone()
    assert vmap.fuse(pts, feats) == 0
    assert torch.equal(vmap.means(), means)
    assert torch.equal(vmap.counts, 2 * counts)


def test_means_are_exact_over_many_frames_and_storage_growth():
    frames = [frame(s, n=900, extent=3.0) for s in range(4)]  # > 1024 voxels: storage grows
    vmap = VoxelMap(16, voxel_size=0.2)
    for pts, feats in frames:
        vmap.fuse(torch.from_numpy(pts), feats)  # tensors and arrays both accepted
    ref = reference_means(frames, 0.2)
    got = as_dict(vmap)
    assert vmap.num_voxels == len(ref) > 1024
    assert got.keys() == ref.keys()
    for k, (m, n) in ref.items():
        assert got[k][1] == n
        np.testing.assert_allclose(got[k][0], m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vmap.centers.numpy(), (vmap.coords.numpy() + 0.5) * 0.2, atol=1e-6)
    assert vmap.counts.sum() == 3600


def test_negative_coordinates_floor_not_truncate():
    vmap = VoxelMap(2, voxel_size=0.5)
    vmap.fuse(np.array([[-0.1, -0.6, 0.1]]), np.ones((1, 2)))
    assert vmap.coords.tolist() == [[-1, -2, 0]]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_storage_keeps_means_in_range(dtype):
    vmap = VoxelMap(4, storage_dtype=dtype)
    pts = np.full((1000, 3), 0.05, np.float32)  # all into one voxel
    feats = np.full((1000, 4), 300.0, np.float32)  # sum 3e5 > fp16 max 65504
    for _ in range(3):
        vmap.fuse(pts, feats)
    assert vmap.counts.tolist() == [3000]
    np.testing.assert_allclose(vmap.means().numpy(), 300.0, rtol=1e-2)
    frames = [frame(s) for s in range(3)]
    half, full = VoxelMap(16, storage_dtype=dtype), VoxelMap(16)
    for pts, feats in frames:
        half.fuse(pts, feats)
        full.fuse(pts, feats)
    atol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(half.means(), full.means(), atol=atol, rtol=0.0)
    assert half.memory_bytes() < full.memory_bytes()


def test_means_of_selected_rows_into_a_buffer():
    vmap = VoxelMap(16)
    vmap.fuse(*frame(0))
    rows = torch.tensor([3, 0, 7])
    buf = torch.empty(3, 16)
    out = vmap.means(rows, out=buf)
    assert out.data_ptr() == buf.data_ptr()
    assert torch.equal(out, vmap.means()[rows])
    with pytest.raises(IndexError, match="out of range"):
        vmap.means(torch.tensor([vmap.num_voxels]))


def test_bounds_drop_outside_points():
    vmap = VoxelMap(2, bounds=((0, 0, 0), (1, 1, 1)))
    pts = np.array([[0.5, 0.5, 0.5], [1.5, 0.5, 0.5], [0.5, -0.1, 0.5]], np.float32)
    assert vmap.fuse(pts, np.ones((3, 2))) == 1
    assert vmap.dropped_out_of_bounds == 2 and vmap.counts.tolist() == [1]
    with pytest.raises(ValueError, match="min < max"):
        VoxelMap(2, bounds=((0, 0, 0), (0, 1, 1)))


def test_full_map_keeps_fusing_existing_voxels_and_prefers_dense_new_ones():
    vmap = VoxelMap(1, voxel_size=1.0, max_voxels=3)
    assert vmap.fuse(np.array([[0.5, 0.5, 0.5]]), np.array([[1.0]])) == 1
    # Four new voxels with 1, 3, 2, 3 points: only two fit, the 3-point ones win (tie: lower key).
    pts = np.array([[1.5, 0, 0]] + [[2.5, 0, 0]] * 3 + [[3.5, 0, 0]] * 2 + [[4.5, 0, 0]] * 3 + [[0.5, 0.5, 0.5]])
    created = vmap.fuse(pts, np.full((len(pts), 1), 3.0))
    assert created == 2 and vmap.num_voxels == 3
    assert sorted(map(tuple, vmap.coords.tolist())) == [(0, 0, 0), (2, 0, 0), (4, 0, 0)]
    assert vmap.dropped_full == 3  # the 1- and 2-point voxels
    # The existing voxel got the new point: mean (1 + 3) / 2.
    got = as_dict(vmap)
    assert got[(0, 0, 0)] == (pytest.approx(np.array([2.0])), 2)
    assert vmap.fuse(np.array([[9.5, 0, 0], [2.5, 0, 0]]), np.ones((2, 1))) == 0
    assert vmap.dropped_full == 4 and as_dict(vmap)[(2, 0, 0)][1] == 4


def test_bad_input_gives_clear_errors():
    vmap = VoxelMap(4)
    with pytest.raises(ValueError, match=r"features must be \(N=2, d=4\)"):
        vmap.fuse(np.zeros((2, 3)), np.zeros((2, 5)))
    with pytest.raises(ValueError, match=r"points must be \(N, 3\)"):
        vmap.fuse(np.zeros((2, 2)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="NaN"):
        vmap.fuse(np.array([[np.nan, 0, 0]]), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="poison"):
        vmap.fuse(np.zeros((1, 3)), np.full((1, 4), np.inf))
    with pytest.raises(ValueError, match="storage_dtype"):
        VoxelMap(4, storage_dtype=torch.int32)
    assert vmap.fuse(np.zeros((0, 3)), np.zeros((0, 4))) == 0 and vmap.num_voxels == 0


def test_reset_empties_the_map():
    vmap = VoxelMap(16)
    vmap.fuse(*frame(1))
    vmap.metadata["scene_id"] = "s1"
    vmap.reset()
    assert vmap.num_voxels == 0 and vmap.means().shape == (0, 16) and vmap.memory_bytes() == 0
    assert vmap.metadata == {"scene_id": "s1"}
    pts, feats = frame(2)
    vmap.fuse(pts, feats)
    assert vmap.num_voxels == len(reference_means([(pts, feats)], 0.2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_save_load_is_bit_identical(tmp_path, dtype):
    vmap = VoxelMap(16, voxel_size=0.25, storage_dtype=dtype, bounds=((-5, -5, -1), (5, 5, 3)), max_voxels=5000)
    for s in range(3):
        vmap.fuse(*frame(s))
    vmap.metadata.update(encoder_id="qwen2.5-vl-tiny", scene_id="room_7")
    path = tmp_path / "maps" / "room.safetensors"
    vmap.save(path)
    back = VoxelMap.load(path)
    assert (back.feature_dim, back.voxel_size, back.storage_dtype, back.max_voxels) == (16, 0.25, dtype, 5000)
    assert back.bounds == vmap.bounds and back.metadata == vmap.metadata
    for a, b in [(vmap.coords, back.coords), (vmap.counts, back.counts), (vmap.means(), back.means())]:
        assert torch.equal(a, b)
    back.save(tmp_path / "again.safetensors")
    assert (tmp_path / "again.safetensors").read_bytes() == path.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["room.safetensors"]  # no temp file left
    # The loaded map keeps fusing like the original.
    pts, feats = frame(9)
    vmap.fuse(pts, feats)
    back.fuse(pts, feats)
    assert torch.equal(vmap.means(), back.means())


def test_empty_map_round_trips(tmp_path):
    VoxelMap(8).save(tmp_path / "empty.safetensors")
    back = VoxelMap.load(tmp_path / "empty.safetensors")
    assert back.num_voxels == 0 and back.feature_dim == 8


def test_truncated_and_foreign_files_give_clear_errors(tmp_path):
    vmap = VoxelMap(16)
    vmap.fuse(*frame(0))
    path = tmp_path / "m.safetensors"
    vmap.save(path)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupted"):
        VoxelMap.load(tmp_path / "trunc.safetensors")
    (tmp_path / "text.safetensors").write_text("hello, not a map")
    with pytest.raises(ValueError, match="truncated or corrupted"):
        VoxelMap.load(tmp_path / "text.safetensors")
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="not a leovl_ros voxel map"):
        VoxelMap.load(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        VoxelMap.load(tmp_path / "missing.safetensors")


def test_state_round_trips_and_inconsistent_states_are_refused(tmp_path):
    vmap = VoxelMap(16, 0.1, eviction="farthest", max_voxels=400)
    for s in range(3):
        vmap.fuse(*frame(s), origin=(0.0, 0.0, float(s)))
    vmap.metadata["encoder_id"] = "x"
    back = VoxelMap.from_state(vmap.state())
    assert torch.equal(back.coords, vmap.coords) and torch.equal(back.counts, vmap.counts)
    assert torch.equal(back.means(), vmap.means()) and back.state().frames == 3  # the same rows, bit for bit
    assert (back.viewpoint, back.eviction, back.max_voxels, back.metadata) == ((0.0, 0.0, 2.0), "farthest", 400,
                                                                              {"encoder_id": "x"})
    assert torch.equal(back.sorted_keys, torch.sort(voxel_keys(vmap.coords)).values)
    back.fuse(*frame(9))  # its own tensors: the source map is untouched
    assert vmap.state().frames == 3 and back.state().frames == 4
    vmap.save(tmp_path / "a.safetensors")
    VoxelMap.from_state(vmap.state()).save(tmp_path / "b.safetensors")
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    state = vmap.state()
    twice = dataclasses.replace(state, coords=torch.cat([state.coords[:1], state.coords[:1]]),
                         counts=state.counts[:2], acc=state.acc[:2], last_seen=state.last_seen[:2])
    with pytest.raises(ValueError, match="duplicate voxel coordinates"):
        VoxelMap.from_state(twice)
    with pytest.raises(ValueError, match="inconsistent voxel map tensors"):
        VoxelMap.from_state(dataclasses.replace(state, counts=state.counts[:1]))


def test_the_voxel_modules_import_no_circle():
    """voxel_keys <- voxel_map_io, column_sums <- voxel_map: the lower ones never import the map."""
    import ast
    import pathlib

    import leovl_ros

    root = pathlib.Path(leovl_ros.__file__).parent
    for name in ("voxel_keys", "voxel_map_io", "column_sums"):
        tree = ast.parse((root / f"{name}.py").read_text())
        runtime = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]  # not under TYPE_CHECKING
        nested = [n for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.ClassDef))
                  for n in ast.walk(f) if isinstance(n, ast.ImportFrom)]
        assert not any(getattr(n, "module", None) == "voxel_map" for n in runtime + nested), name


@pytest.mark.parametrize("eviction", ["least_recent", "farthest"])
def test_eviction_keeps_memory_flat_keeps_the_current_view_and_counts_what_it_drops(tmp_path, eviction):
    """A robot walking along x for 30 frames through a map capped at 500 voxels."""
    vmap = VoxelMap(8, 0.2, max_voxels=500, eviction=eviction)
    vmap.track_columns()
    rng = np.random.default_rng(0)
    created = points = 0
    sizes = []
    for i in range(30):
        pts = rng.uniform([0.3 * i, 0, 0], [0.3 * i + 1.5, 1.5, 1.5], (200, 3)).astype(np.float32)
        created += vmap.fuse(pts, rng.standard_normal((200, 8)).astype(np.float32), origin=(0.3 * i + 0.7, 0.7, 0.7))
        points += len(pts)
        sizes.append(vmap.memory_bytes())
        assert vmap.num_voxels <= 500
        here = {tuple(k) for k in np.floor(pts / np.float32(0.2)).astype(int).tolist()}
        assert here <= {tuple(c) for c in vmap.coords.tolist()}  # the frame just seen is never evicted
    assert vmap.evicted_voxels > 0 and vmap.dropped_full == 0
    assert created == vmap.num_voxels + vmap.evicted_voxels  # every voxel made is kept or counted
    assert points == int(vmap.counts.sum()) + vmap.evicted_points  # every point fused is kept or counted
    late = sizes[len(sizes) // 2 :]  # full since frame ~8: only the small per-column index tensors still vary
    assert max(late) <= 1.02 * min(late) and vmap._acc.shape[0] == 500
    assert vmap.centers[:, 0].min() > 2.0  # what is left is the end of the walk
    assert torch.equal(voxel_keys(vmap.coords)[vmap.sorted_rows], vmap.sorted_keys)  # index still consistent
    assert bool((vmap.sorted_keys[1:] > vmap.sorted_keys[:-1]).all())
    vmap.save(tmp_path / "m.safetensors")
    back = VoxelMap.load(tmp_path / "m.safetensors")
    assert (back.eviction, back.evicted_voxels, back.evicted_points, back.viewpoint) == (
        eviction, vmap.evicted_voxels, vmap.evicted_points, vmap.viewpoint)
    assert torch.equal(back.state().last_seen, vmap.state().last_seen)


def test_files_saved_before_eviction_existed_still_load(tmp_path):
    """The first format: three tensors and the header without eviction, counters or viewpoint."""
    coords = torch.tensor([[0, 0, 0], [3, -1, 2]])
    header = {"version": "1", "feature_dim": 4, "voxel_size": 0.2, "storage_dtype": "float32", "max_voxels": 100,
              "bounds": None, "dropped_full": 2, "dropped_out_of_bounds": 0, "metadata": {"encoder_id": "x"}}
    save_file({"coords": coords, "counts": torch.tensor([1, 2]), "acc": torch.ones(2, 4)},
              str(tmp_path / "old.safetensors"), metadata={"leovl_ros.voxel_map": json.dumps(header, sort_keys=True)})
    vmap = VoxelMap.load(tmp_path / "old.safetensors")
    assert vmap.num_voxels == 2 and vmap.eviction == "none" and vmap.evicted_voxels == 0 and vmap.viewpoint is None
    assert vmap.dropped_full == 2 and torch.equal(vmap.means()[1], torch.full((4,), 0.5))
    vmap.fuse(np.array([[0.7, -0.1, 0.5]], np.float32), np.ones((1, 4), np.float32), origin=(0, 0, 1))
    assert vmap.counts.tolist() == [1, 3] and vmap.viewpoint == (0.0, 0.0, 1.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (map_device: cuda for 7B deployments)")
def test_map_and_column_sums_on_the_gpu_match_the_cpu(tmp_path):
    from leovl_ros.condensed_grid import GridConfig, build_grid

    maps = [VoxelMap(16, 0.2, max_voxels=400, eviction="least_recent", device=dev) for dev in ("cpu", "cuda")]
    for vmap in maps:
        vmap.track_columns()
        for s in range(6):
            vmap.fuse(*frame(s, extent=1.5 + 0.3 * s), origin=(0.3 * s, 0.0, 1.0))
    cpu, gpu = maps
    assert gpu.coords.is_cuda and gpu.columns.sums(gpu.columns.columns()[3]).is_cuda
    assert torch.equal(cpu.coords, gpu.coords.cpu()) and cpu.evicted_voxels == gpu.evicted_voxels > 0
    for policy in ("densest", "nearest", "coarsen"):
        config = GridConfig(max_tokens=30, token_selection=policy)
        a, b = build_grid(cpu, config), build_grid(gpu, config, anchor_center=(0.3, 0.1, 0.5), anchor_radius=0.4,
                                                   anchor_embedding=torch.zeros(16, device="cuda"))
        assert b.features.is_cuda
        torch.testing.assert_close(a.features, b.features.cpu(), atol=1e-5, rtol=0)
        torch.testing.assert_close(b.features, build_grid(gpu, config, incremental=False).features, atol=1e-5, rtol=0)
    gpu.save(tmp_path / "g.safetensors")
    assert torch.equal(VoxelMap.load(tmp_path / "g.safetensors").means(), cpu.means())


@pytest.mark.parametrize("eviction", ["none", "least_recent"])
def test_a_snapshot_stays_as_it_was_while_the_map_keeps_fusing_and_evicting(eviction):
    """Copy on write: the snapshot shares the features until the map writes them."""
    from leovl_ros.condensed_grid import GridConfig, build_grid

    vmap = VoxelMap(8, 0.2, max_voxels=300, eviction=eviction)
    vmap.track_columns()
    for s in range(3):
        vmap.fuse(*frame(s, d=8, extent=1.0))
    snap, frozen = vmap.snapshot(), copy.deepcopy(vmap)
    before = build_grid(frozen, GridConfig(max_tokens=20))
    for s in range(3, 8):  # existing voxels change, rows move (eviction) or new space is dropped
        vmap.fuse(*frame(s, d=8, extent=1.0 + 0.3 * s))
    assert vmap.evicted_voxels > 0 or vmap.dropped_full > 0
    for a, b in [(snap.coords, frozen.coords), (snap.counts, frozen.counts), (snap.means(), frozen.means())]:
        assert torch.equal(a, b)
    after = build_grid(snap, GridConfig(max_tokens=20))
    assert torch.equal(after.features, before.features) and torch.equal(after.xy, before.xy)
    fresh = VoxelMap.from_state(vmap.state())  # and the live map is still right: its column sums match a rebuild
    fresh.track_columns()
    torch.testing.assert_close(build_grid(vmap, GridConfig(max_tokens=20)).features,
                               build_grid(fresh, GridConfig(max_tokens=20)).features, atol=1e-6, rtol=0)
