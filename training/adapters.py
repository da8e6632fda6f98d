"""Converters from public 3D-VL datasets and our synthetic rooms to normalised records.

Each ``convert_*`` takes the loaded JSON and a :class:`ConversionReport` and yields
:class:`Record` s; a malformed item is skipped and counted, never fatal.

Formats:
- ScanQA: ``[{scene_id, question, answers[], object_ids[], question_id}]``.
- SQA3D: questions ``{questions: [{question_id, situation, question}]}`` + annotations
  ``{annotations: [{question_id, scene_id, answers: [{answer}]}]}``; the situation is kept
  and the question type is LEO's (first word: what / is / how / can / which / other).
- LEO dicts: plans ``{scan_id: {response: [{instruction, plan}]}}``, dialogues
  ``{scan_id: {response: [[{role, content}, ...], ...]}}`` (roles Human/Robot or
  user/assistant; one record per assistant turn, earlier turns as history), scene captions
  ``{scan_id: [{query, response}]}``, 3RScan QA ``{scan_id: {response: [{Q, A[]}]}}`` and
  object captions ``{scan_id: {"<label>-<id>": [{response}]}}`` (these need object centres
  from a separate ``{scan_id: {"<id>": [x, y, z]}}`` file, as our scenes have no instances).
- Synthetic rooms: records of ``leovl_ros.synth.annotate.annotate_room``.

Decision (paper silent): LEO draws instructions for captioning / planning from prompt
pools at random; we use one fixed instruction per task (arguments), so a record file is
deterministic and the same prompt is used at training and at inference on the robot.
"""
from __future__ import annotations

from typing import Any, Iterator

from leovl_ros.model.prompts import plan_instruction

from .records import Anchor, ConversionReport, Record, RecordError, convert_items

SCENE_CAPTION_INSTRUCTION = "Describe the scene."
OBJECT_CAPTION_INSTRUCTION = "Describe the object at the marked location."
SQA3D_QTYPES = ("what", "is", "how", "can", "which")
USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"robot", "assistant", "gpt"}


def _dict(data: Any, what: str) -> dict:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object at the top level, got {type(data).__name__}")
    return data


def _list(data: Any, what: str) -> list:
    if not isinstance(data, list):
        raise ValueError(f"{what} must be a JSON list at the top level, got {type(data).__name__}")
    return data


def _answers(raw: Any) -> list[str]:
    if not isinstance(raw, list):
        raise RecordError("'answers' must be a list")
    answers = [a.strip() for a in raw if isinstance(a, str) and a.strip()]
    if not answers:
        raise RecordError("no answers (test split without ground truth?)")
    return answers


def convert_scanqa(data: Any, report: ConversionReport, source: str = "scanqa") -> Iterator[Record]:
    def one(item: dict) -> list[Record]:
        answers = _answers(item["answers"])
        return [Record(scene_id=item["scene_id"], task="qa", instruction=item["question"], response=answers[0],
                       answers=answers, id=None if item.get("question_id") is None else str(item["question_id"]),
                       source=source)]
    items = ((f"item {i}", it) for i, it in enumerate(_list(data, "ScanQA file")))
    yield from convert_items(items, lambda it: _validated(one(it)), report)


def sqa3d_question_type(question: str) -> str:
    """LEO's SQA3D question type: the question's first word, or 'other'."""
    words = question.strip().lower().split()
    first = words[0] if words else ""
    return first if first in SQA3D_QTYPES else "other"


def convert_sqa3d(questions: Any, annotations: Any, report: ConversionReport,
                  source: str = "sqa3d") -> Iterator[Record]:
    qs = _list(_dict(questions, "SQA3D questions file").get("questions"), "SQA3D 'questions'")
    by_id: dict[Any, dict] = {}
    for i, q in enumerate(qs):
        if isinstance(q, dict) and "question_id" in q:
            by_id[q["question_id"]] = q
        else:
            report.skip("question without question_id", f"questions[{i}]")

    def one(ann: dict) -> list[Record]:
        q = by_id.get(ann["question_id"])
        if q is None:
            raise RecordError("annotation's question_id not in the questions file")
        answers = _answers([a.get("answer") for a in ann["answers"] if isinstance(a, dict)])
        situation = q.get("situation")
        return [Record(scene_id=ann["scene_id"], task="qa", instruction=q["question"], response=answers[0],
                       answers=answers, situation=situation if isinstance(situation, str) else None,
                       qtype=sqa3d_question_type(q["question"]), id=str(ann["question_id"]), source=source)]
    anns = _list(_dict(annotations, "SQA3D annotations file").get("annotations"), "SQA3D 'annotations'")
    yield from convert_items(((f"annotations[{i}]", a) for i, a in enumerate(anns)),
                             lambda a: _validated(one(a)), report)


def convert_leo_plan(data: Any, report: ConversionReport, source: str = "leo_plan") -> Iterator[Record]:
    def one(pair) -> list[Record]:
        scan_id, item = pair
        return [Record(scene_id=scan_id, task="plan", instruction=plan_instruction(_str(item["instruction"])),
                       response=item["plan"], source=source)]
    yield from convert_items(_per_scan(data, "LEO plan file", report), lambda p: _validated(one(p)), report)


