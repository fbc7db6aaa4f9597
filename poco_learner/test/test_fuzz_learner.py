"""The learner fuzz harness's short form (poco_learner/benchmarks/fuzz_learner.py --quick), real processes over DDS.

A tiny demo dataset (collect_demos), the real learner node (state mode, a small agent, run_dir in a temp folder),
100 malformed poco/transition messages (wrong feature/proprio/action lengths, NaN/inf, 1e30, float32 max, beyond
max_input_magnitude, step gaps, duplicated steps, extreme episode ids, final observations with actions) and 100
malformed poco/episode_event messages (unknown codes, ends of unknown episodes, extreme ids and step counts, odd
details, start after end, duplicated ends), each mixed with valid episodes; a kill -9 of the learner while valid
episodes stream in and a restart on the same run_dir; a clean SIGINT stop; the buffer read with its own loader.

Must show: no learner exit, a clean stop, zero polluted buffer rows, every valid row sent (outside the kill
window) kept exactly, the malformed messages counted by reason, the restart resuming with its buffer (rows lost
at most what the last second brought). Known bug (reported, not fixed here: poco_learner/episodes.py): one stray
transition with a step-index gap for an episode the learner already finished deletes that stored episode; the
harness counts it (`finished_episodes_deleted`, exit status 1) and this test reports xfail while it happens
(after every other check passed); once fixed, the same test passes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip('rclpy')

REPO = Path(__file__).resolve().parents[2]


def _private_domain():
    # poco_policy's test support, not poco_bringup's runner: poco_learner's suite must run where only its own
    # dependencies are installed (`colcon test --packages-select poco_learner` in a ws/src layout)
    from poco_policy.testing import private_domain
    return private_domain(), None


def test_fuzz_learner_quick_all_zeros():
    domain, lock = _private_domain()
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain),
               PYTHONUNBUFFERED='1')
    env.pop('ROS_STATIC_PEERS', None)
    t0 = time.monotonic()
    try:
        p = subprocess.run([sys.executable, str(REPO / 'poco_learner' / 'benchmarks' / 'fuzz_learner.py'),
                            '--quick', '--domain-id', str(domain)], env=env, capture_output=True, text=True,
                           timeout=540)
    finally:
        del lock
    out = p.stdout + p.stderr
    print(f'fuzz_learner --quick: {time.monotonic() - t0:.0f} s')
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith('FUZZ_RESULT ')]
    assert lines, out[-4000:]
    r = json.loads(lines[-1][len('FUZZ_RESULT '):])
    tail = '\n'.join(ln for ln in p.stdout.splitlines() if not ln.startswith('FUZZ_RESULT '))[-4000:]
    assert r['node_exits'] == {} and not r['bugs'], tail
    assert r['clean_stop'], tail
    assert set(r['topics']) == {'poco/transition', 'poco/episode_event'}, tail
    for t, row in r['topics'].items():
        assert row['sent'] == 100, (t, row)
        assert row['node_exits'] == 0 and row['polluted_rows'] == 0, (t, row)
        assert row['valid_rows_sent'] > 0 and row['valid_rows_kept'] == row['valid_rows_sent'], (t, row)
        assert row['valid_messages_refused'] == 0, (t, row)   # the node refused only malformed messages
        assert row['dropped'], (t, row)                      # the malformed messages were counted by reason
        assert row['status_dropped_messages'] > 0, (t, row)  # and in LearnerStatus.dropped_messages
    tr = {k.split(' (log)')[0]: v for k, v in r['topics']['poco/transition']['dropped'].items()}
    for reason in ('features size', 'observation size', 'proprio size', 'action size', 'non-finite', 'out of range'):
        assert tr.get(f'transition: {reason}', 0) > 0, tr
    ev = {k.split(' (log)')[0]: v for k, v in r['topics']['poco/episode_event']['dropped'].items()}
    assert ev.get('episode_event: unknown event', 0) > 0, ev
    assert r['buffer']['polluted_rows'] == 0, r['buffer']
    for phase in ('kill', 'final'):
        v = r['buffer']['valid'][phase]
        assert v['rows_sent'] > 0 and v['rows_kept'] == v['rows_sent'], (phase, v)
    k = r['kill9']
    assert k['restarted'] and k['rows_after_restart'] > 0, k
    assert k['lost_beyond_allowance'] == 0 and k['polluted_rows'] == 0, k
    deleted = r['topics']['poco/transition']['finished_episodes_deleted']
    assert r['topics']['poco/transition']['victims'] > 0, r['topics']['poco/transition']
    if deleted:
        assert p.returncode == 1, tail
        pytest.xfail(f'known bug: {deleted} finished episode(s) deleted from the buffer by one stray transition '
                     'with a step-index gap (EpisodeAssembler aborts the stored episode)')
    assert p.returncode == 0, tail
