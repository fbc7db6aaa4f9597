"""Unit tests of the POCO agent: E-step weights, clipped M-step gradients, TD targets, updates, checkpoints."""
import json

import numpy as np
import pytest
import torch

from poco_learner.agent import (ALGORITHMS, PRESETS, Agent, AgentConfig, _agg, poco_objective)
from poco_learner.train import OnlineTrainer, pretrain

D, A, T = 5, 2, 3
GAMMA = 0.9


def small_config(**kw) -> AgentConfig:
    base = dict(obs_dim=D, action_dim=A, horizon=T, actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32),
                flow_steps=4, batch_size=8, num_candidates=6, gamma=GAMMA, eta=0.1, beta=1.0, zeta=0.5,
                critic_warmup_steps=2, seed=3, bf16_sampling=False, bf16_candidate_loss=False,
                bf16_critic_estep=False)
    base.update(kw)
    return AgentConfig(**base)


def random_batch(rng: np.random.Generator, B: int = 8) -> dict:
    valid = np.ones((B, T), np.float32)
    return dict(obs=rng.standard_normal((B, D)).astype(np.float32),
                actions=rng.uniform(-1, 1, (B, T, A)).astype(np.float32),
                rewards=np.zeros((B, T), np.float32), valid=valid,
                returns=rng.uniform(0, 1, B).astype(np.float32),
                next_obs=rng.standard_normal((B, D)).astype(np.float32),
                discount=np.full(B, GAMMA ** T, np.float32), is_demo=np.zeros(B, np.float32))


