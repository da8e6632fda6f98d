"""3RScan, MultiScan and ARKitScenes frame readers on fixtures written in each dataset's
native layout from a synthetic room (native_scans.py): the frames and the fused map equal
the synthetic room's, z up with the floor at z = 0; bad frames are skipped and counted.

Tolerances: poses 1e-5 (text round trips), depth exact for uint16 millimetres and within
float16 rounding (1e-3 relative) for MultiScan, colour within a mean of 8 / 255 after JPEG
or H.264; maps: at most 2 % of voxels differ and the mean features of shared voxels have
cosine >= 0.97 to the synthetic map's (the colour codecs move a few pixels across cells).
"""
from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from leovl_ros.geometry import Intrinsics
from leovl_ros.synth.render import render_frames
from leovl_ros.synth.rooms import generate_room
from support.native_scans import (MULTISCAN_T0, Z_UP_TO_Y_UP, rigid, write_3rscan, write_arkitscenes,
                                  write_multiscan)
from leovl_ros.training.config import ModelSection
from leovl_ros.scans.frames import FrameReport, RGBDFrame
from leovl_ros.training.modeling import load_model
from leovl_ros.scans.scan_align import turn_view, upright_turns
from leovl_ros.scans.scan_readers import READERS, scan_alignment, scan_frames
from leovl_ros.scans.scan_sources import ScanSource
from leovl_ros.training.scenes import FusionConfig, ScenesConfig, SceneStore, fuse_frames

W, H, N_FRAMES = 112, 84, 6
LEOVL = {"grid": {"max_tokens": 64, "fourier_features": 16}, "max_pixels": 112 * 84}
CASES = {  # kind: (writer, scan id, room map -> the dataset's world frame)
    "3rscan": (write_3rscan, "0988ea72-eb32-2e61-8344-ef2d4e3b2f1a", rigid(30, [0.7, -0.4, -1.3])),
    "multiscan": (write_multiscan, "scene_00000_00", Z_UP_TO_Y_UP @ rigid(-70, [1.5, 0.2, -1.1])),
    "arkitscenes": (write_arkitscenes, "41069025", rigid(120, [2.0, 3.0, 0.1])),
}


@pytest.fixture(scope="module")
def frames():
    return render_frames(generate_room(0), N_FRAMES, W, H)


@pytest.fixture(scope="module")
def roots(frames, tmp_path_factory):
    root = tmp_path_factory.mktemp("scans")
    for kind, (write, scan_id, native) in CASES.items():
        write(frames, root / kind / scan_id, native)
    return root


def _read(roots, kind: str, report: FrameReport | None = None):
    scan = READERS[kind](roots / kind / CASES[kind][1])
    alignment = scan_alignment(scan)
    return alignment, list(scan_frames(scan, 1, report, alignment))


@pytest.mark.parametrize("kind", CASES)
def test_reader_gives_the_synthetic_frames_z_up_on_the_floor(roots, frames, kind):
    report = FrameReport()
    alignment, out = _read(roots, kind, report)
    assert report.frames == N_FRAMES and not report.skipped
    M = alignment.T @ CASES[kind][2]  # room map -> our map: must be a z-up rigid motion, floor at 0
    assert np.allclose(M[:3, 2], [0, 0, 1], atol=1e-6) and abs(M[2, 3]) < 0.05
    assert "gravity" in alignment.describe() and "deg from -z" in alignment.gravity
    for f, g in zip(frames, out):
        assert np.allclose(g.T_map_camera, M @ f.T_map_camera, atol=1e-5)
        assert np.allclose(g.intrinsics.K, f.K, atol=1e-4) and (g.intrinsics.width, g.intrinsics.height) == (W, H)
        truth = f.depth_mm.astype(np.float32) / 1000
        assert np.allclose(g.depth_m, truth, rtol=1e-3, atol=1e-6)
        assert np.abs(_at_depth_size(g.rgb) - _at_depth_size(_as_written(f.rgb, g.rgb.shape))).mean() < 8


def _as_written(rgb: np.ndarray, shape) -> np.ndarray:
    """The fixture's colour before its codec (3RScan / MultiScan write it at twice the size)."""
    return np.asarray(Image.fromarray(rgb).resize((shape[1], shape[0]), Image.BILINEAR))


def _at_depth_size(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((W, H), Image.BILINEAR)).astype(float)


