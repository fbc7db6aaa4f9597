"""Env API, determinism, bounding box and success detection (plain Python, no ROS)."""
import gymnasium
import numpy as np
import pytest

import poco_sim  # noqa: F401  (registers the gymnasium ids)
from poco_sim import envs as E
from poco_sim.envs import STATE_DIM, make_env

TASKS = ('pick_cube', 'peg_insert')
GRIP_OPEN = {'pick_cube': 1.0, 'peg_insert': 0.0}  # keep the pre-grasped peg


def rollout(env, actions):
    out = []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        out.append((obs, r, term, trunc, info))
    return out


@pytest.mark.parametrize('task', TASKS)
def test_state_mode_api(task):
    env = make_env(task, 'state', seed=0)
    obs, info = env.reset(seed=3)
    assert set(obs) == {'state', 'proprio'}
    assert obs['state'].shape == (env.state_dim,) and obs['state'].dtype == np.float32
    assert env.state_dim == STATE_DIM + (3 if task == 'peg_insert' else 0)
    if task == 'peg_insert':  # the extra feature is the hole relative to the peg
        s = obs['state']
        np.testing.assert_allclose(s[20:23], s[17:20] - s[0:3], atol=1e-6)
    assert obs['proprio'].shape == (7,) and obs['proprio'].dtype == np.float32
    assert env.observation_space.contains(obs)
    assert set(info) >= {'success', 'ee_pos', 'bbox_violation', 'joint_pos'}
    assert info['ee_pos'].shape == (3,) and info['joint_pos'].shape == (6,)
    assert not info['success'] and not info['bbox_violation']
    assert env.action_space.shape == (7,)
    assert np.allclose(env.action_space.high[:6], 0.05) and env.action_space.high[6] == 1.0
    assert env.joint_names == ['joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'joint6', 'gripper']
    pos, quat = env.ee_pose()
    assert np.allclose(pos, info['ee_pos']) and abs(np.linalg.norm(quat) - 1) < 1e-6
    fk_pos, fk_quat = env.forward_kinematics(info['joint_pos'])
    assert np.allclose(fk_pos, pos, atol=1e-9) and np.allclose(fk_quat, quat, atol=1e-9)
    # The tool points down at the home pose: the quaternion rotates +z to -z.
    m = np.empty(9)
    import mujoco
    mujoco.mju_quat2Mat(m, quat)
    assert m.reshape(3, 3)[2, 2] < -0.99
    assert 0.0 <= obs['proprio'][6] <= 1.0
    assert env.max_steps == 100


def test_pixels_mode_api():
    env = make_env('pick_cube', 'pixels', image_size=48, seed=0)
    try:
        obs, _ = env.reset(seed=0)
        assert set(obs) == {'front', 'wrist', 'proprio'}
        for cam in ('front', 'wrist'):
            img = obs[cam]
            assert img.shape == (48, 48, 3) and img.dtype == np.uint8
            assert img.std() > 5, f'{cam} image is blank'
        assert not np.array_equal(obs['front'], obs['wrist'])
        obs2, *_ = env.step(np.array([0.05, 0, 0, 0, 0, 0, 1.0]))
        assert not np.array_equal(obs['front'], obs2['front']), 'front camera should see the arm move'
        assert env.observation_space.contains(obs2)
    finally:
        env.close()


def test_registered_ids():
    env = gymnasium.make('poco_sim/PegInsert-v0', obs_mode='state', seed=1)
    try:
        obs, info = env.reset(seed=1)
        assert env.unwrapped.task == 'peg_insert' and 'state' in obs
        obs, r, term, trunc, info = env.step(env.action_space.sample() * 0 + np.r_[np.zeros(6), 0.0])
        assert r == 0.0 and not term
    finally:
        env.close()
    assert gymnasium.spec('poco_sim/PickCube-v0').kwargs['task'] == 'pick_cube'


@pytest.mark.parametrize('task', TASKS)
def test_reset_seed_is_deterministic(task):
    a, b = make_env(task, 'state', seed=0), make_env(task, 'state', seed=123)
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    assert np.array_equal(oa['state'], ob['state']) and np.array_equal(oa['proprio'], ob['proprio'])
    oc, _ = a.reset(seed=8)
    assert not np.allclose(oa['state'][:3], oc['state'][:3]), 'a different seed must move the object'
    # Same seed + same actions -> bit-identical trajectories.
    rng = np.random.default_rng(0)
    acts = [np.r_[rng.uniform(-0.05, 0.05, 6), GRIP_OPEN[task]] for _ in range(15)]
    a.reset(seed=7)
    b.reset(seed=7)
    ta, tb = rollout(a, acts), rollout(b, acts)
    for (oa, *_), (ob, *_) in zip(ta, tb):
        assert np.array_equal(oa['state'], ob['state']) and np.array_equal(oa['proprio'], ob['proprio'])
    # Unseeded resets follow the constructor seed's sequence.
    c, d = make_env(task, 'state', seed=5), make_env(task, 'state', seed=5)
    for _ in range(3):
        assert np.array_equal(c.reset()[0]['state'], d.reset()[0]['state'])


def test_object_range_bounds_the_layout():
    env = make_env('pick_cube', 'state', object_range=0.02, seed=0)
    xs = np.array([env.reset(seed=s)[0]['state'][:2] for s in range(30)])
    c = np.array(E.TASKS['pick_cube'].object_center)
    assert np.all(np.abs(xs - c) <= 0.02 + 1e-6)
    assert np.ptp(xs[:, 0]) > 0.01, 'the cube xy must actually vary'
    env0 = make_env('pick_cube', 'state', object_range=0.0, seed=0)
    assert np.allclose(env0.reset(seed=1)[0]['state'][:2], c)


def test_action_bounds_and_targets():
    env = make_env('pick_cube', 'state', seed=0)
    env.reset(seed=0)
    q0 = env.joint_positions()
    env.step(np.array([1.0, -1.0, 0, 0, 0, 0, 1.0]))  # deltas beyond the bound are clipped to +-0.05
    dq = env.joint_positions() - q0
    assert 0.03 < dq[0] <= 0.0501 and -0.0501 <= dq[1] < -0.03
    with pytest.raises(ValueError):
        env.step(np.array([np.nan, 0, 0, 0, 0, 0, 1.0]))
    with pytest.raises(ValueError):
        env.step(np.zeros(6))
    # Absolute targets are clipped to the joint limits.
    env.step_targets(np.array([10.0, 0.41, 1.89, 0, 0.84, 0]), 1.0)
    assert env.data.ctrl[env._arm_act][0] == pytest.approx(env.joint_limits[0, 1])
    # hold(): the arm stays where it is.
    env.reset(seed=0)
    for _ in range(3):
        env.step(np.array([0.05, 0.03, 0, 0, 0, 0, 1.0]))
    q1 = env.joint_positions()
    for _ in range(5):
        env.hold()
    assert np.max(np.abs(env.joint_positions() - q1)) < 0.01


def test_joint_targets_are_tracked():
    env = make_env('pick_cube', 'state', seed=0)
    env.reset(seed=0)
    q0 = env.joint_positions()
    target = q0 + np.array([0.05, -0.05, 0.05, 0.05, 0.05, 0.05])
    env.step_targets(target, 1.0)
    moved = (env.joint_positions() - q0) / 0.05 * np.sign(target - q0)
    assert np.all(moved > 0.8), f"servos too soft: {moved}"  # one tick (ramped set-point) reaches >80 % of a max step
    env.step_targets(target, 1.0)
    assert np.max(np.abs(env.joint_positions() - target)) < 0.003


def test_bbox_violation_reported():
    env = make_env('pick_cube', 'state', seed=0)
    _, info = env.reset(seed=0)
    assert not info['bbox_violation']
    # Drive joint 2 forward/down until the TCP leaves a box whose x-max is 50 cm.
    tight = make_env('pick_cube', 'state', seed=0, bbox_cm=(15, 50, -40, 40, 0, 60))
    _, info = tight.reset(seed=0)
    assert not info['bbox_violation']
    seen = False
    for _ in range(20):
        _, _, _, _, info = tight.step(np.array([0, 0.05, -0.03, 0, 0, 0, 1.0]))
        if info['ee_pos'][0] > 0.5:
            assert info['bbox_violation']
            seen = True
            break
        assert not info['bbox_violation']
    assert seen, 'the TCP never crossed x = 50 cm'


def test_pick_success_needs_a_held_lifted_cube():
    env = make_env('pick_cube', 'state', seed=0)
    env.reset(seed=0)
    # Cube teleported 10 cm up but not in the gripper: falls, never a success.
    p, q = env.object_pose()
    env._set_object(p + [0, 0, 0.1], q)
    for _ in range(5):
        _, r, term, _, info = env.step(np.r_[np.zeros(6), 1.0])
        assert r == 0.0 and not term and not info['success']
    # Cube placed between the open fingers, gripper closed, arm raised: success, reward 1 exactly once.
    env.reset(seed=0)
    ee, _ = env.ee_pose()
    env._set_object(ee, q)
    rewards, terms = [], []
    for _ in range(6):
        _, r, term, trunc, info = env.step(np.r_[0, -0.02, 0, 0, 0, 0, 0.0])
        rewards.append(r)
        terms.append(term)
    assert sum(rewards) == 1.0 and terms[-1] and info['success']


def test_peg_success_only_when_inserted():
    env = make_env('peg_insert', 'state', seed=0)
    obs, _ = env.reset(seed=0)
    assert 0.2 < obs['proprio'][6] < 0.4, 'the peg starts grasped (opening ~ peg width)'
    hole = env.goal_pos
    _, q = env.object_pose()
    # Peg resting on top of the block next to the hole: not inserted.
    env._set_object(hole + [0.03, 0.0, E.PEG_HALF_LEN + 0.001], q)
    env.step(np.r_[np.zeros(6), 1.0])
    assert not env.succeeded
    # Peg dropped into the hole: success.
    env.reset(seed=0)
    env._set_object(hole + [0, 0, -E.HOLE_TOP + E.PEG_HALF_LEN + 0.002], q)
    _, r, term, _, info = env.step(np.r_[np.zeros(6), 1.0])
    assert r == 1.0 and term and info['success']


def test_truncation_at_max_steps():
    env = make_env('pick_cube', 'state', max_steps=5, seed=0)
    env.reset(seed=0)
    for i in range(5):
        _, _, term, trunc, _ = env.step(np.r_[np.zeros(6), 1.0])
        assert not term
        assert trunc == (i == 4)
