"""ReplayBuffer: hand-computed n-step returns/discounts, episode boundaries, demo ratio, eviction, validation,
persistence (round trip, torn records, SIGKILL of a writer process, compaction)."""
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from poco_learner.buffer import LOG_NAME, BufferConfig, ReplayBuffer

D, A = 3, 2


def obs_of(ep, t):
    """Observation that identifies (episode, step): lets tests check which rows a sample came from."""
    return np.array([ep, t, 0.5], np.float32)


def act_of(ep, t):
    return np.array([ep / 100.0, t / 100.0], np.float32)


def add(buf, ep, rewards, terminal, success=False, demo=False, stream=False, intervention=None, eid=None):
    """Episode with code `ep` in its obs/actions, stored under id `eid` (default: ep)."""
    L = len(rewards)
    eid = ep if eid is None else eid
    if stream:
        for t in range(L):
            buf.add_step(eid, obs_of(ep, t), act_of(ep, t), rewards[t], demo=demo,
                         intervention=bool(intervention[t]) if intervention is not None else False)
        buf.end_episode(eid, obs_of(ep, L), terminal, success)
    else:
        buf.add_episode(np.stack([obs_of(ep, t) for t in range(L + 1)]), np.stack([act_of(ep, t) for t in range(L)]),
                        np.asarray(rewards, np.float32), terminal, success, demo=demo, intervention=intervention,
                        episode_id=eid)


def samples_by_start(buf, T, gamma, n=3000, seed=0):
    s = buf.sample(n, T, gamma, np.random.default_rng(seed))
    out = {}
    for i in range(n):
        key = (int(s['obs'][i, 0]), int(s['obs'][i, 1]))
        out.setdefault(key, {k: v[i] for k, v in s.items()})
    return out


