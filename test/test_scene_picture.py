"""``leovl-scene show``: the top-down picture of a saved scene (columns, kept tokens, camera path, anchor)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from leovl_ros.camera_path import CAMERA_PATH_KEY, CameraPath
from leovl_ros.scene_cli import main
from leovl_ros.scene_picture import COLOURS, LEGEND_PX, PAD
from leovl_ros.voxel_map import VoxelMap

VS = 0.2


def _scene(tmp_path):
    """Columns x 0..9, y 0..4 (one voxel each) plus a 5-voxel tower at column (9, 4): with a
    budget of 10 tokens the tower is kept, and 40 single-voxel columns are not. The camera path
    and the anchor lie outside the columns, so every column's pixel shows the column itself."""
    vmap = VoxelMap(4, VS)
    cols = [(x, y, 0) for x in range(10) for y in range(5)] + [(9, 4, z) for z in range(1, 5)]
    pts = (np.asarray(cols, dtype=np.float32) + 0.5) * VS
    vmap.fuse(pts, torch.randn(len(pts), 4))
    path = [[0.1, -0.3, 1.2], [1.0, -0.2, 1.2], [1.9, -0.3, 1.2]]  # just below the mapped area
    vmap.metadata[CAMERA_PATH_KEY] = json.dumps(path)
    vmap.save(tmp_path / "scene.safetensors")
    return tmp_path / "scene.safetensors"