def convert_leo_qa(data: Any, report: ConversionReport, source: str = "leo_qa") -> Iterator[Record]:
    def one(pair) -> list[Record]:
        scan_id, item = pair
        answers = _answers(item["A"])
        return [Record(scene_id=scan_id, task="qa", instruction=item["Q"], response=answers[0], answers=answers,
                       source=source)]
    yield from convert_items(_per_scan(data, "LEO QA file", report), lambda p: _validated(one(p)), report)


def convert_leo_dialogue(data: Any, report: ConversionReport, source: str = "leo_dialogue") -> Iterator[Record]:
    def one(pair) -> list[Record]:
        scan_id, dialog = pair
        if not isinstance(dialog, list) or len(dialog) < 2:
            raise RecordError("dialogue must be a list of at least one user and one assistant turn")
        turns = [(str(t["role"]).strip().lower(), _str(t["content"])) for t in dialog]
        records, history = [], []
        for k in range(0, len(turns) - 1, 2):
            (role_u, user), (role_a, assistant) = turns[k], turns[k + 1]
            if role_u not in USER_ROLES or role_a not in ASSISTANT_ROLES:
                raise RecordError(f"dialogue turns must alternate user/assistant, got {role_u!r} then {role_a!r}")
            records.append(Record(scene_id=scan_id, task="dialogue", instruction=user, response=assistant,
                                  history=list(history) or None, source=source))
            history.append((user, assistant))
        return records
    yield from convert_items(_per_scan(data, "LEO dialogue file", report), lambda p: _validated(one(p)), report)


def convert_leo_scene_caption(data: Any, report: ConversionReport, source: str = "leo_scene_caption",
                              instruction: str = SCENE_CAPTION_INSTRUCTION) -> Iterator[Record]:
    def one(pair) -> list[Record]:
        scan_id, item = pair
        return [Record(scene_id=scan_id, task="scene_caption", instruction=instruction, response=item["response"],
                       source=source)]
    yield from convert_items(_per_scan(data, "LEO scene caption file", report), lambda p: _validated(one(p)), report)


def convert_leo_object_caption(data: Any, centers: Any, report: ConversionReport, source: str = "leo_object_caption",
                               instruction: str = OBJECT_CAPTION_INSTRUCTION,
                               radius: float | None = None) -> Iterator[Record]:
    """``centers``: ``{scan_id: {"<object id>": [x, y, z]}}`` in the scene's map frame."""
    centers = _dict(centers, "object centres file")

    def items():
        for scan_id, objects in _dict(data, "LEO object caption file").items():
            if not isinstance(objects, dict):
                report.skip("scan entry is not an object of captions per object", str(scan_id))
                continue
            for key, captions in objects.items():
                for i, item in enumerate(captions if isinstance(captions, list) else [captions]):
                    yield f"{scan_id}/{key}[{i}]", (scan_id, key, item)

    def one(triple) -> list[Record]:
        scan_id, key, item = triple
        obj_id = str(key).rsplit("-", 1)[-1]
        center = centers.get(scan_id, {}).get(obj_id) if isinstance(centers.get(scan_id), dict) else None
        if center is None:
            raise RecordError("no centre for the object in the centres file")
        anchor = Anchor.from_obj({"center": center, "radius": radius})
        return [Record(scene_id=scan_id, task="object_caption", instruction=instruction, response=item["response"],
                       anchor=anchor, source=source)]
    yield from convert_items(items(), lambda t: _validated(one(t)), report)


def convert_synthetic(seeds: list[int], report: ConversionReport, qa_per_type: int | None = None) -> Iterator[Record]:
    """Records of procedurally generated rooms (ground truth from the scene graph);
    ``qa_per_type``: questions per room and type (default: AnnotateConfig's)."""
    from leovl_ros.synth.annotate import AnnotateConfig, annotate_room
    from leovl_ros.synth.rooms import generate_room

    config = AnnotateConfig() if qa_per_type is None else AnnotateConfig(qa_per_type=qa_per_type)
    for seed in seeds:
        room = generate_room(seed)
        items = ((f"{room.scene_id}[{i}]", d) for i, d in enumerate(annotate_room(room, seed, config)))
        yield from convert_items(items, lambda d: [Record.from_dict(d)], report)


def _per_scan(data: Any, what: str, report: ConversionReport) -> Iterator[tuple[str, tuple[str, Any]]]:
    """(where, (scan_id, item)) of a LEO file: per scan a list of items or ``{"response": [items]}``."""
    for scan_id, entry in _dict(data, what).items():
        if isinstance(entry, dict):
            entry = entry.get("response")
        if not isinstance(entry, list):
            report.skip("scan entry is not a list or an object with a 'response' list", str(scan_id))
            continue
        for i, item in enumerate(entry):
            yield f"{scan_id}[{i}]", (scan_id, item)


def _str(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"expected non-empty text, got {value!r}")
    return value.strip()


def _validated(records: list[Record]) -> list[Record]:
    """Round-trip through the JSON schema so adapters enforce exactly what readers enforce."""
    return [Record.from_dict(r.to_dict()) for r in records]


FORMATS = ("scanqa", "sqa3d", "leo-plan", "leo-qa", "leo-dialogue", "leo-scene-caption", "leo-object-caption",
           "synthetic")
