"""Normalised records and dataset adapters: fixture files of each format -> expected records."""
from __future__ import annotations

import json

import pytest
import torch

from leovl_ros.training import adapters, caption_adapters
from leovl_ros.training.data_cli import main as data_main
from leovl_ros.training.records import ConversionReport, Record, RecordError, read_records, write_records


def _dicts(records):
    return [r.to_dict() for r in records]


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def test_record_round_trip_and_query():
    data = {"scene_id": "s1", "task": "object_caption", "instruction": "Describe this.", "response": "A red chair.",
            "source": "x", "anchor": {"center": [1, 2, 0.5], "radius": 0.4}, "situation": "I face the door.",
            "history": [["hi", "hello"]], "id": 7}
    rec = Record.from_dict(data)
    assert rec.to_dict() == {**data, "id": "7", "anchor": {"center": [1.0, 2.0, 0.5], "radius": 0.4}}
    q = rec.query()
    assert q.anchor_center == (1.0, 2.0, 0.5) and q.anchor_radius == 0.4
    assert q.situation == "I face the door." and q.history == [("hi", "hello")]
    assert rec.references == ["A red chair."]


@pytest.mark.parametrize("change, reason", [
    ({"scene_id": None}, "missing 'scene_id'"),
    ({"task": "grounding"}, "unknown task 'grounding'"),
    ({"response": "  "}, "'response' must be a non-empty string"),
    ({"anchor": {"center": [1, 2]}}, "anchor center must be 3 finite numbers"),
    ({"history": [["only user"]]}, "'history' must be a list of [user, assistant] string pairs"),
    ({"colour": "red"}, "unknown keys ['colour']"),
])
def test_invalid_records_name_the_problem(change, reason):
    data = {"scene_id": "s", "task": "qa", "instruction": "q?", "response": "a", "source": "t", **change}
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(RecordError) as info:
        Record.from_dict(data)
    assert reason in str(info.value)


def test_jsonl_skips_bad_lines_and_counts_reasons(tmp_path):
    good = {"scene_id": "s", "task": "qa", "instruction": "q?", "response": "a", "source": "t"}
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join([json.dumps(good), "{not json", json.dumps({**good, "task": "nope"}), "",
                               json.dumps({**good, "answers": ["a", "b"]})]) + "\n")
    report = ConversionReport()
    records = read_records(path, report)
    assert [r.answers for r in records] == [None, ["a", "b"]]
    assert sum(report.skipped.values()) == 2
    assert report.first_seen[next(k for k in report.skipped if k.startswith("invalid JSON"))] == "r.jsonl:2"
    out = tmp_path / "out.jsonl"
    assert write_records(out, records) == 2
    assert _dicts(read_records(out)) == _dicts(records)


def test_scanqa(tmp_path):
    data = [
        {"scene_id": "scene0000_00", "question": "What color is the chair?", "answers": ["brown", " dark brown "],
         "object_ids": [3], "question_id": "train-0"},
        {"scene_id": "scene0000_00", "question": "Where is the sink?", "answers": [], "object_ids": []},
        {"question": "no scene", "answers": ["x"]},
        {"scene_id": "scene0000_00", "question": "What is on it?", "answers": ["", "lamp"], "question_id": 7},
        {"scene_id": "scene0000_00", "question": "Anything?", "answers": [" ", ""]},
    ]
    report = ConversionReport()
    records = list(adapters.convert_scanqa(data, report))
    assert _dicts(records) == [{"scene_id": "scene0000_00", "task": "qa", "instruction": "What color is the chair?",
                                "response": "brown", "answers": ["brown", "dark brown"], "id": "train-0",
                                "source": "scanqa"},
                               # LEO keeps an empty answer (EM-R credit); training uses a non-empty one
                               {"scene_id": "scene0000_00", "task": "qa", "instruction": "What is on it?",
                                "response": "lamp", "answers": ["", "lamp"], "id": "7", "source": "scanqa"}]
    assert report.skipped == {"no answers (test split without ground truth?)": 2, "missing key 'scene_id'": 1}
    write_records(tmp_path / "q.jsonl", records)
    assert _dicts(read_records(tmp_path / "q.jsonl")) == _dicts(records)  # the empty answer survives a file


