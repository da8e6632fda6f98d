"""Where the assistant reads and writes scene files: the rules save_scene and load_scene follow.

A node often runs as root on a robot, so a save never leaves ``scene_dir`` and the
``scene_write_dirs`` allow-list, and never replaces a file that is not a scene unless the
caller says ``overwrite``. Reading is allowed anywhere: a scene file is safetensors, which
cannot execute code.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from ..voxel_map import VoxelMap, remove_stale_temps
from .records import RequestRefused
from .settings import AssistantConfig

__all__ = ["remove_killed_saves", "resolve", "save_target", "writable_dirs"]


def _limits() -> tuple[int, int]:
    """(longest file name, longest path) in bytes that the file system takes."""
    try:
        return os.pathconf("/", "PC_NAME_MAX"), os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows): the common limits
        return 255, 4096


def resolve(config: AssistantConfig, path: str) -> Path:
    """An absolute path; a relative one is under ``scene_dir``. RequestRefused for a path the
    file system cannot take (checked here: the OS would answer with an OSError deep inside)."""
    p = Path(path.strip()).expanduser()
    p = p if p.is_absolute() else Path(config.scene_dir).expanduser() / p
    name_max, path_max = _limits()
    longest = max(len(os.fsencode(part)) for part in p.parts)
    if longest > name_max or len(os.fsencode(str(p))) >= path_max:
        raise RequestRefused(f"path too long: {len(str(p))} characters with a name of {longest} bytes (the file "
                             f"system takes names up to {name_max} bytes, paths up to {path_max}): "
                             f"{str(p)[:60]}...")
    return p.resolve()


def writable_dirs(config: AssistantConfig) -> list[Path]:
    """Where save_scene may write: scene_dir and the scene_write_dirs allow-list."""
    return [Path(d).expanduser().resolve() for d in (config.scene_dir, *config.write_dirs) if d]


def remove_killed_saves(config: AssistantConfig) -> list[Path]:
    """Delete temp files of saves killed mid-write (start-up clean-up of every writable dir)."""
    return [p for d in writable_dirs(config) if d.is_dir() for p in remove_stale_temps(d)]


def save_target(config: AssistantConfig, path: str, overwrite: bool) -> Path:
    """The file a save writes: '' or a directory (or a path ending in '/') = a new
    scene_<time>.safetensors in it; RequestRefused outside the writable dirs, or over an
    existing file that is not a readable scene without ``overwrite``."""
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{int(time.time() * 1000) % 1000:03d}"
    default_name = f"scene_{stamp}.safetensors"
    target = resolve(config, path or default_name)
    if path.strip().endswith(("/", os.sep)) or target.is_dir():
        target = target / default_name
    allowed = writable_dirs(config)
    if not any(target.is_relative_to(d) for d in allowed):
        raise RequestRefused(f"refusing to write {target}: scenes are saved only under "
                             f"{', '.join(map(str, allowed))} (parameters scene_dir, scene_write_dirs)")
    if target.exists() and not overwrite:
        try:
            VoxelMap.load(target)
        except (ValueError, OSError) as exc:
            raise RequestRefused(f"refusing to replace {target}: it is not a readable scene ({exc}); "
                                 "set overwrite=true to replace it anyway") from exc
    return target
