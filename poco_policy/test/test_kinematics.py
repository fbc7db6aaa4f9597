"""The safety box's end-effector position (poco_policy/kinematics.py) and that the box is never silently off.

- the sim arm's URDF (poco_bringup/config/poco_arm.urdf, what robot.yaml names) gives the same end-effector
  position as the sim's MuJoCo arm (poco_sim/poco_sim/assets/arm_scene.xml, its `ee` site) for random joints;
- a description with meshes nobody has (package:// URIs) and a fixed tool link still loads;
- EndEffector: description first; topic poses only in the base frame and while fresh; unknown -> None + why;
- real processes: the policy node with neither a description nor a pose holds the arm and reports why (log,
  /diagnostics at ERROR); a pose in another frame is dropped; a fresh pose lets it act; silence holds again.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _arm_helpers import (ARM7_URDF, ARM_URDF, ROOT, SIM_HOME, SIM_JOINTS, Operator, Proc, make_actor,  # noqa: E402
                          policy_params, ros_env, standin)

from poco_policy.kinematics import EndEffector, UrdfKinematics, resolve_path  # noqa: E402
from poco_policy.runtime import Safety, SafetyLimits  # noqa: E402

MJCF = ROOT / 'poco_sim' / 'poco_sim' / 'assets' / 'arm_scene.xml'
STATE_DIM = 10


def test_sim_arm_urdf_matches_the_mujoco_arm():
    mujoco = pytest.importorskip('mujoco')
    m = mujoco.MjModel.from_xml_path(str(MJCF))
    d = mujoco.MjData(m)
    fk = UrdfKinematics.from_file(str(ARM_URDF), SIM_JOINTS, 'ee', 'base_link')
    assert np.allclose(fk.lower, [m.jnt_range[m.joint(j).id][0] for j in SIM_JOINTS])
    assert np.allclose(fk.upper, [m.jnt_range[m.joint(j).id][1] for j in SIM_JOINTS])
    rng = np.random.default_rng(0)
    for q in [np.array(SIM_HOME)] + [rng.uniform(fk.lower, fk.upper) for _ in range(100)]:
        for j, v in zip(SIM_JOINTS, q):
            d.qpos[m.jnt_qposadr[m.joint(j).id]] = v
        mujoco.mj_kinematics(m, d)
        want = d.site('ee').xpos - d.body('base_link').xpos
        assert np.allclose(fk.ee_position(q), want, atol=1e-9), (q, fk.ee_position(q), want)


def test_descriptions_with_meshes_tool_links_and_other_bases():
    j7 = [f'a7_joint{i}' for i in range(1, 8)]
    fk = UrdfKinematics.from_file(str(ARM7_URDF), j7, 'tcp', 'a7_base')
    home = np.array([0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8])
    p = fk.ee_position(home)
    assert np.allclose(p, [0.483, 0.0, 0.423], atol=2e-3)
    # the same point seen from link l1 (rotated by joint 1 about z, 0.333 m up): base_frame is honoured
    from_l1 = UrdfKinematics.from_file(str(ARM7_URDF), j7, 'tcp', 'l1')
    q = home.copy()
    q[0] = np.pi / 2
    c = from_l1.ee_position(q)
    assert np.allclose(c, p - [0, 0, 0.333], atol=1e-9)   # joint 1 turns l1 and the arm alike
    with pytest.raises(ValueError, match='no joints'):
        UrdfKinematics.from_file(str(ARM7_URDF), j7[:6] + ['nope'], 'tcp')
    with pytest.raises(ValueError, match="no link 'tool0'"):
        UrdfKinematics.from_file(str(ARM7_URDF), j7, 'tool0')
    with pytest.raises(ValueError, match='not a URDF'):
        UrdfKinematics('<mujoco/>', j7, 'tcp')
    with pytest.raises(ValueError):
        fk.ee_position(np.zeros(6))
    assert resolve_path('package://poco_bringup/config/poco_arm.urdf').endswith('poco_bringup/config/poco_arm.urdf')
    assert Path(resolve_path('package://poco_bringup/config/poco_arm.urdf')).exists()


def test_end_effector_sources_and_the_box_is_never_off():
    box = Safety(SafetyLimits(np.full(6, -3.0), np.full(6, 3.0), np.array([0.15, -0.4, 0.0]),
                              np.array([0.75, 0.4, 0.6]), 0.5))
    assert box.ee_outside(None)                      # unknown is never "inside"
    topic = EndEffector(None, 'base_link', 0.5)
    pos, why = topic.position(np.zeros(6), now=10.0)
    assert pos is None and 'no robot_description_file' in why
    assert topic.on_pose(np.array([0.4, 0.0, 0.3]), 'tool0', 10.0) == 'wrong frame'
    assert topic.on_pose(np.array([np.nan, 0.0, 0.3]), 'base_link', 10.0) == 'non-finite'
    assert topic.on_pose(np.array([0.4, 0.0, 0.3]), 'base_link', 10.0) is None
    pos, why = topic.position(None, now=10.2)
    assert np.allclose(pos, [0.4, 0.0, 0.3]) and why == '' and not box.ee_outside(pos)
    pos, why = topic.position(None, now=10.6)
    assert pos is None and '0.60 s old' in why
    assert topic.target_position(np.zeros(6)) is None   # no description: targets cannot be checked ahead
    fk = EndEffector(UrdfKinematics.from_file(str(ARM_URDF), SIM_JOINTS, 'ee', 'base_link'), 'base_link', 0.5)
    pos, _ = fk.position(np.array(SIM_HOME), now=0.0)
    assert not box.ee_outside(pos)
    assert fk.position(None, now=0.0)[0] is None
    assert box.ee_outside(fk.target_position(np.array([0.0, 1.5, 0.0, 0.0, 0.0, 0.0])))  # arm stretched forward


@pytest.fixture(scope='module')
def blind(tmp_path_factory):
    """The policy node with no robot_description_file and nobody publishing ee_pose."""
    pytest.importorskip('rclpy')
    tmp = tmp_path_factory.mktemp('blind')
    env = ros_env()
    path, _, _ = make_actor(tmp, STATE_DIM + 7, 7)
    robot = standin(tmp, env, joints=SIM_JOINTS, q0=SIM_HOME, state_dim=STATE_DIM)
    policy = Proc(tmp, 'policy', env, params=policy_params(initial_weights=str(path), robot_description_file='',
                                                           max_episode_steps=100000))
    procs = [robot, policy]
    old = {k: os.environ.get(k) for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE')}
    os.environ.update(ROS_DOMAIN_ID=env['ROS_DOMAIN_ID'], ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    op = None
    try:
        op = Operator(procs)
        yield op, policy
    finally:
        if op is not None:
            op.close()
        for p in procs:
            p.stop()
        os.environ.update({k: v for k, v in old.items() if v is not None})
        print(f'----- policy log (tail) -----\n{policy.text()[-2500:]}')


def test_no_ee_pose_and_no_description_holds_and_reports(blind):
    op, policy = blind
    from geometry_msgs.msg import PoseStamped
    assert op.spin(90, lambda: op.events(op.EpisodeEvent.START)), f'no episode:\n{policy.text()[-2000:]}'
    assert op.spin(10, lambda: 'safety box: end-effector position unknown' in policy.text())
    assert op.spin(5, lambda: op.diag.get('box_state', '').startswith('holding')), op.diag
    assert op.diag_level == b'\x02' and 'safety box' in op.diag_message       # ERROR on /diagnostics
    assert op.diag['box_source'].startswith('topic:') and 'no robot_description_file' in op.diag['box_state']
    # holding: no step is taken (no transitions) and every command is the measured position
    assert not [t for _, t in op.got['tr'] if not t.final_observation]
    js = np.array(op.got['js'][-1][1].position[:6])
    assert np.allclose(op.got['cmd'][-1][1].position[:6], js, atol=1e-5)

    def pose(frame: str, z: float = 0.3):
        m = PoseStamped()
        m.header.frame_id = frame
        m.header.stamp = op.node.get_clock().now().to_msg()
        m.pose.position.x, m.pose.position.z = 0.4, z
        return m
    # a pose in another frame is dropped and counted: still holding
    assert op.spin(5, lambda: op.ee_pose.publish(pose('tool0')) or 'dropped/ee_pose: wrong frame' in op.diag)
    assert not [t for _, t in op.got['tr'] if not t.final_observation]
    # fresh poses in base_frame: the policy acts
    assert op.spin(20, lambda: op.ee_pose.publish(pose('base_link')) or len(
        [t for _, t in op.got['tr'] if not t.final_observation]) >= 10), policy.text()[-2000:]
    # silence: after staleness_s it holds again and says so
    n = len(op.got['tr'])
    op.spin(1.5)
    k = len(op.got['tr'])
    op.spin(1.0)
    assert len(op.got['tr']) == k and k - n <= 12   # stopped acting within ~0.5 s (7-8 ticks) of the last pose
    assert op.diag.get('box_state', '').startswith('holding') and 'old' in op.diag['box_state'], op.diag
    # a pose outside the box ends the episode
    n_fail = len(op.events(op.EpisodeEvent.FAILURE))
    assert op.spin(10, lambda: op.ee_pose.publish(pose('base_link', z=2.0)) or
                   len(op.events(op.EpisodeEvent.FAILURE)) > n_fail)
    assert 'left the box' in op.events(op.EpisodeEvent.FAILURE)[-1].detail
