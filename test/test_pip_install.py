"""`pip install .[training]` gives the ROS-free library: in a throwaway venv without rclpy,
the extra resolves offline against the third-party packages alone, every module outside
leovl_ros.ros imports, and the console scripts are installed."""
from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Distributions of the ROS 2 wheels (and their inner Python packages) that must be absent.
ROS_PREFIXES = ("rclpy", "rcl", "rmw", "rosidl", "rpyutils", "ros_", "ros-", "builtin_interfaces",
                "std_msgs", "sensor_msgs", "geometry_msgs", "nav_msgs", "std_srvs", "action_msgs",
                "visualization_msgs", "unique_identifier_msgs", "service_msgs", "type_description",
                "lifecycle_msgs", "rosgraph_msgs", "ament", "colcon")

CHECK = r"""
import importlib, importlib.util, pkgutil, sys
assert importlib.util.find_spec("rclpy") is None, "rclpy should be absent here"
import leovl_ros
assert "site-packages" in leovl_ros.__file__, leovl_ros.__file__
names = []
for pkg in (leovl_ros,):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name.startswith("leovl_ros.ros"):
            continue
        importlib.import_module(info.name)
        names.append(info.name)
print("imported", len(names), " ".join(sorted(names)))
"""


@pytest.mark.slow
def test_pip_install_imports_without_ros(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    # Our venv's third-party packages minus every ROS piece, offered through a .pth file:
    # the dependencies are real, rclpy is truly missing.
    farm = tmp_path / "deps"
    farm.mkdir()
    ours = Path(site.getsitepackages()[0])
    for entry in ours.iterdir():
        name = entry.name.lower()
        if name.startswith(ROS_PREFIXES) or name.startswith(("leovl", "training", "_leovl", "__editable__")) \
                or name.endswith(".pth"):
            continue
        (farm / entry.name).symlink_to(entry)
    target = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (target / "deps.pth").write_text(str(farm) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AMENT_PREFIX_PATH", "LD_LIBRARY_PATH")}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--quiet", "--no-index",
         "--no-build-isolation", "--disable-pip-version-check", f"{REPO}[training]"],
        env=env, capture_output=True, text=True, timeout=240)
    assert install.returncode == 0, install.stderr[-2000:]
    run = subprocess.run([str(py), "-c", CHECK], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    imported = run.stdout.split()
    for module in ("leovl_ros.geometry", "leovl_ros.voxel_map", "leovl_ros.condensed_grid", "leovl_ros.model.leovl",
                   "leovl_ros.synth.rooms", "leovl_ros.training.scene_dpo"):
        assert module in imported, f"{module} missing from the installed package"
    for script in ("leovl-synth", "leovl-data", "leovl-train", "leovl-eval"):
        assert (venv / "bin" / script).exists(), f"console script {script} not installed"
