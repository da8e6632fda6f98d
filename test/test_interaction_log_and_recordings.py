"""Supervision is never lost, without ROS: the interaction log and recordings cut by a crash."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from leovl_ros.assistant.interaction_log import InteractionLog, read_interaction_log
from leovl_ros.assistant.records import Interaction
from leovl_ros.synth.render import tiny_scene
from leovl_ros.synth.writers import BagExtra, write_bag
from leovl_ros.scans.bag_files import mcap_is_finished
from leovl_ros.scans.bag_reader import bag_frames
from leovl_ros.training.data_cli import main as data_main
from leovl_ros.training.records import read_records

MSG = Path(__file__).resolve().parents[1] / "msg" / "Interaction.msg"
T0 = 1_700_000_000


def _msg_fields() -> list[str]:
    lines = [ln.split("#")[0].split() for ln in MSG.read_text().splitlines()]
    return [ln[1] for ln in lines if len(ln) == 2 and re.fullmatch(r"[a-z_]+", ln[1])]


def test_log_lines_hold_the_message_fields_and_a_torn_line_is_skipped(tmp_path):
    path = tmp_path / "sub" / "log.jsonl"
    log = InteractionLog(path)
    log.append(Interaction("q1", "", "ask", "qa", "How many chairs?", answer="three", anchor=(1.0, 2.0, 0.5),
                           anchor_radius=0.4, scene_stamp_s=T0 + 0.25), stamp_s=T0 + 1.5)
    log.append(Interaction("q1", "", "feedback", "qa", "How many chairs?", answer="three", corrected_answer="two"))
    log.close()
    with open(path, "a") as f:
        f.write('{"interaction_id": "q2", "kind": "fee')  # the node was killed mid-write
    records, bad = read_interaction_log(path)
    assert bad == 1 and [(r["interaction_id"], r["kind"]) for r in records] == [("q1", "ask"), ("q1", "feedback")]
    assert sorted(records[0]) == sorted(_msg_fields())  # exactly Interaction.msg, so bag code reads it as a message
    assert records[0]["header"]["stamp"] == {"sec": T0 + 1, "nanosec": 500_000_000}
    assert records[0]["has_anchor"] and records[0]["anchor"] == {"x": 1.0, "y": 2.0, "z": 0.5}
    assert records[0]["scene_stamp"] == {"sec": T0, "nanosec": 250_000_000}
    assert records[1]["corrected_answer"] == "two"
    with pytest.raises(ValueError, match="cannot open the interaction log"):
        InteractionLog(path / "not_a_dir.jsonl")


def _entry(iid: str, kind: str, stamp_s: float, answer: str, corrected: str = "") -> dict:
    ns = int(stamp_s * 1e9)
    return {"header": {"stamp": {"sec": ns // 10**9, "nanosec": ns % 10**9}}, "interaction_id": iid, "kind": kind,
            "task": "qa", "instruction": f"question {iid}?", "answer": answer, "corrected_answer": corrected}


def test_a_killed_bag_converts_and_log_entries_join_the_bag_they_belong_to(tmp_path, capsys, caplog):
    _, frames = tiny_scene(seed=0, num_frames=3, width=64, height=48)
    t = [f.stamp_ns * 1e-9 for f in frames]
    bag_msgs = [(frames[0].stamp_ns, _entry("a", "ask", t[0], "red")),
                (frames[1].stamp_ns, _entry("a", "feedback", t[1], "red", "blue"))]
    bag = write_bag(frames, tmp_path / "robot_run",
                    extra_messages=[BagExtra("interactions", "leovl_ros/msg/Interaction", MSG.read_text(), bag_msgs)])
    # The recorder was killed: no metadata.yaml, and the mcap lost its summary, footer and a torn tail.
    (bag / "metadata.yaml").unlink()
    mcap = next(bag.glob("*.mcap"))
    data = mcap.read_bytes()
    mcap.write_bytes(data[:len(data) - 60])
    assert not mcap_is_finished(mcap)
    got = list(bag_frames(bag))
    assert [g.stamp_s for g in got] == pytest.approx(t)
    assert all(np.array_equal(g.rgb, f.rgb) for g, f in zip(got, frames))

    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(e) for e in [
        _entry("a", "feedback", t[1], "red", "blue"),  # also in the bag: counted once
        _entry("b", "ask", t[2], "one"),
        _entry("b", "feedback", t[2] + 3600, "one", "two"),  # an hour later, of an answer given in the bag
        _entry("c", "feedback", t[0] - 3600, "x", "y"),  # before the recording: another scene
    ]) + "\n{torn")
    sft, pref = tmp_path / "sft.jsonl", tmp_path / "pref.jsonl"
    assert data_main(["from-bag", str(bag), "--interaction-log", str(log), "--out-sft", str(sft),
                      "--out-pref", str(pref)]) == 0
    assert [(r.id, r.response) for r in read_records(sft)] == [("a", "blue"), ("b", "two")]
    assert [(r.id, r.response, r.rejected) for r in read_records(pref)] == [("a", "blue", "red"), ("b", "two", "one")]
    out = capsys.readouterr().out
    assert "outside every bag's recording time" in out and "unreadable interaction-log line" in out
    assert "was not closed (recording killed?)" in caplog.text


def test_a_recording_with_nothing_written_is_a_clear_error(tmp_path, capsys):
    rec = tmp_path / "rec" / "00000"
    rec.mkdir(parents=True)
    (rec / "00000.mcap").write_bytes(b"")  # killed before the first flush
    args = ["from-bag", str(rec.parent), "--out-sft", str(tmp_path / "s"), "--out-pref", str(tmp_path / "p")]
    assert data_main(args) == 2
    assert "no recorded data survived" in capsys.readouterr().err
    shutil.rmtree(rec)
    assert data_main(args) == 2
    assert "holds no rosbag2 storage file" in capsys.readouterr().err
