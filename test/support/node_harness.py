"""What the node tests share: starting node processes and an operator that calls them over DDS."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_srvs.srv import Trigger

from conftest import next_domain_id, wait_for
from leovl_ros.msg import Interaction, Plan, SceneStatus
from leovl_ros.srv import AskScene, Feedback, LoadAdapter, LoadScene, PlanTask, SaveScene

REPO = Path(__file__).resolve().parents[2]
SHIPPED_PARAMS = REPO / "config" / "assistant.yaml"
SERVICES = {"ask_scene": AskScene, "plan_task": PlanTask, "reset_scene": Trigger, "save_scene": SaveScene,
            "load_scene": LoadScene, "scene_feedback": Feedback, "load_adapter": LoadAdapter}
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def env(domain_id: int) -> dict[str, str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return env


def start(module: str, args: list[str], domain_id: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *args], cwd=REPO, env=env(domain_id),
                                stdout=out, stderr=subprocess.STDOUT)


def start_assistant(domain_id: int, log: Path, params_file: Path | None = SHIPPED_PARAMS,
                    **params) -> subprocess.Popen:
    """The node with ``params_file`` (None: the node's defaults) and ``params`` over it; the
    model is the tiny random one unless ``params`` names one (``model=None``: the file's)."""
    args = ["--params-file", str(params_file)] if params_file is not None else []
    for name, value in {"model": "tiny-random", **params}.items():
        if value is not None:
            args += ["-p", f"{name}:={value}"]
    return start("leovl_ros.ros.assistant_node", args, domain_id, log)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Operator:
    """The test's side: service clients and topic recorders on the node's domain."""

    def __init__(self, context, node_proc: subprocess.Popen, log: Path) -> None:
        self.context, self.proc, self.log = context, node_proc, log
        self.node = rclpy.create_node("operator", context=context)
        self.status: list[SceneStatus] = []
        self.interactions: list[Interaction] = []
        self.plans: list[Plan] = []
        self.grids: list[PointCloud2] = []
        self.node.create_subscription(SceneStatus, "scene_status", self.status.append, 10)
        self.node.create_subscription(Interaction, "interactions", self.interactions.append,
                                      QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE))
        self.node.create_subscription(Plan, "plan", self.plans.append, LATCHED)
        self.node.create_subscription(PointCloud2, "scene_grid", self.grids.append, LATCHED)
        # A client's reply queue must hold a whole burst of its own calls (README "Many callers"):
        # with the default depth 10, 16 replies of one batch can push each other out under load.
        replies = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.clients = {name: self.node.create_client(t, name, qos_profile=replies) for name, t in SERVICES.items()}
        self.executor = MultiThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def log_tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call_async(self, name: str, request):
        return self.clients[name].call_async(request)

    def call(self, name: str, request, timeout: float = 120.0):
        future = self.call_async(name, request)
        wait_for(lambda: future.done() or not self.alive(), timeout, f"{name} to answer\n{self.log_tail()}")
        assert self.alive(), f"the node died during {name}:\n{self.log_tail()}"
        return future.result()

    def wait_status(self, condition, timeout: float, what: str) -> SceneStatus:
        start = len(self.status)
        wait_for(lambda: any(condition(s) for s in self.status[start:]) or not self.alive(), timeout,
                 f"scene_status with {what}\n{self.log_tail()}")
        assert self.alive(), self.log_tail()
        return next(s for s in self.status[start:] if condition(s))


@contextmanager
def running_assistant(tmp: Path, services: Iterable[str] = tuple(SERVICES), params_file: Path | None = SHIPPED_PARAMS,
                      **params) -> Iterator[Operator]:
    """An assistant node (``start_assistant``'s arguments, log ``tmp``/node.log) on a domain of
    its own, and an :class:`Operator` on it (``.tmp``, ``.domain_id`` set) once the node offers
    ``services``; on exit the node is stopped, its log tail printed and the operator torn down."""
    domain_id = next_domain_id()
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain_id)
    log = tmp / "node.log"
    proc = start_assistant(domain_id, log, params_file, **params)
    op = Operator(context, proc, log)
    op.tmp, op.domain_id = tmp, domain_id
    try:
        for name in services:
            client = op.clients[name]
            wait_for(lambda: client.service_is_ready() or not op.alive(), 90.0, f"service {name}\n{op.log_tail()}")
        assert op.alive(), op.log_tail()
        yield op
    finally:
        stop(proc)
        print(op.log_tail(80))
        op.executor.shutdown()
        op.node.destroy_node()
        context.try_shutdown()
