"""Message <-> numpy at the node's edge: images, camera info, poses, stamps, point clouds.

Images become numpy *views* of the message buffer whenever the layout allows (row padding,
BGR order and mono are handled by strides), so a frame that is then dropped as a
non-keyframe costs O(1); the encoder path copies only what it keeps. cv_bridge would do
the same but is not installable from PyPI.
"""
from __future__ import annotations

import sys
from typing import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Transform
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ..geometry import Intrinsics

__all__ = [
    "DEPTH_ENCODINGS", "RGB_ENCODINGS", "grid_cloud_msg", "image_to_depth", "image_to_rgb",
    "intrinsics_from_camera_info", "matrix_to_pose", "matrix_to_transform", "numpy_to_image",
    "pose_to_matrix", "seconds_to_stamp", "stamp_to_seconds", "transform_to_matrix", "xyz_quat_to_matrix",
]

# encoding -> (channels, the channel slice that reads R, G, B: a strided view, never a copy)
RGB_ENCODINGS: dict[str, tuple[int, slice]] = {
    "rgb8": (3, slice(0, 3)),
    "bgr8": (3, slice(2, None, -1)),
    "rgba8": (4, slice(0, 3)),
    "bgra8": (4, slice(2, None, -1)),
    "mono8": (1, slice(0, 1)),
}
# 16UC1 / mono16 are millimetres, 32FC1 metres (REP-118).
DEPTH_ENCODINGS: dict[str, np.dtype] = {
    "16UC1": np.dtype(np.uint16),
    "mono16": np.dtype(np.uint16),
    "32FC1": np.dtype(np.float32),
}
_LITTLE = sys.byteorder == "little"


def _pixels(msg: Image, dtype: np.dtype, channels: int) -> np.ndarray:
    """(H, W, C) view of ``msg.data``, honouring ``step`` padding and the byte order."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ValueError(f"image '{msg.encoding}' is empty ({w}x{h})")
    row = w * channels * dtype.itemsize
    if step < row:
        raise ValueError(f"image step {step} B is shorter than a {w}-pixel '{msg.encoding}' row ({row} B)")
    if step % dtype.itemsize:
        raise ValueError(f"image step {step} B is not a multiple of the {dtype.itemsize}-byte '{msg.encoding}' pixel")
    data = np.frombuffer(msg.data, dtype=np.uint8)
    if data.size < step * (h - 1) + row:
        raise ValueError(
            f"image data has {data.size} B but {w}x{h} '{msg.encoding}' with step {step} needs {step * (h - 1) + row} B"
        )
    swapped = bool(msg.is_bigendian) == _LITTLE and dtype.itemsize > 1
    typed = dtype.newbyteorder(">" if msg.is_bigendian else "<") if dtype.itemsize > 1 else dtype
    strides = (step, channels * dtype.itemsize, dtype.itemsize)
    view = np.ndarray((h, w, channels), dtype=typed, buffer=data, strides=strides)
    return view.astype(dtype) if swapped else view


def image_to_rgb(msg: Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB view of an rgb8/bgr8/rgba8/bgra8/mono8 image (read-only)."""
    spec = RGB_ENCODINGS.get(msg.encoding)
    if spec is None:
        raise ValueError(f"unsupported colour encoding '{msg.encoding}'; send one of {sorted(RGB_ENCODINGS)}")
    channels, rgb = spec
    px = _pixels(msg, np.dtype(np.uint8), channels)[:, :, rgb]  # (H, W, 3) or (H, W, 1)
    return np.broadcast_to(px, px.shape[:2] + (3,))  # grey -> RGB without copying


def image_to_depth(msg: Image) -> np.ndarray:
    """(H, W) view: uint16 millimetres (16UC1, mono16) or float32 metres (32FC1)."""
    dtype = DEPTH_ENCODINGS.get(msg.encoding)
    if dtype is None:
        raise ValueError(f"unsupported depth encoding '{msg.encoding}'; send one of {sorted(DEPTH_ENCODINGS)}")
    return _pixels(msg, dtype, 1)[:, :, 0]


