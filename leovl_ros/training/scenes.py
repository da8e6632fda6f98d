"""Scenes for training: frame sources (scan datasets, synthetic rooms, bags), fusion of
posed RGB-D frames into a voxel map with the model's vision encoder, and a store that
serves maps by scene id from memory, the on-disk cache, or by building them.

Scene ids: synthetic rooms ``synth_<seed>`` (6 digits, as ``Room.scene_id``), bags
``bag_<folder name>``, and scans by their dataset id, resolved across ``scenes.sources``
(ScanNet, 3RScan, MultiScan, ARKitScenes: scan_sources.py) in the listed order.

Decision (paper silent):
- Offline fusion uses the same keyframe rule as the robot (moved >= 0.1 m or turned >= 10
  degrees) without the rate limit, so a training map looks like a map the robot builds.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from leovl_ros.fusion import FusionSettings
from leovl_ros.voxel_map import VoxelMap

from leovl_ros.scans.bag_reader import BagTopics, bag_frames, bag_scene_id
from .cache import SceneCache
from leovl_ros.scans.frames import FrameReport, RGBDFrame, synthetic_floor_frames, synthetic_frames
from .object_maps import object_map, object_map_recipe
from leovl_ros.scans.scan_sources import ScanSource

log = logging.getLogger(__name__)
SYNTH_ID = re.compile(r"^synth_(\d+)$")
FLOOR_ID = re.compile(r"^floor_(\d+)$")  # synth/floors.py floor_id_of
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class FusionConfig(FusionSettings):
    """How frames become a voxel map (part of the cache key): the node's keyframe and depth
    settings (:class:`FusionSettings`, the same keys) plus what only offline fusion has."""

    max_keyframes: int | None = None  # cap per scene (None = all)
    storage_dtype: str = "float32"  # float32 | bfloat16 | float16 (half the disk and RAM)
    encode_batch: int = 4  # images per vision-tower call

    def __post_init__(self) -> None:
        try:
            super().__post_init__()
        except ValueError as exc:
            raise ValueError(f"scenes.fusion: {exc}") from exc
        if self.storage_dtype not in _DTYPES:
            raise ValueError(f"scenes.fusion.storage_dtype must be one of {', '.join(_DTYPES)}, "
                             f"got {self.storage_dtype!r}")
        if self.encode_batch < 1:
            raise ValueError("scenes.fusion: need encode_batch >= 1")

    def recipe(self) -> str:
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "encode_batch"}
        return json.dumps(fields, sort_keys=True)


@dataclass
class FusionStats:
    frames: int = 0
    keyframes: int = 0
    points: int = 0


def fuse_frames(encoder, vmap: VoxelMap, frames: Iterable[RGBDFrame],
                config: FusionConfig | None = None) -> FusionStats:
    """Encode the keyframes of ``frames`` (batched) and fuse one point per feature cell."""
    config = config or FusionConfig()
    selector = config.keyframe_selector(max_rate_hz=0.0)
    stats, batch = FusionStats(), []

    def flush() -> None:
        encoded = encoder.encode_batch([f.rgb for f in batch])
        for f, enc in zip(batch, encoded):
            points, cells = config.cell_points(f.depth_m, f.intrinsics, f.T_map_camera, enc.grid_hw)
            vmap.fuse(points, enc.features[torch.from_numpy(cells)])  # (N, 3), (N, d)
            stats.points += len(points)
        batch.clear()

    for frame in frames:
        stats.frames += 1
        if config.max_keyframes is not None and stats.keyframes >= config.max_keyframes:
            break
        if not np.isfinite(frame.T_map_camera).all() or not selector.accept(frame.T_map_camera, frame.stamp_s):
            continue
        stats.keyframes += 1
        batch.append(frame)
        if len(batch) >= config.encode_batch:
            flush()
    if batch:
        flush()
    return stats


@dataclass
class ScenesConfig:
    """Where scenes come from and where their maps are cached."""

    cache_dir: str = "cache/scenes"
    scannet_root: str | None = None  # folder of ScanNet export folders (= the first of sources, kind scannet)
    scannet_stride: int = 10  # every n-th ScanNet frame is considered
    # scan datasets: [{kind: scannet|3rscan|multiscan|arkitscenes, root, stride?}]; a scene id
    # resolves to the first source holding it (scan_sources.py)
    sources: list[dict] = field(default_factory=list)
    synthetic_frames: int = 30  # per room (of a floor: per room along its route)
    synthetic_width: int = 320
    synthetic_height: int = 240
    synthetic_outward_every: int = 0  # every k-th synthetic frame looks at the near wall (synth/render.py)
    bags: list[str] = field(default_factory=list)  # rosbag2 folders (scene id bag_<name>)
    bag_topics: BagTopics = field(default_factory=BagTopics)
    max_in_memory: int = 16  # voxel maps kept in RAM (LRU)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    # "frames": maps fused from each scene's RGB-D frames (the real thing); "objects":
    # synthetic rooms as word-space object maps (object_maps.py, a curriculum stage)
    source: str = "frames"
    object_floor: bool = False  # objects: also an empty floor voxel in every column (a real room's token count)

    def __post_init__(self) -> None:
        if self.source not in ("frames", "objects"):
            raise ValueError(f"scenes.source must be 'frames' or 'objects', got {self.source!r}")
        self.scan_sources()  # validates

    def scan_sources(self) -> list[ScanSource]:
        first = [ScanSource("scannet", self.scannet_root, self.scannet_stride)] if self.scannet_root else []
        return first + [ScanSource.from_obj(s, f"scenes.sources[{i}]") for i, s in enumerate(self.sources)]


def synthetic_view_recipe(width: int, height: int, outward_every: int) -> str:
    """The image-size and camera-path part of a synthetic map's cache recipe."""
    # The path suffix only when set: maps cached before the option existed stay valid.
    return f"x{width}x{height}" + (f":outward{outward_every}" if outward_every else "")


