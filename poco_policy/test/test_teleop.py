"""Teleop: key / Joy -> joint deltas + gripper mapping (no ROS), and the node publishing teleop/action."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from poco_policy.teleop_node import JOINT_KEYS, TeleopConfig, TeleopMapper

MAX = 0.05


def mapper(**kw) -> TeleopMapper:
    return TeleopMapper(TeleopConfig(max_joint_delta=MAX, **kw))


# ------------------------------------------------------------------------------------------------ keyboard
def test_nothing_until_intervention_toggled():
    m = mapper()
    m.on_key('q')
    assert m.tick(0.0) is None and not m.intervening
    assert m.on_key(' ') == 'intervention ON'
    a = m.tick(0.1)
    assert a is not None and a.shape == (7,) and a.dtype == np.float32
    np.testing.assert_array_equal(a[:6], 0.0)  # the press before intervening is not replayed
    assert m.on_key(' ') == 'intervention off'
    assert m.tick(0.2) is None


@pytest.mark.parametrize('key,joint,sign', [('q', 0, 1), ('a', 0, -1), ('w', 1, 1), ('s', 1, -1),
                                            ('e', 2, 1), ('d', 2, -1), ('r', 3, 1), ('f', 3, -1),
                                            ('t', 4, 1), ('g', 4, -1), ('y', 5, 1), ('h', 5, -1)])
def test_each_key_moves_its_joint(key, joint, sign):
    m = mapper(key_step=0.5)
    m.on_key(' ')
    m.on_key(key)
    a = m.tick(0.0)
    want = np.zeros(6)
    want[joint] = sign * 0.5 * MAX
    np.testing.assert_allclose(a[:6], want, atol=1e-7)
    # consumed: the next tick does not move again
    np.testing.assert_array_equal(m.tick(0.1)[:6], 0.0)


def test_key_presses_accumulate_but_are_bounded_and_excess_dropped():
    m = mapper(key_step=0.5)
    m.on_key(' ')
    for _ in range(10):
        m.on_key('e')
    a = m.tick(0.0)
    assert a[2] == pytest.approx(MAX)       # clipped to max_joint_delta
    assert m.tick(0.1)[2] == 0.0            # the 4x excess does not leak into later ticks
    m.on_key('q'), m.on_key('a')            # opposite presses cancel
    assert m.tick(0.2)[0] == 0.0
    assert len(JOINT_KEYS) == 16            # 8 key pairs; a 6-joint arm ignores the last two


def test_speed_keys_scale_steps():
    m = mapper(key_step=0.2)
    m.on_key(' ')
    m.on_key('+')
    m.on_key('w')
    assert m.tick(0.0)[1] == pytest.approx(0.2 * 1.5 * MAX)
    m.on_key('-'), m.on_key('-')
    m.on_key('w')
    assert m.tick(0.1)[1] == pytest.approx(0.2 / 1.5 * MAX)


def test_gripper_keys_and_start_from_measured_opening():
    m = mapper(gripper_initial=1.0)
    m.set_measured_gripper(0.3)
    m.on_key(' ')
    assert m.tick(0.0)[6] == pytest.approx(0.3)  # no jump when taking over
    m.on_key('c')
    assert m.tick(0.1)[6] == 0.0
    m.on_key('o')
    assert m.tick(0.2)[6] == 1.0
    m2 = mapper(gripper_initial=0.7)
    m2.on_key(' ')
    assert m2.tick(0.0)[6] == pytest.approx(0.7)  # never saw joint_states


# ------------------------------------------------------------------------------------------------ Joy
def joy_axes(n=8, **vals):
    a = [0.0] * n
    for k, v in vals.items():
        a[int(k[1:])] = v
    return a


def test_joy_axes_map_to_joint_deltas_with_deadzone_and_scale():
    m = mapper(joy_axes=(0, 1, 3, 4, 6, -1), joy_scales=(1.0, -1.0, 0.5, 1.0, 1.0, 1.0), joy_deadzone=0.1,
               joy_toggle_button=4)
    buttons = [0] * 8
    buttons[4] = 1
    m.on_joy(joy_axes(a0=1.0, a1=1.0, a3=0.55, a4=0.05, a6=-1.0, a7=1.0), buttons, now=0.0)
    assert m.intervening
    a = m.tick(0.05)
    np.testing.assert_allclose(a[:6], [MAX, -MAX, 0.5 * 0.5 * MAX, 0.0, -MAX, 0.0], atol=1e-7)
    # a level, not an impulse: acts every tick while deflected
    np.testing.assert_allclose(m.tick(0.1)[:6], a[:6])
    # Joy messages stop (driver died): released after joy_timeout_s
    assert np.all(m.tick(0.05 + 1.0)[:6] == 0.0)


def test_joy_output_is_bounded_even_with_large_scales():
    m = mapper(joy_scales=(5.0,) * 6, joy_toggle_button=4)
    b = [0] * 8
    b[4] = 1
    m.on_joy([1.0, -1.0, 0, 1.0, 1.0, 0, 1.0, 1.0], b, 0.0)
    a = m.tick(0.0)
    assert np.all(np.abs(a[:6]) <= MAX + 1e-9) and np.abs(a[:6]).max() == pytest.approx(MAX)


def test_joy_toggle_is_edge_triggered_and_gripper_buttons():
    m = mapper(joy_toggle_button=4, joy_gripper_open_button=0, joy_gripper_close_button=1)
    held = [0, 0, 0, 0, 1, 0]
    for t in range(5):                          # button held over several messages: one toggle
        m.on_joy([0.0] * 8, held, t * 0.05)
    assert m.intervening
    m.on_joy([0.0] * 8, [0, 1, 0, 0, 0, 0], 0.3)  # release toggle, press close
    assert m.intervening and m.tick(0.3)[6] == 0.0
    m.on_joy([0.0] * 8, [1, 0, 0, 0, 0, 0], 0.35)
    assert m.tick(0.35)[6] == 1.0
    m.on_joy([0.0] * 8, held, 0.4)               # second press: off
    assert not m.intervening and m.tick(0.4) is None


def test_joy_deadman_and_analog_gripper():
    m = mapper(joy_toggle_button=-1, joy_deadman_button=5, joy_gripper_axis=2)
    m.on_joy([0.0, 0.0, -1.0], [0] * 6, 0.0)
    assert m.tick(0.0) is None
    m.on_joy([0.0, 0.0, 0.0], [0, 0, 0, 0, 0, 1], 0.1)
    assert m.intervening and m.tick(0.1)[6] == pytest.approx(0.5)
    m.on_joy([0.0, 0.0, 1.0], [0, 0, 0, 0, 0, 0], 0.2)   # dead-man released: stop at once
    assert m.tick(0.2) is None


def test_short_or_nan_joy_messages_are_harmless():
    m = mapper(joy_toggle_button=0)
    m.on_joy([float('nan')], [1], 0.0)
    a = m.tick(0.0)
    assert a is not None and np.all(np.isfinite(a)) and np.all(a[:6] == 0.0)


def test_config_validation():
    with pytest.raises(ValueError):
        TeleopMapper(TeleopConfig(max_joint_delta=0.0))
    with pytest.raises(ValueError):
        TeleopMapper(TeleopConfig(joy_axes=(0, 1)))
    with pytest.raises(ValueError, match='7 entries, one per joint_names'):  # 7 joints, the 6-joint Joy map
        TeleopMapper(TeleopConfig(joint_names=ARM7))
    with pytest.raises(ValueError, match='also an arm joint'):
        TeleopMapper(TeleopConfig(gripper_joint='joint2'))


# ------------------------------------------------------------------------------------------------ any arm
ARM7 = tuple(f'fr3_joint{i}' for i in range(1, 8))


def test_arm_parameters_are_the_policy_nodes():
    """One home per parameter: teleop's arm fields are PolicyNodeConfig's (same defaults and descriptions)."""
    import dataclasses
    from poco_policy.node_config import ARM_PARAMS, PolicyNodeConfig
    pol = {f.name: f for f in dataclasses.fields(PolicyNodeConfig)}
    tel = {f.name: f for f in dataclasses.fields(TeleopConfig)}
    for name in ARM_PARAMS:
        assert tel[name].default == pol[name].default and tel[name].metadata == pol[name].metadata, name


def test_seven_joint_arm_keys_joy_and_gripper_scale():
    m = mapper(joint_names=ARM7, gripper_joint='fr3_finger_joint1', gripper_closed=0.0, gripper_open=0.04,
               joy_axes=(0, 1, 3, 4, 6, 7, 2), joy_scales=(1.0,) * 7, key_step=0.5, joy_toggle_button=4)
    m.set_measured_gripper_position(0.01)          # metres of finger travel -> opening 0.25
    m.on_key(' ')
    a = m.tick(0.0)
    assert a.shape == (8,) and a[7] == pytest.approx(0.25)
    m.on_key('u')                                   # joint 7
    m.on_key('i')                                   # an 8th joint this arm does not have: nothing
    a = m.tick(0.1)
    np.testing.assert_allclose(a[:7], [0, 0, 0, 0, 0, 0, 0.5 * MAX], atol=1e-7)
    m.on_joy(joy_axes(n=8, a2=-1.0), [0] * 8, now=0.2)
    a = m.tick(0.2)
    np.testing.assert_allclose(a[:7], [0, 0, 0, 0, 0, 0, -MAX], atol=1e-7)


# ------------------------------------------------------------------------------------------------ the node
@pytest.fixture
def ros():
    """A test node + executor in a private loopback domain; `start(params, stdin)` runs teleop_node as its own
    process there (log in `log`); `spin_until(pred, timeout, what)` fails if the node dies or time runs out."""
    rclpy = pytest.importorskip('rclpy')
    from types import SimpleNamespace
    from rclpy.executors import SingleThreadedExecutor
    domain = random.SystemRandom().randint(1, 100)
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain))
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node('teleop_test', context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    log = tempfile.TemporaryFile('w+')
    procs: list = []

    def start(params, stdin):
        cmd = [sys.executable, '-m', 'poco_policy.teleop_node', '--ros-args']
        for p in params:
            cmd += ['-p', p]
        procs.append(subprocess.Popen(cmd, env=env, stdin=stdin, stdout=log, stderr=subprocess.STDOUT))
        return procs[-1]

    def spin_until(pred, timeout, what, step=0.02):
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f'timed out waiting for {what}'
            assert all(p.poll() is None for p in procs), 'teleop_node died'
            ex.spin_once(timeout_sec=step)

    def spin_for(seconds, step=0.02):
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            ex.spin_once(timeout_sec=step)

    yield SimpleNamespace(node=node, ex=ex, log=log, start=start, spin_until=spin_until, spin_for=spin_for)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    log.close()
    ex.shutdown()
    node.destroy_node()
    ctx.try_shutdown()


def test_teleop_node_publishes_actions_while_intervening(ros):
    """teleop_node (own process, no TTY -> Joy only): toggle via Joy, deflect an axis, receive teleop/action."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Joy
    from poco_msgs.msg import ActionChunk

    node, ex = ros.node, ros.ex
    ros.start(['max_joint_delta:=0.04', 'joy_toggle_button:=4'], subprocess.DEVNULL)
    got: list = []
    node.create_subscription(ActionChunk, '/teleop/action', got.append, 10)
    joy_pub = node.create_publisher(Joy, '/joy', qos_profile_sensor_data)
    ros.spin_until(lambda: joy_pub.get_subscription_count() > 0, 30, 'teleop_node to subscribe to joy')
    ros.spin_until(lambda: node.count_publishers('/teleop/action') > 0, 10, 'the teleop/action publisher')
    ros.spin_for(0.5)                    # not intervening: nothing published
    assert not got

    def joy(axes, buttons):
        m = Joy()
        m.axes, m.buttons = [float(x) for x in axes], buttons
        joy_pub.publish(m)

    joy([0.0] * 8, [0, 0, 0, 0, 1, 0, 0, 0])          # toggle on
    joy([0.0] * 8, [0] * 8)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (got and got[-1].data[0] > 0.03):
        joy([1.0] + [0.0] * 7, [0] * 8)            # keep the axis deflected (a level)
        for _ in range(3):
            ex.spin_once(timeout_sec=0.02)
    assert got, 'no teleop/action received'
    m = got[-1]
    assert m.horizon == 1 and m.action_dim == 7 and len(m.data) == 7
    assert m.data[0] == pytest.approx(0.04) and all(abs(x) <= 0.04 + 1e-6 for x in m.data[:6])
    # rate: ~15 Hz while intervening
    n0, t0 = len(got), time.monotonic()
    while time.monotonic() - t0 < 1.0:
        joy([1.0] + [0.0] * 7, [0] * 8)
        ex.spin_once(timeout_sec=0.03)
    rate = (len(got) - n0) / (time.monotonic() - t0)
    assert 10 <= rate <= 20, rate
    joy([0.0] * 8, [0, 0, 0, 0, 1, 0, 0, 0])          # toggle off: publications stop
    ros.spin_for(0.4)
    n1 = len(got)
    ros.spin_for(0.5)
    assert len(got) == n1


