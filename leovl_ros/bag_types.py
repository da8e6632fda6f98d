"""The one rosbags typestore for our bags: ROS 2 Jazzy + this package's messages (ROS-free).

Its own module, below both ``scans/`` (the bag readers, the recorder through them) and
``synth/`` (the synthetic bag writer), since ``scans/`` renders synthetic rooms with ``synth/``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

__all__ = ["INTERACTION_TYPE", "bag_typestore"]

INTERACTION_TYPE = "leovl_ros/msg/Interaction"


def _msg_dir() -> Path | None:
    """This package's msg/*.msg: the installed share folder (what rclpy's message classes were
    built from), else the source checkout."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and (Path(prefix) / "share" / "leovl_ros" / "msg").is_dir():
            return Path(prefix) / "share" / "leovl_ros" / "msg"
    source = Path(__file__).resolve().parents[1] / "msg"
    return source if source.is_dir() else None


def bag_typestore(msg_file: str | os.PathLike | None = None, msgdefs: Mapping[str, str] | None = None) -> Typestore:
    """ROS 2 Jazzy types + every ``leovl_ros/msg/*`` type, registered from its .msg text (the
    recorder and the synthetic bag writer write with it; the readers use it for bags without
    embedded definitions, while bags that embed theirs, rosbag2 >= Iron and everything we write,
    are decoded with their own). ``msg_file``: an Interaction.msg to use instead of the
    package's; ``msgdefs``: .msg texts by type name, registered over the package's (not Jazzy's)."""
    ts = get_typestore(Stores.ROS2_JAZZY)
    types: dict = {}
    folder = _msg_dir()
    for path in sorted(folder.glob("*.msg")) if folder is not None else ():
        types.update(get_types_from_msg(path.read_text(), f"leovl_ros/msg/{path.stem}"))
    if msg_file:
        types.update(get_types_from_msg(Path(msg_file).read_text(), INTERACTION_TYPE))
    for name, text in (msgdefs or {}).items():
        types.update(get_types_from_msg(text, name))
    ts.register(types)
    return ts
