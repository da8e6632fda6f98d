"""`make demo`: the assistant node on the bundled model, mapping a synthetic room live.

Starts two real processes on a private ROS domain (loopback only): ``leovl_assistant`` with
``config/assistant.yaml`` and ``scene_player`` streaming a held-out synthetic room as
rgb/depth/camera_info + pose topics. Once the node has fused the walk-through, it asks
questions of each kind, one object caption at an anchor and one plan through the real
services, and prints every answer with latency, scene tokens and grounding score next to
the room's ground truth.

``--source PATH`` (``make demo SOURCE=PATH``) plays a recorded scan (any layout training
reads) or a rosbag2 recording instead; there is no ground truth then, so it asks generic
questions and prints the answers alone. ``--picture map.png`` saves the mapped scene and
draws it (``leovl-scene show``).
"""
from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import MultiThreadedExecutor

from leovl_ros.msg import SceneStatus
from leovl_ros.srv import AskScene, PlanTask, SaveScene

from ..synth.annotate import annotate_room
from ..synth.language import PLAN_Q
from ..synth.rooms import generate_room
from .dds import use_large_image_profile
from .demo_pacing import MapSettled, choose_rate, choose_stride, node_settings, scan_poses
from .model_source import BUNDLED_MODEL, TINY_RANDOM, ParameterError, resolve_model
from .replay_sources import detect_kind

REPO = Path(__file__).resolve().parents[2]
PARAMS_FILE = REPO / "config" / "assistant.yaml"
QTYPES = ("colour", "count", "existence", "above_below", "left_right", "nearest")
# Recorded sources have no annotations: questions any indoor scene can answer, and one goal.
GENERIC_QUESTIONS = ("What kind of room is this?", "What objects are in this room?",
                     "What is the largest piece of furniture here?", "Where could I sit down?",
                     "What colour are the walls?", "Is there a table in this room?")
GENERIC_GOAL = "tidy up this room"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="leovl-tiny", help="node parameter `model` (default: the bundled model)")
    ap.add_argument("--seed", type=int, default=900_001, help="synthetic room seed (held out from training)")
    ap.add_argument("--questions", type=int, default=4, help="QA questions to ask (one per type, in order)")
    # The bundled model was trained on maps of 30 frames at 448x336 along the same path.
    ap.add_argument("--frames", type=int, default=30, help="frames of the walk-through")
    ap.add_argument("--size", default="448x336", help="camera resolution WxH")
    ap.add_argument("--rate", type=float, default=None, help="frame rate (Hz) of the stream (default: 60%% of the "
                                                             "node's max_keyframe_rate, see demo_pacing.py)")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds allowed for start-up and mapping")
    ap.add_argument("--source", default="", help="play this scan folder or rosbag2 recording instead of a "
                                                 "synthetic room (generic questions, no ground truth)")
    ap.add_argument("--stride", type=int, default=0, help="scans: play every n-th frame (default: chosen from "
                                                          "the scan's poses, see demo_pacing.py)")
    ap.add_argument("--picture", default="", help="also save the mapped scene and draw it to this PNG")
    return ap.parse_args(argv)


