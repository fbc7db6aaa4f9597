"""Policy node latency (observation -> action chunk, p50/p99) and control-rate jitter at 15 Hz, end to end.

    python poco_policy/benchmarks/bench_policy_node.py [--modes pixels,state] [--seconds 30] [--repeats 3]
                                                        [--task pick_cube] [--json out.json] [--quick]

Per mode and repetition it starts, as separate OS processes, the sim node (the robot stand-in: joint states,
two 128x128 cameras in pixels mode, the reset service) and the policy node, publishes paper-size actor weights
(FlowChunkPolicy 4x512, T=5, K=10, obs_dim = the node's observation size: pixels 2*64+7 = 135, state S+7) on
`poco/policy_weights` (reliable, transient-local, version 1, safetensors + sha256 + metadata JSON), lets the
node run episodes and records, for `--seconds` after a warm-up:

  latency   `poco/action_chunk` receive time - its header.stamp (the capture stamp of the observation the chunk
            was sampled from), both on the ROS clock. Split into sensor->here (joint_states receive time for the
            same stamp - stamp) and the rest (wait for the next tick + encode + sample + publish + delivery).
  jitter    `joint_commands` arrival intervals dt at this process: p50/p99 of |dt - 1/15 s| and the achieved
            rate; the same from the commands' header stamps (the node's own timer, without DDS delivery).
            Intervals that span an episode boundary (reset, success, failure) are left out.

Naive reference (in this process, with the nodes stopped so nothing competes for the 2 cores; same torch thread
count as the node): the observation->chunk compute done naively, i.e. fp32 NCHW encoder passes one image at a time
and flow sampling with one linear layer on concat(s, a, m) at every flow step (no reuse of the observation's
projection), vs what the node does (both cameras in one channels_last pass, cached observation projection).
Same weights and noise: the two chunks are checked to agree.

All ROS processes get ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST and one ROS_DOMAIN_ID (random in 150..230 unless
--domain-id; a run refuses to start in a domain that already has other nodes). Children run in their own process
groups and are always killed at the end (SIGINT, then SIGTERM, then SIGKILL), also when this script gets SIGTERM.
Node logs go to a temp directory printed as `logs` in the JSON. The sim stamps its messages with the wall clock
when a tick's observation is ready (as a driver stamps at capture), so "sim stamp -> observation here" is
publish + transport; "observation here -> chunk here" is the policy node's own share (tick wait + encode + sample +
publish + delivery). Jitter has no naive reference (a timer has nothing to compare against); the reference is the
ideal 1/15 s.

Options for diagnosis: --sim-exe / --policy-exe run other executables (e.g. an instrumented wrapper),
--dump-raw keeps the raw arrival times in the JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from poco_policy.testing import installed

SIM_EXE = installed('poco_sim', 'lib', 'poco_sim', 'sim_node')             # of the sourced workspace
POLICY_EXE = installed('poco_policy', 'lib', 'poco_policy', 'policy_node')
RATE_HZ = 15.0


# ----------------------------------------------------------------------------------------------- helpers
def pct(xs, q) -> float:
    return float(np.percentile(np.asarray(xs, float), q)) if len(xs) else float('nan')


def paper_policy(obs_dim: int, seed: int = 0):
    import torch
    from poco_policy.flow_policy import FlowChunkPolicy, FlowPolicyConfig
    torch.manual_seed(seed)
    return FlowChunkPolicy(FlowPolicyConfig(obs_dim=obs_dim, action_dim=7, horizon=5,
                                            hidden_dims=(512, 512, 512, 512), flow_steps=10)).eval()


class NaiveSampler:
    """Flow sampling without observation reuse: one Linear on concat(s, a, m) at every Euler step (same weights)."""

    def __init__(self, policy):
        import torch
        from torch import nn
        c = policy.cfg
        self.cfg = c
        self.first = nn.Linear(c.obs_dim + c.chunk_dim + 1, c.hidden_dims[0])
        with torch.no_grad():
            self.first.weight.copy_(torch.cat([policy.obs_in.weight, policy.act_in.weight], 1))
            self.first.bias.copy_(policy.obs_in.bias)
        self.trunk = policy.trunk

    def sample(self, obs, noise):
        import torch
        K = self.cfg.flow_steps
        with torch.inference_mode():
            a = noise.clone()
            for k in range(K):
                m = torch.full((obs.shape[0], 1), k / K)
                a = a + self.trunk(self.first(torch.cat([obs, a, m], 1))) / K
            return a.clamp(-1, 1)


def compute_reference(mode: str, obs_dim: int, threads: int, reps: int, feature_dim: int = 64,
                      image_size: int = 128) -> dict:
    """In-process observation->chunk compute: the node's path vs the naive one (see module docstring)."""
    import logging
    import torch
    from poco_policy.encoder import EncoderConfig, ImageEncoder
    logging.getLogger('poco_policy.encoder').setLevel(logging.ERROR)
    torch.set_num_threads(threads)
    policy = paper_policy(obs_dim)
    naive = NaiveSampler(policy)
    rng = np.random.default_rng(0)
    proprio = rng.uniform(-1, 1, 7).astype(np.float32)
    imgs = rng.integers(0, 256, (2, image_size, image_size, 3), dtype=np.uint8)
    state = rng.standard_normal(obs_dim - 7).astype(np.float32)
    enc = enc_naive = None
    if mode == 'pixels':
        enc = ImageEncoder(EncoderConfig(feature_dim=feature_dim, image_size=image_size))  # as the node builds it
        enc_naive = ImageEncoder(EncoderConfig(feature_dim=feature_dim, image_size=image_size, channels_last=False))

    def ours():
        feats = enc.encode(imgs).reshape(-1) if enc is not None else state
        o = torch.as_tensor(np.concatenate([feats, proprio]), dtype=torch.float32).unsqueeze(0)
        with torch.inference_mode():
            return policy.sample(o, num_samples=1).reshape(5, 7).numpy()

    noise = torch.randn(1, 35)

    def ref():
        if enc_naive is not None:
            feats = np.concatenate([enc_naive.encode(imgs[i:i + 1]).reshape(-1) for i in range(2)])
        else:
            feats = state
        o = torch.as_tensor(np.concatenate([feats, proprio]), dtype=torch.float32).unsqueeze(0)
        return naive.sample(o, torch.randn(1, 35)).reshape(5, 7).numpy()

    # equivalence on the same observation and noise
    feats = enc.encode(imgs).reshape(-1) if enc is not None else state
    o = torch.as_tensor(np.concatenate([feats, proprio]), dtype=torch.float32).unsqueeze(0)
    with torch.inference_mode():
        a_ours = policy.sample(o, 1, noise=noise).reshape(-1)
    a_ref = naive.sample(o, noise).reshape(-1)
    out = {'sample_max_abs_diff': float((a_ours - a_ref).abs().max())}
    if enc is not None:
        f_ref = np.concatenate([enc_naive.encode(imgs[i:i + 1]).reshape(-1) for i in range(2)])
        out['features_max_abs_diff'] = float(np.abs(feats - f_ref).max())
    for _ in range(5):
        ours(), ref()
    t_ours, t_ref = [], []
    for _ in range(reps):  # interleaved
        t0 = time.perf_counter()
        ours()
        t_ours.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        ref()
        t_ref.append((time.perf_counter() - t0) * 1e3)
    out.update({'threads': threads, 'ours_p50_ms': pct(t_ours, 50), 'ours_p99_ms': pct(t_ours, 99),
                'naive_p50_ms': pct(t_ref, 50), 'naive_p99_ms': pct(t_ref, 99)})
    out['speedup_p50'] = out['naive_p50_ms'] / out['ours_p50_ms']
    return out


