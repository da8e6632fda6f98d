"""Shutting the node down loses no answer (issue 27): SIGTERM while goals and calls are being
answered; every client gets its reply (the answer, or a refusal that says why) and every
answered interaction is in the interaction log, every refusal in the node's log."""
from __future__ import annotations

import json
import signal
import threading
import time

import numpy as np
import pytest

from conftest import wait_for

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
pytest.importorskip("leovl_ros.action", reason="interfaces not built (run through `make test`)")
from nav_msgs.msg import Odometry  # noqa: E402
from rclpy.action import ActionClient  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from leovl_ros.action import AskScene as AskSceneAction  # noqa: E402
from leovl_ros.assistant.records import RequestControl  # noqa: E402
from leovl_ros.ros.conversions import matrix_to_pose, numpy_to_image, seconds_to_stamp  # noqa: E402
from leovl_ros.ros.shutdown import SHUTTING_DOWN, RequestGate  # noqa: E402
from leovl_ros.srv import AskScene  # noqa: E402

from support.node_harness import Operator, start_assistant, stop  # noqa: E402

W, H = 224, 168  # a 8x6 feature grid for the tiny model
K = [160.0, 0.0, 111.5, 0.0, 160.0, 83.5, 0.0, 0.0, 1.0]


class _Response:
    success, message = True, ""


def test_the_gate_refuses_new_requests_and_cancels_what_outlives_the_timeout():
    logged: list[tuple[str, str]] = []
    gate = RequestGate(lambda level, text: logged.append((level, text)))
    started, results = threading.Event(), []

    def answer(request, response, control: RequestControl):
        started.set()
        while not control.cancel.wait(0.01):  # a generation that only a cancel ends
            pass
        response.success, response.message = False, "cancelled while answering"
        return response

    handler = gate.wrap("ask_scene", answer)
    worker = threading.Thread(target=lambda: results.append(handler(None, _Response(), gate.control())))
    worker.start()
    assert started.wait(5.0)
    closing = threading.Thread(target=gate.close, args=(0.2,))
    closing.start()
    wait_for(lambda: gate.closed, 5.0, "the gate to close")
    refused = handler(None, _Response(), gate.control())  # arrives during shutdown
    assert not refused.success and refused.message.startswith(SHUTTING_DOWN)
    closing.join(10.0)
    worker.join(10.0)
    assert not closing.is_alive() and results and not results[0].success  # cancelled, and replied
    assert [level for level, _ in logged] == ["info", "info", "warn"], logged


def _publish_keyframe(op: Operator) -> None:
    pubs = {"pose": op.node.create_publisher(Odometry, "pose", 10),
            "info": op.node.create_publisher(CameraInfo, "rgb/camera_info", 10),
            "rgb": op.node.create_publisher(Image, "rgb/image", 10),
            "depth": op.node.create_publisher(Image, "depth/image", 10)}
    for pub in pubs.values():
        wait_for(lambda: pub.get_subscription_count() > 0, 30.0, f"the node to subscribe {pub.topic_name}")
    header = Header(stamp=seconds_to_stamp(1000.0), frame_id="camera_optical")
    odom = Odometry(header=Header(stamp=header.stamp, frame_id="map"))
    odom.pose.pose = matrix_to_pose(np.eye(4))
    pubs["pose"].publish(odom)
    pubs["info"].publish(CameraInfo(header=header, width=W, height=H, k=K))
    rgb = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    pubs["rgb"].publish(numpy_to_image(rgb, "rgb8", header))
    pubs["depth"].publish(numpy_to_image(np.full((H, W), 1500, np.uint16), "16UC1", header))


@pytest.mark.parametrize("shutdown_timeout", [20.0, 0.0])
def test_sigterm_answers_or_refuses_every_request_in_flight_and_logs_each(ros_context, tmp_path, shutdown_timeout):
    """20 s: all in flight are answered and logged; 0 s: all are refused, the running one
    mid-answer. Either way a request sent after SIGTERM is refused while the node drains."""
    domain_id = ros_context.leovl_domain_id
    log, jsonl = tmp_path / "node.log", tmp_path / "interactions.jsonl"
    # greedy answers one at a time, so that goals are still queued and running at SIGTERM
    node = start_assistant(domain_id, log, num_beams=1, max_new_tokens=128, compute_grounding="false",
                           max_batch=1, status_rate=5.0, interaction_log=jsonl, shutdown_timeout=shutdown_timeout)
    op = Operator(ros_context, node, log)
    try:
        wait_for(lambda: op.clients["ask_scene"].service_is_ready() or not op.alive(), 90.0,
                 f"the node\n{op.log_tail()}")
        _publish_keyframe(op)
        op.wait_status(lambda s: s.keyframes_fused >= 1, 30.0, "a fused keyframe")
        client = ActionClient(op.node, AskSceneAction, "ask_scene")
        assert client.wait_for_server(timeout_sec=30.0)
        results, feedback = [], []
        for i in range(4):
            goal = client.send_goal_async(AskSceneAction.Goal(question=f"describe the room {i}", task="scene_caption"),
                                          feedback_callback=lambda m: feedback.append(m.feedback))
            wait_for(goal.done, 30.0, "the goal to be accepted")
            assert goal.result().accepted
            results.append(goal.result().get_result_async())
        call = op.call_async("ask_scene", AskScene.Request(question="what is here?"))
        wait_for(lambda: any(f.state == "answering" and f.partial_answer for f in feedback), 30.0,
                 f"an answer under way\n{op.log_tail()}")
        op.wait_status(lambda s: s.pending_requests == 5, 30.0, "all five requests in flight")
        node.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        wait_for(lambda: "shutting down: " in log.read_text(), 10.0, f"the node to start draining\n{op.log_tail()}")
        late = op.call_async("ask_scene", AskScene.Request(question="and now?"))
        wait_for(lambda: all(r.done() for r in results) and call.done() and late.done(), 60.0,
                 f"a reply to every request\n{op.log_tail()}")
        assert node.wait(30.0) == 0, op.log_tail()
        assert time.monotonic() - sent < shutdown_timeout + 20.0  # bounded
        assert not late.result().success and late.result().message.startswith(SHUTTING_DOWN)
        replies = [r.result().result for r in results] + [call.result()]
        node_log = log.read_text()
        logged = [json.loads(line)["interaction_id"] for line in jsonl.read_text().splitlines() if line.strip()]
        if shutdown_timeout:
            assert all(r.success and r.answer for r in replies), [r.message for r in replies]
            assert sorted(logged) == sorted(r.interaction_id for r in replies)
        else:
            assert not any(r.success for r in replies) and not logged, [r.message for r in replies]
            assert all(r.message.startswith(SHUTTING_DOWN) for r in replies), [r.message for r in replies]
        refusals = len(replies) + 1 - len(logged)
        assert node_log.count(f"refused: {SHUTTING_DOWN}") == refusals, node_log
        for broken in ("Traceback", "InvalidHandle", "closed file"):
            assert broken not in node_log, node_log
        client.destroy()
    finally:
        stop(node)
        op.executor.shutdown()
        op.node.destroy_node()
