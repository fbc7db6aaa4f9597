"""Tests of the flow-matching chunk policy: loss, sampling, state-encoding reuse, bf16 path, weight bytes."""
import json

import numpy as np
import pytest
import torch
from torch import nn

from poco_policy.chunk_critic import ChunkCritic
from poco_policy.flow_policy import (BestOfN, FlowChunkPolicy, FlowPolicyConfig, check_finite, cpu_supports_bf16,
                                     policy_from_bytes, state_is_finite, weights_to_bytes)

D, A, T = 6, 3, 4


def make_policy(seed=0, hidden=(32, 32), steps=5, **kw):
    torch.manual_seed(seed)
    return FlowChunkPolicy(FlowPolicyConfig(obs_dim=D, action_dim=A, horizon=T, hidden_dims=hidden,
                                            flow_steps=steps, **kw))


def concat_mlp(policy):
    """The textbook network: one MLP on concat(s, a, m), weights copied from the split-layer policy."""
    lin = [m for m in policy.trunk if isinstance(m, nn.Linear)]
    first = nn.Linear(D + T * A + 1, policy.cfg.hidden_dims[0])
    with torch.no_grad():
        first.weight.copy_(torch.cat([policy.obs_in.weight, policy.act_in.weight], 1))
        first.bias.copy_(policy.obs_in.bias)
    layers = [first]
    for m in lin:
        layers += [nn.SiLU(), m]
    return nn.Sequential(*layers)


def test_config_validation():
    with pytest.raises(ValueError):
        FlowChunkPolicy(FlowPolicyConfig(obs_dim=0))
    with pytest.raises(ValueError):
        FlowChunkPolicy(FlowPolicyConfig(obs_dim=3, hidden_dims=()))
    with pytest.raises(ValueError):
        FlowPolicyConfig.from_json_dict({'obs_dim': 3, 'bogus': 1})


