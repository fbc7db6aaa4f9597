"""The sim graph's clock contract, in real processes over DDS: the sim node (sim_time + pacing, as the sim graph
runs it) and the policy node on sim time (POCO_USE_SIM_TIME, as the graph starts it), with this test standing in
for the learner on poco/learner_pace.

- learner keeping up: /clock runs faster than real time, the policy acts (joint commands stamped in sim time);
- learner behind (a stall): /clock stops, no command goes out, and the policy raises no staleness hold or
  watchdog (its clock stands still too);
- stall over: the clock and the commands go on;
- learner gone while saying "behind" (killed): after pace_timeout_s the sim stops waiting for it;
- policy gone (SIGSTOP): after pace_timeout_s the sim ticks on at real time; the policy back: lockstep again.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402

from poco_msgs.msg import LearnerPace, PolicyTick  # noqa: E402
from poco_policy.testing import NodeProc, executable as _exe, private_domain, ros_env  # noqa: E402

PACE_TIMEOUT_S = 2.0  # generous: a busy CI machine must not make the test's stand-in learner look dead
RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def _env(**extra) -> dict:
    env = ros_env(**extra)
    env.setdefault('ROS_DOMAIN_ID', str(private_domain()))
    return env


Proc = NodeProc   # (tmp, pkg, exe, name, params, env): poco_policy.testing


def tiny_actor(tmp: Path, obs_dim: int) -> str:
    """A small random actor as the policy node's initial weights (safetensors + JSON sidecar)."""
    import torch
    from poco_policy.flow_policy import FlowChunkPolicy, FlowPolicyConfig, weights_to_bytes
    torch.manual_seed(0)
    pol = FlowChunkPolicy(FlowPolicyConfig(obs_dim=obs_dim, horizon=5, hidden_dims=(32, 32), flow_steps=3))
    payload, meta = weights_to_bytes(pol)
    path = tmp / 'actor.safetensors'
    path.write_bytes(payload)
    (tmp / 'actor.json').write_text(json.dumps(meta))
    return str(path)


class Learner:
    """The test's node: a stand-in learner on poco/learner_pace, and eyes on /clock, commands and acks."""

    def __init__(self, context):
        self.node = rclpy.create_node('sim_time_test', context=context)
        self.ex = SingleThreadedExecutor(context=context)
        self.ex.add_node(self.node)
        n = self.node
        self.clock_ns, self.clocks, self.commands, self.acks = -1, 0, [], []
        n.create_subscription(Clock, '/clock', self._on_clock, RELIABLE)
        n.create_subscription(JointState, 'joint_commands',
                              lambda m: self.commands.append(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec),
                              RELIABLE)
        n.create_subscription(PolicyTick, 'poco/policy_tick', self.acks.append, RELIABLE)
        self.pace_pub = n.create_publisher(LearnerPace, 'poco/learner_pace', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST))
        self.behind: bool | None = None  # None: silent (no learner)
        n.create_timer(0.02, self._pace)

    def _on_clock(self, m: Clock):
        self.clock_ns = m.clock.sec * 10**9 + m.clock.nanosec
        self.clocks += 1

    def _pace(self):
        if self.behind is not None:
            self.pace_pub.publish(LearnerPace(behind=self.behind, utd_ratio=1.0, phase='poco'))

    def spin(self, seconds: float, procs=(), cond=None) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)
            if cond is not None and cond():
                return True
            for p in procs:
                assert p.alive(), f'{p.name} exited:\n{p.text()[-3000:]}'
        return cond is None

    def sim_seconds(self) -> float:
        return self.clock_ns * 1e-9


