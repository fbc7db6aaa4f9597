"""Weights at the trust boundary (plain Python, no ROS): every attack of issue 11 is refused with a counted
reason before anything large is deserialised, signing works (wrong key / unsigned refused, right key taken),
and the checks run on the worker thread while a 15 Hz control loop keeps its ticks on time."""
from __future__ import annotations

import hashlib
import json
import os
import time

import numpy as np
import pytest
import torch

from poco_policy.flow_policy import FlowChunkPolicy, FlowPolicyConfig, policy_from_bytes, weights_to_bytes
from poco_policy.runtime import Mailbox, WeightsGate
from poco_policy.weights import (WeightsLimits, WeightsRejected, json_depth, load_key, loads_bounded,
                                 safetensors_header, sign, verify)

OBS = 20 + 7
LIMITS = dict(obs_dim=OBS, action_dim=7, horizon=5, max_hidden_dim=1024, max_flow_steps=100)


def actor_bytes(obs_dim=OBS, hidden=(32, 32), flow_steps=3, horizon=5, seed=0):
    torch.manual_seed(seed)
    return weights_to_bytes(FlowChunkPolicy(FlowPolicyConfig(obs_dim=obs_dim, horizon=horizon,
                                                             hidden_dims=hidden, flow_steps=flow_steps)))


def tiny_wide_payload(obs_dim=OBS, widths=(8192, 16384)):
    """~300 bytes whose header declares 8192/16384-wide layers (the issue's stall attack)."""
    cfg = {'obs_dim': obs_dim, 'action_dim': 7, 'horizon': 5, 'hidden_dims': list(widths), 'flow_steps': 10,
           'clip_samples': True}
    header = {'__metadata__': {'format': 'poco_flow_policy/1', 'config': json.dumps(cfg)},
              'obs_in.weight': {'dtype': 'F32', 'shape': [widths[0], obs_dim], 'data_offsets': [0, 16]}}
    h = json.dumps(header).encode()
    return len(h).to_bytes(8, 'little') + h + b'\0' * 16, {'config': cfg}


def attacks(key=None, version=2):
    """(name, fields) of each weights attack; fields = PolicyWeights fields as a dict."""
    def msg(payload, meta, v=version, signature=None, sha=None):
        md = meta if isinstance(meta, str) else json.dumps(meta)
        sha = sha or hashlib.sha256(payload).hexdigest()
        sig = signature if signature is not None else (sign(key, v, sha, md) if key else '')
        return dict(version=v, fmt='safetensors', sha256=sha, payload=payload, metadata=md, signature=sig)
    good_p, good_m = actor_bytes(seed=1)
    out = [('deep JSON', msg(b'x' * 64, '[' * 100_000)),
           ('deep JSON, small', msg(good_p, '[' * 5_000)),
           ('flow_steps=50000', msg(*actor_bytes(flow_steps=50000))),
           ('wrong obs size', msg(*actor_bytes(obs_dim=57))),
           ('8192-wide layers in a tiny payload', msg(*tiny_wide_payload())),
           ('version jump', msg(good_p, good_m, v=version + 100_000)),
           ('wrong sha256', msg(good_p, good_m, sha='0' * 64)),
           ('random bytes', msg(os.urandom(268), {})),
           ('pickle format', dict(msg(good_p, good_m), fmt='pickle'))]
    if key is not None:
        out += [('unsigned', msg(good_p, good_m, signature='')),
                ('wrong key', msg(good_p, good_m, signature=sign(b'k' * 32, version, hashlib.sha256(good_p)
                                                                 .hexdigest(), json.dumps(good_m))))]
    return out


def probe_for(obs_dim):
    def probe(policy):
        with torch.inference_mode():
            chunk = policy.act(torch.zeros(1, obs_dim))
        assert chunk.numel() == 35 and bool(torch.isfinite(chunk).all())
    return probe


def check(gate, f):
    return gate.check(f['version'], f['fmt'], f['sha256'], f['payload'], f['metadata'], f['signature'])