class SceneStore:
    """Voxel maps by scene id: RAM (LRU) -> disk cache -> built from the scene's frames."""

    def __init__(self, model, config: ScenesConfig) -> None:
        self.model = model
        self.config = config
        self.cache = SceneCache(config.cache_dir)
        self.built = 0
        self.frame_report = FrameReport()  # frames read / skipped over every scene built
        self._scene_report = FrameReport()  # the scene being built
        self._sources = config.scan_sources()
        self._memory: OrderedDict[str, VoxelMap] = OrderedDict()

        self._bags = {bag_scene_id(p): Path(p) for p in config.bags}

    def _source(self, scene_id: str) -> tuple[str, Callable[[], Iterable[RGBDFrame]]]:
        c = self.config
        m = SYNTH_ID.match(scene_id)
        if c.source == "objects":
            if not m:
                raise ValueError(f"scenes.source 'objects' builds synthetic rooms only, not {scene_id!r}")
            return object_map_recipe(self.model, c.object_floor), lambda: ()
        if m:
            seed = int(m.group(1))
            recipe = f"synthetic:{c.synthetic_frames}" + synthetic_view_recipe(c.synthetic_width, c.synthetic_height,
                                                                               c.synthetic_outward_every)
            return recipe, lambda: synthetic_frames(seed, c.synthetic_frames, c.synthetic_width, c.synthetic_height,
                                                    c.synthetic_outward_every)
        floor = FLOOR_ID.match(scene_id)
        if floor:  # synthetic_frames per room along the floor's route
            seed = int(floor.group(1))
            recipe = f"synthetic-floor:{c.synthetic_frames}" + synthetic_view_recipe(
                c.synthetic_width, c.synthetic_height, c.synthetic_outward_every)
            return recipe, lambda: synthetic_floor_frames(seed, c.synthetic_frames, c.synthetic_width,
                                                          c.synthetic_height, c.synthetic_outward_every)
        if scene_id in self._bags:
            path = self._bags[scene_id]
            return f"bag:{self.config.bag_topics!r}", lambda: bag_frames(path, self.config.bag_topics)
        for source in self._sources:
            path = source.locate(scene_id)
            if path is not None:
                return source.recipe(), lambda: source.frames(path, self._scene_report)
        where = ", ".join(f"{s.kind} {s.root}" for s in self._sources) or "none configured"
        raise ValueError(
            f"no source for scene {scene_id!r}: not a synthetic room or floor id (synth_<seed>, floor_<seed>), "
            f"not one of the "
            f"{len(self._bags)} configured bags, and in no scan source (scenes.sources / scannet_root: {where})")

    def recipe(self, scene_id: str) -> str:
        return self._source(scene_id)[0] + "|" + self.config.fusion.recipe()

    def get(self, scene_id: str) -> VoxelMap:
        vmap = self._memory.get(scene_id)
        if vmap is not None:
            self._memory.move_to_end(scene_id)
            return vmap
        source_recipe, frames = self._source(scene_id)
        recipe = source_recipe + "|" + self.config.fusion.recipe()
        enc = self.model.encoder
        vmap = self.cache.load(scene_id, enc.encoder_id, self.model.config.voxel_size, recipe)
        if vmap is None and self.config.source == "objects":
            vmap = object_map(int(SYNTH_ID.match(scene_id).group(1)), self.model, self.config.object_floor)
            self.cache.store(vmap, scene_id, recipe)
        if vmap is None:
            vmap = self.model.new_voxel_map(storage_dtype=_DTYPES[self.config.fusion.storage_dtype])
            self._scene_report = FrameReport()
            stats = fuse_frames(enc, vmap, frames(), self.config.fusion)
            self.frame_report.merge(self._scene_report)
            if self._scene_report.skipped:
                log.warning("scene %s: %s", scene_id, self._scene_report.summary().replace("\n", ";"))
            if vmap.num_voxels == 0:
                raise ValueError(f"scene {scene_id!r}: no voxels from {stats.frames} frames "
                                 f"({stats.keyframes} keyframes): check depth units, poses and topics")
            self.cache.store(vmap, scene_id, recipe)
            self.built += 1
            log.info("built scene %s: %d keyframes of %d frames, %d voxels", scene_id, stats.keyframes,
                     stats.frames, vmap.num_voxels)
        self._memory[scene_id] = vmap
        while len(self._memory) > max(1, self.config.max_in_memory):
            self._memory.popitem(last=False)
        return vmap

    def prefetch(self, scene_ids: Iterable[str], progress: bool = True) -> None:
        """Make sure every scene is in the disk cache (builds the missing ones)."""
        from tqdm import tqdm

        for sid in tqdm(sorted(set(scene_ids)), desc="scenes", disable=not progress, unit="scene"):
            self.get(sid)
