"""Launch the LEO-VL assistant (nav2_bringup style).

    ros2 launch leovl_ros assistant.launch.py
    ros2 launch leovl_ros assistant.launch.py namespace:=robot1 rgb_topic:=/camera/color/image_raw \
        depth_topic:=/camera/aligned_depth_to_color/image_raw camera_info_topic:=/camera/color/camera_info
    ros2 launch leovl_ros assistant.launch.py record:=true bag_dir:=~/bags rviz:=true

Then: ros2 service call /ask_scene leovl_ros/srv/AskScene "{question: 'where is the mug?'}"
(with a namespace: /robot1/ask_scene). ``record:=true`` also records exactly what
fine-tuning needs (colour, depth, camera_info, /tf, /tf_static, pose, interactions, plan,
scene_status) with ``ros2 bag record`` where it is installed, else with the package's own
recorder (crash-safe mcap segments, leovl_ros/ros/recorder.py).
"""
import importlib.util
import os
import shutil
import time

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "leovl_ros"
# Install-tree files this launch file uses (test/test_ros_launch.py checks they are installed).
REFERENCED_FILES = (
    "share/leovl_ros/config/assistant.yaml",
    "share/leovl_ros/rviz/assistant.rviz",
    "share/leovl_ros/config/fastdds_large_images.xml",
    "lib/leovl_ros/assistant",
    "lib/leovl_ros/recorder",
)
# Fast DDS 2.x (Jazzy) reads the first, Fast DDS 3.x the second (see leovl_ros/ros/dds.py).
PROFILE_VARIABLES = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")
# The node's default input names; the *_topic arguments remap them.
CAMERA_TOPICS = {"rgb_topic": "rgb/image", "depth_topic": "depth/image", "camera_info_topic": "rgb/camera_info"}


def _absolute(topic: str, namespace: str) -> str:
    """ros2 bag resolves names in its own (root) namespace: give it the node's absolute names."""
    if topic.startswith("/"):
        return topic
    return "/" + "/".join(part for part in (namespace, topic) if part)


def _launch_setup(context):
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context)

    namespace = arg("namespace").strip("/")
    overrides = {"use_sim_time": arg("use_sim_time").lower() == "true"}
    for name in ("model", "adapter"):  # empty: keep the params file's value
        if arg(name):
            overrides[name] = arg(name)
    remappings = [(default, arg(name)) for name, default in CAMERA_TOPICS.items() if arg(name) != default]
    # Camera-size images between processes need the large-image Fast DDS profile in every
    # process this launch starts (a user's own profile, already exported, is kept).
    profile = os.environ.get("FASTRTPS_DEFAULT_PROFILES_FILE") or arg("dds_profile")
    actions = [SetEnvironmentVariable(variable, profile) for variable in PROFILE_VARIABLES]
    actions += [Node(
        package=PACKAGE, executable="assistant", name="leovl_assistant", namespace=namespace, output="screen",
        parameters=[arg("params_file"), overrides], remappings=remappings,
        ros_arguments=["--log-level", arg("log_level")],
    )]
    if arg("record").lower() == "true":
        topics = [_absolute(arg(name), namespace) for name in CAMERA_TOPICS]
        topics += ["/tf", "/tf_static"] + [_absolute(t, namespace) for t in ("pose", "interactions", "plan",
                                                                             "scene_status")]
        out = os.path.join(os.path.expanduser(arg("bag_dir")), time.strftime("leovl_%Y%m%d-%H%M%S"))
        if shutil.which("ros2") and importlib.util.find_spec("ros2bag"):
            actions.append(ExecuteProcess(cmd=["ros2", "bag", "record", "-s", "mcap", "-o", out, *topics],
                                          output="screen"))
        else:  # ROS from PyPI has no rosbag2
            actions.append(Node(package=PACKAGE, executable="recorder", name="leovl_recorder", output="screen",
                                parameters=[{"output": out, "topics": topics}]))
    if arg("rviz").lower() == "true":
        actions.append(Node(package="rviz2", executable="rviz2", namespace=namespace, output="screen",
                            arguments=["-d", arg("rviz_config")],
                            parameters=[{"use_sim_time": overrides["use_sim_time"]}]))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory(PACKAGE)
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "assistant.yaml"),
                              description="YAML with the leovl_assistant parameters"),
        DeclareLaunchArgument("model", default_value="",
                              description="model to load: Qwen2.5-VL checkpoint dir, 'leovl-tiny' or 'tiny-random' "
                                          "('' = the params file's)"),
        DeclareLaunchArgument("adapter", default_value="",
                              description="LoRA adapter bundle directory ('' = the params file's)"),
        DeclareLaunchArgument("namespace", default_value="",
                              description="namespace of the node and its services, e.g. robot1 -> /robot1/ask_scene"),
        DeclareLaunchArgument("use_sim_time", default_value="false",
                              description="use /clock (bag replay, simulation) instead of wall time"),
        DeclareLaunchArgument("rgb_topic", default_value=CAMERA_TOPICS["rgb_topic"],
                              description="colour image topic (remaps rgb/image)"),
        DeclareLaunchArgument("depth_topic", default_value=CAMERA_TOPICS["depth_topic"],
                              description="depth image registered to the colour camera (remaps depth/image)"),
        DeclareLaunchArgument("camera_info_topic", default_value=CAMERA_TOPICS["camera_info_topic"],
                              description="CameraInfo of the colour camera (remaps rgb/camera_info)"),
        DeclareLaunchArgument("record", default_value="false",
                              description="also record colour, depth, camera_info, tf, tf_static, pose, "
                                          "interactions, plan and scene_status (mcap) for fine-tuning, with ros2 bag "
                                          "where installed, else with the package's crash-safe recorder"),
        DeclareLaunchArgument("bag_dir", default_value="~/.ros/leovl_bags",
                              description="directory for recorded bags (one leovl_<time> bag per launch)"),
        DeclareLaunchArgument("rviz", default_value="false", description="start RViz with the scene grid and camera"),
        DeclareLaunchArgument("rviz_config", default_value=os.path.join(share, "rviz", "assistant.rviz"),
                              description="RViz configuration file"),
        DeclareLaunchArgument("log_level", default_value="info", description="logging level of the assistant"),
        DeclareLaunchArgument("dds_profile", default_value=os.path.join(share, "config", "fastdds_large_images.xml"),
                              description="Fast DDS profile for camera-size images, set for every process this "
                                          "launch starts (ignored when FASTRTPS_DEFAULT_PROFILES_FILE is set); the "
                                          "camera driver needs it too"),
    ]
    return LaunchDescription(args + [OpaqueFunction(function=_launch_setup)])
