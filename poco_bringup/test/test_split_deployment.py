"""Learner on another host (issue 14 item 5): the robot group and the learner group as separate process groups.

`run sim --part robot` (the sim standing in for the drivers and cameras, the policy node) and `run sim --part
learner` (the learner alone) are two runners, two process groups, one ROS domain, loopback only: what a robot PC
and a GPU server run. The test SIGKILLs the whole learner group (the learner node first, then its runner: a host
that goes away, nothing shuts down cleanly), checks that the robot keeps acting on its last good weights while it
is gone (joint commands keep coming, the policy's weights version does not change), starts the learner group
again on the same run folder, and checks that it resumes from its checkpoint and buffer and that the robot takes
the next weights version.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from sensor_msgs.msg import JointState

from _bringup_helpers import PYTHON, REPO, Procs, make_tmp, private_domain, ros_env
from poco_msgs.msg import LearnerStatus
from poco_policy import contract as C
from poco_policy.testing import executable

SMALL_LEARNER = ['learner.agent.actor_hidden_dims=[64,64]', 'learner.agent.critic_hidden_dims=[64,64]',
                 'learner.agent.batch_size=32', 'learner.agent.num_candidates=4', 'learner.agent.flow_steps=4',
                 'learner.agent.pretrain_steps=100', 'learner.agent.critic_warmup_steps=30',
                 'learner.torch_threads=1', 'learner.status_rate_hz=4.0', 'learner.publish_every=40',
                 'learner.checkpoint_every_s=3.0']


class Watcher(Node):
    """Stands beside both groups: the robot's commands, the policy's diagnostics, the learner's status."""

    def __init__(self):
        super().__init__('split_watcher')
        self.commands: list[float] = []                 # wall times of joint_commands
        # (wall, the newest weights version the policy accepted: what it acts with from its next training chunk;
        # evaluation episodes may hold an older one, so this is the version of its "last good weights")
        self.policy_versions: list[tuple[float, int]] = []
        self.status: list[tuple[float, LearnerStatus]] = []
        self.create_subscription(JointState, C.JOINT_COMMANDS, lambda m: self.commands.append(time.monotonic()),
                                 C.qos(C.JOINT_COMMANDS))
        self.create_subscription(LearnerStatus, C.LEARNER_STATUS, lambda m: self.status.append((time.monotonic(), m)),
                                 C.qos(C.LEARNER_STATUS))
        self.create_subscription(DiagnosticArray, C.DIAGNOSTICS, self._on_diag, C.qos(C.DIAGNOSTICS))

    def _on_diag(self, msg):
        for st in msg.status:
            if st.name == '/policy':
                kv = {k.key: k.value for k in st.values}
                if kv.get('weights_checked_version', '').isdigit():
                    self.policy_versions.append((time.monotonic(), int(kv['weights_checked_version'])))

    def version(self) -> int:
        return self.policy_versions[-1][1] if self.policy_versions else -1

    def spin_for(self, seconds: float):
        self.spin_until(lambda: False, seconds)

    def spin_until(self, cond, timeout: float, alive=lambda: True) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            rclpy.spin_once(self, timeout_sec=0.05)
            if cond():
                return True
            assert alive(), 'a process group exited'
        return False


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
    return make_tmp(tmp_path_factory, 'split')


