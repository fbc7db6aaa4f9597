"""A run folder default that never silently resumes an unrelated run (issue 12, item 6).

The learner's `run_dir` default ('' = a fresh `runs/<timestamp>`) is a new folder every time; an existing run
folder (its checkpoint, buffer, progress) is resumed only when it is named explicitly (`run_dir:=...`,
`run --run-dir DIR`). Before, the default was `runs/default`, so a learner started without a run folder picked
up whatever a previous, unrelated run had left there."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from poco_learner.agent import AgentConfig
from poco_learner.learner import Learner, LearnerConfig, fresh_run_dir

from _bringup_helpers import private_domain, ros_env

FEAT = 4
TINY = dict(actor_hidden_dims=(8,), critic_hidden_dims=(8,), batch_size=4, num_candidates=2, flow_steps=2,
            horizon=3, pretrain_steps=5, critic_warmup_steps=2)


def _cfg(**kw) -> LearnerConfig:
    return LearnerConfig(obs_mode='state', obs_dim=FEAT + 7, checkpoint_every_s=3600, agent=AgentConfig(**TINY),
                         **kw)


def _previous_run(path: Path) -> None:
    """A real earlier run in `path`: checkpoint, learner_state.json, progress.json."""
    core = Learner(_cfg(run_dir=str(path)), log=lambda lvl, s: None)
    core._ensure(FEAT + 7)                                 # what the first transition does: buffer + agent
    core.state['weights_version'] = 7
    core.checkpoint()
    core._write_progress()
    core.buffer.close()
    assert (path / 'checkpoints' / 'latest.json').exists()


def test_default_run_dir_is_a_fresh_folder_never_an_old_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert LearnerConfig().run_dir == ''
    _previous_run(tmp_path / 'runs' / 'default')          # what the old default would have resumed
    logs: list[str] = []
    cfg = _cfg()
    core = Learner(cfg, log=lambda lvl, s: logs.append(s))
    try:
        core._ensure(FEAT + 7)                             # buffer + agent: fresh ones, not the old run's
        here = core.run_dir.resolve()
        assert here.parent == (tmp_path / 'runs').resolve() and here.name != 'default', here
        assert cfg.run_dir == str(core.run_dir)            # the node logs and records the folder it chose
        assert not any('resumed' in s for s in logs), logs
        assert core.resume_report == {} and core.state['weights_version'] == 0
        assert not (here / 'checkpoints').exists()
    finally:
        core.buffer.close()
    # a second default learner (same second, e.g. two robots) gets its own folder, not the first one's
    other = Learner(_cfg(), log=lambda lvl, s: None)
    try:
        other._ensure(FEAT + 7)
        assert other.run_dir.resolve() != here
    finally:
        other.buffer.close()


def test_resume_is_explicit(tmp_path):
    run = tmp_path / 'runs' / 'x'
    _previous_run(run)
    logs: list[str] = []
    again = Learner(_cfg(run_dir=str(run)), log=lambda lvl, s: logs.append(s))
    try:
        assert any(s.startswith('resumed buffer') for s in logs), logs
        assert any(s.startswith('resumed checkpoint') for s in logs), logs
        assert again.state['weights_version'] == 7
    finally:
        again.buffer.close()


def test_fresh_run_dir_names_are_unique_and_new(tmp_path):
    dirs = [fresh_run_dir(tmp_path / 'runs') for _ in range(5)]
    assert len(set(dirs)) == 5
    assert all(d.is_dir() and not any(d.iterdir()) for d in dirs)
    assert all(d.parent == (tmp_path / 'runs').resolve() for d in dirs)


def test_learner_node_default_does_not_resume(tmp_path):
    """The real learner node, started without run_dir next to an old runs/default, trains in a new folder."""
    _previous_run(tmp_path / 'runs' / 'default')
    domain, _lock = private_domain()  # the lock keeps the id ours until the test ends
    log = tmp_path / 'learner.log'
    with open(log, 'w') as out:
        p = subprocess.Popen([sys.executable, '-m', 'poco_learner.learner_node', '--ros-args',
                              '-p', 'obs_mode:=state', '-p', f'obs_dim:={FEAT + 7}'],
                             cwd=tmp_path, env=ros_env(domain), stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            end = time.monotonic() + 90
            while time.monotonic() < end and 'learner up' not in log.read_text() and p.poll() is None:
                time.sleep(0.1)
            text = log.read_text()
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)
    assert 'learner up' in text, text[-3000:]
    line = next(s for s in text.splitlines() if 'learner up' in s)
    chosen = Path(line.split('run_dir=')[1].split()[0])
    assert chosen.parent == (tmp_path / 'runs').resolve() and chosen.name != 'default', line
    assert 'resumed' not in text, text[-3000:]


def test_runner_default_is_a_new_folder_each_time(tmp_path):
    """`poco_run sim` without --run-dir: a new runs/<timestamp>[-N] every time, never an existing folder (here:
    every name the next two minutes could produce already holds an earlier run)."""
    import datetime
    now = datetime.datetime.now()
    taken = set()
    for s in range(-2, 120):
        d = tmp_path / 'runs' / (now + datetime.timedelta(seconds=s)).strftime('%Y%m%d-%H%M%S')
        (d / 'checkpoints').mkdir(parents=True)
        taken.add(d.resolve())
    dirs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, '-m', 'poco_bringup.runner', 'sim', '--obs-mode', 'state', '--dry-run',
                            '--no-monitor'], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(s for s in r.stdout.splitlines() if ' run dir ' in s)
        dirs.append(Path(line.split(' run dir ')[1].split()[0]))
    assert dirs[0] != dirs[1] and all(d.parent == (tmp_path / 'runs').resolve() for d in dirs), dirs
    assert not taken & set(dirs), dirs
