"""A durable, append-only log of every interaction and correction (JSON Lines).

The node publishes each exchange on ``interactions`` for a recorder, but a recorder may not
run, may be killed, or may drop messages; this log is written by the assistant itself so no
supervision is lost. Decisions:

- One JSON object per line, with exactly the fields of ``leovl_ros/msg/Interaction`` as a bag
  reader decodes them (nested ``header.stamp``, ``anchor``, ``scene_stamp``), so
  ``leovl-data from-bag --interaction-log`` turns log lines into records like bag messages.
- Each record is written, flushed and fsync'd before ``append`` returns (a few ms; interactions
  come at human pace), so a SIGKILL or a power loss loses at most the line being written.
  A torn last line is skipped by :func:`read_interaction_log`, never fatal.
- The file is opened in append mode and never rewritten or rotated: it is small (~1 kB per
  exchange) and one file across node runs keeps every correction; records are attributed to a
  recording by their stamp.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .records import Interaction

__all__ = ["InteractionLog", "interaction_to_dict", "read_interaction_log"]


def _time(seconds: float | None) -> dict[str, int]:
    if seconds is None:
        return {"sec": 0, "nanosec": 0}
    sec = math.floor(seconds)  # split first: seconds * 1e9 of a Unix time loses nanoseconds
    ns = int(round((seconds - sec) * 1e9))
    return {"sec": sec + ns // 10**9, "nanosec": ns % 10**9}


def interaction_to_dict(record: Interaction, stamp_s: float, frame_id: str = "") -> dict[str, Any]:
    """``record`` as the Interaction message fields (see msg/Interaction.msg), stamped ``stamp_s``."""
    fields = asdict(record)
    anchor = fields.pop("anchor")
    size = fields.pop("anchor_size")
    scene_stamp = fields.pop("scene_stamp_s")
    fields["grounding_points"] = [dict(zip("xyz", map(float, p))) for p in fields["grounding_points"]]
    return {"header": {"stamp": _time(stamp_s), "frame_id": frame_id}, **fields,
            "has_anchor": anchor is not None,
            "anchor": dict(zip("xyz", (float(v) for v in anchor or (0.0, 0.0, 0.0)))),
            "anchor_size": dict(zip("xyz", (float(v) for v in size or (0.0, 0.0, 0.0)))),
            "scene_stamp": _time(scene_stamp)}


class InteractionLog:
    """Appends interactions to ``path`` (created with its folders); thread-safe."""

    def __init__(self, path: str | os.PathLike, frame_id: str = "") -> None:
        self.path = Path(path).expanduser()
        self.frame_id = frame_id
        self._file = self._open(self.path)
        self._lock = threading.Lock()

    @staticmethod
    def _open(path: Path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot open the interaction log {path}: {exc.strerror or exc}") from exc

    @classmethod
    def check(cls, path: str | os.PathLike) -> None:
        """ValueError now if ``path`` cannot be appended to (a node checks before loading its model)."""
        cls._open(Path(path).expanduser()).close()

    def append(self, record: Interaction, stamp_s: float | None = None) -> None:
        """Write one record durably; raises OSError (e.g. disk full) after which the log stays usable."""
        line = json.dumps(interaction_to_dict(record, time.time() if stamp_s is None else stamp_s, self.frame_id),
                          ensure_ascii=False)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            self._file.close()


def read_interaction_log(path: str | os.PathLike) -> tuple[list[dict[str, Any]], int]:
    """(records, unreadable lines) of a log; a line torn by a crash or edited badly is counted, not fatal."""
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(value, dict) and "interaction_id" in value and "kind" in value:
                records.append(value)
            else:
                bad += 1
    return records, bad
