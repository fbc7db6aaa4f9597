#!/usr/bin/env bash
# `make bench`: every package's benchmarks/*.py in its --quick mode (small sizes, one repetition), one after
# the other, each output under a `=== <script>` header, then a summary. A smoke run that shows what each
# benchmark measures in a few minutes; for real figures run a script without --quick (see its docstring).
#
#   bash scripts/bench.sh [NAME ...]    only the benchmarks whose file name contains one of the NAMEs
#
# Exit status 1 when a benchmark failed (all of them still run). ROS benchmarks get loopback-only discovery
# and pick their own free domain id.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
case "${1:-}" in -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;; esac

set +u
# shellcheck disable=SC1091
source scripts/env.sh
set -u
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

selected() {
  [ "$#" -eq 1 ] && return 0
  local f="$1"; shift
  for name in "$@"; do case "$(basename "$f")" in *"$name"*) return 0 ;; esac; done
  return 1
}

scripts=()
for f in poco_*/benchmarks/*.py; do
  selected "$f" "$@" && scripts+=("$f")
done
[ "${#scripts[@]}" -gt 0 ] || { echo "[bench] no benchmark matches: $*" >&2; exit 2; }

failed=()
summary=()
for f in "${scripts[@]}"; do
  echo "=== $f --quick"
  t0=$(date +%s)
  set +e
  python "$f" --quick
  rc=$?
  set -e
  secs=$(( $(date +%s) - t0 ))
  if [ "$rc" -eq 0 ]; then
    summary+=("  ok      ${secs}s  $f")
  else
    summary+=("  FAILED  ${secs}s  $f (exit $rc)")
    failed+=("$f")
  fi
  echo
done
echo "[bench] ${#scripts[@]} benchmark(s), quick mode:"
printf '%s\n' "${summary[@]}"
[ "${#failed[@]}" -eq 0 ] || exit 1