def test_bounded_json_and_depth():
    assert json_depth('{"a": [1, {"b": "[[[["}]}', 99) == 3
    assert loads_bounded('{"a": [1, 2]}', 100, 4) == {'a': [1, 2]}
    for text, reason in [('[' * 100_000, 'metadata too large'), ('[' * 40 + ']' * 40, 'metadata too deep'),
                         ('{"a": NaN}', 'metadata not JSON'), ('{"a":', 'metadata not JSON')]:
        with pytest.raises(WeightsRejected) as e:
            loads_bounded(text, 1000, 16)
        assert e.value.reason == reason


def test_safetensors_header_parsed_without_deserialising():
    payload, _ = actor_bytes()
    tensors, meta = safetensors_header(payload, WeightsLimits(**LIMITS))
    assert 'config' in meta and all(dt == 'F32' for dt, _ in tensors.values())
    tiny, _ = tiny_wide_payload()
    with pytest.raises(WeightsRejected) as e:
        safetensors_header(tiny, WeightsLimits(**LIMITS))
    assert e.value.reason == 'too large' and len(tiny) < 400
    # shapes that do not fit the data: refused as corrupt, nothing allocated
    small = tiny_wide_payload(widths=(16, 16))[0]
    with pytest.raises(WeightsRejected, match='needs'):
        safetensors_header(small, WeightsLimits(**LIMITS))
    for bad in (b'', b'\xff' * 8 + b'{}', (10).to_bytes(8, 'little') + b'[1]'):
        with pytest.raises(WeightsRejected) as e:
            safetensors_header(bad, WeightsLimits(**LIMITS))
        assert e.value.reason == 'corrupt payload'


@pytest.mark.parametrize('signed', [False, True])
def test_every_weights_attack_is_refused_with_a_reason(signed):
    key = os.urandom(32) if signed else None
    gate = WeightsGate(policy_from_bytes, WeightsLimits(**LIMITS), key, probe_for(OBS))
    p, m = actor_bytes()
    sha, md = hashlib.sha256(p).hexdigest(), json.dumps(m)
    check(gate, dict(version=1, fmt='safetensors', sha256=sha, payload=p, metadata=md,
                     signature=sign(key, 1, sha, md) if key else ''))
    gate.accept(1)
    want = {'deep JSON': 'metadata too large', 'deep JSON, small': 'metadata too deep', 'flow_steps=50000': 'flow steps', 'wrong obs size': 'obs size',
            '8192-wide layers in a tiny payload': 'too large', 'version jump': 'version jump',
            'wrong sha256': 'sha256 mismatch', 'random bytes': 'corrupt payload', 'pickle format': 'format',
            'unsigned': 'unsigned', 'wrong key': 'bad signature'}
    seen = {}
    for name, f in attacks(key=key, version=2):  # content attacks carry a valid signature when signed
        t0 = time.perf_counter()
        with pytest.raises(WeightsRejected) as e:
            check(gate, f)
        seen[name] = (e.value.reason, time.perf_counter() - t0)
    assert set(seen) == set(want) - (set() if signed else {'unsigned', 'wrong key'})
    assert {k: r for k, (r, _) in seen.items()} == {k: want[k] for k in seen}
    assert max(dt for _, dt in seen.values()) < 2.0, seen  # no stall (the issue saw 4-19 s)
    assert gate.version == 1


