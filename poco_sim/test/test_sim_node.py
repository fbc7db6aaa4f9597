"""Integration: the sim node as its own OS process, driven over ROS from this test process.

Receives images / joint states, moves the arm with joint targets, drives the scripted expert over ROS until
the node publishes poco/success, checks the e-stop latch and the poco/reset service.
"""
import contextlib
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,  # noqa: E402
                       qos_profile_sensor_data)
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Bool, Float32MultiArray  # noqa: E402

from poco_msgs.srv import Reset  # noqa: E402
from poco_sim.envs import make_env  # noqa: E402
from poco_sim.expert import ScriptedExpert  # noqa: E402

IMAGE_SIZE = 48
RTF = 2.0  # 30 ticks per wall second
NAMESPACE = '/robot1'  # topics are relative: both sides in one namespace must meet


def _ros_env():
    env = os.environ.copy()
    # Loopback-only discovery, and a private domain when the caller (scripts/test.sh) did not pick one.
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(120, 200)))
    return env


class Probe:
    """Test-side node: subscribes to everything the sim publishes, publishes commands / e-stop."""

    def __init__(self, context):
        self.node = rclpy.create_node('sim_node_test_probe', namespace=NAMESPACE, context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        n = self.node
        self.js = None
        self.js_count = 0
        self.state = None
        self.state_count = 0
        self.images = {}
        self.successes = 0
        n.create_subscription(JointState, 'joint_states', self._on_js, qos_profile_sensor_data)
        n.create_subscription(Float32MultiArray, 'sim/state', self._on_state, qos_profile_sensor_data)
        for cam in ('front', 'wrist'):
            n.create_subscription(Image, f'cameras/{cam}/image_raw', lambda m, c=cam: self.images.__setitem__(c, m),
                                  qos_profile_sensor_data)
        n.create_subscription(Bool, 'poco/success', self._on_success,
                              QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.cmd_pub = n.create_publisher(JointState, 'joint_commands', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST))
        self.estop_pub = n.create_publisher(Bool, 'poco/estop', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.reset_client = n.create_client(Reset, 'poco/reset')

    def _on_js(self, m):
        self.js = m
        self.js_count += 1

    def _on_state(self, m):
        self.state = np.asarray(m.data, dtype=np.float32)
        self.state_count += 1

    def _on_success(self, m):
        self.successes += bool(m.data)

    def spin_until(self, cond, timeout, proc=None):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if cond():
                return True
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f'sim node exited with {proc.returncode}')
            self.executor.spin_once(timeout_sec=0.02)
        return cond()

    def spin_for(self, seconds):
        self.spin_until(lambda: False, seconds)

    def q(self):
        return np.array(self.js.position[:6])

    def command(self, q, grip):
        msg = JointState()
        msg.name = [f'joint{i}' for i in range(1, 7)] + ['gripper']
        msg.position = [float(v) for v in q] + [float(grip)]
        self.cmd_pub.publish(msg)

    def reset(self, seed, proc):
        req = Reset.Request()
        req.seed = seed
        fut = self.reset_client.call_async(req)
        assert self.spin_until(fut.done, 10.0, proc), 'poco/reset did not answer'
        return fut.result()


@contextlib.contextmanager
def sim_node(tmp_path, *params):
    """The sim node as its own process in NAMESPACE with `-p` params; its log is printed afterwards (pytest shows
    it on failure)."""
    log = open(tmp_path / 'sim_node.log', 'w')
    cmd = [sys.executable, '-m', 'poco_sim.sim_node', '--ros-args', '-r', f'__ns:={NAMESPACE}',
           '-p', f'real_time_factor:={RTF}']
    for p in params:
        cmd += ['-p', p]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_ros_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()
        print((tmp_path / 'sim_node.log').read_text())


@contextlib.contextmanager
def probe_in_own_context():
    """A Probe in a fresh rclpy context on this process's loopback domain; torn down afterwards."""
    env_vars = _ros_env()
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = env_vars['ROS_AUTOMATIC_DISCOVERY_RANGE']
    os.environ['ROS_DOMAIN_ID'] = env_vars['ROS_DOMAIN_ID']
    context = rclpy.Context()
    rclpy.init(context=context)
    probe = None
    try:
        probe = Probe(context)
        yield probe
    finally:
        if probe is not None:
            probe.node.destroy_node()
        context.try_shutdown()


def test_sim_node_end_to_end(tmp_path):
    with sim_node(tmp_path, 'task:=pick_cube', 'obs_mode:=pixels', f'image_size:={IMAGE_SIZE}', 'seed:=3') as proc, \
            probe_in_own_context() as probe:
        node = probe.node
        # Discovery: the sim publishes joint states and listens to our commands / e-stop; the service is up.
        assert probe.spin_until(lambda: node.count_publishers('joint_states') >= 1
                                and probe.cmd_pub.get_subscription_count() >= 1
                                and probe.estop_pub.get_subscription_count() >= 1
                                and probe.reset_client.service_is_ready(), 30.0, proc), 'sim node not discovered'
        probe.estop_pub.publish(Bool(data=False))

        # 1) Images and joint states arrive, in the documented format.
        assert probe.spin_until(lambda: probe.js is not None and probe.state is not None
                                and len(probe.images) == 2, 15.0, proc), 'no joint states / images received'
        js = probe.js
        assert list(js.name) == [f'joint{i}' for i in range(1, 7)] + ['gripper']
        assert len(js.position) == 7 and 0.99 <= js.position[6] <= 1.0  # gripper open at the start
        for cam, img in probe.images.items():
            assert img.encoding == 'rgb8' and img.height == img.width == IMAGE_SIZE
            assert img.step == 3 * IMAGE_SIZE and len(img.data) == IMAGE_SIZE * IMAGE_SIZE * 3
            arr = np.frombuffer(bytes(img.data), np.uint8)
            assert arr.std() > 5, f'{cam} image is blank'
        t_a = js.header.stamp.sec + js.header.stamp.nanosec * 1e-9
        n0 = probe.js_count
        probe.spin_for(1.0)
        t_b = probe.js.header.stamp.sec + probe.js.header.stamp.nanosec * 1e-9
        ticks = probe.js_count - n0
        assert ticks >= 10, f'only {ticks} joint states in 1 s at real_time_factor {RTF}'
        assert t_b > t_a, 'stamps must advance with the sim ticks'

        # 2) Joint targets move the arm towards them.
        q0 = probe.q()
        target = q0 + np.array([0.3, -0.15, 0.2, 0.0, 0.0, 0.25])
        probe.command(target, 1.0)
        probe.spin_for(1.5)
        q1 = probe.q()
        assert np.linalg.norm(q1 - target) < 0.1 * np.linalg.norm(target - q0), (q0, q1, target)

        # 3) Malformed commands are rejected without crashing: the arm stays, the node keeps publishing.
        bad = JointState()
        bad.position = [0.0, 1.0]
        probe.cmd_pub.publish(bad)
        bad2 = JointState()
        bad2.name = ['joint1']
        bad2.position = [float('nan')]
        probe.cmd_pub.publish(bad2)
        n1 = probe.js_count
        probe.spin_for(0.5)
        assert proc.poll() is None and probe.js_count > n1
        assert np.linalg.norm(probe.q() - target) < 0.05

        # 4) Reset with a seed: new episode id, arm back near home.
        state_before = probe.state.copy()
        resp = probe.reset(5, proc)
        assert resp.success and resp.episode_id == 1
        probe.spin_for(0.3)
        assert np.linalg.norm(probe.q() - q0) < 0.1, 'reset must return the arm to its start pose'
        assert not np.allclose(probe.state[:3], state_before[:3]), 'a new seed must move the cube'

        # 5) Drive the scripted expert over ROS (its kinematics from a local model) until poco/success.
        local = make_env('pick_cube', 'state', seed=0)
        expert = ScriptedExpert(local)
        last = probe.state_count
        deadline = time.monotonic() + 30.0
        while probe.successes == 0 and time.monotonic() < deadline:
            probe.spin_until(lambda: probe.state_count > last, 1.0, proc)
            if probe.state_count == last:
                continue
            last = probe.state_count
            proprio = np.array(probe.js.position, dtype=np.float32)
            action = expert.act({'state': probe.state, 'proprio': proprio}, {})
            probe.command(proprio[:6] + action[:6], action[6])
        assert probe.successes == 1, 'the sim should detect and publish the success'
        probe.spin_for(0.5)
        assert probe.successes == 1, 'success is published once per episode'
        assert probe.js.position[6] > 0.3, 'the cube is still in the gripper'

        # 6) E-stop: the arm holds and ignores commands; it stays halted after release until a reset.
        probe.estop_pub.publish(Bool(data=True))
        probe.spin_for(0.3)
        q_halt = probe.q()
        probe.command(q_halt + 0.3, 1.0)
        probe.spin_for(0.7)
        assert np.max(np.abs(probe.q() - q_halt)) < 0.01, 'e-stop must hold position'
        probe.estop_pub.publish(Bool(data=False))
        probe.command(q_halt + 0.3, 1.0)
        probe.spin_for(0.5)
        assert np.max(np.abs(probe.q() - q_halt)) < 0.01, 'still halted until poco/reset'

        # 7) Reset without a seed (the node's own sequence) clears the latch; commands work again.
        resp = probe.reset(-1, proc)
        assert resp.success and resp.episode_id == 2
        probe.spin_for(0.3)
        q2 = probe.q()
        probe.command(q2 + np.array([0.2, 0, 0, 0, 0, 0]), 1.0)
        probe.spin_for(1.0)
        assert probe.q()[0] - q2[0] > 0.15, 'commands must move the arm again after the reset'
        assert proc.poll() is None


def test_sim_node_refuses_another_joint_count():
    """A 7-joint arm configuration (robot.yaml of a real arm) given to the 6-joint MuJoCo arm: exit 2 with one
    line that says why, no traceback."""
    names = ','.join(f'fr3_joint{i}' for i in range(1, 8))
    out = subprocess.run([sys.executable, '-m', 'poco_sim.sim_node', '--ros-args', '-p', f'joint_names:=[{names}]'],
                         capture_output=True, text=True, timeout=120, env=_ros_env())
    assert out.returncode == 2, out
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert lines == ['sim_node: invalid configuration: joint_names has 7 joints '
                     f'{["fr3_joint%d" % i for i in range(1, 8)]} but the MuJoCo arm has 6; the sim stands in '
                     'for a 6-joint arm only'], out.stderr


def test_sim_node_takes_the_arms_joint_and_gripper_names(tmp_path):
    """joint_names / gripper_joint (the policy node's parameters) rename what the sim publishes and accepts."""
    names = [f'arm_{i}' for i in range(6)]
    with sim_node(tmp_path, 'obs_mode:=state', f'joint_names:=[{",".join(names)}]', 'gripper_joint:=finger') as proc, \
            probe_in_own_context() as probe:
        assert probe.spin_until(lambda: probe.js is not None and probe.cmd_pub.get_subscription_count() >= 1,
                                30.0, proc), 'sim node not discovered'
        assert list(probe.js.name) == names + ['finger']
        q0 = probe.q()
        target = q0 + np.array([0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
        msg = JointState()
        msg.name = names + ['finger']
        msg.position = [float(v) for v in target] + [1.0]
        probe.cmd_pub.publish(msg)
        probe.spin_for(1.5)
        assert abs(probe.q()[0] - target[0]) < 0.05, (q0, probe.q(), target)
        probe.command(q0, 1.0)          # the default names are not this arm's: dropped, the arm stays
        probe.spin_for(0.5)
        assert abs(probe.q()[0] - target[0]) < 0.05 and proc.poll() is None
