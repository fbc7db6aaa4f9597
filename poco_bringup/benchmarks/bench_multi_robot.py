#!/usr/bin/env python3
"""Env steps per wall second: K simulated robots feeding one learner vs one robot (issue 14, item 4).

Starts the real sim graph through the runner (`run sim --robots K`, real processes, real DDS on loopback, a
private ROS domain), waits until the learner is online (warm-up or POCO) and every robot's transitions arrive,
then counts, over a window of wall time, the transitions the learner received per robot (its /diagnostics,
`<robot>/transitions`). Prints one line per configuration and the ratio K robots / 1 robot.

Two regimes (`--cap`):
  * a rate cap per sim (`sim.max_real_time_factor`, default 2 = 30 env steps/s per robot): each robot is
    rate-limited like a real arm at its control rate, so the figure shows whether the one learner takes K robots'
    data without slowing them (expected ratio ~K while the CPU has room for K robots' sim + policy);
  * `--cap 0`: every sim as fast as its policy acknowledges, so the robots compete for the CPU cores (on a loaded
    2-core machine the ratio says more about free cores than about the graph).
The learner's update-to-data ratio is low by default (`--utd 0.1`) so that the learner is not the limit: in the
sim graph the sims wait for the learner's pace, so with a learner at U updates/s and ratio r, K robots together
never exceed U / r env steps/s whatever K is (the benchmark prints the learner's updates/s beside the rates).

    python poco_bringup/benchmarks/bench_multi_robot.py [--robots 2] [--window 20] [--cap 2] [--utd 0.1] [--quick]

The test poco_bringup/test/test_multi_robot.py uses `run_graph()` from here.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SMALL_LEARNER = ['learner.agent.actor_hidden_dims=[64,64]', 'learner.agent.critic_hidden_dims=[64,64]',
                 'learner.agent.batch_size=32', 'learner.agent.num_candidates=4', 'learner.agent.flow_steps=4',
                 'learner.agent.pretrain_steps=100', 'learner.agent.critic_warmup_steps=30',
                 'learner.torch_threads=1', 'learner.status_rate_hz=4.0']


def collect_demos(out: Path, episodes: int = 3) -> Path:
    if not (out / 'meta.json').exists():
        from poco_policy.testing import executable
        exe = executable('poco_sim', 'collect_demos')
        r = subprocess.run([str(exe), '--task', 'pick_cube', '--obs-mode', 'state', '--episodes', str(episodes),
                            '--out', str(out), '--seed', '3'], capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            raise RuntimeError(r.stdout + r.stderr)
    return out


class _DiagWatcher:
    """The learner's /diagnostics (1 Hz), as (wall monotonic, {key: value}) pairs."""

    def __init__(self, node_name: str = 'bench_multi_robot'):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from poco_policy import contract as C
        self.rclpy = rclpy
        rclpy.init()
        self.node = rclpy.create_node(node_name)
        self.rows: list[tuple[float, dict]] = []
        self.node.create_subscription(DiagnosticArray, C.DIAGNOSTICS, self._on, C.qos(C.DIAGNOSTICS))

    def _on(self, msg):
        for st in msg.status:
            if st.name.rstrip('/').endswith('/learner') or st.name == '/learner':
                self.rows.append((time.monotonic(), {kv.key: kv.value for kv in st.values}))

    def spin_until(self, cond, timeout: float, alive) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.rclpy.spin_once(self.node, timeout_sec=0.1)
            if cond():
                return True
            if not alive():
                raise RuntimeError('the runner exited')
        return False

    def close(self):
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def _num(v, default=0.0) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def robot_keys(robots: int) -> list[str]:
    return ['.'] if robots == 1 else [f'robot{i}' for i in range(robots)]


