"""SceneSession (ROS-free): keyframe mapping off the caller's thread, answers, refusals,
bounded queues and histories, save/load, feedback and adapter hot swaps, on a real tiny
random LEO-VL and a rendered synthetic room."""
from __future__ import annotations

import math
from dataclasses import replace
import threading

import numpy as np
import pytest
import torch

from leovl_ros.assistant import (AssistantConfig, RGBDFrame, RequestRefused, SceneSession, grid_cloud, grid_stats,
                                 split_plan_steps)
from leovl_ros.condensed_grid import GridConfig, build_grid
from leovl_ros.fusion import FusionSettings
from leovl_ros.model import bundle as bundle_io
from leovl_ros.model.config import ConfigOverrides, GenerationConfig, LeoVLConfig
from leovl_ros.model.leovl import LeoVL
from leovl_ros.model.prompts import SceneQuery
from leovl_ros.model.tiny import tiny_qwen25vl_config
from leovl_ros.synth.render import tiny_scene
from leovl_ros.voxel_map import VoxelMap

FAST = {"num_beams": 1, "max_new_tokens": 6}  # AssistantConfig keys (the node parameters)


def _model() -> LeoVL:
    qwen = tiny_qwen25vl_config()
    return LeoVL.from_config(qwen, LeoVLConfig(base_model="tiny-random", hidden_size=qwen.text_config.hidden_size),
                             seed=0)


@pytest.fixture(scope="module")
def model() -> LeoVL:
    """One model for the module: sessions only read it (the adapter swap test runs last)."""
    return _model()


@pytest.fixture(scope="module")
def frames():
    return tiny_scene(seed=3, num_frames=8)[1]


def _rgbd(f, depth_m=None, T=None) -> RGBDFrame:
    base = f.rgbd()
    return RGBDFrame(base.rgb, base.depth_m if depth_m is None else depth_m, base.intrinsics,
                     base.T_map_camera if T is None else T, base.stamp_s)


@pytest.fixture(scope="module")
def mapped(model, frames):
    """A session that fused the room (shared by tests that only read it)."""
    session = SceneSession(model, AssistantConfig(**FAST, max_keyframe_rate=0.0), "tiny-random")
    for f in frames:
        session.offer(_rgbd(f))
        assert session.wait_idle(60.0)  # one at a time: every keyframe gets fused
    yield session
    session.close()


def _session(model: LeoVL, **overrides) -> SceneSession:
    return SceneSession(model, AssistantConfig(**FAST, **overrides), "tiny-random")


def test_keyframes_are_fused_and_counted(mapped, frames):
    s = mapped.stats()
    assert s.frames_received == len(frames)
    assert 1 <= s.keyframes_fused <= len(frames)
    assert s.frames_dropped == len(frames) - s.keyframes_fused == s.drops.get("not a keyframe", 0)
    assert s.num_voxels > 20 and s.newest_frame_stamp_s == pytest.approx(frames[-1].stamp_ns * 1e-9)
    grid = build_grid(mapped.snapshot(), mapped.model.config.grid)
    assert (s.num_tokens, s.compression_rate, s.preservation_rate) == (
        grid.num_tokens, pytest.approx(grid.compression_rate), pytest.approx(grid.preservation_rate))


def test_grid_stats_match_build_grid_for_every_mode_and_a_tight_cap(mapped):
    vmap = mapped.snapshot()
    for mode in ("cfg", "voxel_full", "voxel_sample"):
        config = GridConfig(max_tokens=7, grid=mode)
        g = build_grid(vmap, config)
        assert grid_stats(vmap, config) == (g.num_tokens, pytest.approx(g.compression_rate),
                                            pytest.approx(g.preservation_rate)), mode
    assert grid_stats(VoxelMap(8), GridConfig()) == (0, 0.0, 1.0)


def test_grid_cloud_places_cells_on_their_columns(mapped):
    vmap = mapped.snapshot()
    xyz, summary, voxels = grid_cloud(vmap, mapped.model.config.grid)
    grid = build_grid(vmap, mapped.model.config.grid)
    assert xyz.shape == (grid.num_tokens, 3) and summary.shape == voxels.shape == (grid.num_tokens,)
    np.testing.assert_allclose(xyz[:, :2], grid.xy.numpy())
    z = vmap.centers[:, 2].numpy()
    assert z.min() - 1e-6 <= xyz[:, 2].min() and xyz[:, 2].max() <= z.max() + 1e-6
    assert summary.min() == 0.0 and summary.max() == pytest.approx(1.0) and len(np.unique(summary)) > 3
    assert voxels.sum() == pytest.approx(grid.preservation_rate * vmap.num_voxels)


