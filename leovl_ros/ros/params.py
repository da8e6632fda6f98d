"""Every parameter of ``leovl_assistant``, each declared once as a field with its default and help.

:class:`NodeParameters` holds the node's own settings (model, topics, poses, status) and,
at its place in the order, :class:`~leovl_ros.assistant.AssistantConfig` (mapping,
answers, output), whose fields include the fusion settings shared with ``build-scenes``.
The node declares exactly :data:`ASSISTANT_PARAMETERS` (read-only: applied once at
start-up), and a test checks that ``config/assistant.yaml`` sets exactly these, in order.

To add a parameter: add a ``setting(...)`` field to the dataclass that uses it (validated
in its ``__post_init__``) and its line to ``config/assistant.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..assistant.settings import AssistantConfig
from ..parameters import Parameter, build, parameters, setting

__all__ = ["ASSISTANT_PARAMETERS", "DTYPES", "NodeParameters", "POSE_SOURCES", "from_values", "node_parameters"]

POSE_SOURCES = ("auto", "tf", "odometry", "pose_stamped")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class NodeParameters:
    # --- model
    model: str = setting("Qwen2.5-VL checkpoint directory, hub id (needs allow_network), 'leovl-tiny' (the "
                         "bundled model) or 'tiny-random' (untrained test model)", "leovl-tiny")
    adapter: str = setting("LoRA adapter bundle directory loaded on top of the model ('' = none)", "")
    allow_network: bool = setting("allow downloading a hub id given as model", False)
    device: str = setting("torch device of the model, e.g. cpu, cuda, cuda:1", "cpu")
    dtype: str = setting(f"model weight dtype: one of {', '.join(DTYPES)}", "float32")
    # --- inputs
    rgb_topic: str = setting("colour image topic (rgb8, bgr8, rgba8, bgra8 or mono8)", "rgb/image")
    depth_topic: str = setting("depth image registered to the colour camera (16UC1 mm or 32FC1 m)", "depth/image")
    camera_info_topic: str = setting("CameraInfo of the colour camera", "rgb/camera_info")
    rectified: bool = setting("images are rectified (use CameraInfo p instead of k)", False)
    sync_slop: float = setting("max stamp difference (s) between a paired colour and depth image", 0.02)
    sync_queue_size: int = setting("images per stream waiting for a partner", 10)
    # --- poses
    map_frame: str = setting("fixed frame of the scene (z up)", "map")
    camera_frame: str = setting("optical frame of the camera for TF lookups ('' = the image header frame_id)", "")
    pose_source: str = setting("where camera poses come from: tf, odometry (nav_msgs/Odometry on pose_topic), "
                               "pose_stamped (geometry_msgs/PoseStamped on pose_topic), auto = tf if tf2_ros is "
                               "installed, else odometry", "auto")
    pose_topic: str = setting("pose topic for pose_source odometry / pose_stamped (its frame must be map_frame)",
                              "pose")
    camera_extrinsic: list[float] = setting(
        "camera optical frame in the pose topic's body frame: x y z qx qy qz qw (identity: the topic gives the "
        "optical frame itself; base_link -> optical is rotation -0.5 0.5 -0.5 0.5 plus the mounting offset)",
        factory=lambda: [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    pose_tolerance: float = setting("use the nearest pose if it is within this many s of an image outside the "
                                    "buffered range", 0.05)
    pose_max_gap: float = setting("interpolate only between poses at most this many s apart", 0.5)
    pose_timeout: float = setting("wait up to this many s for a pose at least as new as the image", 0.1)
    # --- mapping, answers, output
    assistant: AssistantConfig = setting("the session's settings", factory=AssistantConfig)
    # --- the node's own output
    status_rate: float = setting("scene_status publications per second", 1.0)
    publish_grid: bool = setting("publish the condensed feature grid as a PointCloud2 on scene_grid (for RViz)",
                                 True)
    log_throttle: float = setting("s between repeated warnings of the same kind", 5.0)
    shutdown_timeout: float = setting("on SIGTERM / SIGINT: s the requests in flight may take to finish before they "
                                      "are refused (new ones are refused at once; each gets its reply)", 10.0)

    def __post_init__(self) -> None:
        if self.pose_source not in POSE_SOURCES:
            raise ValueError(f"pose_source {self.pose_source!r} is not one of {POSE_SOURCES}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {DTYPES}")
        if not self.shutdown_timeout >= 0:
            raise ValueError(f"shutdown_timeout must be >= 0 s, got {self.shutdown_timeout}")


def node_parameters() -> list[Parameter]:
    """The node's parameters in declaration (and config/assistant.yaml) order."""
    return parameters(NodeParameters)


def from_values(values: dict[str, Any]) -> NodeParameters:
    """The settings from parameter values by name; ValueError names what is wrong."""
    return build(NodeParameters, values)


# name -> (default, description), as declared
ASSISTANT_PARAMETERS: dict[str, tuple[Any, str]] = {p.name: (p.default, p.description) for p in node_parameters()}
