"""Every parameter of ``leovl_assistant``: default and description in one table.

The node declares exactly these (read-only: they are applied once at start-up), and a test
checks that ``config/assistant.yaml`` sets exactly these, so the file a user edits can
never drift from what the node reads.
"""
from __future__ import annotations

from typing import Any

__all__ = ["ASSISTANT_PARAMETERS", "DTYPES", "POSE_SOURCES"]

POSE_SOURCES = ("auto", "tf", "odometry", "pose_stamped")
DTYPES = ("float32", "bfloat16", "float16")

# name -> (default, description)
ASSISTANT_PARAMETERS: dict[str, tuple[Any, str]] = {
    # model
    "model": ("leovl-tiny", "Qwen2.5-VL checkpoint directory, hub id (needs allow_network), 'leovl-tiny' "
                            "(the bundled model) or 'tiny-random' (untrained test model)"),
    "adapter": ("", "LoRA adapter bundle directory loaded on top of the model ('' = none)"),
    "allow_network": (False, "allow downloading a hub id given as model"),
    "device": ("cpu", "torch device of the model, e.g. cpu, cuda, cuda:1"),
    "dtype": ("float32", f"model weight dtype: one of {', '.join(DTYPES)}"),
    # inputs
    "rgb_topic": ("rgb/image", "colour image topic (rgb8, bgr8, rgba8, bgra8 or mono8)"),
    "depth_topic": ("depth/image", "depth image registered to the colour camera (16UC1 mm or 32FC1 m)"),
    "camera_info_topic": ("rgb/camera_info", "CameraInfo of the colour camera"),
    "rectified": (False, "images are rectified (use CameraInfo p instead of k)"),
    "sync_slop": (0.02, "max stamp difference (s) between a paired colour and depth image"),
    "sync_queue_size": (10, "images per stream waiting for a partner"),
    # poses
    "map_frame": ("map", "fixed frame of the scene (z up)"),
    "camera_frame": ("", "optical frame of the camera for TF lookups ('' = the image header frame_id)"),
    "pose_source": ("auto", "where camera poses come from: tf, odometry (nav_msgs/Odometry on pose_topic), "
                            "pose_stamped (geometry_msgs/PoseStamped on pose_topic), auto = tf if tf2_ros is "
                            "installed, else odometry"),
    "pose_topic": ("pose", "pose topic for pose_source odometry / pose_stamped (its frame must be map_frame)"),
    "camera_extrinsic": ([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0],
                         "camera optical frame in the pose topic's body frame: x y z qx qy qz qw "
                         "(identity: the topic gives the optical frame itself; base_link -> optical is "
                         "rotation -0.5 0.5 -0.5 0.5 plus the mounting offset)"),
    "pose_tolerance": (0.05, "use the nearest pose if it is within this many s of an image outside the "
                             "buffered range"),
    "pose_max_gap": (0.5, "interpolate only between poses at most this many s apart"),
    "pose_timeout": (0.1, "wait up to this many s for a pose at least as new as the image"),
    # mapping
    "voxel_size": (0.0, "voxel edge in m (0 = the model's)"),
    "max_voxels": (200000, "voxel cap of the map (what happens once full: eviction)"),
    "max_tokens": (0, "scene-token cap of the condensed feature grid (0 = the model's, 750 in the paper)"),
    "token_selection": ("", "which columns become tokens when the map has more than max_tokens: densest (the "
                            "paper's), nearest (around the camera), anchor (around the question's region), "
                            "coarsen (merge neighbouring columns: nothing dropped); '' = the model's"),
    "eviction": ("none", "once max_voxels is reached: none (new space is ignored), least_recent (forget the "
                         "voxels seen longest ago) or farthest (forget the voxels farthest from the camera)"),
    "map_device": ("cpu", "torch device of the voxel map and its incremental CFG sums, e.g. cuda"),
    "keyframe_translation": (0.1, "fuse a frame when the camera moved at least this many m"),
    "keyframe_rotation_deg": (10.0, "... or turned at least this many degrees since the last keyframe"),
    "max_keyframe_rate": (5.0, "keyframes per second at most (0 = unlimited)"),
    "depth_min": (0.1, "depth below this (m) is invalid"),
    "depth_max": (10.0, "depth above this (m) is invalid"),
    "gravity_warn_deg": (10.0, "warn once when the map frame's z axis is more than this many degrees from the "
                               "up direction estimated from the map (floor / horizontal planes)"),
    "align_gravity": (False, "level the map and all incoming poses by the estimated up direction (for map "
                             "frames that are not z-up, e.g. a SLAM frame at the first camera)"),
    "min_valid_fraction": (0.1, "a feature cell needs this fraction of valid depth pixels to be fused"),
    # answers
    "num_beams": (5, "beam search width"),
    "max_new_tokens": (256, "longest answer in tokens"),
    "repetition_penalty": (3.0, "generation repetition penalty"),
    "length_penalty": (1.0, "beam search length penalty"),
    "max_question_chars": (500, "longer questions, situations and goals are refused"),
    "history_turns": (4, "dialogue turns remembered per session_id"),
    "max_sessions": (32, "dialogue sessions remembered (least recently used are forgotten)"),
    "max_interactions": (1000, "recent interactions kept so scene_feedback can refer to them"),
    "default_anchor_radius": (0.0, "referred-region radius (m) when a request gives 0 (0 = the model's)"),
    "compute_grounding": (True, "score every answer with and without the scene (two extra forward passes)"),
    "max_pending_requests": (4, "questions answered or waiting at once; more are refused immediately"),
    "request_timeout": (60.0, "s a request waits for the model (busy or swapping adapters) before it is refused"),
    # output
    "scene_dir": ("~/.ros/leovl_scenes", "where save_scene writes when given no or a relative path"),
    "scene_write_dirs": ("", "more directories save_scene may write to, ':'-separated (scenes are never written "
                             "outside scene_dir and these)"),
    "interaction_log": ("~/.ros/leovl_interactions.jsonl",
                        "JSONL file every question, plan and correction is appended to (fsync'd per record; "
                        "'' = none); leovl-data from-bag --interaction-log turns it into training records"),
    "status_rate": (1.0, "scene_status publications per second"),
    "publish_grid": (True, "publish the condensed feature grid as a PointCloud2 on scene_grid (for RViz)"),
    "log_throttle": (5.0, "s between repeated warnings of the same kind"),
}
