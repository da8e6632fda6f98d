"""Object regions: ScanNet (segs + aggregation + mesh + axisAlignment), 3RScan (semseg +
instance mesh + the reader's alignment), ARKitScenes and MultiScan (annotated oriented boxes +
the reader's alignment) object ids become boxes in our map frame, the caption CLI anchors
records with them, and the CFG marks exactly the voxels inside a box.

The check that a box is the object's region: the depth pixels of that object (the synthetic
instance image, noise-free depth), read through the dataset's frame reader, lie inside its
box within 2 mm (millimetre depth) or 5 mm (MultiScan's float16 metres: 2^-11 relative).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from leovl_ros.condensed_grid import GridConfig, build_grid
from leovl_ros.geometry import backproject
from leovl_ros.synth.render import render_frames
from leovl_ros.synth.rooms import generate_room
from leovl_ros.voxel_map import VoxelMap
from support.native_scans import (Z_UP_TO_Y_UP, _box_corners, rigid, write_3rscan, write_3rscan_instances,
                                  write_arkitscenes, write_arkitscenes_annotation, write_multiscan,
                                  write_multiscan_annotations, write_scannet_instances)
from leovl_ros.training.data_cli import main as data_main
from leovl_ros.training.object_boxes import object_boxes
from leovl_ros.training.records import ConversionReport, read_records
from leovl_ros.scans.scan_readers import ARKitScenes, MultiScan, RScan, scan_alignment, scan_frames


def _excess(points: np.ndarray, box: dict) -> np.ndarray:
    return (np.abs(points - np.asarray(box["center"])) - np.asarray(box["size"]) / 2).max(1)


def test_scannet_and_3rscan_objects_become_boxes_around_their_voxels(tmp_path):
    room = generate_room(0)
    frames = render_frames(room, 6, 112, 84, depth_noise_m=0.0)  # exact depth: the box check can be tight
    write_scannet_instances(room, tmp_path / "scannet" / "scene0000_00", rigid(20, [3.0, -2.0, 0.0]))
    scan = tmp_path / "3rscan" / "0988ea72-eb32-2e61-8344-ef2d4e3b2f1a"
    write_3rscan(frames, scan, rigid(30, [0.7, -0.4, -1.3]))
    write_3rscan_instances(room, scan, rigid(30, [0.7, -0.4, -1.3]))
    (tmp_path / "3rscan" / "no-annotations").mkdir()
    video = tmp_path / "arkitscenes" / "Training" / "41069025"
    write_arkitscenes(frames, video, rigid(120, [2.0, 3.0, 0.1]))
    write_arkitscenes_annotation(room, video, rigid(120, [2.0, 3.0, 0.1]))
    multiscan = write_multiscan(frames, tmp_path / "multiscan" / "scene_00000_00",
                                Z_UP_TO_Y_UP @ rigid(-70, [1.5, 0.2, -1.1]))
    write_multiscan_annotations(room, multiscan, Z_UP_TO_Y_UP @ rigid(-70, [1.5, 0.2, -1.1]), floor_z=-1.28)
    report = ConversionReport()
    boxes = object_boxes([("scannet", str(tmp_path / "scannet")), ("3rscan", str(tmp_path / "3rscan")),
                          ("arkitscenes", str(tmp_path / "arkitscenes")), ("multiscan", str(tmp_path / "multiscan"))],
                         report)
    assert report.skipped == {"object without mesh vertices": 1, "3rscan scan without usable instances (ValueError: "
                              "missing 3RScan instance annotation (semseg.v2.json or "
                              "labels.instances.annotated.v2.ply))": 1,
                              "ARKitScenes object without a usable obbAligned (KeyError)": 1}
    scannet = boxes["scene0000_00"]
    for obj in room.objects:  # axisAlignment undone: the room's own boxes
        assert np.allclose(scannet[str(obj.id)]["center"], obj.center, atol=1e-3)
        assert np.allclose(scannet[str(obj.id)]["size"], obj.size, atol=1e-3)
        assert scannet[str(obj.id)]["label"] == obj.category
    M = scan_alignment(ARKitScenes(video)).T @ rigid(120, [2.0, 3.0, 0.1])  # room -> our ARKitScenes map
    for obj in room.objects:  # the oriented box's axis-aligned hull in our map frame
        corners = _box_corners(obj) @ M[:3, :3].T + M[:3, 3]
        box = boxes["41069025"][f"uid-{obj.id}"]
        assert np.allclose(box["center"], (corners.min(0) + corners.max(0)) / 2, atol=1e-3)
        assert np.allclose(box["size"], corners.max(0) - corners.min(0), atol=1e-3)
    for reader, key, ids, tol in ((RScan(scan), scan.name, lambda o: str(o.id + 1), 0.002),
                                  (ARKitScenes(video), "41069025", lambda o: f"uid-{o.id}", 0.002),
                                  (MultiScan(multiscan), "scene_00000_00", lambda o: str(o.id + 1), 0.005)):
        seen = 0
        for f, g in zip(frames, scan_frames(reader, 1)):
            pts = backproject(g.depth_m, g.intrinsics, g.T_map_camera)
            for obj in room.objects:
                mine = pts[(f.instance == obj.id) & np.isfinite(pts).all(-1)]
                if len(mine):
                    excess = _excess(mine, boxes[key][ids(obj)])  # metres outside the box per point
                    assert excess.max() <= tol, (key, obj)
                    seen += 1
        assert seen >= 5, key


def test_caption_cli_anchors_records_with_boxes(tmp_path, capsys):
    boxes = {"scene0000_00": {"3": {"center": [1.0, 2.0, 0.4], "size": [0.5, 0.6, 0.8], "label": "chair"}}}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    (tmp_path / "scanrefer.json").write_text(json.dumps([
        {"scene_id": "scene0000_00", "object_id": "3", "object_name": "chair", "ann_id": "1",
         "description": "A chair."},
        {"scene_id": "scene0000_00", "object_id": "8", "object_name": "bed", "ann_id": "0", "description": "A bed."}]))
    out = tmp_path / "cap.jsonl"
    assert data_main(["convert", "scanrefer", str(tmp_path / "scanrefer.json"), "--boxes", str(tmp_path / "boxes.json"),
                      "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "skipped 1 x unknown object id (not in the boxes file)" in text
    [record] = read_records(out)
    assert record.anchor.to_obj() == {"center": [1.0, 2.0, 0.4], "size": [0.5, 0.6, 0.8]}
    assert data_main(["convert", "scanrefer", str(tmp_path / "scanrefer.json"), "--out", str(out)]) == 2
    assert "needs --boxes" in capsys.readouterr().err


def test_cfg_marks_the_voxels_inside_the_box():
    d, vs = 4, 0.2
    vmap = VoxelMap(d, vs)
    coords = np.array([(0, 0, 0), (0, 0, 1), (1, 0, 0), (5, 0, 0)])
    feats = torch.randn(len(coords), d)
    vmap.fuse((coords + 0.5) * vs, feats.numpy())
    e = torch.randn(d)
    cfg = GridConfig(pos_z="none")
    g = build_grid(vmap, cfg, anchor_center=(0.2, 0.1, 0.2), anchor_size=(0.4, 0.2, 0.4), anchor_embedding=e)
    torch.testing.assert_close(g.features[0], (feats[0] + feats[1]) / 2 + e)  # column (0, 0): both voxels inside
    torch.testing.assert_close(g.features[1], feats[2] + e)  # column (1, 0): inside
    torch.testing.assert_close(g.features[2], feats[3])  # far column untouched
    thin = build_grid(vmap, cfg, anchor_center=(0.1, 0.1, 0.1), anchor_size=(0.0, 0.0, 0.0), anchor_embedding=e)
    torch.testing.assert_close(thin.features[0], (feats[0] + e + feats[1]) / 2)  # the voxel holding the centre
    with pytest.raises(ValueError, match="anchor_size"):
        build_grid(vmap, cfg, anchor_center=(0.1, 0.1, 0.1), anchor_size=(-1.0, 0.0, 0.0), anchor_embedding=e)


def _multiscan_with_boxes(tmp_path, **annotations):
    room = generate_room(0)
    frames = render_frames(room, 6, 112, 84, depth_noise_m=0.0)
    native = Z_UP_TO_Y_UP @ rigid(-70, [1.5, 0.2, -1.1])
    scan = write_multiscan(frames, tmp_path / "multiscan" / "scene_00000_00", native)
    labels = write_multiscan_annotations(room, scan, native, **annotations)
    return room, frames, scan, labels


def test_multiscan_objects_without_object_id_keep_their_own_boxes(tmp_path):
    """Published files without ``objectId``: every object keeps its own box under its label
    (``chair.2``), none is overwritten; the floor is the data's (aligned frame at mid-height)."""
    room, frames, scan, labels = _multiscan_with_boxes(tmp_path, floor_z=-1.28, object_ids=False)
    report = ConversionReport()
    boxes = object_boxes([("multiscan", str(tmp_path / "multiscan"))], report)["scene_00000_00"]
    assert sorted(boxes) == sorted(labels) and len(boxes) == len(room.objects) and not report.skipped
    by_id = {obj.id: obj for obj in room.objects}
    M = scan_alignment(MultiScan(scan)).T @ Z_UP_TO_Y_UP @ rigid(-70, [1.5, 0.2, -1.1])  # room -> our map
    assert abs(M[2, 3]) < 0.05  # the floor at z = 0, not at -1.28 m
    for label, box in boxes.items():
        obj = by_id[labels[label]]
        assert np.allclose(box["size"], obj.size, atol=1e-3) and box["label"] == label
        assert np.allclose(box["center"], M[:3, :3] @ obj.center + M[:3, 3], atol=1e-3)


