"""Device settings of the acting side: poco_policy.device, the policy loader/acting API and the image encoder.

CPU-only machines run everything except the tests marked `cuda`, which skip with a reason where torch sees no GPU.
"""
import numpy as np
import pytest
import torch

from poco_policy.bf16 import bf16_autocast, linear_silu
from poco_policy.chunk_critic import ChunkCritic
from poco_policy.device import available_devices, check_device_spec, resolve_device, supports_bf16
from poco_policy.encoder import EncoderConfig, ImageEncoder
from poco_policy.flow_policy import BestOfN, FlowChunkPolicy, FlowPolicyConfig, policy_from_bytes, weights_to_bytes

D, A, T = 6, 3, 4
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason='no CUDA device here (CPU-only torch or no GPU)')
no_cuda = pytest.mark.skipif(HAS_CUDA, reason='this machine has CUDA')


def make_policy(seed=0):
    torch.manual_seed(seed)
    return FlowChunkPolicy(FlowPolicyConfig(obs_dim=D, action_dim=A, horizon=T, hidden_dims=(32, 32), flow_steps=4))


def one_line_value_error(fn) -> str:
    with pytest.raises(ValueError) as e:
        fn()
    msg = str(e.value)
    assert '\n' not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------ resolve_device
def test_auto_picks_cuda_when_there_is_one_else_the_cpu():
    dev = resolve_device('auto')
    assert dev == (torch.device('cuda', 0) if HAS_CUDA else torch.device('cpu'))
    assert resolve_device('cpu') == torch.device('cpu')
    assert resolve_device(' CPU ') == torch.device('cpu')
    assert available_devices()[0] == 'cpu'


@no_cuda
def test_cuda_without_cuda_fails_in_one_line_naming_the_setting_and_what_is_available():
    for spec in ('cuda', 'cuda:0', 'cuda:3'):
        msg = one_line_value_error(lambda: resolve_device(spec, 'AgentConfig.device'))
        assert msg.startswith(f"AgentConfig.device='{spec}'"), msg
        assert 'CUDA is not available' in msg and "available: 'auto', 'cpu'" in msg, msg


def test_malformed_device_names_the_choices():
    for spec in ('gpu', 'cuda:x', '', 'cuda:-1', 3, None):
        msg = one_line_value_error(lambda: check_device_spec(spec, 'EncoderConfig.device'))
        assert 'EncoderConfig.device=' in msg and "'auto', 'cpu', 'cuda' or 'cuda:N'" in msg, msg
    assert check_device_spec(torch.device('cpu')) == 'cpu'
    assert check_device_spec('cuda:1') == 'cuda:1'          # syntax only: no CUDA query


def test_bf16_helpers_are_device_aware():
    assert supports_bf16(torch.device('cpu')) in (True, False)
    x = torch.randn(8, 4).to(torch.bfloat16)
    w, b = torch.randn(5, 4).to(torch.bfloat16), torch.randn(5).to(torch.bfloat16)
    with torch.no_grad():
        torch.testing.assert_close(linear_silu(x, w, b).float(), torch.nn.functional.silu(
            torch.nn.functional.linear(x.float(), w.float(), b.float())), atol=0.05, rtol=0.02)
    with bf16_autocast(True, 'cpu'):
        assert torch.mm(torch.randn(2, 2), torch.randn(2, 2)).dtype == torch.bfloat16
    with bf16_autocast(False, 'cuda'):                       # disabled: a no-op even without CUDA
        pass


# ------------------------------------------------------------------------------------------------- policy
def test_policy_loader_takes_a_device_and_auto_is_the_cpu_here():
    pol = make_policy()
    payload, meta = weights_to_bytes(pol)
    obs = torch.randn(3, D)
    want = pol.act(obs, deterministic=True)
    for dev in ('cpu', 'auto'):
        got = policy_from_bytes(payload, meta, device=dev)
        assert got.device == resolve_device(dev)
        torch.testing.assert_close(got.act(obs, deterministic=True).cpu(), want)
    assert policy_from_bytes(payload, meta).device == torch.device('cpu')     # default: the CPU


