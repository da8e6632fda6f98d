"""``leovl_assistant``: live mapping plus ask_scene / plan_task and friends over ROS 2.

Thin by design: messages are converted at the edge (conversions.py, pose_sources.py) and
everything else happens in :class:`leovl_ros.assistant.SceneSession`. Callback groups keep
mapping alive while a question is answered: sensors, poses, services and the status timer
each run in their own group on a multi-threaded executor.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger

from ..assistant import Interaction, RGBDFrame, RequestControl, RequestRefused, SceneSession
from ..assistant.health import HealthMonitor
from ..assistant.interaction_log import InteractionLog
from ..geometry import Intrinsics, depth_to_metres, xyz_quat_to_matrix
from ..msg import Interaction as InteractionMsg
from ..msg import Plan, PlanStep, SceneStatus
from ..scans.images import decode_image
from ..scans.pairing import ApproximateTimePairer
from ..srv import AskScene, Feedback, LoadAdapter, LoadScene, PlanTask, SaveScene
from .conversions import (grid_cloud_msg, grounding_cloud_msg, intrinsics_from_camera_info, seconds_to_stamp,
                          stamp_to_seconds)
from .assistant_actions import RequestActions, request_qos
from .diagnostics import DiagnosticsPublisher
from .model_source import ParameterError, load_model, resolve_model
from .params import from_values, node_parameters
from .pose_sources import make_pose_source
from .shutdown import SHUTTING_DOWN, RequestGate, spin_until_signal
from .sync import CameraInfoCache, PoseLookupError

__all__ = ["AssistantNode", "main"]

_LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
_RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)


_ASPECT_TOLERANCE = 0.02  # depth registered to colour at another resolution keeps the aspect ratio


class _Drop(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class AssistantNode(Node):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__("leovl_assistant", **kwargs)
        values = {q.name: self.declare_parameter(q.name, q.default, ParameterDescriptor(
            description=q.description, read_only=True)).value for q in node_parameters()}
        try:  # all cheap checks before the slow model load, so a typo fails in a second
            p = from_values(values)
        except ValueError as exc:
            raise ParameterError(f"invalid parameters: {exc}") from exc
        try:
            extrinsic = xyz_quat_to_matrix(p.camera_extrinsic[:3], p.camera_extrinsic[3:])
        except ValueError as exc:
            raise ParameterError(f"parameter 'camera_extrinsic' (x y z qx qy qz qw): {exc}") from exc
        self._map_frame = p.map_frame
        config = p.assistant
        try:
            self._pairer: ApproximateTimePairer[Image, Image] = ApproximateTimePairer(p.sync_slop, p.sync_queue_size)
            self._pose = make_pose_source(self, p.pose_source, map_frame=self._map_frame, topic=p.pose_topic,
                                          T_body_camera=extrinsic, tolerance_s=p.pose_tolerance,
                                          max_gap_s=p.pose_max_gap, timeout_s=p.pose_timeout,
                                          group=MutuallyExclusiveCallbackGroup())
        except ValueError as exc:
            raise ParameterError(f"invalid parameters: {exc}") from exc
        if config.interaction_log:  # before the model: loading a 7B takes minutes
            try:
                InteractionLog.check(config.interaction_log)
            except ValueError as exc:
                raise ParameterError(f"parameter 'interaction_log': {exc}") from exc
        source = resolve_model(p.model, p.adapter, p.allow_network)
        self.get_logger().info(f"loading model {source.name} on {p.device} ({p.dtype})")
        model = load_model(source, p.device, p.dtype, p.allow_network)
        self.max_pending_requests = config.max_pending_requests
        self._camera_frame, self._rectified = p.camera_frame, p.rectified
        self._publish_grid = p.publish_grid
        try:
            self.session = SceneSession(model, config, source.name, self._log, log_period_s=p.log_throttle)
        except ValueError as exc:  # e.g. an interaction_log that cannot be opened
            raise ParameterError(str(exc)) from exc
        for stale in self.session.remove_stale_temps():
            self.get_logger().info(f"removed {stale}, left by a save that was killed mid-write")

        self._shutdown_timeout = p.shutdown_timeout
        self._gate = RequestGate(self._log)  # shut_down: no request in flight loses its reply
        sensors = MutuallyExclusiveCallbackGroup()
        services, timers = ReentrantCallbackGroup(), MutuallyExclusiveCallbackGroup()
        # camera_info has its own callback group, so an image can wait for the info sent with it.
        self._infos: CameraInfoCache[tuple[Intrinsics | None, str]] = CameraInfoCache()
        self._unpaired_logged = 0
        self._rgb_sub = self.create_subscription(Image, p.rgb_topic, self._on_rgb, qos_profile_sensor_data,
                                                 callback_group=sensors)
        self._depth_sub = self.create_subscription(Image, p.depth_topic, self._on_depth, qos_profile_sensor_data,
                                                   callback_group=sensors)
        self._info_sub = self.create_subscription(CameraInfo, p.camera_info_topic, self._on_info,
                                                  qos_profile_sensor_data,
                                                  callback_group=MutuallyExclusiveCallbackGroup())

        self._plan_pub = self.create_publisher(Plan, "plan", _LATCHED)
        self._status_pub = self.create_publisher(SceneStatus, "scene_status", 10)
        self._interaction_pub = self.create_publisher(InteractionMsg, "interactions", _RELIABLE)
        self._grid_pub = self.create_publisher(PointCloud2, "scene_grid", _LATCHED)
        self._grounding_pub = self.create_publisher(PointCloud2, "answer_grounding", _LATCHED)  # the latest answer's
        for srv_type, name, handler in (
            (AskScene, "ask_scene", self._ask), (PlanTask, "plan_task", self._plan),
            (Trigger, "reset_scene", self._reset), (SaveScene, "save_scene", self._save),
            (LoadScene, "load_scene", self._load), (Feedback, "scene_feedback", self._feedback),
            (LoadAdapter, "load_adapter", self._load_adapter),
        ):
            # Deep request queues: a burst of calls must reach the callback (answered or refused busy).
            self.create_service(srv_type, name, self._gate.wrap(name, handler),
                                qos_profile=request_qos(config.max_pending_requests), callback_group=services)
        self._actions = RequestActions(self, self._gate.wrap("ask_scene", self._fill_ask),
                                       self._gate.wrap("plan_task", self._fill_plan), services,
                                       config.max_pending_requests)
        self._diagnostics = DiagnosticsPublisher(self, HealthMonitor(config.max_pending_requests, config.max_voxels,
                                                                     p.device))
        self._grid_version = -1
        self._status_timer = self.create_timer(1.0 / max(p.status_rate, 1e-3), self._on_status,
                                               callback_group=timers)
        self.get_logger().info(
            f"ready: model {source.name}; listening to {self._rgb_sub.topic_name}, {self._depth_sub.topic_name}, "
            f"{self._info_sub.topic_name}; poses from {self._pose.description}")

    # ------------------------------------------------------------------ helpers
    def _log(self, level: str, text: str) -> None:
        """Never raises. One call site per severity: rclpy refuses a second severity from the
        same call site (ValueError), which used to kill the mapping thread."""
        logger = self.get_logger()
        try:
            if level == "error":
                logger.error(text)
            elif level == "warn":
                logger.warning(text)
            else:
                logger.info(text)
        except Exception as exc:  # the message must not be lost with the logger
            print(f"[leovl_assistant] {level}: {text} (logger failed: {exc})", file=sys.stderr, flush=True)

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _header(self) -> Header:
        return Header(stamp=self.get_clock().now().to_msg(), frame_id=self._map_frame)

    def shut_down(self) -> None:
        """On SIGTERM / SIGINT, while the executor still spins: see shutdown.py."""
        self._gate.close(self._shutdown_timeout)

    def destroy_node(self) -> None:
        self._actions.destroy()
        self.session.close()
        super().destroy_node()

    # ------------------------------------------------------------------ sensors
    def _on_info(self, msg: CameraInfo) -> None:
        try:
            info = (intrinsics_from_camera_info(msg, self._rectified), "")
        except ValueError as exc:
            info = (None, str(exc))
        self._infos.add(stamp_to_seconds(msg.header.stamp), info)

    def _on_rgb(self, msg: Image) -> None:
        self._paired(self._pairer.add_first(stamp_to_seconds(msg.header.stamp), msg))

    def _on_depth(self, msg: Image) -> None:
        self._paired(self._pairer.add_second(stamp_to_seconds(msg.header.stamp), msg))

    def _paired(self, pair: tuple[Image, Image, float] | None) -> None:
        if self._pairer.discarded > self._unpaired_logged:
            self._unpaired_logged = self._pairer.discarded
            gap = self._pairer.nearest_miss_s
            self.session.warn_once("unpaired", "warn", (
                f"{self._pairer.discarded} colour/depth images found no partner within sync_slop="
                f"{self._pairer.slop_s} s" + ("" if gap is None else f" (nearest stamp gap seen: {gap:.3f} s)")
                + "; check that both cameras stamp from one clock, or raise sync_slop"))
        if pair is not None:
            self._on_pair(*pair)

    def _on_pair(self, rgb_msg: Image, depth_msg: Image, stamp_s: float) -> None:
        try:
            frame = self._frame(rgb_msg, depth_msg, stamp_s)
        except _Drop as drop:
            self.session.reject_frame(drop.reason, str(drop))
            return
        self.session.offer(frame)

    def _frame(self, rgb_msg: Image, depth_msg: Image, stamp_s: float) -> RGBDFrame:
        """Views of both images (depth as metres) + intrinsics + pose; raises _Drop."""
        info = self._infos.get(stamp_s)
        if info is None:
            raise _Drop("no camera_info", f"nothing received on {self._info_sub.topic_name} yet")
        intrinsics, error = info
        if intrinsics is None:
            raise _Drop("bad camera_info", error)
        try:
            rgb = decode_image(rgb_msg, "rgb")
            depth = decode_image(depth_msg, "depth")
        except ValueError as exc:
            raise _Drop("bad image", str(exc)) from exc
        if rgb.shape[:2] != (intrinsics.height, intrinsics.width):
            raise _Drop("bad camera_info", f"camera_info is for {intrinsics.width}x{intrinsics.height} but the "
                                           f"colour image is {rgb.shape[1]}x{rgb.shape[0]}")
        if depth.shape != rgb.shape[:2]:  # registered depth at another resolution: same view, scaled
            (h, w), (H, W) = depth.shape, rgb.shape[:2]
            if abs(w / h - W / H) > _ASPECT_TOLERANCE * W / H:
                raise _Drop("depth size mismatch", f"the {w}x{h} depth image has another aspect ratio than the "
                                                   f"{W}x{H} colour image, so it is not registered to it")
            intrinsics = intrinsics.scaled(depth.shape[1], depth.shape[0])
        try:
            T = self._pose.lookup(stamp_s, self._camera_frame or rgb_msg.header.frame_id)
        except PoseLookupError as exc:
            raise _Drop("no pose", str(exc)) from exc
        return RGBDFrame(rgb, depth_to_metres(depth), intrinsics, T, stamp_s)

    # ------------------------------------------------------------------ status
    def _on_status(self) -> None:
        try:
            self._publish_status()
        except Exception as exc:  # a report that fails must not stop the timer or the node
            self.session.warn_once("status", "error", f"scene_status failed: {type(exc).__name__}: {exc}")

    def _publish_status(self) -> None:
        s = self.session.stats()
        now = self._now_s()
        reasons = sorted(s.drops)
        msg = SceneStatus(
            header=self._header(), frames_received=s.frames_received, frames_dropped=s.frames_dropped,
            drop_reasons=reasons, drop_counts=[s.drops[r] for r in reasons], images_unpaired=self._pairer.discarded,
            keyframes_fused=s.keyframes_fused, num_voxels=s.num_voxels, voxels_evicted=s.voxels_evicted,
            points_dropped_full=s.points_dropped_full, num_tokens=s.num_tokens,
            compression_rate=s.compression_rate, preservation_rate=s.preservation_rate,
            memory_bytes=s.memory_bytes, model=s.model, pending_requests=s.pending_requests,
            worker_restarts=s.worker_restarts, gravity_angle_deg=s.gravity_angle_deg, leveled_deg=s.leveled_deg,
            newest_frame_age=-1.0 if s.newest_frame_stamp_s is None else max(0.0, now - s.newest_frame_stamp_s))
        self._status_pub.publish(msg)
        self._diagnostics.publish(s, self._pairer.discarded, msg.header)
        version = self.session.version()
        if self._publish_grid and version != self._grid_version and self._grid_pub.get_subscription_count() > 0:
            xyz, intensity, voxels = self.session.cloud()
            self._grid_pub.publish(grid_cloud_msg(xyz, intensity, voxels, msg.header))
            self._grid_version = version

    # ------------------------------------------------------------------ services
    def _serve(self, response: Any, what: str, call: Callable[[], Any]) -> Any:
        """Run ``call``; on refusal or error fill success/message and return None."""
        try:
            return call()
        except RequestRefused as exc:
            message = f"{SHUTTING_DOWN}: {exc}" if self._gate.closed else str(exc)
            self.get_logger().info(f"{what} refused: {message}")
        except Exception as exc:  # never let a request kill the node
            message = f"internal error in {what}: {type(exc).__name__}: {exc}"
            self.get_logger().error(message, throttle_duration_sec=5.0)
        response.success, response.message = False, message
        return None

    def _interaction_msg(self, r: Interaction) -> InteractionMsg:
        msg = InteractionMsg(
            header=self._header(), interaction_id=r.interaction_id, session_id=r.session_id, kind=r.kind,
            task=r.task, instruction=r.instruction, situation=r.situation, has_anchor=r.anchor is not None,
            anchor_radius=float(r.anchor_radius), answer=r.answer, corrected_answer=r.corrected_answer,
            comment=r.comment,
            scene_stamp=Time() if r.scene_stamp_s is None else seconds_to_stamp(r.scene_stamp_s),
            scene_tokens=r.scene_tokens, grounding_score=float(r.grounding_score), latency=float(r.latency))
        if r.anchor is not None:
            msg.anchor.x, msg.anchor.y, msg.anchor.z = (float(v) for v in r.anchor)
        if r.anchor_size is not None:
            msg.anchor_size.x, msg.anchor_size.y, msg.anchor_size.z = (float(v) for v in r.anchor_size)
        msg.grounding_points, msg.grounding_weights, msg.grounding_flat = _points(r.grounding_points), \
            [float(w) for w in r.grounding_weights], r.grounding_flat
        return msg

    def _ask(self, req: AskScene.Request, res: AskScene.Response) -> AskScene.Response:
        return self._fill_ask(req, res, self._gate.control())

    def _fill_ask(self, req, res, control: RequestControl | None):
        """Answer an AskScene request or action goal into its response or result (same fields)."""
        a, e = req.anchor_point, req.anchor_size
        anchor = (a.x, a.y, a.z) if req.use_anchor else None
        reply = self._serve(res, "ask_scene", lambda: self.session.ask(
            req.question, req.situation, req.task, req.session_id, anchor, req.anchor_radius, control,
            (e.x, e.y, e.z)))
        if reply is not None:
            r = reply.interaction
            res.success, res.message, res.answer, res.interaction_id = reply.success, reply.message, reply.answer, \
                r.interaction_id
            res.latency, res.scene_tokens, res.grounding_score = float(r.latency), r.scene_tokens, r.grounding_score
            res.grounding_points, res.grounding_weights = _points(r.grounding_points), list(r.grounding_weights)
            res.grounding_flat = r.grounding_flat
            self._interaction_pub.publish(self._interaction_msg(r))
            if reply.grounding is not None:
                g = reply.grounding
                self._grounding_pub.publish(grounding_cloud_msg(g.xyz.numpy(), g.weight.numpy(), self._header()))
        return res

    def _plan(self, req: PlanTask.Request, res: PlanTask.Response) -> PlanTask.Response:
        return self._fill_plan(req, res, self._gate.control())

    def _fill_plan(self, req, res, control: RequestControl | None):
        """Answer a PlanTask request or action goal into its response or result (same fields)."""
        reply = self._serve(res, "plan_task", lambda: self.session.plan(req.goal, req.session_id, control))
        if reply is not None:
            r = reply.interaction
            steps = [PlanStep(index=i + 1, instruction=text) for i, text in enumerate(reply.steps)]
            plan = Plan(header=self._header(), goal=r.instruction, raw_text=reply.answer,
                        interaction_id=r.interaction_id, steps=steps)
            res.success, res.message, res.plan, res.latency = reply.success, reply.message, plan, float(r.latency)
            self._interaction_pub.publish(self._interaction_msg(r))
            self._plan_pub.publish(plan)
        return res

    def _reset(self, req: Trigger.Request, res: Trigger.Response) -> Trigger.Response:
        dropped = self._serve(res, "reset_scene", self.session.reset)
        if dropped is not None:
            res.success, res.message = True, f"scene reset: {dropped} voxels dropped"
        return res

    def _save(self, req: SaveScene.Request, res: SaveScene.Response) -> SaveScene.Response:
        done = self._serve(res, "save_scene", lambda: self.session.save(req.path, req.overwrite))
        if done is not None:
            res.success, res.path, res.num_voxels = True, str(done[0]), done[1]
        return res

    def _load(self, req: LoadScene.Request, res: LoadScene.Response) -> LoadScene.Response:
        done = self._serve(res, "load_scene", lambda: self.session.load(req.path))
        if done is not None:
            res.success, res.path, res.num_voxels = True, str(done[0]), done[1]
        return res

    def _feedback(self, req: Feedback.Request, res: Feedback.Response) -> Feedback.Response:
        record = self._serve(res, "scene_feedback", lambda: self.session.feedback(
            req.interaction_id, req.corrected_answer, req.comment))
        if record is not None:
            self._interaction_pub.publish(self._interaction_msg(record))
            if record.comment:
                self.get_logger().info(f"feedback on {record.interaction_id}: {record.comment}")
            res.success = True
        return res

    def _load_adapter(self, req: LoadAdapter.Request, res: LoadAdapter.Response) -> LoadAdapter.Response:
        name = self._serve(res, "load_adapter", lambda: self.session.load_adapter(req.bundle_path))
        res.model = self.session.model_name
        if name is not None:
            res.success, res.message = True, self.session.swap_note  # what became of the scene, if anything
            self.get_logger().info(f"now answering with {name}")
        return res


def _points(xyz: list[tuple[float, float, float]]) -> list[Point]:
    return [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in xyz]


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)  # ours: shutdown.py
    node = None
    try:
        node = AssistantNode()
        executor = MultiThreadedExecutor(num_threads=node.max_pending_requests + 4)
        executor.add_node(node)
        spin_until_signal(executor, node.shut_down)
    except ParameterError as exc:
        print(f"[leovl_assistant] cannot start: {exc}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
