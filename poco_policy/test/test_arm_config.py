"""Any arm: the policy node takes joint count, names, limits, gripper joint and scale, base frame and home pose
from parameters. A 7-joint arm (poco_policy/test/arm7.urdf) runs in real processes over DDS: the stand-in robot
(_arm_helpers.py) publishes joint_states and integrates the commands, the real policy node acts with random
weights of the 7-joint sizes, and the test checks what comes out; weights of the 6-joint size are refused; a
teleop push out of the box (forward kinematics of the URDF) ends the episode. Plus the parameter descriptors and
the run-time changes (in-process node) and the start-up checks of the arm description."""
from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _arm_helpers import (ARM7_URDF, Operator, Proc, make_actor, policy_params, ros_env,  # noqa: E402
                          stamp_s, standin)

rclpy = pytest.importorskip('rclpy')

from poco_policy.node_config import PolicyNodeConfig, RUNTIME_PARAMS, runtime_update, validate  # noqa: E402

J7 = [f'a7_joint{i}' for i in range(1, 8)]
HOME7 = [0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8]
LO7 = [-2.8, -1.7, -2.8, -3.0, -2.8, -0.1, -2.8]
HI7 = [2.8, 1.7, 2.8, -0.1, 2.8, 3.7, 2.8]
STATE_DIM = 10
D = 0.05
FINGER_OPEN = 0.04


def arm7_params(**over) -> dict:
    p = policy_params(joint_names=J7, joint_lower=LO7, joint_upper=HI7, home_pose=HOME7, gripper_joint='finger_joint',
                      gripper_closed=0.0, gripper_open=FINGER_OPEN, base_frame='a7_base',
                      robot_description_file=str(ARM7_URDF), ee_link='tcp',
                      ee_box_min=[0.2, -0.4, 0.3], ee_box_max=[0.8, 0.4, 0.8], max_episode_steps=30)
    p.update(over)
    return p