def test_a_slow_encoder_drops_keyframes_instead_of_queueing_them(model, frames):
    session = _session(model, max_keyframe_rate=0.0,
                       fusion=FusionSettings(keyframe_translation_m=0.0, keyframe_rotation_deg=0.0))
    try:
        for i in range(40):  # far faster than the encoder: at most one frame may wait
            session.offer(_rgbd(frames[i % len(frames)]))
        assert session.wait_idle(60.0)
        s = session.stats()
        assert s.frames_received == 40
        assert s.drops.get("encoder busy", 0) >= 30
        assert s.keyframes_fused + s.frames_dropped == 40
    finally:
        session.close()


def test_invalid_depth_and_poses_are_dropped_not_fused(model, frames):
    session = _session(model, max_keyframe_rate=0.0)
    try:
        f = frames[0]
        session.offer(_rgbd(f, depth_m=np.full(f.depth_mm.shape, np.nan, np.float32)))
        assert session.wait_idle(60.0)
        session.offer(_rgbd(f, depth_m=np.zeros(f.depth_mm.shape, np.float32), T=frames[4].T_map_camera))
        session.offer(_rgbd(f, T=np.full((4, 4), np.inf)))
        assert session.wait_idle(60.0)
        session.reject_frame("no pose", "no pose within 0.05 s")
        s = session.stats()
        assert s.num_voxels == 0 and s.keyframes_fused == 0 and s.frames_received == 4
        assert s.drops == {"no valid depth": 2, "invalid pose": 1, "no pose": 1}
        with pytest.raises(RequestRefused, match="scene is empty"):
            session.ask("what is here?")
    finally:
        session.close()


def test_ask_answers_with_tokens_grounding_and_a_recorded_interaction(mapped):
    reply = mapped.ask("what colour is the table?", situation="I face the door.")
    r = reply.interaction
    assert reply.success and reply.answer and reply.message == ""
    assert r.kind == "ask" and r.task == "qa" and r.instruction == "what colour is the table?"
    assert r.scene_tokens == mapped.stats().num_tokens > 0
    assert r.latency > 0 and math.isfinite(r.grounding_score) and r.grounding_score != 0.0
    assert r.scene_stamp_s == mapped.stats().newest_frame_stamp_s
    fb = mapped.feedback(r.interaction_id, " a brown one ", comment="wrong colour")
    assert (fb.kind, fb.interaction_id, fb.answer, fb.corrected_answer) == ("feedback", r.interaction_id,
                                                                          reply.answer, "a brown one")


def test_object_caption_uses_the_anchor_and_plans_are_split(mapped):
    center = tuple(mapped.snapshot().centers[0].tolist())
    reply = mapped.ask("describe this object", task="object_caption", anchor=center, anchor_radius=0.0)
    assert reply.success and reply.interaction.anchor == center
    assert reply.interaction.anchor_radius == mapped.model.config.anchor_radius  # 0 -> the default
    box = mapped.ask("describe this object", task="object_caption", anchor=center, anchor_size=(0.4, 0.4, 0.6))
    assert box.success and box.interaction.anchor_size == (0.4, 0.4, 0.6) and box.interaction.anchor_radius == 0.0
    plan = mapped.plan("tidy the room")
    assert plan.success and plan.steps == split_plan_steps(plan.answer) and plan.steps
    assert plan.interaction.kind == "plan" and plan.interaction.instruction == "tidy the room"


@pytest.mark.parametrize("kwargs,match", [
    (dict(question=""), "question is empty"),
    (dict(question="x" * 501), "501 characters; the limit is 500"),
    (dict(question="q", situation="s" * 600), "situation has 600"),
    (dict(question="q", task="translate"), "unknown task 'translate'"),
    (dict(question="describe it", task="object_caption"), "needs use_anchor"),
    (dict(question="q", anchor=(math.nan, 0.0, 0.0)), "must be finite"),
    (dict(question="q", anchor=(0.0, 0.0, 0.0), anchor_size=(1.0, -1.0, 1.0)), "sizes >= 0"),
])
def test_bad_requests_are_refused_with_an_actionable_message(mapped, kwargs, match):
    with pytest.raises(RequestRefused, match=match):
        mapped.ask(**kwargs)


