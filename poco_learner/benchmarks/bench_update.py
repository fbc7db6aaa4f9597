"""Benchmark one POCO update at the paper's sizes: our Agent vs a straightforward reference, same run.

Sizes: batch 256, N = 32 candidates, K = 10 flow steps, T = 5, 7-D actions, 4 x 512 MLPs, obs dim 1031.
The reference is the honest naive fp32 version: one MLP on concat(s, a, m), candidates generated and scored
one at a time (the observation is re-encoded for every candidate and every flow step), candidate BC losses in
a Python loop. Variants of ours: defaults (eta = 0.001), eta = 0.1 (flat weights: little candidate pruning) and
"exact" (fp32 everywhere, no pruning). Also reported: fp32 equivalence of our fused paths with the reference,
single-state chunk latency (p50/p99), and bf16-vs-fp32 checks of the E-step samples (same noise; distribution
statistics), the E-step weights (next to the change one critic step makes) and the candidate-loss gradient.

    python poco_learner/benchmarks/bench_update.py [--reps 7] [--breakdown] [--json out.json] [--quick]

The machine is shared: timings are interleaved round by round (each variant once per round) and reported as
min, median and the median of the per-round ratios (the most load-robust number).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from poco_learner.agent import Agent, AgentConfig, _agg
from poco_policy.flow_policy import FlowChunkPolicy, bf16_autocast, cpu_supports_bf16

OBS, A, T, H, N, K, B = 1031, 7, 5, 512, 32, 10, 256


# ------------------------------------------------------------------------------------- naive reference
def _mlp(inp: int, out: int, layers: int, ln: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = inp
    for _ in range(layers):
        mods += [nn.Linear(d, H), nn.SiLU()] + ([nn.LayerNorm(H)] if ln else [])
        d = H
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


class NaiveAgent:
    """Textbook POCO update in fp32 without any reuse; weights copied from an Agent for a like-for-like run."""

    def __init__(self, src: Agent):
        c = src.cfg
        self.cfg = c
        da = c.horizon * c.action_dim
        self.actor = _mlp(c.obs_dim + da + 1, da, len(c.actor_hidden_dims), ln=False)
        self.critics = nn.ModuleList(_mlp(c.obs_dim + da, 1, len(c.critic_hidden_dims), ln=True)
                                     for _ in range(c.num_critics))
        self._copy_from(src)
        self.targets = [_mlp(c.obs_dim + da, 1, len(c.critic_hidden_dims), ln=True) for _ in range(c.num_critics)]
        for t, q in zip(self.targets, self.critics):
            t.load_state_dict(q.state_dict())
            t.requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critics.parameters(), lr=c.critic_lr)

    @torch.no_grad()
    def _copy_from(self, src: Agent) -> None:
        # our split first layer [W_s | W_a | w_m] is exactly one linear layer on concat(s, a, m)
        self.actor[0].weight.copy_(torch.cat([src.actor.obs_in.weight, src.actor.act_in.weight], 1))
        self.actor[0].bias.copy_(src.actor.obs_in.bias)
        trunk_lin = [m for m in src.actor.trunk if isinstance(m, nn.Linear)]
        for dst, s in zip([m for m in self.actor if isinstance(m, nn.Linear)][1:], trunk_lin):
            dst.load_state_dict(s.state_dict())
        for q, mem in zip(self.critics, src.critic.members):
            q[0].weight.copy_(torch.cat([mem.obs_in.weight, mem.act_in.weight], 1))
            q[0].bias.copy_(mem.obs_in.bias)
            q[2].load_state_dict(mem.norm0.state_dict())
            rest = [m for m in mem.trunk if isinstance(m, (nn.Linear, nn.LayerNorm))]
            for dst, s in zip([m for m in q[3:] if isinstance(m, (nn.Linear, nn.LayerNorm))], rest):
                dst.load_state_dict(s.state_dict())

    def velocity(self, obs, a, m):
        return self.actor(torch.cat([obs, a, m[:, None]], 1))

    @torch.no_grad()
    def sample_one(self, obs, noise, clip=True):
        a = noise.clone()
        for k in range(self.cfg.flow_steps):
            m = torch.full((obs.shape[0],), k / self.cfg.flow_steps)
            a = a + self.velocity(obs, a, m) / self.cfg.flow_steps
        return a.clamp(-1, 1) if clip else a

    def q_all(self, nets, obs, a):
        return torch.stack([q(torch.cat([obs, a], 1)).squeeze(-1) for q in nets], 0)

    def bc_loss(self, obs, a1, a0, m):
        a_m = (1 - m[:, None]) * a0 + m[:, None] * a1
        return (self.velocity(obs, a_m, m) - (a1 - a0)).square().mean(1)

    def update(self, b, g: torch.Generator):
        c = self.cfg
        obs, act = b['obs'], b['actions'].reshape(b['obs'].shape[0], -1)
        Bn, da = act.shape
        with torch.no_grad():
            a_next = self.sample_one(b['next_obs'], torch.randn(Bn, da, generator=g))
            target = b['returns'] + b['discount'] * self.q_all(self.targets, b['next_obs'], a_next).mean(0)
        closs = (self.q_all(self.critics, obs, act) - target).square().mean()
        self.critic_opt.zero_grad()
        closs.backward()
        self.critic_opt.step()
        with torch.no_grad():
            for t, q in zip(self.targets, self.critics):
                for tp, p in zip(t.parameters(), q.parameters()):
                    tp.lerp_(p, c.tau)
        # E-step: one candidate at a time, observation re-encoded at every flow step
        cands, qs = [], []
        with torch.no_grad():
            for _ in range(c.num_candidates):
                aj = self.sample_one(obs, torch.randn(Bn, da, generator=g))
                cands.append(aj)
                qs.append(self.q_all(self.critics, obs, aj).mean(0))
            w = torch.softmax(torch.stack(qs, 1) / c.eta, 1)
        # M-step: candidate losses in a loop
        loss = self.bc_loss(obs, act, torch.randn(Bn, da, generator=g), torch.rand(Bn, generator=g))
        for j, aj in enumerate(cands):
            lj = self.bc_loss(obs, aj, torch.randn(Bn, da, generator=g), torch.rand(Bn, generator=g))
            loss = loss + c.beta * w[:, j] * lj.clamp(0, c.zeta)
        loss = loss.mean()
        self.actor_opt.zero_grad()
        loss.backward()
        self.actor_opt.step()
        return float(loss.detach())


# ---------------------------------------------------------------------------------------------- utils
def make_batch(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return dict(obs=rng.standard_normal((B, OBS)).astype(np.float32),
                actions=rng.uniform(-1, 1, (B, T, A)).astype(np.float32),
                rewards=np.zeros((B, T), np.float32), valid=np.ones((B, T), np.float32),
                returns=rng.uniform(0, 1, B).astype(np.float32),
                next_obs=rng.standard_normal((B, OBS)).astype(np.float32),
                discount=np.full(B, 0.99 ** T, np.float32), is_demo=np.zeros(B, np.float32))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check_equivalence(agent: Agent, naive: NaiveAgent, b: dict[str, np.ndarray]) -> dict[str, float]:
    """Same weights and noise: our fused fp32 paths must reproduce the naive ones."""
    obs = torch.as_tensor(b['obs'][:32])
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(32, 4, T * A, generator=g)
    # unclipped, so saturated samples cannot hide differences
    ours = agent.actor.sample(obs, 4, noise=noise, bf16=False, clip=False).reshape(32, 4, -1)
    ref = torch.stack([naive.sample_one(obs, noise[:, j], clip=False) for j in range(4)], 1)
    m = torch.rand(32, 4, generator=g)
    a0 = torch.randn(32, 4, T * A, generator=g)
    with torch.no_grad():
        l_ours = agent.actor.bc_loss(obs, ref, noise=a0, m=m)
        l_ref = torch.stack([naive.bc_loss(obs, ref[:, j], a0[:, j], m[:, j]) for j in range(4)], 1)
        q_ours = agent.critic(obs, ref)
        q_ref = torch.stack([naive.q_all(naive.critics, obs, ref[:, j]) for j in range(4)], 2)
    return {'sample_max_abs_diff': float((ours - ref).abs().max()),
            'bc_loss_max_abs_diff': float((l_ours - l_ref).abs().max()),
            'q_max_abs_diff': float((q_ours - q_ref).abs().max())}


def fit_actor(agent: Agent, rng: np.random.Generator, steps: int) -> None:
    """A few BC steps on structured synthetic chunks, so the velocity field is O(1) like a trained one (a
    freshly initialised net outputs ~0.05 and would make any bf16 comparison look better than it is)."""
    proj = rng.standard_normal((OBS, A)).astype(np.float32) / np.sqrt(OBS)
    for _ in range(steps):
        obs = rng.standard_normal((B, OBS)).astype(np.float32)
        base = np.tanh(2.0 * obs @ proj)                               # [B, A]
        mode = rng.choice([-0.5, 0.5], size=(B, 1, 1))                 # two modes per state
        ramp = np.linspace(0, 1, T, dtype=np.float32)[None, :, None]
        acts = np.clip(base[:, None, :] * (1 - ramp) + mode * ramp + 0.05 * rng.standard_normal((B, T, A)), -1, 1)
        agent.pretrain_step(dict(obs=obs, actions=acts.astype(np.float32), valid=np.ones((B, T), np.float32)))


def bf16_sampling_check(policy: FlowChunkPolicy, obs_np: np.ndarray) -> dict[str, float]:
    """bf16 E-step sampling vs fp32: same noise -> small differences; independent noise -> same statistics."""
    obs = torch.as_tensor(obs_np[:64])
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(64, N, T * A, generator=g)
    a32 = policy.sample(obs, N, noise=noise, bf16=False)
    a16 = policy.sample(obs, N, noise=noise, bf16=True)
    d = (a32 - a16).abs()
    # distribution: per state and dimension, mean/std over 512 independent draws each; the fp32-vs-fp32 gap
    # with different seeds is the Monte-Carlo noise floor the bf16 gap should match
    draws = {s: policy.sample(obs[:8], 512, generator=torch.Generator().manual_seed(s), bf16=(s == 12))
             for s in (11, 12, 13)}
    gap = lambda x, y: float((x.mean(1) - y.mean(1)).abs().max())
    std_ratio = draws[12].std(1) / draws[11].std(1).clamp_min(1e-6)
    return {'same_noise_max_abs_diff': float(d.max()), 'same_noise_mean_abs_diff': float(d.mean()),
            'sample_std': float(a32.std()),
            'mean_gap_bf16_vs_fp32': gap(draws[12], draws[11]), 'mean_gap_fp32_vs_fp32': gap(draws[13], draws[11]),
            'std_ratio_min': float(std_ratio.min()), 'std_ratio_max': float(std_ratio.max())}


def bf16_critic_check(agent: Agent, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """E-step weights from the bf16 critic pass vs fp32, next to the change ONE critic update makes."""
    obs = torch.as_tensor(batch['obs'])
    cands = agent.sample_candidates(obs, N)
    eta = agent.cfg.eta
    with torch.no_grad():
        q32 = _agg(agent.critic(obs, cands), 'mean')
        q16 = _agg(agent.critic(obs, cands, bf16=True), 'mean')
    agent.update(batch, actor_frozen=True)
    with torch.no_grad():
        q_next = _agg(agent.critic(obs, cands), 'mean')
    w32, w16, wn = (torch.softmax(q / eta, 1) for q in (q32, q16, q_next))
    tv = lambda x, y: float(0.5 * (x - y).abs().sum(1).mean())
    agree = lambda x, y: float((x.argmax(1) == y.argmax(1)).float().mean())
    return {'q_max_abs_diff_bf16': float((q16 - q32).abs().max()),
            'q_max_abs_change_one_step': float((q_next - q32).abs().max()),
            'weights_tv_bf16_vs_fp32': tv(w16, w32), 'weights_tv_one_critic_step': tv(wn, w32),
            'argmax_agree_bf16': agree(w16, w32), 'argmax_agree_one_critic_step': agree(wn, w32),
            'q_candidates_std': float(q32.std(1).mean()), 'eta': eta}


def bf16_candidate_loss_check(agent: Agent, batch: dict[str, np.ndarray]) -> dict[str, float]:
    """M-step candidate loss under bf16 autocast vs fp32: loss values and the actor gradient direction."""
    obs = torch.as_tensor(batch['obs'][:64])
    cands = agent.sample_candidates(obs, N)
    g = torch.Generator().manual_seed(5)
    a0, m = torch.randn(cands.shape, generator=g), torch.rand(cands.shape[:2], generator=g)
    out = {}
    for name, bf in (('fp32', False), ('bf16', True)):
        agent.actor.zero_grad(set_to_none=True)
        with bf16_autocast(bf):
            l = agent.actor.bc_loss(obs, cands, noise=a0, m=m)
        l.mean().backward()                  # unclipped: compare the gradient of every candidate row
        out[name] = (l.detach(), torch.cat([p.grad.flatten() for p in agent.actor.parameters()]))
    agent.actor.zero_grad(set_to_none=True)
    (l32, g32), (l16, g16) = out['fp32'], out['bf16']
    return {'loss_max_rel_diff': float(((l16 - l32).abs() / l32.abs().clamp_min(1e-6)).max()),
            'grad_cosine': float(F.cosine_similarity(g16, g32, 0)),
            'grad_norm_ratio': float(g16.norm() / g32.norm())}


def latency(agent: Agent, obs: np.ndarray, n: int = 200) -> dict[str, float]:
    for _ in range(10):
        agent.act(obs)
    ts = sorted(timed(lambda: agent.act(obs)) * 1e3 for _ in range(n))
    return {'p50_ms': ts[n // 2], 'p99_ms': ts[min(n - 1, int(0.99 * n))]}


def breakdown(agent: Agent, b: dict[str, np.ndarray], reps: int) -> dict[str, float]:
    """Median ms of the update's phases (for finding the next bottleneck)."""
    bt = agent._batch(b)
    out: dict[str, list[float]] = {'critic_target': [], 'estep': [], 'mstep_fwd_bwd': []}
    for _ in range(reps):
        out['critic_target'].append(timed(lambda: agent.critic_targets(bt)))
        out['estep'].append(timed(lambda: agent.estep(bt['obs'])))
        out['mstep_fwd_bwd'].append(timed(lambda: agent.poco_actor_loss(bt)[0].backward()) -
                                    out['estep'][-1])
        agent.actor_opt.zero_grad(set_to_none=True)
    return {k: statistics.median(v) * 1e3 for k, v in out.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=7, help='timed updates per variant (interleaved)')
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--fit-steps', type=int, default=150, help='BC steps before measuring (O(1) velocities)')
    ap.add_argument('--variants', default='ours,ours_eta0.1,ours_exact,reference',
                    help='comma list of: ours (defaults, eta=0.001 as in Tables III/V), ours_eta0.1 (Table II '
                         'temperature: flatter weights, fewer candidates pruned), ours_exact (fp32 everywhere, '
                         'every candidate kept), reference (naive fp32)')
    ap.add_argument('--breakdown', action='store_true', help='also time the phases of our update')
    ap.add_argument('--json', default=None, help='write the results here')
    ap.add_argument('--quick', action='store_true',
                    help='smoke run: small sizes, one repetition (what `make bench` runs)')
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(reps=1, fit_steps=5, variants='ours,reference')
        args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    use_bf16 = cpu_supports_bf16()
    cfg = AgentConfig(obs_dim=OBS, action_dim=A, horizon=T, num_candidates=N, flow_steps=K, batch_size=B,
                      eta=0.001, zeta=0.1)
    agent = Agent(cfg)
    t0 = time.perf_counter()
    fit_actor(agent, rng, args.fit_steps)
    batch = make_batch(rng)
    for _ in range(20):                                   # give the critic some structure too
        agent.update(make_batch(rng), actor_frozen=True)
    fit_s = time.perf_counter() - t0
    exact = Agent(dataclasses.replace(cfg, bf16_sampling=False, bf16_candidate_loss=False,
                                      bf16_critic_estep=False, candidate_weight_floor=0.0))
    for name in ('actor', 'critic', 'critic_target'):
        getattr(exact, name).load_state_dict(getattr(agent, name).state_dict())
    flat = copy.deepcopy(agent)
    flat.cfg = dataclasses.replace(cfg, eta=0.1)
    naive = NaiveAgent(agent)
    bt = {k: torch.as_tensor(v) for k, v in batch.items()}
    g = torch.Generator().manual_seed(0)
    res: dict = {'sizes': dict(batch=B, N=N, K=K, T=T, action_dim=A, hidden='4x512', obs_dim=OBS),
                 'threads': torch.get_num_threads(), 'cpu_bf16': use_bf16, 'fit_seconds': fit_s,
                 'defaults': {k: getattr(cfg, k) for k in ('bf16_sampling', 'bf16_candidate_loss',
                                                           'bf16_critic_estep', 'candidate_weight_floor')}}
    res['equivalence_fp32'] = check_equivalence(agent, naive, batch)
    fns = {'ours': lambda: agent.update(batch), 'ours_exact': lambda: exact.update(batch),
           'ours_eta0.1': lambda: flat.update(batch),
           'reference': lambda: naive.update(bt, g)}
    names = [v for v in args.variants.split(',') if v]
    for v in names:
        fns[v]()                                          # warm-up (allocator, oneDNN primitives)
    times: dict[str, list[float]] = {v: [] for v in names}
    for _ in range(args.reps):
        for v in names:
            times[v].append(timed(fns[v]))
    res['ms'] = {v: {'min': min(t) * 1e3, 'median': statistics.median(t) * 1e3} for v, t in times.items()}
    if 'reference' in names:
        for v in names:
            if v != 'reference':
                # paired: ratio within each round (measured seconds apart, so under similar load)
                paired = [r / o for r, o in zip(times['reference'], times[v])]
                res[f'speedup_{v}'] = {'median': res['ms']['reference']['median'] / res['ms'][v]['median'],
                                       'min': res['ms']['reference']['min'] / res['ms'][v]['min'],
                                       'paired_median': statistics.median(paired)}
    for name, ag in (('ours', agent), ('ours_eta0.1', flat)):
        last = ag.update(batch)
        res[f'{name}_update_metrics'] = {k: last[k] for k in ('ess', 'kept_fraction', 'clip_fraction')}
    res['act_latency_single_state'] = latency(agent, batch['obs'][0])
    if use_bf16:
        res['bf16_vs_fp32_sampling'] = bf16_sampling_check(agent.actor, batch['obs'])
        res['bf16_vs_fp32_critic_estep'] = bf16_critic_check(copy.deepcopy(agent), batch)
        res['bf16_vs_fp32_candidate_loss'] = bf16_candidate_loss_check(agent, batch)
    if args.breakdown:
        res['breakdown_ms'] = breakdown(agent, batch, args.reps)
    print(json.dumps(res, indent=1))
    for v in names:
        if v != 'reference' and 'reference' in names:
            sp = res[f'speedup_{v}']
            print(f"{v:>10}: {res['ms'][v]['median']:7.0f} ms/update (min {res['ms'][v]['min']:.0f}); reference "
                  f"{res['ms']['reference']['median']:.0f} ms (min {res['ms']['reference']['min']:.0f}); "
                  f"speed-up x{sp['median']:.1f} median, x{sp['min']:.1f} min-based, "
                  f"x{sp['paired_median']:.1f} paired")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    main()
