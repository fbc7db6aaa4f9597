#!/usr/bin/env bash
# The sim main job (`make run ARGS="..."`): scripted demos -> offline pre-training -> online POCO
# fine-tuning in MuJoCo, with a progress line, episodes.csv / learner.csv and learning_curve.png.
#
#   bash scripts/run_sim.sh [--env-steps 20000] [--duration WALL] [--task pick_cube|peg_insert]
#                           [--obs-mode pixels|state] [--episodes 10] [--noise 0|STD|noisy] [--seed 4]
#                           [--algorithm poco] [--run-dir DIR] [--demos DIR] [--dry-run]
#                           [--encoder pretrain|random|FILE] [--encoder-steps 300]
#                           [-- <more `poco_run sim` options, e.g. --set node.p=v>]
# The budget is in env steps (sim time): the sim waits for the learner, so the same run takes longer on a
# slower CPU and gives the same curve; --duration adds a wall-clock limit. Each option also reads an
# environment variable: ENV_STEPS DURATION TASK OBS_MODE EPISODES NOISE SEED ALGORITHM RUN_DIR DEMOS
# ENCODER ENCODER_STEPS.
# --demos reuses an existing dataset (no collection). Pixels mode: --encoder pretrain (the default) trains the
# ResNet-10 encoder on the demos first (poco_pretrain_encoder, docs/encoder.md) and freezes it for the policy
# and the learner; random keeps the seeded random weights; FILE uses that checkpoint. Ctrl-C stops the run cleanly and still prints where
# the results are.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ENV_STEPS="${ENV_STEPS:-20000}"  # executed env steps (training + evaluation episodes); 0 = no step budget
DURATION="${DURATION:-}"          # wall-clock limit ('' = none)
TASK="${TASK:-pick_cube}"
OBS_MODE="${OBS_MODE:-state}"  # state: privileged sim state (fast on 2 CPU cores); pixels: the cameras
EPISODES="${EPISODES:-10}"
NOISE="${NOISE:-0}"  # expert action noise std (fraction of max delta), or "noisy" = the task preset (~70 % success)
SEED="${SEED:-4}"
ALGORITHM="${ALGORITHM:-poco}"
RUN_DIR="${RUN_DIR:-}"
DEMOS="${DEMOS:-}"
ENCODER="${ENCODER:-pretrain}"  # pixels mode: pretrain | random | path to an encoder checkpoint
ENCODER_STEPS="${ENCODER_STEPS:-300}"
DRY_RUN=0
EXTRA=()

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; }
need() { [ "$#" -ge 2 ] && [ -n "$2" ] || { echo "run_sim: $1 needs a value" >&2; exit 2; }; }
while [ "$#" -gt 0 ]; do
  case "$1" in
    --env-steps) need "$@"; ENV_STEPS="$2"; shift 2 ;;
    --duration)  need "$@"; DURATION="$2"; shift 2 ;;
    --task)      need "$@"; TASK="$2"; shift 2 ;;
    --obs-mode)  need "$@"; OBS_MODE="$2"; shift 2 ;;
    --episodes)  need "$@"; EPISODES="$2"; shift 2 ;;
    --noise)     need "$@"; NOISE="$2"; shift 2 ;;
    --seed)      need "$@"; SEED="$2"; shift 2 ;;
    --algorithm) need "$@"; ALGORITHM="$2"; shift 2 ;;
    --run-dir)   need "$@"; RUN_DIR="$2"; shift 2 ;;
    --demos)     need "$@"; DEMOS="$2"; shift 2 ;;
    --encoder)   need "$@"; ENCODER="$2"; shift 2 ;;
    --encoder-steps) need "$@"; ENCODER_STEPS="$2"; shift 2 ;;
    --dry-run)   DRY_RUN=1; shift ;;
    -h|--help)   usage; exit 0 ;;
    --)          shift; EXTRA+=("$@"); break ;;
    *)           EXTRA+=("$1"); shift ;;  # anything else goes to `poco_run sim` (e.g. --set x.y=z)
  esac
done

# env.sh: venv + built workspace, loopback-only discovery, a ROS_DOMAIN_ID for this shell (so this run).
set +u
# shellcheck disable=SC1091
source scripts/env.sh
set -u
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

