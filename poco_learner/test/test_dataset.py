"""Episode dataset: round trip, validation with clear errors, atomic writes, loading into a ReplayBuffer."""
import json
import os

import numpy as np
import pytest

from poco_learner import dataset as ds
from poco_learner.buffer import BufferConfig, ReplayBuffer
from poco_learner.dataset import (DatasetError, iter_episodes, load_into_buffer, read_meta, write_episode,
                                  write_meta)
from poco_policy.encoder import EncoderConfig
from poco_policy.observation import ActionScaler, ObservationAssembler, ObservationConfig

SIZE = 32


def meta(mode='pixels', **kw):
    return {'task': 'pick_cube', 'obs_mode': mode, 'image_size': SIZE, 'cameras': ['front', 'wrist'],
            'max_joint_delta': 0.05, **kw}


def episode(L, mode='pixels', seed=0, terminal=True, success=True, intervention=False):
    rng = np.random.default_rng(seed)
    ep = {'proprio': rng.uniform(-1, 1, (L + 1, 7)).astype(np.float32),
          'actions': np.concatenate([rng.uniform(-0.05, 0.05, (L, 6)), rng.uniform(0, 1, (L, 1))], 1),
          'rewards': (np.arange(L) == L - 1).astype(np.float32) * float(success),
          'terminal': terminal, 'success': success}
    if mode == 'pixels':
        ep['front'] = rng.integers(0, 256, (L + 1, SIZE, SIZE, 3), dtype=np.uint8)
        ep['wrist'] = rng.integers(0, 256, (L + 1, SIZE, SIZE, 3), dtype=np.uint8)
    else:
        ep['state'] = rng.normal(size=(L + 1, 5)).astype(np.float32)
    if intervention:
        ep['intervention'] = np.arange(L) % 2 == 0
    return ep


def test_round_trip_and_order(tmp_path):
    write_meta(tmp_path, meta(extra_key='kept'))
    eps = {i: episode(3 + i, seed=i, intervention=i == 1) for i in (2, 0, 1)}
    for i, ep in eps.items():
        path = write_episode(tmp_path, i, ep)
        assert path.name == f'episode_{i:06d}.npz'
    assert read_meta(tmp_path)['extra_key'] == 'kept'
    assert ds.next_episode_index(tmp_path) == 3
    got = list(iter_episodes(tmp_path))
    assert [i for i, _ in got] == [0, 1, 2]
    for i, ep in got:
        for k, v in eps[i].items():
            np.testing.assert_array_equal(ep[k], v)
        assert ep['terminal'].dtype == bool and ep['front'].dtype == np.uint8
    assert 'intervention' in got[1][1] and 'intervention' not in got[0][1]
    # plain np.load with allow_pickle=False reads the files (the documented contract)
    with np.load(tmp_path / 'episode_000000.npz', allow_pickle=False) as z:
        assert set(z.files) == set(eps[0])


@pytest.mark.parametrize('mutate, match', [
    (lambda e: e.pop('rewards'), "missing array 'rewards'"),
    (lambda e: e.update(actions=np.zeros((4, 6))), 'actions must be'),
    (lambda e: e.update(proprio=np.zeros((4, 7))), "'proprio' must have shape \\(5, 7\\)"),
    (lambda e: e.update(rewards=np.array([0, np.nan, 0, 0])), 'non-finite'),
    (lambda e: e.update(terminal=np.array([True, False])), "'terminal' must be a scalar bool"),
    (lambda e: e.update(front=e['front'].astype(np.float32)), "camera 'front' must be uint8"),
    (lambda e: e.update(wrist=e['wrist'][:4]), "camera 'wrist' must be uint8 \\[L\\+1=5"),
    (lambda e: e.pop('wrist'), "missing camera array 'wrist'"),
    (lambda e: e.update(front=np.zeros((5, 16, 16, 3), np.uint8)), 'image_size=32'),
    (lambda e: e.update(intervention=np.zeros(3, bool)), 'intervention must be'),
])
def test_write_validates_with_clear_errors(tmp_path, mutate, match):
    write_meta(tmp_path, meta())
    ep = episode(4)
    mutate(ep)
    with pytest.raises(DatasetError, match=match):
        write_episode(tmp_path, 0, ep)
    assert not list(tmp_path.glob('*.npz')) and not list(tmp_path.glob('.*'))


def test_meta_validation(tmp_path):
    with pytest.raises(DatasetError, match="missing key 'cameras'"):
        write_meta(tmp_path, {k: v for k, v in meta().items() if k != 'cameras'})
    with pytest.raises(DatasetError, match='obs_mode'):
        write_meta(tmp_path, meta(mode='depth'))
    with pytest.raises(DatasetError, match='max_joint_delta'):
        write_meta(tmp_path, meta(max_joint_delta='big'))
    with pytest.raises(DatasetError, match='not found'):
        read_meta(tmp_path)
    (tmp_path / 'meta.json').write_text('{"task": ')
    with pytest.raises(DatasetError, match='invalid JSON'):
        read_meta(tmp_path)