def test_sqa3d_as_leo_reads_it():
    questions = {"questions": [
        {"question_id": 1, "situation": "I am sitting on the bed.", "question": "What's in front of me?",
         "alternative_situation": ["My back is to the wall.", ""]},
        {"question_id": 2, "situation": "I face the window.", "question": "Can I reach the lamp?"},
        {"situation": "no id"},
    ]}
    annotations = {"annotations": [
        {"question_id": 1, "scene_id": "scene0001_00", "answers": [{"answer": "desk", "answer_id": 1}],
         "position": {"x": 1.5, "y": -0.5, "z": 0}, "rotation": {"_x": 0, "_y": 0, "_z": 0.1, "_w": 0.995}},
        {"question_id": 2, "scene_id": "scene0001_00", "answers": [{"answer": "yes"}, {"answer": "yes"}]},
        {"question_id": 99, "scene_id": "scene0001_00", "answers": [{"answer": "no"}]},
    ]}
    report = ConversionReport()
    records = list(adapters.convert_sqa3d(questions, annotations, report))
    assert _dicts(records) == [  # LEO: first -> second person, tokens re-joined, str.capitalize()
        {"scene_id": "scene0001_00", "task": "qa", "instruction": "What ' s in front of you ?", "response": "desk",
         "answers": ["desk"], "situation": "You are sitting on the bed .",
         "alternative_situations": ["Your back is to the wall ."], "location": [1.5, -0.5, 0.0],
         "orientation": [0.0, 0.0, 0.1, 0.995], "qtype": "what", "id": "1", "source": "sqa3d"},
        {"scene_id": "scene0001_00", "task": "qa", "instruction": "Can you reach the lamp ?", "response": "yes",
         "answers": ["yes", "yes"], "situation": "You face the window .", "qtype": "can", "id": "2",
         "source": "sqa3d"},
    ]
    assert report.skipped == {"question without question_id": 1,
                              "annotation's question_id not in the questions file": 1}
    assert [adapters.sqa3d_question_type(q) for q in ("What's that?", "Which way should I go?", "Is it on?",
                                                       "Isn't it red?", "Where is it?")] == \
        ["what", "which", "is", "is", "other"]
    # Training draws among the situations (torch's generator); evaluation uses the first.
    from leovl_ros.training.sft import _training_query

    torch.manual_seed(0)
    drawn = {_training_query(records[0]).situation for _ in range(40)}
    assert drawn == {"You are sitting on the bed .", "Your back is to the wall ."}
    assert records[0].query().situation == "You are sitting on the bed ."


def test_msqa_list_and_dict_forms_keep_the_situation():
    item = {"scan_id": "1776ad80-4db7-2333-8b18-f02ef42f3569", "question": "How many <chair-3-IMG> are near me?",
            "answers": ["two"], "situation": "I stand by the <table-2-IMG>.", "location": [0.5, -1.0, 0.0],
            "orientation": [0.0, 1.0, 0.0], "type": "counting", "index": 7, "raw_thought": "chair-3"}
    report = ConversionReport()
    listed = list(adapters.convert_msqa([item, {**item, "answers": []}, {"question": "no scan"}], report))
    as_dict = list(adapters.convert_msqa({item["scan_id"]: {"response": [
        {"Q": item["question"], "A": item["answers"], "situation": item["situation"], "location": item["location"],
         "orientation": item["orientation"], "type": "counting", "index": 7}]}}, ConversionReport()))
    expected = {"scene_id": item["scan_id"], "task": "qa", "instruction": "How many chair are near me?",
                "response": "two", "answers": ["two"], "situation": "I stand by the table.",
                "location": [0.5, -1.0, 0.0], "orientation": [0.0, 0.0, 0.7071, 0.7071], "qtype": "counting",
                "id": "7", "source": "msqa_3rscan"}  # the paper reports MSQA's domains apart
    for got in (listed, as_dict):
        d = _dicts(got)[0]
        d["orientation"] = [round(v, 4) for v in d["orientation"]]
        assert len(got) == 1 and d == expected
    assert report.skipped == {"no answers (test split without ground truth?)": 1, "missing key 'scan_id'": 1}
    assert _dicts(adapters.convert_leo_qa({"s": {"response": [item | {"Q": "Q?", "A": ["a"]}]}},
                                          ConversionReport()))[0]["situation"] == "I stand by the table."
    domains = {i: (item | {"scan_id": i}) for i in ("scene0012_01", "41069021", "my_room")}
    assert [r.source for r in adapters.convert_msqa(list(domains.values()), ConversionReport())] == [
        "msqa_scannet", "msqa_arkitscenes", "msqa"]  # an id of no known form stays "msqa"


