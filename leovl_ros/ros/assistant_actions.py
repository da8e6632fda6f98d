"""AskScene and PlanTask as ROS 2 actions: queue position and the answer as it is generated
as feedback, and cancel. The services stay for short calls; both fill the same fields.

Cancel reaches the request through :class:`RequestControl`: a queued request leaves the
queue, a running one stops at the next generated token, so the model is free at once.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.action.server import ServerGoalHandle
from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node

from ..action import AskScene, PlanTask
from ..assistant.records import RequestControl

__all__ = ["RequestActions"]

Fill = Callable[[Any, Any, RequestControl], Any]


class RequestActions:
    """Action servers ``ask_scene`` and ``plan_task`` backed by the node's request handlers.

    ``fill_ask(goal, result, control)`` / ``fill_plan(...)`` answer a goal into a result
    (the same code as the services: goal and request, result and response share fields).
    """

    def __init__(self, node: Node, fill_ask: Fill, fill_plan: Fill, group: CallbackGroup) -> None:
        self._controls: dict[bytes, RequestControl] = {}
        self._lock = threading.Lock()
        self._servers = [
            ActionServer(node, action, name, execute_callback=self._executor(action, fill),
                         goal_callback=lambda goal: GoalResponse.ACCEPT, cancel_callback=self._cancel,
                         callback_group=group)
            for action, name, fill in ((AskScene, "ask_scene", fill_ask), (PlanTask, "plan_task", fill_plan))]

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