def test_reader_rejects_pickle_and_corrupt_files(tmp_path):
    write_meta(tmp_path, meta(mode='state'))
    write_episode(tmp_path, 0, episode(3, mode='state'))
    # an object array can only be loaded with pickle: refused with a clear error
    bad = episode(3, mode='state')
    bad['state'] = np.array([None] * 4, dtype=object)
    np.savez(tmp_path / 'episode_000001.npz', **bad)
    with pytest.raises(DatasetError, match='pickle'):
        list(iter_episodes(tmp_path))
    os.remove(tmp_path / 'episode_000001.npz')
    data = (tmp_path / 'episode_000000.npz').read_bytes()
    (tmp_path / 'episode_000002.npz').write_bytes(data[: len(data) // 2])   # truncated file
    with pytest.raises(DatasetError, match='episode_000002.npz'):
        list(iter_episodes(tmp_path))


def test_atomic_write_leaves_nothing_on_crash(tmp_path, monkeypatch):
    write_meta(tmp_path, meta(mode='state'))
    good = episode(3, mode='state')
    write_episode(tmp_path, 0, good)
    before = (tmp_path / 'episode_000000.npz').read_bytes()

    def crash(f, **arrays):
        f.write(b'PK\x03\x04 half an archive')
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write

    monkeypatch.setattr(np, 'savez_compressed', crash)
    with pytest.raises(KeyboardInterrupt):
        write_episode(tmp_path, 0, episode(4, mode='state', seed=3))
    with pytest.raises(KeyboardInterrupt):
        write_episode(tmp_path, 1, good)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['episode_000000.npz', 'meta.json']
    assert (tmp_path / 'episode_000000.npz').read_bytes() == before
    # a temp file left by a hard kill is ignored by readers
    (tmp_path / '.episode_000005.npz.tmp-123').write_bytes(b'junk')
    assert [i for i, _ in iter_episodes(tmp_path)] == [0]


def test_load_into_buffer_state_mode(tmp_path):
    write_meta(tmp_path, meta(mode='state', state_dim=5))
    eps = [episode(4, 'state', seed=0, terminal=True, success=True),
           episode(3, 'state', seed=1, terminal=False, success=False, intervention=True)]
    for i, ep in enumerate(eps):
        write_episode(tmp_path, i, ep)
    asm = ObservationAssembler(ObservationConfig(obs_mode='state', state_dim=5))
    scaler = ActionScaler(0.05)
    buf = ReplayBuffer(BufferConfig(action_bound=1.0), asm.obs_dim, 7)
    assert load_into_buffer(tmp_path, buf, asm, scaler) == 2
    assert buf.num_demo_steps == 7 and buf.num_episodes == 2 and buf.num_successes == 1
    ids = buf.episode_ids()
    for eid, ep in zip(ids, eps):
        got = buf.get_episode(eid)
        np.testing.assert_allclose(got['obs'], np.concatenate([ep['state'], ep['proprio']], 1), atol=1e-6)
        np.testing.assert_allclose(got['actions'], scaler.normalize(ep['actions']), atol=1e-6)
        np.testing.assert_allclose(got['rewards'], ep['rewards'])
        assert got['terminal'] == ep['terminal'] and got['demo']
    np.testing.assert_array_equal(buf.get_episode(ids[1])['intervention'], eps[1]['intervention'])
    # loading again (e.g. after a learner restart with a persisted buffer) does not duplicate demos
    assert load_into_buffer(tmp_path, buf, asm, scaler) == 0 and buf.num_episodes == 2


def test_load_into_buffer_pixels_encodes_each_frame(tmp_path):
    write_meta(tmp_path, meta())
    ep = episode(3)
    write_episode(tmp_path, 0, ep)
    asm = ObservationAssembler(ObservationConfig(), EncoderConfig(image_size=SIZE, feature_dim=4))
    buf = ReplayBuffer(BufferConfig(), asm.obs_dim, 7)
    assert load_into_buffer(tmp_path, buf, asm, ActionScaler(), demo=False) == 1
    got = buf.get_episode(buf.episode_ids()[0])
    assert got['obs'].shape == (4, 2 * 4 + 7) and not got['demo']
    for t in range(4):
        want = asm.assemble({'front': ep['front'][t], 'wrist': ep['wrist'][t], 'proprio': ep['proprio'][t]})
        np.testing.assert_allclose(got['obs'][t], want, atol=1e-4)


def test_load_into_buffer_mismatches_and_bad_file_leave_buffer_unchanged(tmp_path):
    write_meta(tmp_path, meta(mode='state'))
    write_episode(tmp_path, 0, episode(3, 'state'))
    asm = ObservationAssembler(ObservationConfig(obs_mode='state', state_dim=5))
    buf = ReplayBuffer(BufferConfig(), asm.obs_dim, 7)
    pix = ObservationAssembler(ObservationConfig(), EncoderConfig(image_size=SIZE, feature_dim=4))
    with pytest.raises(DatasetError, match='obs_mode'):
        load_into_buffer(tmp_path, ReplayBuffer(BufferConfig(), pix.obs_dim, 7), pix, ActionScaler())
    with pytest.raises(ValueError, match='buffer'):
        load_into_buffer(tmp_path, ReplayBuffer(BufferConfig(), asm.obs_dim + 1, 7), asm, ActionScaler())
    wrong_state = ObservationAssembler(ObservationConfig(obs_mode='state', state_dim=4))
    with pytest.raises(ValueError, match='state'):
        load_into_buffer(tmp_path, ReplayBuffer(BufferConfig(), wrong_state.obs_dim, 7), wrong_state,
                         ActionScaler())
    # a corrupt second file: nothing from the first is added either
    with open(tmp_path / 'episode_000001.npz', 'wb') as f:
        f.write(b'garbage')
    with pytest.raises(DatasetError):
        load_into_buffer(tmp_path, buf, asm, ActionScaler())
    assert len(buf) == 0 and buf.episode_ids() == []
    json.loads((tmp_path / 'meta.json').read_text())