def test_sim_clock_waits_for_a_stalled_learner_without_policy_watchdog(tmp_path):
    env = _env()
    actor = tiny_actor(tmp_path, obs_dim=20 + 7)
    sim = Proc(tmp_path, 'poco_sim', 'sim_node', 'sim',
               dict(task='pick_cube', obs_mode='state', seed=1, sim_time=True, pacing=True,
                    pace_timeout_s=PACE_TIMEOUT_S, learner_stall_warn_s=1.5), env)
    policy = Proc(tmp_path, 'poco_policy', 'policy_node', 'policy',
                  dict(obs_mode='state', initial_weights=actor, max_episode_steps=40, eval_every=0,
                       staleness_s=0.5), dict(env, POCO_USE_SIM_TIME='1'))
    procs = [sim, policy]
    os.environ['ROS_DOMAIN_ID'] = env['ROS_DOMAIN_ID']
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    context = rclpy.Context()
    rclpy.init(context=context)
    t = None
    try:
        t = Learner(context)
        t.behind = False
        # 1) lockstep with a learner that keeps up: faster than real time, the policy acts on sim time.
        assert t.spin(40, procs, lambda: len(t.commands) > 30 and len(t.acks) > 30), \
            f'no lockstep:\n{sim.text()[-2000:]}\n{policy.text()[-2000:]}'
        assert 'on sim time' in policy.text() and 'pacing' in sim.text()
        c0, w0 = t.sim_seconds(), time.monotonic()
        t.spin(2.0, procs)
        speed = (t.sim_seconds() - c0) / (time.monotonic() - w0)
        print(f'paced sim, learner keeping up: {speed:.1f} sim s per wall s = {15 * speed:.0f} env steps/s')
        # faster than real time (state mode): x2-4 on an idle 2-core machine, x1.3 measured at load ~10
        assert speed > 1.1, f'lockstep should run faster than real time on state mode, got x{speed:.2f}'
        assert max(t.commands) <= t.clock_ns and t.commands[-1] > 10**9, 'commands are stamped in sim time'
        assert any(a.command_sent for a in t.acks) and any(a.phase == 'running' for a in t.acks)

        # 2) the learner stalls: the clock stops (a tick already granted may still land), no commands go out.
        t.behind = True
        t.spin(0.5, procs)
        clock_stalled, n_cmd, n_ack = t.clock_ns, len(t.commands), len(t.acks)
        t.spin(3.0, procs)
        assert t.clock_ns == clock_stalled, 'the sim advanced while the learner was behind'
        assert len(t.commands) == n_cmd and len(t.acks) == n_ack, 'the policy ticked while the clock stood still'
        # the stand-in reports no new update while behind (a hung training thread): the sim says so
        assert 'says behind but reports no new update' in sim.text(), sim.text()[-2000:]

        # 3) the stall ends: clock and commands go on.
        t.behind = False
        assert t.spin(10, procs, lambda: t.clock_ns > clock_stalled + 10**9 and len(t.commands) > n_cmd + 10), \
            'the run did not continue after the stall'

        # 4) the learner dies while behind: after pace_timeout_s the sim stops waiting for it.
        t.behind = True
        t.spin(0.5, procs)
        t.behind = None  # silent from now on
        stalled = t.clock_ns
        t.spin(PACE_TIMEOUT_S * 0.5, procs)
        assert t.clock_ns - stalled < 0.2e9, 'the sim did not wait for a learner that was behind'
        assert t.spin(PACE_TIMEOUT_S + 5, procs, lambda: t.clock_ns > stalled + 10**9), \
            'the sim kept waiting for a dead learner'
        assert 'learner silent' in sim.text()

        # The stalls happened in wall time only: the policy (on sim time) saw no stale input and held nothing.
        log = policy.text()
        assert 'watchdog' not in log and 'stale' not in log, log[-3000:]

        # 5) the policy stops (SIGSTOP): the sim ticks on at real time; the policy back: lockstep again.
        policy.signal(signal.SIGSTOP)
        t.spin(PACE_TIMEOUT_S + 0.5, procs)
        c1, w1 = t.sim_seconds(), time.monotonic()
        t.spin(2.0, procs)
        rate = (t.sim_seconds() - c1) / (time.monotonic() - w1)
        assert 0.5 < rate < 1.5, f'without a policy the sim should run at real time, ran x{rate:.2f}'
        policy.signal(signal.SIGCONT)
        n_ack = len(t.acks)
        assert t.spin(10, procs, lambda: len(t.acks) > n_ack + 30), 'lockstep did not resume with the policy'

        log = policy.text()
        assert 'Traceback' not in log and 'tick failed' not in log, log[-3000:]
        assert sim.alive() and policy.alive()
    finally:
        if t is not None:
            t.node.destroy_node()
        rclpy.shutdown(context=context)
        for p in procs:
            p.stop()
        for p in procs:
            print(f'----- {p.name} log (tail) -----\n{p.text()[-1500:]}')


