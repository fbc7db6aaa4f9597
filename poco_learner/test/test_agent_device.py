"""AgentConfig.device: resolution, one-line errors, device-clean updates, CPU-loadable checkpoints and weights.

The `cuda` tests skip with a reason where torch sees no GPU; everything else runs on CPU-only machines.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from poco_learner.agent import Agent, AgentConfig
from poco_policy.device import resolve_device
from poco_policy.flow_policy import policy_from_bytes, weights_to_bytes

D, A, T = 5, 2, 3
HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason='no CUDA device here (CPU-only torch or no GPU)')
no_cuda = pytest.mark.skipif(HAS_CUDA, reason='this machine has CUDA')


def small_config(**kw) -> AgentConfig:
    base = dict(obs_dim=D, action_dim=A, horizon=T, actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32),
                flow_steps=4, batch_size=8, num_candidates=6, eta=0.1, zeta=0.5, critic_warmup_steps=0, seed=3,
                bf16_sampling=False, bf16_candidate_loss=False, bf16_critic_estep=False)
    base.update(kw)
    return AgentConfig(**base)


def random_batch(rng: np.random.Generator, B: int = 8) -> dict:
    return dict(obs=rng.standard_normal((B, D)).astype(np.float32),
                actions=rng.uniform(-1, 1, (B, T, A)).astype(np.float32),
                rewards=np.zeros((B, T), np.float32), valid=np.ones((B, T), np.float32),
                returns=rng.uniform(0, 1, B).astype(np.float32),
                next_obs=rng.standard_normal((B, D)).astype(np.float32),
                discount=np.full(B, 0.9 ** T, np.float32), is_demo=np.zeros(B, np.float32))


def test_default_is_auto_and_auto_picks_the_cpu_without_cuda():
    assert AgentConfig().device == 'auto'
    agent = Agent(small_config())
    assert agent.device == resolve_device('auto')
    if not HAS_CUDA:
        assert agent.device == torch.device('cpu')
    assert all(p.device == agent.device for p in agent.actor.parameters())
    assert all(p.device == agent.device for p in agent.critic_target.parameters())
    assert agent.gen.device == agent.device and agent.act_gen.device == agent.device


@no_cuda
def test_cuda_without_cuda_fails_at_construction_in_one_line():
    for spec in ('cuda', 'cuda:1'):
        with pytest.raises(ValueError) as e:
            Agent(small_config(device=spec))
        msg = str(e.value)
        assert '\n' not in msg, msg
        assert msg.startswith(f"AgentConfig.device='{spec}'") and "available: 'auto', 'cpu'" in msg, msg


def test_malformed_device_is_a_config_error():
    with pytest.raises(ValueError, match=r"AgentConfig.device='gpu' is not a device"):
        small_config(device='gpu').validate()
    assert AgentConfig.from_mapping({'obs_dim': 4, 'device': 'cpu'}).device == 'cpu'


def test_device_does_not_change_the_initial_weights():
    # networks are initialised on the CPU and then moved: the seed alone decides the weights
    a, b = Agent(small_config(device='cpu')), Agent(small_config(device='auto'))
    for x, y in zip(a.actor.state_dict().values(), b.actor.state_dict().values()):
        assert torch.equal(x, y.cpu())


def test_update_creates_every_tensor_on_the_agent_device():
    """With 'meta' as the default device, any tensor made without an explicit device breaks the computation or
    changes the numbers: a twin agent updated that way must match the plain one exactly."""
    rng = np.random.default_rng(0)
    batches = [random_batch(rng) for _ in range(3)]
    obs = batches[0]['obs'][:2]
    results = []
    for meta in (False, True):
        agent = Agent(small_config(candidate_weight_floor=0.0, device='cpu'))
        agent.pretrain_step(batches[0])
        agent.update(batches[0])        # optimiser state exists before the default device changes
        with torch.device('meta') if meta else torch.device('cpu'):
            m = [agent.update(b) for b in batches[1:]]
            m.append(agent.pretrain_step(batches[0]))
            a = (agent.act(obs), agent.act(obs, deterministic=True))
        results.append((m, a, [p.detach().clone() for p in agent.actor.parameters()]))
    (m1, a1, p1), (m2, a2, p2) = results
    assert m1 == m2
    for x, y in zip(a1 + tuple(p1), a2 + tuple(p2)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_qc_best_of_n_is_device_clean_too():
    rng = np.random.default_rng(1)
    b = random_batch(rng)
    outs = []
    for meta in (False, True):
        agent = Agent(small_config(algorithm='qc_best_of_n', device='cpu'))
        agent.update(b)
        with torch.device('meta') if meta else torch.device('cpu'):
            outs.append((agent.update(b), agent.act(b['obs'][:3])))
    assert outs[0][0] == outs[1][0]
    np.testing.assert_array_equal(outs[0][1], outs[1][1])


def test_checkpoint_is_cpu_safetensors_and_load_takes_the_device_from_its_override(tmp_path):
    rng = np.random.default_rng(2)
    agent = Agent(small_config(device='cpu'))
    agent.update(random_batch(rng))
    agent.save(str(tmp_path / 'ck'))
    meta = json.loads((tmp_path / 'ck.json').read_text())
    assert meta['config']['device'] == 'cpu' and meta['rng_device'] == agent.device.type
    assert all(t.device.type == 'cpu' for t in load_file(str(tmp_path / 'ck.safetensors')).values())
    assert Agent.load(str(tmp_path / 'ck')).cfg.device == 'auto'          # not taken from the checkpoint
    assert Agent.load(str(tmp_path / 'ck'), device='cpu').device == torch.device('cpu')
    if not HAS_CUDA:
        with pytest.raises(ValueError, match=r"^AgentConfig.device='cuda' but CUDA is not available"):
            Agent.load(str(tmp_path / 'ck'), device='cuda')


def test_checkpoint_from_another_device_kind_loads_with_reseeded_generators(tmp_path):
    """A GPU learner's checkpoint (CUDA generator states) on a CPU-only machine: weights load, the generators are
    reseeded deterministically from the saved states, with a warning."""
    rng = np.random.default_rng(3)
    agent = Agent(small_config(device='cpu'))
    agent.update(random_batch(rng))
    agent.save(str(tmp_path / 'ck'))
    meta = json.loads((tmp_path / 'ck.json').read_text())
    meta['rng_device'] = 'cuda'                                               # as if saved on a GPU server
    (tmp_path / 'ck.json').write_text(json.dumps(meta))
    b = random_batch(rng)
    with pytest.warns(UserWarning, match='generators reseeded'):
        r1 = Agent.load(str(tmp_path / 'ck'), device='cpu')
    with pytest.warns(UserWarning):
        r2 = Agent.load(str(tmp_path / 'ck'), device='cpu')
    for x, y in zip(agent.actor.state_dict().values(), r1.actor.state_dict().values()):
        assert torch.equal(x.cpu(), y.cpu())
    assert r1.update(b) == r2.update(b)


# ---------------------------------------------------------------------------------------------- CUDA only
@cuda
@pytest.mark.parametrize('bf16', [False, True])
def test_cuda_agent_trains_and_ships_cpu_loadable_weights(tmp_path, bf16):
    rng = np.random.default_rng(4)
    flags = dict(bf16_sampling=bf16, bf16_candidate_loss=bf16, bf16_critic_estep=bf16)
    gpu = Agent(small_config(device='cuda', candidate_weight_floor=0.0, **flags))
    cpu = Agent(small_config(device='cpu', candidate_weight_floor=0.0))
    assert gpu.device.type == 'cuda' and gpu.bf16 == bf16
    obs = random_batch(rng)['obs'][:4]
    # same weights: the deterministic (zero-noise) chunk agrees to float tolerance
    np.testing.assert_allclose(gpu.act(obs, deterministic=True), cpu.act(obs, deterministic=True), atol=1e-5)
    for _ in range(3):
        gpu.pretrain_step(random_batch(rng))
        m = gpu.update(random_batch(rng))
        assert all(np.isfinite(v) for v in m.values()), m
    assert gpu.counters['nonfinite_skips'] == 0
    assert all(p.device.type == 'cuda' for p in gpu.actor.parameters())
    gpu.save(str(tmp_path / 'ck'))
    assert all(t.device.type == 'cpu' for t in load_file(str(tmp_path / 'ck.safetensors')).values())
    with pytest.warns(UserWarning, match='generators reseeded'):
        back = Agent.load(str(tmp_path / 'ck'), device='cpu')
    np.testing.assert_allclose(back.act(obs, deterministic=True), gpu.act(obs, deterministic=True), atol=1e-5)
    again = Agent.load(str(tmp_path / 'ck'), device='cuda')           # same kind: exact RNG resume
    b = random_batch(rng)
    assert again.update(b).keys() == gpu.update(b).keys()
    payload, meta = weights_to_bytes(gpu.actor)                          # what the learner publishes
    robot = policy_from_bytes(payload, meta, device='cpu')
    np.testing.assert_allclose(robot.act(torch.as_tensor(obs), deterministic=True).numpy(),
                               gpu.act(obs, deterministic=True), atol=1e-5)
