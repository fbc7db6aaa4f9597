"""collect_demos writes the documented episode dataset (docs/architecture.md)."""
import json
import subprocess
import sys

import numpy as np
import pytest

from poco_sim.collect import main, run_expert_episode
from poco_sim.envs import STATE_DIM, make_env
from poco_sim.expert import ScriptedExpert

BASE_KEYS = {'proprio', 'actions', 'rewards', 'terminal', 'success'}


def load(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def check_episode(ep, mode, size=None, state_dim=STATE_DIM):
    L = ep['actions'].shape[0]
    assert L >= 1
    assert set(ep) == BASE_KEYS | ({'front', 'wrist'} if mode == 'pixels' else {'state'})
    assert ep['actions'].shape == (L, 7) and ep['actions'].dtype == np.float32
    assert ep['proprio'].shape == (L + 1, 7) and ep['proprio'].dtype == np.float32
    assert ep['rewards'].shape == (L,) and ep['rewards'].dtype == np.float32
    assert ep['terminal'].shape == () and ep['terminal'].dtype == bool
    assert ep['success'].shape == () and ep['success'].dtype == bool
    assert np.all(np.abs(ep['actions'][:, :6]) <= 0.05 + 1e-6), 'physical units, |delta| <= max_joint_delta'
    assert np.all((ep['actions'][:, 6] >= 0) & (ep['actions'][:, 6] <= 1))
    assert ep['rewards'].sum() == float(ep['success'])  # sparse: 1 on the success step
    if ep['success']:
        assert ep['terminal'] and ep['rewards'][-1] == 1.0
    if mode == 'pixels':
        for cam in ('front', 'wrist'):
            assert ep[cam].shape == (L + 1, size, size, 3) and ep[cam].dtype == np.uint8
    else:
        assert ep['state'].shape == (L + 1, state_dim) and ep['state'].dtype == np.float32


def test_run_expert_episode_is_reproducible():
    env = make_env('peg_insert', 'state', seed=0)
    ex = ScriptedExpert(env, noise_std=0.1, recovery_prob=0.05)
    a = run_expert_episode(env, ex, seed=42)
    b = run_expert_episode(env, ex, seed=42)
    check_episode(a, 'state', state_dim=env.state_dim)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # proprio[t+1] follows actions[t]: the first joint moves roughly by the commanded delta.
    dq = a['proprio'][1:, :6] - a['proprio'][:-1, :6]
    assert np.corrcoef(dq[:, 1], a['actions'][:, 1])[0, 1] > 0.8


def test_cli_pixels_dataset(tmp_path):
    out = tmp_path / 'pick'
    assert main(['--task', 'pick_cube', '--obs-mode', 'pixels', '--episodes', '2', '--image-size', '32',
                 '--out', str(out), '--seed', '5']) == 0
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['task'] == 'pick_cube' and meta['obs_mode'] == 'pixels' and meta['image_size'] == 32
    assert meta['cameras'] == ['front', 'wrist'] and meta['max_joint_delta'] == 0.05
    assert meta['num_episodes'] == 2
    files = sorted(p.name for p in out.iterdir())
    assert files == ['episode_000000.npz', 'episode_000001.npz', 'meta.json'], 'no temp files may remain'
    eps = [load(out / f) for f in files[:2]]
    for ep in eps:
        check_episode(ep, 'pixels', 32)
        assert ep['success'], 'the noiseless expert should succeed'
    assert not np.array_equal(eps[0]['front'][0], eps[1]['front'][0]), 'episodes use different seeds'
    # Appending continues the numbering; a different task in the same directory is refused.
    assert main(['--task', 'pick_cube', '--obs-mode', 'pixels', '--episodes', '1', '--image-size', '32',
                 '--out', str(out), '--seed', '6']) == 0
    assert (out / 'episode_000002.npz').exists()
    assert json.loads((out / 'meta.json').read_text())['num_episodes'] == 3
    assert main(['--task', 'peg_insert', '--obs-mode', 'pixels', '--episodes', '1', '--image-size', '32',
                 '--out', str(out)]) == 1


def test_cli_state_only_success(tmp_path):
    out = tmp_path / 'peg'
    assert main(['--task', 'peg_insert', '--obs-mode', 'state', '--episodes', '4', '--out', str(out),
                 '--noisy', '--only-success', '--seed', '1']) == 0
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['num_episodes'] == 4 and meta['num_success'] == 4 and meta['expert']['noise_std'] > 0
    assert meta['state_dim'] == STATE_DIM + 3  # peg_insert's extra goal_minus_object
    for i in range(4):
        ep = load(out / f'episode_{i:06d}.npz')
        check_episode(ep, 'state', state_dim=meta['state_dim'])
        assert ep['success']


def test_dataset_reader_accepts_it(tmp_path):
    """The learner's reader (another package) must load what collect_demos writes."""
    dataset = pytest.importorskip('poco_learner.dataset')
    out = tmp_path / 'd'
    assert main(['--task', 'pick_cube', '--obs-mode', 'state', '--episodes', '2', '--out', str(out)]) == 0
    dataset.read_meta(out)
    eps = list(dataset.iter_episodes(out))
    assert [i for i, _ in eps] == [0, 1]


def test_console_entry_point(tmp_path):
    out = tmp_path / 'cli'
    r = subprocess.run([sys.executable, '-m', 'poco_sim.collect', '--task', 'pick_cube', '--obs-mode', 'state',
                        '--episodes', '1', '--out', str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (out / 'episode_000000.npz').exists()