def test_graphs_clock_and_learner_settings():
    """The sim graph runs on the sim's clock (sim paced, every other node on use_sim_time); the real graph
    stays on the wall clock; in neither does the learner's exit stop the graph (the robot survives it)."""
    from poco_bringup import graph
    from poco_policy.runtime import SIM_TIME_ENV
    sim = {s.name: s for s in graph.sim_graph(rviz=True)}
    eff = sim['sim'].effective_parameters()
    assert eff['sim_time'] is True and eff['pacing'] is True and eff['pace_timeout_s'] > 0
    assert SIM_TIME_ENV not in sim['sim'].env
    for name in ('policy', 'learner', 'monitor'):
        assert sim[name].env.get(SIM_TIME_ENV) == '1', name
    assert 'use_sim_time:=true' in sim['rviz2'].arguments
    assert graph.sim_graph(overrides=['sim.pacing=false'])[0].effective_parameters()['pacing'] is False
    real = {s.name: s for s in graph.real_graph()}
    assert all(SIM_TIME_ENV not in s.env for s in real.values())
    assert not sim['learner'].required and not real['learner'].required
    assert sim['sim'].required and sim['policy'].required and real['policy'].required


def test_monitor_rows_carry_sim_time_wall_time_and_updates_per_env_step(tmp_path):
    from poco_bringup.progress import START, SUCCESS, EpisodeTracker, LearnerLog
    tr = EpisodeTracker(tmp_path / 'episodes.csv', t0=100.0)
    tr.on_event(1, START, 0, False, wall_time=101.0, stamp_s=10.0)
    row = tr.on_event(1, SUCCESS, 30, False, wall_time=103.5, stamp_s=12.0)
    assert (row['sim_time_s'], row['episode_wall_s'], row['env_steps']) == (12.0, 2.5, 30)
    assert '(sim 2 s / wall' in tr.progress() and 'env steps 30' in tr.progress()
    log = LearnerLog(tmp_path / 'learner.csv', t0=0.0)
    log.on_status({'phase': 'poco', 'algorithm': 'poco', 'update_step': 5, 'weights_version': 1,
                   'buffer_steps': 3, 'demo_steps': 1, 'updates_per_env_step': 0.5, 'utd_ratio': 1.0,
                   'dropped_messages': 2}, wall_time=1.0)
    line = log.progress()
    assert '0.50 upd/env step (target 1)' in line and 'learner dropped 2 msgs' in line, line
    header = (tmp_path / 'learner.csv').read_text().splitlines()[0].split(',')
    assert {'updates_per_env_step', 'utd_ratio', 'dropped_messages'} <= set(header)


def test_real_learner_asks_the_sim_to_wait_while_it_pre_trains(tmp_path):
    """The learner node's side of the contract: poco/learner_pace says behind during pre-training (so a paced
    sim does not run ahead of it), on the steady clock, and LearnerStatus carries the target ratio."""
    from poco_msgs.msg import LearnerStatus
    env = _env()
    demos = tmp_path / 'demos'
    r = subprocess.run([_exe('poco_sim', 'collect_demos'), '--task', 'pick_cube', '--obs-mode', 'state',
                        '--episodes', '2', '--out', str(demos), '--seed', '3'], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    learner = Proc(tmp_path, 'poco_learner', 'learner_node', 'learner',
                   dict(run_dir=str(tmp_path / 'run'), demo_dataset=str(demos), obs_mode='state',
                        status_rate_hz=5.0), dict(env, POCO_USE_SIM_TIME='1'))
    os.environ['ROS_DOMAIN_ID'] = env['ROS_DOMAIN_ID']
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('pace_test', context=context)
    ex = SingleThreadedExecutor(context=context)
    ex.add_node(node)
    paces, status = [], []
    node.create_subscription(LearnerPace, 'poco/learner_pace', paces.append, QoSProfile(
        depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST))
    node.create_subscription(LearnerStatus, 'poco/learner_status', status.append, RELIABLE)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and not (any(p.phase == 'pretrain' for p in paces) and status):
            ex.spin_once(timeout_sec=0.05)
            assert learner.alive(), learner.text()[-3000:]
        pre = [p for p in paces if p.phase == 'pretrain']
        assert pre and all(p.behind for p in pre), f'no pretrain pace: {paces[-3:]}\n{learner.text()[-2000:]}'
        n = len(paces)
        t0 = time.monotonic()
        while time.monotonic() < t0 + 1.0:  # no /clock at all here: the pace still flows (steady clock)
            ex.spin_once(timeout_sec=0.05)
        assert len(paces) - n >= 20, f'{len(paces) - n} pace messages in 1 s'
        assert status[-1].utd_ratio == pytest.approx(paces[-1].utd_ratio) and status[-1].utd_ratio > 0
        assert 'on sim time' in learner.text()
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
        learner.stop()
