"""EM / EM-R with LEO's answer cleaning, n-gram metrics and the eval CLI on a predictions file."""
from __future__ import annotations

import json
import shutil

import pytest

from leovl_ros.training.eval_cli import main as eval_main
from leovl_ros.training.evaluate import format_table, read_predictions, score_predictions
from leovl_ros.training.metrics import answer_match, answer_match_leo, clean_answer, exact_match_scores
from leovl_ros.training.records import Record


@pytest.mark.parametrize("raw, clean", [
    ("The Brown  chair.", "brown chair"),  # lower-case, punctuation, article, spaces
    ("2", "two"), ("12 chairs", "twelve chairs"), ("none", "zero"), ("0", "zero"), ("23", "twenty-three"),
    ("21", "21"),  # LEO spells out 0-20 (and 23) only
    ("rigth of the letf tv", "right of left TV"),  # LEO's typo fixes ("tv" -> "TV" as in LEO)
    ("behine the chai", "behind chair"),
    ("mat2", "mat"), ("an apple", "apple"), ("a", "a"),  # a lone article has no word to drop before
    ("it's  7 o' clock", "it's seven o'clock"),
    ("backwards", "backward"),
])
def test_clean_answer(raw, clean):
    assert clean_answer(raw) == clean


# (prediction, references, (EM, EM-R) among the references, (EM, EM-R) as LEO's evaluator walks them)
@pytest.mark.parametrize("pred, refs, among, leo", [
    ("brown", ["brown", "dark brown"], (1, 1), (1, 1)),
    ("brown", ["dark brown", "brown"], (1, 1), (0, 1)),  # LEO stops at the partial match "dark brown"
    ("dark brown", ["brown"], (0, 1), (0, 1)),  # reference inside the prediction
    ("brown", ["dark brown"], (0, 1), (0, 1)),  # prediction inside the reference
    ("coffee table", ["coffeetable"], (0, 1), (0, 1)),  # spaces are ignored for EM-R
    ("table", ["chair", "table"], (1, 1), (1, 1)),  # a non-matching reference first changes nothing
    ("chair", ["table"], (0, 0), (0, 0)),
    ("", ["table"], (0, 0), (0, 0)),  # an empty answer never matches (LEO would give EM-R credit)
    ("", ["", "table"], (1, 1), (1, 1)),  # both empty: a match, as LEO
    ("", ["table", ""], (1, 1), (0, 0)),  # LEO's walk: "table" ~ "" would be partial for LEO; ours needs a pred
    ("chair", ["", "chair"], (1, 1), (0, 1)),  # an empty reference: EM-R credit (LEO stops there)
])
def test_answer_match_among_references_and_as_leo(pred, refs, among, leo):
    assert answer_match(pred, refs) == among
    assert answer_match_leo(pred, refs) == leo


