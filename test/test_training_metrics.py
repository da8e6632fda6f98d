"""EM / EM-R with LEO's answer cleaning, n-gram metrics and the eval CLI on a predictions file."""
from __future__ import annotations

import json
import shutil

import pytest

from training.eval_cli import main as eval_main
from training.evaluate import format_table, read_predictions, score_predictions
from training.metrics import answer_match, clean_answer, exact_match_scores
from training.records import Record


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


@pytest.mark.parametrize("pred, refs, expected", [
    ("brown", ["brown", "dark brown"], (1, 1)),
    ("dark brown", ["brown"], (0, 1)),  # reference inside the prediction
    ("brown", ["dark brown"], (0, 1)),  # prediction inside the reference
    ("coffee table", ["coffeetable"], (0, 1)),  # spaces are ignored for EM-R
    ("chair", ["table"], (0, 0)),
    ("", ["table"], (0, 0)),  # an empty answer never matches (LEO would give EM-R credit)
])
def test_answer_match(pred, refs, expected):
    assert answer_match(pred, refs) == expected


def test_exact_match_scores_per_type_with_cleaning():
    preds = ["Two.", "the red one", "Yes", "left"]
    refs = [["2"], ["red"], ["no"], ["rigth"]]
    scores = exact_match_scores(preds, refs, ["count", "colour", "existence", None])
    assert scores["overall"] == {"EM": 25.0, "EM-R": 50.0, "count": 4}
    assert scores["count"] == {"EM": 100.0, "EM-R": 100.0, "count": 1}
    assert scores["colour"] == {"EM": 0.0, "EM-R": 100.0, "count": 1}  # "red one" contains "red"
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
    rec_file = tmp_path / "records.jsonl"
    rec_file.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    preds = tmp_path / "preds.jsonl"  # joined by id, in another order than the records
    preds.write_text("".join(json.dumps(p) + "\n" for p in [
        {"id": "cap1", "prediction": captions[1]}, {"id": "cap0", "prediction": captions[0]},
        {"id": "1", "prediction": "three"},
        {"id": "0", "prediction": "Brown."}]))
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
    assert qa["METEOR"] < 100.0 and qa["ROUGE-L"] < 100.0  # one of two answers is wrong
    table = capsys.readouterr().out
    assert "qa/colour" in table and "scene_caption" in table


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