class Demo:
    """Operator side: clients, a status subscription and the two child processes."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args, self.workdir = args, workdir
        self.domain_id = int(os.environ.get("ROS_DOMAIN_ID") or random.randint(1, 100))
        use_large_image_profile()  # this process and its children: camera-size images arrive whole
        self.env = dict(os.environ, ROS_DOMAIN_ID=str(self.domain_id), ROS_LOCALHOST_ONLY="1",
                        ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1")
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.node = rclpy.create_node("leovl_demo", context=self.context)
        self.status: list[SceneStatus] = []
        self.node.create_subscription(SceneStatus, "scene_status", self.status.append, 10)
        self.ask = self.node.create_client(AskScene, "ask_scene")
        self.plan = self.node.create_client(PlanTask, "plan_task")
        self.save = self.node.create_client(SaveScene, "save_scene")
        self.executor = MultiThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, module: str, params: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "w")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", module, "--ros-args", *params], cwd=REPO, env=self.env,
            stdout=log, stderr=subprocess.STDOUT)

    def log_tail(self, name: str, n: int = 15) -> str:
        return "\n".join((self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-n:])

    def wait(self, condition, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            node = self.procs.get("assistant")
            if node is not None and node.poll() is not None:
                raise RuntimeError(f"the assistant exited while waiting for {what}:\n{self.log_tail('assistant')}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(0.05)

    def call(self, client, request, timeout: float = 300.0):
        future = client.call_async(request)
        self.wait(future.done, timeout, f"{client.srv_name} to answer")
        return future.result()

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def _goal_of(instruction: str) -> str:
    """Recover the goal from a synthetic plan instruction (plan_task takes the bare goal)."""
    for template in PLAN_Q:
        pattern = re.escape(template).replace(re.escape("{g}"), "(.+)")
        match = re.fullmatch(pattern, instruction)
        if match:
            return match.group(1)
    return instruction


def _print_answer(kind: str, asked: str, res, truth: str | None) -> None:
    print(f"\n[{kind}] {asked}")
    if not res.success:
        print(f"  refused: {res.message}")
        return
    answer = res.answer if kind != "plan" else "\n    ".join(
        f"{s.index}. {s.instruction}" for s in res.plan.steps) or res.plan.raw_text
    print(f"  answer : {answer}")
    if truth is not None:
        print(f"  truth  : {truth}")
    if kind == "plan":
        print(f"  latency {res.latency:.2f} s")
    else:
        print(f"  latency {res.latency:.2f} s | scene tokens {res.scene_tokens} | grounding {res.grounding_score:+.2f}")


def _usable_model(model: str) -> str:
    """The model to run: a missing bundled model falls back, loudly, to the untrained one."""
    try:
        resolve_model(model)
        return model
    except ParameterError as exc:
        if model != BUNDLED_MODEL:
            raise RuntimeError(str(exc)) from None
        print(f"WARNING: {exc}\nWARNING: running the untrained '{TINY_RANDOM}' model instead: its answers are "
              "noise; the pipeline (mapping, services, timings) is real.", flush=True)
        return TINY_RANDOM


def _ask_synthetic(demo: Demo, args: argparse.Namespace, records: list[dict]) -> tuple[int, int, tuple | None]:
    """Questions of each type, an object caption at an anchor and a plan, next to the ground truth:
    (requests, failures, the caption's anchor (centre, radius))."""
    failures = 0
    for qtype in QTYPES[:args.questions]:
        rec = next(r for r in records if r.get("qtype") == qtype)
        res = demo.call(demo.ask, AskScene.Request(question=rec["instruction"], situation=rec.get("situation", "")))
        shown = (f"({rec['situation']}) " if rec.get("situation") else "") + rec["instruction"]
        _print_answer(f"qa/{qtype}", shown, res, rec["response"])
        failures += not res.success
    cap = next(r for r in records if r["task"] == "object_caption")
    req = AskScene.Request(question=cap["instruction"], task="object_caption", use_anchor=True,
                           anchor_radius=float(cap["anchor"]["radius"]))
    req.anchor_point.x, req.anchor_point.y, req.anchor_point.z = (float(v) for v in cap["anchor"]["center"])
    res = demo.call(demo.ask, req)
    centre = ", ".join(f"{v:.2f}" for v in cap["anchor"]["center"])
    _print_answer("object caption", f"{cap['instruction']} (anchor at {centre} m)", res, cap["response"])
    failures += not res.success
    plan = next(r for r in records if r["task"] == "plan")
    goal = _goal_of(plan["instruction"])
    res = demo.call(demo.plan, PlanTask.Request(goal=goal))
    _print_answer("plan", goal, res, plan["response"].replace("\n", "\n           "))
    failures += not res.success
    return args.questions + 2, failures, (cap["anchor"]["center"], float(cap["anchor"]["radius"]))


def _ask_generic(demo: Demo, args: argparse.Namespace) -> tuple[int, int]:
    """A recorded source has no ground truth: generic questions and a plan, answers alone."""
    questions = GENERIC_QUESTIONS[:args.questions]
    failures = 0
    for question in questions:
        res = demo.call(demo.ask, AskScene.Request(question=question))
        _print_answer("qa", question, res, None)
        failures += not res.success
    res = demo.call(demo.plan, PlanTask.Request(goal=GENERIC_GOAL))
    _print_answer("plan", GENERIC_GOAL, res, None)
    return len(questions) + 1, failures + (not res.success)


def _draw(demo: Demo, picture: str, anchor: tuple | None) -> None:
    """save_scene, then the top-down picture of the saved map (leovl-scene show)."""
    from ..scene_picture import draw_scene
    from ..voxel_map import VoxelMap

    res = demo.call(demo.save, SaveScene.Request(path="demo.safetensors", overwrite=True))
    if not res.success:
        raise RuntimeError(f"save_scene failed: {res.message}")
    centre, radius = anchor if anchor is not None else (None, 0.5)
    image, shown = draw_scene(VoxelMap.load(demo.workdir / "scenes" / "demo.safetensors"), anchor=centre,
                              anchor_radius=radius)
    Path(picture).parent.mkdir(parents=True, exist_ok=True)
    image.save(picture, format="PNG", optimize=True)
    print(f"\n      map picture: {picture} ({shown['columns']} columns, {shown['tokens']} tokens, "
          f"{shown['path_points']} camera positions)")


def _pace(args: argparse.Namespace) -> None:
    """Rate (and a scan's stride) the node can map without dropping a frame that moved."""
    settings = node_settings(PARAMS_FILE)
    limit = float(settings["max_keyframe_rate"])
    if args.rate and limit and args.rate >= limit:
        print(f"WARNING: --rate {args.rate:g} Hz reaches the node's max_keyframe_rate {limit:g} Hz: jitter will drop "
              "keyframes", flush=True)
    args.rate = choose_rate(args.rate, limit)
    if args.source and not args.stride:
        source = Path(args.source).expanduser().resolve()
        kind = detect_kind(source)
        if kind != "bag":
            poses = scan_poses(source, kind)
            args.stride = choose_stride(poses, float(settings["keyframe_translation"]),
                                        float(settings["keyframe_rotation_deg"]))
            print(f"      {kind} scan of {len(poses)} frames: playing every {args.stride}. frame at {args.rate:g} Hz "
                  "(STRIDE=/RATE= override)", flush=True)
    args.stride = args.stride or 1


def _sent(log: str) -> int | None:
    """The frames the player reports as sent (scans and rooms; a bag counts images, not pairs)."""
    match = re.search(r"done: (\d+) frames sent", log)
    return int(match.group(1)) if match else None


def _report_gravity(demo: "Demo", final: SceneStatus) -> None:
    """The map frame's tilt and the node's warnings: its log goes with the demo's temp folder."""
    if final.gravity_angle_deg < 0:
        print("      gravity: no floor seen yet (tilt unknown)")
    else:
        print(f"      gravity: the map frame is {final.gravity_angle_deg:.1f} deg from level"
              + (f" after levelling by {final.leveled_deg:.1f} deg" if final.leveled_deg else ""))
    log = (demo.workdir / "assistant.log").read_text(errors="replace").splitlines()
    warnings = list(dict.fromkeys(re.sub(r"^\[(WARN|ERROR)\] \[[\d.]+\] \[[^]]*\]: ", r"\1: ", line)
                                  for line in log if line.startswith(("[WARN]", "[ERROR]")) and "[rcl]" not in line))
    for line in warnings[:10]:
        print(f"      node {line}")


def run(args: argparse.Namespace, workdir: Path) -> int:
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.model = _usable_model(args.model)
    if args.source and not Path(args.source).expanduser().exists():
        raise RuntimeError(f"--source {args.source}: no such scan folder or recording")
    _pace(args)
    room = None if args.source else generate_room(args.seed)
    demo = Demo(args, workdir)
    try:
        print(f"[1/4] starting leovl_assistant (model={args.model}) on ROS domain {demo.domain_id} ...", flush=True)
        demo.start("assistant", "leovl_ros.ros.assistant_node",
                   ["--params-file", str(PARAMS_FILE), "-p", f"model:={args.model}",
                    "-p", f"scene_dir:={workdir / 'scenes'}",
                    "-p", f"interaction_log:={workdir / 'interactions.jsonl'}"])  # not the robot's own log
        demo.wait(lambda: demo.ask.service_is_ready() and demo.plan.service_is_ready(), args.timeout,
                  "the assistant's services")
        if room is None:
            source = Path(args.source).expanduser().resolve()
            print(f"[2/4] playing {source} (scans at {args.rate:g} Hz, every {args.stride}. frame; "
                  "bags as recorded) ...", flush=True)
            demo.start("player", "leovl_ros.ros.scene_player",
                       ["-p", f"source:={source}", "-p", f"rate:={args.rate}", "-p", f"stride:={args.stride}"])
        else:
            print(f"[2/4] streaming synthetic room {room.scene_id} ({len(room.objects)} objects, "
                  f"{args.frames} frames {width}x{height} at {args.rate:g} Hz) ...", flush=True)
            demo.start("player", "leovl_ros.ros.scene_player",
                       ["-p", f"seed:={args.seed}", "-p", f"num_frames:={args.frames}", "-p", f"width:={width}",
                        "-p", f"height:={height}", "-p", f"rate:={args.rate}"])
        player = demo.procs["player"]
        settled = MapSettled()
        shown, printed = 0, None
        deadline = time.monotonic() + args.timeout
        while not settled.done:
            demo.wait(lambda: len(demo.status) > shown or (player.poll() is not None and settled.sent is None),
                      max(1.0, deadline - time.monotonic()), "the room to be mapped")
            if player.poll() is not None and settled.sent is None:
                if player.returncode != 0:
                    raise RuntimeError(f"scene_player failed:\n{demo.log_tail('player')}")
                settled.player_exited(_sent((workdir / "player.log").read_text(errors="replace")))
                continue  # only reports from now on can show its last frame
            shown, s = len(demo.status), demo.status[-1]
            settled.status(s.frames_received, s.keyframes_fused, s.frames_dropped)
            if (s.frames_received, s.keyframes_fused) != printed:
                printed = (s.frames_received, s.keyframes_fused)
                print(f"      frames {s.frames_received:3d} | keyframes {s.keyframes_fused:3d} | voxels "
                      f"{s.num_voxels:5d} | tokens {s.num_tokens:4d} | preserved {s.preservation_rate:.2f}",
                      flush=True)
        final = demo.status[-1]
        lost = f"; {settled.lost} frames never arrived" if settled.lost else ""
        print(f"      mapped: {final.keyframes_fused} keyframes, {final.num_voxels} voxels -> "
              f"{final.num_tokens} scene tokens (preservation {final.preservation_rate:.2f}){lost}")
        _report_gravity(demo, final)

        print("[3/4] asking questions ...", flush=True)
        if room is None:
            asked, failures, anchor = *_ask_generic(demo, args), None
        else:
            asked, failures, anchor = _ask_synthetic(demo, args, annotate_room(room, seed=args.seed))
        if args.picture:
            _draw(demo, args.picture, anchor)
        print(f"\n[4/4] done: {asked - failures} of {asked} requests answered.")
        return 1 if failures else 0
    finally:
        demo.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    with tempfile.TemporaryDirectory(prefix="leovl_demo_") as tmp:
        try:
            return run(args, Path(tmp))
        except (RuntimeError, KeyboardInterrupt) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
