"""The assistant's settings: each one a field with its default and help text, validated here.

These fields are also the ROS node's parameters (``leovl_ros.ros.params`` flattens them, in
this order, after the node's own): adding one means adding a field here and its line in
``config/assistant.yaml``. Settings that change how the model runs (voxel size, token cap
and selection, decoding) reach the model as :meth:`AssistantConfig.model_overrides`, which
the model resolves on top of whatever bundle it holds, so they survive adapter swaps.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..fusion import FusionSettings
from ..model.config import ConfigOverrides, GenerationConfig
from ..parameters import setting
from ..token_selection import TOKEN_SELECTIONS
from ..voxel_map import EVICTIONS

__all__ = ["AssistantConfig"]


@dataclass
class AssistantConfig:
    # --- mapping
    voxel_size: float = setting("voxel edge in m (0 = the model's)", 0.0)
    max_voxels: int = setting("voxel cap of the map (what happens once full: eviction)", 200000)
    max_tokens: int = setting("scene-token cap of the condensed feature grid (0 = the model's, 750 in the paper)", 0)
    token_selection: str = setting(
        "which columns become tokens when the map has more than max_tokens: densest (the paper's), nearest "
        "(around the camera), anchor (around the question's region), coarsen (merge neighbouring columns: "
        "nothing dropped), question (the columns the question's words match, the rest coarse); '' = the model's",
        "")
    eviction: str = setting("once max_voxels is reached: none (new space is ignored), least_recent (forget the "
                            "voxels seen longest ago) or farthest (forget the voxels farthest from the camera)",
                            "none")
    map_device: str = setting("torch device of the voxel map and its incremental CFG sums, e.g. cuda", "cpu")
    fusion: FusionSettings = setting("keyframes and valid depth (shared with leovl-data build-scenes)",
                                     factory=FusionSettings)
    max_keyframe_rate: float = setting("keyframes per second at most (0 = unlimited)", 5.0)
    gravity_warn_deg: float = setting("warn once when the map frame's z axis is more than this many degrees from "
                                      "the up direction estimated from the map (floor / horizontal planes)", 10.0)
    align_gravity: bool = setting("level the map and all incoming poses by the estimated up direction (for map "
                                  "frames that are not z-up, e.g. a SLAM frame at the first camera)", False)
    # --- answers (paper: 5 beams, 256 tokens, repetition penalty 3.0, length penalty 1.0)
    num_beams: int = setting("beam search width", 5)
    max_new_tokens: int = setting("longest answer in tokens", 256)
    repetition_penalty: float = setting("generation repetition penalty", 3.0)
    length_penalty: float = setting("beam search length penalty", 1.0)
    max_question_chars: int = setting("longer questions, situations and goals are refused", 500)
    history_turns: int = setting("dialogue turns remembered per session_id", 4)
    max_sessions: int = setting("dialogue sessions remembered (least recently used are forgotten)", 32)
    max_interactions: int = setting("recent interactions kept so scene_feedback can refer to them", 1000)
    default_anchor_radius: float = setting("referred-region radius (m) when a request gives 0 (0 = the model's)",
                                           0.0)
    compute_grounding: bool = setting("score every answer with and without the scene (two extra forward passes)",
                                      True)
    max_pending_requests: int = setting("questions answered or waiting at once; more are refused immediately "
                                        "(clients: see the README for the reply queue depth this needs)", 64)
    max_batch: int = setting("questions answered together in one model call (those waiting when the model "
                             "becomes free; 16 answered fastest in bench.node_load)", 16)
    prefix_cache_mb: float = setting("memory (MiB) for prefilled scene prefixes (prompt + scene tokens, per map "
                                     "snapshot and referred region), reused by every question; 0 = off", 256.0)
    request_timeout: float = setting("s a request waits for the model (busy or swapping adapters) before it is "
                                     "refused", 60.0)
    # --- output
    scene_dir: str = setting("where save_scene writes when given no or a relative path", "~/.ros/leovl_scenes")
    scene_write_dirs: str = setting("more directories save_scene may write to, ':'-separated (scenes are never "
                                    "written outside scene_dir and these)", "")
    # The library writes no log unless asked; the node keeps one by default.
    interaction_log: str = setting(
        "JSONL file every question, plan and correction is appended to (fsync'd per record; '' = none); "
        "leovl-data from-bag --interaction-log turns it into training records", "",
        param_default="~/.ros/leovl_interactions.jsonl")

    def __post_init__(self) -> None:
        if self.max_pending_requests < 1 or self.max_question_chars < 1 or self.history_turns < 0:
            raise ValueError("max_pending_requests and max_question_chars must be >= 1, history_turns >= 0")
        if self.max_batch < 1 or self.prefix_cache_mb < 0:
            raise ValueError("need max_batch >= 1 and prefix_cache_mb >= 0")
        if self.max_tokens < 0 or self.voxel_size < 0:
            raise ValueError("need max_tokens >= 0 and voxel_size >= 0")
        if self.max_keyframe_rate < 0 or self.max_voxels < 1:
            raise ValueError("need max_keyframe_rate >= 0 and max_voxels >= 1")
        if self.token_selection and self.token_selection not in TOKEN_SELECTIONS:
            raise ValueError(f"token_selection must be '' or one of {', '.join(TOKEN_SELECTIONS)}, "
                             f"got {self.token_selection!r}")
        if self.eviction not in EVICTIONS:
            raise ValueError(f"eviction must be one of {', '.join(EVICTIONS)}, got {self.eviction!r}")
        GenerationConfig(**self._generation())  # the decoding settings' one validation

    @property
    def write_dirs(self) -> tuple[str, ...]:
        """``scene_write_dirs`` split at ':' (empty entries ignored)."""
        return tuple(d for d in self.scene_write_dirs.split(":") if d.strip())

    def model_overrides(self) -> ConfigOverrides:
        """What the model runs with on top of its own config (0 / '' = the model's)."""
        grid = {"max_tokens": self.max_tokens} if self.max_tokens else {}
        if self.token_selection:
            grid["token_selection"] = self.token_selection
        return ConfigOverrides(voxel_size=self.voxel_size or None, grid=grid, generation=self._generation())

    def _generation(self) -> dict:
        return {"num_beams": self.num_beams, "max_new_tokens": self.max_new_tokens,
                "repetition_penalty": self.repetition_penalty, "length_penalty": self.length_penalty}
