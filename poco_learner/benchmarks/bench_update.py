"""Benchmark one POCO update: the project's Agent.update vs a straightforward batched fp32 implementation, same run.

Sizes (default, the paper's): batch 256, N = 32 candidates, K = 10 flow steps, T = 5, 7-D actions, 4 x 512 MLPs,
obs dim 1031 (`--quick`: batch 32, N 8, 4 x 128, obs 64, one repetition).

The reference is what one would write first, in fp32, with no algorithmic shortcut but also no Python loop over
candidates: one MLP on concat(s, a, m) (critics on concat(s, a)), all B*N candidates in one batch through the
K Euler steps, all candidates' Q in one batch, and the M-step's candidate BC losses for all B*N pairs in one
forward/backward. A second reference, `reference_cached`, additionally computes the observation's part of the
first layer once per state and reuses it for every candidate and flow step (the split-layer trick, which costs
nothing in code): its ratio shows what our other choices are worth on top of that.

Our update is timed per path: `ours` = the defaults (bf16 E-step and candidate loss where the CPU has native
bf16, i.e. AMX or AVX512-BF16; identical to `ours_fp32` where it has not), `ours_fp32` = forced fp32 (bf16 off,
low-weight candidates still skipped in the M-step), `ours_exact` = fp32 and every candidate kept (exact Eq. 23).
The CPU's bf16 features are printed with the figures: a ratio is a property of the CPU it was measured on.

    python poco_learner/benchmarks/bench_update.py [--reps 3] [--threads 1] [--breakdown] [--json out.json] [--quick]

The machine is shared: variants are interleaved round by round (each once per round) and reported as min,
median and the median of the per-round ratios (reference time / ours time in the same round; the most
load-robust number).

Measured (2026-12-02, Intel Xeon with AMX + AVX512-BF16, 1 thread, shared machine at load ~5 on 2 cores;
`--reps 3 --breakdown`), ms per update, paired ratio reference/ours:
    ours (bf16)   459   x6.5 vs reference   x4.4 vs reference_cached
    ours_fp32    1590   x1.95               x1.34
    ours_exact   1936   x1.57               x1.09
    reference    3100;  reference_cached 2130
What dominates the forced-fp32 update (breakdown): E-step sampling 1184 ms (~75%), the candidates' Q 288 ms
(~18%), TD target 58, critic loss 39, pruned M-step 54. FLOPs per update: reference ~345 GFLOP (sampling 221,
candidate Q 44, M-step over all B*N candidates 68), ours_fp32 ~175 GFLOP (sampling 135, candidate Q 26, M-step
~5): the measured fp32 ratio (1.95x) is the FLOP ratio, i.e. both run at the same matmul efficiency. The
sampling's 135 GFLOP are the algorithm's own (N x K = 320 actor passes per state); with everything else free,
fp32 could not beat the reference by more than 345 / 135 = 2.6x, so ">= 8x on any CPU" is out of reach without
lower precision (native bf16: x6.5 here) or a different algorithm (fewer candidates or flow steps). The one
algorithm-preserving fp32 gain found: blocked sampling (FlowChunkPolicy.sample; same numbers to float
rounding), x1.16 on the whole fp32 update (paired, 4 rounds), x1.2 on sampling; the unblocked loop spent ~30%
of its time on page faults and memory passes over 16 MB temporaries. Blocking the candidates' Q did not pay.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import platform
import statistics
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from poco_learner.agent import Agent, AgentConfig, _agg
from poco_policy.flow_policy import FlowChunkPolicy, bf16_autocast, cpu_supports_bf16


@dataclasses.dataclass(frozen=True)
class Sizes:
    batch: int = 256
    candidates: int = 32      # N
    flow_steps: int = 10      # K
    horizon: int = 5          # T
    action_dim: int = 7
    hidden: int = 512
    layers: int = 4
    obs_dim: int = 1031

    @property
    def chunk(self) -> int:
        return self.horizon * self.action_dim


PAPER = Sizes()
QUICK = Sizes(batch=32, candidates=8, hidden=128, obs_dim=64)


# ---------------------------------------------------------------------------------------------- CPU facts
def cpu_features() -> dict:
    """Model name and the flags that decide bf16 speed (AMX / AVX512-BF16 / neither)."""
    model, flags = platform.processor() or '?', set()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name') and model in ('?', '', 'x86_64'):
                    model = line.split(':', 1)[1].strip()
                elif line.startswith('flags'):
                    flags = set(line.split(':', 1)[1].split())
                    break
    except OSError:
        pass
    amx = sorted(f for f in flags if f.startswith('amx'))
    native = ('AMX' if 'amx_bf16' in flags else 'AVX512-BF16' if 'avx512_bf16' in flags else 'neither')
    return {'model': model, 'native_bf16': native, 'amx': amx, 'avx512_bf16': 'avx512_bf16' in flags,
            'avx512f': 'avx512f' in flags, 'avx2': 'avx2' in flags, 'torch': torch.__version__,
            'bf16_paths_used': cpu_supports_bf16()}


# ------------------------------------------------------------------------------------- batched reference
def _mlp(inp: int, out: int, hidden: int, layers: int, ln: bool) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = inp
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.SiLU()] + ([nn.LayerNorm(hidden)] if ln else [])
        d = hidden
    mods.append(nn.Linear(d, out))
    return nn.Sequential(*mods)


class BatchedReference:
    """Textbook POCO update in fp32: concat-input MLPs, every candidate in one batch, exact Eq. 23 (no pruning).

    cache_obs=True computes the observation's share of each first layer once per state (W_s s + b) and adds
    W_a a (+ w_m m) per candidate and flow step: the same numbers, fewer FLOPs."""

    def __init__(self, src: Agent, cache_obs: bool = False):
        c = src.cfg
        self.cfg, self.cache_obs = c, cache_obs
        da = c.horizon * c.action_dim
        h, nl = c.actor_hidden_dims[0], len(c.actor_hidden_dims)
        self.actor = _mlp(c.obs_dim + da + 1, da, h, nl, ln=False)
        self.critics = nn.ModuleList(_mlp(c.obs_dim + da, 1, c.critic_hidden_dims[0], len(c.critic_hidden_dims),
                                          ln=True) for _ in range(c.num_critics))
        self._copy_from(src)
        self.targets = copy.deepcopy(self.critics).requires_grad_(False)
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

    # -- networks on concat inputs; obs [R, D] (or, cached, h [R, H] = W_s s + b) per row
    def _obs_part(self, net: nn.Sequential, obs: torch.Tensor) -> torch.Tensor:
        return F.linear(obs, net[0].weight[:, :self.cfg.obs_dim], net[0].bias)

    def _run(self, net: nn.Sequential, obs_or_h: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        if self.cache_obs:
            x = obs_or_h + F.linear(rest, net[0].weight[:, self.cfg.obs_dim:])
        else:
            x = net[0](torch.cat([obs_or_h, rest], 1))
        return net[1:](x)

    def _rows(self, net: nn.Sequential, obs: torch.Tensor, n: int) -> torch.Tensor:
        """Per-row input for n candidates per state: obs repeated, or its cached first-layer share repeated."""
        x = self._obs_part(net, obs) if self.cache_obs else obs
        return x.repeat_interleave(n, 0)

    def velocity(self, rows: torch.Tensor, a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return self._run(self.actor, rows, torch.cat([a, m[:, None]], 1))

    @torch.no_grad()
    def sample(self, obs: torch.Tensor, n: int, noise: torch.Tensor, clip: bool = True) -> torch.Tensor:
        """obs [B, D], noise [B*n, da] -> [B*n, da]: all candidates in one batch, K Euler steps."""
        rows = self._rows(self.actor, obs, n)
        a, K = noise.clone(), self.cfg.flow_steps
        for k in range(K):
            a = a + self.velocity(rows, a, torch.full((a.shape[0],), k / K)) / K
        return a.clamp(-1, 1) if clip else a

    def q_all(self, nets, obs: torch.Tensor, a: torch.Tensor, n: int = 1) -> torch.Tensor:
        """[E, B*n] for obs [B, D] and a [B*n, da]."""
        return torch.stack([self._run(q, self._rows(q, obs, n), a).squeeze(-1) for q in nets], 0)

    def bc_loss(self, rows: torch.Tensor, a1: torch.Tensor, a0: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        a_m = (1 - m[:, None]) * a0 + m[:, None] * a1
        return (self.velocity(rows, a_m, m) - (a1 - a0)).square().mean(1)

    def update(self, b: dict[str, torch.Tensor], g: torch.Generator) -> float:
        c = self.cfg
        obs, act = b['obs'], b['actions'].reshape(b['obs'].shape[0], -1)
        B, da = act.shape
        N = c.num_candidates
        with torch.no_grad():
            a_next = self.sample(b['next_obs'], 1, torch.randn(B, da, generator=g))
            target = b['returns'] + b['discount'] * self.q_all(self.targets, b['next_obs'], a_next).mean(0)
        closs = (self.q_all(self.critics, obs, act) - target).square().mean()
        self.critic_opt.zero_grad()
        closs.backward()
        self.critic_opt.step()
        with torch.no_grad():
            for tp, p in zip(self.targets.parameters(), self.critics.parameters()):
                tp.lerp_(p, c.tau)
            # E-step: all B*N candidates in one batch
            cands = self.sample(obs, N, torch.randn(B * N, da, generator=g))
            w = torch.softmax(self.q_all(self.critics, obs, cands, N).mean(0).reshape(B, N) / c.eta, 1)
        # M-step (Eq. 23): data term + every candidate's clipped BC loss, one forward/backward
        l_data = self.bc_loss(self._rows(self.actor, obs, 1), act, torch.randn(B, da, generator=g),
                              torch.rand(B, generator=g))
        l_cand = self.bc_loss(self._rows(self.actor, obs, N), cands, torch.randn(B * N, da, generator=g),
                              torch.rand(B * N, generator=g)).reshape(B, N)
        loss = l_data.mean() + c.beta * (w * l_cand.clamp(0, c.zeta)).sum() / B
        self.actor_opt.zero_grad()
        loss.backward()
        self.actor_opt.step()
        return float(loss.detach())


# ---------------------------------------------------------------------------------------------- utils
def make_batch(rng: np.random.Generator, s: Sizes) -> dict[str, np.ndarray]:
    B, T, A = s.batch, s.horizon, s.action_dim
    return dict(obs=rng.standard_normal((B, s.obs_dim)).astype(np.float32),
                actions=rng.uniform(-1, 1, (B, T, A)).astype(np.float32),
                rewards=np.zeros((B, T), np.float32), valid=np.ones((B, T), np.float32),
                returns=rng.uniform(0, 1, B).astype(np.float32),
                next_obs=rng.standard_normal((B, s.obs_dim)).astype(np.float32),
                discount=np.full(B, 0.99 ** T, np.float32), is_demo=np.zeros(B, np.float32))


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def check_equivalence(agent: Agent, ref: BatchedReference, b: dict[str, np.ndarray], s: Sizes) -> dict[str, float]:
    """Same weights and noise: our fp32 paths (split layer, blocked sampling) reproduce the reference's numbers."""
    nb, n, da = min(32, s.batch), 4, s.chunk
    obs = torch.as_tensor(b['obs'][:nb])
    g = torch.Generator().manual_seed(7)
    noise = torch.randn(nb, n, da, generator=g)
    with torch.no_grad():
        # unclipped, so saturated samples cannot hide differences
        ours = agent.actor.sample(obs, n, noise=noise, bf16=False, clip=False).reshape(nb * n, da)
        want = ref.sample(obs, n, noise.reshape(nb * n, da), clip=False)
        m = torch.rand(nb * n, generator=g)
        a0 = torch.randn(nb * n, da, generator=g)
        l_ours = agent.actor.bc_loss(obs, want.reshape(nb, n, da), noise=a0.reshape(nb, n, da),
                                     m=m.reshape(nb, n)).reshape(-1)
        l_ref = ref.bc_loss(ref._rows(ref.actor, obs, n), want, a0, m)
        q_ours = agent.critic(obs, want.reshape(nb, n, da)).reshape(agent.cfg.num_critics, -1)
        q_ref = ref.q_all(ref.critics, obs, want, n)
    return {'sample_max_abs_diff': float((ours - want).abs().max()),
            'bc_loss_max_abs_diff': float((l_ours - l_ref).abs().max()),
            'q_max_abs_diff': float((q_ours - q_ref).abs().max())}