def test_object_captions_anchor_the_object_box():
    boxes = caption_adapters.Boxes({"scene0000_00": {"3": {"center": [1.0, 2.0, 0.4], "size": [0.5, 0.6, 0.8],
                                                           "label": "chair"}},
                                    "scanD": {"5": [0.0, 1.0, 0.5]}}, radius=0.5)
    box = {"center": [1.0, 2.0, 0.4], "size": [0.5, 0.6, 0.8]}
    report = ConversionReport()
    scanrefer = [{"scene_id": "scene0000_00", "object_id": "3", "object_name": "chair", "ann_id": "0",
                  "description": "A brown chair by the desk."},
                 {"scene_id": "scene0000_00", "object_id": "4", "object_name": "lamp", "ann_id": "0",
                  "description": "A lamp."}]
    nr3d = "assignmentid,scan_id,target_id,instance_type,utterance\nx,scene0000_00,3,chair,the chair near the desk\n"
    caps = {"scanD": {"lamp-5": [{"response": "A tall lamp."}]}}
    out = {
        "scanrefer": list(caption_adapters.convert_scanrefer(scanrefer, boxes, report)),
        "nr3d": list(caption_adapters.convert_referit3d(nr3d, boxes, ConversionReport())),
        "scanscribe": list(caption_adapters.convert_scanscribe(
            [{"scan_id": "scene0000_00", "object_id": 3, "sentence": "A chair."}], boxes, ConversionReport())),
        "generic": list(caption_adapters.convert_object_captions(
            [{"scan_id": "scene0000_00", "target_id": "3", "utterance": "Chair."}], boxes, ConversionReport())),
        "leo": list(caption_adapters.convert_leo_object_caption(caps, boxes, ConversionReport())),
    }
    assert [len(v) for v in out.values()] == [1, 1, 1, 1, 1]
    assert all(v[0].anchor.to_obj() == box and v[0].task == "object_caption" for k, v in out.items() if k != "leo")
    assert out["leo"][0].anchor.to_obj() == {"center": [0.0, 1.0, 0.5], "radius": 0.5}
    assert out["nr3d"][0].response == "the chair near the desk" and out["nr3d"][0].source == "nr3d"
    assert report.skipped == {"unknown object id (not in the boxes file)": 1}
    scenes = list(caption_adapters.convert_scene_captions(
        [{"scene_id": "scene0000_00", "caption": "A bedroom."}, {"scene_id": "x"}], report := ConversionReport()))
    assert [r.task for r in scenes] == ["scene_caption"] and sum(report.skipped.values()) == 1
    q = out["scanrefer"][0].query()
    assert (q.anchor_center, q.anchor_size) == ((1.0, 2.0, 0.4), (0.5, 0.6, 0.8))


def test_leo_plan_qa_and_scene_caption():
    report = ConversionReport()
    plans = {"scanA": {"response": [{"instruction": "Tidy the desk", "plan": "1. pick up the cup. 2. wipe it."},
                                    {"instruction": "", "plan": "x"}]}}
    assert _dicts(adapters.convert_leo_plan(plans, report)) == [
        {"scene_id": "scanA", "task": "plan", "instruction": "Create a step-by-step plan for the task: Tidy the desk",
         "response": "1. pick up the cup. 2. wipe it.", "source": "leo_plan"}]
    qa = {"scanA": {"query": "{}", "response": [{"Q": "What color is the floor?", "T": "floor-1", "A": ["wooden"]}]},
          "scanB": "not a list"}
    assert _dicts(adapters.convert_leo_qa(qa, report)) == [
        {"scene_id": "scanA", "task": "qa", "instruction": "What color is the floor?", "response": "wooden",
         "answers": ["wooden"], "source": "leo_qa"}]
    caps = {"scanA": [{"query": "{'bed-1': {}}", "response": "A bedroom with a bed."}, {"query": "{}"}]}
    assert _dicts(adapters.convert_leo_scene_caption(caps, report)) == [
        {"scene_id": "scanA", "task": "scene_caption", "instruction": "Describe the scene.",
         "response": "A bedroom with a bed.", "source": "leo_scene_caption"}]
    assert report.skipped == {"expected non-empty text, got ''": 1,
                              "scan entry is not a list or an object with a 'response' list": 1,
                              "missing key 'response'": 1}


def test_leo_dialogue_one_record_per_assistant_turn():
    dialog = [{"role": "Human", "content": "What color is the sofa?"}, {"role": "Robot", "content": "Red. "},
              {"role": "Human", "content": "Is it old?"}, {"role": "Robot", "content": "Yes, quite old."}]
    bad = [{"role": "Robot", "content": "Hi"}, {"role": "Human", "content": "?"}]
    report = ConversionReport()
    records = list(adapters.convert_leo_dialogue({"scanC": {"query": "{}", "response": [dialog, bad]}}, report))
    assert _dicts(records) == [
        {"scene_id": "scanC", "task": "dialogue", "instruction": "What color is the sofa?", "response": "Red.",
         "source": "leo_dialogue"},
        {"scene_id": "scanC", "task": "dialogue", "instruction": "Is it old?", "response": "Yes, quite old.",
         "history": [["What color is the sofa?", "Red."]], "source": "leo_dialogue"},
    ]
    assert list(report.skipped) == ["dialogue turns must alternate user/assistant, got 'robot' then 'human'"]


