"""Shared test fixtures: ROS isolation (own domain id, loopback only) and condition waits."""
from __future__ import annotations

import itertools
import os
import time
from typing import Callable

import pytest

from leovl_ros.ros.dds import use_large_image_profile

# Keep every DDS participant of the test run on this machine, and let camera-size images
# through (the shipped Fast DDS profile, as on a robot): set before any participant exists.
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
use_large_image_profile()

_domain_counter = itertools.count()


def next_domain_id() -> int:
    """A ROS domain id (1..100) unlikely to be used by another test or test run right now."""
    return 1 + (os.getpid() * 7 + next(_domain_counter) * 13) % 100


def wait_for(condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail the test naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(poll)


@pytest.fixture
def ros_context():
    """A fresh rclpy context on its own domain id, shut down after the test."""
    rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed (run through `make test`)")
    context = rclpy.Context()
    domain_id = next_domain_id()
    rclpy.init(context=context, domain_id=domain_id)
    context.leovl_domain_id = domain_id
    try:
        yield context
    finally:
        context.try_shutdown()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # pytest already exits 5 when nothing ran; make the reason impossible to miss in CI logs.
    if session.testscollected == 0:
        print("\nERROR: no tests were collected: the test suite did not run.", flush=True)
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED
