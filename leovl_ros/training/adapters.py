"""Converters from public 3D-VL datasets and our synthetic rooms to normalised records.

Each ``convert_*`` takes the loaded JSON and a :class:`ConversionReport` and yields
:class:`Record` s; a malformed item is skipped and counted, never fatal.

Formats:
- ScanQA: ``[{scene_id, question, answers[], object_ids[], question_id}]``.
- SQA3D: questions ``{questions: [{question_id, situation, alternative_situation[], question}]}``
  + annotations ``{annotations: [{question_id, scene_id, answers: [{answer}], position, rotation}]}``,
  as LEO (embodied-generalist ``LeoSQA3D``) reads them: question and situations rewritten from
  first to second person (``convert_person_view``), all situations kept (one is drawn per
  training sample), question type by prefix (``get_sqa_question_type``: what / is / how /
  can / which / other, so "What's" is a "what" question).
- MSQA (MSR3D ``data/datasets/msr3d.py``): ``[{scan_id, question, answers, situation,
  location, orientation, type, index}]`` per domain file, or the older
  ``{scan_id: {response: [{Q, A, situation, location, orientation, type}]}}``; situation,
  location and orientation (a facing vector in the xy plane, stored as a yaw quaternion
  with the agent looking along its +x) stay in the record; ``<label>-<id>-IMG`` object
  placeholders become the label, as in MSR3D's text-only mode.
- LEO dicts: plans ``{scan_id: {response: [{instruction, plan}]}}``, dialogues
  ``{scan_id: {response: [[{role, content}, ...], ...]}}`` (roles Human/Robot or
  user/assistant; one record per assistant turn, earlier turns as history), scene captions
  ``{scan_id: [{query, response}]}`` and 3RScan QA ``{scan_id: {response: [{Q, A[]}]}}`` (a
  situated item, e.g. MSQA in this form, keeps its situation). Object captions:
  caption_adapters.py.
- Synthetic rooms: records of ``leovl_ros.synth.annotate.annotate_room``.

Decision (paper silent): LEO draws instructions for captioning / planning from prompt
pools at random; we use one fixed instruction per task (arguments), so a record file is
deterministic and the same prompt is used at training and at inference on the robot.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Iterator

from leovl_ros.model.prompts import plan_instruction

from .records import ConversionReport, Record, RecordError, convert_items

SCENE_CAPTION_INSTRUCTION = "Describe the scene."
SQA3D_QTYPES = ("what", "is", "how", "can", "which")
_PERSON = {"i": "you", "me": "you", "my": "your", "mine": "yours", "am": "are"}
_MSQA_IMG = re.compile(r"<([^<>-]+)-\d+-IMG>")
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


def _answers(raw: Any) -> tuple[str, list[str]]:
    """(the first non-empty answer: the training response, every answer in order). Empty
    answers stay, as LEO keeps them: its EM-R credits any prediction against one."""
    if not isinstance(raw, list):
        raise RecordError("'answers' must be a list")
    answers = [a.strip() for a in raw if isinstance(a, str)]
    response = next((a for a in answers if a), None)
    if response is None:
        raise RecordError("no answers (test split without ground truth?)")
    return response, answers


def convert_scanqa(data: Any, report: ConversionReport, source: str = "scanqa") -> Iterator[Record]:
    def one(item: dict) -> list[Record]:
        response, answers = _answers(item["answers"])
        return [Record(scene_id=item["scene_id"], task="qa", instruction=item["question"], response=response,
                       answers=answers, id=None if item.get("question_id") is None else str(item["question_id"]),
                       source=source)]
    items = ((f"item {i}", it) for i, it in enumerate(_list(data, "ScanQA file")))
    yield from convert_items(items, lambda it: _validated(one(it)), report)


def sqa3d_question_type(question: str) -> str:
    """LEO's SQA3D question type: the first of what / is / how / can / which that the
    question starts with (a prefix, so "What's" is "what"), else 'other'."""
    q = question.lstrip().lower()
    return next((t for t in SQA3D_QTYPES if q.startswith(t)), "other")


def person_view(sentence: str) -> str:
    """LEO's first- to second-person rewrite: word-punctuation tokens (nltk's
    ``wordpunct_tokenize`` pattern), I/me/my/mine/am -> you/you/your/yours/are, joined by
    spaces, first letter upper-cased and the rest lower-cased (``str.capitalize``)."""
    tokens = re.findall(r"\w+|[^\w\s]+", sentence)
    return " ".join(_PERSON.get(t.lower(), t) for t in tokens).capitalize()


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
        response, answers = _answers([a.get("answer") for a in ann["answers"] if isinstance(a, dict)])
        situations = [person_view(s) for s in [q.get("situation")] + list(q.get("alternative_situation") or [])
                      if isinstance(s, str) and s.strip()]
        pos, rot = ann.get("position"), ann.get("rotation")
        return [Record(scene_id=ann["scene_id"], task="qa", instruction=person_view(_str(q["question"])),
                       response=response, answers=answers, situation=situations[0] if situations else None,
                       alternative_situations=situations[1:] or None, qtype=sqa3d_question_type(q["question"]),
                       id=str(ann["question_id"]), source=source,
                       location=None if pos is None else (pos["x"], pos["y"], pos["z"]),
                       orientation=None if rot is None else (rot["_x"], rot["_y"], rot["_z"], rot["_w"]))]
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
    """LEO 3RScan QA; items with a ``situation`` (MSQA's dict form) keep it, with location and orientation."""
    def one(pair) -> list[Record]:
        scan_id, item = pair
        return [_situated_qa(scan_id, item["Q"], item["A"], item, source)]
    yield from convert_items(_per_scan(data, "LEO QA file", report), lambda p: _validated(one(p)), report)


def _msqa_text(text: Any) -> str:
    return _MSQA_IMG.sub(lambda m: m.group(1), _str(text))


def _facing_quaternion(orientation: Any) -> tuple[float, float, float, float] | None:
    """MSQA's facing vector in the xy plane -> yaw quaternion (x, y, z, w), the agent's +x
    along it; four numbers are taken as a quaternion already."""
    if orientation is None:
        return None
    values = [float(v) for v in orientation]
    if len(values) == 4:
        return tuple(values)
    if len(values) != 3 or math.hypot(values[0], values[1]) < 1e-9:
        raise RecordError(f"orientation must be a facing vector [x, y, z] or a quaternion, got {orientation!r}")
    yaw = math.atan2(values[1], values[0])
    return (0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def _situated_qa(scan_id: Any, question: Any, answers: Any, item: dict, source: str) -> Record:
    response, answers = _answers(answers if isinstance(answers, list) else [answers])
    situation = item.get("situation")
    location = item.get("location")
    return Record(scene_id=str(scan_id), task="qa", instruction=_msqa_text(question), response=response,
                  answers=answers, situation=_msqa_text(situation) if situation else None,
                  location=None if location is None else tuple(float(v) for v in location),
                  orientation=_facing_quaternion(item.get("orientation")),
                  qtype=item.get("type") if isinstance(item.get("type"), str) else None,
                  id=None if item.get("index") is None else str(item["index"]), source=source)


MSQA_DOMAINS = (("scannet", re.compile(r"scene\d{4}_\d{2}")),
                ("3rscan", re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")),
                ("arkitscenes", re.compile(r"\d{6,}")))


def msqa_domain(scan_id: str) -> str | None:
    """The scan domain of an MSQA scan id by its form (ScanNet ``sceneXXXX_XX``, 3RScan UUID,
    ARKitScenes numeric video id), or None."""
    return next((name for name, pattern in MSQA_DOMAINS if pattern.fullmatch(scan_id)), None)


def convert_msqa(data: Any, report: ConversionReport, source: str = "msqa") -> Iterator[Record]:
    """MSQA, list form (``msqa_<domain>_<split>.json``) or the older per-scan dict form. The
    paper reports its three domains apart: each record's source is ``msqa_<domain>``
    (scannet, 3rscan, arkitscenes; by the scan id's form), ``msqa`` when the id has none."""
    def domain_source(record: Record) -> Record:
        domain = msqa_domain(record.scene_id)
        return dataclasses.replace(record, source=f"{source}_{domain}" if domain else source)

    if isinstance(data, dict):
        yield from map(domain_source, convert_leo_qa(data, report, source))
        return

    def one(item: dict) -> list[Record]:
        return [domain_source(_situated_qa(item["scan_id"], item["question"], item["answers"], item, source))]
    items = ((f"item {i}", it) for i, it in enumerate(_list(data, "MSQA file")))
    yield from convert_items(items, lambda it: _validated(one(it)), report)


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


def convert_synthetic_floors(seeds: list[int], report: ConversionReport,
                             qa_per_type: int | None = None) -> Iterator[Record]:
    """Floor-level QA records of synthetic floors (synth/floor_qa.py; scene ids floor_<seed>);
    ``qa_per_type``: questions per floor and type (default 6)."""
    from leovl_ros.synth.floor_qa import floor_qa_records
    from leovl_ros.synth.floors import generate_floor

    for seed in seeds:
        floor = generate_floor(seed)
        recs = floor_qa_records(floor, seed, 6 if qa_per_type is None else qa_per_type)
        items = ((f"{floor.scene_id}[{i}]", d) for i, d in enumerate(recs))
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


FORMATS = ("scanqa", "sqa3d", "msqa", "leo-plan", "leo-qa", "leo-dialogue", "leo-scene-caption", "synthetic")