# ------------------------------------------------------------------------------------------ start-up checks
def test_validate_names_the_bad_parameter():
    validate(PolicyNodeConfig())
    ok = PolicyNodeConfig(joint_names=tuple(J7), joint_lower=tuple(LO7), joint_upper=tuple(HI7), home_pose=tuple(HOME7))
    validate(ok)
    assert ok.action_dim == 8
    bad = [
        (dict(joint_names=tuple(J7)), 'joint_lower has 6 values for 7 joint_names'),
        (dict(home_pose=(0.0,) * 5), 'home_pose has 5 values'),
        (dict(gripper_joint='joint3'), 'is also an arm joint'),
        (dict(joint_names=('j', 'j', 'k', 'l', 'm', 'n')), 'distinct'),
        (dict(gripper_open=0.0), 'differ'),
        (dict(ee_box_min=(1.0, 0.0, 0.0)), 'must be below ee_box_max'),
        (dict(command_interface='effort'), 'command_interface must be one of'),
        (dict(home_pose=(0.0, 3.0, 1.89, 0.0, 0.84, 0.0)), 'outside joint_lower'),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            validate(PolicyNodeConfig(**kw))


def test_runtime_changes_are_validated():
    start = PolicyNodeConfig()
    assert set(RUNTIME_PARAMS) == {'max_joint_delta', 'ee_box_min', 'ee_box_max', 'staleness_s',
                                   'estop_heartbeat_timeout_s', 'mode'}
    new = runtime_update(start, start, {'max_joint_delta': 0.02, 'ee_box_max': [1.0, 1.0, 1.0]})
    assert new.max_joint_delta == 0.02 and list(new.ee_box_max) == [1.0, 1.0, 1.0] and start.max_joint_delta == 0.05
    with pytest.raises(ValueError, match='start-up value'):
        runtime_update(new, start, {'max_joint_delta': 0.06})
    with pytest.raises(ValueError, match='cannot change at run time'):
        runtime_update(start, start, {'joint_names': ['a']})
    with pytest.raises(ValueError, match='ee_box_min'):
        runtime_update(start, start, {'ee_box_min': [0.0, 0.0]})


@pytest.fixture
def ros_domain(monkeypatch):
    monkeypatch.setenv('ROS_DOMAIN_ID', str(random.randint(120, 200)))
    monkeypatch.setenv('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    monkeypatch.delenv('POCO_USE_SIM_TIME', raising=False)


def test_descriptors_and_set_parameters_in_a_node(ros_domain):
    from rclpy.parameter import Parameter
    from poco_policy.policy_node import PolicyNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        node = PolicyNode(context=ctx, parameter_overrides=[Parameter('obs_mode', value='state')])
        d = {x.name: x for x in node.describe_parameters(['max_joint_delta', 'joint_names', 'command_interface',
                                                          'max_episode_steps'])}
        assert not d['max_joint_delta'].read_only and d['max_joint_delta'].floating_point_range[0].to_value == 0.5
        assert d['joint_names'].read_only and d['joint_names'].description
        assert 'joint_trajectory' in d['command_interface'].additional_constraints
        assert d['max_episode_steps'].integer_range[0].from_value == 1

        def set_(name, value):
            return node.set_parameters([Parameter(name, value=value)])[0]
        assert set_('max_joint_delta', 0.02).successful and node.cfg.max_joint_delta == 0.02
        assert node.scaler.max_joint_delta == 0.05          # the normalisation stays the learner's
        assert not set_('max_joint_delta', 0.2).successful and node.cfg.max_joint_delta == 0.02
        assert not set_('max_joint_delta', 5.0).successful  # outside the descriptor's range
        assert set_('ee_box_min', [0.0, -0.1, 0.0]).successful
        assert list(node.safety.lim.box_min) == [0.0, -0.1, 0.0]
        assert not set_('ee_box_min', [0.0, 0.0, 2.0]).successful
        assert set_('staleness_s', 0.3).successful and node.safety.lim.staleness_s == 0.3
        assert node.ee_src.staleness_s == 0.3
        assert set_('estop_heartbeat_timeout_s', 0.4).successful and node.estop_mon.heartbeat_timeout_s == 0.4
        r = set_('joint_names', ['a'])
        assert not r.successful and 'read-only' in r.reason
        assert not set_('mode', 'dance').successful and node.cfg.mode == 'train'
        node.weights_worker.close()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_a_wrong_arm_description_stops_the_start(ros_domain):
    from rclpy.parameter import Parameter
    from poco_policy.policy_node import PolicyNode
    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    try:
        with pytest.raises(ValueError, match='joint_lower has 6 values for 7'):
            PolicyNode(context=ctx, parameter_overrides=[Parameter('obs_mode', value='state'),
                                                         Parameter('joint_names', value=J7)])
        with pytest.raises(ValueError, match="no link 'tool0'"):
            PolicyNode(context=ctx, parameter_overrides=[
                Parameter('obs_mode', value='state'), Parameter('robot_description_file', value=str(ARM7_URDF)),
                Parameter('joint_names', value=J7), Parameter('joint_lower', value=LO7),
                Parameter('joint_upper', value=HI7), Parameter('home_pose', value=HOME7),
                Parameter('ee_link', value='tool0'), Parameter('base_frame', value='a7_base')])
    finally:
        rclpy.shutdown(context=ctx)


# ------------------------------------------------------------------------------------------ 7 joints, real processes
@pytest.fixture(scope='module')
def arm7(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('arm7')
    env = ros_env()
    path, _, _ = make_actor(tmp, STATE_DIM + 8, 8)
    robot = standin(tmp, env, joints=J7, gripper_joint='finger_joint', q0=HOME7, g0=FINGER_OPEN, state_dim=STATE_DIM)
    policy = Proc(tmp, 'policy', env, params=arm7_params(initial_weights=str(path)))
    procs = [robot, policy]
    old = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ.update(ROS_DOMAIN_ID=env['ROS_DOMAIN_ID'], ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    op = None
    try:
        op = Operator(procs)
        yield op, tmp, policy
    finally:
        if op is not None:
            op.close()
        for p in procs:
            p.stop()
        os.environ.update({k: v for k, v in old.items() if v is not None})
        print(f'----- policy log (tail) -----\n{policy.text()[-2500:]}')


def test_seven_joint_arm_acts_within_the_limits(arm7):
    op, tmp, policy = arm7
    assert op.spin(90, lambda: len([t for _, t in op.got['tr'] if not t.final_observation]) >= 25), \
        f'the 7-joint policy never acted:\n{policy.text()[-3000:]}'
    assert op.events(op.EpisodeEvent.START), 'no episode started (homing to the 7-joint home pose)'
    cmds = [(stamp_s(m.header.stamp), m) for _, m in op.got['cmd']]
    assert cmds and all(list(m.name) == J7 + ['finger_joint'] for _, m in cmds)
    trs = [t for _, t in op.got['tr'] if not t.final_observation]
    checked = 0
    for t in trs:
        assert len(t.proprio) == 8 and len(t.action) == 8 and len(t.features) == STATE_DIM
        a = np.array(t.action)
        assert np.all(np.abs(a[:7]) <= D + 1e-6) and 0.0 <= a[7] <= 1.0
        # the command this step sent: the newest one stamped before the transition's action stamp
        ts = stamp_s(t.action_stamp)
        sent = [m for s, m in cmds if s <= ts + 1e-6]
        if not sent:
            continue
        m = sent[-1]
        q = np.array(t.proprio[:7], np.float64)
        want = np.clip(q + a[:7], LO7, HI7)
        assert np.allclose(m.position[:7], want, atol=1e-4), (m.position[:7], want)
        assert np.all(np.abs(np.array(m.position[:7]) - q) <= D + 1e-5)
        assert abs(m.position[7] - a[7] * FINGER_OPEN) < 1e-5   # command in [0, 1] -> 0 .. 0.04 m
        checked += 1
    assert checked >= 20
    # the robot's measured gripper (0.04 = open) arrives in the observation as an opening of 1
    assert any(abs(t.proprio[7] - 1.0) < 1e-4 for t in trs)
    assert op.diag.get('box_source', '').startswith('description:')


def test_weights_of_the_six_joint_size_are_refused(arm7):
    op, tmp, policy = arm7
    from poco_msgs.msg import PolicyWeights
    import hashlib
    import json
    _, payload, meta = make_actor(tmp, STATE_DIM + 7, 7, name='six')
    w = PolicyWeights(version=1, format='safetensors', metadata=json.dumps(meta), sha256=hashlib.sha256(payload).hexdigest())
    w.payload = payload
    op.weights.publish(w)
    assert op.spin(15, lambda: any(k.startswith('dropped/weights') for k in op.diag)), op.diag
    assert op.diag['weights_version'] == '0'   # still the initial weights
    _, payload, meta = make_actor(tmp, STATE_DIM + 8, 8, name='right', seed=1)
    w = PolicyWeights(version=2, format='safetensors', metadata=json.dumps(meta), sha256=hashlib.sha256(payload).hexdigest())
    w.payload = payload
    op.weights.publish(w)   # the right size for 7 joints is taken (so the refusal above was the size)
    assert op.spin(30, lambda: op.diag.get('weights_checked_version') == '2'), op.diag


def test_a_target_outside_the_box_ends_the_episode(arm7):
    """Teleop pushes joint 2 forward every tick: the URDF's forward kinematics puts the target below the box's
    floor (z 0.3) after a few ticks; that target is refused, the arm holds and the episode ends as a failure."""
    op, tmp, policy = arm7
    from poco_msgs.msg import ActionChunk
    assert op.spin(60, lambda: op.diag.get('phase') == 'running'), op.diag
    push = [0.0, D, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    n_fail = len(op.events(op.EpisodeEvent.FAILURE))

    def failed():
        op.teleop.publish(ActionChunk(data=push))
        return any('would leave the box' in e.detail for e in op.events(op.EpisodeEvent.FAILURE)[n_fail:])
    assert op.spin(30, failed), f'no box failure; events {[(e.event, e.detail) for e in op.events()]}'
    ev = [e for e in op.events(op.EpisodeEvent.FAILURE) if 'would leave the box' in e.detail][-1]
    t_end = stamp_s(ev.header.stamp)
    # the refused target was not sent: the last command before the end is a hold at the measured position
    # (the final observation's proprio, published with the end)
    final = [t for _, t in op.got['tr'] if t.final_observation and t.episode_id == ev.episode_id]
    assert final, 'no final observation for the failed episode'
    before = [m for _, m in op.got['cmd'] if stamp_s(m.header.stamp) <= t_end + 1e-6]
    assert np.allclose(before[-1].position[:7], final[-1].proprio[:7], atol=1e-5), (before[-1].position, final[-1].proprio)
    tcp_z = [float(x) for x in ev.detail.split('[')[1].split(']')[0].split(',')][2]
    assert tcp_z < 0.3   # the box's floor: the URDF's forward kinematics put the target below it


def test_joint_states_stamped_a_second_ago_are_stale_even_when_they_arrive_now(tmp_path):
    """The watchdog ages an input by its capture stamp (on the node's clock), not by when its callback ran: a
    driver whose joint states come 1 s late (stamp 1 s old, staleness_s 0.5) never gets a new target planned.
    The same stand-in without the lag is what test_seven_joint_arm_acts_within_the_limits drives."""
    env = ros_env()
    path, _, _ = make_actor(tmp_path, STATE_DIM + 8, 8)
    robot = standin(tmp_path, env, joints=J7, gripper_joint='finger_joint', q0=HOME7, g0=FINGER_OPEN,
                    state_dim=STATE_DIM, stamp_lag_s=1.0)
    policy = Proc(tmp_path, 'policy', env, params=arm7_params(initial_weights=str(path)))
    procs = [robot, policy]
    old = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ.update(ROS_DOMAIN_ID=env['ROS_DOMAIN_ID'], ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    op = None
    try:
        op = Operator(procs)
        # the node is up and sees the joint states (diagnostics), but they are 1 s old on arrival
        assert op.spin(60, lambda: op.diag.get('input_age_s/joint_states', 'never') != 'never'), policy.text()[-3000:]
        op.spin(15.0, lambda: False)
        ages = float(op.diag['input_age_s/joint_states'])
        assert ages >= 0.9, op.diag
        assert not [t for _, t in op.got['tr'] if not t.final_observation], 'acted on 1 s old joint states'
        assert not op.events(op.EpisodeEvent.START), 'started an episode on 1 s old joint states'
        assert policy.alive()
    finally:
        if op is not None:
            op.close()
        for p in procs:
            p.stop()
        os.environ.update({k: v for k, v in old.items() if v is not None})