def test_maps_through_every_reader_equal_the_synthetic_map(roots, frames, tmp_path):
    torch.set_num_threads(1)
    model = load_model(ModelSection(base=str(tmp_path / "base"), init_random={"hidden_size": 64, "layers": 2},
                                    leovl=LEOVL), "adapter", 0, torch.device("cpu"))
    sources = [{"kind": kind, "root": str(roots / kind), "stride": 1} for kind in CASES]
    store = SceneStore(model, ScenesConfig(cache_dir=str(tmp_path / "cache"), sources=sources))
    for kind, (_, scan_id, native) in CASES.items():
        alignment, read = _read(roots, kind)
        M, shape = alignment.T @ native, read[0].rgb.shape
        ref = model.new_voxel_map()  # the synthetic frames, colour as written before its codec
        fuse_frames(model.encoder, ref, [RGBDFrame(_as_written(f.rgb, shape), f.depth_mm.astype(np.float32) / 1000,
                                                   _intr(f), M @ f.T_map_camera, i) for i, f in enumerate(frames)],
                    FusionConfig())
        got = store.get(scan_id)
        a = {tuple(c): i for i, c in enumerate(ref.coords.tolist())}
        b = {tuple(c): i for i, c in enumerate(got.coords.tolist())}
        assert len(a.keys() ^ b.keys()) <= 0.02 * len(a), kind
        shared = sorted(a.keys() & b.keys())
        fa = ref.means()[[a[k] for k in shared]].float()
        fb = got.means()[[b[k] for k in shared]].float()
        assert torch.nn.functional.cosine_similarity(fa, fb, dim=1).mean() >= 0.97, kind
    assert store.built == 3 and store.frame_report.frames == 3 * N_FRAMES
    with pytest.raises(ValueError, match="in no scan source .*3rscan"):
        store.get("scene9999_00")


def _intr(f):
    from leovl_ros.geometry import Intrinsics

    return Intrinsics.from_K(f.K, W, H)


