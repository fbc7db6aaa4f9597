"""Command outputs a real arm takes (poco_policy/outputs.py), in plain Python and in real processes over DDS:
the real policy node (the sim arm's configuration, its URDF for the box) drives the stand-in robot
(_arm_helpers.py) once as a ros2_control forward position controller (Float64MultiArray) with a Float64MultiArray
gripper, once as a joint trajectory controller (one JointTrajectory per chunk, points 1/15 s apart). The test
checks the commands against the policy's own chunks and transitions: every target within max_joint_delta of the
one before (the first of the measured position) and inside the joint limits, the gripper scaled."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _arm_helpers import SIM_HOME, SIM_JOINTS, Operator, Proc, make_actor, policy_params, ros_env, stamp_s, standin  # noqa: E402,E501

from poco_policy.outputs import GripperScale, chain_targets, check_interfaces  # noqa: E402

LO = np.array([-2.9, -1.6, -0.3, -2.9, -2.2, -2.9])
HI = np.array([2.9, 2.0, 2.8, 2.9, 2.2, 2.9])
D = 0.05
STATE_DIM = 10
HORIZON = 5
G_OPEN, G_CLOSED = 0.08, 0.0


# ------------------------------------------------------------------------------------------ plain Python
def test_chain_targets_respect_the_step_limit_and_the_joint_limits():
    rng = np.random.default_rng(0)
    for _ in range(200):
        q0 = rng.uniform(LO - 0.2, HI + 0.2)          # measured may be a little outside the limits
        deltas = rng.normal(0, 0.1, size=(8, 6))       # wilder than any policy output
        t = chain_targets(q0, deltas, LO, HI, D)
        steps = np.diff(np.vstack([q0, t]), axis=0)
        assert np.all(np.abs(steps) <= D + 1e-12)
        inside0 = (q0 >= LO) & (q0 <= HI)
        assert np.all((t[:, inside0] >= LO[inside0] - 1e-12) & (t[:, inside0] <= HI[inside0] + 1e-12))
        # a joint that started outside never moves further out
        dist0 = np.maximum(LO - q0, q0 - HI).clip(0)
        assert np.all(np.maximum(LO - t, t - HI).clip(0) <= dist0 + 1e-12)
    # within the limits and the step bound the chain is the plain sum of the deltas
    d = np.full((4, 6), 0.01)
    assert np.allclose(chain_targets(np.zeros(6), d, LO, HI, D), np.cumsum(d, axis=0))


def test_gripper_scale_and_interface_names():
    s = GripperScale(closed=0.0, open=0.08)
    assert s.to_position(0.0) == 0.0 and s.to_position(1.0) == 0.08 and s.to_position(7.0) == 0.08
    assert abs(s.to_command(0.04) - 0.5) < 1e-12
    inv = GripperScale(closed=1.0, open=-1.0)   # drivers that close towards positive values
    assert inv.to_position(1.0) == -1.0 and inv.to_command(1.0) == 0.0
    with pytest.raises(ValueError):
        GripperScale(0.5, 0.5)
    with pytest.raises(ValueError, match='command_interface'):
        check_interfaces('effort', 'none')
    with pytest.raises(ValueError, match='gripper_interface'):
        check_interfaces('joint_state', 'gripper_action')


# ------------------------------------------------------------------------------------------ real processes
def run_graph(tmp: Path, params: dict, robot_cfg: dict, op_topics: dict, until, seconds: float = 90):
    env = ros_env()
    path, _, _ = make_actor(tmp, STATE_DIM + 7, 7, horizon=HORIZON)
    robot_cfg.setdefault('g0', G_OPEN)  # the gripper joint in its own units (open)
    robot = standin(tmp, env, joints=SIM_JOINTS, q0=SIM_HOME, state_dim=STATE_DIM, **robot_cfg)
    policy = Proc(tmp, 'policy', env, params=policy_params(initial_weights=str(path), gripper_closed=G_CLOSED,
                                                           gripper_open=G_OPEN, **params))
    procs = [robot, policy]
    old = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ.update(ROS_DOMAIN_ID=env['ROS_DOMAIN_ID'], ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    op = Operator(procs, **op_topics)
    try:
        assert op.spin(seconds, lambda: until(op)), f'not enough commands:\n{policy.text()[-3000:]}'
        return op, policy.text()
    finally:
        op.close()
        for p in procs:
            p.stop()
        os.environ.update({k: v for k, v in old.items() if v is not None})


def acted(op):
    return [t for _, t in op.got['tr'] if not t.final_observation and not t.intervention]


def test_forward_position_controller_and_float64_gripper(tmp_path):
    fwd, grip = 'forward_position_controller/commands', 'gripper_controller/commands'
    op, log = run_graph(tmp_path, dict(command_interface='forward_position', gripper_interface='float64_array'),
                        dict(forward_topic=fwd, gripper_topic=grip, g0=G_OPEN),
                        dict(forward_topic=fwd, gripper_topic=grip), lambda op: len(acted(op)) >= 30)
    assert not op.got['cmd'], 'joint_commands must stay silent with forward_position + float64_array'
    cmds = [(t, m) for t, m in op.got['fwd']]
    grips = [m.data[0] for _, m in op.got['grip']]
    assert all(len(m.data) == 6 for _, m in cmds)
    assert all(G_CLOSED - 1e-9 <= g <= G_OPEN + 1e-9 for g in grips)
    # every acting step: its command is clip(measured + delta) and its gripper the scaled command
    checked = 0
    fwd_vals = [np.array(m.data) for _, m in cmds]
    for t in acted(op):
        q, a = np.array(t.proprio[:6], np.float64), np.array(t.action)
        want = np.clip(q + a[:6], LO, HI)
        match = [v for v in fwd_vals if np.allclose(v, want, atol=1e-5)]
        assert match, f'no Float64MultiArray command equals the step target {want}'
        assert np.all(np.abs(match[0] - q) <= D + 1e-5)
        assert any(abs(g - a[6] * G_OPEN) < 1e-6 for g in grips)
        checked += 1
    assert checked >= 30
    # the stand-in integrated the commands: the arm moved away from home
    js = [np.array(m.position[:6]) for _, m in op.got['js']]
    assert max(np.abs(q - np.array(SIM_HOME)).max() for q in js) > 1e-3   # (an episode end homes it again)
    assert 'forward_position' in log


def test_joint_trajectory_per_chunk(tmp_path):
    # trajectory_msgs comes with ros-trajectory-msgs (scripts/requirements.txt must list it; a ROS machine has it)
    pytest.importorskip('trajectory_msgs', reason='ros-trajectory-msgs not installed in this venv')
    traj_topic = 'joint_trajectory_controller/joint_trajectory'
    op, log = run_graph(tmp_path, dict(command_interface='joint_trajectory', gripper_interface='joint_state'),
                        dict(trajectory_topic=traj_topic), dict(trajectory_topic=traj_topic),
                        lambda op: len(op.got['traj']) >= 12)
    trajs = [m for _, m in op.got['traj']]
    chunks = {(c.episode_id, c.step_index): c for _, c in op.got['chunk']}
    starts = {(t.episode_id, t.step_index): t for t in acted(op) if t.chunk_step == 0}
    full = [m for m in trajs if len(m.points) > 1]
    assert len(full) >= 8, f'{len(full)} multi-point trajectories of {len(trajs)}'
    for m in trajs:
        assert list(m.joint_names) == SIM_JOINTS
        assert m.header.stamp.sec == 0 and m.header.stamp.nanosec == 0   # start on receipt
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in m.points]
        assert np.allclose(times, [(k + 1) / 15.0 for k in range(len(times))], atol=1e-6)
        pts = np.array([p.positions for p in m.points])
        assert np.all(np.abs(np.diff(pts, axis=0)) <= D + 1e-9) and np.all((pts >= LO) & (pts <= HI))
    # each chunk's trajectory is the max_joint_delta chain of that chunk's deltas from the measured position
    matched = 0
    for key, t in starts.items():
        c = chunks.get(key)
        if c is None:
            continue
        plan = np.array(c.data, np.float64).reshape(c.horizon, c.action_dim)
        q = np.array(t.proprio[:6], np.float64)
        want = chain_targets(q, plan[:, :6], LO, HI, D)
        hit = [m for m in full if len(m.points) == HORIZON
               and np.allclose([p.positions for p in m.points], want, atol=1e-4)]
        if hit:
            matched += 1
            assert np.all(np.abs(np.array(hit[0].points[0].positions) - q) <= D + 1e-4)
    assert matched >= 6, f'only {matched} of {len(starts)} chunks matched a trajectory'
    # one trajectory per chunk (plus one-point holds), not one per tick
    assert len(trajs) <= len(starts) + len(op.events()) + 5
    # the gripper still goes per tick, as a JointState entry of its own (scaled)
    gripper_cmds = [m for _, m in op.got['cmd']]
    assert gripper_cmds and all(list(m.name) == ['gripper'] for m in gripper_cmds)
    assert all(G_CLOSED - 1e-9 <= m.position[0] <= G_OPEN + 1e-9 for m in gripper_cmds)
    js = [np.array(m.position[:6]) for _, m in op.got['js']]
    # the stand-in followed the trajectories (at some point; an episode end homes the arm again)
    assert max(np.abs(q - np.array(SIM_HOME)).max() for q in js) > 1e-3
    stamps = [stamp_s(m.header.stamp) for m in gripper_cmds]
    assert stamps == sorted(stamps)