def test_teleop_node_keyboard_in_a_terminal(ros):
    """teleop_node with a pseudo-terminal as stdin: space toggles, 'q' moves joint 1, Ctrl-C-free exit restores."""
    import pty
    from poco_msgs.msg import ActionChunk

    node = ros.node
    master, slave = pty.openpty()
    ros.start(['max_joint_delta:=0.04', 'key_step:=0.5'], slave)
    os.close(slave)
    got: list = []
    try:
        node.create_subscription(ActionChunk, '/teleop/action', got.append, 10)
        ros.spin_until(lambda: node.count_publishers('/teleop/action') > 0, 30, 'teleop_node to come up', 0.05)

        def help_line_shown():
            ros.log.seek(0)
            return 'space = toggle intervention' in ros.log.read()
        # keys typed before the node puts the terminal in cbreak mode are flushed: wait for its help line
        ros.spin_until(help_line_shown, 30, 'the keyboard help line', 0.05)
        os.write(master, b' ')
        ros.spin_until(lambda: got, 10, 'actions after toggling intervention on')  # a (zero) action every tick
        assert not any(m.data[:6].tolist() != [0.0] * 6 for m in got), 'moved before any key'
        os.write(master, b'q')               # one press = key_step * max_joint_delta on joint 1, in one tick
        ros.spin_until(lambda: any(m.data[0] != 0 for m in got), 10, 'q to move joint 1')
        moved = [m.data[0] for m in got if m.data[0] != 0]
        assert moved == [pytest.approx(0.02)], moved
        os.write(master, b' ')
        ros.spin_for(0.4)
        n1 = len(got)
        ros.spin_for(0.4)
        assert len(got) == n1, 'still publishing after toggling off'
    finally:
        os.close(master)


