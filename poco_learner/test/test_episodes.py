"""EpisodeAssembler joins out-of-order transitions and events into correct buffer episodes."""
import numpy as np
import pytest

from poco_learner.buffer import BufferConfig, ReplayBuffer
from poco_learner.episodes import ESTOP, START, SUCCESS, TIMEOUT, EpisodeAssembler, RewardConfig

D_FEAT = 3


def _obs(f, p):
    return np.concatenate([f, p]).astype(np.float32)


def _make(rewards=RewardConfig(), **kw):
    buf = ReplayBuffer(BufferConfig(capacity=10_000), D_FEAT + 7, 7)
    return buf, EpisodeAssembler(buf, _obs, lambda a: np.asarray(a, np.float32) * 2.0, rewards, **kw)


def _send(asm, eid, n, final=True, start_val=0.0):
    for t in range(n):
        f = np.full(D_FEAT, start_val + t, np.float32)
        assert asm.on_transition(eid, t, f, np.zeros(7), np.full(7, 0.1 * t), t == 1, False)
    if final:
        asm.on_transition(eid, n, np.full(D_FEAT, start_val + n, np.float32), np.zeros(7), [], False, True)


def test_success_episode_gets_sparse_reward_and_terminal():
    buf, asm = _make()
    asm.on_event(7, START, 0, False)
    _send(asm, 7, 4)
    asm.on_event(7, SUCCESS, 4, False)
    ep = buf.get_episode(7)
    assert np.allclose(ep['rewards'], [0, 0, 0, 1])
    assert ep['terminal'] and ep['success']
    assert np.allclose(ep['actions'][2], 0.4)          # action_fn applied (0.2 * 2)
    assert ep['obs'][-1][0] == 4.0                      # the final observation, not the last step's
    assert ep['intervention'].tolist() == [False, True, False, False]


@pytest.mark.parametrize('timeout_terminal', [False, True])
def test_event_before_final_observation_and_timeout_end(timeout_terminal):
    buf, asm = _make(RewardConfig(step_penalty=0.01, timeout_terminal=timeout_terminal))
    _send(asm, 3, 3, final=False)
    asm.on_event(3, TIMEOUT, 3, False)
    assert not buf.get_episode(3)['ended']  # waits for the final observation
    asm.on_transition(3, 3, np.full(D_FEAT, 9.0, np.float32), np.zeros(7), [], False, True)
    ep = buf.get_episode(3)
    # a timeout truncates (bootstrap from the last state) or, by default, ends the task as a failure
    assert ep['terminal'] == timeout_terminal and not ep['success']
    assert np.allclose(ep['rewards'], [-0.01] * 3)
    assert ep['obs'][-1][0] == 9.0


def test_estop_with_penalty_and_missing_final_obs_after_grace():
    buf, asm = _make(RewardConfig(failure_penalty=0.5), grace_s=0.0)
    _send(asm, 5, 2, final=False)
    asm.on_event(5, ESTOP, 2, False)
    asm.poll()
    ep = buf.get_episode(5)
    assert ep['terminal'] and np.allclose(ep['rewards'], [0, -0.5])
    assert ep['obs'][-1][0] == 1.0   # fell back to the last step's observation


def test_malformed_and_gapped_transitions_are_dropped_without_polluting():
    buf, asm = _make()
    assert not asm.on_transition(1, 0, [np.nan] * D_FEAT, np.zeros(7), np.zeros(7), False, False)
    assert len(buf) == 0
    assert asm.on_transition(1, 0, np.zeros(D_FEAT), np.zeros(7), np.zeros(7), False, False)
    assert not asm.on_transition(1, 2, np.zeros(D_FEAT), np.zeros(7), np.zeros(7), False, False)  # step 1 lost
    asm.on_event(1, SUCCESS, 3, False)
    asm.on_transition(1, 3, np.zeros(D_FEAT), np.zeros(7), [], False, True)
    assert asm.dropped_messages == 2
    assert buf.stats()['episodes'] == 0 and not buf.has_episode(1)  # the gapped episode is removed


def test_stray_messages_never_touch_a_finished_episode_and_logs_are_throttled(caplog):
    """Issue 11 fuzz finding: one stray transition (step 3 of an episode already stored and finished) used to
    look like a gap in a new episode and delete the stored one."""
    buf, asm = _make()
    _send(asm, 7, 4)
    asm.on_event(7, SUCCESS, 4, False)
    before = buf.get_episode(7)
    with caplog.at_level('WARNING', logger='poco_learner.episodes'):
        for _ in range(300):
            assert not asm.on_transition(7, 3, np.ones(D_FEAT), np.zeros(7), np.zeros(7), False, False)
            asm.on_event(7, SUCCESS, 4, False)
    after = buf.get_episode(7)
    assert buf.has_finished_episode(7) and len(after['actions']) == len(before['actions']) == 4
    assert np.array_equal(after['rewards'], before['rewards']) and 7 not in asm.episodes
    assert asm.drop_reasons['finished episode'] == 600
    # 600 drops of one reason: logged at 1, 2, 4, ..., 512 only
    assert 5 <= len([r for r in caplog.records if 'finished episode' in r.getMessage()]) <= 12


def test_end_events_and_starts_without_steps_do_not_pile_up():
    buf, asm = _make(grace_s=0.0)
    for eid in range(1000, 1100):
        asm.on_event(eid, TIMEOUT, 5, False)      # no transitions ever come for these
    asm.poll()
    assert asm.episodes == {} and buf.num_episodes == 0
    asm.idle_s = 0.0
    asm.on_event(5, START, 0, False)              # a start whose steps never come: forgotten when idle
    asm.poll()
    assert 5 not in asm.episodes