RUN_DIR="${RUN_DIR:-runs/$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$RUN_DIR"
RUN_DIR="$(cd "$RUN_DIR" && pwd)"
say() { echo "[run_sim] $*"; }
# step LABEL WHAT CMD...: run a set-up step with its output prefixed [LABEL]; stop the run if it fails; only say
# so with --dry-run
step() {
  local label="$1" what="$2"; shift 2
  if [ "$DRY_RUN" = 1 ]; then say "(dry run: not $what)"; return 0; fi
  "$@" 2>&1 | sed -u "s/^/[$label] /"
  [ "${PIPESTATUS[0]}" = 0 ] || { say "ERROR: $what failed"; exit 1; }
}
say "run dir $RUN_DIR  task=$TASK obs_mode=$OBS_MODE algorithm=$ALGORITHM env_steps=$ENV_STEPS duration=${DURATION:-none}"

# 1) scripted demonstrations (the sim's expert with noise), unless a dataset was given
if [ -z "$DEMOS" ]; then
  DEMOS="$RUN_DIR/demos"
  COLLECT=(install/poco_sim/lib/poco_sim/poco_collect_demos --task "$TASK" --obs-mode "$OBS_MODE"
           --episodes "$EPISODES" --out "$DEMOS" --seed "$SEED")
  if [ "$NOISE" = noisy ]; then COLLECT+=(--noisy); else COLLECT+=(--noise "$NOISE"); fi
  say "collecting $EPISODES scripted demos: ${COLLECT[*]}"
  step collect_demos "collecting demos" "${COLLECT[@]}"
else
  [ -d "$DEMOS" ] || { say "ERROR: --demos $DEMOS is not a directory"; exit 2; }
  DEMOS="$(cd "$DEMOS" && pwd)"
  say "using existing demos $DEMOS"
fi

# 1b) pixels: the frozen image encoder the policy and the learner share
ENC_ARGS=()
if [ "$OBS_MODE" = pixels ]; then
  case "$ENCODER" in
    random) say "encoder: seeded random ResNet-10 weights (--encoder random)" ;;
    pretrain)
      ENC_FILE="$RUN_DIR/encoder.safetensors"
      PRE=(install/poco_learner/lib/poco_learner/poco_pretrain_encoder --data "$DEMOS" --out "$ENC_FILE"
           --steps "$ENCODER_STEPS" --seed "$SEED")
      say "pre-training the encoder on the demos: ${PRE[*]}"
      step pretrain_encoder "pre-training the encoder" "${PRE[@]}"
      ENC_ARGS=(--encoder-checkpoint "$ENC_FILE") ;;
    *)
      [ -f "$ENCODER" ] || { say "ERROR: --encoder $ENCODER: not pretrain, random or a file"; exit 2; }
      ENC_ARGS=(--encoder-checkpoint "$(cd "$(dirname "$ENCODER")" && pwd)/$(basename "$ENCODER")") ;;
  esac
fi

# 2) the graph: sim + policy + learner (pre-trains on the demos, then fine-tunes online) + monitor
RUN=(install/poco_bringup/lib/poco_bringup/poco_run sim --run-dir "$RUN_DIR"
     --task "$TASK" --obs-mode "$OBS_MODE" --algorithm "$ALGORITHM" --seed "$SEED" --demo-dataset "$DEMOS"
     --set "monitor.stop_after_steps=$ENV_STEPS" ${ENC_ARGS[@]+"${ENC_ARGS[@]}"})
[ -n "$DURATION" ] && RUN+=(--duration "$DURATION")
[ "$DRY_RUN" = 1 ] && RUN+=(--dry-run)
RUN+=(${EXTRA[@]+"${EXTRA[@]}"})
say "starting: ${RUN[*]}"
set +e
"${RUN[@]}"  # Ctrl-C reaches the runner, which stops every node and returns normally
rc=$?
set -e

# 3) where the results are (also after Ctrl-C)
if [ -f "$RUN_DIR/episodes.csv" ] && [ ! -f "$RUN_DIR/learning_curve.png" ]; then
  python -m poco_bringup.plotting "$RUN_DIR/episodes.csv" "$RUN_DIR/learning_curve.png" >/dev/null 2>&1 || true
fi
say "results in $RUN_DIR:"
for f in encoder.safetensors episodes.csv learner.csv learning_curve.png logs params run.json; do
  if [ -e "$RUN_DIR/$f" ]; then say "  $RUN_DIR/$f"; fi
done
[ "$rc" = 0 ] || say "the run failed (exit $rc): see the [runner] lines above and $RUN_DIR/logs"
exit "$rc"
