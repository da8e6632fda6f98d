"""Test fixtures: synthetic-room frames written in 3RScan, MultiScan and ARKitScenes' native
layouts (data-formats.md and the official loaders), each in a world frame of its own, so a
reader must undo the dataset's depth encoding, pose convention, intrinsics file and up axis.

``native`` is the 4x4 transform room map frame -> the dataset's world frame that the writer
applies to every pose; readers are checked against it.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from leovl_ros.synth.render import Frame

OPTICAL_TO_ARKIT = np.diag([1.0, -1.0, -1.0, 1.0])
Z_UP_TO_Y_UP = np.array([[1.0, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0], [0, 0, 0, 1]])


def rigid(yaw_deg: float, t: Sequence[float]) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("z", yaw_deg, degrees=True).as_matrix()
    T[:3, 3] = t
    return T


def _upscaled(rgb: np.ndarray, factor: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((w * factor, h * factor), Image.BILINEAR))


def write_3rscan(frames: Sequence[Frame], scan_dir: Path, native: np.ndarray) -> Path:
    """``<scan>/sequence/``: _info.txt, frame-XXXXXX.{color.jpg, depth.pgm, pose.txt}; colour at
    twice the depth size (3RScan's colour and depth differ in size only)."""
    seq = scan_dir / "sequence"
    seq.mkdir(parents=True)
    h, w = frames[0].depth_mm.shape
    K4 = np.eye(4)
    K4[:3, :3] = frames[0].K
    Kc = K4.copy()
    Kc[:2] *= 2
    flat = lambda M: " ".join(f"{v:g}" for v in M.reshape(-1))  # noqa: E731
    (seq / "_info.txt").write_text("\n".join([
        "m_versionNumber = 4", "m_sensorName = StructureSensor", f"m_colorWidth = {2 * w}",
        f"m_colorHeight = {2 * h}", f"m_depthWidth = {w}", f"m_depthHeight = {h}", "m_depthShift = 1000",
        f"m_calibrationColorIntrinsic = {flat(Kc)}", f"m_calibrationColorExtrinsic = {flat(np.eye(4))}",
        f"m_calibrationDepthIntrinsic = {flat(K4)}", f"m_calibrationDepthExtrinsic = {flat(np.eye(4))}",
        f"m_frames.size = {len(frames)}"]) + "\n")
    for i, f in enumerate(frames):
        name = seq / f"frame-{i:06d}"
        Image.fromarray(_upscaled(f.rgb, 2)).save(f"{name}.color.jpg", quality=95)
        with open(f"{name}.depth.pgm", "wb") as out:  # binary PGM: 16-bit samples are big-endian
            out.write(f"P5\n{w} {h}\n65535\n".encode() + f.depth_mm.astype(">u2").tobytes())
        np.savetxt(f"{name}.pose.txt", native @ f.T_map_camera, fmt="%.9f")
    return scan_dir


MULTISCAN_T0 = 4523.1157  # s: ARKit frame time of the first frame (seconds since the device booted)


def write_multiscan(frames: Sequence[Frame], scan_dir: Path, native: np.ndarray, fps: int = 10) -> Path:
    """``<scan>/<scan>.{mp4, depth.zlib, jsonl, json}``: H.264 colour at twice the depth size,
    raw-deflate float16 metres, column-major intrinsics (of the colour image) and ARKit-axes
    camera-to-world transforms in a y-up world; ``timestamp`` in integer nanoseconds, as the
    iOS recorder writes ``Int64(t * 1e9)`` (frame i at ``MULTISCAN_T0 + i / fps`` s)."""
    import av

    scan_dir.mkdir(parents=True)
    name = scan_dir.name
    h, w = frames[0].depth_mm.shape
    Kc = frames[0].K.copy()
    Kc[:2] *= 2
    with av.open(str(scan_dir / f"{name}.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 2 * w, 2 * h, "yuv420p"
        stream.options = {"crf": "12"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(_upscaled(f.rgb, 2), format="rgb24")))
        container.mux(stream.encode())
    depth = np.stack([f.depth_mm.astype(np.float32) / 1000 for f in frames]).astype("<f2")
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    (scan_dir / f"{name}.depth.zlib").write_bytes(compressor.compress(depth.tobytes()) + compressor.flush())
    lines = []
    for i, f in enumerate(frames):
        T = native @ f.T_map_camera @ OPTICAL_TO_ARKIT
        lines.append(json.dumps({"timestamp": int(round((MULTISCAN_T0 + i / fps) * 1e9)),
                                 "intrinsics": Kc.reshape(-1, order="F").tolist(),
                                 "transform": T.reshape(-1, order="F").tolist(), "exposure_duration": 10}))
    (scan_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    meta = {"scene": {"type": "Bedroom / Hotel", "description": "synthetic"}, "depth_unit": "m",
            "camera_orientation_quaternion_format": "wxyz", "number_of_files": 5, "streams": [
                {"frequency": fps, "number_of_frames": len(frames), "id": "color_back_1", "file_extension": "mp4",
                 "type": "color_camera", "resolution": [2 * h, 2 * w], "encoding": "h264"},
                {"frequency": fps, "number_of_frames": len(frames), "id": "depth_back_1",
                 "file_extension": "depth.zlib", "type": "lidar_sensor", "resolution": [h, w],
                 "encoding": "float16_zlib"},
                {"frequency": fps, "number_of_frames": len(frames), "id": "camera_info_color_back_1",
                 "file_extension": "jsonl", "type": "camera_info", "encoding": "jsonl"}]}
    (scan_dir / f"{name}.json").write_text(json.dumps(meta))
    return scan_dir


def write_arkitscenes(frames: Sequence[Frame], video_dir: Path, native: np.ndarray, t0: float = 6845.137,
                      traj_offset: float = 0.001, layout: str = "raw") -> Path:
    """``<video_id>/`` (``raw`` layout) or ``<video_id>/<video_id>_frames/`` (``3dod``, Apple's
    3DOD download): lowres_wide/ + lowres_depth/ (<id>_<t>.png, uint16 mm),
    lowres_wide_intrinsics/<id>_<t>.pincam and lowres_wide.traj (world -> camera as
    angle-axis + translation), its timestamps ``traj_offset`` s off the frames' (as in the
    real data, where they are matched within 5 ms). Returns the video folder."""
    vid = video_dir.name
    frames_dir = video_dir if layout == "raw" else video_dir / f"{vid}_frames"
    for sub in ("lowres_wide", "lowres_depth", "lowres_wide_intrinsics"):
        (frames_dir / sub).mkdir(parents=True)
    h, w = frames[0].depth_mm.shape
    traj = []
    for i, f in enumerate(frames):
        t = t0 + 0.1 * i
        stem = f"{vid}_{t:.3f}"
        Image.fromarray(f.rgb).save(frames_dir / "lowres_wide" / f"{stem}.png")
        Image.fromarray(f.depth_mm).save(frames_dir / "lowres_depth" / f"{stem}.png")
        K = f.K
        (frames_dir / "lowres_wide_intrinsics" / f"{stem}.pincam").write_text(
            f"{w} {h} {K[0, 0]} {K[1, 1]} {K[0, 2]} {K[1, 2]}\n")
        extrinsics = np.linalg.inv(native @ f.T_map_camera)
        rv = Rotation.from_matrix(extrinsics[:3, :3]).as_rotvec()
        traj.append(" ".join(f"{v:.9f}" for v in [t + traj_offset, *rv, *extrinsics[:3, 3]]))
    (frames_dir / "lowres_wide.traj").write_text("\n".join(traj) + "\n")
    return video_dir


def _box_corners(obj) -> np.ndarray:
    """(8, 3) corners of a synthetic object's map-frame box."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    return obj.center + signs * obj.size / 2


def write_scannet_instances(room, scene_dir: Path, axis_alignment: np.ndarray) -> dict[int, np.ndarray]:
    """``<scene>_vh_clean_2.ply`` (binary little endian: x y z float, r g b alpha uchar, faces),
    ``<scene>_vh_clean_2.0.010000.segs.json``, ``<scene>.aggregation.json`` and ``<scene>.txt``
    (axisAlignment): each object's box corners as mesh vertices, two segments per object, in
    the unaligned frame. Returns objectId -> its corners in the aligned (room) frame."""
    scene_dir.mkdir(parents=True, exist_ok=True)
    name = scene_dir.name
    unalign = np.linalg.inv(axis_alignment)
    corners = {obj.id: _box_corners(obj) for obj in room.objects}
    points = np.concatenate(list(corners.values()))
    points = points @ unalign[:3, :3].T + unalign[:3, 3]
    seg_indices = [100 + 2 * obj_id + (k % 2) for obj_id in corners for k in range(8)]
    vertex = np.zeros(len(points), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                                          ("blue", "u1"), ("alpha", "u1")])
    vertex["x"], vertex["y"], vertex["z"] = points.T
    faces = np.zeros(1, dtype=[("n", "u1"), ("v", "<i4", 3)])
    faces[0] = (3, (0, 1, 2))
    header = ("ply\nformat binary_little_endian 1.0\ncomment VCGLIB generated\n"
              f"element vertex {len(points)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
              "element face 1\nproperty list uchar int vertex_indices\nend_header\n")
    (scene_dir / f"{name}_vh_clean_2.ply").write_bytes(header.encode() + vertex.tobytes() + faces.tobytes())
    (scene_dir / f"{name}_vh_clean_2.0.010000.segs.json").write_text(json.dumps(
        {"params": {"kThresh": "0.0001", "segMinVerts": "20"}, "sceneId": f"{name}_vh_clean_2",
         "segIndices": seg_indices}))
    groups = [{"id": obj.id, "objectId": obj.id, "segments": [100 + 2 * obj.id, 101 + 2 * obj.id],
               "label": obj.category} for obj in room.objects]
    groups.append({"id": 999, "objectId": 999, "segments": [7], "label": "ghost"})  # no vertices: skipped
    (scene_dir / f"{name}.aggregation.json").write_text(json.dumps(
        {"sceneId": f"scannet.{name}", "appId": "Aggregator.v2", "segGroups": groups,
         "segmentsFile": f"scannet.{name}_vh_clean_2.0.010000.segs.json"}))
    (scene_dir / f"{name}.txt").write_text(
        "axisAlignment = " + " ".join(f"{v:.9f}" for v in axis_alignment.reshape(-1)) + "\n"
        "colorHeight = 968\ncolorWidth = 1296\nsceneType = Bedroom / Hotel\n")
    return corners


def write_3rscan_instances(room, scan_dir: Path, native: np.ndarray) -> None:
    """``semseg.v2.json`` + ``labels.instances.annotated.v2.ply`` (ascii, with the objectId vertex
    property) beside ``sequence/``: each object's box corners in the scan's world frame."""
    vertices, groups = [], []
    for obj in room.objects:
        oid = obj.id + 1  # 3RScan instance ids start at 1
        for c in _box_corners(obj) @ native[:3, :3].T + native[:3, 3]:
            vertices.append(f"{c[0]:.6f} {c[1]:.6f} {c[2]:.6f} 128 128 128 {oid} {oid} 5 3 4")
        groups.append({"id": oid, "objectId": oid, "label": obj.category, "segments": [oid],
                       "obb": {"centroid": [0, 0, 0], "axesLengths": [1, 1, 1],
                               "normalizedAxes": [1, 0, 0, 0, 1, 0, 0, 0, 1]}})
    header = ("ply\nformat ascii 1.0\n" f"element vertex {len(vertices)}\n"
              "property float x\nproperty float y\nproperty float z\nproperty uchar red\nproperty uchar green\n"
              "property uchar blue\nproperty ushort objectId\nproperty ushort globalId\nproperty uchar NYU40\n"
              "property uchar Eigen13\nproperty uchar RIO27\nelement face 0\nproperty list uchar int vertex_indices\n"
              "end_header\n")
    (scan_dir / "labels.instances.annotated.v2.ply").write_text(header + "\n".join(vertices) + "\n")
    (scan_dir / "semseg.v2.json").write_text(json.dumps({"scan_id": scan_dir.name, "segGroups": groups}))


def write_arkitscenes_annotation(room, video_dir: Path, native: np.ndarray) -> None:
    """``<video_id>_3dod_annotation.json`` in the video folder (both layouts): each object's box
    as ``obbAligned`` in the video's world frame (``normalizedAxes`` rows = the box's axes, as
    ``compute_box_3d`` reads them); one object without a box (skipped by readers), listed
    second so that list positions (SceneVerse's ids) and object ids differ."""
    axes = native[:3, :3].T.reshape(-1).tolist()
    data = [{"uid": f"uid-{obj.id}", "label": obj.category, "modelId": "", "children": [], "objectId": obj.id,
             "segments": {"obbAligned": {"centroid": (native[:3, :3] @ obj.center + native[:3, 3]).tolist(),
                                         "axesLengths": obj.size.tolist(), "normalizedAxes": axes}}}
            for obj in room.objects]
    data.insert(1, {"uid": "uid-broken", "label": "chair", "segments": {}})
    (video_dir / f"{video_dir.name}_3dod_annotation.json").write_text(json.dumps(
        {"data": data, "stats": {}, "comment": "", "confirm": [], "skipped": False}))


def write_multiscan_annotations(room, scan_dir: Path, native: np.ndarray, floor_z: float = 0.0,
                                object_ids: bool = True) -> dict[str, int]:
    """``<scan>.annotations.json`` (``{version, scanId, objects, articulations}``; objects with
    ``label`` ``<category>.<instance>`` and ``obb`` in the aligned frame, ``normalizedAxes``
    column-major) and ``<scan>.align.json`` (aligned -> cameras' world, column-major). The
    aligned frame is the room's shifted so the floor is at ``floor_z`` (real files: z-up,
    centred at mid-height, floor near -1.3 m); ``object_ids=False`` leaves ``objectId`` out, as
    some published files do. Returns label -> the room object's id."""
    name = scan_dir.name
    shift = np.array([0.0, 0.0, floor_z])
    objects, labels, seen = [], {}, {}
    for obj in room.objects:
        seen[obj.category] = seen.get(obj.category, 0) + 1
        label = f"{obj.category}.{seen[obj.category]}"
        labels[label] = obj.id
        item = {"objectId": obj.id + 1, "label": label, "mobilityType": "movable", "partIds": [obj.id + 1],
                "obb": {"centroid": (obj.center + shift).tolist(), "axesLengths": obj.size.tolist(),
                        "normalizedAxes": np.eye(3).reshape(-1, order="F").tolist(),
                        "min": (obj.min + shift).tolist(), "max": (obj.max + shift).tolist(),
                        "front": [0, -1, 0], "up": [0, 0, 1]}}
        if not object_ids:
            del item["objectId"]
        objects.append(item)
    (scan_dir / f"{name}.annotations.json").write_text(json.dumps(
        {"version": "multiscan@0.0.1", "scanId": name, "objects": objects, "articulations": []}))
    aligned_to_room = np.eye(4)
    aligned_to_room[:3, 3] = -shift
    (scan_dir / f"{name}.align.json").write_text(json.dumps(
        {"version": "multiscan@0.0.1",
         "coordinate_transform": (native @ aligned_to_room).reshape(-1, order="F").tolist()}))
    return labels
