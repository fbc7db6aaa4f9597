"""The policy node cannot be crashed by input or by its own logging (real processes over DDS).

The sim node (wall clock, real time) and the policy node (state mode, a small initial actor) run as their own
processes; this test pauses the sim, injects malformed messages and presses the e-stop. Both sequences used to
kill the node with "Requested logging filters cannot be changed between calls" (rclpy's deprecated `.warn`
gives every call one call site, so two throttle settings clash):
  (i)  a sim pause longer than the watchdog tolerance (the watchdog warns), then an e-stop press and release;
  (ii) one joint_states message missing a joint (and more bad input: NaN state, a wrong-size teleop action,
       weights with 100000-deep JSON metadata), then an e-stop press and release.
The node must stay up, count each drop per reason on /diagnostics, and act again after the release. And a Ctrl-C
while messages stream in stops it with exit 0.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,  # noqa: E402
                       qos_profile_sensor_data)
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float32MultiArray  # noqa: E402

from poco_msgs.msg import ActionChunk, PolicyWeights  # noqa: E402
from poco_policy.testing import NodeProc, private_domain, ros_env  # noqa: E402

RELIABLE = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     history=HistoryPolicy.KEEP_LAST)


Proc = NodeProc   # (tmp, pkg, exe, name, params, env): poco_policy.testing


class Operator:
    """The test's node: e-stop button, a source of bad messages, and eyes on commands and diagnostics."""

    def __init__(self, context):
        self.node = n = rclpy.create_node('robust_test', context=context)
        self.ex = SingleThreadedExecutor(context=context)
        self.ex.add_node(n)
        self.commands: list[float] = []
        self.diag: dict[str, str] = {}
        n.create_subscription(JointState, 'joint_commands', lambda m: self.commands.append(time.monotonic()),
                              RELIABLE)
        n.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, RELIABLE)
        self.estop = n.create_publisher(Bool, 'poco/estop', LATCHED)
        self.js = n.create_publisher(JointState, 'joint_states', qos_profile_sensor_data)
        self.state = n.create_publisher(Float32MultiArray, 'sim/state', qos_profile_sensor_data)
        self.teleop = n.create_publisher(ActionChunk, 'teleop/action', RELIABLE)
        self.weights = n.create_publisher(PolicyWeights, 'poco/policy_weights', LATCHED)

    def _on_diag(self, m: DiagnosticArray):
        for st in m.status:
            if st.name.endswith('/policy'):
                self.diag = {kv.key: kv.value for kv in st.values}

    def spin(self, seconds: float, procs, cond=None) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)
            for p in procs:
                assert p.alive(), f'{p.name} exited:\n{p.text()[-3000:]}'
            if cond is not None and cond():
                return True
        return cond is None

    def commands_after(self, t: float) -> int:
        return sum(1 for c in self.commands if c > t)

    def press_and_release_estop(self, procs):
        self.estop.publish(Bool(data=True))
        self.spin(1.0, procs)
        t_stop = time.monotonic()
        self.spin(0.5, procs)
        assert self.commands_after(t_stop + 0.2) == 0, 'commands went out while the e-stop was engaged'
        self.estop.publish(Bool(data=False))
        t_release = time.monotonic()
        # after the release the sim graph resets and the policy acts again: the node is up and well
        assert self.spin(20, procs, lambda: self.commands_after(t_release) > 15), 'no commands after the release'


