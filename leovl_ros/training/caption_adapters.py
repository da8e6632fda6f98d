"""Converters of object and scene captions to records (skip-and-count, as adapters.py).

Object captions refer to an object id of the scan's instance annotation; the record's anchor
is that object's box in our map frame, looked up in a boxes file written by
``leovl-data object-boxes`` (object_boxes.py): ``{scan_id: {"<object id>": {center, size,
label}}}``. A value may also be a point ``[x, y, z]`` (a sphere of the model's default radius
around it), for data that only has centres. An id missing from the boxes file is skipped and
counted ("unknown object id"), never guessed.

Id rules (how a caption source numbers a scan's objects): ``native``, the annotation's own
id (ScanNet and 3RScan ``objectId``, ARKitScenes ``uid``, MultiScan ``objectId``), or
``sceneverse``: the same except for ARKitScenes, which SceneVerse numbers by position in the
annotation's ``data`` list (+1; the box's ``ids.sceneverse``). Lookups and matches are
counted per caption source (``Boxes.matches``) and printed by ``leovl-data convert``.

Formats:
- ScanRefer / Scan2Cap (``daveredrum/ScanRefer``): ``[{scene_id, object_id, object_name,
  ann_id, description}]``.
- Nr3D / Sr3D (``referit3d``): CSV with ``scan_id, target_id, utterance`` (and
  ``assignmentid`` / ``stimulus_id``, ``correct_guess``, ``mentions_target_class``...).
- scanscribe: ``[{scan_id, object_id, sentence}]``.
- LEO object captions (3rscan_prompted): ``{scan_id: {"<label>-<id>": [{response}]}}``.
- Generic object captions (SceneVerse, MMScan style lists): ``[{scan_id | scene_id,
  object_id | target_id | obj_id, caption | utterance | description | sentence | response}]``.
- Generic scene captions: ``[{scan_id | scene_id, caption | description | utterance |
  response | text}]``.
"""
from __future__ import annotations

import csv
import io
from collections import Counter
from typing import Any, Iterable, Iterator, Sequence

from .records import Anchor, ConversionReport, Record, RecordError, convert_items

OBJECT_CAPTION_INSTRUCTION = "Describe the object at the marked location."
SCENE_CAPTION_INSTRUCTION = "Describe the scene."
SCAN_KEYS = ("scan_id", "scene_id")
OBJECT_KEYS = ("object_id", "target_id", "obj_id")
OBJECT_TEXT_KEYS = ("caption", "utterance", "description", "sentence", "response")
SCENE_TEXT_KEYS = ("caption", "description", "utterance", "response", "text")


ID_RULES = ("native", "sceneverse")


class Boxes:
    """Object regions by (scan id, object id) from a boxes file, ids read under ``id_rule``
    (see the module docstring)."""

    def __init__(self, data: Any, radius: float | None = None, id_rule: str = "native") -> None:
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("boxes file must be {scan_id: {object_id: {center, size} or [x, y, z]}}")
        if id_rule not in ID_RULES:
            raise ValueError(f"id rule must be one of {', '.join(ID_RULES)}, got {id_rule!r}")
        self.data, self.radius, self.id_rule = data, radius, id_rule
        self.looked_up: Counter = Counter()  # per caption source
        self.matched: Counter = Counter()
        self._renumbered: dict[str, dict[str, str]] = {}  # scan -> {id under the rule: box key}

    def _key(self, scan_id: str, object_id: Any) -> str | None:
        key = str(object_id).strip()
        if self.id_rule == "native":
            return key
        if scan_id not in self._renumbered:
            self._renumbered[scan_id] = {str(v["ids"][self.id_rule]): k for k, v in self.data.get(scan_id, {}).items()
                                         if isinstance(v, dict) and self.id_rule in (v.get("ids") or {})}
        renumbered = self._renumbered[scan_id]
        return renumbered.get(key) if renumbered else key  # a scan numbered its own way under the rule

    def anchor(self, scan_id: str, object_id: Any, source: str = "") -> Anchor:
        self.looked_up[source] += 1
        key = self._key(str(scan_id), object_id)
        value = self.data.get(str(scan_id), {}).get(key) if key is not None else None
        if value is None:
            raise RecordError("unknown object id (not in the boxes file)")
        if isinstance(value, dict):
            anchor = Anchor.from_obj({k: value[k] for k in ("center", "size", "radius") if k in value})
        else:
            anchor = Anchor.from_obj({"center": value, "radius": self.radius})
        self.matched[source] += 1
        return anchor

    def matches(self) -> dict[str, dict[str, Any]]:
        """Per caption source: object ids looked up, matched to a box, and the id rule."""
        return {s: {"looked_up": n, "matched": self.matched[s], "id_rule": self.id_rule}
                for s, n in sorted(self.looked_up.items())}


def _first(item: dict, keys: Iterable[str], what: str) -> Any:
    for key in keys:
        if item.get(key) not in (None, ""):
            return item[key]
    raise RecordError(f"no {what} (one of {', '.join(keys)})")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"expected non-empty text, got {value!r}")
    return value.strip()


def _object_record(scan_id: Any, object_id: Any, text: Any, boxes: Boxes, source: str,
                   instruction: str, record_id: Any = None) -> list[Record]:
    anchor = boxes.anchor(str(scan_id), object_id, source)
    record = Record(scene_id=str(scan_id), task="object_caption", instruction=instruction, response=_text(text),
                    anchor=anchor, source=source, id=None if record_id is None else str(record_id))
    return [Record.from_dict(record.to_dict())]