def test_objects_sharing_an_id_are_skipped_and_counted_never_merged(tmp_path):
    room, _, scan, _ = _multiscan_with_boxes(tmp_path)
    path = scan / "scene_00000_00.annotations.json"
    data = json.loads(path.read_text())
    data["objects"][1]["objectId"] = data["objects"][0]["objectId"]
    del data["objects"][2]["objectId"], data["objects"][2]["label"]
    path.write_text(json.dumps(data))
    report = ConversionReport()
    boxes = object_boxes([("multiscan", str(tmp_path / "multiscan"))], report)["scene_00000_00"]
    assert report.skipped == {"multiscan objects sharing one id (ambiguous: all dropped)": 2,
                              "multiscan object without an id": 1}
    assert sorted(boxes, key=int) == [str(obj.id + 1) for obj in room.objects[3:]]


def test_sceneverse_arkitscenes_ids_are_list_positions_and_matches_are_reported(tmp_path, capsys):
    """SceneVerse numbers ARKitScenes objects by position in ``data`` (+1): its captions anchor
    to the right boxes under the ``sceneverse`` id rule (object-captions' default), and the
    CLI says how many ids matched per caption source."""
    room = generate_room(0)
    frames = render_frames(room, 6, 112, 84)
    native = rigid(120, [2.0, 3.0, 0.1])
    video = write_arkitscenes(frames, tmp_path / "arkitscenes" / "3dod" / "Validation" / "41069025", native,
                              layout="3dod")
    write_arkitscenes_annotation(room, video, native)
    listed = json.loads((video / "41069025_3dod_annotation.json").read_text())["data"]
    assert data_main(["object-boxes", "--source", f"arkitscenes={tmp_path / 'arkitscenes'}",
                      "--out", str(tmp_path / "boxes.json")]) == 0
    boxes = json.loads((tmp_path / "boxes.json").read_text())["41069025"]
    captions = [{"scan_id": "41069025", "object_id": position + 1, "caption": f"the {item['label']}"}
                for position, item in enumerate(listed)]
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    capsys.readouterr()
    out = tmp_path / "cap.jsonl"
    assert data_main(["convert", "object-captions", str(tmp_path / "captions.json"), "--boxes",
                      str(tmp_path / "boxes.json"), "--out", str(out), "--report", str(tmp_path / "r.json")]) == 0
    n = len(room.objects)
    assert f"object ids of object_caption matched to boxes (sceneverse ids): {n} of {n + 1}" in capsys.readouterr().out
    records = read_records(out)
    expected = [boxes[item["uid"]] for item in listed if item["uid"] != "uid-broken"]
    assert [r.anchor.to_obj() for r in records] == [{"center": b["center"], "size": b["size"]} for b in expected]
    assert [r.response for r in records] == [f"the {b['label']}" for b in expected]
    assert json.loads((tmp_path / "r.json").read_text())["ids_matched"] == {
        "object_caption": {"looked_up": n + 1, "matched": n, "id_rule": "sceneverse"}}
    assert data_main(["convert", "object-captions", str(tmp_path / "captions.json"), "--boxes",
                      str(tmp_path / "boxes.json"), "--out", str(out), "--id-rule", "native"]) == 0
    assert f"matched to boxes (native ids): 0 of {n + 1}" in capsys.readouterr().out