# ------------------------------------------------------------------------------------------ n-step semantics
def test_hand_computed_returns_and_discounts_terminal_and_truncated():
    buf = ReplayBuffer(BufferConfig(), D, A)
    add(buf, 1, [0.0, 0.0, 1.0], terminal=True, success=True)          # success at the last step
    add(buf, 2, [1.0, 0.0, 0.0, 2.0], terminal=False, stream=True)     # timeout: bootstrap from the final obs
    # T = 2, gamma = 0.5.  expected: (ep, t) -> (returns, discount, next_obs step, valid)
    expected = {
        (1, 0): (0.0, 0.25, 2, [1, 1]),          # window inside the episode: bootstrap gamma^2 even if terminal later
        (1, 1): (0.0 + 0.5 * 1.0, 0.0, 3, [1, 1]),  # window reaches the terminal end: no bootstrap
        (1, 2): (1.0, 0.0, 3, [1, 0]),           # n = 1, terminal
        (2, 0): (1.0 + 0.0, 0.25, 2, [1, 1]),
        (2, 2): (0.0 + 0.5 * 2.0, 0.25, 4, [1, 1]),  # reaches the truncated end: still bootstraps, gamma^2
        (2, 3): (2.0, 0.5, 4, [1, 0]),           # n = 1, truncated: gamma^1 from the final obs
    }
    got = samples_by_start(buf, T=2, gamma=0.5)
    assert set(got) == {(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3)}
    for key, (ret, disc, nxt, valid) in expected.items():
        s = got[key]
        assert s['returns'] == pytest.approx(ret), key
        assert s['discount'] == pytest.approx(disc), key
        np.testing.assert_array_equal(s['next_obs'], obs_of(key[0], nxt))
        np.testing.assert_array_equal(s['valid'], valid)
    # actions past the end are padded with the last valid action; rewards there are 0
    s = got[(1, 2)]
    np.testing.assert_array_equal(s['actions'], np.stack([act_of(1, 2), act_of(1, 2)]))
    np.testing.assert_array_equal(s['rewards'], [1.0, 0.0])
    # T = 5 > L: the whole episode, terminal => discount 0, return = gamma^2 * 1
    got5 = samples_by_start(buf, T=5, gamma=0.9)
    s = got5[(1, 0)]
    assert s['returns'] == pytest.approx(0.81) and s['discount'] == 0.0
    np.testing.assert_array_equal(s['valid'], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(s['actions'][:, 1] * 100, np.round([0, 1, 2, 2, 2]))
    s = got5[(2, 1)]   # truncated, n = 3: gamma^3
    assert s['returns'] == pytest.approx(0.0 + 0.0 + 0.81 * 2.0) and s['discount'] == pytest.approx(0.729)
    # T = 1 degenerates to one-step TD
    s = samples_by_start(buf, T=1, gamma=0.99)[(2, 3)]
    assert s['returns'] == pytest.approx(2.0) and s['discount'] == pytest.approx(0.99)


def test_windows_never_cross_episodes_concurrent_streams():
    buf = ReplayBuffer(BufferConfig(), D, A)
    rng = np.random.default_rng(0)
    lengths = {ep: int(rng.integers(1, 9)) for ep in range(10, 30)}
    pos = {ep: 0 for ep in lengths}
    # interleave steps of several open episodes (several robots): storage rows of episodes interleave
    while pos:
        for ep in list(pos)[:4]:
            t = pos[ep]
            if t < lengths[ep]:
                buf.add_step(ep, obs_of(ep, t), act_of(ep, t), float(t))
                pos[ep] += 1
            else:
                buf.end_episode(ep, obs_of(ep, t), terminal=bool(ep % 2))
                del pos[ep]
    T = 6
    s = buf.sample(2000, T, 0.9, np.random.default_rng(1))
    for i in range(2000):
        ep, t = int(s['obs'][i, 0]), int(s['obs'][i, 1])
        L = lengths[ep]
        n = min(T, L - t)
        assert s['valid'][i].sum() == n
        assert np.all(np.round(s['actions'][i, :, 0] * 100) == ep)          # same episode in every slot
        steps = np.round(s['actions'][i, :, 1] * 100)
        np.testing.assert_array_equal(steps, [min(t + k, L - 1) for k in range(T)])
        np.testing.assert_array_equal(s['rewards'][i], [t + k if k < n else 0 for k in range(T)])
        np.testing.assert_array_equal(s['next_obs'][i], obs_of(ep, t + n))
        want_disc = 0.0 if (t + n == L and ep % 2) else 0.9 ** n
        assert s['discount'][i] == pytest.approx(want_disc)


def test_open_episodes_not_sampled_and_late_rewards():
    buf = ReplayBuffer(BufferConfig(), D, A)
    with pytest.raises(ValueError, match='no finished'):
        buf.sample(4, 2, 0.9)
    buf.add_step('a', obs_of(1, 0), act_of(1, 0))
    buf.add_step('a', obs_of(1, 1), act_of(1, 1))
    with pytest.raises(ValueError, match='no finished'):
        buf.sample(4, 2, 0.9)
    assert buf.num_sampleable() == 0 and len(buf) == 2
    buf.set_reward('a', 1, 1.0)      # arrives before the end
    buf.end_episode('a', obs_of(1, 2), terminal=True, success=True)
    buf.set_reward('a', 0, 0.5)      # arrives after the end
    s = samples_by_start(buf, T=2, gamma=0.5)[(1, 0)]
    assert s['returns'] == pytest.approx(0.5 + 0.5 * 1.0)
    assert buf.stats()['successes'] == 1 and buf.num_episodes == 1


def test_intervention_flags():
    buf = ReplayBuffer(BufferConfig(), D, A)
    add(buf, 1, [0, 0, 0], terminal=False, intervention=np.array([False, True, True]))
    add(buf, 2, [0, 0], terminal=False, stream=True, intervention=[True, False])
    got = samples_by_start(buf, T=3, gamma=0.9)
    assert got[(1, 0)]['intervention'] == 0 and got[(1, 1)]['intervention'] == 1
    np.testing.assert_array_equal(got[(1, 0)]['intervention_mask'], [0, 1, 1])
    np.testing.assert_array_equal(got[(1, 2)]['intervention_mask'], [1, 0, 0])   # 0 past the end
    assert got[(2, 0)]['intervention'] == 1 and got[(2, 1)]['intervention'] == 0


def test_demo_ratio_and_uniform():
    buf = ReplayBuffer(BufferConfig(demo_ratio=0.25), D, A)
    add(buf, 1, [0.0] * 10, terminal=True, demo=True)
    # only demos so far: the batch falls back to what exists
    assert buf.sample(40, 2, 0.9, 0)['is_demo'].sum() == 40
    for ep in range(2, 12):
        add(buf, ep, [0.0] * 9, terminal=False)
    s = buf.sample(400, 3, 0.9, 1)
    assert s['is_demo'].sum() == 100                          # exactly round(B * demo_ratio)
    assert np.all((s['obs'][:, 0] == 1) == (s['is_demo'] == 1))
    assert 0 < s['is_demo'][:200].sum() < 100                 # demo and online rows are shuffled together
    uniform = ReplayBuffer(BufferConfig(demo_ratio=None), D, A)
    add(uniform, 1, [0.0] * 10, terminal=True, demo=True)
    for ep in range(2, 12):
        add(uniform, ep, [0.0] * 9, terminal=False)
    frac = uniform.sample(20000, 3, 0.9, 2)['is_demo'].mean()
    assert abs(frac - 10 / 100) < 0.015                       # proportional to step counts
    assert uniform.num_demo_steps == 10 and uniform.num_online_steps == 90


def test_eviction_oldest_online_first_then_demos():
    buf = ReplayBuffer(BufferConfig(capacity=10), D, A)
    add(buf, 1, [0] * 4, terminal=True, demo=True)
    add(buf, 2, [0] * 3, terminal=True)
    add(buf, 3, [0] * 3, terminal=True)
    assert len(buf) == 10
    add(buf, 4, [0] * 2, terminal=True)          # 12 > 10: the oldest online episode (2) goes
    assert buf.episode_ids() == [1, 3, 4] and len(buf) == 9
    buf.add_step(5, obs_of(5, 0), act_of(5, 0))  # 10
    buf.add_step(5, obs_of(5, 1), act_of(5, 1))  # 11: evict 3 (open episode 5 is never evicted)
    assert buf.episode_ids() == [1, 4, 5] and len(buf) == 8
    assert buf.stats()['evicted_episodes'] == 2
    buf.end_episode(5, obs_of(5, 2), terminal=False)
    add(buf, 6, [0] * 4, demo=True, terminal=True)   # 12: online 4 then online 5 go before any demo
    assert buf.episode_ids() == [1, 5, 6] and len(buf) == 10
    add(buf, 7, [0] * 4, demo=True, terminal=True)   # online 5 goes, then still 12 > 10: oldest demo (1)
    assert buf.episode_ids() == [6, 7] and len(buf) == 8
    assert buf.num_demo_steps == 8
    # freed rows are reused and samples only come from live episodes
    s = buf.sample(500, 3, 0.9, 0)
    assert set(np.unique(s['obs'][:, 0]).astype(int)) == {6, 7}
    with pytest.raises(ValueError, match='capacity'):
        add(buf, 8, [0] * 11, terminal=True)


def snapshot(buf):
    stats = {k: v for k, v in buf.stats().items() if k not in ('evicted_episodes', 'capacity')}  # per session
    return (stats, [(i, {k: (v.copy() if isinstance(v, np.ndarray) else v)
                               for k, v in buf.get_episode(i).items()}) for i in buf.episode_ids()])


def assert_same(a, b):
    assert a[0] == b[0]
    assert [i for i, _ in a[1]] == [i for i, _ in b[1]]
    for (_, ea), (_, eb) in zip(a[1], b[1]):
        for k in ea:
            if isinstance(ea[k], np.ndarray):
                np.testing.assert_array_equal(ea[k], eb[k])
            else:
                assert ea[k] == eb[k], k


def test_invalid_input_rejected_without_state_change(tmp_path):
    buf = ReplayBuffer(BufferConfig(directory=str(tmp_path / 'b'), action_bound=1.0), D, A)
    add(buf, 1, [0.0, 1.0], terminal=True)
    buf.add_step(2, obs_of(2, 0), act_of(2, 0))
    before = snapshot(buf)
    size = os.path.getsize(tmp_path / 'b' / LOG_NAME)
    bad_calls = [
        lambda: buf.add_step(2, np.zeros(D + 1), act_of(2, 1)),                 # obs shape
        lambda: buf.add_step(2, obs_of(2, 1), np.array([np.nan, 0.0])),         # non-finite action
        lambda: buf.add_step(2, obs_of(2, 1), act_of(2, 1), reward=np.inf),     # non-finite reward
        lambda: buf.add_step(2, obs_of(2, 1), np.array([3.0, 0.0])),            # not normalised
        lambda: buf.add_step(2, obs_of(2, 1), act_of(2, 1), demo=True),         # demo flag changes mid-episode
        lambda: buf.add_step(1, obs_of(1, 9), act_of(1, 9)),                    # episode already ended
        lambda: buf.add_step(True, obs_of(3, 0), act_of(3, 0)),                 # bool id
        lambda: buf.add_step(3.5, obs_of(3, 0), act_of(3, 0)),                  # float id
        lambda: buf.add_step(3, 'abc', act_of(3, 0)),                           # not numeric
        lambda: buf.end_episode(99, obs_of(9, 0), True),                        # unknown episode
        lambda: buf.end_episode(2, np.full(D, np.nan), True),                   # non-finite final obs
        lambda: buf.end_episode(1, obs_of(1, 2), True),                         # already ended
        lambda: buf.set_reward(1, 5, 1.0),                                      # step out of range
        lambda: buf.set_reward(1, 0, float('nan')),
        lambda: buf.add_episode(np.zeros((3, D)), np.zeros((3, A)), np.zeros(3), True),   # obs not L+1
        lambda: buf.add_episode(np.zeros((4, D)), np.zeros((3, A + 1)), np.zeros(3), True),
        lambda: buf.add_episode(np.zeros((4, D)), np.zeros((3, A)), np.zeros(2), True),
        lambda: buf.add_episode(np.zeros((4, D)), np.zeros((3, A)), np.zeros(3), True, intervention=np.zeros(2)),
        lambda: buf.add_episode(np.full((4, D), np.inf), np.zeros((3, A)), np.zeros(3), True),
        lambda: buf.add_episode(np.zeros((1, D)), np.zeros((0, A)), np.zeros(0), True),   # empty episode
        lambda: buf.add_episode(np.zeros((4, D)), np.zeros((3, A)), np.zeros(3), True, episode_id=1),  # dup id
        lambda: buf.sample(0, 2, 0.9),
        lambda: buf.sample(4, 2, 1.5),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises(ValueError):
            call()
        assert os.path.getsize(tmp_path / 'b' / LOG_NAME) == size, f'bad call {i} wrote to disk'
    assert_same(before, snapshot(buf))
    buf.close()
    loaded = snapshot(ReplayBuffer.load(str(tmp_path / 'b')))
    assert_same((None, before[1][:1]), (None, loaded[1]))   # the open one-step episode 2 is dropped on load


# ------------------------------------------------------------------------------------------ persistence
def fill(buf):
    add(buf, 0, [0, 0, 1.0], terminal=True, success=True, demo=True, eid='demo-0')
    add(buf, 1, [0, 0.5, 0, 0], terminal=False, stream=True, intervention=[0, 1, 1, 0])
    add(buf, 2, [1.0], terminal=True, success=True)
    buf.set_reward(1, 2, 3.0)
    buf.add_step('open', obs_of(7, 0), act_of(7, 0), 0.1)
    buf.add_step('open', obs_of(7, 1), act_of(7, 1), 0.2)
    buf.add_step('open', obs_of(7, 2), act_of(7, 2), 0.3)
    buf.add_step('one-step', obs_of(8, 0), act_of(8, 0))


def test_persistence_round_trip_and_crash_recovery_of_open_episodes(tmp_path, caplog):
    d = str(tmp_path / 'buf')
    assert not ReplayBuffer.exists(d)
    buf = ReplayBuffer(BufferConfig(directory=d, capacity=100), D, A)
    assert ReplayBuffer.exists(d)
    fill(buf)
    with pytest.raises(ValueError, match='in use'):
        ReplayBuffer(BufferConfig(directory=d), D, A)     # one writer per directory
    before = snapshot(buf)
    buf.close()
    with caplog.at_level(logging.WARNING, logger='poco_learner.buffer'):
        again = ReplayBuffer(BufferConfig(directory=d, capacity=100), D, A)
    assert 'still open' in caplog.text
    # finished episodes are identical (incl. the late reward), so samples from them are too
    after = snapshot(again)
    assert [i for i, _ in after[1]] == ['demo-0', 1, 2, 'open']
    assert_same((None, before[1][:3]), (None, after[1][:3]))
    got = samples_by_start(again, T=3, gamma=0.5)
    assert got[(1, 1)]['returns'] == pytest.approx(0.5 + 0.5 * 3.0)   # the late reward survived the reload
    # open episode: closed as truncated at its last recorded obs (its last step dropped); one-step one dropped
    rec = again.get_episode('open')
    assert rec['ended'] and not rec['terminal'] and len(rec['actions']) == 2
    np.testing.assert_array_equal(rec['obs'], np.stack([obs_of(7, t) for t in range(3)]))
    np.testing.assert_array_equal(rec['rewards'], np.array([0.1, 0.2], np.float32))
    assert not again.has_episode('one-step')
    assert len(again) == 3 + 4 + 1 + 2
    with pytest.raises(ValueError, match='already ended'):
        again.add_step('open', obs_of(7, 3), act_of(7, 3))
    again.close()
    # recovery was persisted: a third load needs none and sees the same
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger='poco_learner.buffer'):
        third = ReplayBuffer.load(d)
    assert 'still open' not in caplog.text
    assert_same(snapshot(third), after)
    third.close()
    with pytest.raises(ValueError, match='closed'):
        third.add_step('new', obs_of(9, 0), act_of(9, 0))
    assert third.sample(8, 2, 0.9).keys()   # reading a closed buffer is fine
    with pytest.raises(ValueError, match='obs_dim'):
        ReplayBuffer(BufferConfig(directory=d), D + 1, A)


def test_torn_last_record_is_truncated(tmp_path, caplog):
    d = str(tmp_path / 'buf')
    buf = ReplayBuffer(BufferConfig(directory=d), D, A)
    add(buf, 1, [0, 1.0], terminal=True)
    add(buf, 2, [0, 0, 1.0], terminal=True, stream=True)
    expected = snapshot(buf)
    buf.close()
    path = os.path.join(d, LOG_NAME)
    good = os.path.getsize(path)
    # 1) a torn append (half a record header + payload) after the last complete record
    with open(path, 'ab') as f:
        f.write(b'\xc0\xb0\x02\x00\x40\x00\x00\x00garbage')
    with caplog.at_level(logging.WARNING, logger='poco_learner.buffer'):
        b = ReplayBuffer.load(d)
    assert 'dropped 15 bytes' in caplog.text
    assert os.path.getsize(path) == good
    assert_same(snapshot(b), expected)
    b.close()
    # 2) the last record itself torn (episode 2's END cut in half): episode 2 is recovered as truncated
    os.truncate(path, good - 5)
    b = ReplayBuffer.load(d)
    ep2 = b.get_episode(2)
    assert ep2['ended'] and not ep2['terminal'] and len(ep2['actions']) == 2
    # 3) a corrupted byte inside a record (bad CRC) ends the log there as well
    b.add_step(3, obs_of(3, 0), act_of(3, 0))
    b.close()
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.seek(size - 3)
        f.write(b'\xff')
    b = ReplayBuffer.load(d)
    assert not b.has_episode(3) and b.has_episode(2)
    b.close()


WRITER = textwrap.dedent('''
    import sys, time
    import numpy as np
    from poco_learner.buffer import BufferConfig, ReplayBuffer

    def step_data(ep, t):
        rng = np.random.default_rng([ep, t])
        return rng.normal(size=6).astype(np.float32), rng.uniform(-1, 1, 7).astype(np.float32), float(rng.normal())

    b = ReplayBuffer(BufferConfig(directory=sys.argv[1], flush_interval_s=0.2), 6, 7)
    for ep in range(5):
        L = 3 + ep
        for t in range(L):
            o, a, r = step_data(ep, t)
            b.add_step(ep, o, a, r, intervention=t % 2 == 0)
        b.end_episode(ep, step_data(ep, L)[0], terminal=ep % 2 == 0, success=ep == 0)
        print('done', ep, flush=True)
    t = 0
    while True:  # an episode that never ends: the parent kills us in the middle of it
        o, a, r = step_data(99, t)
        b.add_step(99, o, a, r)
        print('step', t, flush=True)
        t += 1
        time.sleep(0.002)
''')


def step_data(ep, t):
    rng = np.random.default_rng([ep, t])
    return rng.normal(size=6).astype(np.float32), rng.uniform(-1, 1, 7).astype(np.float32), float(rng.normal())


def test_sigkill_writer_then_reload(tmp_path):
    d = str(tmp_path / 'killed')
    proc = subprocess.Popen([sys.executable, '-c', WRITER, d], stdout=subprocess.PIPE, text=True)
    last_step = -1
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, 'writer exited early'
            if line.startswith('step'):
                last_step = int(line.split()[1])
                if last_step >= 30:
                    break
        os.kill(proc.pid, signal.SIGKILL)   # no close(), no flush, no atexit
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
    assert last_step >= 30 and proc.returncode == -signal.SIGKILL
    buf = ReplayBuffer.load(d)              # the flock died with the writer
    assert buf.obs_dim == 6 and buf.action_dim == 7
    for ep in range(5):
        L = 3 + ep
        e = buf.get_episode(ep)
        assert e['ended'] and e['terminal'] == (ep % 2 == 0) and e['success'] == (ep == 0)
        steps = [step_data(ep, t) for t in range(L + 1)]
        np.testing.assert_array_equal(e['obs'], np.stack([s[0] for s in steps]))
        np.testing.assert_array_equal(e['actions'], np.stack([s[1] for s in steps[:L]]))
        np.testing.assert_array_equal(e['rewards'], np.array([s[2] for s in steps[:L]], np.float32))
        np.testing.assert_array_equal(e['intervention'], [t % 2 == 0 for t in range(L)])
    # every step the writer reported was already in the kernel: the open episode is recovered as truncated
    # with at least last_step steps (its last recorded step is dropped: outcome unknown)
    e = buf.get_episode(99)
    L = len(e['actions'])
    assert e['ended'] and not e['terminal'] and L >= last_step
    np.testing.assert_array_equal(e['obs'], np.stack([step_data(99, t)[0] for t in range(L + 1)]))
    np.testing.assert_array_equal(e['actions'], np.stack([step_data(99, t)[1] for t in range(L)]))
    s = buf.sample(128, 4, 0.9, 0)
    assert np.all(np.isfinite(s['obs'])) and s['obs'].shape == (128, 6)
    buf.close()


def test_fsync_thread_and_compaction_bound_disk(tmp_path):
    d = str(tmp_path / 'c')
    buf = ReplayBuffer(BufferConfig(directory=d, capacity=40, flush_interval_s=0.05, compact_min_bytes=0), D, A)
    buf.add_step('x', obs_of(0, 0), act_of(0, 0))
    time.sleep(0.3)
    assert not buf._dirty                      # the background thread fsynced within the interval
    buf.abort_episode('x')
    path = os.path.join(d, LOG_NAME)
    sizes = []
    for ep in range(1, 60):
        add(buf, ep, [0.0] * 10, terminal=True, demo=ep < 3)
        sizes.append(os.path.getsize(path))
    assert buf.episode_ids() == [1, 2, 58, 59]  # demos kept, oldest online evicted
    one_episode = sizes[1] - sizes[0]
    # without compaction the log would hold 59 episodes; with it, at most ~2x the 4 live ones (+ the new one)
    assert max(sizes) <= 11 * one_episode
    expected = snapshot(buf)
    buf.close()
    assert_same(snapshot(ReplayBuffer.load(d)), expected)


def test_sample_speed_reasonable():
    buf = ReplayBuffer(BufferConfig(), 64, 7)
    rng = np.random.default_rng(0)
    for ep in range(50):
        buf.add_episode(rng.normal(size=(101, 64)), rng.uniform(-1, 1, (100, 7)), np.zeros(100), ep % 2 == 0)
    t = time.perf_counter()
    for _ in range(20):
        buf.sample(256, 5, 0.99, rng)
    assert (time.perf_counter() - t) / 20 < 0.05   # vectorised: ~1 ms; a per-sample Python loop would be >> this
