"""Robot bags as training data (the frames are read by ``leovl_ros.scans.bag_reader``).

A bag recorded on the robot holds the frames (rgb / depth / camera_info), the poses
(``/tf`` + ``/tf_static``, or a PoseStamped / Odometry topic plus a fixed camera
extrinsic) and every exchange with the assistant on ``/interactions``
(``leovl_ros/msg/Interaction``). From it we get:

- the scene: the frames, paired by stamp and posed by TF, fused into a voxel map;
- supervision: each ``feedback`` interaction with a ``corrected_answer`` gives an SFT record
  (response = the correction) and a SceneDPO preference record (chosen = correction,
  rejected = the model's answer).

Decision (paper silent):
- A bag is one scene (``bag_<folder name>``): interactions refer to the map fused from the
  whole bag, which holds at least what the robot had mapped when it answered.
- Plain ``ask`` / ``plan`` answers are the model's own outputs, unchecked: by default they are
  not supervision (counted as "unlabelled"); ``trust_answers=True`` keeps them as
  pseudo-label SFT records (source ``bag_pseudo``), e.g. for self-training on confident
  answers filtered elsewhere.
- Dialogue history of a record = the earlier ``dialogue`` turns of the same session in the
  bag, with their corrections applied where the user gave one.
"""
from __future__ import annotations

import os
from typing import Any

from leovl_ros.model.prompts import plan_instruction
from leovl_ros.scans.bag_reader import BagScan, BagTopics, _stamp_of, bag_scene_id, scan_bag

from .metrics import clean_answer
from .records import Anchor, ConversionReport, Record, RecordError, convert_items


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def interaction_records(interactions: list[dict[str, Any]], scene_id: str, report: ConversionReport,
                        trust_answers: bool = False) -> tuple[list[Record], list[Record]]:
    """(SFT records, preference records) from decoded Interaction messages (see module doc)."""
    ordered = sorted(interactions, key=lambda m: _stamp_of(m))
    corrections = {m["interaction_id"]: m["corrected_answer"].strip() for m in ordered
                   if m.get("kind") == "feedback" and _text(m.get("corrected_answer"))}
    sessions: dict[str, list[tuple[str, str, str]]] = {}  # session -> [(interaction_id, user, assistant)]
    for m in ordered:
        if m.get("kind") == "ask" and m.get("task") == "dialogue" and _text(m.get("session_id")):
            answer = corrections.get(m["interaction_id"], m.get("answer", ""))
            sessions.setdefault(m["session_id"], []).append((m["interaction_id"], m["instruction"], answer))

    def history(m: dict) -> list[tuple[str, str]] | None:
        turns = sessions.get(m.get("session_id") or "", [])
        ids = [t[0] for t in turns]
        end = ids.index(m["interaction_id"]) if m["interaction_id"] in ids else len(turns)
        return [(u, a) for _, u, a in turns[:end]] or None

    def base(m: dict, response: str, source: str) -> Record:
        task, instruction = m["task"], m["instruction"].strip()
        if task == "plan" and not instruction.startswith(plan_instruction("").strip()):
            instruction = plan_instruction(instruction)
        anchor = None
        if m.get("has_anchor"):
            p, r = m["anchor"], float(m.get("anchor_radius") or 0.0)
            size = m.get("anchor_size") or {}  # absent in bags recorded before boxes
            extents = tuple(float(size.get(k, 0.0)) for k in "xyz")
            center = (float(p["x"]), float(p["y"]), float(p["z"]))
            anchor = (Anchor(center, size=extents) if any(extents) else Anchor(center, r if r > 0 else None))
        rec = Record(scene_id=scene_id, task=task, instruction=instruction, response=response, source=source,
                     situation=_text(m.get("situation")), anchor=anchor,
                     history=history(m) if task == "dialogue" else None, id=m["interaction_id"])
        return Record.from_dict(rec.to_dict())

    sft: list[Record] = []
    prefs: list[Record] = []

    def one(m: dict) -> list[Record]:
        kind = m.get("kind")
        if kind == "feedback":
            corrected = _text(m.get("corrected_answer"))
            if corrected is None:
                raise RecordError("feedback without a corrected_answer")
            rec = base(m, corrected, "bag_feedback")
            sft.append(rec)
            answer = _text(m.get("answer"))
            if answer is None or clean_answer(answer) == clean_answer(corrected):
                report.skip("preference pair not made: correction equals the model's answer (SFT record kept)",
                            m["interaction_id"])
            else:
                prefs.append(Record.from_dict({**rec.to_dict(), "rejected": answer, "source": "bag_preference"}))
            return [rec]
        if kind in ("ask", "plan"):
            if m["interaction_id"] in corrections:
                raise RecordError("answer superseded by a correction (kept as the feedback record)")
            if not trust_answers:
                raise RecordError("unlabelled Q&A (pseudo-labels off: trust_answers=False)")
            answer = _text(m.get("answer"))
            if answer is None:
                raise RecordError("empty answer")
            rec = base(m, answer, "bag_pseudo")
            sft.append(rec)
            return [rec]
        raise RecordError(f"unknown interaction kind {kind!r}")

    list(convert_items(((str(m.get("interaction_id", i)), m) for i, m in enumerate(ordered)), one, report))
    return sft, prefs


def records_from_scan(scan: BagScan, scene_id: str, report: ConversionReport, trust_answers: bool = False,
                      log_entries: list[dict[str, Any]] = ()) -> tuple[list[Record], list[Record]]:
    """(SFT records, preference records) of a scanned bag plus ``log_entries`` (lines of the node's
    interaction log, leovl_ros.assistant.interaction_log: the same fields as the messages) that were
    stamped while the bag was recorded; an interaction both in the bag and in the log counts once."""
    seen = {(m.get("interaction_id"), m.get("kind"), m.get("corrected_answer")) for m in scan.interactions}
    merged = list(scan.interactions)
    for e in scan.recorded_during(list(log_entries)):
        key = (e.get("interaction_id"), e.get("kind"), e.get("corrected_answer"))
        if key not in seen:
            seen.add(key)
            merged.append(e)
    if not merged:
        report.skip("bag has no interactions (topic empty, no interaction-log entry in its time span)", scene_id)
    return interaction_records(merged, scene_id, report, trust_answers)


def records_from_bag(path: str | os.PathLike, report: ConversionReport, topics: BagTopics | None = None,
                     trust_answers: bool = False, msg_file=None,
                     log_entries: list[dict[str, Any]] = ()) -> tuple[list[Record], list[Record]]:
    """(SFT records, preference records) of one bag (see :func:`records_from_scan`); its scene id is
    :func:`bag_scene_id`."""
    scan = scan_bag(path, topics or BagTopics(), msg_file)
    return records_from_scan(scan, bag_scene_id(path), report, trust_answers, log_entries)