def run_graph(robots: int, tmp: Path, demos: Path, *, window_s: float = 20.0, cap: float = 2.0, utd: float = 0.1,
              publish_every: int = 50, extra_sets=(), settle_s: float = 3.0, startup_timeout_s: float = 300.0,
              tail_s: float = 0.0) -> dict:
    """Run `run sim --robots <robots>` (state mode, small learner) until the learner has been online with every
    robot feeding it for `window_s` (+ `tail_s`), then stop it. Returns rates per robot [env steps / wall s], the
    learner's updates/s, the run dir, the diagnostics rows and the runner's output file."""
    sys.path.insert(0, str(REPO / 'poco_bringup'))
    from poco_bringup import runner
    domain, _, lock = runner.choose_domain_id(None, {})
    run = tmp / f'run-{robots}r-{time.time_ns()}'
    out_path = tmp / f'{run.name}.out'
    cmd = [sys.executable, '-m', 'poco_bringup.runner', 'sim', '--robots', str(robots), '--obs-mode', 'state',
           '--run-dir', str(run), '--demo-dataset', str(demos), '--duration', str(int(startup_timeout_s + 120)),
           '--domain-id', str(domain), '--no-monitor', '--seed', '1']
    for s in SMALL_LEARNER + [f'learner.utd_ratio={utd}', f'learner.publish_every={publish_every}',
                              f'sim.max_real_time_factor={float(cap)}', *extra_sets]:
        cmd += ['--set', s]
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain),
               PYTHONUNBUFFERED='1')
    env.pop('ROS_STATIC_PEERS', None)
    old = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ['ROS_DOMAIN_ID'], os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = str(domain), 'LOCALHOST'
    out = open(out_path, 'w')
    proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp, start_new_session=True)
    keys = robot_keys(robots)
    w = _DiagWatcher()
    alive = lambda: proc.poll() is None  # noqa: E731
    try:
        def online():
            if not w.rows:
                return False
            v = w.rows[-1][1]
            return v.get('phase') in ('warmup', 'poco') and all(_num(v.get(f'{k}/transitions')) > 0 for k in keys)
        if not w.spin_until(online, startup_timeout_s, alive):
            raise RuntimeError(f'learner not online with {robots} robot(s) in {startup_timeout_s:.0f} s: '
                               + out_path.read_text()[-3000:])
        w.spin_until(lambda: False, settle_s, alive)
        i0 = len(w.rows) - 1
        w.spin_until(lambda: False, window_s, alive)
        i1 = len(w.rows) - 1
        w.spin_until(lambda: False, tail_s, alive)
    finally:
        w.close()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        stopped_at = time.time()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        out.close()
        if lock is not None:
            lock.close()
    (t0, a), (t1, b) = w.rows[i0], w.rows[i1]
    dt = t1 - t0
    rates = {k: (_num(b.get(f'{k}/transitions')) - _num(a.get(f'{k}/transitions'))) / dt for k in keys}
    ups = (_num(b.get('updates')) - _num(a.get('updates'))) / dt
    return {'robots': robots, 'rates': rates, 'total': sum(rates.values()), 'window_s': dt,
            'updates_per_s': ups, 'run_dir': run, 'rows': w.rows, 'out': out_path, 'rc': proc.returncode,
            'cap': cap, 'utd': utd, 'stopped_at': stopped_at}


def published_versions(run: Path) -> list[tuple[int, float]]:
    """(version, unix time) of every 'published weights vN' line of the learner's log."""
    out = []
    for line in (run / 'logs' / 'learner.log').read_text(errors='replace').splitlines():
        m = re.search(r'\[(\d+\.\d+)\] \[learner\]: published weights v(\d+)', line)
        if m:
            out.append((int(m.group(2)), float(m.group(1))))
    return out


def received_versions(run: Path, label: str) -> set[int]:
    """Versions a policy node accepted ('received weights vN' in its log)."""
    text = (run / 'logs' / f'{label}.log').read_text(errors='replace')
    return {int(v) for v in re.findall(r'received weights v(\d+)', text)}


def describe(r: dict) -> str:
    per = ', '.join(f'{k} {v:.1f}' for k, v in r['rates'].items())
    return (f"{r['robots']} robot(s): {r['total']:.1f} env steps/s ({per}) over {r['window_s']:.0f} s; "
            f"learner {r['updates_per_s']:.1f} updates/s (utd {r['utd']:g}); sim cap "
            f"{'x' + format(r['cap'], 'g') + ' real time' if r['cap'] else 'none'}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--robots', type=int, default=2)
    ap.add_argument('--window', type=float, default=20.0, help='measurement window [wall s]')
    ap.add_argument('--cap', type=float, default=2.0, help='sim.max_real_time_factor per robot (0 = none)')
    ap.add_argument('--utd', type=float, default=0.1, help='learner.utd_ratio')
    ap.add_argument('--tmp', default='', help='work folder (default: a new temp folder)')
    ap.add_argument('--quick', action='store_true', help='a 5 s window (make bench): the figures are rough')
    a = ap.parse_args(argv)
    if a.quick:
        a.window = min(a.window, 5.0)
    tmp = Path(a.tmp or tempfile.mkdtemp(prefix='bench_multi_robot-'))
    tmp.mkdir(parents=True, exist_ok=True)
    demos = collect_demos(tmp / 'demos')
    print(f'CPU cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}; work folder {tmp}', flush=True)
    one = run_graph(1, tmp, demos, window_s=a.window, cap=a.cap, utd=a.utd)
    print(describe(one), flush=True)
    many = run_graph(a.robots, tmp, demos, window_s=a.window, cap=a.cap, utd=a.utd)
    print(describe(many), flush=True)
    ratio = many['total'] / one['total'] if one['total'] > 0 else float('nan')
    print(f'ratio {a.robots} robots / 1 robot: {ratio:.2f}x  (load average now {os.getloadavg()[0]:.1f})')
    print(json.dumps({'robots': a.robots, 'cap': a.cap, 'utd': a.utd, 'one': one['total'], 'many': many['total'],
                      'per_robot': many['rates'], 'ratio': round(ratio, 3)}))
    return 0


if __name__ == '__main__':
    sys.exit(main())
