"""The assistant without ROS: a :class:`SceneSession` (map + keyframes + model + threads) and
its records. The ROS node in ``leovl_ros.ros`` only converts messages to and from these."""
from .grid_view import grid_cloud, grid_stats
from .records import (ASK_TASKS, AssistantConfig, Interaction, RGBDFrame, Reply, RequestControl, RequestRefused,
                      SceneStats, split_plan_steps)
from .session import SceneSession

__all__ = ["ASK_TASKS", "AssistantConfig", "Interaction", "RGBDFrame", "Reply", "RequestControl", "RequestRefused", "SceneSession",
           "SceneStats", "grid_cloud", "grid_stats", "split_plan_steps"]
