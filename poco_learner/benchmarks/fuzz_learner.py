"""Fuzz the learner node over DDS: malformed transitions and episode events mixed with valid episodes, a kill -9
and restart in between, then what reached its buffer on disk.

    python poco_learner/benchmarks/fuzz_learner.py [--quick] [--n 10000] [--rate 500] [--json out.json]
                                                   [--domain-id D] [--seed S] [--keep]

Collects a tiny demo dataset first (`collect_demos`, pick_cube, state mode, 3 episodes), then starts the real
learner node as a separate OS process (state mode, a small agent: 64x64 actor/critic, batch 32, 100 BC steps,
30 warm-up steps; its run_dir in a temp folder) and, on the default single-robot topics:

1. `poco/transition` (poco_msgs/Transition): N malformed messages (default 10,000; --quick 100) at --rate per
   second, one valid message after every 3 malformed ones (valid episodes: START event, 5-12 steps, final
   observation, end event). Malformed: empty/short/long/oversized features, wrong proprio and action lengths,
   final_observation with a wrong-size action, NaN/inf, 1e30 and float32-max values, values just beyond the
   learner's max_input_magnitude, out-of-order / duplicated / 2^32-1 step indices, episode ids 0, 2^63 and
   2^64-1, final observations with an action. Then a stray transition (a step index gap, or step 0 again) for
   every 8th valid episode after it finished ("victims": a stored, finished episode must stay as it is).
2. kill -9 of the learner while valid episodes stream in; the buffer on disk is read (ReplayBuffer.load, the
   learner's own loader) and the learner is started again on the same run_dir: its first status must show the
   buffer it had (rows before the kill, from its last status, minus at most the steps sent in the last second).
3. `poco/episode_event` (poco_msgs/EpisodeEvent): N malformed messages on the restarted learner, mixed the same
   way with valid episodes: unknown event codes, end events for unknown episodes, ids 0 and 2^64-1, step counts of
   2^32-1, empty / 64 kB / non-ASCII details, START after an end, duplicated ends, resets of unknown episodes, end
   events for finished valid episodes.
4. One last valid episode, then SIGINT (a clean stop must exit 0) and the buffer is read again.

Checked per topic: learner exits (the process died while fuzzed), buffer rows with non-finite values or values
beyond the configured bounds (|obs| <= the node's max_input_magnitude 1e4, |action| <= buffer.action_bound 1.0,
|reward| <= 1e4), valid rows sent vs kept (every valid episode not in flight at the kill must be in the buffer,
finished, with exactly the observations sent; one whose messages the learner's log shows a step gap for never
reached the learner's checks: lost on the way, counted apart as `valid_rows_lost_in_transport`, while the node's
dropped-message count must equal the malformed messages it must refuse: more = valid messages refused, a
must-be-zero column), finished valid episodes deleted by a stray transition, and the
drop reasons the node counted (from /diagnostics when the node publishes it, else from its log's throttled
`dropped <reason>: ... (N so far)` lines and its shutdown summary: a lower bound then, marked `(log)`), plus
LearnerStatus.dropped_messages, and how many log lines bypassed the node's per-reason throttle (one per
dropped message; reported, not a must-be-zero column). The last line is `FUZZ_RESULT <json>`; exit status 1 when a must-be-zero column
(exits, polluted rows, valid rows lost, finished episodes deleted, rows lost by the kill beyond the allowance,
unclean stop) is not zero.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

STATE_DIM = 20            # pick_cube's sim state (checked against the demo dataset's meta.json)
PROPRIO = 7
MAX_INPUT = 1.0e4         # the learner node's max_input_magnitude default (passed explicitly below)
ACTION_BOUND = 1.0        # LearnerConfig.buffer.action_bound default (normalised actions)
REWARD_BOUND = 1.0e4
MAX_DELTA = 0.05
VALID_BASE = 1_000_000    # valid episode ids
FUZZ_BASE = 50_000_000    # malformed messages' own episode ids
EXTREME_IDS = (0, 2**63, 2**64 - 1)
LAG_ROWS = 60             # valid steps the sender may be ahead of the learner's reported buffer size
LAG_ROWS_EVENTS = 15      # the same while flooding poco/episode_event (its queue is only 100 deep: 15 rows ~ 60 msgs)
VICTIM_EVERY = 8          # every 8th valid episode (the first one too) of the transition phase gets a stray transition after it ended
SMALL_AGENT = {'actor_hidden_dims': [64, 64], 'critic_hidden_dims': [64, 64], 'batch_size': 32,
               'num_candidates': 4, 'flow_steps': 4, 'pretrain_steps': 100, 'critic_warmup_steps': 30}


# ------------------------------------------------------------------------------------------ processes
def exe(pkg: str, name: str) -> Path:
    from poco_policy.testing import installed
    p = installed(pkg, 'lib', pkg, name)      # of the sourced workspace (repo install/ or a ws/install)
    if not p.exists():
        raise SystemExit(f'{p} missing: run scripts/setup.sh')
    return p


class Proc:
    """A ROS node executable in its own process group, with a params file; `restart` = a new incarnation."""

    def __init__(self, logdir: Path, pkg: str, name: str, node: str, params: dict, env: dict):
        import yaml
        self.logdir, self.node, self.env = logdir, node, env
        self.path = exe(pkg, name)
        self.pfile = logdir / f'{node}.params.yaml'
        self.pfile.write_text(yaml.safe_dump({f'/**/{node}': {'ros__parameters': params}}))
        self.incarnation = 0
        self.logs: list[Path] = []
        self.p = None
        self.start()

    def start(self):
        self.incarnation += 1
        log_path = self.logdir / f'{self.node}.{self.incarnation}.log'
        self.logs.append(log_path)
        self._log = open(log_path, 'w')
        self.p = subprocess.Popen([str(self.path), '--ros-args', '-r', f'__node:={self.node}',
                                   '--params-file', str(self.pfile)], env=self.env, stdout=self._log,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def log_path(self) -> Path:
        return self.logs[-1]

    def alive(self) -> bool:
        return self.p.poll() is None

    def kill9(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait(10)
        self._log.close()

    def stop(self) -> int | None:
        """SIGINT (then SIGTERM, SIGKILL); returns the exit status of the SIGINT stop (None: had to escalate)."""
        rc = None
        for sig, wait in ((signal.SIGINT, 40), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if self.p.poll() is not None:
                break
            try:
                os.killpg(self.p.pid, sig)
                self.p.wait(wait)
                if sig == signal.SIGINT:
                    rc = self.p.returncode
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self._log.close()
        return rc


class Observer:
    """Publishes on the learner's inputs; hears its status and /diagnostics (callbacks on their own thread)."""

    def __init__(self, context):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from poco_msgs.msg import EpisodeEvent, LearnerStatus, Transition
        from poco_policy import contract as C
        self.node = n = rclpy.create_node('learner_fuzzer', context=context)
        self.ex = SingleThreadedExecutor(context=context)
        self.ex.add_node(n)
        self.lock = threading.Lock()
        self.status: list[tuple[float, object]] = []   # (monotonic, LearnerStatus)
        self.diag: dict[str, str] = {}
        self.diag_seen = 0
        n.create_subscription(LearnerStatus, C.LEARNER_STATUS, self._on_status, C.qos(C.LEARNER_STATUS))
        n.create_subscription(DiagnosticArray, C.DIAGNOSTICS, self._on_diag, C.qos(C.DIAGNOSTICS))
        self.pubs = {'poco/transition': n.create_publisher(Transition, C.TRANSITION, C.qos(C.TRANSITION)),
                     'poco/episode_event': n.create_publisher(EpisodeEvent, C.EPISODE_EVENT,
                                                              C.qos(C.EPISODE_EVENT))}
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        try:
            self.ex.spin()
        except Exception:  # noqa: BLE001 - context shut down at the end
            pass

    def _on_status(self, m):
        with self.lock:
            self.status.append((time.monotonic(), m))
            del self.status[:-2000]

    def _on_diag(self, m):
        for st in m.status:
            if st.name.rstrip('/').endswith('learner'):
                self.diag = {kv.key: kv.value for kv in st.values}
                self.diag_seen += 1

    def last_status(self, after: float = -math.inf):
        with self.lock:
            return next((s for t, s in reversed(self.status) if t > after), None)

    def matched(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in self.pubs.values())

    def publish(self, topic: str, msg):
        self.pubs[topic].publish(msg)