@pytest.fixture(scope='module')
def demos(tmp):
    out = tmp / 'demos'
    exe = executable('poco_sim', 'collect_demos')
    r = subprocess.run([str(exe), '--task', 'pick_cube', '--obs-mode', 'state', '--episodes', '3', '--out', str(out),
                        '--seed', '3'], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def _group(part: str, run, domain: int, demos) -> list[str]:
    cmd = [PYTHON, '-m', 'poco_bringup.runner', 'sim', '--part', part, '--obs-mode', 'state', '--run-dir', str(run),
           '--domain-id', str(domain), '--duration', '600', '--seed', '1', '--no-monitor']
    if part == 'learner':
        cmd += ['--demo-dataset', str(demos)]
    for s in SMALL_LEARNER:
        cmd += ['--set', s]
    return cmd


def _learner_pid(run_log) -> int:
    return int(re.findall(r'started learner \(pid (\d+)', run_log.read_text())[-1])


def test_learner_host_goes_away_and_comes_back(tmp, demos):
    domain, lock = private_domain()
    robot_run, learner_run = tmp / 'robot-pc', tmp / 'gpu-server'
    procs = Procs()
    env = ros_env(domain)
    outs = {k: open(tmp / f'{k}.out', 'a') for k in ('robot', 'learner')}

    def start(part):
        return procs.start(_group(part, robot_run if part == 'robot' else learner_run, domain, demos), env=env,
                           stdout=outs[part], stderr=subprocess.STDOUT, cwd=tmp)

    def tail(part, n=3000):
        if not outs[part].closed:
            outs[part].flush()
        return (tmp / f'{part}.out').read_text()[-n:]

    robot = start('robot')
    learner = start('learner')
    os.environ['ROS_DOMAIN_ID'], os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = str(domain), 'LOCALHOST'
    rclpy.init()
    w = Watcher()
    robot_alive = lambda: robot.poll() is None  # noqa: E731
    try:
        # 1. both groups up: the learner online, the robot acting on its weights, a checkpoint behind us
        assert w.spin_until(lambda: w.status and w.status[-1][1].phase in ('warmup', 'poco')
                            and w.status[-1][1].online_steps > 50 and w.version() >= 1, 300,
                            lambda: robot_alive() and learner.poll() is None), tail('learner') + tail('robot')
        assert w.spin_until(lambda: (learner_run / 'checkpoints' / 'latest.json').exists(), 30, robot_alive)
        w.spin_for(4.0)
        before = w.status[-1][1]

        # 2. the learner host goes away: SIGKILL its learner, then its runner (nothing stops cleanly)
        os.kill(_learner_pid(learner_run / 'logs' / 'run.log'), signal.SIGKILL)
        os.killpg(learner.pid, signal.SIGKILL)
        learner.wait(10)
        t_kill = time.monotonic()
        w.spin_for(1.0)  # messages already in flight
        v_kill = w.version()
        published = [int(v) for v in re.findall(r'published weights v(\d+)',
                                                (learner_run / 'logs' / 'learner.log').read_text())]
        n0 = len(w.commands)
        w.spin_for(10.0)
        t_end = time.monotonic()
        down = [t for t in w.commands[n0:]]
        gaps = [b - a for a, b in zip([t_kill + 1.0] + down, down + [t_end])]
        versions_down = {v for t, v in w.policy_versions if t > t_kill + 1.0}
        print(f'\nlearner group killed: robot sent {len(down)} joint commands in {t_end - t_kill - 1.0:.1f} s '
              f'({len(down) / (t_end - t_kill - 1.0):.1f} Hz), longest gap {max(gaps):.2f} s; policy weights '
              f'v{v_kill} throughout ({sorted(versions_down)}); learner had published up to v{max(published)}')
        assert robot_alive(), tail('robot')
        assert len(down) >= 50 and max(gaps) < 3.0, (len(down), max(gaps))   # the robot keeps acting
        assert versions_down == {v_kill} and v_kill == max(published)        # on its last good weights

        # 3. the learner host comes back: same command, same run folder
        log_len = (learner_run / 'logs' / 'learner.log').stat().st_size
        t_restart = time.monotonic()
        learner = start('learner')
        assert w.spin_until(lambda: w.version() > v_kill, 300,
                            lambda: robot_alive() and learner.poll() is None), tail('learner')
        # the weights can come before the restarted learner's first status (1 Hz): wait for that status too
        assert w.spin_until(lambda: any(t > t_restart for t, _ in w.status), 30,
                            lambda: robot_alive() and learner.poll() is None), tail('learner')
        after = next(s for t, s in w.status if t > t_restart)
        new_log = (learner_run / 'logs' / 'learner.log').read_bytes()[log_len:].decode(errors='replace')
        print(f'learner back after {time.monotonic() - t_restart:.1f} s: buffer {before.buffer_steps} -> '
              f'{after.buffer_steps} steps, phase {after.phase}; the robot now acts with v{w.version()}')
        assert 'resumed buffer' in new_log and 'resumed checkpoint' in new_log, new_log[-3000:]
        assert re.search(r'resumed at update \d+ \(checkpoint\)', new_log), new_log[-3000:]
        # stored steps survive; the episode open at the kill may be dropped on reload (its end never comes), so
        # allow at most one episode's steps (H = 100 here) below the count before the kill
        assert after.buffer_steps >= before.buffer_steps - 100 and after.demo_steps == before.demo_steps
        assert after.phase in ('warmup', 'poco'), after.phase      # no second pre-training
        # the restarted learner's first version is the next one, nothing skipped or repeated (the robot's 1 Hz
        # diagnostics may already show a later one: on an idle machine several versions go out per second)
        pubs = [int(v) for v in re.findall(r'published weights v(\d+)', new_log)]
        assert pubs and pubs[0] == v_kill + 1, (v_kill, pubs[:5], w.version())
        # and the robot group never noticed beyond its pace: nothing crashed, it is still running
        assert robot_alive(), tail('robot')
    finally:
        w.destroy_node()
        rclpy.shutdown()
        for p in (robot, learner):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    pass
        procs.cleanup()
        for f in outs.values():
            f.close()
        if lock is not None:
            lock.close()
    assert robot.returncode == 0, tail('robot')