def test_exact_match_scores_per_type_with_cleaning():
    preds = ["Two.", "the red one", "Yes", "left"]
    refs = [["2"], ["red"], ["no"], ["rigth"]]
    scores = exact_match_scores(preds, refs, ["count", "colour", "existence", None])
    assert scores["overall"] == {"EM": 25.0, "EM-LEO": 25.0, "EM-R": 50.0, "count": 4}
    assert scores["count"] == {"EM": 100.0, "EM-LEO": 100.0, "EM-R": 100.0, "count": 1}
    assert scores["colour"] == {"EM": 0.0, "EM-LEO": 0.0, "EM-R": 100.0, "count": 1}  # "red one" contains "red"
    # Cleaning first, then the rules: "The brown." is "brown"; LEO meets "dark brown" first.
    both = exact_match_scores(["The brown.", "Brown"], [["Dark brown", "brown"], ["brown", "dark brown"]])
    assert both["overall"] == {"EM": 100.0, "EM-LEO": 50.0, "EM-R": 100.0, "count": 2}
    assert scores["existence"]["EM-R"] == 0.0 and set(scores) == {"overall", "count", "colour", "existence"}
    with pytest.raises(ValueError, match="2 predictions but 1"):
        exact_match_scores(["a", "b"], [["a"]])


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_ngram_metrics_via_eval_cli(tmp_path, capsys):
    records = [Record(scene_id="s", task="qa", instruction=f"q{i}?", response=a, answers=[a, "x"], qtype=t,
                      source="t", id=str(i)) for i, (a, t) in enumerate([("brown", "colour"), ("2", "count")])]
    captions = ["a bedroom with a white bed", "two blue boxes on the shelf"]
    records += [Record(scene_id="s", task="scene_caption", instruction="Describe the scene.", response=c,
                       source="t", id=f"cap{i}") for i, c in enumerate(captions)]
    plan = "1. Walk to the desk.\n2. Pick up the mug.\n\n3. Put it in the sink."  # newlines broke METEOR
    records.append(Record(scene_id="s", task="plan", instruction="Clean up.", response=plan, source="t", id="p0"))
    rec_file = tmp_path / "records.jsonl"
    rec_file.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    preds = tmp_path / "preds.jsonl"  # joined by id, in another order than the records
    preds.write_text("".join(json.dumps(p) + "\n" for p in [
        {"id": "cap1", "prediction": captions[1]}, {"id": "cap0", "prediction": captions[0]},
        {"id": "1", "prediction": "three"},
        {"id": "0", "prediction": "Brown."}, {"id": "p0", "prediction": plan.replace("\n", " \r\n ")}]))
    out = tmp_path / "report.json"
    assert eval_main(["--predictions", str(preds), "--records", str(rec_file), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    qa = report["tasks"]["qa"]
    assert (qa["count"], qa["EM"], qa["EM-R"]) == (2, 50.0, 50.0)
    assert qa["qtypes"]["colour"]["EM"] == 100.0 and qa["qtypes"]["count"]["EM"] == 0.0
    caps = report["tasks"]["scene_caption"]  # perfect captions
    assert caps["BLEU-4"] == pytest.approx(100.0, abs=1e-3) and caps["CIDEr"] > 0
    assert caps["METEOR"] == pytest.approx(100.0) and caps["ROUGE-L"] == pytest.approx(100.0)
    assert "EM" not in caps
    plans = report["tasks"]["plan"]  # the same plan, other whitespace: scored as one line, perfect
    assert plans["METEOR"] == pytest.approx(100.0) and plans["BLEU-4"] == pytest.approx(100.0, abs=1e-3)
    assert qa["METEOR"] < 100.0 and qa["ROUGE-L"] < 100.0  # one of two answers is wrong
    table = capsys.readouterr().out
    assert "qa/colour" in table and "scene_caption" in table


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR needs Java")
def test_a_failing_meteor_is_a_clear_error_not_a_hang():
    from leovl_ros.training.metrics import NgramScorer

    scorer = NgramScorer()
    scorer._meteor.process.kill()  # METEOR dies (as it did on a line it could not parse)
    with pytest.raises(RuntimeError, match="METEOR failed: the Java process"):
        scorer.score({"0": "a red chair"}, {"0": ["a red chair"]})
    del scorer  # pycocoevalcap's wrapper blocked here (and at interpreter exit) on the lock it kept


def test_predictions_join_and_table(tmp_path):
    records = [Record(scene_id="s", task="qa", instruction="q?", response="a", answers=["a"], source="t")] * 2
    path = tmp_path / "p.jsonl"
    path.write_text('{"prediction": "a"}\n{"prediction": "b"}\n')
    assert read_predictions(path, records) == ["a", "b"]  # no ids: line order
    path.write_text('{"prediction": "a"}\n')
    with pytest.raises(ValueError, match="1 predictions for 2 records"):
        read_predictions(path, records)
    report = score_predictions(records, ["a", "b"], ngram=False)
    assert report["tasks"]["qa"]["EM"] == 50.0
    assert format_table(report).splitlines()[1].split()[:4] == ["qa", "2", "50.00", "50.00"]


def _qa(source: str, answer: str, refs: list[str], i: int, scene: str = "scene0000_00") -> Record:
    return Record(scene_id=scene, task="qa", instruction=f"What is {i}?", response=refs[0], answers=refs,
                  source=source, id=f"{source}{i}")


def test_in_domain_score_benchmark_scores_and_overall_average():
    """LEO-VL §4.4 / Table 3: in-domain = mean(EM, EM-R); a benchmark's score is the mean of
    its Table-2 metrics; overall = the mean over the paper's benchmarks that have all of
    theirs; other sources are scored apart; MSQA's domains are benchmarks of their own."""
    records = [_qa("sqa3d", "", ["brown", "x"], 0), _qa("sqa3d", "", ["dark brown", "brown"], 1),
               _qa("sqa3d", "", ["chair"], 2), _qa("sqa3d", "", ["red"], 3),
               _qa("synthetic", "", ["two"], 4), _qa("synthetic", "", ["yes"], 5), _qa("msqa", "", ["sofa"], 6),
               _qa("msqa_arkitscenes", "", ["bed"], 7, "41069021"), _qa("leo_qa", "", ["bed"], 8)]
    preds = ["brown", "brown", "the chair by the wall", "blue", "2", "no", "sofa", "bed", "bed"]
    report = score_predictions(records, preds, ngram=False)
    sqa = report["benchmarks"]["sqa3d"]
    assert (sqa["EM"], sqa["EM-LEO"], sqa["EM-R"]) == (50.0, 25.0, 75.0)
    assert sqa["in_domain"] == 62.5 and sqa["in_domain_leo"] == 50.0
    assert sqa["score"] == 50.0  # LEO's rule, as the published SQA3D numbers (LEO-comparable)
    assert report["benchmarks"]["synthetic"]["score"] == 50.0  # (EM 50 + EM-R 50) / 2
    # "msqa" records of a ScanNet scan count for MSQA-ScanNet; by GPT-Score: no judge, left out
    assert report["benchmarks"]["msqa_scannet"]["score"] is None and "msqa" not in report["benchmarks"]
    assert report["overall"] == 50.0  # the paper's benchmarks only
    assert report["overall_missing"] == ["msqa_arkitscenes", "msqa_scannet"]
    assert report["other_sources"] == {"leo_qa": 100.0, "synthetic": 50.0}
    assert report["tasks"]["qa"]["count"] == 9
    table = format_table(report)
    assert "EM-LEO" in table and "in-dom" in table and "50.00  (the paper's benchmarks; without msqa_ark" in table
    assert "not in overall (not the paper's benchmarks): leo_qa 100.00, synthetic 50.00" in table


def test_gpt_score_through_a_local_openai_compatible_endpoint(tmp_path, capsys):
    """MSR3D's judging protocol against a real HTTP server on 127.0.0.1: the user message
    "Question/Answer/Ground Truth", score = first integer 1..5, GPT-Score = (s - 1) * 25."""
    from support.chat_server import chat_server

    from leovl_ros.training.chat_endpoint import ChatClient
    from leovl_ros.training.gpt_score import DEFAULT_SYSTEM_PROMPT, GPTScorer, parse_score

    def judge(messages: list[dict]) -> str:
        q, a, gt = (line.split(": ", 1)[1] for line in messages[-1]["content"].splitlines())
        return "5" if a.lower() == gt.lower() else ("Score: 3 - partly" if gt in a else "1")

    records = [_qa("msqa", "", ["sofa"], 0), _qa("msqa", "", ["red chair"], 1), _qa("msqa", "", ["two"], 2)]
    preds = ["Sofa", "a red chair by the desk", "three"]
    with chat_server(judge) as server:
        scorer = GPTScorer(ChatClient(server.url, "judge-model", api_key_env=""))
        report = score_predictions(records, preds, ngram=False, judge=scorer)
        sent = list(server.requests)  # before the CLI run below asks again
        rec_file = tmp_path / "records.jsonl"
        rec_file.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
        pred_file = tmp_path / "preds.jsonl"
        pred_file.write_text("".join(json.dumps({"id": r.id, "prediction": p}) + "\n" for r, p in zip(records, preds)))
        out = tmp_path / "report.json"
        assert eval_main(["--predictions", str(pred_file), "--records", str(rec_file), "--no-ngram",
                          "--gpt-endpoint", server.url, "--out", str(out)]) == 0
    msqa = report["benchmarks"]["msqa_scannet"]
    assert msqa["GPT-Score"] == pytest.approx((100 + 50 + 0) / 3) and msqa["GPT-Score-failed"] == 0
    assert msqa["score"] == msqa["GPT-Score"] and report["overall"] == msqa["GPT-Score"]
    assert len(sent) == 3 and sent[0]["model"] == "judge-model" and sent[0]["auth"] is None
    assert sent[0]["messages"] == [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {
        "role": "user", "content": "Question: What is 0?\nAnswer: Sofa\nGround Truth: sofa"}]
    assert json.loads(out.read_text())["benchmarks"]["msqa_scannet"]["GPT-Score"] == msqa["GPT-Score"]
    assert parse_score("4/5") == 75.0 and parse_score("no idea") is None and parse_score("9") is None
    # Off by default: no endpoint, no GPT-Score and no request.
    assert "GPT-Score" not in score_predictions(records, preds, ngram=False)["benchmarks"]["msqa_scannet"]
    # A judge that never gives a usable score is an error (exit 2, one line), not a silent 0.
    capsys.readouterr()
    with chat_server(lambda messages: "I cannot judge this.") as server:
        assert eval_main(["--predictions", str(pred_file), "--records", str(rec_file), "--no-ngram",
                          "--gpt-endpoint", server.url]) == 2
    assert "scored none of 3" in capsys.readouterr().err
