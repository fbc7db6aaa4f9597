"""The ROS-free Learner: phases in order, each announced even when it is shorter than a status period,
and a restart resumes phase, counters and buffer."""
import threading
import time

import numpy as np
import pytest

from poco_learner.episodes import START, SUCCESS, TIMEOUT
from poco_learner.agent import AgentConfig
from poco_learner.learner import Learner, LearnerConfig

FEAT = 4


def _episode(core: Learner, eid: int, n: int, success: bool, rng):
    core.on_event(eid, START, 0, False)
    for t in range(n):
        core.on_transition(eid, t, rng.normal(size=FEAT).astype(np.float32), np.zeros(7, np.float32),
                           rng.uniform(-0.04, 0.04, 7).astype(np.float32), False, False)
    core.on_transition(eid, n, rng.normal(size=FEAT).astype(np.float32), np.zeros(7, np.float32), [], False, True)
    core.on_event(eid, SUCCESS if success else TIMEOUT, n, False)


def _wait(pred, timeout):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize('algorithm', ['poco', 'qc_best_of_n'])
def test_phases_are_announced_in_order_and_resume(tmp_path, algorithm):
    cfg = LearnerConfig(run_dir=str(tmp_path / 'run'), obs_mode='state', obs_dim=FEAT + 7, utd_ratio=1.0,
                        publish_every=5,
                        checkpoint_every_s=3600, agent=AgentConfig(
                            actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32), algorithm=algorithm,
                            batch_size=8, num_candidates=4, flow_steps=2, horizon=3, pretrain_steps=15,
                            critic_warmup_steps=3))
    logs = []
    core = Learner(cfg, log=lambda lvl, s: logs.append(s))
    seen = []
    lock = threading.Lock()

    def on_phase():
        with lock:
            seen.append(core.status())   # what the node publishes at that moment
    core.phase_fn = on_phase
    published = []
    core.publish_fn = lambda v, payload, meta: published.append((v, meta['phase'], 'best_of_n' in meta))
    rng = np.random.default_rng(0)
    for e in range(3):
        _episode(core, e + 1, 12, e == 0, rng)
    core.start()
    try:
        assert _wait(lambda: len(published) >= 1, 60), logs[-5:]    # pre-trained weights v1 are out
        time.sleep(0.3)
        assert core.state['warmup_done'] == 0       # steps from before the online phase pay for no update
        # update-to-data pacing: 12 new steps pay for 12 updates, the 3 of the warm-up (milliseconds: a periodic
        # status would miss it, the announcement must not) and 9 POCO updates
        _episode(core, 4, 12, False, rng)
        assert _wait(lambda: core.state['warmup_done'] >= 3, 60), logs[-5:]
        assert _wait(lambda: core.state["online_updates"] >= 9, 60), logs[-5:]
        for e in range(4, 6):
            _episode(core, e + 1, 12, False, rng)
        assert _wait(lambda: core.state['online_updates'] >= 20, 60), logs[-5:]
        # exactly utd_ratio x new env steps, then the learner waits for data and asks the clock for none
        assert _wait(lambda: core.pacing()['updates'] == 36, 60), core.pacing()
        time.sleep(0.3)
        pace = core.pacing()
        assert pace == {'behind': False, 'env_steps': 36, 'updates': 36, 'updates_per_env_step': 1.0}, pace
    finally:
        core.stop()
    phases = [s['phase'] for s in seen]
    assert phases == ['pretrain', 'warmup', 'poco'], phases
    assert seen[1]['update_step'] == cfg.agent.pretrain_steps     # announced as the phase began
    assert any('phase warmup -> poco' in s for s in logs)
    assert published[0] == (1, 'pretrain', False) and len(published) >= 3
    # the QC baseline acts with argmax-Q on the robot: its online weights carry the critic
    assert all(p[2] == (algorithm == 'qc_best_of_n') for p in published[1:]), published
    n_steps = core.buffer_len()
    done = dict(core.state)

    again = Learner(cfg, log=lambda lvl, s: None)
    try:
        assert again.buffer_len() == n_steps == 6 * 12
        assert again.state['phase'] == 'poco'
        assert again.state['online_updates'] == done['online_updates']
        assert again.state['weights_version'] == done['weights_version']
    finally:
        again.stop()


def test_observation_size_comes_from_configuration_never_from_a_message(tmp_path):
    from poco_policy.runtime import BadInput
    rng = np.random.default_rng(1)
    core = Learner(LearnerConfig(run_dir=str(tmp_path / 'a'), obs_mode='state', checkpoint_every_s=3600),
                   log=lambda lvl, s: None)
    try:
        with pytest.raises(BadInput, match='obs_dim or demo_dataset') as e:
            core.on_transition(1, 0, rng.normal(size=50), np.zeros(7), np.zeros(7), False, False)
        assert e.value.reason == 'observation size unknown' and core.buffer is None   # nothing fixed or stored
    finally:
        core.stop()
    core = Learner(LearnerConfig(run_dir=str(tmp_path / 'b'), obs_mode='state', obs_dim=FEAT + 7,
                                 checkpoint_every_s=3600), log=lambda lvl, s: None)
    try:
        with pytest.raises(BadInput, match='observation size 57 != 11'):     # a bad first message ...
            core.on_transition(1, 0, rng.normal(size=50), np.zeros(7), np.zeros(7), False, False)
        _episode(core, 2, 5, True, rng)                                       # ... fixes nothing
        assert core.buffer_len() == 5 and core.buffer.obs_dim == FEAT + 7
    finally:
        core.stop()