def pick_domain(requested: int | None) -> int:
    return requested if requested is not None else random.randint(150, 230)


def kill_group(p: subprocess.Popen, name: str) -> None:
    """SIGINT (clean rclpy shutdown), then SIGTERM, then SIGKILL, to the child's own process group only."""
    if p.poll() is not None:
        return
    for sig, wait in ((signal.SIGINT, 5), (signal.SIGTERM, 3), (signal.SIGKILL, 3)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            return
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue
    print(f'warning: {name} (pid {p.pid}) did not exit', file=sys.stderr)


def tail(path: Path, n: int = 40) -> str:
    try:
        return '\n'.join(path.read_text(errors='replace').splitlines()[-n:])
    except OSError:
        return ''


# ----------------------------------------------------------------------------------------------- one run
def run_once(mode: str, args, logdir: Path, tag: str = '') -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                           qos_profile_sensor_data)
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float32MultiArray
    from poco_msgs.msg import ActionChunk, EpisodeEvent, PolicyWeights
    from poco_policy.flow_policy import weights_to_bytes

    env = dict(os.environ)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_DOMAIN_ID'] = os.environ['ROS_DOMAIN_ID']
    env.setdefault('MUJOCO_GL', 'egl')
    env.setdefault('PYOPENGL_PLATFORM', 'egl')
    sim_cmd = [str(args.sim_exe), '--ros-args', '-p', f'task:={args.task}', '-p', f'obs_mode:={mode}']
    for kv in args.sim_param:
        sim_cmd += ['-p', kv]
    pol_cmd = [str(args.policy_exe), '--ros-args', '-p', f'obs_mode:={mode}',
               '-p', f'max_episode_steps:={args.max_episode_steps}', '-p', 'eval_every:=0',
               '-p', 'auto_reset:=true', '-p', f'torch_threads:={args.threads}',
               '-p', f'control_rate_hz:={RATE_HZ}']
    for kv in args.policy_param:
        pol_cmd += ['-p', kv]

    rec = {'chunks': [], 'cmds': [], 'events': [], 'js': {}}
    lock = threading.Lock()
    rclpy.init()
    node = rclpy.create_node('bench_policy_node')
    clock = node.get_clock()
    state_dim = {'n': None}

    def on_chunk(m):
        now = clock.now().nanoseconds
        st = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
        with lock:
            rec['chunks'].append((now, st, m.episode_id, m.step_index, m.policy_version))

    def on_cmd(m):
        t = time.monotonic()
        st = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
        with lock:
            rec['cmds'].append((t, st))

    def on_event(m):
        with lock:
            rec['events'].append((time.monotonic(), m.event, m.episode_id, m.step_count, m.detail))

    def on_js(m):
        now = clock.now().nanoseconds
        st = m.header.stamp.sec * 10**9 + m.header.stamp.nanosec
        with lock:
            rec['js'][st] = now
            if len(rec['js']) > 20000:
                for k in list(rec['js'])[:10000]:
                    del rec['js'][k]

    def on_state(m):
        state_dim['n'] = len(m.data)

    rel10 = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(ActionChunk, 'poco/action_chunk', on_chunk, rel10)
    node.create_subscription(JointState, 'joint_commands', on_cmd, rel10)
    node.create_subscription(EpisodeEvent, 'poco/episode_event', on_event,
                             QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                        history=HistoryPolicy.KEEP_LAST))
    node.create_subscription(JointState, 'joint_states', on_js, qos_profile_sensor_data)
    if mode == 'state':
        node.create_subscription(Float32MultiArray, 'sim/state', on_state, qos_profile_sensor_data)
    weights_pub = node.create_publisher(PolicyWeights, 'poco/policy_weights', latched)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    stop = threading.Event()

    def spin():
        from rclpy.executors import ExternalShutdownException
        try:
            while not stop.is_set() and rclpy.ok():
                ex.spin_once(timeout_sec=0.05)
        except ExternalShutdownException:
            pass  # rclpy shut down under us (SIGTERM / end of run)

    spinner = threading.Thread(target=spin, daemon=True)
    spinner.start()
    procs: list[tuple[subprocess.Popen, str, Path]] = []
    out: dict = {'mode': mode}
    try:
        # Nobody else in this domain? (a colliding run would corrupt the measurement)
        time.sleep(1.0)
        others = [n for n in node.get_node_names() if n != 'bench_policy_node']
        if others:
            raise RuntimeError(f'ROS_DOMAIN_ID {env["ROS_DOMAIN_ID"]} already has nodes {others}; '
                               'pick another --domain-id')
        for name, cmd in (('sim_node', sim_cmd), ('policy_node', pol_cmd)):
            log = logdir / f'{mode}{tag}_{name}.log'
            f = open(log, 'wb')
            p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            f.close()
            procs.append((p, name, log))

        def check_children():
            for p, name, log in procs:
                if p.poll() is not None:
                    raise RuntimeError(f'{name} exited with code {p.returncode}; log tail:\n{tail(log)}')

        # observation size
        deadline = time.monotonic() + args.startup_timeout
        if mode == 'pixels':
            obs_dim = 2 * args.feature_dim + 7
        else:
            while state_dim['n'] is None:
                check_children()
                if time.monotonic() > deadline:
                    raise RuntimeError('no sim/state message from the sim node')
                time.sleep(0.1)
            obs_dim = state_dim['n'] + 7
        out['obs_dim'] = obs_dim
        payload, meta = weights_to_bytes(paper_policy(obs_dim), extra={'update_step': 0})
        msg = PolicyWeights()
        msg.header.stamp = clock.now().to_msg()
        msg.version = 1
        msg.format = 'safetensors'
        msg.sha256 = hashlib.sha256(payload).hexdigest()
        msg.payload = payload
        msg.metadata = json.dumps(meta)
        weights_pub.publish(msg)
        out['weights_bytes'] = len(payload)

        # wait for the first chunk
        while True:
            check_children()
            with lock:
                n = len(rec['chunks'])
            if n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f'no action chunk within {args.startup_timeout} s; policy log tail:\n'
                                   f'{tail(procs[1][2])}\n--- sim log tail:\n{tail(procs[0][2])}')
            time.sleep(0.1)
        out['startup_s'] = args.startup_timeout - (deadline - time.monotonic())
        time.sleep(args.warmup)
        with lock:
            for k in ('chunks', 'cmds', 'events'):
                rec[k].clear()
        t_start = time.monotonic()
        load_before = os.getloadavg()[0]
        while time.monotonic() - t_start < args.seconds:
            check_children()
            time.sleep(0.2)
        t_end = time.monotonic()
        out['loadavg_1min'] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        time.sleep(0.3)  # let the last joint_states / chunks arrive
        with lock:
            chunks = list(rec['chunks'])
            cmds = [c for c in rec['cmds'] if c[0] <= t_end]
            events = list(rec['events'])
            js = dict(rec['js'])
    finally:
        for p, name, _ in reversed(procs):
            kill_group(p, name)
        stop.set()
        spinner.join(timeout=2)
        node.destroy_node()
        rclpy.try_shutdown()

    # ---- latency
    lat = [(now - st) / 1e6 for now, st, *_ in chunks]
    sensor = [(js[st] - st) / 1e6 for now, st, *_ in chunks if st in js]
    rest = [(now - js[st]) / 1e6 for now, st, *_ in chunks if st in js]
    # How many newer observations had already reached this process when the chunk arrived (0-1 expected when
    # the node samples from the freshest observation and compute < one period; more = it acted on an old one).
    js_sorted = sorted((r, st) for st, r in js.items())
    js_recv = np.array([r for r, _ in js_sorted], np.int64)
    js_st = np.array([st for _, st in js_sorted], np.int64)
    newer = []
    for now, st, *_ in chunks:
        k = int(np.searchsorted(js_recv, now))
        newer.append(int(np.sum(js_st[:k] > st)))
    out['newer_obs_at_chunk'] = {'p50': pct(newer, 50), 'p99': pct(newer, 99), 'max': max(newer) if newer else 0,
                                 'hist': {str(v): newer.count(v) for v in sorted(set(newer))}}
    off = [(r - st) / 1e6 for st, r in js.items()]
    out['sim_stamp_offset_ms'] = {'p1': pct(off, 1), 'p50': pct(off, 50), 'p99': pct(off, 99)}
    out['chunks'] = len(chunks)
    out['latency_ms'] = {'p50': pct(lat, 50), 'p99': pct(lat, 99), 'max': max(lat) if lat else float('nan')}
    out['latency_split_ms'] = {'matched': len(sensor), 'sensor_to_here_p50': pct(sensor, 50),
                               'sensor_to_here_p99': pct(sensor, 99), 'in_policy_p50': pct(rest, 50),
                               'in_policy_p99': pct(rest, 99)}
    # ---- jitter: drop intervals with an episode event in between (resets, ends)
    ev_t = sorted(e[0] for e in events)
    period = 1.0 / RATE_HZ

    def intervals(times_recv, times_other):
        dts = []
        for i in range(1, len(times_recv)):
            a, b = times_recv[i - 1], times_recv[i]
            if any(a - 0.02 <= t <= b + 0.02 for t in ev_t):
                continue
            dts.append(times_other[i] - times_other[i - 1])
        return dts

    recv = [c[0] for c in cmds]
    dts = intervals(recv, recv)
    dts_send = intervals(recv, [c[1] / 1e9 for c in cmds])
    jit = [abs(d - period) * 1e3 for d in dts]
    jit_send = [abs(d - period) * 1e3 for d in dts_send]
    out['commands'] = len(cmds)
    out['intervals_used'] = len(dts)
    out['jitter_ms'] = {'p50': pct(jit, 50), 'p99': pct(jit, 99), 'max': max(jit) if jit else float('nan')}
    out['jitter_sender_stamp_ms'] = {'p50': pct(jit_send, 50), 'p99': pct(jit_send, 99)}
    out['late_intervals'] = {'over_1.5_periods': sum(d > 1.5 * period for d in dts),
                             'over_1.2_periods': sum(d > 1.2 * period for d in dts),
                             'largest_ms': sorted(round(d * 1e3, 1) for d in dts)[-5:]}
    out['rate_hz'] = {'from_median_dt': 1.0 / statistics.median(dts) if dts else float('nan'),
                      'from_mean_dt': 1.0 / statistics.mean(dts) if dts else float('nan'),
                      'commands_per_s_overall': len(cmds) / args.seconds}
    if args.dump_raw:
        out['raw'] = {'t0': t_start, 'cmd_recv': [c[0] - t_start for c in cmds],
                      'cmd_stamp_s': [c[1] / 1e9 for c in cmds], 'events': [(e[0] - t_start,) + e[1:] for e in events],
                      'chunk_recv_stamp_ns': [(c[0], c[1]) for c in chunks]}
    kinds = {0: 'START', 1: 'SUCCESS', 2: 'FAILURE', 3: 'ESTOP', 4: 'TIMEOUT', 5: 'RESET'}
    out['episode_events'] = {k: sum(1 for e in events if kinds.get(e[1]) == k) for k in kinds.values()}
    return out


