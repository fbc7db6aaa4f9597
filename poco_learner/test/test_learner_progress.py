"""The learner records its update counters often (<run_dir>/progress.json) and a restart reports how many
updates since the last checkpoint a kill lost: `resumed at update U (checkpoint); the previous run reached V:
V-U updates lost`, also in status()['resume']."""
import json
import time

import numpy as np

from poco_learner.agent import AgentConfig
from poco_learner.episodes import START, TIMEOUT
from poco_learner.learner import Learner, LearnerConfig

FEAT = 4


def _cfg(run_dir, pretrain_steps):
    return LearnerConfig(run_dir=str(run_dir), obs_mode='state', obs_dim=FEAT + 7, checkpoint_every_s=3600,
                         agent=AgentConfig(actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16), batch_size=8,
                                           num_candidates=2, flow_steps=2, horizon=3, pretrain_steps=pretrain_steps,
                                           critic_warmup_steps=3))


def _wait(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_progress_written_often_and_loss_reported_on_resume(tmp_path):
    run = tmp_path / 'run'
    logs = []
    core = Learner(_cfg(run, 100_000), log=lambda lvl, s: logs.append(s))
    rng = np.random.default_rng(0)
    core.on_event(1, START, 0, False)
    for t in range(12):
        core.on_transition(1, t, rng.normal(size=FEAT).astype(np.float32), np.zeros(7, np.float32),
                           rng.uniform(-0.04, 0.04, 7).astype(np.float32), False, False)
    core.on_transition(1, 12, rng.normal(size=FEAT).astype(np.float32), np.zeros(7, np.float32), [], False, True)
    core.on_event(1, TIMEOUT, 12, False)
    core.start()
    try:
        assert _wait(lambda: core.state['pretrain_done'] >= 50, 60)
        core.checkpoint()                                  # the checkpoint a restart will find
        at_ckpt = core.total_updates()
        assert _wait(lambda: core.total_updates() >= at_ckpt + 100, 60)
        assert _wait(lambda: json.loads((run / 'progress.json').read_text())['updates'] >= at_ckpt + 100, 5)
    finally:
        core._stop.set()                                   # a kill: no final checkpoint
        core._thread.join(30)
        core.buffer.close()
    reached = json.loads((run / 'progress.json').read_text())['updates']
    assert reached >= at_ckpt + 100

    logs2 = []
    again = Learner(_cfg(run, 100_000), log=lambda lvl, s: logs2.append(s))
    line = f'resumed at update {at_ckpt} (checkpoint); the previous run reached {reached}: ' \
           f'{reached - at_ckpt} updates lost'
    assert line in logs2, logs2
    st = again.status()
    assert st['resume'] == {'resumed_at_update': at_ckpt, 'source': 'checkpoint', 'previous_run_reached': reached,
                            'updates_lost': reached - at_ckpt, 'previous_run_last_seen': st['resume'][
                                'previous_run_last_seen']}
    assert st['updates_lost_at_resume'] == reached - at_ckpt
    again.buffer.close()


def test_fresh_run_reports_nothing(tmp_path):
    core = Learner(_cfg(tmp_path / 'run', 10), log=lambda lvl, s: None)
    assert core.resume_report == {} and core.status()['updates_lost_at_resume'] == 0