def wait(cond, timeout: float, procs=(), interval: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if any(not p.alive() for p in procs):
            return False
        time.sleep(interval)
    return cond()


# ------------------------------------------------------------------------------------------ messages
def transition(eid: int, step: int, features, proprio, action, final: bool = False):
    from poco_msgs.msg import Transition
    m = Transition()
    m.episode_id, m.step_index = int(eid), int(step)
    m.features = [float(x) for x in features]
    m.proprio = [float(x) for x in proprio]
    m.action = [float(x) for x in action]
    m.final_observation = bool(final)
    return m


def event(eid: int, code: int, step_count: int = 0, evaluation: bool = False, detail: str = ''):
    from poco_msgs.msg import EpisodeEvent
    m = EpisodeEvent()
    m.episode_id, m.event, m.step_count = int(eid), int(code), int(step_count)
    m.evaluation, m.detail = bool(evaluation), detail
    return m


def good_obs(rng):
    f = rng.uniform(-1, 1, STATE_DIM)
    p = np.concatenate([rng.uniform(-1, 1, 6), rng.uniform(0, 1, 1)])
    return f.astype(np.float32), p.astype(np.float32)


def good_action(rng):
    return np.concatenate([rng.uniform(-MAX_DELTA, MAX_DELTA, 6), [float(rng.integers(0, 2))]]).astype(np.float32)


class ValidEpisodes:
    """A stream of valid episodes, one message at a time; remembers what each episode should look like."""

    def __init__(self, rng, first_id: int):
        self.rng, self.next_id = rng, first_id
        self.sent: dict[int, dict] = {}   # id -> {'obs': [L+1, D], 'actions': [L, 7], 'done': bool, ...}
        self._queue: list[tuple[str, object, int]] = []
        self.steps_sent = 0               # valid step transitions published (each is one buffer row)

    def _new_episode(self, victim: bool):
        from poco_policy import contract as C
        eid, self.next_id = self.next_id, self.next_id + 1
        L = int(self.rng.integers(5, 13))
        obs, acts = [], []
        q: list[tuple[str, object, int]] = [('poco/episode_event', event(eid, C.EVENT_START), eid)]
        for t in range(L + 1):
            f, p = good_obs(self.rng)
            obs.append(np.concatenate([f, p]))
            if t < L:
                a = good_action(self.rng)
                acts.append(a)
                q.append(('poco/transition', transition(eid, t, f, p, a), eid))
            else:
                q.append(('poco/transition', transition(eid, t, f, p, [], final=True), eid))
        code = int(self.rng.choice([C.EVENT_SUCCESS, C.EVENT_TIMEOUT, C.EVENT_FAILURE, C.EVENT_ESTOP]))
        q.append(('poco/episode_event', event(eid, code, L, detail='fuzz harness: valid episode'), eid))
        self.sent[eid] = {'obs': np.asarray(obs, np.float32), 'actions': np.asarray(acts, np.float32),
                          'done': False, 'victim': victim, 'phase': None, 'sent_at': None}
        self._queue = q

    def next(self, phase: str, victims: bool = False):
        """(topic, msg) of the next valid message; starts a new episode when the current one is out."""
        if not self._queue:
            self._new_episode(victims and (self.next_id - VALID_BASE) % VICTIM_EVERY == 0)
        topic, msg, eid = self._queue.pop(0)
        if topic == 'poco/transition' and not msg.final_observation:
            self.steps_sent += 1
        ep = self.sent[eid]
        ep['phase'] = ep['phase'] or phase
        ep['sent_at'] = time.monotonic()
        if not self._queue:
            ep['done'] = True
        return topic, msg

    def abandon(self) -> list[int]:
        """Stop the episode in progress (the learner was killed mid-episode): its rest is never sent."""
        self._queue = []
        ids = [e for e, v in self.sent.items() if not v['done']]
        for e in ids:
            self.sent[e]['abandoned'] = self.sent[e]['done'] = True
        return ids

    def in_progress(self) -> bool:
        return bool(self._queue)

    def steps(self, eids) -> int:
        return sum(len(self.sent[e]['actions']) for e in eids)


# ---- malformed transitions: (kind, message)
def bad_transition(rng, i: int):
    eid = FUZZ_BASE + i
    f, p = good_obs(rng)
    a = good_action(rng)
    k = i % 16
    field = int(rng.integers(3))

    def poison(value):
        arrs = [f, p, a]
        arr = arrs[field]
        arr[int(rng.integers(arr.size))] = value
        return transition(eid, 0, f, p, a)

    if k == 0:
        return 'features empty', transition(eid, 0, [], p, a)
    if k == 1:
        return 'features short', transition(eid, 0, f[: int(rng.integers(1, STATE_DIM))], p, a)
    if k == 2:
        n = 100_001 if (i // 16) % 20 == 0 else int(rng.integers(STATE_DIM + 1, 5000))
        return 'features long', transition(eid, 0, rng.uniform(-1, 1, n), p, a)
    if k == 3:
        n = int(rng.choice([0, 1, 6, 8, 64]))
        return 'proprio size', transition(eid, 0, f, rng.uniform(0, 1, n), a)
    if k == 4:
        n = int(rng.choice([0, 1, 6, 8, 70]))
        return 'action size', transition(eid, 0, f, p, rng.uniform(-0.05, 0.05, n))
    if k == 5:
        return 'final obs + 3 actions', transition(eid, 1, f, p, a[:3], final=True)
    if k == 6:
        return 'NaN', poison(math.nan)
    if k == 7:
        return 'inf', poison(float(rng.choice([math.inf, -math.inf])))
    if k == 8:
        return '1e30', poison(float(rng.choice([1e30, -1e30])))
    if k == 9:
        return 'float32 max', poison(3.4e38)
    if k == 10:
        return 'beyond max_input_magnitude', poison(float(rng.choice([-1, 1]) * rng.uniform(1.0001, 100) * MAX_INPUT))
    if k == 11:
        return 'step gap', transition(eid, int(rng.choice([1, 7, 2**31, 2**32 - 1])), f, p, a)
    if k == 12:
        # the same fuzz episode's step 0 twice (the second is out of order): episode FUZZ_BASE + i - 1 ... use one id
        return 'duplicated step', transition(FUZZ_BASE - 1 - (i // 16) % 50, 0, f, p, a)
    if k == 13:
        return 'final obs with action', transition(eid, int(rng.integers(0, 50)), f, p, a, final=True)
    if k == 14:
        return 'extreme episode id', transition(EXTREME_IDS[int(rng.integers(3))], int(rng.integers(0, 3)),
                                                 f, p, a)
    # an all-extreme message: every field wrong at once
    return 'everything wrong', transition(2**64 - 1, 2**32 - 1, [math.nan] * 3, [1e30] * 9, [math.inf] * 2)


# malformed kinds the node's own checks must refuse (the others pass them and meet the episode assembler)
NODE_REFUSES = {'poco/transition': {'features empty', 'features short', 'features long', 'proprio size', 'action size',
                                    'final obs + 3 actions', 'NaN', 'inf', '1e30', 'float32 max',
                                    'beyond max_input_magnitude', 'everything wrong'},
                'poco/episode_event': {'unknown code'}}
EVENT_DETAILS = ['', 'x' * 65_536, 'é' * 1000 + '\u202e' + '漢字', '{"a": ' * 200]


def bad_event(rng, i: int, finished_valid: list[int]):
    from poco_policy import contract as C
    eid = FUZZ_BASE + 10_000_000 + i
    k = i % 10
    ends = [C.EVENT_SUCCESS, C.EVENT_FAILURE, C.EVENT_ESTOP, C.EVENT_TIMEOUT]
    if k == 0:
        return 'unknown code', event(eid, int(rng.integers(6, 256)))
    if k == 1:
        return 'end of unknown episode', event(eid, int(rng.choice(ends)), int(rng.integers(0, 100)))
    if k == 2:
        return 'extreme episode id', event(EXTREME_IDS[int(rng.integers(3))], int(rng.integers(0, 6)))
    if k == 3:
        return 'huge step count', event(eid, int(rng.choice(ends)), 2**32 - 1)
    if k == 4:
        return 'odd detail', event(eid, int(rng.choice(ends)), 3, detail=EVENT_DETAILS[(i // 10) % 4])
    if k == 5:
        return 'start after end', event(FUZZ_BASE + 10_000_000 + i - 4, C.EVENT_START, evaluation=True)
    if k == 6:
        return 'duplicated end', event(FUZZ_BASE + 10_000_000 + i - 5, int(rng.choice(ends)), 1)
    if k == 7:
        return 'reset of unknown episode', event(eid, C.EVENT_RESET)
    if k == 8 and finished_valid:
        return 'end of a finished valid episode', event(int(rng.choice(finished_valid)), int(rng.choice(ends)),
                                                        int(rng.integers(0, 20)))
    return 'evaluation start, never ended', event(eid, C.EVENT_START, evaluation=True)


def victim_strays(rng, eids: list[int]):
    """A stray transition for finished valid episodes: a step-index gap (half of them) or step 0 again."""
    out = []
    for j, eid in enumerate(eids):
        f, p = good_obs(rng)
        out.append((eid, transition(eid, 3 if j % 2 == 0 else 0, f, p, good_action(rng))))
    return out


# ------------------------------------------------------------------------------------------ the buffer on disk
def gap_ids(logs) -> set:
    """Episodes the learner saw a step-index gap in (a message of theirs never reached its checks)."""
    pat = re.compile(r'^dropping transition \(episode (\d+) step \d+\): step \d+ arrived, expected')
    out = set()
    for f in logs:
        for ln in (f.read_text(errors='replace').splitlines() if f.exists() else []):
            m = pat.match(ln)
            if m:
                out.add(int(m.group(1)))
    return out


def read_buffer(run_dir: Path, valid: ValidEpisodes, exclude: set, gaps: set = frozenset()) -> dict:
    """Open the learner's buffer with its own loader (the learner must be stopped: the loader takes the lock)."""
    from poco_learner.buffer import BufferConfig, ReplayBuffer
    from poco_policy.observation import ActionScaler
    scaler = ActionScaler(MAX_DELTA)
    bdir = run_dir / 'buffer'
    if not ReplayBuffer.exists(str(bdir)):
        return {'rows': 0, 'episodes': 0, 'polluted_rows': 0, 'polluted_examples': [], 'valid': {}}
    buf = ReplayBuffer.load(str(bdir), BufferConfig(directory=str(bdir), action_bound=ACTION_BOUND))
    try:
        polluted, examples = 0, []
        stored = {}
        for eid in buf.episode_ids():
            ep = buf.get_episode(eid)
            obs, act, rew = ep['obs'], ep['actions'], ep['rewards']
            bad_rows = (~np.isfinite(obs).all(1) | (np.abs(obs) > MAX_INPUT).any(1)).sum()
            bad_rows += (~np.isfinite(act).all(1) | (np.abs(act) > ACTION_BOUND + 1e-6).any(1)).sum()
            bad_rows += (~np.isfinite(rew) | (np.abs(rew) > REWARD_BOUND)).sum()
            if bad_rows:
                polluted += int(bad_rows)
                if len(examples) < 5:
                    examples.append({'episode': eid, 'rows': int(bad_rows),
                                     'max_abs_obs': float(np.nanmax(np.abs(obs))) if obs.size else 0.0})
            stored[eid] = ep
        per_phase: dict[str, dict] = {}
        for eid, v in valid.sent.items():
            if eid in exclude or not v['done'] or v.get('abandoned'):
                continue
            row = per_phase.setdefault(v['phase'], {'episodes_sent': 0, 'rows_sent': 0, 'rows_kept': 0,
                                                     'episodes_missing': 0, 'episodes_altered': 0,
                                                     'victims': 0, 'victims_deleted': 0, 'victims_altered': 0,
                                                     'rows_lost_in_transport': 0})
            L = len(v['actions'])
            ep = stored.get(eid)
            same = ep is not None and (
                ep['ended'] and ep['obs'].shape == v['obs'].shape and np.allclose(ep['obs'], v['obs'])
                and np.allclose(ep['actions'], scaler.normalize(v['actions']), atol=1e-6))
            if v['victim']:   # a stray transition came after it ended: reported on its own
                row['victims'] += 1
                row['victims_deleted'] += ep is None
                row['victims_altered'] += ep is not None and not same
                continue
            if not same and eid in gaps:
                # a message of it never reached the learner's checks (its log shows the gap): lost on the way
                # (DDS under CPU starvation), not refused; counted on its own, not as a valid row lost
                row['rows_lost_in_transport'] += L
                continue
            row['episodes_sent'] += 1
            row['rows_sent'] += L
            if ep is None:
                row['episodes_missing'] += 1
            elif same:
                row['rows_kept'] += L
            else:
                row['episodes_altered'] += 1
        return {'rows': len(buf), 'episodes': buf.num_episodes, 'open_episodes': len(buf.open_episode_ids),
                'polluted_rows': polluted, 'polluted_examples': examples, 'valid': per_phase}
    finally:
        buf.close()


# ------------------------------------------------------------------------------------------ drop reasons
_THROTTLED = re.compile(r'dropped ([\w/]+: [^:]+): .*\((\d+) so far')
_SUMMARY = re.compile(r'dropped inputs: (.*)$')


def drops_from_log(path: Path) -> dict[str, int]:
    """Drop counts by reason from a learner log: its shutdown summary if there is one, else the largest
    `(N so far)` of each reason's throttled warnings (a lower bound)."""
    text = path.read_text(errors='replace') if path.exists() else ''
    out: dict[str, int] = {}
    for line in text.splitlines():
        m = _SUMMARY.search(line)
        if m:
            summary = {}
            for part in m.group(1).split(', '):
                if ': ' in part:
                    k, v = part.rsplit(': ', 1)
                    if v.strip().isdigit():
                        summary[k] = int(v)
            if summary:
                return summary
        m = _THROTTLED.search(line)
        if m:
            out[m.group(1)] = max(out.get(m.group(1), 0), int(m.group(2)))
    return out


def drops_from_diag(diag: dict) -> dict[str, int]:
    return {k[len('dropped/'):]: int(v) for k, v in diag.items() if k.startswith('dropped/') and v.isdigit()}


def sub_counts(a: dict, b: dict) -> dict:
    return {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0)}


def tracebacks(path: Path) -> list[str]:
    text = path.read_text(errors='replace') if path.exists() else ''
    return [t[:1500] for t in re.findall(r'Traceback \(most recent call last\):.*?(?=\n\[|\Z)', text, re.S)][:3]


# ------------------------------------------------------------------------------------------ main
def collect_demos(out: Path, episodes: int, seed: int, env: dict):
    r = subprocess.run([str(exe('poco_sim', 'collect_demos')), '--task', 'pick_cube', '--obs-mode', 'state',
                        '--episodes', str(episodes), '--out', str(out), '--seed', str(seed)], env=env,
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise SystemExit(f'collect_demos failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}')
    meta = json.loads((out / 'meta.json').read_text())
    if int(meta.get('state_dim', -1)) != STATE_DIM:
        raise SystemExit(f"demo state_dim {meta.get('state_dim')} != {STATE_DIM} assumed here")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='100 malformed messages per topic')
    ap.add_argument('--n', type=int, default=None, help='malformed messages per topic (default 10000)')
    ap.add_argument('--rate', type=float, default=500.0, help='messages per second (malformed + valid)')
    ap.add_argument('--json', default=None)
    ap.add_argument('--domain-id', type=int, default=None)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--keep', action='store_true', help='keep the temp folder (logs, run_dir) even when all is ok')
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else (100 if args.quick else 10_000)
    domain = args.domain_id if args.domain_id is not None else random.randint(150, 230)
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain))
    os.environ.pop('ROS_STATIC_PEERS', None)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop('POCO_USE_SIM_TIME', None)
    logdir = Path(tempfile.mkdtemp(prefix='poco-fuzz-learner-'))
    run_dir = logdir / 'run'
    rng = np.random.default_rng(args.seed)
    t0 = time.monotonic()
    collect_demos(logdir / 'demos', 3, 3, env)

    import rclpy
    params = {'obs_mode': 'state', 'run_dir': str(run_dir), 'demo_dataset': str(logdir / 'demos'),
              'torch_threads': 1, 'status_rate_hz': 4.0, 'publish_every': 25, 'max_input_magnitude': MAX_INPUT,
              'agent': dict(SMALL_AGENT)}
    learner = Proc(logdir, 'poco_learner', 'learner_node', 'learner', params, env)
    context = rclpy.Context()
    rclpy.init(context=context)
    obs = Observer(context)
    valid = ValidEpisodes(rng, VALID_BASE)
    result: dict = {'domain_id': domain, 'logs': str(logdir), 'n_per_topic': n, 'topics': {}, 'bugs': []}
    exits: dict[str, str] = {}
    in_flight_at_kill: set = set()
    stop = {'flag': False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    interval = 1.0 / max(args.rate, 1.0)

    def note_exit(where: str):
        if not learner.alive() and learner.incarnation not in exits:
            exits[learner.incarnation] = where
            result['bugs'].append({'where': where, 'exit_status': learner.p.returncode,
                                   'tracebacks': tracebacks(learner.log_path), 'log': str(learner.log_path)})

    def up(after: float, timeout: float = 180.0) -> bool:
        return wait(lambda: obs.last_status(after) is not None and obs.matched(), timeout, [learner])

    def settle(seconds: float = 3.0):
        """Until the buffer count stands still for 1 s and `seconds` passed (the assembler's 2 s grace)."""
        end_min = time.monotonic() + seconds
        last, since = None, time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and learner.alive():
            s = obs.last_status()
            cur = s.buffer_steps if s is not None else None
            if cur != last:
                last, since = cur, time.monotonic()
            if time.monotonic() >= end_min and time.monotonic() - since >= 1.0:
                return
            time.sleep(0.05)

    class Pacer:
        """At most --rate messages/s, and never more than LAG_ROWS valid steps ahead of what the learner's
        status says it stored: a learner on a loaded machine may handle fewer messages per second than we can
        send, and its input queue (depth 1000) must not overflow (that would lose valid messages in transport,
        not in the learner's checks). Each valid step is one buffer row; the malformed messages add none."""

        def __init__(self, lag_rows: int = LAG_ROWS):
            self.lag_rows = lag_rows
            s = obs.last_status()
            self.base_rows = int(s.buffer_steps) if s is not None else 0
            self.base_steps = valid.steps_sent
            self.t_start, self.k, self.waited, self.rebased = time.monotonic(), 0, 0.0, 0

        def __call__(self, msgs: int = 1):
            self.k += msgs
            delay = self.t_start + self.k * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            want = self.base_rows + (valid.steps_sent - self.base_steps) - self.lag_rows
            t = time.monotonic()
            while learner.alive() and not stop['flag']:
                s = obs.last_status()
                if s is None or int(s.buffer_steps) >= want:
                    break
                if time.monotonic() - t > 5.0:
                    # no progress for 5 s: rows went missing (lost valid messages show up in the check), so
                    # count from what the learner has now rather than wait for rows that will never come
                    self.base_rows, self.base_steps = int(s.buffer_steps), valid.steps_sent
                    self.rebased += 1
                    break
                time.sleep(0.01)
            self.waited += time.monotonic() - t

    def flood(topic: str, gen, phase: str, victims: bool = False) -> dict:
        sent = valid_msgs = 0
        kinds: dict[str, int] = {}
        pace = Pacer(LAG_ROWS_EVENTS if topic == 'poco/episode_event' else LAG_ROWS)
        for i in range(n):
            if stop['flag'] or not learner.alive():
                break
            kind, msg = gen(i)
            obs.publish(topic, msg)
            sent += 1
            kinds[kind] = kinds.get(kind, 0) + 1
            if i % 3 == 2:   # one valid message after every 3 malformed ones
                vt, vm = valid.next(phase, victims)
                obs.publish(vt, vm)
                valid_msgs += 1
                pace(2)
            else:
                pace(1)
        while valid.in_progress() and learner.alive():   # finish the valid episode in progress
            vt, vm = valid.next(phase, victims)
            obs.publish(vt, vm)
            valid_msgs += 1
            pace(1)
        secs = time.monotonic() - pace.t_start
        return {'sent': sent, 'valid_messages': valid_msgs, 'kinds': kinds, 'seconds': round(secs, 1),
                'messages_per_s': round((sent + valid_msgs) / max(secs, 1e-9), 1),
                'waited_for_learner_s': round(pace.waited, 1), 'pacer_rebased': pace.rebased}

    try:
        if not up(-math.inf):
            raise SystemExit(f'the learner never came up (no status / no subscription); logs in {logdir}')
        # the learner has a buffer (the demos) and is training: the situation of a running system
        wait(lambda: obs.last_status().demo_steps > 0, 60, [learner])
        s0 = obs.last_status()
        result['start'] = {'phase': s0.phase, 'buffer_steps': int(s0.buffer_steps),
                           'demo_steps': int(s0.demo_steps), 'seconds': round(time.monotonic() - t0, 1)}
        log_drops_before = {}

        # ---- 1. transitions
        topic = 'poco/transition'
        dropped0 = int(s0.dropped_messages)
        diag0 = drops_from_diag(obs.diag)
        row = flood(topic, lambda i: bad_transition(rng, i), 'transition', victims=True)
        settle()
        victims = [e for e, v in valid.sent.items() if v['victim'] and v['done']]
        for eid, m in victim_strays(rng, victims):
            obs.publish(topic, m)
            time.sleep(interval)
        row['victim_strays'] = len(victims)
        settle(2.5)
        note_exit(topic)
        s1 = obs.last_status()
        row['status_dropped_messages'] = int(s1.dropped_messages) - dropped0 if s1 else None
        row['drops_diag'] = sub_counts(drops_from_diag(obs.diag), diag0)
        result['topics'][topic] = row

        # ---- 2. kill -9 while valid episodes stream in, read the buffer, restart on the same run_dir
        kill = {}
        if learner.alive():
            t_kill = time.monotonic() + 3.0
            sent_times: list[tuple[float, int]] = []   # (time, eid) of valid STEP transitions
            interval = 1.0 / 100                       # ~100 valid messages/s, a busy robot's pace x 7
            pace = Pacer()
            while time.monotonic() < t_kill and learner.alive():
                vt, vm = valid.next('kill')
                obs.publish(vt, vm)
                if vt == topic and not vm.final_observation:
                    sent_times.append((time.monotonic(), vm.episode_id))
                pace(1)
            interval = 1.0 / max(args.rate, 1.0)
            before = obs.last_status()
            learner.kill9()
            t_killed = time.monotonic()
            in_flight_at_kill = set(valid.abandon())
            # the learner's last status said it had stored `processed` steps of this phase: the episodes beyond
            # were still in its input queue (or in DDS) when it died, never received (not a buffer loss)
            processed = (int(before.buffer_steps) if before else 0) - pace.base_rows
            in_transit, cum = set(), 0
            for e in sorted(e for e, v in valid.sent.items() if v['phase'] == 'kill' and e not in in_flight_at_kill):
                cum += len(valid.sent[e]['actions'])
                if cum > processed:
                    in_transit.add(e)
            in_flight_at_kill |= in_transit
            last_second = sum(1 for t, _ in sent_times if t > t_killed - 1.0)
            disk = read_buffer(run_dir, valid, in_flight_at_kill)
            learner.start()
            t_restart = time.monotonic()
            ok = up(t_restart)
            after = obs.last_status(t_restart)
            rows_before = int(before.buffer_steps) if before else 0
            rows_after = int(after.buffer_steps) if after else 0
            lost = max(0, rows_before - rows_after)
            kill = {'rows_before_kill': rows_before, 'rows_on_disk_after_kill': disk['rows'],
                    'rows_after_restart': rows_after, 'rows_lost': lost,
                    'steps_sent_in_last_second': last_second,
                    'episodes_in_flight': len(in_flight_at_kill) - len(in_transit),
                    'episodes_not_yet_received': len(in_transit), 'restarted': ok,
                    'restart_s': round(time.monotonic() - t_restart, 1),
                    'lost_beyond_allowance': max(0, lost - last_second),
                    'polluted_rows': disk['polluted_rows'], 'buffer_after_kill': disk}
            log_drops_before = drops_from_log(learner.logs[0])
            if not ok:
                note_exit('restart')
        result['kill9'] = kill

        # ---- 3. episode events, on the restarted learner
        topic = 'poco/episode_event'
        if learner.alive():
            s2 = obs.last_status()
            dropped0 = int(s2.dropped_messages) if s2 else 0
            diag0 = drops_from_diag(obs.diag)
            finished_valid = [e for e, v in valid.sent.items() if v['done'] and e not in in_flight_at_kill]
            row = flood(topic, lambda i: bad_event(rng, i, finished_valid), 'episode_event')
            settle()
            note_exit(topic)
            s3 = obs.last_status()
            row['status_dropped_messages'] = int(s3.dropped_messages) - dropped0 if s3 else None
            row['drops_diag'] = sub_counts(drops_from_diag(obs.diag), diag0)
            result['topics'][topic] = row

        # ---- 4. one last valid episode, a clean stop
        if learner.alive():
            while True:
                vt, vm = valid.next('final')
                obs.publish(vt, vm)
                time.sleep(0.01)
                if not valid.in_progress():
                    break
            settle()
        result['diagnostics_received'] = obs.diag_seen
        result['last_status'] = ({k: getattr(obs.last_status(), k) for k in ('phase', 'update_step', 'buffer_steps',
                                                                            'episodes', 'dropped_messages')}
                                 if obs.last_status() is not None else None)
    finally:
        note_exit('end')
        died = not learner.alive()
        rc = learner.stop()
        result['clean_stop'] = (not died) and rc == 0
        result['stop_exit_status'] = rc
        try:
            rclpy.shutdown(context=context)
            obs.ex.shutdown(timeout_sec=2)
        except Exception:  # noqa: BLE001
            pass

    final = read_buffer(run_dir, valid, in_flight_at_kill, gap_ids(learner.logs))
    result['buffer'] = final
    log_drops_after = drops_from_log(learner.logs[-1])
    result['node_exits'] = {str(k): v for k, v in exits.items()}
    for topic, row in result['topics'].items():
        phase = 'transition' if topic == 'poco/transition' else 'episode_event'
        v = final['valid'].get(phase, {})
        row['node_exits'] = sum(1 for w in exits.values() if w == topic)
        row['valid_rows_sent'] = v.get('rows_sent', 0)
        row['valid_rows_kept'] = v.get('rows_kept', 0)
        row['valid_rows_lost_in_transport'] = v.get('rows_lost_in_transport', 0)
        # the node refused more messages than the malformed ones it must refuse: it refused valid ones
        must = sum(c for kind, c in row['kinds'].items() if kind in NODE_REFUSES[topic])
        got = row['status_dropped_messages']
        row['valid_messages_refused'] = max(0, got - must) if got is not None else None
        row['malformed_not_received'] = max(0, must - got) if got is not None else None
        row['valid_episodes_missing'] = v.get('episodes_missing', 0)
        row['valid_episodes_altered'] = v.get('episodes_altered', 0)
        row['victims'] = v.get('victims', 0)
        row['finished_episodes_deleted'] = v.get('victims_deleted', 0) + v.get('victims_altered', 0)
        what = topic.split('/')[-1]
        if row.get('drops_diag'):
            row['dropped'] = row.pop('drops_diag')
        else:
            row.pop('drops_diag', None)
            src = log_drops_before if topic == 'poco/transition' else log_drops_after
            row['dropped'] = {f'{k} (log)': c for k, c in src.items() if k.startswith(what + ':')}
    # polluted rows: the buffer after the transition phase (read at the kill) and what the event phase added
    kp = result.get('kill9', {}).get('polluted_rows', 0)
    if 'poco/transition' in result['topics']:
        result['topics']['poco/transition']['polluted_rows'] = kp
    if 'poco/episode_event' in result['topics']:
        result['topics']['poco/episode_event']['polluted_rows'] = max(0, final['polluted_rows'] - kp)
    result['other_drops'] = {k: c for k, c in {**log_drops_before, **log_drops_after}.items()
                             if not k.startswith(('transition:', 'episode_event:'))}
    # log lines per dropped message that bypass the node's throttle (poco_learner.episodes logs every gap)
    result['unthrottled_log_lines'] = sum(
        sum(1 for ln in f.read_text(errors='replace').splitlines() if ln.startswith('dropping transition ('))
        for f in learner.logs if f.exists())
    result['seconds'] = round(time.monotonic() - t0, 1)

    print(f'{"topic":20s} {"sent":>6s} {"valid":>6s} {"exits":>5s} {"pollut":>6s} {"vrows":>6s} {"kept":>6s} '
          f'{"v-del":>5s} {"status":>6s}  drops counted by the node')
    for t, r in result['topics'].items():
        print(f'{t:20s} {r["sent"]:6d} {r["valid_messages"]:6d} {r["node_exits"]:5d} {r["polluted_rows"]:6d} '
              f'{r["valid_rows_sent"]:6d} {r["valid_rows_kept"]:6d} {r["finished_episodes_deleted"]:5d} '
              f'{str(r["status_dropped_messages"]):>6s}  {r["dropped"]}')
    k = result.get('kill9') or {}
    if k:
        print(f'kill -9: {k["rows_before_kill"]} rows before (last status), {k["rows_on_disk_after_kill"]} on disk, '
              f'{k["rows_after_restart"]} after the restart ({k["restart_s"]} s): {k["rows_lost"]} lost '
              f'({k["steps_sent_in_last_second"]} steps sent in the last second; {k["episodes_in_flight"]} '
              f'episodes in flight)')
    for t, r in result['topics'].items():
        print(f'{t}: valid rows lost on the way (never reached the checks) {r["valid_rows_lost_in_transport"]}, '
              f'valid messages refused by the node {r["valid_messages_refused"]}, malformed messages not received '
              f'{r["malformed_not_received"]}, {r["messages_per_s"]} messages/s (waited {r["waited_for_learner_s"]} s '
              f'for the learner)')
    for ph in ('kill', 'final'):
        v = final['valid'].get(ph)
        if v:
            print(f'valid episodes of the {ph} phase: {v["rows_kept"]}/{v["rows_sent"]} rows kept '
                  f'({v["episodes_missing"]} episodes missing, {v["episodes_altered"]} altered)')
    print(f'buffer at the end: {final["rows"]} rows, {final.get("episodes")} episodes, {final["polluted_rows"]} '
          f'polluted; clean stop: {result["clean_stop"]} (exit {result["stop_exit_status"]}); node exits: '
          f'{result["node_exits"] or "none"}; /diagnostics received: {result.get("diagnostics_received")}; '
          f'other drops: {result["other_drops"] or "none"}; unthrottled per-message log lines: '
          f'{result["unthrottled_log_lines"]}; {result["seconds"]} s; logs {logdir}')
    for b in result['bugs']:
        print(f'BUG: learner exited during {b["where"]} (status {b["exit_status"]}), log {b["log"]}')
        for tb in b['tracebacks']:
            print('   ' + tb.replace('\n', '\n   '))
    bad = (bool(exits) or not result['clean_stop'] or final['polluted_rows']
           or k.get('lost_beyond_allowance', 1) or not k.get('restarted')
           or len(result['topics']) < 2
           or any(r['valid_rows_kept'] < r['valid_rows_sent'] or r['finished_episodes_deleted']
                  or r['valid_messages_refused']
                  or r['valid_rows_sent'] == 0 for r in result['topics'].values())
           or any(v['rows_kept'] < v['rows_sent'] for ph, v in final['valid'].items() if ph in ('kill', 'final')))
    result['ok'] = not bad
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    print('FUZZ_RESULT ' + json.dumps(result, default=str))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