# ----------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--modes', default='pixels,state')
    ap.add_argument('--seconds', type=float, default=30.0, help='recording time per run')
    ap.add_argument('--warmup', type=float, default=3.0, help='seconds after the first chunk before recording')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--task', default='pick_cube')
    ap.add_argument('--max-episode-steps', type=int, default=150)
    ap.add_argument('--threads', type=int, default=1, help='torch threads in the policy node (and the reference)')
    ap.add_argument('--feature-dim', type=int, default=64)
    ap.add_argument('--naive-reps', type=int, default=100)
    ap.add_argument('--startup-timeout', type=float, default=90.0)
    ap.add_argument('--domain-id', type=int, default=None)
    ap.add_argument('--sim-param', action='append', default=[], help='extra sim node parameter name:=value')
    ap.add_argument('--policy-param', action='append', default=[], help='extra policy node parameter name:=value')
    ap.add_argument('--skip-reference', action='store_true')
    ap.add_argument('--policy-exe', default=str(POLICY_EXE), help='policy node executable (default: the built workspace)')
    ap.add_argument('--dump-raw', action='store_true', help='keep raw arrival times in the JSON output')
    ap.add_argument('--sim-exe', default=str(SIM_EXE), help='sim node executable (default: the built workspace)')
    ap.add_argument('--json', default=None)
    ap.add_argument('--quick', action='store_true',
                    help='smoke run: small sizes, one repetition (what `make bench` runs)')
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(modes='state', seconds=3.0, warmup=1.0, repeats=1, naive_reps=5)
        args = ap.parse_args(argv)
    for exe in (Path(args.sim_exe), Path(args.policy_exe)):
        if not exe.exists():
            sys.exit(f'{exe} is missing: build the workspace first (bash scripts/setup.sh)')
    # SIGTERM -> SystemExit, so the `finally` that kills the children runs (they live in their own sessions)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Loopback only, one domain for this run (set before rclpy.init in run_once)
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    os.environ['ROS_DOMAIN_ID'] = str(pick_domain(args.domain_id))
    modes = [m.strip() for m in args.modes.split(',') if m.strip()]
    logdir = Path(tempfile.mkdtemp(prefix='bench_policy_node_'))
    res: dict = {'rate_hz': RATE_HZ, 'seconds': args.seconds, 'repeats': args.repeats, 'task': args.task,
                 'domain_id': int(os.environ['ROS_DOMAIN_ID']), 'logs': str(logdir), 'runs': {m: [] for m in modes}}
    for r in range(args.repeats):
        for mode in modes:
            print(f'[run {r + 1}/{args.repeats}] mode={mode} ...', flush=True)
            one = run_once(mode, args, logdir, f'_r{r + 1}')
            print(f"    latency p50 {one['latency_ms']['p50']:.1f} ms p99 {one['latency_ms']['p99']:.1f} ms; "
                  f"jitter p50 {one['jitter_ms']['p50']:.2f} ms p99 {one['jitter_ms']['p99']:.2f} ms; "
                  f"rate {one['rate_hz']['from_mean_dt']:.2f} Hz; chunks {one['chunks']}, "
                  f"events {one['episode_events']}", flush=True)
            res['runs'][mode].append(one)
            if not args.skip_reference:
                ref = compute_reference(mode, one['obs_dim'], args.threads, args.naive_reps, args.feature_dim)
                one['compute_reference'] = ref
                print(f"    in-process obs->chunk compute: ours p50 {ref['ours_p50_ms']:.2f} ms, naive p50 "
                      f"{ref['naive_p50_ms']:.2f} ms (x{ref['speedup_p50']:.2f})", flush=True)

    def med(mode, *path):
        vals = []
        for run in res['runs'][mode]:
            v = run
            for p in path:
                v = v[p]
            vals.append(v)
        return statistics.median(vals)

    summary = {}
    for mode in modes:
        s = {'latency_p50_ms': med(mode, 'latency_ms', 'p50'), 'latency_p99_ms': med(mode, 'latency_ms', 'p99'),
             'sensor_to_here_p50_ms': med(mode, 'latency_split_ms', 'sensor_to_here_p50'),
             'in_policy_p50_ms': med(mode, 'latency_split_ms', 'in_policy_p50'),
             'in_policy_p99_ms': med(mode, 'latency_split_ms', 'in_policy_p99'),
             'jitter_p50_ms': med(mode, 'jitter_ms', 'p50'), 'jitter_p99_ms': med(mode, 'jitter_ms', 'p99'),
             'jitter_sender_p50_ms': med(mode, 'jitter_sender_stamp_ms', 'p50'),
             'jitter_sender_p99_ms': med(mode, 'jitter_sender_stamp_ms', 'p99'),
             'rate_hz': med(mode, 'rate_hz', 'from_mean_dt'),
             'sim_stamp_offset_p50_ms': med(mode, 'sim_stamp_offset_ms', 'p50'),
             'late_intervals_over_1.5_periods': med(mode, 'late_intervals', 'over_1.5_periods'),
             'latency_p50_range_ms': [min(r['latency_ms']['p50'] for r in res['runs'][mode]),
                                      max(r['latency_ms']['p50'] for r in res['runs'][mode])],
             'in_policy_p50_range_ms': [min(r['latency_split_ms']['in_policy_p50'] for r in res['runs'][mode]),
                                        max(r['latency_split_ms']['in_policy_p50'] for r in res['runs'][mode])]}
        if not args.skip_reference:
            s.update({'compute_ours_p50_ms': med(mode, 'compute_reference', 'ours_p50_ms'),
                      'compute_naive_p50_ms': med(mode, 'compute_reference', 'naive_p50_ms'),
                      'compute_ours_p99_ms': med(mode, 'compute_reference', 'ours_p99_ms'),
                      'compute_naive_p99_ms': med(mode, 'compute_reference', 'naive_p99_ms')})
            s['compute_speedup_p50'] = s['compute_naive_p50_ms'] / s['compute_ours_p50_ms']
        summary[mode] = s
    res['summary'] = summary
    print(json.dumps(res, indent=1, default=str))
    print(f'policy node at {RATE_HZ:.0f} Hz, task {args.task}, medians over {args.repeats} runs of '
          f'{args.seconds:.0f} s (threads={args.threads})')
    for mode, s in summary.items():
        print(f"  {mode:6s} obs->chunk latency p50 {s['latency_p50_ms']:.1f} ms  p99 {s['latency_p99_ms']:.1f} ms "
              f"(runs' p50 range {s['latency_p50_range_ms'][0]:.0f}-{s['latency_p50_range_ms'][1]:.0f} ms)")
        print(f"         = sim stamp -> observation here p50 {s['sensor_to_here_p50_ms']:.1f} ms + observation here -> "
              f"chunk here p50 {s['in_policy_p50_ms']:.1f} / p99 {s['in_policy_p99_ms']:.1f} ms (runs' p50 range "
              f"{s['in_policy_p50_range_ms'][0]:.0f}-{s['in_policy_p50_range_ms'][1]:.0f} ms: wait for the next "
              f"tick depends on the sim/policy timer phase)")
        print(f"         jitter |dt-1/15| p50 {s['jitter_p50_ms']:.2f} ms  p99 {s['jitter_p99_ms']:.2f} ms at the "
              f"receiver (node timer: p50 {s['jitter_sender_p50_ms']:.2f}, p99 {s['jitter_sender_p99_ms']:.2f}); "
              f"rate {s['rate_hz']:.2f} Hz; intervals > 1.5 periods: {s['late_intervals_over_1.5_periods']:.0f}")
        if 'compute_speedup_p50' in s:
            print(f"         obs->chunk compute in-process: ours {s['compute_ours_p50_ms']:.2f} ms, naive "
                  f"{s['compute_naive_p50_ms']:.2f} ms (p50)  -> x{s['compute_speedup_p50']:.2f}")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1, default=str)
    return res


if __name__ == '__main__':
    main()
