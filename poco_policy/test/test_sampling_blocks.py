"""fp32 CPU sampling integrates the states block by block (cache-sized temporaries): the chunks must be those of
the unblocked integration, to float rounding, for any block size (ragged last block included)."""
import pytest
import torch

import poco_policy.flow_policy as fp

D, A, T = 9, 3, 4


def make_policy(hidden, seed=0):
    torch.manual_seed(seed)
    return fp.FlowChunkPolicy(fp.FlowPolicyConfig(obs_dim=D, action_dim=A, horizon=T, hidden_dims=hidden,
                                                  flow_steps=6))


def sample_with_block_bytes(monkeypatch, policy, obs, n, noise, block_bytes):
    monkeypatch.setattr(fp, '_CPU_BLOCK_BYTES', block_bytes)
    with torch.no_grad():
        return policy.sample(obs, n, noise=noise, clip=False)


@pytest.mark.parametrize('states_per_block', [1, 3, 5, 13])
def test_blocked_fp32_sampling_equals_unblocked(monkeypatch, states_per_block):
    pol = make_policy((64, 48))
    B, N = 13, 8
    g = torch.Generator().manual_seed(1)
    obs, noise = torch.randn(B, D, generator=g), torch.randn(B, N, T * A, generator=g)
    whole = sample_with_block_bytes(monkeypatch, pol, obs, N, noise, 1 << 40)
    blocked = sample_with_block_bytes(monkeypatch, pol, obs, N, noise, states_per_block * 4 * 64 * N)
    torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-6)
    # the noise is not modified in place, and the generator path draws the same noise as before blocking
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    monkeypatch.setattr(fp, '_CPU_BLOCK_BYTES', 1 << 40)
    a1 = pol.sample(obs, N, generator=g1)
    monkeypatch.setattr(fp, '_CPU_BLOCK_BYTES', states_per_block * 4 * 64 * N)
    torch.testing.assert_close(pol.sample(obs, N, generator=g2), a1, rtol=1e-5, atol=1e-6)


def test_default_block_at_paper_width(monkeypatch):
    """4x512 with N 32: the default block (64 states) splits 70 states into 64 + 6."""
    pol = make_policy((512,) * 4, seed=2)
    B, N = 70, 32
    assert fp._CPU_BLOCK_BYTES // (4 * 512 * N) == 64
    g = torch.Generator().manual_seed(3)
    obs, noise = torch.randn(B, D, generator=g), torch.randn(B, N, T * A, generator=g)
    blocked = sample_with_block_bytes(monkeypatch, pol, obs, N, noise, fp._CPU_BLOCK_BYTES)
    whole = sample_with_block_bytes(monkeypatch, pol, obs, N, noise, 1 << 40)
    torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-6)
    # bf16 sampling is never blocked: unchanged by the constant
    with torch.no_grad():
        b1 = pol.sample(obs, N, noise=noise, bf16=True)
        monkeypatch.setattr(fp, '_CPU_BLOCK_BYTES', 1)
        torch.testing.assert_close(pol.sample(obs, N, noise=noise, bf16=True), b1, rtol=0, atol=0)