def numpy_to_image(array: np.ndarray, encoding: str, header: Header) -> Image:
    """An Image message from a (H, W[, C]) array laid out as ``encoding`` says (no padding)."""
    if encoding in RGB_ENCODINGS:
        dtype, channels = np.dtype(np.uint8), RGB_ENCODINGS[encoding][0]
    elif encoding in DEPTH_ENCODINGS:
        dtype, channels = DEPTH_ENCODINGS[encoding], 1
    else:
        raise ValueError(f"unsupported encoding '{encoding}'")
    a = np.ascontiguousarray(array, dtype=dtype)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != channels:
        raise ValueError(f"'{encoding}' needs {channels} channel(s), got an array of shape {array.shape}")
    h, w = a.shape[:2]
    return Image(header=header, height=h, width=w, encoding=encoding, is_bigendian=not _LITTLE,
                 step=w * channels * dtype.itemsize, data=a.tobytes())


def intrinsics_from_camera_info(info: CameraInfo, rectified: bool = False) -> Intrinsics:
    """Pinhole intrinsics from ``k`` (raw images) or ``p`` (``rectified``, image_rect topics)."""
    if info.width <= 0 or info.height <= 0:
        raise ValueError(f"camera_info has no image size ({info.width}x{info.height}); the camera is not calibrated")
    if not any(info.k) and not rectified:
        raise ValueError("camera_info k is all zeros: the camera is not calibrated")
    return Intrinsics.from_camera_info(list(info.k), list(info.p), int(info.width), int(info.height), rectified)


def stamp_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def xyz_quat_to_matrix(xyz: Sequence[float], quat_xyzw: Sequence[float]) -> np.ndarray:
    """(4, 4) from a translation and a quaternion (x, y, z, w; normalised here)."""
    q = np.asarray(quat_xyzw, dtype=np.float64)
    t = np.asarray(xyz, dtype=np.float64)
    if q.shape != (4,) or t.shape != (3,) or not (np.isfinite(q).all() and np.isfinite(t).all()):
        raise ValueError(f"pose needs 3 finite coordinates and 4 quaternion values, got {list(xyz)}, {list(quat_xyzw)}")
    if np.linalg.norm(q) < 1e-6:
        raise ValueError("pose quaternion is all zeros (an uninitialised orientation)")
    T = np.eye(4)
    T[:3, :3] = Rotation.from_quat(q).as_matrix()
    T[:3, 3] = t
    return T


def pose_to_matrix(pose: Pose) -> np.ndarray:
    p, q = pose.position, pose.orientation
    return xyz_quat_to_matrix((p.x, p.y, p.z), (q.x, q.y, q.z, q.w))


def transform_to_matrix(transform: Transform) -> np.ndarray:
    t, q = transform.translation, transform.rotation
    return xyz_quat_to_matrix((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


def _quat(T: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(np.asarray(T, dtype=np.float64)[:3, :3]).as_quat()  # x, y, z, w


def matrix_to_pose(T: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in T[:3, 3])
    o = pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in _quat(T))
    return pose


def matrix_to_transform(T: np.ndarray) -> Transform:
    tf = Transform()
    tf.translation.x, tf.translation.y, tf.translation.z = (float(v) for v in T[:3, 3])
    r = tf.rotation
    r.x, r.y, r.z, r.w = (float(v) for v in _quat(T))
    return tf


_CLOUD_FIELDS = ("x", "y", "z", "intensity", "voxels")


def grid_cloud_msg(xyz: np.ndarray, intensity: np.ndarray, voxels: np.ndarray, header: Header) -> PointCloud2:
    """PointCloud2 of N cells with float32 fields x, y, z, intensity, voxels (dense, unordered)."""
    n = int(xyz.shape[0])
    if xyz.shape != (n, 3) or intensity.shape != (n,) or voxels.shape != (n,):
        raise ValueError(f"cloud arrays disagree: xyz {xyz.shape}, intensity {intensity.shape}, voxels {voxels.shape}")
    cols = np.concatenate([xyz, intensity[:, None], voxels[:, None]], axis=1).astype(np.float32)  # (N, 5)
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, name in enumerate(_CLOUD_FIELDS)]
    return PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=not _LITTLE,
                       point_step=4 * len(fields), row_step=4 * len(fields) * n, data=cols.tobytes(), is_dense=True)
