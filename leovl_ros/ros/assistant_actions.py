"""AskScene and PlanTask as ROS 2 actions: queue position and the answer as it is generated
as feedback, and cancel. The services stay for short calls; both fill the same fields.

Cancel reaches the request through :class:`RequestControl`: a queued request leaves the
queue, a running one stops its row of the batch at the next generated token.

Queues: rclpy's action servers and services keep 10 requests unless told otherwise, and DDS
drops the rest of a burst before any callback runs (200 goals at once: 16 reached the node).
:func:`request_qos` sizes the goal, cancel and result queues (and the node's services) so a
burst of ``BURST`` x ``max_pending_requests`` (at least 256) reaches a callback; a goal past
``max_pending_requests`` active ones is rejected at once (the action form of "busy").
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from ..action import AskScene, PlanTask
from ..assistant.records import RequestControl

__all__ = ["BURST", "RequestActions", "request_qos"]

Fill = Callable[[Any, Any, RequestControl], Any]
BURST = 4  # a burst of this many times max_pending_requests (at least 256) reaches a callback: answered or refused


def request_qos(max_pending: int) -> QoSProfile:
    """Reliable request queues deep enough for a burst of BURST x ``max_pending`` calls."""
    return QoSProfile(depth=max(256, BURST * max_pending), reliability=ReliabilityPolicy.RELIABLE)


class RequestActions:
    """Action servers ``ask_scene`` and ``plan_task`` backed by the node's request handlers.

    ``fill_ask(goal, result, control)`` / ``fill_plan(...)`` answer a goal into a result
    (the same code as the services: goal and request, result and response share fields).
    """

    def __init__(self, node: Node, fill_ask: Fill, fill_plan: Fill, group: CallbackGroup, max_pending: int) -> None:
        self._controls: dict[bytes, RequestControl] = {}
        self._lock = threading.Lock()
        self._max_pending, self._active, self.rejected = max_pending, 0, 0
        self._log = node.get_logger()
        qos = request_qos(max_pending)
        self._servers = [
            ActionServer(node, action, name, execute_callback=self._executor(action, fill),
                         goal_callback=self._goal, cancel_callback=self._cancel, callback_group=group,
                         goal_service_qos_profile=qos, cancel_service_qos_profile=qos,
                         result_service_qos_profile=qos)
            for action, name, fill in ((AskScene, "ask_scene", fill_ask), (PlanTask, "plan_task", fill_plan))]

    def _goal(self, goal) -> GoalResponse:
        with self._lock:
            if self._active >= self._max_pending:
                self.rejected += 1
                busy = True
            else:
                self._active += 1
                busy = False
        if busy:
            self._log.info(f"goal rejected: busy, {self._max_pending} goals active (max_pending_requests)",
                           throttle_duration_sec=5.0)
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _executor(self, action, fill: Fill) -> Callable[[ServerGoalHandle], Any]:
        def execute(goal_handle: ServerGoalHandle) -> Any:
            key = bytes(goal_handle.goal_id.uuid)

            def progress(state: str, position: int, partial: str) -> None:
                goal_handle.publish_feedback(action.Feedback(state=state, queue_position=position,
                                                             partial_answer=partial))

            control = RequestControl(progress)
            with self._lock:
                self._controls[key] = control
            try:
                result = fill(goal_handle.request, action.Result(), control)
            finally:
                with self._lock:
                    del self._controls[key]
                    self._active -= 1
            if goal_handle.is_cancel_requested:
                goal_handle.canceled()
            elif result.success:
                goal_handle.succeed()
            else:
                goal_handle.abort()
            return result

        return execute

    def _cancel(self, goal_handle: ServerGoalHandle) -> CancelResponse:
        with self._lock:
            control = self._controls.get(bytes(goal_handle.goal_id.uuid))
        if control is not None:
            control.cancel.set()
        return CancelResponse.ACCEPT

    def destroy(self) -> None:
        for server in self._servers:
            server.destroy()
