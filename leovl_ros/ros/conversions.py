"""Message <-> numpy at the node's edge: camera info, poses, stamps, point clouds, images out.

Incoming images are decoded by ``leovl_ros.scans.images.decode_image`` (the bag reader's
decoder too); quaternions become matrices by ``geometry.xyz_quat_to_matrix``.
"""
from __future__ import annotations

import sys

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Transform
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField
from std_msgs.msg import Header

from ..geometry import Intrinsics, xyz_quat_to_matrix
from ..scans.images import DEPTH_ENCODINGS, RGB_ENCODINGS
from ..scans.stamps import stamp_to_seconds  # re-exported: the node's callbacks take it from here

__all__ = [
    "grid_cloud_msg", "intrinsics_from_camera_info", "matrix_to_pose", "matrix_to_transform", "numpy_to_image",
    "pose_to_matrix", "seconds_to_stamp", "stamp_to_seconds", "transform_to_matrix",
]

_LITTLE = sys.byteorder == "little"


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


def seconds_to_stamp(seconds: float) -> Time:
    ns = int(round(seconds * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


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
    return _float_cloud(_CLOUD_FIELDS, cols, header)


def grounding_cloud_msg(xyz: np.ndarray, weight: np.ndarray, header: Header) -> PointCloud2:
    """PointCloud2 of an answer's grounding: N map columns with float32 fields x, y, z (column centre,
    mean voxel height; m) and weight (share of the answer's grounding, the N sum to 1)."""
    n = int(xyz.shape[0])
    if xyz.shape != (n, 3) or weight.shape != (n,):
        raise ValueError(f"cloud arrays disagree: xyz {xyz.shape}, weight {weight.shape}")
    return _float_cloud(("x", "y", "z", "weight"), np.concatenate([xyz, weight[:, None]], 1).astype(np.float32),
                        header)


def _float_cloud(names: tuple[str, ...], cols: np.ndarray, header: Header) -> PointCloud2:
    n = int(cols.shape[0])
    fields = [PointField(name=name, offset=4 * i, datatype=PointField.FLOAT32, count=1)
              for i, name in enumerate(names)]
    return PointCloud2(header=header, height=1, width=n, fields=fields, is_bigendian=not _LITTLE,
                       point_step=4 * len(fields), row_step=4 * len(fields) * n, data=cols.tobytes(), is_dense=True)
