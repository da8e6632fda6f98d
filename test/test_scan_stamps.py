"""One stamp conversion for bags, the player and the node: message and dict forms agree."""
from __future__ import annotations

import pytest

from leovl_ros.bag_types import bag_typestore
from leovl_ros.scans.stamps import stamp_to_seconds


def test_a_stamp_is_the_same_seconds_as_a_message_and_as_its_logged_dict():
    ns = 1_700_000_000_123_456_789
    sec, nanosec = divmod(ns, 10**9)
    msg = bag_typestore().types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
    assert stamp_to_seconds(msg) == stamp_to_seconds({"sec": sec, "nanosec": nanosec}) == pytest.approx(ns * 1e-9)
    with pytest.raises(KeyError):
        stamp_to_seconds({"sec": sec})
