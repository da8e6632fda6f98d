"""Object regions (anchors) from the scans' own instance annotations, in our map frame.

The paper injects the anchor into "voxels that fall within the referred region" (§3.1), so
an object id must become a region: here its axis-aligned box (centre + size) over the
object's mesh vertices, after the same alignment the frame reader applies (so the box sits
on the voxels the object's frames produced):

- ScanNet: ``<scene>_vh_clean_2.0.010000.segs.json`` (``segIndices``, one segment per mesh
  vertex) + ``<scene>.aggregation.json`` (``segGroups: [{objectId, label, segments}]``) +
  the vertices of ``<scene>_vh_clean_2.ply``, then ``axisAlignment`` from ``<scene>.txt``
  (as frames.scannet_frames). Object ids are ``objectId`` (ScanRefer's ``object_id``).
- 3RScan: ``semseg.v2.json`` (``segGroups: [{id, objectId, label}]``) + the ``objectId`` vertex
  property of ``labels.instances.annotated.v2.ply``, then the scan's floor-centre alignment
  (scan_readers.scan_alignment). Object ids are ``objectId`` (LEO's ``<label>-<id>``,
  scanscribe's ``object_id``).
- ARKitScenes (a box given directly; ``raw`` or ``3dod`` layout):
  ``<video_id>_3dod_annotation.json`` (``data: [{uid, label, segments: {obbAligned: {centroid,
  axesLengths, normalizedAxes}}}]``), corners as the official ``compute_box_3d`` builds them,
  then the scan's alignment; the region is the axis-aligned box around the oriented one.
  Object ids are ``uid``; SceneVerse numbers the same objects by their position in ``data``
  (+1, its ``preprocess/arkitscenes.py``), kept as the box's ``ids: {sceneverse}``.
- MultiScan (boxes given directly): ``<scan>.annotations.json`` (``objects: [{objectId?, label,
  obb: {centroid, axesLengths, normalizedAxes (column-major, columns = axes)}}]``) in the
  aligned mesh frame, taken to the cameras' world with ``<scan>.align.json`` (required) and
  then to our map. Object ids are ``objectId`` (SceneVerse's too). Decision (paper silent):
  some published files have no ``objectId``; such an object is keyed by its ``label``
  (``bag.1``: category.instance, unique in a scan by MultiScan's naming), so it can never
  take another object's key, and a caption by integer id will not match it (counted).

No two objects ever share a key: an object without an id, or every object of a scan that
shares its id with another, is skipped and counted ("ambiguous": which one a caption means is
unknown). ``leovl-data object-boxes --source KIND=ROOT ... --out boxes.json`` writes
``{scan_id: {"<object id>": {center, size, label, ids?}}}`` for the caption converters
(``ids``: the object's id under another numbering, ``{rule: id}``, for caption sources that
use it: caption_adapters.Boxes). An object without vertices, or a scan without its
annotation files, is skipped and counted.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np

from leovl_ros.scans.frames import _axis_alignment
from leovl_ros.scans.scan_readers import ARKitScenes, MultiScan, RScan, scan_alignment
from leovl_ros.scans.scan_sources import ARKITSCENES_SPLITS

from .records import ConversionReport

_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def _ply_header(f: BinaryIO) -> tuple[str, int, list[tuple[str, str]]]:
    if f.readline().strip() != b"ply":
        raise ValueError("not a PLY file")
    fmt, count, props, element = "", 0, [], None
    while True:
        line = f.readline()
        if not line:
            raise ValueError("PLY header has no end_header")
        words = line.decode("ascii", "replace").split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        if words[0] == "end_header":
            break
        if words[0] == "format":
            fmt = words[1]
        elif words[0] == "element":
            element = words[1]
            if element == "vertex":
                count = int(words[2])
            elif count == 0:
                raise ValueError("PLY: the vertex element must come first")
        elif words[0] == "property" and element == "vertex":
            if words[1] == "list":
                raise ValueError("PLY: list properties on vertices are not supported")
            props.append((words[2], _PLY_TYPES[words[1]]))
    return fmt, count, props


def read_ply_vertices(path: str | os.PathLike) -> np.ndarray:
    """The vertex element of a PLY (ascii or binary little/big endian) as a structured array."""
    with open(path, "rb") as f:
        fmt, count, props = _ply_header(f)
        if fmt == "ascii":
            rows = np.loadtxt(f, max_rows=count, ndmin=2)
            out = np.empty(count, dtype=[(n, t) for n, t in props])
            for k, (name, _) in enumerate(props):
                out[name] = rows[:, k]
            return out
        order = {"binary_little_endian": "<", "binary_big_endian": ">"}.get(fmt)
        if order is None:
            raise ValueError(f"PLY: unknown format {fmt!r}")
        dtype = np.dtype([(n, order + t) for n, t in props])
        data = f.read(dtype.itemsize * count)
        if len(data) < dtype.itemsize * count:
            raise ValueError("PLY: file ends inside the vertex data (truncated)")
        return np.frombuffer(data, dtype=dtype, count=count)


_SIGNS = np.array([[1, 1, 1], [1, -1, 1], [-1, -1, 1], [-1, 1, 1],
                   [1, 1, -1], [1, -1, -1], [-1, -1, -1], [-1, 1, -1]], dtype=np.float64)  # a box's corners


def _box(points: np.ndarray, label: str) -> dict:
    lo, hi = points.min(0), points.max(0)
    return {"center": ((lo + hi) / 2).round(4).tolist(), "size": (hi - lo).round(4).tolist(), "label": label}


def _transform(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ T[:3, :3].T + T[:3, 3]


def _xyz(vertices: np.ndarray) -> np.ndarray:
    return np.stack([vertices["x"], vertices["y"], vertices["z"]], 1).astype(np.float64)


class _ScanObjects:
    """One scan's boxes by object id: a missing or shared id is a counted skip, never an overwrite."""

    def __init__(self, kind: str, scan: str, report: ConversionReport) -> None:
        self.kind, self.scan, self.report = kind, scan, report
        self.by_id: dict[str, list[dict]] = {}

    def add(self, obj_id, box: dict) -> None:
        if obj_id is None or not str(obj_id).strip():
            self.report.skip(f"{self.kind} object without an id", f"{self.scan}/{box['label'] or '?'}")
            return
        self.by_id.setdefault(str(obj_id).strip(), []).append(box)

    def add_vertices(self, obj_id, points: np.ndarray, label: str) -> None:
        """The box of an object's mesh vertices; an object with none is a counted skip."""
        if not len(points):
            self.report.skip("object without mesh vertices", f"{self.scan}/{obj_id}")
            return
        self.add(obj_id, _box(points, label))

    def boxes(self) -> dict[str, dict]:
        for key, same in self.by_id.items():
            if len(same) > 1:
                for _ in same:
                    self.report.skip(f"{self.kind} objects sharing one id (ambiguous: all dropped)",
                                     f"{self.scan}/{key}")
        return {key: same[0] for key, same in self.by_id.items() if len(same) == 1}