def test_bc_loss_matches_hand_computation():
    p = make_policy()
    ref = concat_mlp(p)
    g = torch.Generator().manual_seed(1)
    obs, a1 = torch.randn(5, D, generator=g), torch.rand(5, T, A, generator=g) * 2 - 1
    a0, m = torch.randn(5, T * A, generator=g), torch.rand(5, generator=g)
    loss = p.bc_loss(obs, a1, noise=a0, m=m)
    a1f = a1.reshape(5, -1)
    a_m = (1 - m[:, None]) * a0 + m[:, None] * a1f                  # linear path
    v = ref(torch.cat([obs, a_m, m[:, None]], 1))
    expected = ((v - (a1f - a0)) ** 2).mean(1)                       # per-sample MSE to a1 - a0
    assert loss.shape == (5,)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_bc_loss_candidates_share_state_and_mask_ignores_padding():
    p = make_policy()
    g = torch.Generator().manual_seed(2)
    obs = torch.randn(3, D, generator=g)
    cands = torch.rand(3, 4, T, A, generator=g) * 2 - 1
    a0, m = torch.randn(3, 4, T * A, generator=g), torch.rand(3, 4, generator=g)
    batched = p.bc_loss(obs, cands, noise=a0, m=m)
    assert batched.shape == (3, 4)
    for j in range(4):   # same as evaluating each candidate on its own
        torch.testing.assert_close(batched[:, j], p.bc_loss(obs, cands[:, j], noise=a0[:, j], m=m[:, j]),
                                   rtol=1e-5, atol=1e-6)
    # mask: changing the padded (masked) steps must not change the loss; changing a real step must
    a1 = torch.rand(3, T, A, generator=g) * 2 - 1
    a0, m = torch.randn(3, T * A, generator=g), torch.rand(3, generator=g)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.float32)
    base = p.bc_loss(obs, a1, noise=a0, m=m, mask=mask)
    # with the linear path the velocity input depends on all steps, so vary only the TARGET of padded steps
    # through a1 AND a0 together such that a_m is unchanged: a1' = a1 + d, a0' = a0 - d * m / (1 - m)
    d = torch.zeros(3, T, A)
    d[0, 2:] = 0.5
    d[2, 1:] = -0.3
    df = d.reshape(3, -1)
    a1b = a1 + d
    a0b = a0 - df * (m / (1 - m))[:, None]
    torch.testing.assert_close(p.bc_loss(obs, a1b, noise=a0b, m=m, mask=mask), base, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(p.bc_loss(obs, a1b, noise=a0b, m=m), p.bc_loss(obs, a1, noise=a0, m=m))


def test_euler_sampling_of_a_constant_field_is_exact():
    p = make_policy(steps=4, clip_samples=False)
    with torch.no_grad():
        for prm in p.parameters():
            prm.zero_()
        c = torch.linspace(-0.3, 0.3, T * A)
        [m for m in p.trunk if isinstance(m, nn.Linear)][-1].bias.copy_(c)   # v(a, m, s) = c everywhere
    obs = torch.randn(2, D)
    noise = torch.randn(2, 3, T, A)
    out = p.sample(obs, 3, noise=noise)
    torch.testing.assert_close(out, noise + c.reshape(T, A), rtol=0, atol=1e-6)  # a1 = a0 + 1 * c
    p.cfg.clip_samples = True
    big = p.sample(obs, 3, noise=noise * 10)
    assert big.abs().max() <= 1.0 and big.shape == (2, 3, T, A)


def test_sample_matches_textbook_euler_and_encodes_obs_once():
    p = make_policy(steps=6)
    ref = concat_mlp(p)
    obs = torch.randn(4, D)
    noise = torch.randn(4, 5, T * A)
    calls = []
    h = p.obs_in.register_forward_hook(lambda *_: calls.append(1))
    out = p.sample(obs, 5, noise=noise, clip=False)
    h.remove()
    assert len(calls) == 1                  # one projection of the states for 5 candidates x 6 steps
    with torch.no_grad():
        for j in range(5):
            a = noise[:, j].clone()
            for k in range(6):
                m = torch.full((4, 1), k / 6)
                a = a + ref(torch.cat([obs, a, m], 1)) / 6
            torch.testing.assert_close(out[:, j].reshape(4, -1), a, rtol=1e-5, atol=1e-5)


def test_zero_noise_is_deterministic_and_random_noise_is_not():
    p = make_policy()
    obs = torch.randn(2, D)
    z = torch.zeros(2, 2, T, A)
    torch.testing.assert_close(p.sample(obs, 2, noise=z), p.sample(obs, 2, noise=z), rtol=0, atol=0)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    assert not torch.equal(p.sample(obs, 2, generator=g1), p.sample(obs, 2, generator=g2))


def _train_briefly(p, steps=150):
    """A few BC steps on a bimodal target so the velocity field is O(1), as in a trained policy."""
    opt = torch.optim.Adam(p.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        obs = torch.randn(128, D, generator=g)
        mode = torch.where(torch.rand(128, 1, 1, generator=g) < 0.5, -0.6, 0.6)
        acts = (torch.tanh(obs[:, :A])[:, None, :] * 0.4 + mode).expand(128, T, A).clamp(-1, 1)
        loss = p.bc_loss(obs, acts + 0.05 * torch.randn(128, T, A, generator=g)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return p


@pytest.mark.skipif(not cpu_supports_bf16(), reason='CPU without native bf16')
def test_bf16_sampling_close_to_fp32():
    p = _train_briefly(make_policy(hidden=(64, 64, 64), steps=10))
    obs = torch.randn(16, D)
    noise = torch.randn(16, 32, T, A)
    a32 = p.sample(obs, 32, noise=noise)
    a16 = p.sample(obs, 32, noise=noise, bf16=True)
    diff = (a32 - a16).abs()
    assert a32.std() > 0.3                                  # non-trivial samples
    assert diff.max() < 0.05 and diff.mean() < 5e-3
    # distribution: means per state/dim from independent draws agree within Monte-Carlo error
    d32 = p.sample(obs[:4], 400, generator=torch.Generator().manual_seed(5))
    d16 = p.sample(obs[:4], 400, generator=torch.Generator().manual_seed(6), bf16=True)
    se = d32.std(1) / np.sqrt(400)
    assert ((d32.mean(1) - d16.mean(1)).abs() < 5 * se + 1e-3).all()


def test_weights_bytes_round_trip():
    p = _train_briefly(make_policy(), steps=5)
    payload, meta = weights_to_bytes(p, extra={'update_step': 7})
    json.dumps(meta)                                         # travels as JSON in PolicyWeights.metadata
    assert meta['update_step'] == 7 and meta['config']['obs_dim'] == D
    q = policy_from_bytes(payload, json.dumps(meta))
    for k, v in p.state_dict().items():
        assert torch.equal(v, q.state_dict()[k])
    obs, z = torch.randn(3, D), torch.randn(3, 2, T, A)
    torch.testing.assert_close(p.sample(obs, 2, noise=z), q.sample(obs, 2, noise=z), rtol=0, atol=0)
    assert policy_from_bytes(payload).cfg == p.cfg           # the header alone is enough


def test_weights_bytes_reject_bad_input():
    p = make_policy()
    payload, meta = weights_to_bytes(p)
    with pytest.raises(ValueError, match='sha256'):
        policy_from_bytes(payload[:-1] + bytes([payload[-1] ^ 1]), meta)
    with pytest.raises(ValueError):
        policy_from_bytes(b'garbage', {})
    wrong = dict(meta, config=dict(meta['config'], hidden_dims=[16, 16]), sha256='')
    with pytest.raises(ValueError):
        policy_from_bytes(payload, wrong)
    # non-finite weights: refused on the way out and on the way in
    with torch.no_grad():
        p.trunk[1].weight[0, 0] = float('nan')
    assert not state_is_finite(p)
    with pytest.raises(ValueError, match='NaN or Inf'):
        weights_to_bytes(p)
    with pytest.raises(ValueError):
        check_finite(p)
    from safetensors.torch import save as st_save
    bad = st_save({k: v.contiguous() for k, v in p.state_dict().items()},
                  metadata={'format': meta['format'], 'config': json.dumps(meta['config'])})
    with pytest.raises(ValueError, match='NaN or Inf'):
        policy_from_bytes(bad, {'config': meta['config']})


def test_weights_with_critic_act_best_of_n_and_reject_mismatches():
    p = make_policy()
    torch.manual_seed(1)
    critic = ChunkCritic(D, T * A, (16, 16), 2)
    payload, meta = weights_to_bytes(p, best_of_n=BestOfN(critic, 5, 'mean'))
    q = policy_from_bytes(payload, json.dumps(meta))
    assert q.best_of_n.num_candidates == 5 and set(q.state_dict()) == set(p.state_dict())
    obs = torch.randn(2, D)
    g = torch.Generator().manual_seed(3)
    chosen = q.act(obs, generator=g)
    cands = p.sample(obs, 5, generator=torch.Generator().manual_seed(3)).reshape(2, 5, T * A)
    qv = critic(obs, cands).mean(0)
    torch.testing.assert_close(chosen.reshape(2, -1), cands[torch.arange(2), qv.argmax(1)], rtol=0, atol=0)
    assert policy_from_bytes(payload).best_of_n is not None            # the header alone is enough
    assert policy_from_bytes(*weights_to_bytes(p)).best_of_n is None   # plain actor: plain sampling
    with pytest.raises(ValueError, match='best_of_n'):
        policy_from_bytes(payload, dict(meta, best_of_n=dict(meta['best_of_n'], num_candidates=9)))
    with pytest.raises(ValueError, match='does not fit'):
        weights_to_bytes(p, best_of_n=BestOfN(ChunkCritic(D + 1, T * A, (16,), 1), 5))
    from safetensors.torch import load as st_load, save as st_save
    state = st_load(payload)
    state.pop('critic.members.1.obs_in.bias')
    header = {'format': meta['format'], 'config': json.dumps(meta['config']),
              'best_of_n': json.dumps(meta['best_of_n'])}
    with pytest.raises(ValueError, match='critic tensor'):
        policy_from_bytes(st_save(state, metadata=header))
    stray = st_save(dict(st_load(payload)), metadata={'format': meta['format'], 'config': json.dumps(meta['config'])})
    with pytest.raises(ValueError, match='without a best_of_n'):
        policy_from_bytes(stray)
