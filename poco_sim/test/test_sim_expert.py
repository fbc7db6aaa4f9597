"""Scripted expert: success on a seeded sample (the 100-episode numbers: benchmarks/expert_success.py)."""
import numpy as np
import pytest

from poco_sim.envs import make_env
from poco_sim.expert import NOISY, ScriptedExpert

N_EPISODES = 20


def success_rate(task, n, seed0=1000, **expert_kw):
    env = make_env(task, 'state', seed=0)
    expert = ScriptedExpert(env, seed=0, **expert_kw)
    wins, max_abs = 0, 0.0
    for i in range(n):
        obs, info = env.reset(seed=seed0 + i)
        expert.reset(seed=seed0 + i)
        done = False
        while not done:
            a = expert.act(obs, info)
            assert a.shape == (7,) and a.dtype == np.float32
            assert 0.0 <= a[6] <= 1.0
            max_abs = max(max_abs, float(np.max(np.abs(a[:6]))))
            obs, r, term, trunc, info = env.step(a)
            done = term or trunc
        wins += bool(info['success'])
    return wins / n, max_abs


@pytest.mark.parametrize('task', ['pick_cube', 'peg_insert'])
def test_noiseless_expert_succeeds(task):
    rate, max_abs = success_rate(task, N_EPISODES)
    assert rate >= 0.9, f'{task}: noiseless expert success {rate:.0%} < 90%'
    assert max_abs <= 0.05 + 1e-6, 'expert actions must respect max_joint_delta'


@pytest.mark.parametrize('task', ['pick_cube', 'peg_insert'])
def test_noisy_preset_is_worse_but_not_hopeless(task):
    rate, max_abs = success_rate(task, N_EPISODES, **NOISY[task])
    assert 0.4 <= rate <= 0.95, f'{task}: noisy preset success {rate:.0%} outside the intended ~60-80% band'
    assert max_abs <= 0.05 + 1e-6


def test_expert_works_in_pixels_mode_and_from_received_observations():
    """Pixels obs carry no state: the expert falls back to the env's privileged state. Given an explicit
    {'state', 'proprio'} dict (what arrives over ROS) it must give the same action."""
    env = make_env('pick_cube', 'pixels', image_size=32, seed=0)
    try:
        obs, info = env.reset(seed=4)
        a_pix = ScriptedExpert(env).act(obs, info)
        a_state = ScriptedExpert(env).act({'state': env.state_vector(), 'proprio': obs['proprio']}, info)
        assert np.allclose(a_pix, a_state)
        assert np.any(np.abs(a_pix[:6]) > 1e-3), 'the expert should move towards the cube'
    finally:
        env.close()


def test_expert_does_not_disturb_the_simulation():
    env = make_env('peg_insert', 'state', seed=0)
    obs, info = env.reset(seed=2)
    qpos = env.data.qpos.copy()
    ScriptedExpert(env).act(obs, info)
    assert np.array_equal(qpos, env.data.qpos)


def test_perturbations_happen_and_are_recovered_from():
    env = make_env('pick_cube', 'state', seed=0)
    expert = ScriptedExpert(env, recovery_prob=0.15, seed=3)
    obs, info = env.reset(seed=11)
    perturbed = 0
    done = False
    while not done:
        obs, r, term, trunc, info = env.step(expert.act(obs, info))
        perturbed += expert.perturbing
        done = term or trunc
    assert perturbed >= 3
    assert info['success'], 'the expert should recover from perturbations within the step limit'