def test_cfg_marks_every_voxel_a_thin_box_intersects():
    """A 1.0 x 0.6 x 0.05 m rug (and a 1 cm picture standing on edge) marks every voxel its box
    overlaps, in the batch and the incremental CFG alike: truth from the voxels' cube bounds."""
    d, vs = 4, 0.2
    ix, iy, iz = np.meshgrid(np.arange(-2, 9), np.arange(-2, 7), np.arange(0, 4), indexing="ij")
    coords = np.stack([ix, iy, iz], -1).reshape(-1, 3)
    e = torch.ones(d)
    for center, size in (((0.83, 0.61, 0.125), (1.0, 0.6, 0.05)), ((0.51, 0.37, 0.45), (0.8, 0.01, 0.6))):
        lo, hi = np.asarray(center) - np.asarray(size) / 2, np.asarray(center) + np.asarray(size) / 2
        overlaps = ((coords * vs < hi) & ((coords + 1) * vs > lo)).all(1)  # the cube [i, i + 1) * vs meets the box
        columns = {}
        for c, hit in zip(map(tuple, coords[:, :2]), overlaps):
            n, marked = columns.get(c, (0, 0))
            columns[c] = (n + 1, marked + int(hit))
        for incremental in (False, True):
            vmap = VoxelMap(d, vs)
            if incremental:
                vmap.track_columns(rope=False)
            vmap.fuse((coords + 0.5) * vs, np.zeros((len(coords), d), np.float32))
            g = build_grid(vmap, GridConfig(pos_z="none", max_tokens=len(columns)), anchor_center=center,
                           anchor_size=size, anchor_embedding=e, incremental=incremental)
            got = {tuple(np.round(xy / vs - 0.5).astype(int)): float(f[0]) for xy, f in zip(g.xy.numpy(), g.features)}
            assert got == pytest.approx({c: m / n for c, (n, m) in columns.items()}), (size, incremental)
        assert overlaps.sum() >= 15
