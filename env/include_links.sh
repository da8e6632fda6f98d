#!/usr/bin/env bash
# The CMake config files in the ROS 2 PyPI wheels name the include folders of the machine
# that built them (/opt/python/cp311-cp311/...). Point those paths at this interpreter's
# Python headers and the numpy headers of this venv's base (by their real path: a checkout's
# venv only links to them, and it may be deleted while other checkouts still build). Cheap;
# safe to rerun, also while another checkout builds (the link is replaced in one rename).
set -euo pipefail
py="$1"
root=/opt/python/cp311-cp311
pyinc=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['include'])")
npinc=$(realpath "$("$py" -c "import numpy; print(numpy.get_include())")")
link() {  # link TARGET NAME: (re)create NAME -> TARGET only when it differs
  [ "$(readlink "$2" 2>/dev/null)" = "$1" ] && return 0
  mkdir -p "$(dirname "$2")" && ln -sfn "$1" "$2.$$" && mv -Tf "$2.$$" "$2"
}
link "$pyinc" "$root/include/python3.11"
link "$npinc" "$root/lib/python3.11/site-packages/numpy/_core/include"