def test_feedback_needs_a_known_interaction_and_a_correction(mapped):
    with pytest.raises(RequestRefused, match="unknown interaction_id 'nope'"):
        mapped.feedback("nope", "fine")
    with pytest.raises(RequestRefused, match="corrected_answer is empty"):
        mapped.feedback("nope", "  ")


def test_dialogue_history_is_per_session_and_bounded(model, frames):
    session = _session(model, history_turns=2, max_sessions=2, max_keyframe_rate=0.0)
    try:
        session.offer(_rgbd(frames[0]))
        assert session.wait_idle(60.0)
        for i in range(3):
            assert session.ask(f"turn {i}?", session_id="a").interaction.task == "dialogue"
        assert [q for q, _ in session.history("a")] == ["turn 1?", "turn 2?"]
        session.ask("hello?", session_id="b")
        session.ask("hi?", session_id="c")  # three sessions: the least recently used one goes
        assert session.history("a") is None and session.history("b") and session.history("c")
        assert session.ask("no session?").interaction.task == "qa" and session.history("") is None
    finally:
        session.close()


def test_a_model_failure_is_refused_logged_once_and_survived(model, frames):
    logs = []
    session = SceneSession(model, AssistantConfig(**FAST), "tiny-random", log=lambda *a: logs.append(a))
    broken = {**FAST, "do_sample": True, "temperature": 0.0}  # HF rejects it
    model.set_overrides(ConfigOverrides(generation=broken))
    try:
        session.offer(_rgbd(frames[0]))
        assert session.wait_idle(60.0)
        for _ in range(3):
            with pytest.raises(RequestRefused, match=r"the model failed \(ValueError: `temperature`"):
                session.ask("what is here?")
        assert len(logs) == 1 and logs[0][0] == "error" and "model failure on ask" in logs[0][1]  # throttled
        model.set_overrides(session.config.model_overrides())
        assert session.ask("what is here?").success  # the slot and the model lock were released
    finally:
        session.close()


def test_concurrent_requests_are_answered_or_refused_as_busy(model, frames):
    session = _session(model, max_pending_requests=2)
    session.offer(_rgbd(frames[0]))
    assert session.wait_idle(60.0)
    barrier, results = threading.Barrier(6), []

    def ask(i: int) -> None:
        barrier.wait()
        try:
            results.append(session.ask(f"question {i}?").success)
        except RequestRefused as exc:
            results.append(str(exc))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120.0)
    finally:
        session.close()
    refused = [r for r in results if r is not True]
    assert len(results) == 6 and 1 <= results.count(True) <= 5 and refused
    assert all("busy: 2 requests" in r for r in refused)


def test_save_reset_load_restores_the_same_grid(mapped, tmp_path):
    before = build_grid(mapped.snapshot(), mapped.model.config.grid)
    mapped.config.scene_dir = str(tmp_path)
    path, n = mapped.save(str(tmp_path / "room.safetensors"))
    assert path.is_file() and n == before.num_voxels
    (tmp_path / "junk.safetensors").write_bytes(b"not a map")
    VoxelMap(feature_dim=8).save(tmp_path / "foreign.safetensors")
    assert mapped.reset() == n and mapped.stats().num_voxels == 0
    for bad, match in (("junk.safetensors", "not a readable"), ("foreign.safetensors", "8-dim features"),
                       ("missing.safetensors", "does not exist"), ("", "path is required")):
        with pytest.raises(RequestRefused, match=match):
            mapped.load(bad)
    assert mapped.stats().num_voxels == 0  # failed loads leave the scene as it was
    loaded, m = mapped.load("room.safetensors")  # relative: under scene_dir
    assert loaded == path and m == n
    after = build_grid(mapped.snapshot(), mapped.model.config.grid)
    torch.testing.assert_close(after.features, before.features)
    torch.testing.assert_close(after.xy, before.xy)
    default_path, _ = mapped.save("")
    assert default_path.parent == tmp_path and default_path.name.startswith("scene_")


