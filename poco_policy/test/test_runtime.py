"""Plain-Python parts of the policy node: weight gate, chunk runner, safety, message decoding."""
import hashlib
import json

import numpy as np
import pytest
import torch

from poco_policy.runtime import (ChunkRunner, Safety, SafetyLimits, WeightsGate, WeightsRejected,
                                 finite_array, image_to_array)


class Linear(torch.nn.Module):
    def __init__(self, fill=0.5):
        super().__init__()
        self.w = torch.nn.Parameter(torch.full((3,), fill))


def _loader(payload, meta):
    from safetensors.torch import load
    m = Linear()
    m.load_state_dict(load(payload))
    return m


def _payload(fill):
    from safetensors.torch import save
    return save({'w': torch.full((3,), fill)})


def test_weights_gate_accepts_good_and_rejects_bad_payloads():
    gate = WeightsGate(_loader)
    good = _payload(1.5)
    sha = hashlib.sha256(good).hexdigest()
    policy, meta = gate.check(1, 'safetensors', sha, good, json.dumps({'a': 1}))
    assert torch.equal(policy.w, torch.full((3,), 1.5)) and meta == {'a': 1}
    gate.accept(1)
    with pytest.raises(WeightsRejected, match='not newer'):
        gate.check(1, 'safetensors', sha, good, '')
    with pytest.raises(WeightsRejected, match='only safetensors'):
        gate.check(2, 'pickle', sha, good, '')
    with pytest.raises(WeightsRejected, match='sha256 mismatch'):
        gate.check(2, 'safetensors', sha, good[:-1] + b'\x00', '')
    bad = _payload(float('nan'))
    with pytest.raises(WeightsRejected, match='non-finite'):
        gate.check(2, 'safetensors', hashlib.sha256(bad).hexdigest(), bad, '')
    junk = b'\x00' * 64
    with pytest.raises(WeightsRejected, match='cannot load'):
        gate.check(2, 'safetensors', hashlib.sha256(junk).hexdigest(), junk, '')
    assert gate.version == 1  # nothing bad was accepted


def test_chunk_runner_swaps_weights_only_between_chunks():
    # a "policy" is just an int; the chunk it produces is filled with that int
    runner = ChunkRunner(lambda pol, obs, det: np.full((3, 7), pol, np.float32))
    assert not runner.ready
    runner.offer(1, 1)
    assert runner.ready and runner.needs_chunk()
    runner.new_chunk(np.zeros(4), False)
    seen = []
    for step in range(7):
        if runner.needs_chunk():
            runner.new_chunk(np.zeros(4), False)
        a, k = runner.next_action()
        seen.append((int(a[0]), k, runner.version))
        if step == 1:
            runner.offer(2, 2)  # arrives mid-chunk
    assert seen == [(1, 0, 1), (1, 1, 1), (1, 2, 1), (2, 0, 2), (2, 1, 2), (2, 2, 2), (2, 0, 2)]


def test_chunk_runner_can_hold_weights_during_a_block():
    runner = ChunkRunner(lambda pol, obs, det: np.full((2, 7), pol, np.float32))
    runner.offer(1, 1)
    runner.new_chunk(np.zeros(4), False, allow_swap=False)   # no policy yet: takes the first one anyway
    runner.offer(2, 2)
    assert runner.new_chunk(np.zeros(4), False, allow_swap=False)[0, 0] == 1 and runner.version == 1
    assert runner.new_chunk(np.zeros(4), False)[0, 0] == 2 and runner.version == 2


def test_chunk_runner_rejects_nonfinite_chunks():
    runner = ChunkRunner(lambda pol, obs, det: np.full((3, 7), np.nan, np.float32))
    runner.offer(1, 1)
    with pytest.raises(RuntimeError, match='invalid chunk'):
        runner.new_chunk(np.zeros(4), False)


def test_safety_clamps_and_detects():
    s = Safety(SafetyLimits(np.full(6, -1.0), np.full(6, 1.0), np.array([0, 0, 0.]), np.array([1, 1, 1.]), 0.5))
    assert np.array_equal(s.clamp_targets(np.array([2, -2, 0.5, 0, 1, -1.])), [1, -1, 0.5, 0, 1, -1])
    assert s.ee_outside(np.array([0.5, 0.5, 1.2])) and not s.ee_outside(np.array([0.5, 0.5, 0.5]))
    assert s.stale({'a': 10.0, 'b': 9.0, 'c': None}, now=10.2) == ['b', 'c']


def test_image_decoding_and_errors():
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert np.array_equal(image_to_array(2, 3, 'rgb8', 9, rgb.tobytes()), rgb)
    assert np.array_equal(image_to_array(2, 3, 'bgr8', 9, rgb[..., ::-1].tobytes()), rgb)
    padded = np.zeros((2, 12), np.uint8)
    padded[:, :9] = rgb.reshape(2, 9)
    assert np.array_equal(image_to_array(2, 3, 'rgb8', 12, padded.tobytes()), rgb)
    with pytest.raises(ValueError, match='unsupported image encoding'):
        image_to_array(2, 3, '16UC1', 6, b'\x00' * 12)
    with pytest.raises(ValueError, match='too small'):
        image_to_array(2, 3, 'rgb8', 9, b'\x00' * 10)
    with pytest.raises(ValueError, match='NaN'):
        finite_array([1.0, float('nan')], 2)
    with pytest.raises(ValueError, match='expected 7'):
        finite_array([1.0] * 6, 7)
