"""Files and swaps a robot user meets (issue 27 item 6): a save killed mid-write, a path the
file system cannot take, an adapter of another voxel size, an interaction log that cannot
be written."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import next_domain_id, wait_for
from leovl_ros.assistant import AssistantConfig, RequestRefused, SceneSession
from leovl_ros.assistant import scene_files
from leovl_ros.model.config import LeoVLConfig
from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.tiny import tiny_qwen25vl_config
from leovl_ros.synth.render import tiny_scene
from leovl_ros.voxel_map import remove_stale_temps

REPO = Path(__file__).resolve().parents[1]
_SAVER = """
import sys, torch
from leovl_ros.voxel_map import VoxelMap
m = VoxelMap(feature_dim=256, voxel_size=0.05, max_voxels=400_000)
m.fuse(torch.rand(300_000, 3) * 20, torch.randn(300_000, 256))
print("saving", flush=True)
m.save(sys.argv[1])
"""


def test_a_save_killed_mid_write_leaves_only_our_temp_which_start_up_removes(tmp_path):
    """safetensors >= 0.7 writes its own '.tmpXXXXXX' beside the target: a SIGKILL left it (issue 27)."""
    for attempt in range(5):
        scenes = tmp_path / f"scenes{attempt}"
        scenes.mkdir()
        saver = subprocess.Popen([sys.executable, "-c", _SAVER, str(scenes / "scene.safetensors")], cwd=REPO,
                                 stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert saver.stdout.readline().strip() == "saving"
        wait_for(lambda: any(scenes.iterdir()) or saver.poll() is not None, 60.0, "the save to start")
        saver.send_signal(signal.SIGKILL)
        saver.wait(10)
        if not (scenes / "scene.safetensors").exists():  # killed mid-write (else the save won the race)
            break
    else:
        pytest.skip("the save always finished before SIGKILL reached it")
    left = sorted(p.name for p in scenes.iterdir())
    assert left and all(name.endswith(".leovl-tmp") for name in left), left  # nothing under a foreign name
    assert sorted(p.name for p in remove_stale_temps(scenes)) == left
    assert not any(scenes.iterdir())


def test_a_path_the_file_system_cannot_take_is_refused_not_an_internal_error(tmp_path):
    config = AssistantConfig(scene_dir=str(tmp_path))
    for path in ["a" * 5000, str(tmp_path / "/".join(["b" * 200] * 25)), "c" * 256 + ".safetensors"]:
        with pytest.raises(RequestRefused, match="path too long"):
            scene_files.save_target(config, path, overwrite=False)
        with pytest.raises(RequestRefused, match="path too long"):
            scene_files.resolve(config, path)
    assert scene_files.save_target(config, "d" * 200, overwrite=False) == tmp_path / ("d" * 200)


def _model(voxel_size: float) -> LeoVL:
    qwen = tiny_qwen25vl_config()
    return LeoVL.from_config(qwen, LeoVLConfig(base_model="tiny-random", hidden_size=qwen.text_config.hidden_size,
                                               voxel_size=voxel_size), seed=0)


def test_an_adapter_of_another_voxel_size_keeps_the_live_map_rebinned_and_says_so(tmp_path):
    _model(0.3).save_bundle(tmp_path / "coarse")
    session = SceneSession(_model(0.2), AssistantConfig(max_keyframe_rate=0.0, num_beams=1, max_new_tokens=4),
                           "tiny-random")
    try:
        for f in tiny_scene(seed=2, num_frames=4)[1]:
            session.offer(f.rgbd())
            assert session.wait_idle(60.0)
        before = session.snapshot()
        extent = (before.centers.max(0).values - before.centers.min(0).values)
        session.load_adapter(str(tmp_path / "coarse"))
        after = session.snapshot()
        assert after.voxel_size == 0.3 and 0 < after.num_voxels < before.num_voxels  # kept, coarser
        assert ((after.centers.max(0).values - after.centers.min(0).values) - extent).abs().max() <= 0.3 + 1e-6
        assert session.swap_note.startswith("scene kept") and f"{before.num_voxels} voxels" in session.swap_note
        assert session.ask("what is here?").success
    finally:
        session.close()


def test_an_unwritable_interaction_log_stops_the_node_before_the_model_loads(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
    (tmp_path / "a_file").write_text("")
    from support.node_harness import env
    log = tmp_path / "a_file" / "log.jsonl"
    done = subprocess.run([sys.executable, "-m", "leovl_ros.ros.assistant_node", "--ros-args",
                           "-p", f"model:={tmp_path / 'not_loaded_yet'}", "-p", f"interaction_log:={log}"],
                          cwd=REPO, env=env(next_domain_id()), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "cannot start: parameter 'interaction_log'" in done.stderr and "Traceback" not in done.stderr
