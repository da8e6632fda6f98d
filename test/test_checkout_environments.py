"""Each checkout runs its own code (Makefile `venv`, env/venvs.sh): two clones of this
repository, each set up with `make venv`, import their own `leovl_ros` and run their own
console scripts; this checkout's environment is left alone; deleting one clone (and its
venv) leaves the other working and the machine-wide include links intact, and the deleted
one's CLIs fail instead of running someone else's code."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support.working_tree import REPO, snapshot

WHERE = "import leovl_ros; print(leovl_ros.__file__)"
MARK = "clone-b-code"
NUMPY_INCLUDE_LINK = Path("/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include")


def _user_env() -> dict[str, str]:
    """A shell with no venv activated, as a user's."""
    ours = str(Path(sys.prefix) / "bin")
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTEST_CURRENT_TEST", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PATH"] = ":".join(p for p in env["PATH"].split(":") if p != ours)
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=_user_env(), capture_output=True, text=True, timeout=timeout)


def _make(clone: Path, target: str) -> str:
    done = _run(["make", "-s", target], clone)
    assert done.returncode == 0, f"make {target} in {clone}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_clones_each_run_their_own_code(tmp_path):
    if not (Path(sys.prefix) / "checkout").exists():
        pytest.skip("not in a checkout venv (run through `make test`): the shared base venv may be missing")
    snap = snapshot(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    for clone in (a, b):
        subprocess.run(["git", "clone", "--quiet", str(snap), str(clone)], check=True)
    # Clone b's data CLI says so when it runs: only b's environment may print it.
    with open(b / "leovl_ros" / "training" / "data_cli.py", "a") as f:
        f.write(f"\nprint({MARK!r})\n")
    venvs = {}
    try:
        for clone in (a, b):
            venvs[clone] = Path(_make(clone, "venv-path").strip())
            assert "[setup]" in _make(clone, "venv")
            assert _make(clone, "venv") == "", "a second `make venv` redid work"
        assert venvs[a] != venvs[b]
        for clone, venv in venvs.items():
            assert not venv.is_relative_to(clone), "CMake refuses include paths inside the source tree"
            where = _run([str(venv / "bin" / "python"), "-c", WHERE], tmp_path)
            assert Path(where.stdout.strip()) == clone / "leovl_ros" / "__init__.py", where.stderr
        help_a = _run([str(venvs[a] / "bin" / "leovl-data"), "--help"], tmp_path)
        help_b = _run([str(venvs[b] / "bin" / "leovl-data"), "--help"], tmp_path)
        assert help_a.returncode == 0 and "usage: leovl-data" in help_a.stdout, help_a.stderr
        assert MARK not in help_a.stdout
        assert help_b.returncode == 0 and help_b.stdout.startswith(MARK), help_b.stderr
        # Setting up the clones did not take this checkout's environment over.
        ours = _run([sys.executable, "-c", WHERE], tmp_path)
        assert Path(ours.stdout.strip()) == REPO / "leovl_ros" / "__init__.py", ours.stderr

        # The ROS wheels' machine-wide include links (make setup) must not lead into a clone's venv.
        links = _run([str(REPO / "env" / "include_links.sh"), str(venvs[a] / "bin" / "python")], tmp_path)
        assert links.returncode == 0, links.stderr
        shutil.rmtree(a)
        help_b = _run([str(venvs[b] / "bin" / "leovl-data"), "--help"], tmp_path)
        assert help_b.returncode == 0 and help_b.stdout.startswith(MARK), help_b.stderr
        gone = _run([str(venvs[a] / "bin" / "leovl-data"), "--help"], tmp_path)
        assert gone.returncode != 0 and "usage" not in gone.stdout, "a deleted clone's CLI ran other code"
        shutil.rmtree(venvs[a].parent)
        assert NUMPY_INCLUDE_LINK.resolve().is_dir(), f"{NUMPY_INCLUDE_LINK} died with the deleted clone's venv"
        _make(b, "clean")
        assert not venvs[b].exists(), "make clean left the checkout's venv behind"
    finally:
        for venv in venvs.values():
            shutil.rmtree(venv.parent, ignore_errors=True)
