"""Reliability bench of the assistant node: N concurrent callers while frames stream.

Run from the repo root through the ROS environment:
``env/ros_env.sh $(make -s venv-path) python -m bench.node_load [--callers 1 10 50]``.

A node process (tiny random model, greedy answers of up to 32 tokens) and a scene_player
streaming a synthetic room in a loop at 15 Hz run on a private domain; this process then
fires N ``ask_scene`` calls at once, for each N in ``--callers``, and reports how many were
answered, refused (busy: the node's back-pressure, ``max_pending_requests``) or timed out,
the latency percentiles of the answered ones, the node's resident memory after the burst and
the keyframes fused meanwhile (mapping must go on while questions are answered). The first
row (N = 1) is the baseline the ratio column compares p50 latency with.

Measured here (2 shared cores, ``--callers 1 10 30``): 1 -> answered in 0.35 s; 10 -> 4
answered (p50 1.04 s), 6 refused busy; 30 -> 4 answered, 22 refused busy, 4 without any
reply in 120 s (see the README); node RSS 731 -> 780 MB; mapping went on during the bursts.
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

from leovl_ros.msg import SceneStatus
from leovl_ros.ros.dds import use_large_image_profile
from leovl_ros.srv import AskScene

REPO = Path(__file__).resolve().parents[1]


def _start(module: str, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *args], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def _rss_mb(pid: int) -> float:
    pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def _burst(node, n: int, timeout: float) -> tuple[list[float], int, int]:
    """Fire n calls at once; (latencies of answered calls, refused, timed out)."""
    clients = [node.create_client(AskScene, "ask_scene") for _ in range(n)]
    for client in clients:
        _wait(client.service_is_ready, 30.0, "ask_scene")
    start = time.monotonic()
    done: dict[int, float] = {}
    futures = []
    for i, client in enumerate(clients):
        future = client.call_async(AskScene.Request(question=f"what is near the table? ({i})"))
        future.add_done_callback(lambda f, i=i: done.setdefault(i, time.monotonic() - start))
        futures.append(future)
    deadline = start + timeout
    while len(done) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    answered = [done[i] for i, f in enumerate(futures) if f.done() and f.result().success]
    refused = sum(1 for f in futures if f.done() and not f.result().success)
    for client in clients:
        node.destroy_client(client)
    return answered, refused, n - len(answered) - refused


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--timeout", type=float, default=120.0, help="s to wait for a burst's answers")
    args = parser.parse_args()
    use_large_image_profile()
    domain = 90 + os.getpid() % 10
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST",
               ROS_LOCALHOST_ONLY="1", PYTHONUNBUFFERED="1")
    os.environ.update(env)
    work = Path(tempfile.mkdtemp(prefix="leovl_node_load_"))
    node_proc = _start("leovl_ros.ros.assistant_node", [
        "--params-file", str(REPO / "config" / "assistant.yaml"), "-p", "model:=tiny-random",
        "-p", "num_beams:=1", "-p", "max_new_tokens:=32", "-p", f"scene_dir:={work}",
        "-p", f"interaction_log:={work / 'log.jsonl'}"], env, work / "node.log")
    player = _start("leovl_ros.ros.scene_player", ["-p", "loop:=true", "-p", "rate:=15.0", "-p", "seed:=4"], env,
                    work / "player.log")
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = rclpy.create_node("node_load", context=context)
    status: list[SceneStatus] = []
    node.create_subscription(SceneStatus, "scene_status", status.append, 10)
    executor = MultiThreadedExecutor(context=context)
    executor.add_node(node)
    threading.Thread(target=executor.spin, daemon=True).start()
    rows = []
    try:
        _wait(lambda: status and status[-1].num_voxels > 0, 120.0, f"a mapped scene (see {work}/node.log)")
        for n in args.callers:
            fused = status[-1].keyframes_fused
            latencies, refused, timed_out = _burst(node, n, args.timeout)
            p = np.percentile(latencies, [50, 90, 99]) if latencies else [float("nan")] * 3
            rows.append((n, len(latencies), refused, timed_out, *p, _rss_mb(node_proc.pid),
                         status[-1].keyframes_fused - fused))
    finally:
        for proc in (player, node_proc):
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    base = rows[0][4]
    print(f"{'callers':>7} {'answered':>8} {'refused':>7} {'timeout':>7} {'p50 s':>7} {'p90 s':>7} {'p99 s':>7} "
          f"{'p50/base':>8} {'RSS MB':>7} {'keyframes':>9}")
    for n, ok, refused, timed_out, p50, p90, p99, rss, fused in rows:
        print(f"{n:>7} {ok:>8} {refused:>7} {timed_out:>7} {p50:>7.2f} {p90:>7.2f} {p99:>7.2f} {p50 / base:>8.2f} "
              f"{rss:>7.0f} {fused:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