def scannet_boxes(scene_dir: Path, report: ConversionReport) -> dict[str, dict]:
    name = scene_dir.name
    agg = next((p for p in (scene_dir / f"{name}.aggregation.json", scene_dir / f"{name}_vh_clean.aggregation.json")
                if p.is_file()), None)
    segs, mesh = scene_dir / f"{name}_vh_clean_2.0.010000.segs.json", scene_dir / f"{name}_vh_clean_2.ply"
    if agg is None or not segs.is_file() or not mesh.is_file():
        raise ValueError("missing ScanNet instance annotation (aggregation.json, segs.json or _vh_clean_2.ply)")
    points = _transform(_axis_alignment(scene_dir), _xyz(read_ply_vertices(mesh)))
    seg_of_vertex = np.asarray(json.loads(segs.read_text())["segIndices"])
    if len(seg_of_vertex) != len(points):
        raise ValueError("segs.json and the mesh have different vertex counts")
    objects = _ScanObjects("scannet", name, report)
    for group in json.loads(agg.read_text())["segGroups"]:
        mask = np.isin(seg_of_vertex, group.get("segments", []))
        objects.add_vertices(group.get("objectId", group.get("id")), points[mask], str(group.get("label", "")))
    return objects.boxes()


def rscan_boxes(scan_dir: Path, report: ConversionReport) -> dict[str, dict]:
    semseg, mesh = scan_dir / "semseg.v2.json", scan_dir / "labels.instances.annotated.v2.ply"
    if not semseg.is_file() or not mesh.is_file():
        raise ValueError("missing 3RScan instance annotation (semseg.v2.json or labels.instances.annotated.v2.ply)")
    vertices = read_ply_vertices(mesh)
    if "objectId" not in (vertices.dtype.names or ()):
        raise ValueError("labels.instances.annotated.v2.ply has no objectId vertex property")
    points = _transform(scan_alignment(RScan(scan_dir)).T, _xyz(vertices))
    objects = _ScanObjects("3rscan", scan_dir.name, report)
    for group in json.loads(semseg.read_text())["segGroups"]:
        obj_id = group.get("objectId", group.get("id"))
        try:
            mask = vertices["objectId"] == int(obj_id)
        except (TypeError, ValueError):
            report.skip("3rscan object without an integer id", f"{scan_dir.name}/{group.get('label', '?')}")
            continue
        objects.add_vertices(obj_id, points[mask], str(group.get("label", "")))
    return objects.boxes()


