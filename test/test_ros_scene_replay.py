"""scene_player replays recorded data into the node over real DDS, and the node maps what
``leovl-data build-scenes`` maps from the same data.

Six frames of synthetic room 0 are written as a ScanNet SensReader export and as a rosbag2
recording (leovl-synth's writers). build-scenes fuses both with a random tiny Qwen2.5-VL saved
to disk; the node loads the same checkpoint, the player streams each source (the scan at 4 Hz,
the bag at half its recorded speed), and ``save_scene`` writes the node's map.
Tolerance: the voxel sets are equal, and the mean features agree to 1e-4 (the node encodes one
image at a time, build-scenes four per batch: the same arithmetic in another order).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import next_domain_id

pytestmark = [pytest.mark.ros, pytest.mark.slow]
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
pytest.importorskip("leovl_ros.msg", reason="interfaces not built (run through `make test`)")
from rosgraph_msgs.msg import Clock  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from leovl_ros.camera_path import CameraPath  # noqa: E402
from leovl_ros.scene_cli import main as scene_main  # noqa: E402
from leovl_ros.srv import SaveScene  # noqa: E402
from leovl_ros.synth.render import DEFAULT_START_NS, render_frames  # noqa: E402
from leovl_ros.synth.rooms import generate_room  # noqa: E402
from leovl_ros.synth.writers import write_bag, write_scannet  # noqa: E402
from leovl_ros.voxel_map import VoxelMap  # noqa: E402
from leovl_ros.scans.bag_reader import bag_scene_id  # noqa: E402
from leovl_ros.training.data_cli import main as data_main  # noqa: E402
from leovl_ros.training.modeling import create_random_base  # noqa: E402

from support.node_harness import running_assistant, start, stop  # noqa: E402

FRAMES = 6


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The two recordings and build-scenes' maps of them."""
    tmp = tmp_path_factory.mktemp("replay")
    frames = render_frames(generate_room(0), FRAMES, 112, 84)
    scan = write_scannet(frames, tmp / "scannet" / "scene0000_00")
    bag = write_bag(frames, tmp / "robot_bag")
    base = create_random_base(tmp / "base", {"hidden_size": 64, "layers": 2}, seed=0)
    records = [{"scene_id": sid, "task": "qa", "instruction": "what is here?", "response": "a room", "source": "test"}
               for sid in ("scene0000_00", bag_scene_id(bag))]
    (tmp / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = tmp / "scenes.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(tmp / "out"), "model": {"base": str(base)}, "data": {"train": [str(tmp / "train.jsonl")]},
        "scenes": {"cache_dir": str(tmp / "cache"), "scannet_root": str(tmp / "scannet"), "scannet_stride": 1,
                   "bags": [str(bag)]}}))
    assert data_main(["build-scenes", "--config", str(config), "--cpu"]) == 0
    built = {sid: VoxelMap.load(next((tmp / "cache").glob(f"{sid}*.safetensors")))
             for sid in ("scene0000_00", bag_scene_id(bag))}
    return {"tmp": tmp, "scan": Path(scan), "bag": Path(bag), "base": Path(base), "built": built}


@pytest.fixture(scope="module")
def op(data):
    tmp = data["tmp"]
    with running_assistant(tmp, ["save_scene", "reset_scene"], params_file=None, model=data["base"],
                           max_keyframe_rate=0.0,  # build-scenes has no rate limit
                           scene_dir=tmp / "scenes", status_rate=5.0,
                           interaction_log=tmp / "interactions.jsonl") as operator:
        yield operator


def _play_and_save(op, params: list[str], name: str, tmp: Path) -> tuple[VoxelMap, Path]:
    assert op.call("reset_scene", Trigger.Request()).success
    op.wait_status(lambda s: s.frames_received == 0, 20.0, "an empty scene")
    log = tmp / f"player_{name}.log"
    player = start("leovl_ros.ros.scene_player", params, op.domain_id, log)
    try:
        assert player.wait(120) == 0, log.read_text()
    finally:
        stop(player)
    status = op.wait_status(lambda s: s.frames_received == FRAMES
                            and s.keyframes_fused + s.frames_dropped == s.frames_received, 60.0,
                            f"all {FRAMES} frames of {name} counted")
    drops = dict(zip(status.drop_reasons, status.drop_counts))
    assert set(drops) <= {"not a keyframe"}, drops  # nothing lost or skipped for lack of time
    res = op.call("save_scene", SaveScene.Request(path=f"{name}.safetensors"))
    assert res.success, res.message
    path = tmp / "scenes" / f"{name}.safetensors"
    return VoxelMap.load(path), path


def _assert_same_map(node_map: VoxelMap, built: VoxelMap) -> None:
    def rows(vmap: VoxelMap) -> tuple[list, torch.Tensor]:
        coords = vmap.coords.tolist()
        order = sorted(range(len(coords)), key=coords.__getitem__)
        return [coords[i] for i in order], vmap.means()[order]

    (c_node, f_node), (c_built, f_built) = rows(node_map), rows(built)
    assert c_node == c_built  # the same voxels
    assert torch.allclose(f_node, f_built, atol=1e-4, rtol=0), float((f_node - f_built).abs().max())


def test_a_scannet_export_played_live_maps_like_build_scenes(op, data):
    node_map, path = _play_and_save(op, ["-p", f"source:={data['scan']}", "-p", "rate:=4.0"], "scannet", data["tmp"])
    _assert_same_map(node_map, data["built"]["scene0000_00"])
    # save_scene carries the camera path: one position per fused keyframe, drawn by leovl-scene show
    status = op.status[-1]
    assert len(CameraPath.from_metadata(node_map.metadata).points) == status.keyframes_fused >= 3
    assert scene_main(["show", str(path), "--out", str(data["tmp"] / "scannet.png")]) == 0


def test_a_recorded_bag_played_at_half_speed_maps_like_build_scenes(op, data):
    clocks: list[Clock] = []
    op.node.create_subscription(Clock, "/clock", clocks.append, 100)
    node_map, _ = _play_and_save(op, ["-p", f"source:={data['bag']}", "-p", "speed:=0.5", "-p", "clock:=true"],
                                 "bag", data["tmp"])
    _assert_same_map(node_map, data["built"][bag_scene_id(data["bag"])])
    log = (data["tmp"] / "player_bag.log").read_text()
    assert "at 0.5x" in log and f"done: {2 * FRAMES} images sent" in log
    # /clock runs on the recording's time (frames stamped from DEFAULT_START_NS at 5 Hz), never backwards
    first, last = DEFAULT_START_NS * 1e-9, DEFAULT_START_NS * 1e-9 + (FRAMES - 1) / 5.0
    times = [c.clock.sec + c.clock.nanosec * 1e-9 for c in clocks]
    assert times and all(first - 1e-6 <= t <= last + 1e-6 for t in times), (first, last, times[:3], times[-3:])
    assert times == sorted(times)


def test_an_unplayable_source_stops_the_player_with_one_line(tmp_path):
    log = tmp_path / "player.log"
    player = start("leovl_ros.ros.scene_player", ["-p", f"source:={tmp_path}"], next_domain_id(), log)
    try:
        assert player.wait(60) == 2
    finally:
        stop(player)
    ours = [line for line in log.read_text().splitlines() if "[rcl]" not in line]  # rcl's environment notices
    assert len(ours) == 1 and ours[0].startswith("[leovl_scene_player] cannot play:"), ours
    assert "neither a rosbag2 recording nor a scan folder" in ours[0]
