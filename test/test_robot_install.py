"""The README's robot install ("Use on a robot"), run line by line as a robot user would.

The bash block of that README section is executed as written, with three stand-ins for what
only a robot has (`STAND_INS`): the PyPI ROS 2 of `make setup` plays apt's /opt/ros/jazzy
(its site-packages on PYTHONPATH, as setup.bash puts /opt/ros/jazzy/lib/python3.X/site-packages
there, with the training/synth/test-only distributions left out: `NOT_ON_A_ROBOT`), a git
snapshot of this working tree is cloned, and rosdep is skipped (not installable without apt
ROS; test_dependencies.py checks every package.xml key instead). `ros2 run` is emulated by a
script doing what ros2cli does (exec the package's executable): ros2cli is not on PyPI.
pip runs offline, so the runtime extra must be satisfied by what the "system" already has.
The node then answers one question over real DDS about a synthetic room streamed to it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest

from conftest import next_domain_id, wait_for
from support.working_tree import snapshot

REPO = Path(__file__).resolve().parents[1]
# Robot-only lines of the README block -> what stands in for them here (each must occur once).
STAND_INS = {
    "source /opt/ros/jazzy/setup.bash": "source {ros_setup}",
    "git clone <this repository> leovl_ros": "git clone --quiet {snapshot} leovl_ros",
    "rosdep install --from-paths src --ignore-src -y": "echo 'rosdep skipped: needs an apt ROS install'",
}
# Distributions a robot does not get (training, synthetic rooms, tests): hidden from the
# stand-in system, so neither `pip install .[runtime]` (offline) nor the node can lean on them.
NOT_ON_A_ROBOT = ("open3d-cpu", "pycocoevalcap", "pytest", "pytest-timeout", "av")
ROS2_RUN = """#!/usr/bin/env bash
# Stands in for ros2cli's `ros2 run PKG EXE [ARGS]` (ros2cli is not on PyPI): exec the executable.
[ "$1" = run ] || { echo "only 'ros2 run' is emulated here" >&2; exit 2; }
pkg=$2 exe=$3; shift 3
IFS=: read -ra prefixes <<< "$AMENT_PREFIX_PATH"
for prefix in "${prefixes[@]}"; do
  [ -x "$prefix/lib/$pkg/$exe" ] && exec "$prefix/lib/$pkg/$exe" "$@"
done
echo "No executable found" >&2; exit 1
"""
# The operator's side, run by the system Python in a shell with only ROS and the workspace
# sourced (as `ros2 service call` would be): waits for the node, then asks once.
CLIENT = r"""
import json, sys, time
from pathlib import Path
import rclpy
from leovl_ros.msg import SceneStatus
from leovl_ros.srv import AskScene

out, timeout = Path(sys.argv[1]), float(sys.argv[2])
rclpy.init()
node = rclpy.create_node("robot_recipe_client")
status = []
node.create_subscription(SceneStatus, "scene_status", status.append, 10)
ask = node.create_client(AskScene, "ask_scene")
deadline = time.monotonic() + timeout

def spin_until(condition, what):
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        rclpy.spin_once(node, timeout_sec=0.1)

spin_until(ask.service_is_ready, "ask_scene")
(out / "ready").touch()
spin_until(lambda: status and status[-1].keyframes_fused >= 1, "a fused keyframe")
future = ask.call_async(AskScene.Request(question="How many chairs are there in the room?"))
spin_until(future.done, "the answer")
res = future.result()
(out / "answer.json").write_text(json.dumps({"success": res.success, "answer": res.answer,
                                             "message": res.message, "model": status[-1].model}))
"""


def readme_robot_block() -> list[str]:
    """The lines of the first bash block in the README's "Use on a robot" section."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Use on a robot"):]
    section = section[: section.find("\n## ", 1)]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "no ```bash block in the README's 'Use on a robot' section"
    return [line for line in block.group(1).splitlines() if line.strip()]


def _robot_script(lines: list[str], **paths: Path) -> str:
    script = "\n".join(lines)
    for line, stand_in in STAND_INS.items():
        assert script.count(line) == 1, f"the README's robot block no longer has `{line}` exactly once"
        script = script.replace(line, stand_in.format(**paths))
    return "set -exo pipefail\n" + script + "\n"


def _stand_in_ros(tmp: Path) -> Path:
    """A setup.bash exposing this venv's PyPI ROS 2 the way /opt/ros/jazzy/setup.bash exposes apt's."""
    site = Path(sysconfig.get_paths()["purelib"])
    hidden = set()
    for name in NOT_ON_A_ROBOT:
        try:
            hidden |= {f.parts[0] for f in metadata.distribution(name).files or [] if f.parts[0] != ".."}
        except metadata.PackageNotFoundError:
            pass
    farm = tmp / "ros" / "site-packages"
    farm.mkdir(parents=True)
    for entry in site.iterdir():
        # Our own editable install belongs to the source tree, not to the system.
        if entry.name in hidden or entry.suffix == ".pth" or entry.name.startswith(("leovl_ros", "__editable__")):
            continue
        (farm / entry.name).symlink_to(entry)
    bin_dir = tmp / "ros" / "bin"
    bin_dir.mkdir()
    (bin_dir / "colcon").symlink_to(Path(sys.prefix) / "bin" / "colcon")  # apt: /usr/bin/colcon
    (bin_dir / "ros2").write_text(ROS2_RUN)
    (bin_dir / "ros2").chmod(0o755)
    libs = [str(Path(sys.prefix) / "lib")] + [str(p) for p in sorted(site.glob("ros_*.libs"))]
    setup = tmp / "ros" / "setup.bash"
    setup.write_text(
        "# Stands in for /opt/ros/jazzy/setup.bash (the PyPI ROS 2 of `make setup`).\n"
        "export ROS_DISTRO=jazzy ROS_VERSION=2 ROS_PYTHON_VERSION=3\n"
        f"export AMENT_PREFIX_PATH={sys.prefix} CMAKE_PREFIX_PATH={sys.prefix}\n"
        f"export PYTHONPATH={farm}\n"
        f"export LD_LIBRARY_PATH={':'.join(libs)}\n"
        f"export PATH={bin_dir}:$PATH\n")
    return setup