def arkitscenes_boxes(scan_dir: Path, report: ConversionReport) -> dict[str, dict]:
    scan = ARKitScenes(scan_dir)
    annotation = scan.path / f"{scan.video_id}_3dod_annotation.json"
    if not annotation.is_file():
        raise ValueError(f"missing ARKitScenes annotation {annotation.name}")
    T = scan_alignment(scan).T
    objects = _ScanObjects("arkitscenes", scan.video_id, report)
    for position, item in enumerate(json.loads(annotation.read_text()).get("data", [])):
        uid = item.get("uid")
        try:
            obb = item["segments"]["obbAligned"]
            rot = np.asarray(obb["normalizedAxes"], dtype=np.float64).reshape(3, 3)  # rows: the box's axes
            half = np.asarray(obb["axesLengths"], dtype=np.float64).reshape(3) / 2
            corners = (_SIGNS * half) @ rot + np.asarray(obb["centroid"], dtype=np.float64).reshape(3)
        except (KeyError, TypeError, ValueError) as exc:
            report.skip(f"ARKitScenes object without a usable obbAligned ({type(exc).__name__})",
                        f"{scan.video_id}/{uid}")
            continue
        box = _box(_transform(T, corners), str(item.get("label", "")))
        box["ids"] = {"sceneverse": str(position + 1)}  # SceneVerse counts every listed object
        objects.add(uid, box)
    return objects.boxes()


def multiscan_boxes(scan_dir: Path, report: ConversionReport) -> dict[str, dict]:
    annotation, align = scan_dir / f"{scan_dir.name}.annotations.json", scan_dir / f"{scan_dir.name}.align.json"
    if not annotation.is_file() or not align.is_file():
        raise ValueError(f"missing MultiScan {annotation.name} or {align.name} (boxes are in the aligned frame)")
    to_cameras = np.asarray(json.loads(align.read_text())["coordinate_transform"], np.float64).reshape(4, 4, order="F")
    T = scan_alignment(MultiScan(scan_dir)).T @ to_cameras
    objects = _ScanObjects("multiscan", scan_dir.name, report)
    for item in json.loads(annotation.read_text()).get("objects", []):
        obj_id = item.get("objectId", item.get("label"))  # the label rule: see the module docstring
        try:
            obb = item["obb"]
            axes = np.asarray(obb["normalizedAxes"], dtype=np.float64).reshape(3, 3, order="F")  # columns: axes
            half = np.asarray(obb["axesLengths"], dtype=np.float64).reshape(3) / 2
            corners = (_SIGNS * half) @ axes.T + np.asarray(obb["centroid"], dtype=np.float64).reshape(3)
        except (KeyError, TypeError, ValueError) as exc:
            report.skip(f"MultiScan object without a usable obb ({type(exc).__name__})", f"{scan_dir.name}/{obj_id}")
            continue
        objects.add(obj_id, _box(_transform(T, corners), str(item.get("label", ""))))
    return objects.boxes()


BOX_READERS = {"scannet": scannet_boxes, "3rscan": rscan_boxes, "arkitscenes": arkitscenes_boxes,
               "multiscan": multiscan_boxes}


def object_boxes(sources: Iterable[tuple[str, str]], report: ConversionReport) -> dict[str, dict[str, dict]]:
    """Boxes of every scan folder under each (kind, root); a scan that fails is skipped and counted."""
    out: dict[str, dict[str, dict]] = {}
    for kind, root in sources:
        if kind not in BOX_READERS:
            raise ValueError(f"object boxes come from {' or '.join(BOX_READERS)} annotations, not {kind!r}")
        folders = [Path(root) / split for split in ARKITSCENES_SPLITS if split] if kind == "arkitscenes" else []
        folders = [f for f in folders if f.is_dir()] or [Path(root)]  # ARKitScenes: split folders
        for scan_dir in sorted(p for f in folders for p in f.iterdir() if p.is_dir()):
            try:
                boxes = BOX_READERS[kind](scan_dir, report)
            except (ValueError, KeyError, OSError) as exc:
                report.skip(f"{kind} scan without usable instances ({type(exc).__name__}: {exc})", scan_dir.name)
                continue
            if scan_dir.name in out:
                report.skip(f"{kind} scan found twice (the first is kept)", str(scan_dir))
                continue
            out[scan_dir.name] = boxes
            report.kept["objects"] += len(boxes)
    return out