def _items(data: Any, what: str) -> Iterator[tuple[str, Any]]:
    if not isinstance(data, list):
        raise ValueError(f"{what} must be a JSON list at the top level, got {type(data).__name__}")
    return ((f"item {i}", item) for i, item in enumerate(data))


def convert_object_captions(data: Any, boxes: Boxes, report: ConversionReport, source: str = "object_caption",
                            instruction: str = OBJECT_CAPTION_INSTRUCTION) -> Iterator[Record]:
    """Generic object-caption lists (SceneVerse / MMScan style), ScanRefer and scanscribe."""
    def one(item: dict) -> list[Record]:
        return _object_record(_first(item, SCAN_KEYS, "scan id"), _first(item, OBJECT_KEYS, "object id"),
                              _first(item, OBJECT_TEXT_KEYS, "caption"), boxes, source, instruction,
                              item.get("ann_id"))
    yield from convert_items(_items(data, "object caption file"), one, report)


def convert_scanrefer(data: Any, boxes: Boxes, report: ConversionReport, source: str = "scanrefer") -> Iterator[Record]:
    def one(item: dict) -> list[Record]:
        record_id = f"{item['scene_id']}-{item['object_id']}-{item.get('ann_id')}"
        return _object_record(item["scene_id"], item["object_id"], item["description"], boxes, source,
                              OBJECT_CAPTION_INSTRUCTION, record_id)
    yield from convert_items(_items(data, "ScanRefer file"), one, report)


def convert_scanscribe(data: Any, boxes: Boxes, report: ConversionReport,
                       source: str = "scanscribe") -> Iterator[Record]:
    def one(item: dict) -> list[Record]:
        return _object_record(item["scan_id"], item["object_id"], item["sentence"], boxes, source,
                              OBJECT_CAPTION_INSTRUCTION)
    yield from convert_items(_items(data, "scanscribe file"), one, report)


REFERIT3D_FILTERS = ("correct_guess", "mentions_target_class")


def convert_referit3d(csv_text: str, boxes: Boxes, report: ConversionReport, source: str = "nr3d",
                      only: Sequence[str] = ()) -> Iterator[Record]:
    """Nr3D / Sr3D CSV rows (``scan_id, target_id, utterance``) as object captions. The record
    id is the row's ``assignmentid`` (Nr3D: one per utterance), else its ``stimulus_id``
    (``-2``, ``-3``... appended when a stimulus repeats), so predictions join back to rows.
    ``only``: ReferIt3D's filters (its ``--mentions-target-class-only`` /
    ``correct_guess``): rows whose column is not True are skipped and counted by filter."""
    reader = csv.DictReader(io.StringIO(csv_text))
    missing = {"scan_id", "target_id", "utterance"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"not a ReferIt3D CSV: no column(s) {', '.join(sorted(missing))}")
    for name in only:
        if name not in REFERIT3D_FILTERS:
            raise ValueError(f"unknown ReferIt3D filter {name!r} (one of {', '.join(REFERIT3D_FILTERS)})")
        if name not in reader.fieldnames:
            raise ValueError(f"filter {name}: the CSV has no {name!r} column (Sr3D has no correct_guess)")
    seen: Counter = Counter()

    def one(row: dict) -> list[Record]:
        for name in only:
            if str(row[name]).strip().lower() not in ("true", "1"):
                raise RecordError(f"filtered out: {name} is not True")
        key = (row.get("assignmentid") or row.get("stimulus_id") or "").strip() or None
        if key is not None:
            seen[key] += 1
            key = key if seen[key] == 1 else f"{key}-{seen[key]}"
        return _object_record(row["scan_id"], row["target_id"], row["utterance"], boxes, source,
                              OBJECT_CAPTION_INSTRUCTION, key)
    yield from convert_items(((f"row {i + 2}", row) for i, row in enumerate(reader)), one, report)


def convert_leo_object_caption(data: Any, boxes: Boxes, report: ConversionReport,
                               source: str = "leo_object_caption",
                               instruction: str = OBJECT_CAPTION_INSTRUCTION) -> Iterator[Record]:
    """LEO's ``{scan_id: {"<label>-<id>": [{response}]}}``; the id after the last '-'."""
    if not isinstance(data, dict):
        raise ValueError("LEO object caption file must be a JSON object at the top level")

    def items():
        for scan_id, objects in data.items():
            if not isinstance(objects, dict):
                report.skip("scan entry is not an object of captions per object", str(scan_id))
                continue
            for key, captions in objects.items():
                for i, item in enumerate(captions if isinstance(captions, list) else [captions]):
                    yield f"{scan_id}/{key}[{i}]", (scan_id, key, item)

    def one(triple) -> list[Record]:
        scan_id, key, item = triple
        return _object_record(scan_id, str(key).rsplit("-", 1)[-1], item["response"], boxes, source, instruction)
    yield from convert_items(items(), one, report)


def convert_scene_captions(data: Any, report: ConversionReport, source: str = "scene_caption",
                           instruction: str = SCENE_CAPTION_INSTRUCTION) -> Iterator[Record]:
    """Generic scene-caption lists (SceneVerse / MMScan style)."""
    def one(item: dict) -> list[Record]:
        record = Record(scene_id=str(_first(item, SCAN_KEYS, "scan id")), task="scene_caption",
                        instruction=instruction, response=_text(_first(item, SCENE_TEXT_KEYS, "caption")),
                        source=source)
        return [Record.from_dict(record.to_dict())]
    yield from convert_items(_items(data, "scene caption file"), one, report)
