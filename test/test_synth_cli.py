"""`leovl-synth` CLI: byte-identical reruns, splits by room, manifest, refusal to clobber."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leovl_ros.synth.cli import main, split_rooms

ARGS = ["--rooms", "3", "--seed", "20", "--frames", "3", "--width", "64", "--height", "48", "--quiet"]


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("a") / "set", tmp_path_factory.mktemp("b") / "set"
    assert main(ARGS + ["--out", str(a), "--bag", "sqlite3"]) == 0
    assert main(ARGS + ["--out", str(b), "--bag", "sqlite3"]) == 0
    return a, b


def test_same_seed_gives_byte_identical_output(runs):
    a, b = runs
    ta, tb = _tree(a), _tree(b)
    assert ta.keys() == tb.keys() and len(ta) > 30
    assert [k for k in ta if ta[k] != tb[k]] == []
    assert not [k for k in ta if Path(k).name.startswith(".")]  # no temporary files left


def test_manifest_splits_and_annotations(runs):
    out, _ = runs
    m = json.loads((out / "manifest.json").read_text())
    ids = ["synth_000020", "synth_000021", "synth_000022"]
    assert sorted(r["scene_id"] for r in m["rooms"]) == ids
    assert sorted(sum(m["splits"].values(), [])) == ids and all(m["splits"][s] for s in ("train", "val", "test"))
    for split, rel in m["annotations"].items():
        recs = [json.loads(line) for line in (out / rel).read_text().splitlines()]
        assert len(recs) == m["records"][split] > 0
        assert {r["scene_id"] for r in recs} == set(m["splits"][split])  # a room's records stay in its split
    for r in m["rooms"]:
        assert (out / r["scene_dir"] / "scene_graph.json").is_file()
        assert (out / r["bag"] / "metadata.yaml").is_file()
        assert len(list((out / r["scene_dir"] / "depth").iterdir())) == 3


def test_outward_views_change_the_poses_and_are_recorded(runs, tmp_path):
    out = tmp_path / "outward"
    assert main(ARGS + ["--out", str(out), "--outward-every", "2"]) == 0
    assert json.loads((out / "manifest.json").read_text())["render"]["outward_every"] == 2
    poses = {}
    for name, root in (("inward", runs[0]), ("outward", out)):
        poses[name] = [(root / "scenes/synth_000020/pose" / f"{i}.txt").read_text() for i in range(3)]
    assert [a == b for a, b in zip(poses["inward"], poses["outward"])] == [True, False, True]  # frame 1 turned


def test_refuses_existing_set_and_bad_args(runs, capsys):
    out, _ = runs
    assert main(ARGS + ["--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--rooms", "0", "--out", str(out / "x")]) == 2
    assert main(ARGS + ["--out", str(out / "y"), "--outward-every", "1"]) == 2
    assert "--outward-every" in capsys.readouterr().err
    with pytest.raises(ValueError, match="ratios"):
        split_rooms(["a", "b"], [0.5, 0.6, 0.1], 0)


def test_split_is_by_room_and_deterministic():
    ids = [f"r{i}" for i in range(20)]
    s = split_rooms(ids, [0.8, 0.1, 0.1], 3)
    assert s == split_rooms(ids, [0.8, 0.1, 0.1], 3)
    assert [len(s[k]) for k in ("train", "val", "test")] == [16, 2, 2]
    assert sorted(sum(s.values(), [])) == sorted(ids)


def test_module_entry_point_reproduces_rooms_across_processes(runs, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "leovl_ros.synth.cli", "--rooms", "1", "--seed", "21", "--frames", "3",
                           "--width", "64", "--height", "48", "--bag", "sqlite3", "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 rooms" in proc.stdout
    for sub in ("scenes/synth_000021", "bags/synth_000021"):
        assert _tree(tmp_path / "o" / sub) == _tree(runs[0] / sub)
