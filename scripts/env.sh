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
# The project-specific console scripts (poco_run, poco_pretrain, poco_bag_ingest, ...) on PATH: install/poco_bin
# (made by scripts/setup.sh) links to them in install/<pkg>/lib/<pkg>/. The ROS executables there (run, monitor,
# evaluate, policy_node, ...) stay off PATH: `ros2 run <pkg> <exe>` or the full path reaches them.
_d="$_POCO_ROOT/install/poco_bin"
case ":$PATH:" in *":$_d:"*) ;; *) [ -d "$_d" ] && PATH="$_d:$PATH" ;; esac
export PATH
unset _d
# Only loopback discovery, ever (workplace rule); a per-shell domain unless the caller chose one.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 1 ))}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
export PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}"
[ -n "$_POCO_HAD_U" ] && set -u
unset _POCO_HAD_U
