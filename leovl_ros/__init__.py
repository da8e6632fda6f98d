"""leovl_ros: the LEO-VL 3D vision-language model for ROS 2 robots.

Everything outside ``leovl_ros.ros`` is ROS-free (numpy/torch) and usable from a plain
``pip install``. On a colcon install the generated ``leovl_ros.msg`` / ``leovl_ros.srv``
packages live next to these modules; ``extend_path`` lets a source checkout that comes
first on ``sys.path`` still find them in the install tree.

The scene core (imports go downward: docs/design.md "Import map"):

    geometry.py        pinhole geometry: intrinsics, depth, back-projection, keyframes, poses
    rgbd_frame.py      the one posed RGB-D frame record (units in the field names)
    parameters.py      settings declared once: a dataclass field with its default and help
    fusion.py          how posed frames become map points (node and build-scenes alike)
    gravity.py         which way is up: from the cameras and the floor they saw
    camera_path.py     the keyframe positions of a map, kept in its metadata
    bag_types.py       the rosbags typestore of our bags (Jazzy + msg/*.msg): readers, recorder, synth
    voxel_map.py       sparse voxel map of encoder features, exact running mean per voxel
    voxel_map_io.py    voxel maps as one safetensors file, written atomically (a VoxelMapState)
    voxel_keys.py      voxel coordinates packed into sortable int64 keys; column ids
    column_sums.py     per-column accumulators for the incremental CFG
    condensed_grid.py  the condensed feature grid (CFG): a map as at most max_tokens tokens
    token_selection.py which columns become tokens
    scene_picture.py   a top-down picture of a map's CFG
    scene_cli.py       the leovl-scene command

Packages: ``model`` (Qwen2.5-VL + scene tokens + LoRA), ``assistant`` (the ROS-free
session), ``scans`` (frames from scans and bags), ``synth`` (synthetic rooms), ``training``
(data, SFT, SceneDPO, evaluation), ``ros`` (the nodes), ``bundled_models`` (leovl-tiny).
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)
__version__ = "0.1.0"
