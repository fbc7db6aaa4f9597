#!/usr/bin/env bash
# Set up poco-ros on a machine without a ROS install: project-local venv with pinned ROS 2 Kilted wheels,
# torch (CPU), MuJoCo & co, then `colcon build` of the five packages. Idempotent; a re-run with nothing
# changed only checks stamps (a few seconds).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${POCO_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
say() { echo "[setup] $*"; }
die() { echo "[setup] ERROR: $*" >&2; exit 1; }

command -v "$PY" >/dev/null || die "$PY not found"
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
  || die "Python 3.11 is required (the ROS 2 Kilted wheels are cp311)"

# 1) venv
if [ ! -x "$VENV/bin/python" ]; then
  say "creating venv at $VENV"
  "$PY" -m venv "$VENV" || die "venv creation failed"
  touch "$VENV/COLCON_IGNORE"
fi
touch "$VENV/COLCON_IGNORE"

# 2) pinned dependencies (skipped when requirements + constraints are unchanged)
req_hash=$(cat scripts/requirements.txt scripts/constraints.txt | sha256sum | cut -d' ' -f1)
if [ "$(cat "$VENV/.poco_req_stamp" 2>/dev/null)" != "$req_hash" ]; then
  say "installing pinned dependencies into $VENV (first run: ~1-2 min)"
  "$VENV/bin/pip" install --disable-pip-version-check -q -r scripts/requirements.txt -c scripts/constraints.txt \
    || die "pip install failed"
  # Guard: no CUDA packages may sneak in.
  if "$VENV/bin/pip" list 2>/dev/null | grep -qiE '^nvidia-|^triton '; then
    die "CUDA packages were installed (unpinned torch somewhere?)"
  fi
  rm -f "$VENV/.poco_cmake_stamp"
  echo "$req_hash" > "$VENV/.poco_req_stamp"
else
  say "dependencies up to date"
fi

# 3) the wheels' exported CMake files carry the wheel-build machine's include paths; point them at this
#    interpreter's (see shared/notes/environment-facts.md).
if [ ! -f "$VENV/.poco_cmake_stamp" ]; then
  say "fixing build-machine paths in the wheels' CMake files"
  "$VENV/bin/python" - "$VENV" <<'PYEOF' || die "CMake path fix-up failed"
import pathlib, sys, sysconfig
import numpy
venv = pathlib.Path(sys.argv[1])
subs = {
    '/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include': numpy.get_include(),
    '/opt/python/cp311-cp311/include/python3.11': sysconfig.get_paths()['include'],
}
n = 0
for f in (venv / 'share').rglob('*.cmake'):
    text = f.read_text(errors='surrogateescape')
    new = text
    for a, b in subs.items():
        new = new.replace(a, b)
    if new != text:
        f.write_text(new, errors='surrogateescape')
        n += 1
print(f'[setup] rewrote {n} cmake files')
PYEOF
  touch "$VENV/.poco_cmake_stamp"
fi

# 4) colcon build (skipped when no build-relevant file changed; python sources are symlinked).
build_hash=$( (find poco_msgs poco_policy poco_learner poco_sim poco_bringup colcon.meta \
    \( -name package.xml -o -name setup.py -o -name setup.cfg -o -name '*.msg' -o -name '*.srv' \
       -o -name CMakeLists.txt -o -name colcon.meta -o -path '*/launch/*' -o -path '*/config/*' \
       -o -path '*/assets/*' -o -path '*/resource/*' \) -type f -print0 | sort -z | xargs -0 sha256sum; \
    echo "$req_hash") | sha256sum | cut -d' ' -f1)
if [ "$(cat install/.poco_build_stamp 2>/dev/null)" != "$build_hash" ]; then
  say "colcon build"
  export AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV"
  export PATH="$VENV/bin:$PATH"
  "$VENV/bin/colcon" build --symlink-install --base-paths "$ROOT" \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF \
      --event-handlers console_cohesion- summary+ status- \
    || die "colcon build failed (see log/latest_build)"
  echo "$build_hash" > install/.poco_build_stamp
else
  say "workspace up to date"
fi
# 5) the project-specific console scripts (poco_run, poco_pretrain, ...: lib/<pkg>/poco_*) in one folder that
#    scripts/env.sh puts on PATH; the generic ROS executables (run, monitor, evaluate, ...) stay off PATH,
#    are reached as `ros2 run <pkg> <exe>` / install/<pkg>/lib/<pkg>/<exe>. Relative links, rebuilt when stale.
BIN=install/poco_bin
want=$(cd install && ls -d poco_*/lib/poco_*/poco_* 2>/dev/null | sort || true)
have=$(cd "$BIN" 2>/dev/null && for l in poco_*; do [ -L "$l" ] && readlink "$l" | sed 's|^\.\./||'; done | sort || true)
if [ "$want" != "$have" ]; then
  rm -rf "$BIN.tmp" && mkdir -p "$BIN.tmp"
  for t in $want; do ln -s "../$t" "$BIN.tmp/$(basename "$t")"; done
  rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
  say "console scripts on PATH (after source scripts/env.sh): $(ls "$BIN" | tr '\n' ' ')"
fi
say "done. Use: source scripts/env.sh"
