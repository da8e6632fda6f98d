"""The generated ROS interfaces: they import, carry the documented fields and travel over
real DDS between two nodes (own domain id, loopback only)."""
from __future__ import annotations

import threading

import pytest

from conftest import wait_for

pytestmark = pytest.mark.ros
rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
msg = pytest.importorskip("leovl_ros.msg", reason="interfaces not built (run through `make test`)")
from leovl_ros.msg import Interaction, Plan, PlanStep, SceneStatus  # noqa: E402
from leovl_ros.srv import (  # noqa: E402
    AskScene, Feedback, LoadAdapter, LoadScene, PlanTask, SaveScene,
)
from leovl_ros.action import AskScene as AskSceneAction  # noqa: E402
from leovl_ros.action import PlanTask as PlanTaskAction  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402


def test_every_interface_has_its_documented_fields():
    expected = {
        AskScene.Request: ["question", "situation", "task", "session_id", "use_anchor",
                           "anchor_point", "anchor_radius", "anchor_size"],
        AskScene.Response: ["success", "message", "answer", "interaction_id", "latency",
                            "scene_tokens", "grounding_score", "grounding_points", "grounding_weights", "grounding_flat"],
        PlanTask.Request: ["goal", "session_id"],
        PlanTask.Response: ["success", "message", "plan", "latency"],
        SaveScene.Request: ["path", "overwrite"], SaveScene.Response: ["success", "message", "path", "num_voxels"],
        LoadScene.Request: ["path"], LoadScene.Response: ["success", "message", "path", "num_voxels"],
        Feedback.Request: ["interaction_id", "corrected_answer", "comment"],
        Feedback.Response: ["success", "message"],
        LoadAdapter.Request: ["bundle_path"], LoadAdapter.Response: ["success", "message", "model"],
        Plan: ["header", "goal", "steps", "raw_text", "interaction_id"],
        PlanStep: ["index", "instruction"],
        SceneStatus: ["header", "frames_received", "frames_dropped", "drop_reasons", "drop_counts",
                      "images_unpaired", "keyframes_fused", "num_voxels", "voxels_evicted",
                      "points_dropped_full", "num_tokens", "compression_rate",
                      "preservation_rate", "memory_bytes", "newest_frame_age", "model", "pending_requests",
                      "worker_restarts", "gravity_angle_deg", "leveled_deg"],
        AskSceneAction.Goal: ["question", "situation", "task", "session_id", "use_anchor", "anchor_point",
                              "anchor_radius", "anchor_size"],
        AskSceneAction.Result: ["success", "message", "answer", "interaction_id", "latency", "scene_tokens",
                                "grounding_score", "grounding_points", "grounding_weights", "grounding_flat"],
        PlanTaskAction.Goal: ["goal", "session_id"],
        PlanTaskAction.Result: ["success", "message", "plan", "latency"],
        AskSceneAction.Feedback: ["state", "queue_position", "partial_answer"],
        PlanTaskAction.Feedback: ["state", "queue_position", "partial_answer"],
        Interaction: ["header", "interaction_id", "session_id", "kind", "task", "instruction",
                      "situation", "has_anchor", "anchor", "anchor_radius", "anchor_size", "answer",
                      "corrected_answer", "comment", "scene_stamp", "scene_tokens", "grounding_score", "latency",
                      "grounding_points", "grounding_weights", "grounding_flat"],
    }
    for cls, fields in expected.items():
        assert list(cls.get_fields_and_field_types()) == fields, cls.__name__
    # Stamped messages put the header first (interface rules in design.md).
    for cls in (Plan, SceneStatus, Interaction):
        assert next(iter(cls.get_fields_and_field_types().items())) == ("header", "std_msgs/Header")
    # Optional request fields default to "not given".
    req = AskScene.Request()
    assert (req.situation, req.task, req.session_id, req.use_anchor, req.anchor_radius) == ("", "", "", False, 0.0)


def _spin_in_thread(executor):
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    return thread


def test_ask_scene_round_trip_between_two_nodes(ros_context):
    server_node = rclpy.create_node("fake_assistant", context=ros_context)
    client_node = rclpy.create_node("operator", context=ros_context)
    seen = []

    def handle(request, response):
        seen.append(request.question)
        response.success = True
        response.answer = f"echo: {request.question} @ {request.anchor_point.x:.1f}"
        response.scene_tokens = 42
        response.latency = 0.25
        return response

    server_node.create_service(AskScene, "ask_scene", handle)
    executor = MultiThreadedExecutor(context=ros_context)
    executor.add_node(server_node)
    _spin_in_thread(executor)
    try:
        client = client_node.create_client(AskScene, "ask_scene")
        assert client.wait_for_service(timeout_sec=20.0), "ask_scene service never appeared"
        request = AskScene.Request(question="where is the mug?", use_anchor=True)
        request.anchor_point.x = 1.5
        future = client.call_async(request)
        client_executor = rclpy.executors.SingleThreadedExecutor(context=ros_context)
        client_executor.add_node(client_node)
        client_executor.spin_until_future_complete(future, timeout_sec=20.0)
        response = future.result()
        assert response is not None, "no response within 20 s"
        assert seen == ["where is the mug?"]
        assert response.success and response.answer == "echo: where is the mug? @ 1.5"
        assert response.scene_tokens == 42 and response.latency == pytest.approx(0.25)
    finally:
        executor.shutdown()
        server_node.destroy_node()
        client_node.destroy_node()


def test_plan_with_three_steps_arrives_intact(ros_context):
    from rclpy.qos import QoSDurabilityPolicy, QoSProfile

    qos = QoSProfile(depth=5, durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
    pub_node = rclpy.create_node("planner", context=ros_context)
    sub_node = rclpy.create_node("listener", context=ros_context)
    received = []
    sub_node.create_subscription(Plan, "plan", received.append, qos)
    executor = MultiThreadedExecutor(context=ros_context)
    executor.add_node(sub_node)
    _spin_in_thread(executor)
    try:
        plan = Plan(goal="tidy the desk", raw_text="1. a 2. b 3. c", interaction_id="i-1")
        plan.header.frame_id = "map"
        plan.header.stamp.sec = 17
        plan.steps = [PlanStep(index=i + 1, instruction=text)
                      for i, text in enumerate(["walk to the desk", "pick up the red mug", "put it on the shelf"])]
        publisher = pub_node.create_publisher(Plan, "plan", qos)
        wait_for(lambda: publisher.get_subscription_count() > 0, 20.0, "the plan subscriber to match")
        publisher.publish(plan)
        wait_for(lambda: len(received) == 1, 20.0, "the plan to arrive")
        got = received[0]
        assert got.goal == "tidy the desk" and got.header.frame_id == "map" and got.header.stamp.sec == 17
        assert [(s.index, s.instruction) for s in got.steps] == [
            (1, "walk to the desk"), (2, "pick up the red mug"), (3, "put it on the shelf")]
        assert got == plan
    finally:
        executor.shutdown()
        pub_node.destroy_node()
        sub_node.destroy_node()
