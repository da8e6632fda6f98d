"""QA sessions: several questions of one scene as one chat record (training on every turn)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from leovl_ros.training.adapters import convert_synthetic
from leovl_ros.training.config import load_config
from leovl_ros.training.records import ConversionReport, Record
from leovl_ros.training.sessions import qa_sessions


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return list(convert_synthetic([0, 1], ConversionReport()))


def test_sessions_regroup_each_scenes_qa_and_keep_everything_else(records):
    qa = [r for r in records if r.task == "qa"]
    out = qa_sessions(records, size=4, seed=0)
    sessions = [r for r in out if r.task == "qa"]
    assert [r for r in out if r.task != "qa"] == [r for r in records if r.task != "qa"]
    turns = [(s.scene_id, *t) for s in sessions for t in (s.history or [])]
    turns += [(s.scene_id, f"{s.situation} {s.instruction}" if s.situation else s.instruction, s.response)
              for s in sessions]
    asked = [(r.scene_id, f"{r.situation} {r.instruction}" if r.situation else r.instruction, r.response) for r in qa]
    assert sorted(turns) == sorted(asked)  # every question once, in its own scene, with its answer
    assert all(len(s.history or []) <= 3 for s in sessions)
    for scene in ("synth_000000", "synth_000001"):
        n = sum(r.scene_id == scene for r in qa)
        assert sum(s.scene_id == scene for s in sessions) == -(-n // 4)
    assert qa_sessions(records, 4, seed=0) == out and qa_sessions(records, 4, seed=1) != out
    with pytest.raises(ValueError, match="size"):
        qa_sessions(records, 0)


def test_history_turns_require_the_chat_format(tmp_path: Path):
    cfg = {"output_dir": str(tmp_path / "o"), "model": {"base": "b", "leovl": {"dialogue_format": "inline"}},
           "data": {"history_turns": True}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="dialogue_format: chat"):
        load_config(path)
    cfg["model"]["leovl"]["dialogue_format"] = "chat"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path).data.history_turns


def test_cli_sessions_of_one_question_type_from_more_questions_per_room(records, tmp_path: Path, capsys):
    from leovl_ros.training.data_cli import main
    from leovl_ros.training.records import read_records

    assert main(["convert", "synthetic", "--seeds", "0:2", "--qa-per-type", "12", "--out", str(tmp_path / "r.jsonl")]) == 0
    many = [r for r in read_records([tmp_path / "r.jsonl"]) if r.task == "qa" and r.qtype == "colour"]
    assert len(many) > len([r for r in records if r.task == "qa" and r.qtype == "colour"])  # rooms 0, 1 at 6 per type
    assert main(["sessions", str(tmp_path / "r.jsonl"), "--size", "8", "--qtypes", "colour",
                 "--out", str(tmp_path / "s.jsonl")]) == 0
    sessions = read_records([tmp_path / "s.jsonl"])
    assert {r.qtype for r in sessions} == {"colour"} and {r.task for r in sessions} == {"qa"}
    assert sum(1 + len(r.history or []) for r in sessions) == len(many)
    assert all(q.startswith(("What", "Which", "Tell")) for r in sessions for q, _ in (r.history or []))
    assert main(["sessions", str(tmp_path / "r.jsonl"), "--size", "8", "--qtypes", "nonsense",
                 "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no QA records of question type(s) nonsense" in capsys.readouterr().err


def test_history_turns_read_the_format_of_a_full_bundle_used_as_base(tmp_path: Path):
    cfg = {"output_dir": str(tmp_path / "o"), "model": {"base": str(tmp_path / "full")},
           "data": {"history_turns": True}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (tmp_path / "full").mkdir()
    for fmt, ok in (("inline", False), ("chat", True)):
        (tmp_path / "full" / "leovl_config.json").write_text(json.dumps({"dialogue_format": fmt}))
        if ok:
            assert load_config(path).data.history_turns
        else:
            with pytest.raises(ValueError, match="dialogue_format: chat"):
                load_config(path)
