"""Scan sources of a training config: ``scenes.sources: [{kind, root, stride?}, ...]``.

A scene id resolves to the first source, in the listed order, whose root holds that scan in
the dataset's own layout:

- ``scannet``: ``<root>/<scene_id>/`` (SensReader export: color/, depth/, pose/, intrinsic/)
- ``3rscan``: ``<root>/<scan_id>/sequence/_info.txt`` (``sequence.zip`` unzipped in place)
- ``multiscan``: ``<root>/<scan_id>/<scan_id>.jsonl``
- ``arkitscenes``: ``<root>/<video_id>/`` in the ``raw`` layout (``lowres_depth/`` inside) or
  the ``3dod`` one (``<video_id>_frames/lowres_depth/`` inside), also under the split folders
  ``<root>/Training/`` and ``<root>/Validation/`` and under ``<root>/3dod/`` or ``<root>/raw/``
  (the download script's folders); the scene id is the video id in both layouts

so ScanNet ``scene0000_00``, 3RScan uuids, MultiScan ``scene_00000_00`` and ARKitScenes video
ids live side by side in one config.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .frames import FrameReport, RGBDFrame, scannet_frames
from .scan_readers import READERS, arkitscenes_folders, scan_frames

KINDS = ("scannet", "3rscan", "multiscan", "arkitscenes")
# Reader fixes that change a kind's frames, in its maps' recipe so cached maps are rebuilt:
# MultiScan's floor from the depth points (not align.json's z = 0) and stamps in seconds (not ns).
READER_REVISIONS = {"multiscan": ":floor=depth:stamp=s"}


@dataclass(frozen=True)
class ScanSource:
    kind: str
    root: str
    stride: int = 10  # every n-th frame is considered (then the keyframe rule applies)

    @classmethod
    def from_obj(cls, obj: Any, where: str = "scenes.sources") -> "ScanSource":
        if not isinstance(obj, dict) or set(obj) - {"kind", "root", "stride"} or "kind" not in obj or "root" not in obj:
            raise ValueError(f"{where}: each source is {{kind, root, stride?}}, got {obj!r}")
        if obj["kind"] not in KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(KINDS)}, got {obj['kind']!r}")
        stride = obj.get("stride", 10)
        if not isinstance(obj["root"], str) or not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f"{where}: root must be a path and stride an integer >= 1, got {obj!r}")
        return cls(obj["kind"], obj["root"], stride)

    def locate(self, scene_id: str) -> Path | None:
        """The scan folder of ``scene_id`` in this source, or None."""
        root = Path(self.root)
        if "/" in scene_id or scene_id in ("", ".", ".."):
            return None
        if self.kind == "scannet":
            path = root / scene_id
            return path if path.is_dir() else None
        if self.kind == "3rscan":
            path = root / scene_id
            return path if (path / "sequence" / "_info.txt").is_file() or (path / "_info.txt").is_file() else None
        if self.kind == "multiscan":
            path = root / scene_id
            return path if (path / f"{scene_id}.jsonl").is_file() else None
        for path in arkitscenes_candidates(root, scene_id):
            if arkitscenes_folders(path) is not None:
                return path
        return None

    def recipe(self) -> str:
        """This source's part of a cached map's recipe (how frames were read and aligned)."""
        align = "" if self.kind == "scannet" else ":align=floor-centre:upright"
        return f"{self.kind}:stride={self.stride}{align}{READER_REVISIONS.get(self.kind, '')}"

    def frames(self, path: Path, report: FrameReport) -> Iterator[RGBDFrame]:
        if self.kind == "scannet":
            return scannet_frames(path, self.stride, report)
        return scan_frames(READERS[self.kind](path), self.stride, report)


ARKITSCENES_SPLITS = ("", "Training", "Validation", "3dod/Training", "3dod/Validation", "raw/Training",
                      "raw/Validation")


def arkitscenes_candidates(root: Path, video_id: str) -> list[Path]:
    """Where an ARKitScenes video may sit under a source root (see the module docstring)."""
    return [root / split / video_id if split else root / video_id for split in ARKITSCENES_SPLITS]
