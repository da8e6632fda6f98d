"""The normalised training record (one JSON object per line) and its JSONL io.

Fields (design.md "Training data"): ``scene_id, task, instruction, response, source`` and
the optional ``situation, anchor, history, answers, qtype``. Optional fields of ours:
``id`` (the dataset's question id, so predictions can be joined back to records),
``rejected`` (a preference record for SceneDPO: ``response`` is the chosen answer,
``rejected`` the dispreferred one for the same scene and question), and for situated QA
``alternative_situations`` (other descriptions of the same situation: SQA3D's, one of
``[situation] + alternative_situations`` is drawn per training sample, as LEO does),
``location`` ([x, y, z] metres) and ``orientation`` (quaternion [x, y, z, w]) of the
situated agent in the dataset's scene frame (kept for evaluation and future use; the prompt
carries the situation text).

A malformed record is never fatal: readers skip it and count the reason in a
:class:`ConversionReport`, which every converter and CLI prints.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from leovl_ros.model.prompts import TASKS, SceneQuery

OPTIONAL_KEYS = ("situation", "anchor", "history", "answers", "qtype", "id", "rejected", "alternative_situations",
                 "location", "orientation")
REQUIRED_KEYS = ("scene_id", "task", "instruction", "response", "source")


class RecordError(ValueError):
    """A record that cannot be used; the message is the skip reason."""


def _text(data: dict, key: str, required: bool = True) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        if required:
            raise RecordError(f"'{key}' must be a non-empty string")
        return None  # "" means absent for optional text (ROS messages use "" for none)
    return value.strip()


def _numbers(value: Any, n: int, what: str) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)) or len(value) != n or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise RecordError(f"{what} must be {n} finite numbers, got {value!r}")
    return tuple(float(v) for v in value)


@dataclass
class Anchor:
    """Referred region for object captioning in the scene's map frame (metres): the object's
    axis-aligned box (``center`` + ``size``, the paper's "referred region"), or a sphere
    (``center`` + ``radius``; no radius = the model's default) where only a point is known."""

    center: tuple[float, float, float]
    radius: float | None = None
    size: tuple[float, float, float] | None = None  # box extents along x, y, z

    @classmethod
    def from_obj(cls, obj: Any) -> "Anchor":
        if not isinstance(obj, dict) or "center" not in obj or set(obj) - {"center", "radius", "size"}:
            raise RecordError("'anchor' must be an object with 'center' [x, y, z] and 'size' [dx, dy, dz] "
                              "(a box) or an optional 'radius' (a sphere)")
        c = _numbers(obj["center"], 3, "anchor center")
        r, size = obj.get("radius"), obj.get("size")
        if r is not None and (not isinstance(r, (int, float)) or r <= 0):
            raise RecordError(f"anchor radius must be a positive number, got {r!r}")
        if size is not None:
            if r is not None:
                raise RecordError("anchor has both 'size' (a box) and 'radius' (a sphere)")
            size = _numbers(size, 3, "anchor size")
            if min(size) < 0:
                raise RecordError(f"anchor size must be >= 0 per axis, got {size!r}")
        return cls(c, None if r is None else float(r), size)

    def to_obj(self) -> dict:
        out: dict[str, Any] = {"center": list(self.center)}
        if self.radius is not None:
            out["radius"] = self.radius
        if self.size is not None:
            out["size"] = list(self.size)
        return out


@dataclass
class Record:
    """One supervised sample (or preference pair, when ``rejected`` is set)."""

    scene_id: str
    task: str
    instruction: str
    response: str
    source: str
    situation: str | None = None
    anchor: Anchor | None = None
    history: list[tuple[str, str]] | None = None
    answers: list[str] | None = None
    qtype: str | None = None
    id: str | None = None
    rejected: str | None = None
    alternative_situations: list[str] | None = None
    location: tuple[float, float, float] | None = None
    orientation: tuple[float, float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise RecordError(f"unknown task {self.task!r} (expected one of {', '.join(TASKS)})")

    @property
    def references(self) -> list[str]:
        """All accepted answers (for EM / n-gram metrics): ``answers`` or just ``response``."""
        return list(self.answers) if self.answers else [self.response]

    def query(self, situation_index: int = 0) -> SceneQuery:
        """The model query; ``situation_index`` picks from ``[situation] + alternative_situations``."""
        situations = [self.situation] + list(self.alternative_situations or [])
        return SceneQuery(
            task=self.task, instruction=self.instruction, situation=situations[situation_index % len(situations)],
            history=[tuple(t) for t in self.history] if self.history else None,
            anchor_center=self.anchor.center if self.anchor else None,
            anchor_radius=self.anchor.radius if self.anchor else None,
            anchor_size=self.anchor.size if self.anchor else None,
        )

    @classmethod
    def from_dict(cls, data: Any) -> "Record":
        """Validate a JSON object; raises :class:`RecordError` naming the problem."""
        if not isinstance(data, dict):
            raise RecordError(f"record must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
        if unknown:
            raise RecordError(f"unknown keys {unknown}")
        for key in REQUIRED_KEYS:
            if key not in data:
                raise RecordError(f"missing '{key}'")
        history = data.get("history")
        if history is not None:
            pairs_ok = isinstance(history, list) and all(
                isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in history)
            if not pairs_ok:
                raise RecordError("'history' must be a list of [user, assistant] string pairs")
            history = [(u, a) for u, a in history] or None
        answers = data.get("answers")
        if answers is not None:
            if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
                raise RecordError("'answers' must be a list of strings")
            answers = [a.strip() for a in answers] or None  # an empty answer stays: LEO's EM-R credits it
        anchor = data.get("anchor")
        alternatives = data.get("alternative_situations")
        if alternatives is not None:
            if not isinstance(alternatives, list) or not all(isinstance(a, str) for a in alternatives):
                raise RecordError("'alternative_situations' must be a list of strings")
            alternatives = [a.strip() for a in alternatives if a.strip()] or None
            if alternatives and not _text(data, "situation", False):
                raise RecordError("'alternative_situations' without a 'situation'")
        location, orientation = data.get("location"), data.get("orientation")
        return cls(
            scene_id=_text(data, "scene_id"), task=_text(data, "task"), instruction=_text(data, "instruction"),
            response=_text(data, "response"), source=_text(data, "source"),
            situation=_text(data, "situation", False), anchor=None if anchor is None else Anchor.from_obj(anchor),
            history=history, answers=answers, qtype=_text(data, "qtype", False),
            id=None if data.get("id") is None else str(data["id"]), rejected=_text(data, "rejected", False),
            alternative_situations=alternatives,
            location=None if location is None else _numbers(location, 3, "'location'"),
            orientation=None if orientation is None else _numbers(orientation, 4,
                                                                  "'orientation' (quaternion x, y, z, w)"),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in REQUIRED_KEYS}
        for key in OPTIONAL_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if key == "anchor":
                value = value.to_obj()
            elif key in ("history", "location", "orientation"):
                value = [list(t) for t in value] if key == "history" else list(value)
            out[key] = value
        return out


@dataclass
class ConversionReport:
    """Counts of kept records (per task) and skipped ones (per reason, with a first example)."""

    kept: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    first_seen: dict[str, str] = field(default_factory=dict)

    def keep(self, record: Record) -> Record:
        self.kept[record.task] += 1
        return record

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        self.first_seen.setdefault(reason, where)

    def merge(self, other: "ConversionReport") -> None:
        self.kept.update(other.kept)
        self.skipped.update(other.skipped)
        for k, v in other.first_seen.items():
            self.first_seen.setdefault(k, v)

    def summary(self) -> str:
        kept = ", ".join(f"{t}: {n}" for t, n in sorted(self.kept.items())) or "none"
        lines = [f"kept {sum(self.kept.values())} records ({kept}); skipped {sum(self.skipped.values())}"]
        for reason, n in self.skipped.most_common():
            lines.append(f"  skipped {n} x {reason} (first: {self.first_seen[reason]})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"kept": dict(self.kept), "skipped": dict(self.skipped), "first_seen": dict(self.first_seen)}


def convert_items(items: Iterable[tuple[str, Any]], convert, report: ConversionReport) -> Iterator[Record]:
    """Apply ``convert(item) -> Iterable[Record]`` to each (where, item); bad items are skipped.

    A converter raises RecordError / KeyError / TypeError / ValueError / AttributeError for a
    malformed item: all of them mean "skip and count", never abort.
    """
    for where, item in items:
        try:
            records = list(convert(item))
        except RecordError as exc:
            report.skip(str(exc), where)
            continue
        except KeyError as exc:
            report.skip(f"missing key {exc}", where)
            continue
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            report.skip(f"malformed item ({type(exc).__name__}: {exc})", where)
            continue
        for record in records:
            yield report.keep(record)


def iter_jsonl(path: str | os.PathLike, report: ConversionReport) -> Iterator[Record]:
    """Records of a JSONL file; bad lines (JSON or schema) are skipped into ``report``."""
    path = Path(path)
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                report.skip(f"invalid JSON ({exc.msg})", where)
                continue
            yield from convert_items([(where, data)], lambda d: [Record.from_dict(d)], report)


def read_records(paths: str | os.PathLike | Iterable[str | os.PathLike],
                 report: ConversionReport | None = None) -> list[Record]:
    """All valid records of one or more JSONL files, in order."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    report = report if report is not None else ConversionReport()
    out: list[Record] = []
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"records file {p} does not exist")
        out.extend(iter_jsonl(p, report))
    return out


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder + os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Atomically write records as JSONL; returns how many were written."""
    lines = [json.dumps(r.to_dict(), ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