def fit_actor(agent: Agent, rng: np.random.Generator, steps: int, s: Sizes) -> None:
    """A few BC steps on structured synthetic chunks, so the velocity field is O(1) like a trained one (a
    freshly initialised net outputs ~0.05 and would make any bf16 comparison look better than it is)."""
    B, T, A = s.batch, s.horizon, s.action_dim
    proj = rng.standard_normal((s.obs_dim, A)).astype(np.float32) / np.sqrt(s.obs_dim)
    for _ in range(steps):
        obs = rng.standard_normal((B, s.obs_dim)).astype(np.float32)
        base = np.tanh(2.0 * obs @ proj)                               # [B, A]
        mode = rng.choice([-0.5, 0.5], size=(B, 1, 1))                 # two modes per state
        ramp = np.linspace(0, 1, T, dtype=np.float32)[None, :, None]
        acts = np.clip(base[:, None, :] * (1 - ramp) + mode * ramp + 0.05 * rng.standard_normal((B, T, A)), -1, 1)
        agent.pretrain_step(dict(obs=obs, actions=acts.astype(np.float32), valid=np.ones((B, T), np.float32)))


def bf16_sampling_check(policy: FlowChunkPolicy, obs_np: np.ndarray, s: Sizes) -> dict[str, float]:
    """bf16 E-step sampling vs fp32: same noise -> small differences; independent noise -> same statistics."""
    obs = torch.as_tensor(obs_np[:64])
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(obs.shape[0], s.candidates, s.chunk, generator=g)
    a32 = policy.sample(obs, s.candidates, noise=noise, bf16=False)
    a16 = policy.sample(obs, s.candidates, noise=noise, bf16=True)
    d = (a32 - a16).abs()
    # distribution: per state and dimension, mean/std over 512 independent draws each; the fp32-vs-fp32 gap
    # with different seeds is the Monte-Carlo noise floor the bf16 gap should match
    draws = {k: policy.sample(obs[:8], 512, generator=torch.Generator().manual_seed(k), bf16=(k == 12))
             for k in (11, 12, 13)}
    gap = lambda x, y: float((x.mean(1) - y.mean(1)).abs().max())
    std_ratio = draws[12].std(1) / draws[11].std(1).clamp_min(1e-6)
    return {'same_noise_max_abs_diff': float(d.max()), 'same_noise_mean_abs_diff': float(d.mean()),
            'sample_std': float(a32.std()),
            'mean_gap_bf16_vs_fp32': gap(draws[12], draws[11]), 'mean_gap_fp32_vs_fp32': gap(draws[13], draws[11]),
            'std_ratio_min': float(std_ratio.min()), 'std_ratio_max': float(std_ratio.max())}


