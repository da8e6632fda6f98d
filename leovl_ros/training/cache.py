"""Scene feature cache: one safetensors voxel map per (scene, encoder, voxel size, recipe).

Running the vision tower over every frame of a scene is the expensive part of a training
step, and it does not change while the vision tower is frozen (both train modes keep it
frozen). So each scene is encoded and fused once, saved with ``VoxelMap.save`` and reused
across epochs and runs. The key covers everything the map depends on: the scene id, the
encoder id (checkpoint fingerprint + ``max_pixels``), the voxel size, and a "recipe" string
describing how frames were chosen and fused (frame stride, keyframe thresholds, depth
range...). A different key is a different file, so changing any of them never reuses a
stale map; an unreadable file (e.g. a run killed mid-copy) is treated as a miss and rebuilt.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from leovl_ros.voxel_map import VoxelMap

log = logging.getLogger(__name__)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "scene"


class SceneCache:
    """Directory of cached voxel maps; file names are ``<scene>-<key hash>.safetensors``."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(scene_id: str, encoder_id: str, voxel_size: float, recipe: str = "") -> str:
        text = "\n".join([scene_id, encoder_id, repr(float(voxel_size)), recipe])
        return hashlib.sha1(text.encode()).hexdigest()[:16]

    def path(self, scene_id: str, encoder_id: str, voxel_size: float, recipe: str = "") -> Path:
        return self.root / f"{_safe(scene_id)}-{self.key(scene_id, encoder_id, voxel_size, recipe)}.safetensors"

    def load(self, scene_id: str, encoder_id: str, voxel_size: float, recipe: str = "") -> VoxelMap | None:
        """The cached map, or None when absent / unreadable / not matching the key."""
        path = self.path(scene_id, encoder_id, voxel_size, recipe)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            vmap = VoxelMap.load(path)
        except ValueError as exc:
            log.warning("ignoring unreadable cached scene %s (%s); it will be rebuilt", path, exc)
            self.misses += 1
            return None
        meta = vmap.metadata
        if (meta.get("scene_id") != scene_id or meta.get("encoder_id") != encoder_id
                or abs(vmap.voxel_size - voxel_size) > 1e-9 or meta.get("recipe", "") != recipe):
            log.warning("cached scene %s does not match its key (hash collision or edited file); rebuilding", path)
            self.misses += 1
            return None
        self.hits += 1
        return vmap

    def store(self, vmap: VoxelMap, scene_id: str, recipe: str = "") -> Path:
        """Save ``vmap`` (its metadata must name the encoder) under its key, atomically."""
        encoder_id = vmap.metadata.get("encoder_id")
        if not encoder_id:
            raise ValueError("voxel map has no 'encoder_id' metadata: build it with model.new_voxel_map()")
        vmap.metadata["scene_id"] = scene_id
        vmap.metadata["recipe"] = recipe
        path = self.path(scene_id, encoder_id, vmap.voxel_size, recipe)
        vmap.save(path)
        return path