def test_signed_weights_right_key_taken_wrong_key_and_unsigned_refused(tmp_path):
    kf = tmp_path / 'weights.key'
    kf.write_bytes(os.urandom(32))
    os.chmod(kf, 0o600)
    key = load_key(str(kf))
    p, m = actor_bytes()
    sha, md = hashlib.sha256(p).hexdigest(), json.dumps(m)
    sig = sign(key, 3, sha, md)
    verify(key, 3, sha, md, sig)
    for args, reason in [((3, sha, md, ''), 'unsigned'), ((3, sha, md, sign(os.urandom(32), 3, sha, md)),
                                                          'bad signature'),
                         ((4, sha, md, sig), 'bad signature'), ((3, sha, md + ' ', sig), 'bad signature')]:
        with pytest.raises(WeightsRejected) as e:
            verify(key, *args)
        assert e.value.reason == reason
    gate = WeightsGate(policy_from_bytes, WeightsLimits(**LIMITS), key, probe_for(OBS))
    with pytest.raises(WeightsRejected, match='no signature'):
        gate.check(3, 'safetensors', sha, p, md, '')
    policy, _ = gate.check(3, 'safetensors', sha, p, md, sig)
    assert policy.cfg.obs_dim == OBS
    os.chmod(kf, 0o644)
    with pytest.raises(ValueError, match='chmod 600'):
        load_key(str(kf))
    kf.write_bytes(b'short')
    os.chmod(kf, 0o600)
    with pytest.raises(ValueError, match='at least 16'):
        load_key(str(kf))


def test_checks_run_off_the_control_loop_and_ticks_stay_on_time():
    """The worker thread handles every attack plus a big valid actor while a 15 Hz loop runs here."""
    gate = WeightsGate(policy_from_bytes, WeightsLimits(**LIMITS), None, probe_for(OBS))
    gate.accept(1)  # running v1: the version-jump bound applies
    results = []

    def handle(f):
        try:
            policy, _ = check(gate, f)
            gate.accept(f['version'])
            results.append(('ok', f['version']))
        except WeightsRejected as e:
            results.append((e.reason, f['version']))

    box = Mailbox(handle, 'test-weights')
    items = [f for _, f in attacks(version=2)]
    p, m = actor_bytes(hidden=(512, 512, 512, 512), flow_steps=10, seed=3)
    items.append(dict(version=2, fmt='safetensors', sha256=hashlib.sha256(p).hexdigest(), payload=p,
                      metadata=json.dumps(m), signature=''))
    period, gaps, last = 1 / 15, [], time.perf_counter()
    deadline = time.perf_counter() + 60
    pending = list(items)
    while (pending or not box.idle()) and time.perf_counter() < deadline:
        if pending and box.idle():
            box.submit(pending.pop(0))
        time.sleep(max(0.0, last + period - time.perf_counter()))
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        np.tanh(np.ones(1000))  # a token of control work
    box.close()
    assert len(results) == len(items), results
    assert results[-1] == ('ok', 2) and all(r != 'ok' for r, _ in results[:-1]), results
    assert max(gaps) < 3 * period, f'max tick gap {max(gaps) * 1e3:.0f} ms'


def test_learner_signs_what_the_policy_verifies(tmp_path):
    """LearnerNode.publish_weights with a key: the message's signature verifies with that key (no ROS graph:
    the method runs on a stand-in with the node's attributes)."""
    pytest.importorskip('rclpy')
    from types import SimpleNamespace
    from poco_learner.learner_node import LearnerNode
    key = os.urandom(32)
    sent = []
    stamp = SimpleNamespace(to_msg=lambda: __import__('builtin_interfaces.msg', fromlist=['Time']).Time())
    fake = SimpleNamespace(weights_key=key, weights_pubs=[SimpleNamespace(publish=sent.append)],
                           get_clock=lambda: SimpleNamespace(now=lambda: stamp))
    p, m = actor_bytes()
    LearnerNode.publish_weights(fake, 7, p, m)
    msg = sent[0]
    assert msg.signature.startswith('hmac-sha256:')
    gate = WeightsGate(policy_from_bytes, WeightsLimits(**LIMITS), key, probe_for(OBS))
    policy, _ = gate.check(msg.version, msg.format, msg.sha256, bytes(msg.payload), msg.metadata, msg.signature)
    with pytest.raises(WeightsRejected, match='signature'):
        WeightsGate(policy_from_bytes, WeightsLimits(**LIMITS), os.urandom(32)).check(
            msg.version, msg.format, msg.sha256, bytes(msg.payload), msg.metadata, msg.signature)
    fake.weights_key = None
    LearnerNode.publish_weights(fake, 8, p, m)
    assert sent[1].signature == ''
