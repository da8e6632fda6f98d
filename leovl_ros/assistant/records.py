"""Plain records of the assistant (its settings: settings.py): frames, interactions, replies, status."""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Callable

from ..rgbd_frame import RGBDFrame

__all__ = ["ASK_TASKS", "Interaction", "RGBDFrame", "Reply", "RequestControl", "RequestRefused",
           "SceneStats",
           "split_plan_steps"]

ASK_TASKS = ("qa", "dialogue", "object_caption", "scene_caption")


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
    # where the answer came from (model/grounding.py): heaviest columns (x, y centre, z mean height; m) and weights
    grounding_points: list[tuple[float, float, float]] = field(default_factory=list)
    grounding_weights: list[float] = field(default_factory=list)
    grounding_flat: bool = False  # the question named nothing in the map: uniform weights


@dataclass
class Reply:
    success: bool
    message: str
    answer: str
    interaction: Interaction
    steps: list[str] = field(default_factory=list)
    grounding: object | None = None  # model.grounding.Grounding: every column's weight (published whole)


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
    answering: dict[str, int] = field(default_factory=dict)  # batches and the prefix cache: see SceneSession.stats


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
