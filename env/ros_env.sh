#!/usr/bin/env bash
# Run a command inside the project venv with the colcon install tree sourced, so rclpy and
# the generated leovl_ros.msg/.srv types import. Usage: env/ros_env.sh VENV CMD [ARGS...]
set -eo pipefail
venv="$1"; shift
here=$(cd "$(dirname "$0")/.." && pwd)
source "$venv/bin/activate"
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
source "$here/install/setup.bash"
exec "$@"
