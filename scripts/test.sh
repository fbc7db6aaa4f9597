#!/usr/bin/env bash
# Run every package's tests against the built workspace (set-up first when needed).
# Loopback-only DDS discovery and a fresh ROS_DOMAIN_ID per run, so parallel runs never see each other.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
# shellcheck disable=SC1091
source scripts/env.sh
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID=$(( ( $$ + $(date +%s) ) % 200 + 1 ))
export POCO_TEST_TMP="$(mktemp -d -t poco-test-XXXX)"
echo "[test] ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE"
set +e
python -m pytest -p no:cacheprovider --timeout=600 -ra "$@" \
  poco_msgs/test poco_policy/test poco_learner/test poco_sim/test poco_bringup/test
rc=$?
set -e
rm -rf "$POCO_TEST_TMP"
exit $rc
