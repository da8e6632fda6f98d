"""Declared dependencies match what the code imports and what installers can resolve.

- package.xml names only ROS packages released for Jazzy and rosdep keys that exist
  (`rosdep install` refuses the whole install for one unknown key), none of them `-pip`.
- Each use's entry points (the node, leovl-synth, the training CLIs) import only what
  pyproject.toml declares for that use; ROS modules they import are in package.xml.
- requirements/base.in names exactly pyproject.toml's dependencies and extras; the lock pins them.
"""
from __future__ import annotations

import ast
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# rosdep keys that exist (ros/rosdistro rosdep/python.yaml, see the team's ros2-from-pypi.md).
# python3-torch-pip, -peft-pip, -accelerate-pip and -safetensors-pip do NOT exist.
ROSDEP_KEYS = {
    "python3-numpy", "python3-scipy", "python3-yaml", "python3-tqdm", "python3-pil", "python3-pytest",
    "python3-torch", "python3-transformers-pip", "python3-rosbags-pip", "python3-open3d-pip",
    "python3-huggingface-hub-pip",
}
# ROS packages we use, each released for Jazzy (rosdep resolves them to ros-jazzy-* debs).
ROS_PACKAGES = {
    "ament_cmake", "ament_cmake_python", "ament_cmake_pytest", "ament_index_python",
    "rosidl_default_generators", "rosidl_default_runtime", "rclpy", "rcl_interfaces",
    "builtin_interfaces", "std_msgs", "std_srvs", "geometry_msgs", "sensor_msgs", "nav_msgs",
    "visualization_msgs", "action_msgs", "rosgraph_msgs", "diagnostic_msgs", "tf2_ros", "tf2_msgs", "message_filters",
    "launch", "launch_ros", "ros2bag", "rosbag2_storage_mcap", "rviz2", "diagnostic_updater",
}
DEPEND_TAGS = ("depend", "build_depend", "build_export_depend", "buildtool_depend", "buildtool_export_depend",
               "exec_depend", "test_depend", "doc_depend")
# What each use runs, and the pyproject extras that use installs (base dependencies always).
USES = {
    "robot (the node, the recorder)": (["leovl_ros.ros.assistant_node", "leovl_ros.ros.recorder"], {"runtime"}),
    # scans and bags are read by training's readers (MultiScan videos: av), as build-scenes reads them
    "scene player (synthetic rooms, scans, bags)": (["leovl_ros.ros.scene_player"], {"synth", "training"}),
    "launch file": (["launch/assistant.launch.py"], set()),
    "synthetic rooms": (["leovl_ros.synth.cli"], {"synth"}),
    "training": (["leovl_ros.training.train_cli", "leovl_ros.training.eval_cli", "leovl_ros.training.data_cli", "leovl_ros.training.tiny_model"],
                 {"training", "runtime", "synth"}),
}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _canon(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req.strip()).group(0))


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _declared(extras: set[str]) -> set[str]:
    """Distribution names installed by `pip install .[extras]` at top level (self-references followed)."""
    project = _pyproject()
    names, todo, done = {_req_name(r) for r in project["dependencies"]}, set(extras), set()
    while todo:
        extra = todo.pop()
        done.add(extra)
        for req in project["optional-dependencies"][extra]:
            self_ref = re.fullmatch(r"leovl_ros\[([a-z,]+)\]", req)
            if self_ref:
                todo |= set(self_ref.group(1).split(",")) - done
            else:
                names.add(_req_name(req))
    return names


def _package_xml_keys() -> dict[str, str]:
    root = ET.parse(REPO / "package.xml").getroot()
    return {el.text.strip(): el.tag for tag in DEPEND_TAGS for el in root.iter(tag)}


def _module_file(module: str) -> Path | None:
    path = REPO.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _third_party_imports(entries: list[str]) -> set[str]:
    """Top-level names of every non-stdlib module imported (anywhere, lazily too) by the entry
    modules and the project modules they import."""
    seen, found = set(), set()
    todo = [(e, REPO / e) if e.endswith(".py") else (e, _module_file(e)) for e in entries]
    while todo:
        module, path = todo.pop()
        if module in seen or path is None:
            continue
        seen.add(module)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top == "leovl_ros":
                    todo.append((name, _module_file(name)))
                elif top and top not in sys.stdlib_module_names:
                    found.add(top)
    return found


def test_package_xml_names_only_ros_packages_and_existing_rosdep_keys():
    keys = _package_xml_keys()
    assert keys, "no dependencies parsed from package.xml"
    unknown = {k: tag for k, tag in keys.items() if k not in ROSDEP_KEYS | ROS_PACKAGES}
    assert not unknown, f"rosdep cannot resolve these package.xml keys: {unknown}"
    # rosdep's pip installer writes into the system Python, which Ubuntu 24.04 refuses (PEP 668):
    # pip-only dependencies come from the runtime extra, in a venv (README "Use on a robot").
    assert not [k for k in keys if k.endswith("-pip")], "package.xml names pip keys"
    for interfaces in ("action_msgs", "diagnostic_msgs", "builtin_interfaces", "std_msgs", "geometry_msgs"):
        assert keys.get(interfaces) == "depend", f"{interfaces} should be a <depend>"


@pytest.mark.parametrize("use", list(USES))
def test_each_use_imports_only_what_it_declares(use):
    entries, extras = USES[use]
    imports = _third_party_imports(entries)
    assert imports, f"no imports found for {entries}"
    ros = imports & ROS_PACKAGES
    missing_ros = ros - set(_package_xml_keys())
    assert not missing_ros, f"{use} imports ROS packages that package.xml does not name: {sorted(missing_ros)}"
    provided = metadata.packages_distributions()
    declared = _declared(extras)
    undeclared = {}
    for module in sorted(imports - ros):
        dists = {_canon(d) for d in provided.get(module, [])}
        assert dists, f"{use} imports {module}, which is neither installed here nor a known ROS package"
        if not dists & declared:
            undeclared[module] = sorted(dists)
    assert not undeclared, (f"{use} imports modules of distributions that pyproject.toml does not declare for it "
                            f"(dependencies + {sorted(extras)}): {undeclared}")


def test_the_robot_runtime_leaves_out_training_synth_and_test_packages():
    robot = _declared({"runtime"})
    for name in ("open3d-cpu", "pycocoevalcap", "pytest", "pytest-timeout", "accelerate"):
        assert name not in robot, f"pip install .[runtime] would install {name} on a robot"


def test_base_in_names_every_declared_dependency_and_the_lock_pins_them():
    extras = set(_pyproject()["optional-dependencies"])
    declared = _declared(extras)
    lines = [line.split("#")[0].strip() for line in (REPO / "requirements" / "base.in").read_text().splitlines()]
    base_in = {_req_name(line) for line in lines if line}
    assert base_in == declared, (f"requirements/base.in and pyproject.toml disagree: only in base.in "
                                 f"{sorted(base_in - declared)}, only in pyproject.toml {sorted(declared - base_in)}")
    lock = {_req_name(line) for line in (REPO / "requirements" / "lock.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")}
    assert not base_in - lock, f"requirements/lock.txt does not pin {sorted(base_in - lock)}"
