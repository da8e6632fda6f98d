"""Bursts over real DDS: more calls and goals at once than the node's queues used to hold
(rclpy's default depth 10) each get a reply or a refusal, counted on the client."""
from __future__ import annotations

import threading

import pytest

from conftest import wait_for

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
pytest.importorskip("leovl_ros.msg", reason="interfaces not built (run through `make test`)")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402

from leovl_ros.action import AskScene as AskSceneAction  # noqa: E402
from leovl_ros.srv import AskScene  # noqa: E402

from support.node_harness import running_assistant, start  # noqa: E402

BURST = 24  # > 10: beyond rclpy's default queue depth
GOALS = 100  # rclpy's default depth-10 action queues let ~16 of 200 goals at once reach the node
MAX_PENDING = 4
# Every client sees every reply of the service (rmw_fastrtps) and filters at read time: its
# reply queue must hold a whole burst or its own reply can be pushed out before it reads it.
CLIENT_QOS = QoSProfile(depth=2 * GOALS, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def op(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bursts")
    with running_assistant(tmp, ["ask_scene"], num_beams=1, max_new_tokens=4, compute_grounding="false",
                           max_pending_requests=MAX_PENDING, max_batch=MAX_PENDING, scene_dir=tmp,
                           interaction_log=tmp / "log.jsonl", status_rate=5.0) as operator:
        operator.diagnostics = []
        operator.node.create_subscription(DiagnosticArray, "/diagnostics", operator.diagnostics.append, 50)
        player = start("leovl_ros.ros.scene_player", ["-p", "num_frames:=20", "-p", "rate:=15.0", "-p", "seed:=2"],
                       operator.domain_id, tmp / "player.log")
        wait_for(lambda: player.poll() is not None, 90.0, "the player to stream its frames")
        operator.wait_status(lambda s: s.keyframes_fused > 0, 60.0, "a fused keyframe")
        yield operator


def test_a_burst_of_service_calls_is_answered_or_refused(op):
    clients = [op.node.create_client(AskScene, "ask_scene", qos_profile=CLIENT_QOS) for _ in range(BURST)]
    for client in clients:
        wait_for(client.service_is_ready, 30.0, "ask_scene")
    futures = [c.call_async(AskScene.Request(question=f"what is near the table? ({i})")) for i, c in enumerate(clients)]
    wait_for(lambda: all(f.done() for f in futures) or not op.alive(), 180.0,
             f"{sum(not f.done() for f in futures)} of {BURST} replies\n{op.log_tail()}")
    replies = [f.result() for f in futures]
    assert all(r is not None for r in replies), [(f.cancelled(), f.exception()) for f in futures]
    answered = [r for r in replies if r.success]
    refused = [r for r in replies if not r.success]
    assert answered and len(answered) + len(refused) == BURST
    assert all(r.message.startswith("busy: 4 requests") for r in refused), {r.message for r in refused}
    for client in clients:
        op.node.destroy_client(client)


def test_a_burst_of_action_goals_each_gets_accepted_or_rejected_and_a_result(op):
    client = ActionClient(op.node, AskSceneAction, "ask_scene", goal_service_qos_profile=CLIENT_QOS,
                          result_service_qos_profile=CLIENT_QOS, cancel_service_qos_profile=CLIENT_QOS)
    assert client.wait_for_server(timeout_sec=30.0)
    results: dict[int, object] = {}
    lock = threading.Lock()

    def responded(i: int, future) -> None:
        handle = future.result()
        if not handle.accepted:
            with lock:
                results[i] = "rejected"
            return
        handle.get_result_async().add_done_callback(lambda f: results.__setitem__(i, f.result()))

    for i in range(GOALS):
        client.send_goal_async(AskSceneAction.Goal(question=f"where is the door? ({i})")).add_done_callback(
            lambda f, i=i: responded(i, f))
    wait_for(lambda: len(results) == GOALS or not op.alive(), 180.0,
             f"{GOALS - len(results)} of {GOALS} goals without a response or result\n{op.log_tail()}")
    rejected = [i for i, r in results.items() if r == "rejected"]
    finished = [r for r in results.values() if r != "rejected"]
    assert rejected and finished, (len(rejected), len(finished))
    assert all(r.result.success or r.result.message.startswith("busy") for r in finished)
    assert any(r.result.success and r.result.answer for r in finished)
    client.destroy()


def test_diagnostics_count_batches_and_the_prefix_cache_within_its_budget(op):
    def requests() -> dict[str, str]:
        for array in reversed(op.diagnostics):
            for status in array.status:
                if status.name.endswith("requests"):
                    return {kv.key: kv.value for kv in status.values}
        return {}

    wait_for(lambda: int(requests().get("batches", 0)) > 0, 30.0, "/diagnostics after the bursts")
    values = requests()
    assert int(values["batched_requests"]) >= int(values["batches"]) > 0
    assert 0 < int(values["prefix_cache_bytes"]) <= int(values["prefix_cache_max_bytes"]) == 256 * 2**20
    assert int(values["prefix_cache_hits"]) > 0