def test_load_adapter_swaps_bundles_and_keeps_the_old_one_on_failure(mapped, tmp_path):
    other = _model()
    with torch.no_grad():
        for p in other.heads.parameters():
            p.add_(0.5)
    other.save_bundle(tmp_path / "bundle")
    (tmp_path / "empty").mkdir()
    old_anchor = mapped.model.heads.anchor.detach().clone()
    with pytest.raises(RequestRefused, match="the previous adapter stays in use"):
        mapped.load_adapter(str(tmp_path / "empty"))
    assert mapped.model_name == "tiny-random"
    torch.testing.assert_close(mapped.model.heads.anchor, old_anchor)
    name = mapped.load_adapter(str(tmp_path / "bundle"))
    assert name == f"tiny-random+{tmp_path / 'bundle'}" == mapped.stats().model
    torch.testing.assert_close(mapped.model.heads.anchor.detach(), old_anchor + 0.5)
    assert mapped.stats().num_voxels > 0  # same encoder: the scene stays usable
    assert mapped.ask("what is here?").success
    with pytest.raises(RequestRefused, match="not a bundle directory"):
        mapped.load_adapter(str(tmp_path / "nowhere"))


def test_the_session_settings_hold_across_an_adapter_swap_and_never_touch_the_model_config(frames, tmp_path):
    live = _model()
    _model().save_bundle(tmp_path / "bundle")  # stores the defaults: 0.2 m voxels, 750 tokens, densest, 5 beams
    stored = bundle_io.read_config(tmp_path / "bundle")
    gen = GenerationConfig(num_beams=2, max_new_tokens=5, repetition_penalty=1.5, length_penalty=0.5)
    settings = AssistantConfig(voxel_size=0.1, max_tokens=7, token_selection="nearest", max_keyframe_rate=0.0,
                               num_beams=2, max_new_tokens=5, repetition_penalty=1.5, length_penalty=0.5)
    session = SceneSession(live, settings, "tiny-random")
    try:
        for f in frames:
            session.offer(_rgbd(f))
            assert session.wait_idle(60.0)
        session.load_adapter(str(tmp_path / "bundle"))
        assert live.stored_config == stored and stored.grid == GridConfig() and stored.voxel_size == 0.2
        assert live.config.generation == gen and live.config.voxel_size == 0.1
        assert live.config.grid == GridConfig(max_tokens=7, token_selection="nearest")
        vmap = session.snapshot()
        assert vmap.voxel_size == 0.1 and vmap.num_voxels > 7  # the 0.1 m scene survives the swap
        truth = build_grid(vmap, GridConfig(max_tokens=7, token_selection="nearest"), incremental=False)
        assert session.stats().num_tokens == truth.num_tokens == 7
        reply = session.ask("what is here?")
        query = SceneQuery("qa", "what is here?")
        assert reply.answer == live.generate([vmap], [query], gen)[0]  # decoded with the node's settings
    finally:
        session.close()
    assert bundle_io.read_config(tmp_path / "bundle") == stored


def test_split_plan_steps():
    assert split_plan_steps("1. go to the desk. 2. pick up the mug 3) put it away") == [
        "go to the desk.", "pick up the mug", "put it away"]
    assert split_plan_steps("Plan: Step 1: walk\nStep 2: stop") == ["walk", "stop"]
    assert split_plan_steps("Walk to the sofa. Sit down; relax") == ["Walk to the sofa.", "Sit down", "relax"]
    assert split_plan_steps("  ") == [] and split_plan_steps("put 2 cups on 1 table") == ["put 2 cups on 1 table"]


def test_a_dead_mapping_worker_is_reported_and_restarted(model, frames):
    """A worker killed by a BaseException (a bug, not a bad frame) must not leave mapping
    silently dead: the next stats() restarts it, counts it and logs it."""
    logged = []
    session = SceneSession(model, AssistantConfig(**FAST), "tiny", lambda level, text: logged.append((level, text)))
    encode = model.encoder.encode

    def crash(rgb):
        raise SystemExit("encoder thread killed")

    try:
        model.encoder.encode = crash
        session.offer(_rgbd(frames[0]))
        session._worker.join(10.0)
        assert not session._worker.is_alive()
        model.encoder.encode = encode
        assert session.stats().worker_restarts == 1 and session._worker.is_alive()
        assert any(level == "error" and "mapping worker died" in text for level, text in logged)
        session.offer(_rgbd(frames[1]))
        assert session.wait_idle(30.0) and session.stats().keyframes_fused == 1
    finally:
        model.encoder.encode = encode
        session.close()


