"""Frame readers of LEO-VL's other scan domains: 3RScan, MultiScan and ARKitScenes, in each
dataset's native layout (data-formats.md; the official loaders named per reader).

Every reader lists the scan's views (pose, intrinsics, lazy depth and colour), says where
its up axis comes from, and :func:`scan_frames` turns the views into z-up, floor-centred
:class:`~leovl_ros.scans.frames.RGBDFrame` s (scan_align.py). A view that cannot be used (missing
file, truncated depth, non-finite pose, no pose for its timestamp...) is skipped and counted
in a :class:`~leovl_ros.scans.frames.FrameReport`, never fatal to the scan.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from leovl_ros.geometry import Intrinsics

from .frames import FrameReport, RGBDFrame
from .multiscan_streams import DeflateFrames, VideoFrames
from .scan_align import Alignment, floor_centre_alignment, sample_points, turn_view, upright_check, upright_turns

log = logging.getLogger(__name__)
# ARKit / MultiScan camera axes (x right, y up, z backwards) -> optical (x right, y down, z forwards)
ARKIT_TO_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])
# ARKit world (y up, gravity along -y) -> z up: (x, y, z) -> (x, -z, y)
Y_UP_TO_Z_UP = np.array([[1.0, 0, 0, 0], [0, 0, -1, 0], [0, 1, 0, 0], [0, 0, 0, 1]])
ARKITSCENES_MAX_DT = 0.005  # s: the official loader's pose matching tolerance
ALIGN_FRAMES = 50  # frames (evenly spaced) whose depth places the floor: the alignment depends on the scan only


class ViewError(ValueError):
    """A view that cannot be used; the message is the skip reason."""


@dataclass
class View:
    where: str
    stamp_s: float
    T_world_camera: np.ndarray  # (4, 4) optical camera -> the dataset's world frame
    intrinsics: Intrinsics  # of the depth image
    depth_m: Callable[[], np.ndarray]  # raises ViewError / OSError / ValueError when unreadable
    rgb: Callable[[], np.ndarray]


def _check_pose(T: np.ndarray) -> np.ndarray:
    if T.shape != (4, 4) or not np.isfinite(T).all():
        raise ViewError("non-finite pose (lost tracking)")
    return T


def _image(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise ViewError(f"missing {what} file")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB") if what == "colour" else im)
    except OSError as exc:
        raise ViewError(f"unreadable {what} file ({type(exc).__name__})") from exc


def _checked_depth(depth_m: np.ndarray, intr: Intrinsics) -> np.ndarray:
    if depth_m.shape != (intr.height, intr.width):
        raise ViewError("depth image size differs from its intrinsics")
    return depth_m


# --- 3RScan (WaldJohannaU/3RScan: rio_lib sequence.cc, FAQ) ---------------------------

class RScan:
    """A 3RScan scan folder with ``sequence/`` (unzipped ``sequence.zip``): ``_info.txt``,
    ``frame-XXXXXX.color.jpg``, ``frame-XXXXXX.depth.pgm`` (uint16, divided by
    ``m_depthShift`` = 1000 -> metres), ``frame-XXXXXX.pose.txt`` (4x4 camera -> world, the RGB
    sensor's pose, metres). Colour and depth are registered and differ in size only (FAQ), so
    the depth intrinsics (``m_calibrationDepthIntrinsic``) serve both.

    Gravity: 3RScan's world frame is the Tango device's gravity-aligned start-of-service frame,
    z up (an up-axis check from the camera poses is logged).
    """

    kind = "3rscan"
    gravity = "3RScan world frame is z-up (Tango, gravity-aligned)"

    def __init__(self, scan_dir: str | os.PathLike) -> None:
        scan_dir = self.path = Path(scan_dir)
        self.seq = scan_dir / "sequence" if (scan_dir / "sequence").is_dir() else scan_dir
        info_path = self.seq / "_info.txt"
        if not info_path.is_file():
            raise ValueError(f"{scan_dir} is not a 3RScan scan: no sequence/_info.txt (unzip sequence.zip)")
        info = {}
        for line in info_path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                info[key.strip()] = value.strip()
        try:
            K = np.asarray([float(v) for v in info["m_calibrationDepthIntrinsic"].split()]).reshape(4, 4)[:3, :3]
            self.intr = Intrinsics.from_K(K, int(info["m_depthWidth"]), int(info["m_depthHeight"]))
            self.depth_shift = float(info.get("m_depthShift", 1000))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{info_path}: unusable intrinsics ({exc})") from exc
        pattern = re.compile(r"^frame-(\d+)\.")
        self.indices = sorted({int(m.group(1)) for p in self.seq.iterdir() if (m := pattern.match(p.name))})
        self.num_frames = len(self.indices)
        self.T_up = np.eye(4)

    def views(self, stride: int, report: FrameReport, colour: bool = True) -> Iterator[View]:
        for i in self.indices[:: max(1, stride)]:
            name = f"frame-{i:06d}"
            pose = self.seq / f"{name}.pose.txt"
            if not pose.is_file():
                report.skip("missing pose file", name)
                continue
            try:
                T = _check_pose(np.loadtxt(pose))
            except ValueError as exc:
                report.skip(str(exc) if isinstance(exc, ViewError) else "unreadable pose file", name)
                continue
            yield View(name, float(i), T, self.intr,
                       lambda n=name: _checked_depth(_image(self.seq / f"{n}.depth.pgm", "depth")
                                                     .astype(np.float32) / self.depth_shift, self.intr),
                       lambda n=name: _image(self.seq / f"{n}.color.jpg", "colour"))


# --- MultiScan (smartscenes/multiscan: reconstruction/scripts/bridge.py, docs) -----------

def _column_major(values, n: int) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.size != n * n:
        raise ViewError(f"expected {n * n} numbers, got {a.size}")
    return a.reshape(n, n, order="F")


class MultiScan:
    """A MultiScan scan folder ``<scan>/``: ``<scan>.mp4`` (H.264 colour), ``<scan>.depth.zlib``
    (raw-deflate stream of float16 metres, or uint16 mm when ``depth_unit`` is ``mm``, at the
    depth stream's resolution), ``<scan>.jsonl`` (per frame: column-major ``intrinsics`` of
    the colour image, column-major ``transform`` camera -> world in ARKit camera axes) and
    ``<scan>.json`` (stream resolutions ``[height, width]``). Depth intrinsics = colour
    intrinsics scaled by the depth / colour size ratio, as the official ``bridge.py`` does.

    Gravity: with ``<scan>.align.json``, its ``coordinate_transform`` (aligned mesh -> camera
    world; MultiScan's aligned frame is z-up, centred at mid-height) is inverted; without it,
    ARKit's world frame is y-up (gravity along -y) and is turned z-up. The floor comes from
    the depth points either way (scan_align.py). Stamps: the jsonl's ``timestamp`` is integer
    nanoseconds (the iOS recorder writes ``t * 1e9``), stored as seconds.
    """

    kind = "multiscan"

    def __init__(self, scan_dir: str | os.PathLike) -> None:
        scan_dir = self.path = Path(scan_dir)
        name = scan_dir.name
        self.files = {ext: scan_dir / f"{name}.{ext}" for ext in ("mp4", "depth.zlib", "jsonl", "json", "align.json")}
        missing = [e for e in ("mp4", "depth.zlib", "jsonl", "json") if not self.files[e].is_file()]
        if missing:
            names = ", ".join(f"{name}.{e}" for e in missing)
            raise ValueError(f"{scan_dir} is not a MultiScan scan: missing {names}")
        try:
            meta = json.loads(self.files["json"].read_text())
            streams = meta["streams"]
            color = next(s for s in streams if s.get("file_extension") == "mp4")
            depth = next(s for s in streams if s.get("file_extension") == "depth.zlib")
            self.color_hw = [int(v) for v in color["resolution"]]
            self.depth_hw = [int(v) for v in depth["resolution"]]
            self.depth_dtype = {"m": np.dtype("<f2"), "mm": np.dtype("<u2")}[meta.get("depth_unit", "m")]
            self.fallback_K = color.get("intrinsics")
        except (ValueError, KeyError, StopIteration, TypeError) as exc:
            raise ValueError(f"{self.files['json']}: unusable metadata ({type(exc).__name__}: {exc})") from exc
        self.T_up, self.gravity = Y_UP_TO_Z_UP, "ARKit world frame is y-up"
        if self.files["align.json"].is_file():
            try:
                to_raw = _column_major(json.loads(self.files["align.json"].read_text())["coordinate_transform"], 4)
                self.T_up = np.linalg.inv(to_raw)
                self.gravity = "MultiScan align.json coordinate_transform (z-up)"
            except (ValueError, KeyError, TypeError, np.linalg.LinAlgError) as exc:
                log.warning("%s: unusable (%s); using ARKit's y-up world", self.files["align.json"], exc)
        with self.files["jsonl"].open() as lines:
            self.num_frames = sum(1 for _ in lines)

    def views(self, stride: int, report: FrameReport, colour: bool = True) -> Iterator[View]:
        (dh, dw), (ch, cw) = self.depth_hw, self.color_hw
        scale = np.diag([dw / cw, dh / ch, 1.0])
        depth = DeflateFrames(self.files["depth.zlib"], dh * dw * self.depth_dtype.itemsize)
        video = VideoFrames(self.files["mp4"]) if colour else None
        try:
            with self.files["jsonl"].open() as lines:
                for i, line in enumerate(lines):
                    if i % max(1, stride):
                        continue
                    where = f"frame {i}"
                    try:
                        cam = json.loads(line)
                        T = _check_pose(_column_major(cam["transform"], 4) @ ARKIT_TO_OPTICAL)
                        K = _column_major(cam.get("intrinsics", self.fallback_K), 3)  # of the colour image
                        intr = Intrinsics.from_K(scale @ K, dw, dh)
                        stamp_s = int(cam["timestamp"]) * 1e-9 if "timestamp" in cam else float(i)
                    except (ValueError, KeyError, TypeError) as exc:
                        report.skip(str(exc) if isinstance(exc, ViewError) else "unreadable camera line", where)
                        continue
                    raw = depth.get(i)
                    if raw is None:
                        report.skip("depth stream ends before the frame (truncated .depth.zlib)", where)
                        continue
                    d = np.frombuffer(raw, self.depth_dtype).reshape(dh, dw).astype(np.float32)
                    d = d * (0.001 if self.depth_dtype.kind == "u" else 1.0)
                    rgb = video.get(i) if video is not None else np.zeros((1, 1, 3), np.uint8)
                    if rgb is None:
                        report.skip("video ends before the frame", where)
                        continue
                    yield View(where, stamp_s, T, intr, lambda d=d: d, lambda rgb=rgb: rgb)
        finally:
            depth.close()
            if video is not None:
                video.close()


# --- ARKitScenes (apple/ARKitScenes: threedod/benchmark_scripts/utils/tenFpsDataLoader.py) --

def arkitscenes_folders(path: Path) -> tuple[Path, Path, str] | None:
    """(video folder, frames folder, video id) of an ARKitScenes video in either download
    layout, or None: ``raw``: ``<video_id>/lowres_depth/...``; ``3dod``:
    ``<video_id>/<video_id>_frames/lowres_depth/...`` (``path`` may be either folder)."""
    if (path / f"{path.name}_frames" / "lowres_depth").is_dir():
        return path, path / f"{path.name}_frames", path.name
    if (path / "lowres_depth").is_dir():
        if path.name == f"{path.parent.name}_frames":
            return path.parent, path, path.parent.name
        return path, path, path.name
    return None


class ARKitScenes:
    """An ARKitScenes video, ``raw`` or ``3dod`` layout (:func:`arkitscenes_folders`; the
    annotation ``<video_id>_3dod_annotation.json`` sits in the video folder in both). Its frames
    folder holds ``lowres_depth/<id>_<t>.png`` (uint16 mm), ``lowres_wide/<id>_<t>.png``
    (colour), ``lowres_wide_intrinsics/<id>_<t>.pincam`` (``w h fx fy cx cy``) and
    ``lowres_wide.traj`` (per line: timestamp, angle-axis rotation, translation of world ->
    camera; inverted to the camera pose as ``TrajStringToMatrix`` does). A frame takes the
    trajectory pose within 5 ms of its timestamp and the
    ``.pincam`` of its timestamp or +-1 ms, as the official loader.

    Gravity: the ARKitScenes world frame is z-up (gravity-aligned; the maintainers in
    apple/ARKitScenes issues #78 and #81).
    """

    kind = "arkitscenes"
    gravity = "ARKitScenes world frame is z-up (gravity-aligned)"

    def __init__(self, scan_dir: str | os.PathLike) -> None:
        folders = arkitscenes_folders(Path(scan_dir))
        if folders is None or not (folders[1] / "lowres_wide.traj").is_file():
            raise ValueError(f"{scan_dir} is not an ARKitScenes video folder: lowres_depth/ or lowres_wide.traj "
                             "missing (raw layout: <video_id>/lowres_depth; 3dod: <video_id>/<video_id>_frames/)")
        self.path, self.dir, self.video_id = folders
        traj = self.dir / "lowres_wide.traj"
        self.bad_traj_lines, stamps, poses = 0, [], []
        for line in traj.read_text().splitlines():
            tokens = line.split()
            try:
                values = [float(t) for t in tokens]
                if len(values) != 7 or not np.isfinite(values).all():
                    raise ValueError
            except ValueError:
                self.bad_traj_lines += bool(line.strip())
                continue
            extrinsics = np.eye(4)
            extrinsics[:3, :3] = Rotation.from_rotvec(values[1:4]).as_matrix()
            extrinsics[:3, 3] = values[4:7]
            stamps.append(values[0])
            poses.append(np.linalg.inv(extrinsics))
        order = np.argsort(stamps)
        self.stamps, self.poses = np.asarray(stamps)[order], [poses[k] for k in order]
        prefix = f"{self.video_id}_"
        self.frame_ids = sorted((p.stem[len(prefix):] for p in (self.dir / "lowres_depth").glob(f"{prefix}*.png")),
                                key=lambda s: float(s) if _is_float(s) else float("inf"))
        self.num_frames = len(self.frame_ids)
        self.T_up = np.eye(4)

    def _pose(self, t: float) -> np.ndarray | None:
        if not len(self.stamps):
            return None
        k = int(np.clip(np.searchsorted(self.stamps, t), 1, len(self.stamps) - 1)) if len(self.stamps) > 1 else 0
        best = min((j for j in (k - 1, k) if 0 <= j < len(self.stamps)), key=lambda j: abs(self.stamps[j] - t))
        return self.poses[best] if abs(self.stamps[best] - t) < ARKITSCENES_MAX_DT else None

    def _intrinsics(self, frame_id: str) -> Intrinsics:
        folder, t = self.dir / "lowres_wide_intrinsics", float(frame_id)
        for name in (frame_id, f"{t - 0.001:.3f}", f"{t + 0.001:.3f}"):
            path = folder / f"{self.video_id}_{name}.pincam"
            if path.is_file():
                try:
                    w, h, fx, fy, cx, cy = np.loadtxt(path).reshape(-1)
                    return Intrinsics(fx, fy, cx, cy, int(w), int(h))
                except ValueError as exc:
                    raise ViewError("unreadable .pincam intrinsics") from exc
        raise ViewError("missing .pincam intrinsics")

    def views(self, stride: int, report: FrameReport, colour: bool = True) -> Iterator[View]:
        for _ in range(self.bad_traj_lines):
            report.skip("unreadable trajectory line", "lowres_wide.traj")
        for frame_id in self.frame_ids[:: max(1, stride)]:
            where = f"{self.video_id}_{frame_id}"
            if not _is_float(frame_id):
                report.skip("frame name without a timestamp", where)
                continue
            T = self._pose(float(frame_id))
            if T is None:
                report.skip(f"no trajectory pose within {ARKITSCENES_MAX_DT * 1000:g} ms", where)
                continue
            try:
                intr = self._intrinsics(frame_id)
            except ViewError as exc:
                report.skip(str(exc), where)
                continue
            yield View(where, float(frame_id), T, intr,
                       lambda w=where, i=intr: _checked_depth(
                           _image(self.dir / "lowres_depth" / f"{w}.png", "depth").astype(np.float32) * 0.001, i),
                       lambda w=where: _image(self.dir / "lowres_wide" / f"{w}.png", "colour"))


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


# --- common: alignment and frames --------------------------------------------------------

def scan_alignment(scan) -> Alignment:
    """The scan's z-up, floor-centred alignment from the depth points of ``ALIGN_FRAMES``
    evenly spaced frames (scan_align.py): a function of the scan alone, so frames read at
    any stride and object boxes (object_boxes.py) share it."""
    points, poses = [], []
    for view in scan.views(max(1, scan.num_frames // ALIGN_FRAMES), FrameReport(), colour=False):
        try:
            depth = view.depth_m()
        except (ViewError, OSError, ValueError):
            continue  # counted when the frames are read
        points.append(sample_points(depth, view.intrinsics, view.T_world_camera))
        poses.append(view.T_world_camera)
    gravity = getattr(scan, "gravity", "")
    all_points = np.concatenate(points) if points else np.zeros((0, 3))
    check = upright_check(scan.T_up, poses, all_points)
    if check is not None:
        gravity += f"; {check.text}"
        if check.angle_deg > 45:
            log.warning("%s scan %s: its up axis is %.0f deg away from the scan's up (%s)",
                        scan.kind, scan.path, check.angle_deg, gravity)
    return floor_centre_alignment(scan.T_up, gravity, all_points)


def scan_frames(scan, stride: int = 10, report: FrameReport | None = None,
                alignment: Alignment | None = None, upright: bool = True) -> Iterator[RGBDFrame]:
    """Aligned frames of a :class:`RScan`, :class:`MultiScan` or :class:`ARKitScenes` scan;
    ``upright``: frames held sideways are turned upright (scan_align.upright_turns)."""
    report = report if report is not None else FrameReport()
    alignment = alignment or scan_alignment(scan)
    log.info("%s scan %s: %s", scan.kind, scan.path, alignment.describe())
    for view in scan.views(stride, report):
        try:
            depth, rgb = view.depth_m(), view.rgb()
        except (ViewError, OSError, ValueError) as exc:
            report.skip(str(exc) if isinstance(exc, ViewError) else f"unreadable image ({type(exc).__name__})",
                        view.where)
            continue
        report.frames += 1
        intr, T = view.intrinsics, alignment.T @ view.T_world_camera
        if upright and (turns := upright_turns(T)):  # colour turns with depth whatever its size
            rgb, depth, intr, T = turn_view(rgb, depth, intr, T, turns)
        yield RGBDFrame(rgb, depth, intr, T, view.stamp_s)


READERS = {"3rscan": RScan, "multiscan": MultiScan, "arkitscenes": ARKitScenes}
