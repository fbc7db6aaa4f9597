#!/usr/bin/env bash
# The standard ROS 2 workspace path, checked: a temporary ws/src/poco-ros (a copy of this checkout's files, as
# git would clone them), `colcon build --symlink-install --base-paths src`, `colcon test` of the chosen packages,
# `colcon test-result --verbose`. Fails unless every chosen package ran > 0 pytest tests and none failed, and the
# packages were imported from the workspace (not from this checkout's own install/).
#
#   bash scripts/colcon_ws_check.sh [--test PKG[:K_EXPR]]... [--underlay-msgs] [--keep]
#
#   --test PKG[:K_EXPR]  colcon test --packages-select PKG [--pytest-args -k K_EXPR] (repeatable;
#                        default: every package, whole suites: poco_msgs poco_policy poco_learner poco_sim
#                        poco_bringup)
#   --underlay-msgs      take poco_msgs from this checkout's install/ as an underlay instead of building it
#                        (the rosidl build is the slow part; the pytest suite uses this)
#   --keep               keep the workspace (its path is printed)
# Uses the project venv (scripts/setup.sh) for colcon and the ROS wheels, with a clean environment: nothing of
# an already sourced workspace leaks in. Loopback-only discovery and a private ROS_DOMAIN_ID.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${POCO_VENV:-$ROOT/.venv}"
say() { echo "[colcon_ws_check] $*"; }
die() { echo "[colcon_ws_check] ERROR: $*" >&2; exit 1; }

TESTS=()
UNDERLAY=0
KEEP=0
while [ "$#" -gt 0 ]; do
  case "$1" in
    --test) [ "$#" -ge 2 ] || die "--test needs PKG[:K_EXPR]"; TESTS+=("$2"); shift 2 ;;
    --underlay-msgs) UNDERLAY=1; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ "${#TESTS[@]}" -gt 0 ] || TESTS=(poco_msgs poco_policy poco_learner poco_sim poco_bringup)
[ -x "$VENV/bin/colcon" ] || die "no colcon in $VENV: run bash scripts/setup.sh first"
if [ "$UNDERLAY" = 1 ]; then
  for t in "${TESTS[@]}"; do [ "${t%%:*}" != poco_msgs ] || die "--underlay-msgs does not build poco_msgs: cannot --test it"; done
fi

WS_PARENT="$(mktemp -d "${TMPDIR:-/tmp}/poco-colcon-ws-XXXXXX")"
WS="$WS_PARENT/ws"
cleanup() { if [ "$KEEP" = 1 ]; then say "kept $WS"; else rm -rf "$WS_PARENT"; fi; }
trap cleanup EXIT

# 1) ws/src/poco-ros: the files a clone has (tracked + new, not ignored): no build/, install/, .venv/
mkdir -p "$WS/src/poco-ros"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard \
   | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
   | xargs -0 cp --parents -t "$WS/src/poco-ros")
say "workspace $WS ($(cd "$WS/src/poco-ros" && find . -type f | wc -l) files in src/poco-ros)"

# 2) a clean environment: the venv's colcon and ROS wheels, nothing from a sourced workspace
PKGS=()
for t in "${TESTS[@]}"; do PKGS+=("${t%%:*}"); done
run_clean() {
  env -i HOME="${HOME:-/tmp}" LANG=C.UTF-8 TMPDIR="${TMPDIR:-/tmp}" \
    PATH="$VENV/bin:/usr/local/bin:/usr/bin:/bin" VIRTUAL_ENV="$VENV" \
    AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" \
    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$(( (RANDOM % 100) + 101 ))}" \
    MUJOCO_GL="${MUJOCO_GL:-egl}" PYOPENGL_PLATFORM="${PYOPENGL_PLATFORM:-egl}" POCO_UNDERLAY="$UNDERLAY" \
    POCO_MSGS_UNDERLAY="$ROOT/install/poco_msgs" POCO_TEST_TMP="$WS_PARENT" \
    bash -c 'set -eo pipefail
      if [ "$POCO_UNDERLAY" = 1 ]; then
        [ -f "$POCO_MSGS_UNDERLAY/share/poco_msgs/local_setup.bash" ] || { echo "no $POCO_MSGS_UNDERLAY"; exit 1; }
        source "$POCO_MSGS_UNDERLAY/share/poco_msgs/local_setup.bash"
      fi
      '"$1"
}
cd "$WS"
BUILD_SEL=(--packages-up-to "${PKGS[@]}")
[ "$UNDERLAY" = 1 ] && BUILD_SEL+=(--packages-skip poco_msgs)
say "colcon build --symlink-install --base-paths src ${BUILD_SEL[*]}"
t0=$(date +%s)
run_clean "colcon build --symlink-install --base-paths src ${BUILD_SEL[*]} \
  --cmake-args -DPython3_EXECUTABLE=$VENV/bin/python --event-handlers console_cohesion- summary+ status-" \
  || die "colcon build failed (log: $WS/log/latest_build)"
say "built in $(( $(date +%s) - t0 )) s"

# 3) the packages come from the workspace
for p in "${PKGS[@]}"; do
  where=$(run_clean "source install/setup.bash && python -c 'import $p, os; print(os.path.realpath($p.__file__))'")
  case "$where" in "$WS"/*) say "$p imported from $where" ;; *) die "$p imported from $where, not from $WS" ;; esac
done

# 4) colcon test + test-result
rc=0
for t in "${TESTS[@]}"; do
  pkg="${t%%:*}"
  # as the README's ROS-machine path does it: the built workspace sourced, then colcon test (a test may start
  # another package's executable, found through AMENT_PREFIX_PATH: poco_policy's tests run poco_sim's sim_node)
  cmd="source install/setup.bash && colcon test --base-paths src --packages-select $pkg --event-handlers console_direct+"
  if [ "$t" != "$pkg" ]; then cmd="$cmd --pytest-args -k \"${t#*:}\""; fi
  say "$cmd"
  run_clean "$cmd" || rc=1
done
summary=$(run_clean "colcon test-result --test-result-base build --verbose" 2>&1) || rc=1
echo "$summary"
for pkg in "${PKGS[@]}"; do
  # ament_python: colcon's pytest writes build/PKG/pytest.xml; ament_cmake (poco_msgs): ament_add_pytest_test
  # writes build/PKG/test_results/PKG/*.xunit.xml (ctest ran pytest)
  if [ -f "src/poco-ros/$pkg/CMakeLists.txt" ]; then
    ls "build/$pkg/test_results/$pkg/"*.xunit.xml >/dev/null 2>&1 \
      || { say "FAIL: $pkg: no test_results/$pkg/*.xunit.xml (ctest did not run pytest)"; rc=1; continue; }
  else
    [ -f "build/$pkg/pytest.xml" ] || { say "FAIL: $pkg: no pytest.xml (colcon did not run pytest)"; rc=1; continue; }
  fi
  n=$( (run_clean "colcon test-result --test-result-base build/$pkg" 2>/dev/null || true) \
       | sed -n 's/^Summary: \([0-9]*\) tests.*/\1/p')
  say "$pkg: ${n:-0} tests (pytest)"
  [ "${n:-0}" -gt 0 ] || { say "FAIL: $pkg ran 0 tests"; rc=1; }
done
line=$(echo "$summary" | grep '^Summary:' | tail -1)
say "${line:-no summary}"
[ "$rc" = 0 ] && say "OK" || say "FAILED"
exit "$rc"
