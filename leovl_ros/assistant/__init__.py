"""The assistant without ROS: a :class:`SceneSession` (map + keyframes + model + threads) and
its records. The ROS node in ``leovl_ros.ros`` only converts messages to and from these.

    session.py           SceneSession: live mapping, questions, plans, dialogue, feedback, hot swaps
    settings.py          AssistantConfig: every setting with its default and help, validated
    records.py           frames, interactions, replies, status
    request_queue.py     back-pressure and batching of questions
    leveling.py          gravity for the session: a periodic up estimate, levelling the map
    grid_view.py         the CFG a question would get: its size (status) and cells (RViz)
    interaction_book.py  recent exchanges and dialogue histories
    interaction_log.py   a durable append-only log of every interaction and correction
    scene_files.py       where save_scene / load_scene may read and write
    health.py            OK / WARN / ERROR checks (the node's /diagnostics)
"""
from .grid_view import grid_cloud, grid_stats
from .records import (ASK_TASKS, Interaction, RGBDFrame, Reply, RequestControl, RequestRefused,
                      SceneStats, split_plan_steps)
from .session import SceneSession
from .settings import AssistantConfig

__all__ = ["ASK_TASKS", "AssistantConfig", "Interaction", "RGBDFrame", "Reply", "RequestControl", "RequestRefused", "SceneSession",
           "SceneStats", "grid_cloud", "grid_stats", "split_plan_steps"]