def params(module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# --------------------------------------------------------------------------------------------- config
def test_presets_follow_the_paper_tables():
    c = AgentConfig.from_preset('table3_square', obs_dim=10)
    assert (c.zeta, c.eta, c.horizon, c.pretrain_steps, c.max_episode_steps) == (0.08, 0.001, 5, 500_000, 400)
    c = AgentConfig.from_preset('table2_scene', obs_dim=10)
    assert (c.eta, c.zeta, c.num_candidates, c.critic_warmup_steps, c.pretrain_steps) == (0.1, 0.3, 32, 5000, 0)
    assert AgentConfig.from_preset('table2_lift', obs_dim=1).eta == 0.001
    c = AgentConfig.from_preset('table3_pick_cube', obs_dim=10, zeta=0.2)
    assert (c.horizon, c.zeta, c.preset) == (4, 0.2, 'table3_pick_cube')
    c = AgentConfig.from_preset('table5_pick_pen', obs_dim=10)
    assert (c.batch_size, c.actor_lr, c.critic_lr, c.horizon, c.num_candidates, c.zeta) == \
        (64, 5e-5, 3e-4, 10, 16, 0.01)
    for name in PRESETS:
        AgentConfig.from_preset(name, obs_dim=4).validate()
    with pytest.raises(KeyError):
        AgentConfig.from_preset('table9_nothing')
    assert AgentConfig.from_mapping({'preset': 'table3_can', 'obs_dim': 7, 'beta': 2.0}).beta == 2.0
    with pytest.raises(ValueError):
        AgentConfig.from_mapping({'obs_dim': 7, 'typo_key': 1})
    with pytest.raises(ValueError):
        Agent(small_config(algorithm='ppo'))
    AgentConfig()   # full defaults (ROS parameter declaration needs them)


# --------------------------------------------------------------------------------------------- E-step
def test_estep_weights_are_softmax_of_q_over_eta():
    agent = Agent(small_config(eta=0.05))
    obs = torch.randn(4, D)
    cands, q, w = agent.estep(obs)
    assert cands.shape == (4, 6, T * A) and q.shape == w.shape == (4, 6)
    # Q by hand: each ensemble member on concat(s, a), then the mean
    with torch.no_grad():
        qs = torch.stack([agent.critic(obs[i:i + 1].expand(6, D), cands[i]) for i in range(4)], 1)  # [E, 4, 6]
    np.testing.assert_allclose(q.numpy(), qs.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    qn = q.double().numpy() / 0.05
    expected = np.exp(qn - qn.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert len(set(np.round(w[0].numpy(), 6))) > 1          # not trivially uniform


# --------------------------------------------------------------------------------------------- M-step
def test_clipped_objective_value_and_gradient_by_hand():
    l_data = torch.tensor([0.2, 0.4], requires_grad=True)
    l_cand = torch.tensor([[0.1, 0.7, 0.3], [0.6, 0.05, 0.2]], requires_grad=True)
    w = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    beta, zeta = 2.0, 0.5
    J = poco_objective(l_data, l_cand, w, beta, zeta)
    # mean_b [ l_data + beta * sum_j w * min(l, zeta) ] = ((0.2 + 2(0.05+0.15+0.06)) + (0.4 + 2(0.05+0.005+0.16)))/2
    assert J.item() == pytest.approx(((0.2 + 2 * 0.26) + (0.4 + 2 * 0.215)) / 2, rel=1e-6)
    J.backward()
    expected = beta * w / 2 * (l_cand.detach() < zeta)          # zero exactly where L_BC > zeta
    torch.testing.assert_close(l_cand.grad, expected)
    assert l_cand.grad[0, 1] == 0 and l_cand.grad[1, 0] == 0 and l_cand.grad[0, 0] > 0
    torch.testing.assert_close(l_data.grad, torch.full((2,), 0.5))
    # without the clip every candidate pulls
    l_cand.grad = None
    poco_objective(l_data, l_cand, w, beta, zeta, clip=False).backward()
    torch.testing.assert_close(l_cand.grad, beta * w / 2)


def _actor_grad(agent: Agent, batch: dict, gen_state: torch.Tensor) -> torch.Tensor:
    agent.gen.set_state(gen_state)
    agent.actor.zero_grad(set_to_none=True)
    b = agent._batch(batch)
    if agent.cfg.algorithm in ('bc', 'qc_best_of_n'):
        loss = agent._data_bc_loss(b).mean()
    else:
        loss, _ = agent.poco_actor_loss(b)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in agent.actor.parameters() if p.grad is not None])


def test_candidates_above_zeta_give_no_actor_gradient():
    rng = np.random.default_rng(0)
    agent = Agent(small_config(candidate_weight_floor=0.0))
    batch = random_batch(rng)
    # same randomness for every variant: identical candidates, flow noise and times
    state = agent.gen.get_state()
    agent.cfg.zeta = 0.0                     # every candidate clipped -> only the data BC term is left
    g_clip_all = _actor_grad(agent, batch, state)
    agent.cfg.zeta = 1e9                     # nothing clipped
    g_clip_none = _actor_grad(agent, batch, state)
    agent.cfg.algorithm = 'poco_noclip'
    g_noclip = _actor_grad(agent, batch, state)
    # data term alone, drawing the same random numbers in the same order as the POCO path
    agent.cfg.algorithm, agent.cfg.zeta, agent.cfg.beta = 'poco', 1e9, 0.0
    g_data = _actor_grad(agent, batch, state)
    torch.testing.assert_close(g_clip_all, g_data, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(g_clip_none, g_noclip, rtol=1e-6, atol=1e-8)
    assert (g_clip_none - g_data).norm() > 1e-3 * g_data.norm()   # candidates below zeta do pull


def test_weight_floor_prunes_only_negligible_candidates():
    rng = np.random.default_rng(1)
    exact = Agent(small_config(candidate_weight_floor=0.0, eta=0.02))
    pruned = Agent(small_config(candidate_weight_floor=1e-6, eta=0.02))
    pruned.actor.load_state_dict(exact.actor.state_dict())
    pruned.critic.load_state_dict(exact.critic.state_dict())
    batch = random_batch(rng)
    state = exact.gen.get_state()
    g_exact = _actor_grad(exact, batch, state)
    g_pruned = _actor_grad(pruned, batch, state)
    torch.testing.assert_close(g_pruned, g_exact, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------- critic
def test_td_targets_at_episode_ends_and_truncations():
    agent = Agent(small_config())
    g = GAMMA
    rows = {
        # mid-episode: T real steps, reward at k=1, bootstrap with gamma^T
        'middle': dict(rewards=[0, 1, 0], valid=[1, 1, 1], discount=g ** 3),
        # success (terminal) after 2 steps: padded step has reward 0 and no bootstrap
        'terminal': dict(rewards=[0, 1, 0], valid=[1, 1, 0], discount=0.0),
        # timeout after 1 step: bootstrap from the final observation with gamma^1
        'truncated': dict(rewards=[0, 0, 0], valid=[1, 0, 0], discount=g),
    }
    B = len(rows)
    rng = np.random.default_rng(2)
    batch = random_batch(rng, B)
    batch['rewards'] = np.array([r['rewards'] for r in rows.values()], np.float32)
    batch['valid'] = np.array([r['valid'] for r in rows.values()], np.float32)
    batch['returns'] = (batch['rewards'] * batch['valid'] * g ** np.arange(T)).sum(1).astype(np.float32)
    batch['discount'] = np.array([r['discount'] for r in rows.values()], np.float32)
    np.testing.assert_allclose(batch['returns'], [g, g, 0.0], rtol=1e-6)
    b = agent._batch(batch)
    state = agent.gen.get_state()
    target = agent.critic_targets(b)
    # by hand: the same a' ~ pi(.|next_obs) (same random numbers), target critic mean over the ensemble
    agent.gen.set_state(state)
    a_next = agent.sample_candidates(b['next_obs'], 1)[:, 0]
    with torch.no_grad():
        q_next = agent.critic_target(b['next_obs'], a_next).mean(0).numpy()
    expected = np.array([g + g ** 3 * q_next[0], g, g * q_next[2]])
    np.testing.assert_allclose(target.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert target[1].item() == pytest.approx(g)            # terminal: no bootstrap at all


def test_critic_step_fits_targets_and_polyak_moves_target():
    rng = np.random.default_rng(3)
    agent = Agent(small_config(tau=0.1))
    batch = random_batch(rng)
    batch['discount'][:] = 0.0                              # fixed regression targets = returns
    actor_before = params(agent.actor)
    tgt_before = params(agent.critic_target)
    losses = [agent.update(batch, actor_frozen=True)['critic_loss'] for _ in range(60)]
    assert losses[-1] < 0.2 * losses[0]
    for p, q in zip(actor_before, agent.actor.parameters()):  # warm-up leaves the actor alone
        assert torch.equal(p, q)
    # one more step: target <- (1 - tau) target + tau critic
    tgt_before = params(agent.critic_target)
    agent.update(batch, actor_frozen=True)
    for old, new, c in zip(tgt_before, agent.critic_target.parameters(), agent.critic.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * c.detach(), rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------- update
@pytest.mark.parametrize('algorithm', ALGORITHMS)
def test_update_runs_for_every_algorithm(algorithm):
    rng = np.random.default_rng(4)
    agent = Agent(small_config(algorithm=algorithm))
    before = params(agent.actor)
    m = agent.update(random_batch(rng))
    assert all(np.isfinite(v) for v in m.values())
    assert any(not torch.equal(p, q) for p, q in zip(before, agent.actor.parameters()))
    assert ('candidate_loss' in m) == algorithm.startswith('poco')
    assert agent.counters['actor_updates'] == 1 and agent.counters['online_updates'] == 1


def test_nonfinite_batch_skips_the_step():
    rng = np.random.default_rng(5)
    agent = Agent(small_config())
    batch = random_batch(rng)
    batch['returns'][0] = np.nan
    before = params(agent.critic)
    m = agent.update(batch, actor_frozen=True)
    assert np.isnan(m['critic_grad_norm']) and agent.counters['nonfinite_skips'] == 1
    for p, q in zip(before, agent.critic.parameters()):
        assert torch.equal(p, q)


def test_act_shapes_determinism_and_best_of_n():
    agent = Agent(small_config())
    obs = np.random.default_rng(6).standard_normal((3, D)).astype(np.float32)
    assert agent.act(obs[0]).shape == (T, A) and agent.act(obs).shape == (3, T, A)
    np.testing.assert_array_equal(agent.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    assert np.abs(agent.act(obs)).max() <= 1.0
    qc = Agent(small_config(algorithm='qc_best_of_n'))
    state = qc.act_gen.get_state()
    chosen = qc.act(obs)
    qc.act_gen.set_state(state)
    cands = qc.sample_candidates(torch.as_tensor(obs), 6, generator=qc.act_gen)
    with torch.no_grad():
        q = _agg(qc.critic(torch.as_tensor(obs), cands), 'mean')
    best = cands[torch.arange(3), q.argmax(1)].reshape(3, T, A).numpy()
    np.testing.assert_array_equal(chosen, best)


def test_qc_weights_make_the_robot_act_like_the_agent():
    """What the learner publishes for the QC baseline (actor + critic) makes the policy node pick the same
    argmax-Q chunk as the agent, from the same noise; without the critic it would just sample."""
    from poco_policy.flow_policy import BestOfN, policy_from_bytes, weights_to_bytes
    rng = np.random.default_rng(8)
    qc = Agent(small_config(algorithm='qc_best_of_n', critic_agg='min'))
    _train_some(qc, rng)
    payload, meta = weights_to_bytes(qc.actor, best_of_n=BestOfN(qc.critic, 6, 'min'))
    robot = policy_from_bytes(payload, json.dumps(meta))
    assert robot.best_of_n is not None and robot.best_of_n.num_candidates == 6
    obs = rng.standard_normal((3, D)).astype(np.float32)
    state = qc.act_gen.get_state()
    want = qc.act(obs)
    g = torch.Generator()
    g.set_state(state)
    got = robot.act(torch.as_tensor(obs), generator=g).numpy()
    np.testing.assert_array_equal(got, want)
    g.set_state(state)
    plain = policy_from_bytes(*weights_to_bytes(qc.actor)).act(torch.as_tensor(obs), generator=g).numpy()
    assert not np.array_equal(plain, want)       # best-of-6 differs from the first sample
    np.testing.assert_array_equal(robot.act(torch.as_tensor(obs), deterministic=True).numpy(),
                                  qc.act(obs, deterministic=True))


# --------------------------------------------------------------------------------------------- checkpoints
def _train_some(agent: Agent, rng: np.random.Generator) -> None:
    for _ in range(2):
        agent.pretrain_step(random_batch(rng))
    for i in range(4):
        agent.update(random_batch(rng), actor_frozen=i < 2)


@pytest.mark.parametrize('bf16', [False, True])
def test_checkpoint_resume_is_bit_identical(tmp_path, bf16):
    rng = np.random.default_rng(7)
    agent = Agent(small_config(bf16_sampling=bf16, bf16_candidate_loss=bf16, bf16_critic_estep=bf16))
    _train_some(agent, rng)
    agent.save(str(tmp_path / 'ck'))
    json.loads((tmp_path / 'ck.json').read_text())           # plain JSON sidecar (no pickle anywhere)
    nxt = random_batch(rng)
    obs = nxt['obs'][:2]
    m1 = agent.update(nxt)
    a1 = agent.act(obs)
    resumed = Agent.load(str(tmp_path / 'ck'))
    m2 = resumed.update(nxt)
    a2 = resumed.act(obs)
    assert m1 == m2
    np.testing.assert_array_equal(a1, a2)
    for mod in ('actor', 'critic', 'critic_target'):
        for (k, p), q in zip(getattr(agent, mod).state_dict().items(), getattr(resumed, mod).state_dict().values()):
            assert torch.equal(p, q), (mod, k)
    for o1, o2 in ((agent.actor_opt, resumed.actor_opt), (agent.critic_opt, resumed.critic_opt)):
        s1, s2 = o1.state_dict(), o2.state_dict()
        for i in s1['state']:
            for k in s1['state'][i]:
                assert torch.equal(torch.as_tensor(s1['state'][i][k]), torch.as_tensor(s2['state'][i][k]))
    assert agent.counters == resumed.counters


def test_load_with_overrides(tmp_path):
    agent = Agent(small_config())
    _train_some(agent, np.random.default_rng(8))
    agent.save(str(tmp_path / 'ck'))
    bc = Agent.load(str(tmp_path / 'ck'), algorithm='bc', actor_lr=1e-5)
    assert bc.cfg.algorithm == 'bc' and bc.actor_opt.param_groups[0]['lr'] == 1e-5
    with pytest.raises(ValueError, match='fixed by the checkpoint'):
        Agent.load(str(tmp_path / 'ck'), horizon=T + 1)


# --------------------------------------------------------------------------------------------- loops
class _ListBuffer:
    """Stand-in with the ReplayBuffer sampling signature."""

    def __init__(self):
        self.calls = []

    def __len__(self):
        return 100

    def sample(self, batch_size, horizon, gamma, rng):
        self.calls.append((batch_size, horizon, gamma))
        b = random_batch(rng, batch_size)
        return b


def test_pretrain_and_online_trainer_schedule():
    agent = Agent(small_config(critic_warmup_steps=3))
    buf = _ListBuffer()
    m = pretrain(agent, buf, 5, progress=False)
    assert agent.counters['pretrain_steps'] == 5 and np.isfinite(m['bc_loss'])
    assert buf.calls[0] == (8, T, GAMMA)
    published = []
    tr = OnlineTrainer(agent, buf, utd_ratio=0.5, on_policy_update=lambda a: published.append(1))
    assert tr.phase == 'warmup'
    ms = tr.on_env_steps(5)                                     # 2.5 updates earned -> 2 now, 0.5 carried
    assert len(ms) == 2 and all(x['phase_warmup'] == 1.0 for x in ms)
    ms = tr.on_env_steps(3)                                     # 0.5 + 1.5 = 2 more: the 3rd is the last warm-up
    assert [x['phase_warmup'] for x in ms] == [1.0, 0.0]
    assert tr.phase == 'poco' and len(published) == 1
    assert agent.counters['online_updates'] == 4 and agent.counters['actor_updates'] == 1


# --------------------------------------------------------------------------------------------- CLI
def test_pretrain_cli_writes_agent_and_actor_files(tmp_path, capsys):
    from poco_learner.cli import evaluate_main, pretrain_main
    from poco_learner.dataset import write_episode, write_meta
    from poco_policy.flow_policy import policy_from_bytes
    rng = np.random.default_rng(9)
    S = 4
    write_meta(tmp_path / 'demos', {'task': 'pick_cube', 'obs_mode': 'state', 'image_size': 64, 'cameras': [],
                                    'max_joint_delta': 0.05, 'state_dim': S})
    for i in range(3):
        L = 6
        write_episode(tmp_path / 'demos', i, {
            'proprio': rng.uniform(0, 1, (L + 1, 7)), 'state': rng.standard_normal((L + 1, S)),
            'actions': np.concatenate([rng.uniform(-0.05, 0.05, (L, 6)), rng.uniform(0, 1, (L, 1))], 1),
            'rewards': np.eye(L)[-1], 'terminal': True, 'success': True})
    out = str(tmp_path / 'ck' / 'pre')
    rc = pretrain_main(['--dataset', str(tmp_path / 'demos'), '--out', out, '--steps', '3', '--no-progress',
                        '--set', 'actor_hidden_dims=[16,16]', '--set', 'critic_hidden_dims=[16,16]',
                        '--set', 'horizon=4', '--set', 'batch_size=4'])
    assert rc == 0
    agent = Agent.load(out)
    assert agent.cfg.obs_dim == S + 7 and agent.cfg.horizon == 4 and agent.counters['pretrain_steps'] == 3
    meta = json.loads((tmp_path / 'ck' / 'pre_actor.json').read_text())
    assert meta['observation']['obs_mode'] == 'state'
    actor = policy_from_bytes((tmp_path / 'ck' / 'pre_actor.safetensors').read_bytes(), meta)
    for k, v in agent.actor.state_dict().items():
        assert torch.equal(v, actor.state_dict()[k])
    # clear errors, non-zero exit codes
    assert pretrain_main(['--dataset', str(tmp_path / 'missing'), '--out', out]) == 2
    assert pretrain_main(['--dataset', str(tmp_path / 'demos'), '--out', out, '--preset', 'nope']) == 2
    assert evaluate_main([str(tmp_path / 'nothing_here')]) == 2
    assert 'error:' in capsys.readouterr().err


def test_bc_baseline_has_no_critic_update():
    rng = np.random.default_rng(3)
    agent = Agent(small_config(algorithm='bc', critic_warmup_steps=0))
    before = [p.detach().clone() for p in agent.critic.parameters()]
    m = agent.update(random_batch(rng))
    assert 'critic_loss' not in m and 'bc_loss' in m
    assert all(torch.equal(a, p) for a, p in zip(before, agent.critic.parameters()))
    assert agent.counters['actor_updates'] == 1 and agent.counters['online_updates'] == 1