def _pixel_of(cx: int, cy: int, cell_px: int, image: Image.Image, y1: int = 4) -> tuple[int, ...]:
    """Centre pixel of column (cx, cy): x0 = 0, top row y1."""
    return image.getpixel((PAD + cx * cell_px + cell_px // 2, PAD + (y1 - cy) * cell_px + cell_px // 2))


def test_show_draws_kept_tokens_dropped_columns_path_and_anchor(tmp_path, capsys):
    scene = _scene(tmp_path)
    out = tmp_path / "pics" / "map.png"
    assert main(["show", str(scene), "--out", str(out), "--max-tokens", "10", "--cell-px", "12",
                 "--anchor", "2.5,0.5", "--anchor-radius", "0.2"]) == 0
    assert "50 columns, 10 tokens, 3 camera positions" in capsys.readouterr().out
    image = Image.open(out).convert("RGB")
    # drawn extent: columns x 0..13 (the anchor circle reaches x = 2.7 m), y -2..4 (the path at y = -0.3 m)
    assert image.size == (14 * 12 + 2 * PAD, 7 * 12 + 2 * PAD + LEGEND_PX)
    tower = _pixel_of(9, 4, 12, image)
    assert tower == COLOURS["kept_dark"]  # the densest kept column gets the darkest shade
    kept_other = [(x, y) for x in range(10) for y in range(5)
                  if _pixel_of(x, y, 12, image) not in (COLOURS["dropped"], COLOURS["empty"])]
    assert len(kept_other) == 10, kept_other  # exactly max_tokens columns drawn as tokens
    dropped = [(x, y) for x in range(10) for y in range(5) if _pixel_of(x, y, 12, image) == COLOURS["dropped"]]
    assert len(dropped) == 40
    assert image.getpixel((2, 2)) == COLOURS["empty"]  # the margin: no column
    pixels = np.asarray(image)
    reds = np.all(pixels == COLOURS["path"], axis=2)
    assert reds.sum() > 20  # the camera path is drawn
    assert np.all(pixels == COLOURS["anchor"], axis=2).sum() > 10


def test_coarsen_keeps_every_column_in_the_picture(tmp_path):
    scene, out = _scene(tmp_path), tmp_path / "coarse.png"
    assert main(["show", str(scene), "--out", str(out), "--max-tokens", "10", "--cell-px", "12",
                 "--token-selection", "coarsen"]) == 0
    image = Image.open(out).convert("RGB")
    pixels = [_pixel_of(x, y, 12, image, y1=4) for x in range(10) for y in range(5)]
    assert COLOURS["dropped"] not in pixels and COLOURS["empty"] not in pixels  # merged, never dropped
    assert pixels.count(COLOURS["merged"]) >= 40  # 50 columns in <= 10 tokens: most share one


def test_camera_path_thins_evenly_and_round_trips():
    path = CameraPath(max_points=4)
    for i in range(9):
        T = np.eye(4)
        T[:3, 3] = (i, 0.0, 1.0)
        path.add(T)
    assert path.points[:, 0].tolist() == [0.0, 4.0, 8.0]  # halved at 5 and again at 5 points: every 4th keyframe
    back = CameraPath.from_metadata({CAMERA_PATH_KEY: path.to_metadata()})
    assert np.array_equal(back.points, path.points)
    with pytest.raises(ValueError, match="camera_path"):
        CameraPath.from_metadata({CAMERA_PATH_KEY: "[[1, 2]]"})


def test_show_refuses_a_file_that_is_not_a_scene_with_one_line(tmp_path, capsys):
    bad = tmp_path / "notes.safetensors"
    bad.write_bytes(b"not a scene")
    assert main(["show", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("leovl-scene: error:") and "\n" not in err
    assert not (tmp_path / "x.png").exists()


def test_grounding_is_a_heat_layer_and_a_flat_one_is_not_drawn(tmp_path):
    from leovl_ros.model.grounding import Grounding
    from leovl_ros.scene_picture import draw_scene

    vmap = VoxelMap.load(_scene(tmp_path))
    cols = torch.unique(vmap.coords[:, :2], dim=0)
    xyz = torch.cat([(cols.float() + 0.5) * VS, torch.zeros(len(cols), 1)], 1)
    weight = torch.zeros(len(cols))
    hot = int(((cols[:, 0] == 3) & (cols[:, 1] == 2)).nonzero())
    weight[hot], weight[0] = 0.9, 0.1  # column (3, 2) carries the answer, column (0, 0) a little
    image, _ = draw_scene(vmap, 10, 12, grounding=Grounding(xyz, weight, False, "test"))
    assert _pixel_of(3, 2, 12, image.convert("RGB"), y1=4) == COLOURS["heat_high"]
    low, high = np.asarray(COLOURS["heat_low"]), np.asarray(COLOURS["heat_high"])
    expected = tuple(int(v) for v in np.round(low + (0.1 / 0.9) * (high - low)))
    assert _pixel_of(0, 0, 12, image.convert("RGB"), y1=4) == expected
    assert _pixel_of(5, 1, 12, image.convert("RGB"), y1=4) == COLOURS["dropped"]  # no weight: the map shows
    flat, _ = draw_scene(vmap, 10, 12, grounding=Grounding(xyz, torch.full((len(cols),), 1 / len(cols)), True, "x"))
    assert not np.all(np.asarray(flat.convert("RGB")) == COLOURS["heat_high"], axis=2)[:-LEGEND_PX].any()


def test_show_question_answers_and_draws_where_the_answer_came_from(tmp_path, capsys):
    from leovl_ros.model.leovl import LeoVL
    from leovl_ros.synth.render import render_frames
    from leovl_ros.synth.rooms import generate_room
    from leovl_ros.training.scenes import fuse_frames

    model = LeoVL.from_pretrained("leovl_ros/bundled_models/leovl-tiny")
    vmap = model.new_voxel_map()
    vmap.track_columns(rope=True)
    fuse_frames(model.encoder, vmap, (f.rgbd() for f in render_frames(generate_room(900001), 8, 224, 168)))
    vmap.save(tmp_path / "room.safetensors")
    out = tmp_path / "heat.png"
    # A question leovl-tiny answers from this sparse map (the brown wardrobe; its answer about the
    # bed rests on nothing in it, and the picture is then flat: the test above checks that case).
    assert main(["show", str(tmp_path / "room.safetensors"), "--out", str(out), "--question",
                 "What colour is the wardrobe?", "--token-selection", "question", "--max-tokens", "64"]) == 0
    said = capsys.readouterr().out
    assert "answer: " in said and "grounding: " in said
    # the picture shows the grid the model answered from (its question_share included)
    from leovl_ros.model.config import ConfigOverrides
    from leovl_ros.model.prompts import SceneQuery

    model.set_overrides(ConfigOverrides(grid={"token_selection": "question", "max_tokens": 64}))
    grid = model.scene_grid(vmap, SceneQuery("qa", "What colour is the wardrobe?"))
    assert int(said.split(" tokens")[0].split()[-1]) == grid.num_tokens <= 64
    pixels = np.asarray(Image.open(out).convert("RGB"))
    assert np.all(pixels == COLOURS["heat_high"], axis=2)[:-LEGEND_PX].sum() > 0  # the heaviest column, ringed
    assert main(["show", str(tmp_path / "room.safetensors"), "--out", str(out), "--question", " "]) == 2
