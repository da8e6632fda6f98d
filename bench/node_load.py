"""Load bench of the assistant node: N concurrent callers, batched vs one at a time, while frames stream.

Run from the repo root through the ROS environment:
``env/ros_env.sh $(make -s venv-path) python -m bench.node_load [--callers 1 8 32 64]``.

For each answering mode (``max_batch`` = the node's default, then 1 = one question per
model call), a node process (tiny random model, greedy answers of up to 32 tokens, default
``max_pending_requests``) and a scene_player streaming a synthetic room in a loop at 15 Hz
run on a private domain; this process fires N ``ask_scene`` calls at once (each client
waits for the service first and has a reply queue deeper than N: see the README, "Many
callers") for each N in ``--callers``, and reports answered / refused busy, questions per
second (answered / time to the last reply), p50 / p99 latency, and lost replies counted
apart: **node** = requests that never reached a callback (callers minus the replies and
refusals the node logged), **client** = replies the node sent that the client never read.
The ratio columns compare batched with one-at-a-time at the same N, measured in this run.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

from bench.table import print_table
from leovl_ros.assistant.settings import AssistantConfig
from leovl_ros.msg import Interaction, SceneStatus
from leovl_ros.ros.dds import use_large_image_profile
from leovl_ros.srv import AskScene

REPO = Path(__file__).resolve().parents[1]


def _start(module: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


class _Node:
    """One node process + player on its own domain, and this process's view of it."""

    def __init__(self, max_batch: int, domain: int, work: Path) -> None:
        env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
                   PYTHONUNBUFFERED="1")
        self.log = work / f"node_b{max_batch}.log"
        self.proc = _start("leovl_ros.ros.assistant_node", [
            "--params-file", str(REPO / "config" / "assistant.yaml"), "-p", "model:=tiny-random",
            "-p", "num_beams:=1", "-p", "max_new_tokens:=32", "-p", f"max_batch:={max_batch}",
            "-p", f"scene_dir:={work}", "-p", f"interaction_log:={work / f'log_b{max_batch}.jsonl'}"], env, self.log)
        self.player = _start("leovl_ros.ros.scene_player", ["-p", "loop:=true", "-p", "rate:=15.0", "-p", "seed:=4"],
                             env, work / f"player_b{max_batch}.log")
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node("node_load", context=self.context)
        self.status: list[SceneStatus] = []
        self.answered_ids: set[str] = set()
        self.node.create_subscription(SceneStatus, "scene_status", self.status.append, 10)
        self.node.create_subscription(Interaction, "interactions", lambda m: self.answered_ids.add(m.instruction),
                                      QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE))
        self.executor = MultiThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()
        _wait(lambda: self.status and self.status[-1].num_voxels > 0, 180.0, f"a mapped scene (see {self.log})")

    def refusals_logged(self) -> int:
        return self.log.read_text(errors="replace").count("ask_scene refused:")

    def close(self) -> None:
        for proc in (self.player, self.proc):
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def _burst(target: _Node, n: int, tag: str, timeout: float) -> dict[str, float]:
    """Fire n calls at once; counts, rate and latencies as seen by the client and the node."""
    qos = QoSProfile(depth=max(100, 2 * n), reliability=ReliabilityPolicy.RELIABLE)  # >= callers: see README
    clients = [target.node.create_client(AskScene, "ask_scene", qos_profile=qos) for _ in range(n)]
    for client in clients:
        _wait(client.service_is_ready, 30.0, "ask_scene")
    refusals_before = target.refusals_logged()
    questions = [f"what is near the table? ({tag} {i})" for i in range(n)]
    done: dict[int, float] = {}
    start = time.monotonic()
    futures = []
    for i, client in enumerate(clients):
        future = client.call_async(AskScene.Request(question=questions[i]))
        future.add_done_callback(lambda f, i=i: done.setdefault(i, time.monotonic() - start))
        futures.append(future)
    deadline = start + timeout
    while len(done) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # the node's log and interaction messages of the last replies
    latencies = [done[i] for i, f in enumerate(futures) if f.done() and f.result().success]
    refused = sum(1 for f in futures if f.done() and not f.result().success)
    node_handled = sum(q in target.answered_ids for q in questions) + target.refusals_logged() - refusals_before
    for client in clients:
        target.node.destroy_client(client)
    p50, p99 = np.percentile(latencies, [50, 99]) if latencies else (float("nan"),) * 2
    return {"answered": len(latencies), "refused": refused, "lost_node": n - node_handled,
            "lost_client": node_handled - len(latencies) - refused,
            "qps": len(latencies) / max(latencies) if latencies else 0.0, "p50": p50, "p99": p99}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--timeout", type=float, default=180.0, help="s to wait for a burst's replies")
    parser.add_argument("--max-batch", type=int, nargs="+", default=[AssistantConfig().max_batch],
                        help="max_batch values compared with 1 (default: the node's default)")
    args = parser.parse_args()
    use_large_image_profile()
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    work = Path(tempfile.mkdtemp(prefix="leovl_node_load_"))
    results: dict[int, dict[int, dict[str, float]]] = {}
    for k, max_batch in enumerate([*args.max_batch, 1]):
        target = _Node(max_batch, 90 + (os.getpid() + k) % 10, work)
        try:
            results[max_batch] = {n: _burst(target, n, f"b{max_batch}", args.timeout) for n in args.callers}
        finally:
            target.close()
    print(f"node: tiny random model, greedy 32 tokens, max_pending_requests {AssistantConfig().max_pending_requests}"
          ", frames streaming at 15 Hz; ratios: batched / one at a time\n")
    rows = []
    for n in args.callers:
        one = results[1][n]
        for max_batch in [*args.max_batch, 1]:
            r = results[max_batch][n]
            rows.append([n, f"max_batch {max_batch}" if max_batch > 1 else "one at a time", r["answered"],
                         r["refused"], f"{r['qps']:.2f}", f"{r['p50']:.2f}", f"{r['p99']:.2f}", r["lost_node"],
                         r["lost_client"]])
            if max_batch > 1:
                rows[-1] += [f"{r['qps'] / max(one['qps'], 1e-9):.2f}", f"{r['p99'] / one['p99']:.2f}"]
            else:
                rows[-1] += ["", ""]
    print_table(["callers", "answering", "answered", "refused", "q/s", "p50 s", "p99 s", "lost node", "lost client",
                 "q/s ratio", "p99 ratio"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
