"""Plain records of the assistant: configuration, frames, interactions, replies, status."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..model.config import GenerationConfig
from ..rgbd_frame import RGBDFrame
from ..token_selection import TOKEN_SELECTIONS
from ..voxel_map import EVICTIONS

__all__ = ["ASK_TASKS", "AssistantConfig", "Interaction", "RGBDFrame", "Reply", "RequestControl", "RequestRefused",
           "SceneStats",
           "split_plan_steps"]

ASK_TASKS = ("qa", "dialogue", "object_caption", "scene_caption")


@dataclass
class AssistantConfig:
    keyframe_translation: float = 0.1  # m
    keyframe_rotation_deg: float = 10.0
    max_keyframe_rate: float = 5.0  # Hz, 0 = unlimited
    depth_min: float = 0.1  # m
    depth_max: float = 10.0  # m
    min_valid_fraction: float = 0.1  # of a feature cell's pixels
    max_voxels: int = 200_000
    voxel_size: float = 0.0  # m, 0 = the model's
    max_tokens: int = 0  # 0 = the model's
    token_selection: str = ""  # columns kept past max_tokens ('' = the model's): see leovl_ros.token_selection
    eviction: str = "none"  # at max_voxels: none | least_recent | farthest (see VoxelMap)
    map_device: str = "cpu"  # torch device of the voxel map and its column sums
    max_question_chars: int = 500
    history_turns: int = 4  # per dialogue session
    max_sessions: int = 32
    max_interactions: int = 1000  # kept for scene_feedback
    default_anchor_radius: float = 0.0  # m, 0 = the model's
    compute_grounding: bool = True
    max_pending_requests: int = 4
    request_timeout: float = 60.0  # s waiting for the model
    scene_dir: str = "~/.ros/leovl_scenes"
    scene_write_dirs: tuple[str, ...] = ()  # more directories save_scene may write to
    gravity_warn_deg: float = 10.0  # warn once when the map frame is tilted more than this from gravity
    align_gravity: bool = False  # level the map and incoming poses by the estimated up direction
    interaction_log: str = ""  # JSONL file every interaction is appended to ("" = none)
    generation: GenerationConfig | None = None  # None = the model's

    def __post_init__(self) -> None:
        if self.max_pending_requests < 1 or self.max_question_chars < 1 or self.history_turns < 0:
            raise ValueError("max_pending_requests and max_question_chars must be >= 1, history_turns >= 0")
        if self.max_tokens < 0 or self.voxel_size < 0 or not 0 < self.depth_min < self.depth_max:
            raise ValueError("need max_tokens >= 0, voxel_size >= 0 and 0 < depth_min < depth_max")
        if self.token_selection and self.token_selection not in TOKEN_SELECTIONS:
            raise ValueError(f"token_selection must be '' or one of {', '.join(TOKEN_SELECTIONS)}, "
                             f"got {self.token_selection!r}")
        if self.eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {', '.join(EVICTIONS)}, got {self.eviction!r}")


@dataclass
class Interaction:
    """One exchange, as published on ``interactions`` (see msg/Interaction.msg)."""

    interaction_id: str
    session_id: str
    kind: str  # ask | plan | feedback
    task: str
    instruction: str
    situation: str = ""
    anchor: tuple[float, float, float] | None = None
    anchor_radius: float = 0.0
    answer: str = ""
    corrected_answer: str = ""
    scene_stamp_s: float | None = None
    scene_tokens: int = 0
    grounding_score: float = 0.0
    latency: float = 0.0
    comment: str = ""
    anchor_size: tuple[float, float, float] | None = None  # a box region (then anchor_radius is 0)


@dataclass
class Reply:
    success: bool
    message: str
    answer: str
    interaction: Interaction
    steps: list[str] = field(default_factory=list)


@dataclass
class SceneStats:
    frames_received: int
    frames_dropped: int
    keyframes_fused: int
    num_voxels: int
    num_tokens: int
    compression_rate: float
    preservation_rate: float
    memory_bytes: int
    newest_frame_stamp_s: float | None
    model: str
    drops: dict[str, int]  # frames_dropped by reason
    pending_requests: int = 0  # being answered or waiting for the model
    worker_restarts: int = 0  # mapping worker deaths (restarted)
    gravity_angle_deg: float = -1.0  # estimated up vs the map's z axis; -1 = not estimated yet
    leveled_deg: float = 0.0  # rotation applied to incoming poses by align_gravity
    voxels_evicted: int = 0  # voxels forgotten by the eviction policy since the map was made
    points_dropped_full: int = 0  # points not fused because the map was full (eviction none)


class RequestRefused(Exception):
    """A request that cannot be served; the message tells the user what to do."""


@dataclass
class RequestControl:
    """Progress and cancel of one long request (a ROS action goal).

    ``progress(state, queue_position, partial_answer)`` is called while the request waits
    ("queued") and after each generated token ("answering"); setting ``cancel`` stops the
    wait or the generation at the next step.
    """

    progress: Callable[[str, int, str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


_NUMBERED = re.compile(r"(?:^|(?<=\s))(?:step\s*)?\d{1,2}\s*[.):]\s+", re.IGNORECASE)


def split_plan_steps(text: str) -> list[str]:
    """Steps of a plan: at "1." / "2)" / "Step 3:" markers, else one per line or sentence."""
    marks = list(_NUMBERED.finditer(text))
    if marks:  # text before the first marker is a preamble, kept only in raw_text
        pieces = [text[m.end():nxt.start()] for m, nxt in zip(marks, marks[1:])] + [text[marks[-1].end():]]
    else:
        pieces = re.split(r"\n+|(?<=[.;!?])\s+", text)
    return [p.strip(" \t\n;,") for p in pieces if p.strip(" \t\n;,.")]