def bf16_critic_check(agent: Agent, batch: dict[str, np.ndarray], s: Sizes) -> dict[str, float]:
    """E-step weights from the bf16 critic pass vs fp32, next to the change ONE critic update makes."""
    obs = torch.as_tensor(batch['obs'])
    cands = agent.sample_candidates(obs, s.candidates)
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


def bf16_candidate_loss_check(agent: Agent, batch: dict[str, np.ndarray], s: Sizes) -> dict[str, float]:
    """M-step candidate loss under bf16 autocast vs fp32: loss values and the actor gradient direction."""
    obs = torch.as_tensor(batch['obs'][:64])
    cands = agent.sample_candidates(obs, s.candidates)
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


def latency(agent: Agent, obs: np.ndarray, n: int) -> dict[str, float]:
    for _ in range(5):
        agent.act(obs)
    ts = sorted(timed(lambda: agent.act(obs)) * 1e3 for _ in range(n))
    return {'p50_ms': ts[n // 2], 'p99_ms': ts[min(n - 1, int(0.99 * n))]}


def breakdown(agent: Agent, b: dict[str, np.ndarray], reps: int) -> dict[str, float]:
    """Median ms of the update's phases (what dominates; the rest of update() is the two optimiser steps)."""
    bt = agent._batch(b)
    N = agent.cfg.num_candidates
    out: dict[str, list[float]] = {k: [] for k in ('critic_target', 'critic_loss_fwd_bwd', 'estep_sampling',
                                                   'estep_candidate_q', 'mstep_fwd_bwd_without_estep')}

    def critic_step():
        q = agent.critic(bt['obs'], bt['actions'].reshape(bt['obs'].shape[0], -1))
        (q - bt['returns']).square().mean().backward()
        agent.critic.zero_grad(set_to_none=True)

    for _ in range(reps):
        out['critic_target'].append(timed(lambda: agent.critic_targets(bt)))
        out['critic_loss_fwd_bwd'].append(timed(critic_step))
        with torch.no_grad():
            cands = None

            def sample():
                nonlocal cands
                cands = agent.sample_candidates(bt['obs'], N)
            out['estep_sampling'].append(timed(sample))
            out['estep_candidate_q'].append(timed(lambda: agent.critic(bt['obs'], cands, bf16=agent.bf16_critic)))
        t_estep = timed(lambda: agent.estep(bt['obs']))
        out['mstep_fwd_bwd_without_estep'].append(max(0.0, timed(lambda: agent.poco_actor_loss(bt)[0].backward())
                                                      - t_estep))
        agent.actor_opt.zero_grad(set_to_none=True)
    return {k: statistics.median(v) * 1e3 for k, v in out.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--reps', type=int, default=3, help='timed updates per variant (interleaved rounds)')
    ap.add_argument('--threads', type=int, default=1, help='torch threads (the machines are shared: 1 by default)')
    ap.add_argument('--fit-steps', type=int, default=100, help='BC steps before measuring (O(1) velocities)')
    ap.add_argument('--variants', default='ours,ours_fp32,ours_exact,reference,reference_cached',
                    help='comma list of: ours (defaults: bf16 where the CPU has it), ours_fp32 (bf16 off), '
                         'ours_exact (fp32, every candidate kept), reference (batched fp32, concat MLP), '
                         'reference_cached (the same with the observation projection reused)')
    ap.add_argument('--breakdown', action='store_true', help='also time the phases of our forced-fp32 update')
    ap.add_argument('--no-checks', action='store_true', help='skip the equivalence and bf16 accuracy checks')
    ap.add_argument('--json', default=None, help='write the results here')
    ap.add_argument('--quick', action='store_true',
                    help='smoke run: small sizes, one repetition (what `make bench` runs)')
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(reps=1, fit_steps=3)
        args = ap.parse_args(argv)
    s = QUICK if args.quick else PAPER
    torch.set_num_threads(args.threads)
    cpu = cpu_features()
    print(f"[bench_update] CPU: {cpu['model']}; native bf16: {cpu['native_bf16']} "
          f"(amx: {','.join(cpu['amx']) or 'none'}, avx512_bf16: {cpu['avx512_bf16']}, avx512f: {cpu['avx512f']}); "
          f"torch {cpu['torch']}, {torch.get_num_threads()} thread(s); sizes: {dataclasses.asdict(s)}", flush=True)
    rng = np.random.default_rng(0)
    cfg = AgentConfig(obs_dim=s.obs_dim, action_dim=s.action_dim, horizon=s.horizon, num_candidates=s.candidates,
                      flow_steps=s.flow_steps, batch_size=s.batch, actor_hidden_dims=(s.hidden,) * s.layers,
                      critic_hidden_dims=(s.hidden,) * s.layers, eta=0.001, zeta=0.1, device='cpu')
    agent = Agent(cfg)
    t0 = time.perf_counter()
    fit_actor(agent, rng, args.fit_steps, s)
    batch = make_batch(rng, s)
    for _ in range(3 if args.quick else 10):                 # give the critic some structure too
        agent.update(make_batch(rng, s), actor_frozen=True)
    fit_s = time.perf_counter() - t0

    def clone(**kw) -> Agent:
        a = Agent(dataclasses.replace(cfg, **kw))
        for name in ('actor', 'critic', 'critic_target'):
            getattr(a, name).load_state_dict(getattr(agent, name).state_dict())
        return a

    fp32 = dict(bf16_sampling=False, bf16_candidate_loss=False, bf16_critic_estep=False)
    runners = {'ours': agent, 'ours_fp32': clone(**fp32), 'ours_exact': clone(**fp32, candidate_weight_floor=0.0)}
    refs = {'reference': BatchedReference(agent), 'reference_cached': BatchedReference(agent, cache_obs=True)}
    bt = {k: torch.as_tensor(v) for k, v in batch.items()}
    g = torch.Generator().manual_seed(0)
    res: dict = {'cpu': cpu, 'sizes': dataclasses.asdict(s), 'threads': torch.get_num_threads(),
                 'fit_seconds': fit_s, 'bf16_in_ours': agent.bf16 or agent.bf16_cand or agent.bf16_critic,
                 'defaults': {k: getattr(cfg, k) for k in ('bf16_sampling', 'bf16_candidate_loss',
                                                           'bf16_critic_estep', 'candidate_weight_floor')}}
    if not args.no_checks:
        res['equivalence_fp32'] = check_equivalence(agent, refs['reference'], batch, s)
        res['equivalence_fp32_cached'] = check_equivalence(agent, refs['reference_cached'], batch, s)
    fns = {**{k: (lambda a=a: a.update(batch)) for k, a in runners.items()},
           **{k: (lambda r=r: r.update(bt, g)) for k, r in refs.items()}}
    names = [v for v in args.variants.split(',') if v]
    unknown = [v for v in names if v not in fns]
    if unknown:
        ap.error(f'unknown variant(s) {unknown}; known: {sorted(fns)}')
    for v in names:
        fns[v]()                                          # warm-up (allocator, oneDNN primitives)
    times: dict[str, list[float]] = {v: [] for v in names}
    for _ in range(args.reps):
        for v in names:
            times[v].append(timed(fns[v]))
    res['ms'] = {v: {'min': min(t) * 1e3, 'median': statistics.median(t) * 1e3} for v, t in times.items()}
    for ref in [r for r in refs if r in names]:
        for v in [v for v in names if v in runners]:
            paired = [r / o for r, o in zip(times[ref], times[v])]   # same round: similar load
            res.setdefault('speedup', {})[f'{v}_vs_{ref}'] = {
                'median': res['ms'][ref]['median'] / res['ms'][v]['median'],
                'min': res['ms'][ref]['min'] / res['ms'][v]['min'], 'paired_median': statistics.median(paired)}
    for name in ('ours', 'ours_fp32'):
        if name in names:
            last = runners[name].update(batch)
            res[f'{name}_update_metrics'] = {k: last[k] for k in ('ess', 'kept_fraction', 'clip_fraction')}
    res['act_latency_single_state'] = latency(agent, batch['obs'][0], 20 if args.quick else 100)
    if cpu_supports_bf16() and not args.no_checks:
        res['bf16_vs_fp32_sampling'] = bf16_sampling_check(agent.actor, batch['obs'], s)
        res['bf16_vs_fp32_critic_estep'] = bf16_critic_check(copy.deepcopy(agent), batch, s)
        res['bf16_vs_fp32_candidate_loss'] = bf16_candidate_loss_check(agent, batch, s)
    if args.breakdown:
        res['breakdown_ms_fp32'] = breakdown(runners['ours_fp32'], batch, max(1, args.reps))
    print(json.dumps(res, indent=1))
    print(f"[bench_update] CPU {cpu['model']}, native bf16: {cpu['native_bf16']}, {res['threads']} thread(s), "
          f"sizes B {s.batch} N {s.candidates} K {s.flow_steps} T {s.horizon} A {s.action_dim} "
          f"{s.layers}x{s.hidden} obs {s.obs_dim}")
    for v in names:
        path = ''
        if v == 'ours':
            path = ' [bf16 E-step + candidate loss]' if res['bf16_in_ours'] else ' [= fp32: no native bf16 here]'
        line = f"  {v:>16}: {res['ms'][v]['median']:8.0f} ms/update (min {res['ms'][v]['min']:.0f}){path}"
        for ref in [r for r in refs if r in names and v in runners]:
            sp = res['speedup'][f'{v}_vs_{ref}']
            line += f"; x{sp['paired_median']:.2f} vs {ref}"
        print(line)
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    with contextlib.suppress(BrokenPipeError):
        main()
