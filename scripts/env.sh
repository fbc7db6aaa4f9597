# Source me: activates the project venv and the built workspace. Used by the Makefile, tests and the runner.
# colcon's and venv's scripts read unset variables: relax `set -u` while sourcing them.
case $- in *u*) _POCO_HAD_U=1; set +u ;; *) _POCO_HAD_U= ;; esac
_POCO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_POCO_VENV="${POCO_VENV:-$_POCO_ROOT/.venv}"
# shellcheck disable=SC1091
source "$_POCO_VENV/bin/activate"
export AMENT_PREFIX_PATH="$_POCO_VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$_POCO_VENV${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
# shellcheck disable=SC1091
source "$_POCO_ROOT/install/local_setup.bash"
# The console scripts (run, bag_ingest, pretrain, ...) on PATH, as `ros2 run <pkg> <exe>` would find them.
for _d in "$_POCO_ROOT"/install/poco_*/lib/poco_*; do
  case ":$PATH:" in *":$_d:"*) ;; *) [ -d "$_d" ] && PATH="$_d:$PATH" ;; esac
done
export PATH
unset _d
# Only loopback discovery, ever (workplace rule); a per-shell domain unless the caller chose one.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
[ -n "$_POCO_HAD_U" ] && set -u
unset _POCO_HAD_U