def test_bad_frames_are_skipped_and_counted(frames, tmp_path):
    for kind, (write, scan_id, native) in CASES.items():
        write(frames, tmp_path / kind / scan_id, native)
    seq = tmp_path / "3rscan" / CASES["3rscan"][1] / "sequence"
    (seq / "frame-000001.depth.pgm").unlink()
    (seq / "frame-000002.pose.txt").write_text("inf inf inf inf\n" * 4)
    data = (seq / "frame-000003.depth.pgm").read_bytes()
    (seq / "frame-000003.depth.pgm").write_bytes(data[: len(data) // 2])
    ms = tmp_path / "multiscan" / "scene_00000_00"
    lines = (ms / "scene_00000_00.jsonl").read_text().splitlines()
    lines[1] = lines[1][:20]
    (ms / "scene_00000_00.jsonl").write_text("\n".join(lines) + "\n")
    raw = zlib.decompress((ms / "scene_00000_00.depth.zlib").read_bytes(), -zlib.MAX_WBITS)
    deflate, frame_bytes = zlib.compressobj(wbits=-zlib.MAX_WBITS), H * W * 2
    head = deflate.compress(raw[: 4 * frame_bytes]) + deflate.flush(zlib.Z_SYNC_FLUSH)  # frames 0-3 decodable
    rest = deflate.compress(raw[4 * frame_bytes:]) + deflate.flush()
    (ms / "scene_00000_00.depth.zlib").write_bytes(head + rest[:10])  # cut inside frame 4
    ak = tmp_path / "arkitscenes" / "41069025"
    traj = (ak / "lowres_wide.traj").read_text().splitlines()
    (ak / "lowres_wide.traj").write_text("\n".join(traj[:1] + traj[2:] + ["not a pose"]) + "\n")
    next((ak / "lowres_wide_intrinsics").glob("*_6845.337.pincam")).unlink()
    expected = {
        "3rscan": {"missing depth file": 1, "non-finite pose (lost tracking)": 1, "unreadable depth file (OSError)": 1},
        "multiscan": {"unreadable camera line": 1, "depth stream ends before the frame (truncated .depth.zlib)": 2},
        "arkitscenes": {"no trajectory pose within 5 ms": 1, "missing .pincam intrinsics": 1,
                        "unreadable trajectory line": 1},
    }
    for kind, reasons in expected.items():
        report = FrameReport()
        _, out = _read(tmp_path, kind, report)
        assert dict(report.skipped) == reasons, kind
        assert report.frames == len(out) == N_FRAMES - sum(v for k, v in reasons.items() if "trajectory line" not in k)
        assert all(np.isfinite(f.T_map_camera).all() for f in out)
    source = ScanSource.from_obj({"kind": "3rscan", "root": str(tmp_path / "3rscan")})
    assert source.locate(CASES["3rscan"][1]) is not None and source.locate("missing") is None
    with pytest.raises(ValueError, match="kind must be one of"):
        ScenesConfig(sources=[{"kind": "scannet++", "root": "x"}])


def test_multiscan_alignment_file_gives_gravity_and_the_data_the_floor(frames, tmp_path):
    """With ``<scan>.align.json`` (aligned mesh -> camera world, column-major) the reader
    undoes its rotation: z up exactly. Its aligned frame is centred at mid-height (floor at
    z = -1.28 m, as in real files), so the floor comes from the depth points: z = 0."""
    native = Z_UP_TO_Y_UP @ rigid(-70, [1.5, 0.2, -1.1])
    scan = write_multiscan(frames, tmp_path / "scene_00001_00", native)
    mid_height = np.eye(4)
    mid_height[2, 3] = 1.28  # aligned (floor at -1.28) -> room (floor at 0)
    (scan / "scene_00001_00.align.json").write_text(json.dumps(
        {"version": "multiscan@0.0.1", "coordinate_transform": (native @ mid_height).reshape(-1, order="F").tolist()}))
    alignment = scan_alignment(READERS["multiscan"](scan))
    M = alignment.T @ native
    assert "align.json" in alignment.gravity
    assert np.allclose(M[:3, :3], np.eye(3), atol=1e-9) and abs(M[2, 3]) < 0.05


def test_multiscan_stamps_are_nanoseconds_read_as_seconds(roots):
    """The jsonl's integer-nanosecond ``timestamp`` becomes seconds (the recorder's clock)."""
    _, out = _read(roots, "multiscan")
    assert [g.stamp_s for g in out] == pytest.approx([MULTISCAN_T0 + i / 10 for i in range(N_FRAMES)], abs=1e-6)


def test_arkitscenes_3dod_layout_is_located_and_read_as_the_raw_one(roots, frames, tmp_path):
    """Apple's 3DOD download: ``3dod/Training/<id>/<id>_frames/...``; the scene id is the
    video id, whichever of the two folders is given, and the frames equal the raw layout's."""
    write, vid, native = CASES["arkitscenes"]
    video = write(frames, tmp_path / "3dod" / "Training" / vid, native, layout="3dod")
    assert not (video / "lowres_depth").exists() and (video / f"{vid}_frames" / "lowres_depth").is_dir()
    source = ScanSource.from_obj({"kind": "arkitscenes", "root": str(tmp_path), "stride": 1})
    assert source.locate(vid) == video and source.locate(f"{vid}_frames") is None
    _, raw = _read(roots, "arkitscenes")
    for folder in (video, video / f"{vid}_frames"):
        scan = READERS["arkitscenes"](folder)
        assert (scan.video_id, scan.path) == (vid, video)
        got = list(scan_frames(scan, 1))
        assert len(got) == len(raw) == N_FRAMES
        for g, r in zip(got, raw):
            assert np.array_equal(g.depth_m, r.depth_m) and np.allclose(g.T_map_camera, r.T_map_camera, atol=1e-9)


def test_up_axis_is_judged_modulo_upright_turns_and_confirmed_by_the_floor(frames, tmp_path, caplog):
    """A portrait scan with the right up axis raises no gravity warning; a scan whose world is
    really y-up, read as z-up, does."""
    portrait = []
    for f in frames:  # held on its side: the room's up points to the image's right
        rgb, depth, intr, T = turn_view(f.rgb, f.depth_mm, Intrinsics.from_K(f.K, W, H), f.T_map_camera, 3)
        portrait.append(dataclasses.replace(f, rgb=rgb, depth_mm=depth, K=intr.K, T_map_camera=T))
    with caplog.at_level("WARNING", logger="leovl_ros.scans.scan_readers"):
        scan = READERS["arkitscenes"](write_arkitscenes(portrait, tmp_path / "41069025", rigid(120, [2.0, 3.0, 0.1])))
        upright = scan_alignment(scan)
        assert not caplog.records, caplog.text
        wrong = scan_alignment(READERS["3rscan"](write_3rscan(frames, tmp_path / "y-up", Z_UP_TO_Y_UP)))
    assert "on their side" in upright.gravity and "the floor (" in upright.gravity
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "deg away from the scan's up" in caplog.text
    assert "deg from -z" in wrong.gravity


def test_sideways_frames_are_turned_upright(frames, tmp_path):
    """A scan recorded with the device on its side (image up = the world's horizontal): the
    reader hands the vision tower upright frames, with intrinsics and poses turned along."""
    sideways = []
    for f in frames:  # a quarter turn clockwise: the room's up points to the image's right
        rgb, depth, intr, T = turn_view(f.rgb, f.depth_mm, Intrinsics.from_K(f.K, W, H), f.T_map_camera, 3)
        sideways.append(dataclasses.replace(f, rgb=rgb, depth_mm=depth, K=intr.K, T_map_camera=T))
    assert sideways[0].rgb.shape == (W, H, 3) and upright_turns(sideways[0].T_map_camera) == 1
    native = rigid(120, [2.0, 3.0, 0.1])
    scan = READERS["arkitscenes"](write_arkitscenes(sideways, tmp_path / "41069025", native))
    alignment = scan_alignment(scan)
    out = list(scan_frames(scan, 1, alignment=alignment))
    M = alignment.T @ native
    for f, g in zip(frames, out):
        assert np.array_equal(g.rgb, f.rgb) and np.allclose(g.depth_m, f.depth_mm.astype(np.float32) / 1000)
        assert np.allclose(g.intrinsics.K, f.K) and np.allclose(g.T_map_camera, M @ f.T_map_camera, atol=1e-6)