@pytest.fixture(scope='module')
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('robust')
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1')
    env.setdefault('ROS_DOMAIN_ID', str(random.randint(120, 200)))
    env.pop('ROS_STATIC_PEERS', None)
    env.pop('POCO_USE_SIM_TIME', None)  # the wall clock: the watchdog must be able to fire

    import torch
    from poco_policy.flow_policy import FlowChunkPolicy, FlowPolicyConfig, weights_to_bytes
    torch.manual_seed(0)
    actor = FlowChunkPolicy(FlowPolicyConfig(obs_dim=20 + 7, horizon=5, hidden_dims=(32, 32), flow_steps=3))
    payload, meta = weights_to_bytes(actor)
    (tmp / 'actor.safetensors').write_bytes(payload)
    (tmp / 'actor.json').write_text(json.dumps(meta))

    # The policy comes up first, with no reset service for longer than reset_timeout_s: it makes its client anew
    # (the remedy for a client that never matched the service) and still finds the sim once that starts.
    policy = Proc(tmp, 'poco_policy', 'policy_node', 'policy',
                  dict(obs_mode='state', initial_weights=str(tmp / 'actor.safetensors'), max_episode_steps=150,
                       eval_every=0, staleness_s=0.5, reset_timeout_s=2.0), env)
    deadline = time.monotonic() + 60
    while 'made a new client' not in policy.text() and time.monotonic() < deadline and policy.alive():
        time.sleep(0.2)
    assert 'made a new client' in policy.text(), policy.text()[-2000:]
    sim = Proc(tmp, 'poco_sim', 'sim_node', 'sim', dict(task='pick_cube', obs_mode='state', seed=1), env)
    procs = [sim, policy]
    old = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ.update(ROS_DOMAIN_ID=env['ROS_DOMAIN_ID'], ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    context = rclpy.Context()
    rclpy.init(context=context)
    op = Operator(context)
    try:
        op.estop.publish(Bool(data=False))
        assert op.spin(60, procs, lambda: len(op.commands) > 20), \
            f'the policy never acted:\n{sim.text()[-2000:]}\n{policy.text()[-2000:]}'
        yield op, sim, policy, procs
    finally:
        op.node.destroy_node()
        rclpy.shutdown(context=context)
        for p in procs:
            p.stop()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        print(f'----- policy log (tail) -----\n{policy.text()[-2500:]}')


def test_watchdog_then_estop_press_and_release_keeps_the_policy_up(graph):
    op, sim, policy, procs = graph
    # The watchdog guards a running episode. A pause that lands while the policy waits for a reset shows as
    # 'reset timed out' instead (nothing is commanded then): pause right after a command, and try again if it
    # still landed between episodes (CI saw that once with 4 s episodes).
    for attempt in range(3):
        t = time.monotonic()
        assert op.spin(20, procs, lambda: op.commands_after(t) > 0), 'the policy is not acting'
        seen = len(policy.text())
        sim.signal(signal.SIGSTOP)  # the robot's data stops for longer than the watchdog tolerance
        try:
            op.spin(1.6, [policy])
            if op.spin(3.0, [policy], lambda: 'watchdog: stale inputs' in policy.text()[seen:]):
                break
            assert 'reset timed out' in policy.text()[seen:], \
                f'the watchdog did not warn during a running episode:\n{policy.text()[seen:][-2000:]}'
        finally:
            sim.signal(signal.SIGCONT)
    else:
        pytest.fail('every pause landed between episodes')
    op.press_and_release_estop(procs)
    log = policy.text()
    assert 'E-STOP engaged' in log and 'e-stop released' in log
    assert 'Traceback' not in log and 'cannot be changed' not in log, log[-3000:]


def test_bad_inputs_then_estop_press_and_release_keeps_the_policy_up(graph):
    op, sim, policy, procs = graph
    bad = JointState()
    bad.name = ['joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'gripper']  # joint6 missing
    bad.position = [0.0] * 6
    op.js.publish(bad)
    op.state.publish(Float32MultiArray(data=[float('nan')] * 20))
    op.teleop.publish(ActionChunk(data=[0.0, 0.0, 0.0]))
    deep = PolicyWeights(version=10**6, format='safetensors', metadata='[' * 100_000)
    deep.payload = b'x' * 64
    deep.sha256 = hashlib.sha256(b'x' * 64).hexdigest()
    op.weights.publish(deep)
    want = ('dropped/joint_states: missing joint', 'dropped/sim/state: non-finite', 'dropped/teleop: wrong size')
    assert op.spin(10, procs, lambda: all(k in op.diag for k in want) and any(
        k.startswith('dropped/weights') for k in op.diag)), f'drops not counted on /diagnostics: {op.diag}'
    assert op.diag['dropped/joint_states: missing joint'] == '1'
    op.press_and_release_estop(procs)
    log = policy.text()
    assert 'dropped joint_states: missing joint' in log
    assert 'Traceback' not in log and 'cannot be changed' not in log, log[-3000:]


def test_ctrl_c_while_big_messages_stream_in_stops_the_policy_cleanly(tmp_path):
    """SIGINT while messages arrive: exit 0, no traceback. Python's own SIGINT handler used to raise
    KeyboardInterrupt inside rclpy's conversion of an incoming message (the message class's Python setters run
    there), which surfaced as "RuntimeError: Unable to convert call argument '0'" and crashed the node on stop
    (CI, split deployment). Here the stream is joint_states with 20000 names (each conversion takes long, so a
    stop lands inside one most of the time) and the stop comes at a random moment, six times (with four, the old
    code failed 2 of 3 runs)."""
    env = ros_env(private_domain())
    old = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ.update(ROS_DOMAIN_ID=env['ROS_DOMAIN_ID'], ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('joint_states_flood', context=context)
    pub = node.create_publisher(JointState, 'joint_states', RELIABLE)
    big = JointState()
    big.name = [f'j{i}' for i in range(20000)]
    big.position = [0.0] * 20000

    def flood(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pub.publish(big)
            time.sleep(0.002)
    try:
        for trial in range(6):
            policy = Proc(tmp_path, 'poco_policy', 'policy_node', f'policy{trial}',
                          dict(obs_mode='state', eval_every=0), env)
            deadline = time.monotonic() + 60
            while 'dropped joint_states' not in policy.text() and time.monotonic() < deadline and policy.alive():
                flood(0.2)
            assert 'dropped joint_states' in policy.text(), policy.text()[-2000:]   # it is taking the stream
            flood(random.uniform(0.1, 0.6))
            policy.signal(signal.SIGINT)
            flood(0.3)
            rc = policy.stop(timeout=30)
            log = policy.text()
            assert rc == 0 and 'Traceback' not in log, f'trial {trial}: exit {rc}\n{log[-3000:]}'
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