def _robot_env(home: Path, domain_id: int) -> dict[str, str]:
    """A robot user's login environment: the system Python first on PATH, nothing sourced yet."""
    ours = str(Path(sys.prefix) / "bin")
    path = [str(Path(sys.base_prefix) / "bin")] + [p for p in os.environ["PATH"].split(":") if p != ours]
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "LD_LIBRARY_PATH",
            "COLCON_PREFIX_PATH", "_ROS_WHEELS_BOOTSTRAP_COMPLETE", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("ROS_")}
    env.update(HOME=str(home), PATH=":".join(path), ROS_DOMAIN_ID=str(domain_id), ROS_LOCALHOST_ONLY="1",
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", PYTHONUNBUFFERED="1",
               # No network in tests: pip may use only what is installed; the build backend
               # (setuptools) is taken from the environment instead of being downloaded.
               PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0")
    return env


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.ros
@pytest.mark.timeout(600)
def test_readme_robot_install_builds_the_package_and_the_node_answers(tmp_path):
    pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
    for tool in ("git", "cmake"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    home = tmp_path / "home"
    home.mkdir()
    ws = home / "ws"
    script = _robot_script(readme_robot_block(), ros_setup=_stand_in_ros(tmp_path), snapshot=snapshot(tmp_path))
    domain_id = next_domain_id()
    env = _robot_env(home, domain_id)
    log = tmp_path / "recipe.log"
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log_path: Path, **kw) -> subprocess.Popen:
        with open(log_path, "w") as out:
            procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw))
        return procs[-1]

    def tail(path: Path, n: int = 40) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""

    try:
        recipe = start(["bash", "-c", script], log, cwd=home, env=env)
        wait_for(lambda: "+ ros2 run leovl_ros assistant" in log.read_text() or recipe.poll() is not None, 420.0,
                 f"the recipe to reach `ros2 run`\n{tail(log)}", poll=0.5)
        assert recipe.poll() is None, f"the recipe stopped (exit {recipe.returncode}):\n{tail(log, 80)}"

        client_py = tmp_path / "client.py"
        client_py.write_text(CLIENT)
        client_log = tmp_path / "client.log"
        client = start(["bash", "-c", f"source {tmp_path / 'ros' / 'setup.bash'} && source {ws / 'install/setup.bash'}"
                        f" && exec python3 {client_py} {tmp_path} 240"], client_log, cwd=home, env=env)
        wait_for(lambda: (tmp_path / "ready").exists() or client.poll() is not None or recipe.poll() is not None,
                 120.0, f"the node's ask_scene service\n{tail(log)}")
        assert (tmp_path / "ready").exists(), f"{tail(client_log)}\n--- recipe:\n{tail(log)}"

        # A camera: the synthetic room streamed from the test's own environment (standard messages only).
        player_env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id),
                          PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        player = start([sys.executable, "-m", "leovl_ros.ros.scene_player", "--ros-args", "-p", "num_frames:=6",
                        "-p", "rate:=10.0", "-p", "seed:=900001"], tmp_path / "player.log", cwd=REPO, env=player_env)
        assert player.wait(120) == 0, tail(tmp_path / "player.log")
        wait_for(lambda: client.poll() is not None or recipe.poll() is not None, 180.0,
                 f"the answer\n{tail(client_log)}\n--- recipe:\n{tail(log)}")
        assert client.returncode == 0, f"{tail(client_log)}\n--- recipe:\n{tail(log)}"
        answer = json.loads((tmp_path / "answer.json").read_text())
        assert answer["success"] and answer["answer"] in {str(n) for n in range(10)}, answer
        assert answer["model"].endswith("models/leovl-tiny"), answer
        assert recipe.poll() is None, tail(log)
    finally:
        for proc in reversed(procs):
            _stop(proc)

    text = log.read_text()
    # Offline, with torch & co. already there, pip installs only the package itself.
    installed = re.findall(r"Successfully installed (.+)", text)
    assert installed and installed[-1].split() == ["leovl_ros-0.1.0"], installed
    venv = ws / "venv"
    assert (venv / "COLCON_IGNORE").exists()
    keep = (venv / "keep.txt").read_text().split()
    assert {line.split("==")[0] for line in keep} == {"torch", "numpy"}, keep
    assert not list(venv.glob("lib/python*/site-packages/torch")), "pip replaced the installed torch"
    # Built with the venv's Python: the executables run it without the venv activated.
    first_line = (ws / "install" / "leovl_ros" / "lib" / "leovl_ros" / "assistant").read_text().splitlines()[0]
    assert first_line == f"#!{venv}/bin/python3", first_line