@no_cuda
def test_policy_loader_on_cuda_without_cuda_fails_in_one_line():
    payload, meta = weights_to_bytes(make_policy())
    msg = one_line_value_error(lambda: policy_from_bytes(payload, meta, device='cuda'))
    assert msg.startswith("policy device='cuda'") and 'available' in msg, msg


def test_policy_acting_creates_every_tensor_on_the_policy_device():
    """A tensor created without an explicit device would land on the default device. Make that 'meta': any such
    tensor then breaks the computation (or changes the numbers), so equal results prove device-clean code."""
    pol = make_policy(1)
    crit = ChunkCritic(D, T * A, (16, 16), 2)
    pol.best_of_n = BestOfN(crit, 5, 'mean')
    obs = torch.randn(4, D)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    want = (pol.act(obs, generator=g1), pol.act(obs, deterministic=True),
            pol.bc_loss(obs, torch.rand(4, 2, T, A), generator=g1))
    with torch.device('meta'):
        got = (pol.act(obs, generator=g2), pol.act(obs, deterministic=True),
               pol.bc_loss(obs, torch.rand(4, 2, T, A, device='cpu', generator=torch.Generator().manual_seed(0)),
                           generator=g2))
    for w, g in zip(want[:2], got[:2]):
        assert g.device.type == 'cpu'
        torch.testing.assert_close(g, w)
    assert got[2].device.type == 'cpu' and torch.isfinite(got[2]).all()


# ------------------------------------------------------------------------------------------------ encoder
def test_encoder_device_setting():
    assert EncoderConfig().device == 'auto'
    enc = ImageEncoder(EncoderConfig(image_size=32, feature_dim=8, device='cpu'))
    assert enc.device == torch.device('cpu')
    assert ImageEncoder(EncoderConfig(image_size=32, feature_dim=8)).device == resolve_device('auto')
    one_line_value_error(lambda: EncoderConfig(device='tpu'))


@no_cuda
def test_encoder_on_cuda_without_cuda_fails_in_one_line():
    msg = one_line_value_error(lambda: ImageEncoder(EncoderConfig(image_size=32, feature_dim=8, device='cuda')))
    assert msg.startswith("EncoderConfig.device='cuda'"), msg


# ---------------------------------------------------------------------------------------------- CUDA only
@cuda
def test_cuda_policy_acts_like_the_cpu_policy():
    pol = make_policy(2)
    crit = ChunkCritic(D, T * A, (16, 16), 2)
    payload, meta = weights_to_bytes(pol, best_of_n=BestOfN(crit, 5, 'min'))
    cpu, gpu = policy_from_bytes(payload, meta, device='cpu'), policy_from_bytes(payload, meta, device='cuda')
    assert gpu.device.type == 'cuda' and next(gpu.best_of_n.critic.parameters()).device.type == 'cuda'
    obs = torch.randn(5, D)
    torch.testing.assert_close(gpu.act(obs, deterministic=True).cpu(), cpu.act(obs, deterministic=True),
                               atol=1e-5, rtol=1e-4)
    # a CPU generator gives the same noise to a CUDA policy
    a_gpu = gpu.sample(obs.cuda(), 3, generator=torch.Generator().manual_seed(1), clip=False)
    a_cpu = cpu.sample(obs, 3, generator=torch.Generator().manual_seed(1), clip=False)
    torch.testing.assert_close(a_gpu.cpu(), a_cpu, atol=1e-4, rtol=1e-4)
    assert gpu.act(obs).device.type == 'cuda'                 # best-of-N on the GPU
    again, _ = weights_to_bytes(gpu, best_of_n=gpu.best_of_n)  # shipped from CPU copies: identical bytes
    assert again == payload


@cuda
def test_cuda_encoder_matches_cpu_features():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
    cpu = ImageEncoder(EncoderConfig(image_size=32, feature_dim=16, device='cpu'))
    gpu = ImageEncoder(EncoderConfig(image_size=32, feature_dim=16, device='cuda'))
    assert gpu.fingerprint == cpu.fingerprint
    f = gpu.encode(imgs)
    assert isinstance(f, np.ndarray) and f.dtype == np.float32
    np.testing.assert_allclose(f, cpu.encode(imgs), atol=1e-4, rtol=1e-3)
