"""The Fast DDS profile for camera-size images (config/fastdds_large_images.xml).

Default Fast DDS settings lose most messages over ~512 kB between processes; a 640x480
rgb8 image is 921 kB. The profile only helps if every process that *writes* images uses
it, so tools that start processes (the demo, the tests, the launch file) set it for all
of them, unless the user already chose a profile of their own.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import MutableMapping

__all__ = ["PROFILE_NAME", "PROFILE_VARIABLES", "large_image_profile", "use_large_image_profile"]

PROFILE_NAME = "fastdds_large_images.xml"
# Fast DDS 2.x (Jazzy) reads the first, Fast DDS 3.x (Kilted and newer) the second.
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def large_image_profile() -> Path:
    """The installed profile (share/leovl_ros/config), else the one in the source tree."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            installed = Path(get_package_share_directory("leovl_ros")) / "config" / PROFILE_NAME
            if installed.is_file():
                return installed
        except PackageNotFoundError:
            pass
    except ImportError:  # pip install without ROS: the source tree's copy
        pass
    return Path(__file__).resolve().parents[2] / "config" / PROFILE_NAME


def use_large_image_profile(env: MutableMapping[str, str] = os.environ) -> str:
    """Point both profile variables of ``env`` at one profile: the user's if they set either,
    else ours. Returns that profile's path."""
    profile = next((env[v] for v in PROFILE_VARIABLES if env.get(v)), None) or str(large_image_profile())
    for variable in PROFILE_VARIABLES:
        if not env.get(variable):
            env[variable] = profile
    return profile
