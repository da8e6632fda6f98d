#!/usr/bin/env bash
# Two layers of Python environment (Makefile `venv`):
#   env/venvs.sh base BASE LOCK           the locked packages (torch, the ROS 2 wheels, colcon, ...),
#                                         one per lock, shared by every checkout on the machine
#   env/venvs.sh checkout BASE VENV REPO  this checkout's own venv: its editable install and console
#                                         scripts, everything else seen through BASE
# Each step is idempotent and ends with a stamp; a killed run is finished by the next one.
set -euo pipefail
pip() { "$1" -m pip install --quiet --disable-pip-version-check "${@:2}"; }

base() {  # BASE LOCK
  local base=$1 lock=$2
  # Two checkouts setting up at once must not install into the same venv together.
  mkdir -p "$(dirname "$base")"
  exec 9>"$base.lock"
  flock 9
  [ -e "$base/.complete" ] && return 0
  echo "[setup] shared venv $base <- $lock"
  [ -x "$base/bin/python" ] || python3 -m venv "$base"
  pip "$base/bin/python" -r "$lock"
  touch "$base/COLCON_IGNORE" "$base/.complete"
}

checkout() {  # BASE VENV REPO
  local base=$1 venv=$2 repo=$3
  echo "[setup] checkout venv $venv <- $repo (on $base)"
  # Renewed in place, never cleared: tests of this checkout may be running from it.
  [ -x "$venv/bin/python" ] || "$base/bin/python" -m venv --without-pip "$venv"
  local site
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  # The ROS wheels find their C libraries, CMake configs, ament index and the Python modules
  # their CMake code runs relative to the prefix of the running Python (sys.prefix,
  # AMENT_PREFIX_PATH=VENV): link in the base's, package by package, so this venv is a whole
  # prefix of its own, .pth hooks (the ROS wheels' bootstrapper) included.
  [ -L "$venv/include" ] || rm -rf "$venv/include"
  local entry own_lib=${site%/site-packages}
  for entry in "$base/share" "$base/include" "$base"/lib/* "${site/#$venv/$base}"/*; do
    case $entry in "${own_lib/#$venv/$base}"|*/__pycache__) ;; *) ln -sfn "$entry" "${entry/#$base/$venv}";; esac
  done
  # The base's tools (colcon, pytest, ...), but not its pip: installs go into this venv.
  for entry in "$base"/bin/*; do
    case ${entry##*/} in
      activate*|Activate*|python*|pip*|__pycache__) ;;
      *) if [ -L "$venv/bin/${entry##*/}" ] || [ ! -e "$venv/bin/${entry##*/}" ]; then ln -sfn "$entry" "$venv/bin/"; fi;;
    esac
  done
  # Links into an older base (the lock changed) go.
  find "$venv" -maxdepth 4 -type l -lname "$(dirname "$base")/*" ! -lname "$base/*" -delete
  echo "$repo" > "$venv/checkout"
  # pip and setuptools come from the base; --no-deps: the base holds every dependency.
  (cd "$repo" && pip "$venv/bin/python" --no-deps --no-build-isolation -e .)
  touch "$venv/COLCON_IGNORE"
}

"$@"
