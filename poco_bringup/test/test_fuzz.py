"""The fuzz harness's short form (poco_policy/benchmarks/fuzz_graph.py --quick), real processes over DDS.

Sim node + policy node (state mode, weights key configured); 100 malformed messages per subscribed topic
(joint states with 1e30 / NaN gripper / duplicated and missing names / outside the joint limits, wrong-size and
non-finite sim state, ee pose and teleop actions) and every weights attack of issue 11 (deep JSON,
flow_steps=50000, wrong obs size, 8192-wide layers in a tiny payload, version jump, wrong sha256, random bytes,
pickle, NaN tensors; unsigned and wrong key). Must show: no node exit, zero non-finite commands, zero commands
beyond max_joint_delta from the measured position, zero polluted transitions, each attack refused with its
counted reason, no stalled control loop (max tick gap < 8 ticks, 533 ms), and correctly signed weights taken
afterwards. The tick bound is a smoke check, not the timing target: the gap is one tick (67 ms) on an idle
machine, and a clean-clone CI run on 2 cores once saw 232 ms (above the old 3-tick bound) with every
other column zero; what it must catch is the stall of checking or loading attack weights on the control thread
(building one 8192 x 16384 layer takes 0.7 s on one thread of the AMD EPYC). The precise figure is the
harness's own `late ms` column.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _bringup_helpers import REPO, private_domain, ros_env

pytest.importorskip('rclpy')


def test_fuzz_quick_all_zeros():
    domain, lock = private_domain()
    try:
        p = subprocess.run([sys.executable, str(REPO / 'poco_policy' / 'benchmarks' / 'fuzz_graph.py'), '--quick',
                            '--domain-id', str(domain)], env=ros_env(domain), capture_output=True, text=True,
                           timeout=300)
    finally:
        del lock
    out = p.stdout + p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith('FUZZ_RESULT ')]
    assert lines, out[-4000:]
    r = json.loads(lines[-1][len('FUZZ_RESULT '):])
    assert r['node_exits'] == {}, out[-4000:]
    topics = r['topics']
    assert set(topics) == {'joint_states', 'sim/state', 'ee_pose', 'teleop/action', 'poco/policy_weights'}
    for t, row in topics.items():
        assert row['sent'] == 100, (t, row)
        assert row['nonfinite_commands'] == 0 and row['beyond_delta_commands'] == 0, (t, row)
        assert row['polluted_transitions'] == 0, (t, row)
        assert row['commands'] > 10, (t, row)            # the arm kept being driven (holds included)
        assert row['max_tick_gap_ms'] < 8 * 1000 / 15, (t, row)
        assert row['dropped'], (t, row)                  # the bad messages were counted
    js = topics['joint_states']['dropped']
    for reason in ('non-finite', 'duplicated joint', 'missing joint', 'outside limits'):
        assert js.get(f'joint_states: {reason}', 0) > 0, js
    w = topics['poco/policy_weights']['dropped']
    for reason in ('metadata too large', 'metadata too deep', 'flow steps', 'obs size', 'too large', 'version jump',
                   'sha256 mismatch', 'format', 'unsigned', 'bad signature'):
        assert w.get(f'weights: {reason}', 0) > 0, w
    assert r['signed'] and r['signed_weights_taken'], r
    assert p.returncode == 0, out[-4000:]
