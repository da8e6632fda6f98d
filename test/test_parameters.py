"""Settings declared once (leovl_ros.parameters): the node's flat parameters from nested
dataclass fields, one fusion-settings dataclass for the node and build-scenes, and the
model's run config resolved from its stored config + overrides without changing it."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from leovl_ros.assistant.settings import AssistantConfig
from leovl_ros.condensed_grid import GridConfig
from leovl_ros.fusion import FusionSettings
from leovl_ros.model.config import ConfigOverrides, GenerationConfig, LeoVLConfig, resolve_config
from leovl_ros.parameters import build, parameters
from leovl_ros.ros.params import ASSISTANT_PARAMETERS, from_values
from leovl_ros.training.config import load_config
from leovl_ros.training.scenes import FusionConfig


def test_nested_settings_flatten_into_the_node_parameters_under_their_node_names():
    names = [p.name for p in parameters(AssistantConfig)]
    assert names.index("keyframe_translation") == names.index("map_device") + 1  # fusion expands in place
    assert "keyframe_translation_m" not in ASSISTANT_PARAMETERS and "fusion" not in ASSISTANT_PARAMETERS
    by_name = {p.name: p for p in parameters(AssistantConfig)}
    assert by_name["keyframe_translation"].path == ("fusion", "keyframe_translation_m")
    assert by_name["interaction_log"].default == "~/.ros/leovl_interactions.jsonl"  # the node keeps a log ...
    assert AssistantConfig().interaction_log == ""  # ... the library writes none unless asked
    p = from_values({"keyframe_translation": 0.3, "depth_max": 4.0, "max_tokens": 9, "map_frame": "world"})
    assert (p.map_frame, p.assistant.max_tokens) == ("world", 9)
    assert p.assistant.fusion == FusionSettings(keyframe_translation_m=0.3, depth_max=4.0)
    with pytest.raises(ValueError, match="unknown parameter.*keyframe_translation_m"):
        build(AssistantConfig, {"keyframe_translation_m": 0.3})
    with pytest.raises(ValueError, match="0 < depth_min < depth_max"):
        from_values({"depth_min": 5.0, "depth_max": 1.0})
    with pytest.raises(ValueError, match="num_beams"):
        from_values({"num_beams": 0})


def test_the_node_and_build_scenes_read_the_same_fusion_settings(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"output_dir": "o", "model": {"base": "b"}, "scenes": {"fusion": {
        "keyframe_translation_m": 0.3, "keyframe_rotation_deg": 5.0, "depth_max": 4.0, "encode_batch": 2}}}))
    offline = load_config(recipe).scenes.fusion
    live = from_values({"keyframe_translation": 0.3, "keyframe_rotation_deg": 5.0, "depth_max": 4.0}).assistant.fusion
    assert isinstance(offline, FusionSettings) and type(live) is FusionSettings
    shared = [f.name for f in dataclasses.fields(FusionSettings)]
    assert {k: getattr(offline, k) for k in shared} == dataclasses.asdict(live)
    with pytest.raises(ValueError, match="scenes.fusion: need 0 < depth_min"):
        FusionConfig(depth_min=0.0)  # depth 0 is "no measurement" on both sides


def test_resolved_config_overrides_without_changing_the_stored_one():
    stored = LeoVLConfig(base_model="b", hidden_size=64)
    before = dataclasses.asdict(stored)
    over = ConfigOverrides(voxel_size=0.1, grid={"max_tokens": 7, "token_selection": "nearest"},
                           generation={"num_beams": 2})
    run = resolve_config(stored, over)
    assert dataclasses.asdict(stored) == before and run is not stored
    assert run.voxel_size == 0.1 and run.grid == GridConfig(max_tokens=7, token_selection="nearest")
    assert run.generation == GenerationConfig(num_beams=2) and run.lora_r == stored.lora_r
    assert resolve_config(stored, ConfigOverrides()) is stored
    with pytest.raises(ValueError, match=r"unknown grid setting\(s\) \['colour'\]"):
        resolve_config(stored, ConfigOverrides(grid={"colour": 1}))
    with pytest.raises(ValueError, match="max_tokens must be positive"):
        resolve_config(stored, ConfigOverrides(grid={"max_tokens": 0}))