def test_synthetic_rooms_give_all_five_tasks():
    report = ConversionReport()
    records = list(adapters.convert_synthetic([3], report))
    assert {r.task for r in records} == {"qa", "object_caption", "scene_caption", "plan", "dialogue"}
    assert all(r.scene_id == "synth_000003" for r in records) and not report.skipped
    assert all(r.anchor is not None for r in records if r.task == "object_caption")


def test_convert_cli_reports_counts_and_skips(tmp_path, capsys):
    src = _write(tmp_path / "scanqa.json", [
        {"scene_id": "scene0000_00", "question": "How many chairs?", "answers": ["2"], "question_id": 1},
        {"scene_id": "scene0000_00", "question": "", "answers": ["x"]}])
    out = tmp_path / "out.jsonl"
    assert data_main(["convert", "scanqa", src, "--out", str(out), "--report", str(tmp_path / "rep.json")]) == 0
    text = capsys.readouterr().out
    assert "kept 1 records (qa: 1); skipped 1" in text and "'instruction' must be a non-empty string" in text
    assert [r.instruction for r in read_records(out)] == ["How many chairs?"]
    assert json.loads((tmp_path / "rep.json").read_text())["kept"] == {"qa": 1}


def test_referit3d_keeps_its_ids_and_offers_its_filters(tmp_path, capsys):
    """Nr3D's columns as referit3d writes them (pandas booleans "True"/"False")."""
    boxes = _write(tmp_path / "boxes.json", {"scene0000_00": {"3": {"center": [1, 2, 0.4], "size": [0.5, 0.6, 0.8]},
                                                              "4": {"center": [0, 1, 0.3], "size": [0.4, 0.4, 0.6]}}})
    rows = [("a1", "scene0000_00-chair-2-3-4", "True", "True", 3, "the chair by the desk"),
            ("a2", "scene0000_00-chair-2-3-4", "False", "True", 3, "the one by the desk"),
            ("a3", "scene0000_00-lamp-2-4-3", "True", "False", 4, "the tall one"),
            ("a4", "scene0000_00-lamp-2-4-3", "True", "True", 4, "the tall lamp")]
    nr3d = tmp_path / "nr3d.csv"
    nr3d.write_text("assignmentid,stimulus_id,correct_guess,mentions_target_class,scan_id,instance_type,target_id,"
                    "utterance\n" + "".join(f"{a},{s},{g},{m},scene0000_00,x,{t},{u}\n" for a, s, g, m, t, u in rows))
    out, rep = tmp_path / "nr3d.jsonl", tmp_path / "rep.json"
    assert data_main(["convert", "nr3d", str(nr3d), "--boxes", boxes, "--out", str(out)]) == 0
    assert [r.id for r in read_records(out)] == ["a1", "a2", "a3", "a4"]  # the dataset's own ids
    assert data_main(["convert", "nr3d", str(nr3d), "--boxes", boxes, "--only", "correct_guess", "--only",
                      "mentions_target_class", "--out", str(out), "--report", str(rep)]) == 0
    assert [(r.id, r.response) for r in read_records(out)] == [("a1", "the chair by the desk"),
                                                               ("a4", "the tall lamp")]
    assert json.loads(rep.read_text())["skipped"] == {"filtered out: correct_guess is not True": 1,
                                                      "filtered out: mentions_target_class is not True": 1}
    # Sr3D: no assignmentid, the stimulus id (numbered when it repeats); no correct_guess column to filter on
    sr3d = tmp_path / "sr3d.csv"
    sr3d.write_text("stimulus_id,scan_id,target_id,utterance,mentions_target_class\n"
                    "s1,scene0000_00,3,the chair near the lamp,True\ns1,scene0000_00,3,the chair left of the lamp,"
                    "True\ns2,scene0000_00,4,the lamp far from the chair,True\n")
    assert data_main(["convert", "sr3d", str(sr3d), "--boxes", boxes, "--out", str(out)]) == 0
    assert [r.id for r in read_records(out)] == ["s1", "s1-2", "s2"]
    capsys.readouterr()
    assert data_main(["convert", "sr3d", str(sr3d), "--boxes", boxes, "--only", "correct_guess",
                      "--out", str(out)]) == 2
    assert "no 'correct_guess' column" in capsys.readouterr().err
    assert data_main(["convert", "scanqa", str(nr3d), "--only", "correct_guess", "--out", str(out)]) == 2


def test_convert_cli_rejects_unusable_input(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    assert data_main(["convert", "scanqa", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert data_main(["convert", "sqa3d", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "takes 2 input file(s)" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
