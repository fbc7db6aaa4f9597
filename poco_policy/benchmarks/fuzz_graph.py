"""Fuzz the policy node over DDS: malformed messages on every topic it subscribes to, plus the weights attacks.

    python poco_policy/benchmarks/fuzz_graph.py [--quick] [--n 10000] [--rate 500] [--json out.json]
                                                [--domain-id D] [--no-key] [--pixels] [--sim-pauses K]

Starts, as separate OS processes, the sim node (state mode, wall clock) and the policy node (state mode, a small
initial actor, a weights key unless --no-key), waits until the arm moves, then per subscribed data topic
(joint_states, sim/state, ee_pose, teleop/action, poco/policy_weights) publishes N malformed messages (default
10,000; --quick 100) at --rate per second: wrong lengths, NaN/inf, huge values, duplicated/missing/extra names,
positions outside the joint limits, empty and oversized arrays; on the weights topic first every attack of
issue 11 (deep JSON, flow_steps=50000, wrong obs size, 8192-wide layers in a tiny payload, version jump, wrong
sha256, random bytes, pickle format; signed with the right key so the content checks are what refuses them;
then unsigned and wrong-key copies), then random mutations of them. Fuzzed joint states carry
header.frame_id='fuzz' so this observer tells them from the sim's (the policy node does not look at it).
At the end a correctly signed valid actor is published and must be taken.

--pixels: sim and policy in pixels mode (both cameras, 64 px images, the policy's frozen ResNet-10 with seeded
random weights; slow on a CPU but fine): the camera topics cameras/front/image_raw and cameras/wrist/image_raw
replace sim/state, each fuzzed with wrong encodings (rgb16, 16UC1, bayer, '', 1000 characters), wrong
width/height/step, data shorter and longer than declared, huge declared sizes (65535 x 65535, 2^31 step) with
tiny data, zero width/height, valid frames of another size (17 x 300, mono8, bgra8) and all-zero frames.
--sim-pauses K: during the fuzzing the sim process is SIGSTOPped K times for 1.5 s (then SIGCONT), each pause
followed by an e-stop press and release (issue 11's watchdog-then-e-stop crash). Checked per pause: the policy
node stays up and holds: every joint command received from staleness_s + 0.4 s after the stop until the SIGCONT
(its inputs are stale; by the commands' header stamps, the policy's send time) repeats the target before it (policy_node._hold re-sends its last command; a new
target there = a move on stale inputs, must be 0: staleness_s + 0.4 s allows for one sensor queue of 5 messages
at 15 Hz and a tick period); and how many commands came in the 10 s after the release.

Printed per topic: messages sent, node exits, non-finite commands, commands beyond the per-tick delta from the
measured position (the nearest of the sim's last 10 joint states; max_joint_delta + 1e-4 rad), transitions
with non-finite or out-of-range values (what would pollute the buffer), the maximum control-tick gap (from
consecutive PolicyTick header stamps, the node's own timer), how late that tick was (gap - 66.7 ms) and the
drop reasons the node counted (camera topics are best-effort with depth 5, like the sim's: a busy pixels-mode
policy receives only part of a flood, the rest never reaches it; with --sim-pauses the pauses fall into whichever topic is being fuzzed, so its
tick gap includes them). Before the weights attacks a valid signed actor v1 is taken (a running learner's
situation: the version-jump bound applies from the first learner version on). The last
line is `FUZZ_RESULT <json>`; exit status 1 when any must-be-zero column is not zero, the signed actor was
not taken, or a sim pause saw a move on stale inputs or a policy exit. Children run in their own process groups
and are killed at the end (SIGINT, SIGTERM, SIGKILL).
Not covered here: learner kill -9 and the learner's inputs (poco_learner/benchmarks/fuzz_learner.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

JOINTS = ['joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'joint6']
MAX_DELTA = 0.05
PREFIX = {'joint_states': 'joint_states', 'sim/state': 'sim/state', 'ee_pose': 'ee_pose',
          'teleop/action': 'teleop', 'poco/policy_weights': 'weights',
          'cameras/front/image_raw': 'cameras/front', 'cameras/wrist/image_raw': 'cameras/wrist'}
OBS_STATE = 20  # the sim's pick_cube state size (checked at start-up from the first sim/state)
CAMERAS = ('front', 'wrist')
IMAGE_SIZE = 64     # --pixels: the sim's images and the encoder's input [px]
FEATURE_DIM = 64    # --pixels: encoder features per camera
PAUSE_S = 1.5       # --sim-pauses: how long each SIGSTOP lasts
STALENESS_S = 0.5   # the policy's staleness_s (inputs older than this -> hold)


# ------------------------------------------------------------------------------------------ weights attacks
def actor_bytes(obs_dim, hidden=(32, 32), flow_steps=3, horizon=5, seed=0):
    import torch
    from poco_policy.flow_policy import FlowChunkPolicy, FlowPolicyConfig, weights_to_bytes
    torch.manual_seed(seed)
    return weights_to_bytes(FlowChunkPolicy(FlowPolicyConfig(obs_dim=obs_dim, horizon=horizon,
                                                             hidden_dims=hidden, flow_steps=flow_steps)))


def tiny_wide_payload(obs_dim, widths=(8192, 16384)):
    cfg = {'obs_dim': obs_dim, 'action_dim': 7, 'horizon': 5, 'hidden_dims': list(widths), 'flow_steps': 10,
           'clip_samples': True}
    header = {'__metadata__': {'format': 'poco_flow_policy/1', 'config': json.dumps(cfg)},
              'obs_in.weight': {'dtype': 'F32', 'shape': [widths[0], obs_dim], 'data_offsets': [0, 16]}}
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, 'little') + h + b'\0' * 16, {'config': cfg}


def weights_msg(payload, meta, version, key=None, signature=None, sha=None, fmt='safetensors'):
    from poco_msgs.msg import PolicyWeights
    from poco_policy.weights import sign
    md = meta if isinstance(meta, str) else json.dumps(meta)
    m = PolicyWeights()
    m.version, m.format = int(version) % 2**32, fmt
    m.sha256 = sha or hashlib.sha256(payload).hexdigest()
    m.payload = bytes(payload)
    m.metadata = md
    m.signature = signature if signature is not None else (sign(key, m.version, m.sha256, md) if key else '')
    return m


def weights_attacks(obs_dim, key, version):
    good_p, good_m = actor_bytes(obs_dim, seed=1)
    out = [('deep JSON', weights_msg(b'x' * 64, '[' * 100_000, version, key)),
           ('deep JSON, small', weights_msg(good_p, '[' * 5_000, version, key)),
           ('flow_steps=50000', weights_msg(*actor_bytes(obs_dim, flow_steps=50000), version, key)),
           ('wrong obs size', weights_msg(*actor_bytes(obs_dim + 30), version, key)),
           ('8192-wide layers in a tiny payload', weights_msg(*tiny_wide_payload(obs_dim), version, key)),
           ('version jump', weights_msg(good_p, good_m, version + 100_000, key)),
           ('wrong sha256', weights_msg(good_p, good_m, version, key, sha='0' * 64)),
           ('random bytes', weights_msg(os.urandom(268), {}, version, key)),
           ('pickle format', weights_msg(good_p, good_m, version, key, fmt='pickle')),
           ('NaN tensors', weights_msg(*_nan_actor(obs_dim), version, key))]
    if key is not None:
        from poco_policy.weights import sign
        out += [('unsigned', weights_msg(good_p, good_m, version, None, signature='')),
                ('wrong key', weights_msg(good_p, good_m, version, None, signature=sign(
                    os.urandom(32), version, hashlib.sha256(good_p).hexdigest(), json.dumps(good_m))))]
    return out


def _nan_actor(obs_dim):
    from safetensors.torch import load, save
    p, m = actor_bytes(obs_dim, seed=2)
    state = load(p)
    k = sorted(state)[0]
    state[k][...] = float('nan')
    meta = json.loads(_header_meta(p)['config'])
    return save(state, metadata=_header_meta(p)), dict(m, config=meta, sha256='')


def _header_meta(p):
    n = int.from_bytes(p[:8], 'little')
    return json.loads(p[8:8 + n])['__metadata__']


# ------------------------------------------------------------------------------------------ malformed inputs
def bad_joint_state(rng, i):
    from sensor_msgs.msg import JointState
    m = JointState()
    m.header.frame_id = 'fuzz'
    names, pos = JOINTS + ['gripper'], [0.0, 0.4, 1.9, 0.0, 0.8, 0.0, 0.5]
    k = i % 12
    if k == 0:
        pos[rng.integers(6)] = 1e30
    elif k == 1:
        pos[6] = float('nan')
    elif k == 2:
        names[1] = 'joint1'  # duplicated name
    elif k == 3:
        pos[rng.integers(7)] = float(rng.choice([math.inf, -math.inf, math.nan]))
    elif k == 4:
        names, pos = names[:5], pos[:5]  # missing joints
    elif k == 5:
        pos = pos[:3]  # names/positions mismatch
    elif k == 6:
        pos[rng.integers(6)] = float(rng.choice([-1, 1])) * (3.5 + rng.random())  # outside the joint limits
    elif k == 7:
        names, pos = [], []
    elif k == 8:
        names = [f'j{n}' for n in range(5000)]
        pos = rng.standard_normal(5000).tolist()
    elif k == 9:
        pos[6] = 1e30
    elif k == 10:
        pos = (rng.standard_normal(7) * 1e6).tolist()
    else:
        names = names[::-1] + ['joint3']
        pos = pos[::-1] + [float('nan')]
    m.name, m.position = names, [float(x) for x in pos]
    return m


def bad_state(rng, i):
    from std_msgs.msg import Float32MultiArray
    k = i % 6
    n = OBS_STATE
    data = rng.standard_normal(n).astype(np.float32)
    if k == 0:
        data = data[: rng.integers(0, n)]
    elif k == 1:
        data[rng.integers(n)] = np.nan
    elif k == 2:
        data[rng.integers(n)] = np.inf
    elif k == 3:
        data[rng.integers(n)] = 1e30
    elif k == 4:
        data = rng.standard_normal(int(rng.integers(n + 1, 20_000))).astype(np.float32)
    else:
        data = np.zeros(0, np.float32)
    return Float32MultiArray(data=data.tolist())


def bad_ee(rng, i):
    from geometry_msgs.msg import PoseStamped
    m = PoseStamped()
    v = [math.nan, math.inf, -math.inf, 1e30, -1e30][i % 5]
    setattr(m.pose.position, 'xyz'[i % 3], v)
    return m


def bad_teleop(rng, i):
    from poco_msgs.msg import ActionChunk
    k = i % 5
    data = rng.standard_normal(7).astype(np.float32)
    if k == 0:
        data = data[: rng.integers(0, 7)]
    elif k == 1:
        data[rng.integers(7)] = np.nan
    elif k == 2:
        data[rng.integers(7)] = np.inf
    elif k == 3:
        data = rng.standard_normal(int(rng.integers(8, 5000))).astype(np.float32)
    else:
        data[rng.integers(7)] = 1e30 * rng.choice([-1, 1])
    return ActionChunk(data=data.tolist())


IMAGE_ENCODINGS = ['rgb16', '16UC1', 'bayer_rggb8', '', 'x' * 1000, 'RGB8', '32FC3']


def bad_image(rng, i):
    """Malformed (and some odd but valid) camera images; the policy must drop or survive each."""
    from sensor_msgs.msg import Image
    m = Image()
    m.header.frame_id = 'fuzz'
    h = w = IMAGE_SIZE
    enc, step = 'rgb8', IMAGE_SIZE * 3
    size = None                        # bytes of data (default: exactly step * h)
    k = i % 12
    if k == 0:
        enc = IMAGE_ENCODINGS[(i // 12) % len(IMAGE_ENCODINGS)]
    elif k == 1:
        w = int(rng.integers(IMAGE_SIZE + 1, 4 * IMAGE_SIZE))           # wider than the data
        size = IMAGE_SIZE * IMAGE_SIZE * 3
    elif k == 2:
        h = int(rng.integers(IMAGE_SIZE + 1, 4 * IMAGE_SIZE))           # taller than the data
        size = IMAGE_SIZE * IMAGE_SIZE * 3
    elif k == 3:
        step = int(rng.integers(0, IMAGE_SIZE * 3))                     # step < width * channels
    elif k == 4:
        size = int(rng.integers(0, IMAGE_SIZE * IMAGE_SIZE * 3))        # data shorter than declared
    elif k == 5:
        size = IMAGE_SIZE * IMAGE_SIZE * 3 + int(rng.integers(1, 5000))  # longer than declared (extra ignored)
    elif k == 6:
        h, w, step, size = 65535, 65535, 65535 * 3, int(rng.integers(0, 64))  # huge declared, tiny data
    elif k == 7:
        h, w, step, size = 1, 1, 2**31, 3
    elif k == 8:
        h, w = [(0, IMAGE_SIZE), (IMAGE_SIZE, 0), (0, 0)][(i // 12) % 3]
        step = w * 3
    elif k == 9:
        h, w, step = 17, 300, 900                                     # valid, another size
    elif k == 10:
        enc = ['mono8', 'bgra8'][(i // 12) % 2]                         # valid, another encoding
        step = w * (1 if enc == 'mono8' else 4)
    else:
        m.height, m.width, m.encoding, m.step = h, w, enc, step         # valid size, all-zero frame
        m.data = bytes(step * h)
        return m
    m.height, m.width, m.encoding, m.step = h, w, enc, step
    n = step * h if size is None else size
    m.data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return m


def mutate_weights(rng, i, pool):
    """Random mutations of the attacks: random versions, truncations, flipped bytes, garbage metadata."""
    base = pool[i % len(pool)][1]
    from poco_msgs.msg import PolicyWeights
    m = PolicyWeights()
    m.version = base.version if i % 8 else int(rng.integers(0, 2**32))  # mostly the next version: content checks
    m.format, m.sha256, m.metadata, m.signature = base.format, base.sha256, base.metadata, base.signature
    p = bytearray(bytes(base.payload))
    k = i % 4
    if k == 0 and p:
        p = p[: rng.integers(0, len(p))]
    elif k == 1 and p:
        for _ in range(8):
            p[rng.integers(len(p))] = rng.integers(256)
        m.sha256 = hashlib.sha256(p).hexdigest()
    elif k == 2:
        m.metadata = ''.join(rng.choice(list('{}[]":,0123456789abc')) for _ in range(200))
    else:
        m.signature = 'hmac-sha256:' + os.urandom(32).hex()
    m.payload = bytes(p)
    return m


# ------------------------------------------------------------------------------------------ processes
class Proc:
    def __init__(self, logdir: Path, pkg: str, exe: str, name: str, params: dict, env: dict):
        import yaml
        self.name, self.log_path = name, logdir / f'{name}.log'
        pfile = logdir / f'{name}.params.yaml'
        pfile.write_text(yaml.safe_dump({f'/**/{name}': {'ros__parameters': params}}))
        from poco_policy.testing import installed
        path = installed(pkg, 'lib', pkg, exe)    # of the sourced workspace (repo install/ or a ws/install)
        if not path.exists():
            raise SystemExit(f'{path} missing: run scripts/setup.sh')
        self.log = open(self.log_path, 'a')
        self.p = subprocess.Popen([str(path), '--ros-args', '-r', f'__node:={name}', '--params-file', str(pfile)],
                                  env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self):
        for sig, wait in ((signal.SIGINT, 8), (signal.SIGTERM, 3), (signal.SIGKILL, 3)):
            if self.p.poll() is not None:
                break
            try:
                os.killpg(self.p.pid, sig)
                self.p.wait(wait)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.log.close()


class Observer:
    def __init__(self, context):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                               qos_profile_sensor_data)
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Bool, Float32MultiArray
        from geometry_msgs.msg import PoseStamped
        from poco_msgs.msg import ActionChunk, PolicyTick, PolicyWeights, Transition
        rel = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node = n = rclpy.create_node('fuzzer', context=context)
        self.ex = SingleThreadedExecutor(context=context)
        self.ex.add_node(n)
        self.states: deque = deque(maxlen=10)       # the sim's recent joint positions
        self.state_size = None
        self.commands = self.nonfinite = self.beyond = self.polluted = self.transitions = 0
        self.cmd_log: list[tuple[float, np.ndarray]] = []  # (header stamp = the policy's send time, positions)
        self.max_jump = 0.0
        self.tick_stamps: list[int] = []
        self.diag: dict[str, str] = {}
        n.create_subscription(JointState, 'joint_states', self._on_js, qos_profile_sensor_data)
        n.create_subscription(Float32MultiArray, 'sim/state', self._on_state, qos_profile_sensor_data)
        n.create_subscription(JointState, 'joint_commands', self._on_cmd, rel)
        n.create_subscription(PolicyTick, 'poco/policy_tick', self._on_tick, rel)
        n.create_subscription(Transition, 'poco/transition', self._on_tr, QoSProfile(
            depth=1000, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST))
        n.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, rel)
        self.pubs = {'joint_states': n.create_publisher(JointState, 'joint_states', qos_profile_sensor_data),
                     'sim/state': n.create_publisher(Float32MultiArray, 'sim/state', qos_profile_sensor_data),
                     'ee_pose': n.create_publisher(PoseStamped, 'ee_pose', qos_profile_sensor_data),
                     'teleop/action': n.create_publisher(ActionChunk, 'teleop/action', rel),
                     'poco/policy_weights': n.create_publisher(PolicyWeights, 'poco/policy_weights', latched)}
        from sensor_msgs.msg import Image
        for c in CAMERAS:
            t = f'cameras/{c}/image_raw'
            self.pubs[t] = n.create_publisher(Image, t, qos_profile_sensor_data)
        self.estop = n.create_publisher(Bool, 'poco/estop', latched)

    def _on_js(self, m):
        if m.header.frame_id == 'fuzz' or len(m.position) < 6:
            return
        self.states.append(np.asarray(m.position[:6], np.float64))

    def _on_state(self, m):
        if self.state_size is None:
            self.state_size = len(m.data)

    def _on_cmd(self, m):
        self.commands += 1
        c = np.asarray(m.position, np.float64)
        self.cmd_log.append((m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec, c))
        if not np.isfinite(c).all():
            self.nonfinite += 1
            return
        if self.states:
            jump = min(float(np.abs(c[:6] - q).max()) for q in self.states)
            self.max_jump = max(self.max_jump, jump)
            if jump > MAX_DELTA + 1e-4:
                self.beyond += 1

    def _on_tick(self, m):
        self.tick_stamps.append(int(m.header.stamp.sec) * 10**9 + int(m.header.stamp.nanosec))

    def _on_tr(self, m):
        self.transitions += 1
        a = np.concatenate([np.asarray(m.features, np.float64), np.asarray(m.proprio, np.float64),
                            np.asarray(m.action, np.float64)])
        if not np.isfinite(a).all() or (a.size and np.abs(a).max() > 1e4):
            self.polluted += 1

    def _on_diag(self, m):
        for st in m.status:
            if st.name.endswith('/policy'):
                self.diag = {kv.key: kv.value for kv in st.values}

    def start(self):
        """Callbacks on their own thread: the observer keeps up with the sim while the main thread floods."""
        self._thread = threading.Thread(target=self._spin_forever, daemon=True)
        self._thread.start()

    def _spin_forever(self):
        try:
            self.ex.spin()
        except Exception:  # noqa: BLE001 - context shut down at the end
            pass

    def spin(self, seconds, procs, cond=None):
        end = time.monotonic() + seconds
        while True:
            if any(not p.alive() for p in procs):
                return False
            if cond is not None and cond():
                return True
            if time.monotonic() >= end:
                return cond is None
            time.sleep(min(0.005, max(0.0, end - time.monotonic())))

    def counters(self):
        return dict(commands=self.commands, nonfinite=self.nonfinite, beyond=self.beyond,
                    polluted=self.polluted, ticks=len(self.tick_stamps))


class SimPauser:
    """--sim-pauses: SIGSTOP the sim's process group K times for PAUSE_S (evenly over the expected fuzzing time,
    on its own thread while the fuzzing goes on), then SIGCONT, an e-stop press and, 0.5 s later, its release."""

    AFTER_S = 10.0

    def __init__(self, sim: 'Proc', obs: 'Observer', k: int):
        self.sim, self.obs, self.k = sim, obs, k
        self.pauses: list[dict] = []
        self.topic = ''            # the topic being fuzzed (set by the main loop)
        self._cancel = threading.Event()
        self._thread = None
        self.policy = None

    def start(self, expected_s: float):
        self._thread = threading.Thread(target=self._run, args=(max(expected_s, 4.0 * self.k),), daemon=True)
        self._thread.start()

    def _run(self, expected_s: float):
        from std_msgs.msg import Bool
        gap = expected_s / (self.k + 1)
        t0 = time.monotonic()
        for j in range(self.k):
            if self._cancel.wait(max(0.0, t0 + (j + 1) * gap - time.monotonic())) or not self.sim.alive():
                return
            # wall clock: the policy node stamps its commands with its (wall) clock at send time
            os.killpg(self.sim.p.pid, signal.SIGSTOP)
            t_stop = time.time()
            self._cancel.wait(PAUSE_S)
            os.killpg(self.sim.p.pid, signal.SIGCONT)
            t_cont = time.time()
            self.obs.estop.publish(Bool(data=True))
            time.sleep(0.5)
            self.obs.estop.publish(Bool(data=False))
            t_rel = time.time()
            self._cancel.wait(self.AFTER_S)
            # commands sent in [stop + staleness + 0.4 s, SIGCONT] were sent on stale inputs: the node holds,
            # i.e. repeats its last target (policy_node._hold); any other target there is a move on stale inputs
            w0 = t_stop + STALENESS_S + 0.4
            log = sorted(self.obs.cmd_log, key=lambda tc: tc[0])
            new = [i > 0 and (c.shape != log[i - 1][1].shape or np.abs(c - log[i - 1][1]).max() > 1e-9)
                   for i, (t, c) in enumerate(log)]      # a target other than the one before it
            stale = [c for t, c in log if w0 <= t <= t_cont]
            moves = sum(1 for i, (t, c) in enumerate(log) if w0 <= t <= t_cont and new[i])
            after = sum(1 for t, _ in log if t_rel < t <= t_rel + self.AFTER_S)
            self.pauses.append({'topic': self.topic, 'commands_while_stale': len(stale),
                                'moves_while_stale': moves,
                                'last_move_after_stop_s': round(max(
                                    (t - t_stop for i, (t, c) in enumerate(log) if t_stop <= t <= t_cont and new[i]),
                                    default=0.0), 3),
                                'stale_window_s': round(max(0.0, t_cont - w0), 2),
                                'commands_after_release': after, 'after_s': self.AFTER_S,
                                'policy_alive': self.policy.alive() if self.policy is not None else None})

    def join(self):
        if self._thread is not None:
            self._thread.join()

    def cancel(self):
        self._cancel.set()
        self.join()
        try:
            os.killpg(self.sim.p.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass

    def report(self) -> list[dict]:
        return list(self.pauses)


def max_gap_ms(stamps) -> float:
    s = sorted(stamps)
    return max((b - a for a, b in zip(s, s[1:])), default=0) / 1e6


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--quick', action='store_true', help='100 messages per topic')
    ap.add_argument('--n', type=int, default=None, help='malformed messages per topic (default 10000)')
    ap.add_argument('--rate', type=float, default=500.0, help='messages per second')
    ap.add_argument('--json', default=None)
    ap.add_argument('--domain-id', type=int, default=None)
    ap.add_argument('--no-key', action='store_true', help='run the policy node without a weights key')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--pixels', action='store_true', help='pixels mode: fuzz the camera topics (not sim/state)')
    ap.add_argument('--sim-pauses', type=int, default=0, metavar='K',
                    help=f'SIGSTOP the sim K times for {PAUSE_S} s during the fuzzing, each followed by an e-stop '
                         'press and release')
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else (100 if args.quick else 10_000)
    rate = min(args.rate, 200.0) if args.quick else args.rate
    domain = args.domain_id if args.domain_id is not None else random.randint(150, 230)
    os.environ.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain))
    os.environ.pop('ROS_STATIC_PEERS', None)
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    env.pop('POCO_USE_SIM_TIME', None)
    logdir = Path(tempfile.mkdtemp(prefix='poco-fuzz-'))
    rng = np.random.default_rng(args.seed)

    key = None
    if not args.no_key:
        key = os.urandom(32)
        kf = logdir / 'weights.key'
        kf.write_bytes(key)
        os.chmod(kf, 0o600)
    obs_dim = (len(CAMERAS) * FEATURE_DIM if args.pixels else OBS_STATE) + 7
    p, m = actor_bytes(obs_dim)
    (logdir / 'actor.safetensors').write_bytes(p)
    (logdir / 'actor.json').write_text(json.dumps(m))

    import rclpy
    from std_msgs.msg import Bool
    mode = 'pixels' if args.pixels else 'state'
    sim_params = dict(task='pick_cube', obs_mode=mode, seed=1)
    policy_params = dict(obs_mode=mode, initial_weights=str(logdir / 'actor.safetensors'), max_episode_steps=60,
                         eval_every=0, staleness_s=STALENESS_S, max_joint_delta=MAX_DELTA,
                         weights_key_file=str(logdir / 'weights.key') if key else '')
    if args.pixels:
        sim_params.update(image_size=IMAGE_SIZE, cameras=list(CAMERAS))
        policy_params.update(image_size=IMAGE_SIZE, feature_dim=FEATURE_DIM, cameras=list(CAMERAS))
    procs = [Proc(logdir, 'poco_sim', 'sim_node', 'sim', sim_params, env),
             Proc(logdir, 'poco_policy', 'policy_node', 'policy', policy_params, env)]
    exits = {}
    context = rclpy.Context()
    rclpy.init(context=context)
    obs = Observer(context)
    obs.start()
    result = {'domain_id': domain, 'logs': str(logdir), 'n_per_topic': n, 'signed': key is not None,
              'mode': mode, 'topics': {}}
    pauser = SimPauser(procs[0], obs, args.sim_pauses) if args.sim_pauses > 0 else None
    if pauser is not None:
        pauser.policy = procs[1]
    stop = {'flag': False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    try:
        obs.estop.publish(Bool(data=False))
        if not obs.spin(240 if args.pixels else 90, procs,
                        lambda: obs.commands > 20 and (args.pixels or obs.state_size is not None)):
            raise SystemExit(f'the graph never moved the arm; logs in {logdir}')
        if not args.pixels and obs.state_size != OBS_STATE:
            raise SystemExit(f'sim/state has {obs.state_size} values, this harness assumes {OBS_STATE}')
        # as with a running learner: a valid (signed) actor v1 is taken first, so the version-jump bound applies
        obs.pubs['poco/policy_weights'].publish(weights_msg(*actor_bytes(obs_dim, seed=4), 1, key))
        if not obs.spin(15, procs, lambda: obs.diag.get('weights_checked_version') == '1'):
            raise SystemExit(f'the policy did not take signed weights v1; logs in {logdir}')
        pool = weights_attacks(obs_dim, key, 2)
        gens = {'joint_states': bad_joint_state, 'sim/state': bad_state}
        if args.pixels:
            del gens['sim/state']
            gens.update({f'cameras/{c}/image_raw': bad_image for c in CAMERAS})
        gens.update({'ee_pose': bad_ee, 'teleop/action': bad_teleop,
                     'poco/policy_weights': lambda r, i: (pool[i][1] if i < len(pool)
                                                          else mutate_weights(r, i, pool))})
        if pauser is not None:
            pauser.start(n * len(gens) / rate)
        for topic, gen in gens.items():
            if pauser is not None:
                pauser.topic = topic
            before = obs.counters()
            t_start = time.monotonic()
            tick_from = len(obs.tick_stamps)
            sent = 0
            pub = obs.pubs[topic]
            for i in range(n):
                if stop['flag']:
                    break
                pub.publish(gen(rng, i))
                sent += 1
                if topic == 'poco/policy_weights' and i < len(pool):
                    obs.spin(0.3, procs)  # each attack gets the worker to itself
                else:
                    obs.spin(max(0.0, t_start + (i + 1) / rate - time.monotonic()), procs)
            if pauser is not None and topic == list(gens)[-1]:
                pauser.join()     # the remaining pauses happen while the last topic's row is still open
            obs.spin(2.0, procs)  # settle: commands after the last message count too
            after = obs.counters()
            for pr in procs:
                if not pr.alive() and pr.name not in exits:
                    exits[pr.name] = topic
            row = {'sent': sent, 'node_exits': sum(1 for v in exits.values() if v == topic),
                   'nonfinite_commands': after['nonfinite'] - before['nonfinite'],
                   'beyond_delta_commands': after['beyond'] - before['beyond'],
                   'polluted_transitions': after['polluted'] - before['polluted'],
                   'commands': after['commands'] - before['commands'],
                   'max_tick_gap_ms': round(max_gap_ms(obs.tick_stamps[tick_from:]), 1),
                   'dropped': {k[len('dropped/'):]: int(v) for k, v in obs.diag.items()
                               if k.startswith('dropped/') and k[len('dropped/'):].split(':')[0]
                               in (PREFIX[topic], 'command guard', 'transition guard')}}
            row['max_tick_delay_ms'] = round(max(0.0, row['max_tick_gap_ms'] - 1000 / 15), 1)
            result['topics'][topic] = row
            if exits:
                break
        # the real thing still works: a correctly signed (or, without a key, plain) valid actor is taken
        want = int(obs.diag.get('weights_checked_version', '0') or 0) + 1
        good = weights_msg(*actor_bytes(obs_dim, seed=5), want, key)
        obs.pubs['poco/policy_weights'].publish(good)
        result['signed_weights_taken'] = obs.spin(
            15, procs, lambda: obs.diag.get('weights_checked_version') == str(want))
        result['max_jump_rad'] = round(obs.max_jump, 4)
    finally:
        if pauser is not None:
            pauser.cancel()
        for pr in procs:
            if not pr.alive() and pr.name not in exits:
                exits[pr.name] = 'end'
        rclpy.shutdown(context=context)
        obs.ex.shutdown(timeout_sec=2)
        for pr in procs:
            pr.stop()
    result['node_exits'] = exits
    if pauser is not None:
        result['sim_pauses'] = pauser.report()
    print(f'{"topic":22s} {"sent":>6s} {"exits":>5s} {"nonfin":>6s} {"beyond":>6s} {"pollut":>6s} '
          f'{"cmds":>5s} {"gap ms":>7s} {"late ms":>7s}  drops counted')
    for t, r in result['topics'].items():
        print(f'{t:22s} {r["sent"]:6d} {r["node_exits"]:5d} {r["nonfinite_commands"]:6d} '
              f'{r["beyond_delta_commands"]:6d} {r["polluted_transitions"]:6d} {r["commands"]:5d} '
              f'{r["max_tick_gap_ms"]:7.1f} {r["max_tick_delay_ms"]:7.1f}  {r["dropped"]}')
    for j, ps in enumerate(result.get('sim_pauses', [])):
        print(f'sim pause {j + 1}: during {ps["topic"]}: {ps["commands_while_stale"]} commands while stale '
              f'({ps["stale_window_s"]} s window), {ps["moves_while_stale"]} of them not the held target (last new target '
              f'{ps["last_move_after_stop_s"]} s after the stop), e-stop pressed + released, {ps["commands_after_release"]} commands '
              f'in the {ps["after_s"]} s after the release; policy up: {ps["policy_alive"]}')
    print(f'signed weights taken: {result.get("signed_weights_taken")}; node exits: {exits or "none"}; '
          f'max command jump from a measured position {result.get("max_jump_rad")} rad; logs {logdir}')
    bad = (exits or not result.get('signed_weights_taken')
           or any(r['nonfinite_commands'] or r['beyond_delta_commands'] or r['polluted_transitions']
                  for r in result['topics'].values())
           or any(ps['moves_while_stale'] or not ps['policy_alive'] for ps in result.get('sim_pauses', []))
           or (pauser is not None and len(result.get('sim_pauses', [])) < args.sim_pauses))
    result['ok'] = not bad
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print('FUZZ_RESULT ' + json.dumps(result))
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
