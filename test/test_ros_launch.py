"""launch/assistant.launch.py and the files it needs: loaded by `launch` where installed,
and always checked against the colcon install tree and the node's parameter table."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import next_domain_id
from leovl_ros.ros.params import ASSISTANT_PARAMETERS

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "assistant.launch.py"


def _constant(name: str):
    """A module-level constant of the launch file, read without importing `launch`."""
    for node in ast.parse(LAUNCH_FILE.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{LAUNCH_FILE.name} defines no {name}")


def _install_prefix() -> Path:
    ament = pytest.importorskip("ament_index_python.packages", reason="ament_index_python is not installed")
    if not os.environ.get("AMENT_PREFIX_PATH"):
        pytest.skip("no ROS environment sourced (run through `make test`)")
    try:
        return Path(ament.get_package_prefix("leovl_ros"))
    except ament.PackageNotFoundError:
        pytest.fail("leovl_ros is not in the ament index: run `make setup` and the tests through `make test`")


def test_launch_file_loads_with_launch():
    # launch.actions, not launch: the repo's launch/ folder would import as a namespace package.
    pytest.importorskip("launch.actions", reason="`launch` is not on PyPI: checked on a ROS install")
    pytest.importorskip("launch_ros", reason="`launch_ros` is not on PyPI: checked on a ROS install")
    from launch.actions import DeclareLaunchArgument
    from launch.launch_description_sources import get_launch_description_from_python_launch_file

    description = get_launch_description_from_python_launch_file(str(LAUNCH_FILE))
    declared = {a.name: a for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    assert set(declared) >= {"params_file", "model", "adapter", "namespace", "use_sim_time", "rgb_topic",
                             "depth_topic", "camera_info_topic", "record", "bag_dir", "rviz"}
    assert all(a.description and a.description != "no description given" for a in declared.values())


def test_files_the_launch_file_references_are_installed():
    prefix = _install_prefix()
    referenced = _constant("REFERENCED_FILES")
    assert "share/leovl_ros/config/assistant.yaml" in referenced
    for rel in list(referenced) + ["share/leovl_ros/launch/assistant.launch.py", "lib/leovl_ros/scene_player"]:
        assert (prefix / rel).is_file(), f"{rel} is not installed under {prefix}: run `make setup`"
    for exe in ("assistant", "scene_player"):
        assert os.access(prefix / "lib" / "leovl_ros" / exe, os.X_OK), f"lib/leovl_ros/{exe} is not executable"
    for rel in ("share/leovl_ros/config/assistant.yaml", "share/leovl_ros/rviz/assistant.rviz",
                "share/leovl_ros/launch/assistant.launch.py"):
        source = REPO / rel.removeprefix("share/leovl_ros/")
        assert (prefix / rel).read_bytes() == source.read_bytes(), f"installed {rel} is stale: run `make setup`"


def test_params_file_sets_exactly_the_node_parameters_with_their_defaults():
    params = yaml.safe_load((REPO / "config" / "assistant.yaml").read_text())["leovl_assistant"]["ros__parameters"]
    assert list(params) == list(ASSISTANT_PARAMETERS)
    for name, (default, description) in ASSISTANT_PARAMETERS.items():
        assert params[name] == default and type(params[name]) is type(default), name
        assert description, name


def test_rviz_config_shows_the_grid_and_the_camera():
    rviz = yaml.safe_load((REPO / "rviz" / "assistant.rviz").read_text())["Visualization Manager"]
    enabled = [d for d in rviz["Displays"] if d["Enabled"]]
    topics = {(d["Class"], d.get("Topic", {}).get("Value")): d for d in enabled}
    grid = topics[("rviz_default_plugins/PointCloud2", "scene_grid")]
    assert grid["Topic"]["Durability Policy"] == "Transient Local"  # the node latches the grid
    assert ("rviz_default_plugins/Image", "rgb/image") in topics
    assert ("rviz_default_plugins/TF", None) in topics and rviz["Global Options"]["Fixed Frame"] == "map"


def test_installed_executable_runs_and_reports_a_bad_model_in_one_line(tmp_path):
    exe = _install_prefix() / "lib" / "leovl_ros" / "assistant"
    env = dict(os.environ, ROS_DOMAIN_ID=str(next_domain_id()))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])  # its python3 shebang
    done = subprocess.run([str(exe), "--ros-args", "-p", f"model:={tmp_path / 'missing'}"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "[leovl_assistant] cannot start: parameter 'model'" in done.stderr and "Traceback" not in done.stderr