def test_a_logger_that_raises_never_stops_mapping(model, frames):
    def broken_log(level, text):
        raise ValueError("Logger severity cannot be changed between calls.")

    session = SceneSession(model, AssistantConfig(**FAST), "tiny", broken_log, log_period_s=0.0)
    try:
        bad = _rgbd(frames[0], depth_m=np.zeros(frames[0].depth_mm.shape, np.float32))  # warned about, with a raising logger
        session.offer(bad)
        assert session.wait_idle(30.0)
        session.offer(_rgbd(frames[1]))
        assert session.wait_idle(30.0)
        s = session.stats()
        assert s.drops.get("no valid depth") == 1 and s.keyframes_fused == 1 and s.worker_restarts == 0
    finally:
        session.close()


def test_saves_stay_inside_the_writable_dirs_and_killed_saves_are_cleaned(mapped, tmp_path):
    from leovl_ros.voxel_map import TEMP_SUFFIX
    mapped.config.scene_dir, mapped.config.scene_write_dirs = str(tmp_path / "scenes"), str(tmp_path / "extra")
    for path in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "/etc/passwd"):
        with pytest.raises(RequestRefused, match="refusing to write"):
            mapped.save(path)
    assert mapped.save(str(tmp_path / "extra" / "a.safetensors"))[0].is_file()
    (tmp_path / "scenes").mkdir(exist_ok=True)
    (tmp_path / "scenes" / "plain.txt").write_text("keep me")
    with pytest.raises(RequestRefused, match="overwrite=true"):
        mapped.save("plain.txt")
    assert (tmp_path / "scenes" / "plain.txt").read_text() == "keep me"
    folder, _ = mapped.save("sub/")
    assert folder.parent == tmp_path / "scenes" / "sub" and folder.name.startswith("scene_")
    stale = tmp_path / "extra" / f".a.safetensors.999999999.abc{TEMP_SUFFIX}"
    stale.write_bytes(b"x")
    assert mapped.remove_stale_temps() == [stale] and not stale.exists()


def test_a_full_map_evicts_counts_warns_once_and_questions_use_the_column_sums(model, frames):
    logs, stored = [], model.stored_config
    session = SceneSession(model, AssistantConfig(**FAST, max_keyframe_rate=0.0, max_voxels=60,
                                                  eviction="least_recent", token_selection="nearest"),
                           "tiny-random", log=lambda *a: logs.append(a))
    try:
        for f in frames:
            session.offer(_rgbd(f))
            assert session.wait_idle(60.0)
        s = session.stats()
        assert s.num_voxels <= 60 and s.voxels_evicted > 0 and s.points_dropped_full == 0
        assert sum("the map is full" in text for _, text in logs) == 1  # throttled: once, not per frame
        vmap = session.snapshot()
        assert vmap.columns is not None and vmap.columns.rope  # kept at fusion time
        last = min(frames, key=lambda f: abs(f.stamp_ns * 1e-9 - s.newest_frame_stamp_s))  # the newest keyframe
        np.testing.assert_allclose(vmap.viewpoint, last.T_map_camera[:3, 3])  # nearest centres on the camera
        config = replace(model.config.grid, max_tokens=4)
        assert config.token_selection == "nearest"
        fast, ref = build_grid(vmap, config), build_grid(vmap, config, incremental=False)
        torch.testing.assert_close(fast.features, ref.features, atol=1e-5, rtol=0)
        assert grid_stats(vmap, config) == (fast.num_tokens, pytest.approx(fast.compression_rate),
                                            pytest.approx(fast.preservation_rate))
        assert session.ask("what is here?").success
    finally:
        session.close()
        model.set_overrides(ConfigOverrides(generation=FAST))  # as the other sessions on this model
    assert model.stored_config is stored  # the session's settings never change the model's own config
    with pytest.raises(ValueError, match="eviction"):
        AssistantConfig(eviction="oldest")