def test_teleop_node_seven_joint_arm(ros):
    """teleop_node configured for a 7-joint arm with a metric gripper (the policy node's parameters): the
    action has 8 entries, the 7th joint follows its Joy axis, the gripper starts from the measured opening."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState, Joy
    from poco_msgs.msg import ActionChunk

    node, ex = ros.node, ros.ex
    ros.start([f'joint_names:=[{",".join(ARM7)}]', 'gripper_joint:=fr3_finger_joint1', 'gripper_open:=0.04',
               'joy_axes:=[0,1,3,4,6,7,2]', 'joy_scales:=[1.0,1.0,1.0,1.0,1.0,1.0,1.0]',
               'max_joint_delta:=0.04', 'joy_toggle_button:=4'], subprocess.DEVNULL)
    got: list = []
    node.create_subscription(ActionChunk, '/teleop/action', got.append, 10)
    joy_pub = node.create_publisher(Joy, '/joy', qos_profile_sensor_data)
    js_pub = node.create_publisher(JointState, '/joint_states', qos_profile_sensor_data)
    ros.spin_until(lambda: joy_pub.get_subscription_count() > 0 and js_pub.get_subscription_count() > 0, 30,
                   'teleop_node to subscribe to joy and joint_states')
    ros.spin_until(lambda: node.count_publishers('/teleop/action') > 0, 10, 'the teleop/action publisher')

    def joy(axes, buttons):
        m = Joy()
        m.axes, m.buttons = [float(x) for x in axes], buttons
        joy_pub.publish(m)

    js = JointState()
    js.name = list(ARM7) + ['fr3_finger_joint1']
    js.position = [0.0] * 7 + [0.03]               # opening 0.75
    for _ in range(5):
        js_pub.publish(js)
        ros.spin_for(0.05)
    joy([0.0] * 8, [0, 0, 0, 0, 1, 0, 0, 0])          # toggle on
    joy([0.0] * 8, [0] * 8)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not (got and got[-1].data[6] > 0.03):
        joy([0.0, 0.0, 1.0] + [0.0] * 5, [0] * 8)    # axis 2 = joint 7
        for _ in range(3):
            ex.spin_once(timeout_sec=0.02)
    assert got, 'no teleop/action received'
    m = got[-1]
    assert m.horizon == 1 and m.action_dim == 8 and len(m.data) == 8
    assert m.data[6] == pytest.approx(0.04) and all(x == 0.0 for x in m.data[:6])
    assert m.data[7] == pytest.approx(0.75)


def test_teleop_node_refuses_a_joy_map_for_another_joint_count(ros):
    """7 joints with the 6-entry default joy_axes: exit 2 with one line naming the parameter."""
    proc = ros.start([f'joint_names:=[{",".join(ARM7)}]'], subprocess.DEVNULL)
    assert proc.wait(60) == 2
    ros.log.seek(0)
    out = ros.log.read()
    assert 'teleop_node: invalid configuration: joy_axes / joy_scales need 7 entries' in out, out
    assert 'Traceback' not in out, out
