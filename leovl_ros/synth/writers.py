"""Writers of rendered frames: a ScanNet-export-style folder and a rosbag2 file (rosbags).

Both writes are atomic: everything goes to a temporary sibling first and is renamed into
place, so a reader never sees half a scene or half a bag.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys.store import Typestore
from scipy.spatial.transform import Rotation

from ..bag_types import bag_typestore
from .render import Frame

_NUMPY = {"bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
          "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32,
          "int64": np.int64, "uint64": np.uint64, "float32": np.float32, "float64": np.float64}


def _check_frames(frames: Sequence[Frame]) -> None:
    if not frames:
        raise ValueError("no frames to write")
    h, w = frames[0].depth_mm.shape
    for i, f in enumerate(frames):
        if f.rgb.shape != (h, w, 3) or f.rgb.dtype != np.uint8:
            raise ValueError(f"frame {i}: rgb must be uint8 ({h}, {w}, 3), got {f.rgb.dtype} {f.rgb.shape}")
        if f.depth_mm.shape != (h, w) or f.depth_mm.dtype != np.uint16:
            raise ValueError(f"frame {i}: depth_mm must be uint16 ({h}, {w}), got {f.depth_mm.dtype} {f.depth_mm.shape}")
        if f.K.shape != (3, 3) or f.T_map_camera.shape != (4, 4):
            raise ValueError(f"frame {i}: K must be (3, 3) and T_map_camera (4, 4)")


def _replace_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass overwrite=True (CLI: --overwrite) to replace it")
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def write_scannet(frames: Sequence[Frame], out_dir: str | os.PathLike, overwrite: bool = False,
                  instances: bool = True, extra_json: dict[str, Any] | None = None) -> Path:
    """ScanNet SensReader-export layout: color/{i}.jpg, depth/{i}.png (uint16 mm),
    pose/{i}.txt (4x4 camera-to-world), intrinsic/intrinsic_{depth,color}.txt (4x4) and
    extrinsic_{depth,color}.txt (identity: colour and depth are registered here).

    instances: also write instance/{i}.png (uint16, object id + 1, 0 = structure), which
    ScanNet ships separately. extra_json: {filename: object} written at the folder's root
    (e.g. the scene graph).
    """
    _check_frames(frames)
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        for sub in ("color", "depth", "pose", "intrinsic") + (("instance",) if instances else ()):
            (tmp / sub).mkdir()
        K4 = np.eye(4)
        K4[:3, :3] = frames[0].K
        for name in ("intrinsic_depth", "intrinsic_color"):
            np.savetxt(tmp / "intrinsic" / f"{name}.txt", K4, fmt="%.6f")
        for name in ("extrinsic_depth", "extrinsic_color"):
            np.savetxt(tmp / "intrinsic" / f"{name}.txt", np.eye(4), fmt="%.6f")
        for i, f in enumerate(frames):
            Image.fromarray(f.rgb).save(tmp / "color" / f"{i}.jpg", quality=95)
            Image.fromarray(f.depth_mm).save(tmp / "depth" / f"{i}.png")
            np.savetxt(tmp / "pose" / f"{i}.txt", f.T_map_camera, fmt="%.9f")
            if instances:
                Image.fromarray((f.instance + 1).astype(np.uint16)).save(tmp / "instance" / f"{i}.png")
        for name, obj in (extra_json or {}).items():
            (tmp / name).write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
        _replace_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class BagExtra:
    """Extra messages for a bag: a topic of a (possibly custom) type.

    msgdef: the .msg text (needed for types the typestore lacks; None for standard types and
    this package's; one given for this package's type replaces it in this bag). messages: (stamp_ns,
    message) with the message either built from the typestore or a dict of its fields (nested
    dicts for sub-messages; missing fields take ROS defaults; a missing `header` gets the stamp).
    """

    topic: str
    msgtype: str
    msgdef: str | None = None
    messages: list[tuple[int, Any]] = field(default_factory=list)


def _default(ts: Typestore, desc: tuple) -> Any:
    kind, arg = desc
    if kind.name == "BASE":
        return "" if arg[0] in ("string", "wstring") else (False if arg[0] == "bool" else 0)
    if kind.name == "NAME":
        return from_dict(ts, arg, {})
    sub, n = arg
    if kind.name == "ARRAY":
        if sub[0].name == "BASE" and sub[1][0] in _NUMPY:
            return np.zeros(n, _NUMPY[sub[1][0]])
        return [_default(ts, sub) for _ in range(n)]
    return np.zeros(0, _NUMPY[sub[1][0]]) if sub[0].name == "BASE" and sub[1][0] in _NUMPY else []


def _convert(ts: Typestore, desc: tuple, value: Any) -> Any:
    kind, arg = desc
    if kind.name == "NAME":
        return from_dict(ts, arg, value) if isinstance(value, dict) else value
    if kind.name in ("ARRAY", "SEQUENCE"):
        sub = arg[0]
        if sub[0].name == "BASE" and sub[1][0] in _NUMPY:
            return np.asarray(value, dtype=_NUMPY[sub[1][0]])
        return [_convert(ts, sub, v) for v in value]
    return value


def from_dict(ts: Typestore, msgtype: str, fields: dict[str, Any]) -> Any:
    """Build a rosbags message of `msgtype` from a dict (recursively), with ROS defaults."""
    if msgtype not in ts.fielddefs:
        raise ValueError(f"unknown message type {msgtype!r}: pass its .msg text as BagExtra.msgdef")
    names = [name for name, _ in ts.fielddefs[msgtype][1]]
    unknown = set(fields) - set(names)
    if unknown:
        raise ValueError(f"{msgtype} has no field(s) {sorted(unknown)}; fields are {names}")
    kwargs = {name: (_convert(ts, desc, fields[name]) if name in fields else _default(ts, desc))
              for name, desc in ts.fielddefs[msgtype][1]}
    return ts.types[msgtype](**kwargs)


def _stamp(ts: Typestore, stamp_ns: int) -> Any:
    return ts.types["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9)


def frame_messages(ts: Typestore, f: Frame, camera_frame: str, map_frame: str) -> tuple[Any, Any, Any, Any]:
    """(rgb Image rgb8, depth Image 16UC1, CameraInfo, TFMessage map->camera) of one frame."""
    T = ts.types
    header = T["std_msgs/msg/Header"](stamp=_stamp(ts, f.stamp_ns), frame_id=camera_frame)
    h, w = f.depth_mm.shape
    rgb = T["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                                     step=3 * w, data=np.ascontiguousarray(f.rgb).reshape(-1))
    depth = T["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="16UC1", is_bigendian=0,
                                       step=2 * w, data=np.ascontiguousarray(f.depth_mm.astype("<u2")).view(np.uint8).reshape(-1))
    P = np.zeros((3, 4))
    P[:, :3] = f.K
    info = T["sensor_msgs/msg/CameraInfo"](
        header=header, height=h, width=w, distortion_model="plumb_bob", d=np.zeros(5), k=f.K.reshape(-1).astype(np.float64),
        r=np.eye(3).reshape(-1), p=P.reshape(-1), binning_x=0, binning_y=0,
        roi=T["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))
    q = Rotation.from_matrix(f.T_map_camera[:3, :3]).as_quat()  # (x, y, z, w)
    tf = T["geometry_msgs/msg/TransformStamped"](
        header=T["std_msgs/msg/Header"](stamp=_stamp(ts, f.stamp_ns), frame_id=map_frame), child_frame_id=camera_frame,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=float(f.T_map_camera[0, 3]), y=float(f.T_map_camera[1, 3]),
                                                       z=float(f.T_map_camera[2, 3])),
            rotation=T["geometry_msgs/msg/Quaternion"](x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3]))))
    return rgb, depth, info, T["tf2_msgs/msg/TFMessage"](transforms=[tf])


def write_bag(frames: Sequence[Frame], path: str | os.PathLike, storage: str = "mcap",
              rgb_topic: str = "rgb/image", depth_topic: str = "depth/image", info_topic: str = "rgb/camera_info",
              camera_frame: str = "camera_optical", map_frame: str = "map",
              extra_messages: Sequence[BagExtra | tuple] = (), overwrite: bool = False) -> Path:
    """Write a rosbag2 folder (storage "mcap" or "sqlite3") with per frame: /tf (map ->
    camera_frame), camera info, rgb8 and 16UC1 images, all stamped with the frame stamp.
    Topic names are made absolute ("rgb/image" -> "/rgb/image"). `extra_messages` are
    BagExtra or (topic, msgtype, msgdef, [(stamp_ns, message or dict), ...]) tuples."""
    if storage not in ("mcap", "sqlite3"):
        raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
    _check_frames(frames)
    extra_messages = [e if isinstance(e, BagExtra) else BagExtra(*e) for e in extra_messages]
    ts = bag_typestore(msgdefs={e.msgtype: e.msgdef for e in extra_messages if e.msgdef is not None})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_parent = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    try:
        with Writer(tmp_parent / out.name, version=9, storage_plugin=plugin) as writer:
            def conn(topic: str, msgtype: str):
                return writer.add_connection("/" + topic.lstrip("/"), msgtype, typestore=ts)

            c_tf, c_info = conn("tf", "tf2_msgs/msg/TFMessage"), conn(info_topic, "sensor_msgs/msg/CameraInfo")
            c_rgb, c_depth = conn(rgb_topic, "sensor_msgs/msg/Image"), conn(depth_topic, "sensor_msgs/msg/Image")
            for f in frames:
                rgb, depth, info, tf = frame_messages(ts, f, camera_frame, map_frame)
                for c, msg in ((c_tf, tf), (c_info, info), (c_rgb, rgb), (c_depth, depth)):
                    writer.write(c, f.stamp_ns, ts.serialize_cdr(msg, c.msgtype))
            for extra in extra_messages:
                c = conn(extra.topic, extra.msgtype)
                for stamp, msg in extra.messages:
                    if isinstance(msg, dict):
                        names = {n for n, _ in ts.fielddefs[extra.msgtype][1]}
                        if "header" in names and "header" not in msg:
                            msg = {**msg, "header": {"stamp": {"sec": stamp // 10**9, "nanosec": stamp % 10**9}}}
                        msg = from_dict(ts, extra.msgtype, msg)
                    writer.write(c, stamp, ts.serialize_cdr(msg, extra.msgtype))
        _replace_dir(tmp_parent / out.name, out, overwrite)
    finally:
        shutil.rmtree(tmp_parent, ignore_errors=True)
    return out
