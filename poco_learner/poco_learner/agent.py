"""POCO agent: flow-matching chunk actor + chunk critic, offline BC and online POCO / baselines (no ROS).

One file on purpose (in the spirit of the Flow Q-Learning / Q-chunking agents): config, losses, update rules
and checkpoints, readable top to bottom. The networks live in poco_policy (flow_policy.FlowChunkPolicy,
chunk_critic.ChunkCritic) because the robot runs them too.

Algorithm (POCO paper, Sec. IV and Algorithm 1; notation a = a_{t:t+T}, flattened):
  Stage I   pretrain_step:  min_theta E_D[ L_BC(a|s) ]                                         (Eq. 24)
  Stage II  update:
    critic  Q_i(s, a) -> sum_{k<n} gamma^k r_{t+k} + gamma^n * Q_target(s_{t+n}, a'),  a' ~ pi(.|s_{t+n})
            ('returns' and 'discount' = gamma^n or 0 at a terminal end come precomputed from the buffer) (Eq. 14)
    E-step  N candidates a^j ~ pi_theta_i(.|s) (state encoded once), w_j = softmax_j(Q(s, a^j) / eta) (Eq. 17)
    M-step  J = E[ L_BC(a_data|s) + beta * sum_j w_j * clip(L_BC(a^j|s), 0, zeta) ]           (Eq. 23)
  During the critic warm-up the actor is frozen and only the critic learns (SARSA-style: a' from the frozen
  actor). Baselines: 'poco_noclip' (Eq. 22, no clip), 'bc' (BC on the growing buffer, no critic), 'qc_best_of_n'
  (BC on the buffer, acting and TD target with the argmax-Q of N candidates, as in Q-chunking's best-of-N).

Choices the paper leaves open (documented here, configurable):
  - critic ensemble: the paper describes one critic MLP and no ensemble; like the Q-chunking / FQL code bases we
    train 2 members (`num_critics`); the TD target aggregates the target ensemble with `critic_agg` ('mean',
    their default; 'min' is the pessimistic option) and the E-step weights use the mean (`estep_q_agg`).
  - Polyak rate tau = 0.005, Adam optimisers, no gradient clipping unless `grad_clip_norm` > 0.
  - the data BC term ignores actions padded past an episode end (`mask_padded_actions`).

Speed (CPU, see benchmarks/bench_update.py): states are encoded once per update and shared by all candidates
and flow steps; the E-step (sampling + candidate Q) and the candidate-loss pass run in bf16 when the device has
native bf16 (AVX512-BF16/AMX CPUs, CUDA GPUs of compute capability >= 8); candidates whose weight is below
`candidate_weight_floor` are left out of the M-step.

Device (`device`: 'auto' | 'cpu' | 'cuda' | 'cuda:N', poco_policy.device): networks are initialised on the CPU
(same seed, same weights on any machine) and moved; optimiser state, RNGs and every per-update tensor live on
that device, numpy batches are moved there in `_batch`. Checkpoints and shipped weights are written from CPU
copies (CPU-loadable safetensors). The device is where THIS process runs, not a property of the checkpoint:
`Agent.load` takes it from its `device` override, else 'auto'.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

from poco_learner.presets import PRESETS
from poco_policy.config import derived
from poco_policy.config import from_dict as config_from_dict
from poco_policy.chunk_critic import ChunkCritic, select_best
from poco_policy.chunk_critic import aggregate as _agg
from poco_policy.device import check_device_spec, resolve_device, supports_bf16
from poco_policy.flow_policy import FlowChunkPolicy, FlowPolicyConfig, bf16_autocast, check_finite

ALGORITHMS = ('poco', 'poco_noclip', 'bc', 'qc_best_of_n')
BC_DATA = ('buffer', 'demos', 'success')
# settings that define tensor shapes (fixed once an agent exists)
ARCHITECTURE_KEYS = ('obs_dim', 'action_dim', 'horizon', 'actor_hidden_dims', 'critic_hidden_dims', 'num_critics')
CHECKPOINT_FORMAT = 'poco_agent/1'


# ================================================================================================ config
@dataclass
class AgentConfig:
    # problem sizes (dims come from the data; the presets leave them alone; not ROS parameters)
    obs_dim: int = derived(0)
    action_dim: int = derived(7)
    horizon: int = 5                                    # chunk length T
    # networks (paper: 4 x 512 SiLU MLPs, linear outputs, LayerNorm after each critic activation)
    actor_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    critic_hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    flow_steps: int = 10                                # K Euler steps
    num_critics: int = 2
    critic_agg: str = 'mean'                            # TD target over the target ensemble: 'mean' | 'min'
    estep_q_agg: str = 'mean'                           # E-step weights over the current ensemble
    # optimisation
    batch_size: int = 256
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    gamma: float = 0.99
    tau: float = 0.005
    grad_clip_norm: float = 0.0                         # 0 = off
    # POCO
    algorithm: str = 'poco'                             # 'poco' | 'poco_noclip' | 'bc' | 'qc_best_of_n'
    num_candidates: int = 32                            # N
    eta: float = 0.001                                  # softmax temperature on Q
    beta: float = 1.0                                   # posterior guidance scale
    zeta: float = 0.1                                   # clip threshold on the candidate BC loss
    critic_warmup_steps: int = 5000
    pretrain_steps: int = 20000
    mask_padded_actions: bool = True
    # Data term of the online actor losses (Eq. 23 / BC baselines): 'buffer' = every replay row (the paper);
    # 'demos' = only demonstration rows anchor the policy (the online rows still train the critic and feed
    # the E-step). With a handful of demos and a stochastic policy, imitating its own failed rollouts
    # drags the policy down; 'demos' keeps the anchor on the expert data (measured in the sim main job).
    bc_data: str = 'buffer'
    # speed
    device: str = 'auto'                                # 'auto' (CUDA if available, else CPU) | 'cpu' | 'cuda[:N]'
    bf16_sampling: bool = True                          # E-step candidates under bf16 autocast (if the CPU has it)
    bf16_candidate_loss: bool = True                    # M-step candidate-loss forward/backward under bf16
    bf16_critic_estep: bool = True                      # E-step Q of the candidates in bf16 (see estep())
    candidate_weight_floor: float = 1e-6                # skip candidates with w_j below this (0 = exact)
    # bookkeeping
    seed: int = derived(0)                              # the learner's `seed`
    max_episode_steps: int = 0                          # H of the paper's tables (episode manager); 0 = unset
    preset: str = derived('')                           # name of the preset this config came from

    def validate(self) -> 'AgentConfig':
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f'AgentConfig.algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}')
        if self.bc_data not in BC_DATA:
            raise ValueError(f"AgentConfig.bc_data must be one of {BC_DATA}, got {self.bc_data!r}")
        for name in ('critic_agg', 'estep_q_agg'):
            if getattr(self, name) not in ('mean', 'min'):
                raise ValueError(f'AgentConfig.{name} must be "mean" or "min", got {getattr(self, name)!r}')
        if self.obs_dim <= 0:
            raise ValueError('AgentConfig.obs_dim must be set (> 0) before building an Agent')
        for name in ('action_dim', 'horizon', 'flow_steps', 'num_critics', 'batch_size', 'num_candidates'):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f'AgentConfig.{name} must be positive, got {getattr(self, name)}')
        if self.eta <= 0 or self.zeta < 0 or self.beta < 0 or not 0 < self.tau <= 1 or not 0 <= self.gamma <= 1:
            raise ValueError(f'AgentConfig: bad eta/zeta/beta/tau/gamma in {self}')
        self.actor_hidden_dims = tuple(int(h) for h in self.actor_hidden_dims)
        self.critic_hidden_dims = tuple(int(h) for h in self.critic_hidden_dims)
        self.device = check_device_spec(self.device, 'AgentConfig.device')   # availability: Agent.__init__
        return self

    def policy_config(self) -> FlowPolicyConfig:
        return FlowPolicyConfig(obs_dim=self.obs_dim, action_dim=self.action_dim, horizon=self.horizon,
                                hidden_dims=tuple(self.actor_hidden_dims), flow_steps=self.flow_steps)

    def to_json_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> 'AgentConfig':
        # the project's one strict loader: unknown keys are errors, lists become the tuple fields
        return config_from_dict(cls, dict(d))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> 'AgentConfig':
        """Config from a named preset (see PRESETS) with keyword overrides applied on top."""
        if name not in PRESETS:
            raise KeyError(f'unknown agent preset {name!r}; known: {sorted(PRESETS)}')
        d = dict(PRESETS[name])
        d.update(overrides)
        d['preset'] = name
        return cls.from_json_dict(d)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> 'AgentConfig':
        """From a YAML/ROS mapping: `preset` (if non-empty) first, then the other given keys override it."""
        d = dict(d or {})
        name = d.pop('preset', '') or ''
        return cls.from_preset(name, **d) if name else cls.from_json_dict(d)


def poco_objective(l_data: torch.Tensor, l_cand: torch.Tensor, w: torch.Tensor, beta: float, zeta: float,
                   clip: bool = True) -> torch.Tensor:
    """Eq. 23 for one batch: mean_b[ L_BC(a_data|s_b) + beta * sum_j w_bj * clip(L_BC(a^j|s_b), 0, zeta) ].

    l_data [B]; l_cand and w either [B, N] or flattened over the kept (state, candidate) pairs [R] (the
    candidate term is a plain sum over pairs divided by B). clip(x, 0, zeta) is a clamp: its gradient is zero
    where x > zeta, so candidates the current policy finds far away contribute nothing to the update.
    """
    term = l_cand.clamp(0.0, zeta) if clip else l_cand
    return l_data.mean() + beta * (w * term).sum() / l_data.shape[0]


# ================================================================================================= agent
class Agent:
    """Actor, critic ensemble, target critic, optimisers and RNG; all randomness is drawn from the agent's
    own generators so a saved and reloaded agent continues bit-identically."""

    def __init__(self, cfg: AgentConfig):
        self.cfg = cfg.validate()
        self.device = dev = resolve_device(cfg.device, 'AgentConfig.device')   # one-line ValueError if absent
        self.chunk_dim = cfg.horizon * cfg.action_dim
        with torch.random.fork_rng(devices=[]):        # seeded init without touching the caller's global RNG
            torch.manual_seed(cfg.seed)
            self.actor = FlowChunkPolicy(cfg.policy_config())
            self.critic = ChunkCritic(cfg.obs_dim, self.chunk_dim, tuple(cfg.critic_hidden_dims), cfg.num_critics)
        self.actor.to(dev)                             # initialised on the CPU: same weights on any device
        self.critic.to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr)
        self.gen = torch.Generator(dev).manual_seed(cfg.seed * 2 + 1)       # learning randomness
        self.act_gen = torch.Generator(dev).manual_seed(cfg.seed * 2 + 2)   # acting randomness (separate stream)
        native_bf16 = supports_bf16(dev)               # AVX512-BF16/AMX CPU, or a CUDA GPU with sm >= 80
        self.bf16 = bool(cfg.bf16_sampling and native_bf16)
        self.bf16_cand = bool(cfg.bf16_candidate_loss and native_bf16)
        self.bf16_critic = bool(cfg.bf16_critic_estep and native_bf16)
        self.counters = dict(pretrain_steps=0, online_updates=0, actor_updates=0, policy_version=0,
                             nonfinite_skips=0)

    # ----------------------------------------------------------------------------------------- helpers
    @property
    def in_critic_warmup(self) -> bool:
        return self.counters['online_updates'] < self.cfg.critic_warmup_steps

    def _batch(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        out = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32, device=self.device)
               for k, v in batch.items()
               if k in ('obs', 'actions', 'rewards', 'valid', 'returns', 'next_obs', 'discount', 'is_demo',
                        'is_success')}
        a = out.get('actions')
        if a is None or a.dim() != 3 or a.shape[1:] != (cfg.horizon, cfg.action_dim):
            raise ValueError(f'batch["actions"] must be [B, {cfg.horizon}, {cfg.action_dim}], '
                             f'got {None if a is None else tuple(a.shape)}')
        if out['obs'].shape[-1] != cfg.obs_dim:
            raise ValueError(f'batch["obs"] has dim {out["obs"].shape[-1]}, agent expects {cfg.obs_dim}')
        return out

    def _step(self, opt: torch.optim.Optimizer, params, loss: torch.Tensor) -> float:
        """One optimiser step; a non-finite loss or gradient skips the step (never corrupt the weights)."""
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.counters['nonfinite_skips'] += 1
            return float('nan')
        loss.backward()
        params = [p for p in params if p.grad is not None]
        max_norm = self.cfg.grad_clip_norm if self.cfg.grad_clip_norm > 0 else float('inf')
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(norm):
            opt.zero_grad(set_to_none=True)
            self.counters['nonfinite_skips'] += 1
            return float('nan')
        opt.step()
        return float(norm)

    @torch.no_grad()
    def _polyak(self) -> None:
        tau = self.cfg.tau
        for p, tp in zip(self.critic.parameters(), self.critic_target.parameters()):
            tp.lerp_(p, tau)

    def sample_candidates(self, obs: torch.Tensor, n: int, bf16: bool | None = None,
                          generator: torch.Generator | None = None, deterministic: bool = False) -> torch.Tensor:
        """N chunks per state from the current actor, [B, N, T*A] (state encoded once)."""
        B = obs.shape[0]
        gen = self.gen if generator is None else generator
        noise = (torch.zeros((B, n, self.chunk_dim), device=obs.device) if deterministic
                 else torch.randn((B, n, self.chunk_dim), generator=gen, device=gen.device).to(obs.device))
        a = self.actor.sample(obs, n, noise=noise, bf16=self.bf16 if bf16 is None else bf16)
        return a.reshape(B, n, self.chunk_dim)

    @torch.no_grad()
    def _best_of_n(self, obs: torch.Tensor, critic: ChunkCritic, generator=None, deterministic=False):
        n = self.cfg.num_candidates
        cands = self.sample_candidates(obs, 1 if deterministic else n, generator=generator,
                                       deterministic=deterministic)
        return select_best(critic, obs, cands, self.cfg.critic_agg)

    # ---------------------------------------------------------------------------------------- Stage I
    def pretrain_step(self, batch: Mapping[str, Any]) -> dict[str, float]:
        """Offline BC on demonstrations (Eq. 24)."""
        b = self._batch(batch)
        loss = self._data_bc_loss(b).mean()
        gn = self._step(self.actor_opt, self.actor.parameters(), loss)
        self.counters['pretrain_steps'] += 1
        self.counters['policy_version'] += 1
        return {'bc_loss': float(loss.detach()), 'actor_grad_norm': gn}

    def _data_bc_loss(self, b: dict[str, torch.Tensor], h_obs: torch.Tensor | None = None,
                      online: bool = False) -> torch.Tensor:
        mask = b.get('valid') if self.cfg.mask_padded_actions else None
        loss = self.actor.bc_loss(b['obs'], b['actions'], mask=mask, generator=self.gen, h_obs=h_obs)
        if online and self.cfg.bc_data != 'buffer':
            # per-row weights so that .mean() is the mean over the anchor rows only (0 if there are none):
            # 'demos' = demonstration rows, 'success' = demonstration rows + rows of successful episodes
            d = b.get('is_demo')
            if d is not None and self.cfg.bc_data == 'success' and 'is_success' in b:
                d = torch.maximum(d, b['is_success'])
            if d is not None:
                loss = loss * d * (d.numel() / d.sum().clamp(min=1.0))
        return loss

    # --------------------------------------------------------------------------------------- Stage II
    def critic_targets(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """T-step TD target: returns + discount * Q_target(next_obs, a'), a' from the current actor."""
        with torch.no_grad():
            if self.cfg.algorithm == 'qc_best_of_n':
                _, q_next = self._best_of_n(b['next_obs'], self.critic_target)
            else:
                a_next = self.sample_candidates(b['next_obs'], 1)[:, 0]   # a sample: bf16 is fine
                q_next = _agg(self.critic_target(b['next_obs'], a_next), self.cfg.critic_agg)
            return b['returns'] + b['discount'] * q_next

    def update(self, batch: Mapping[str, Any], actor_frozen: bool = False) -> dict[str, float]:
        """One online update: critic step (+ Polyak), then unless actor_frozen the actor step of the
        configured algorithm. Returns float metrics."""
        cfg = self.cfg
        b = self._batch(batch)
        B = b['obs'].shape[0]
        m: dict[str, float] = {}
        if cfg.algorithm != 'bc':   # the BC baseline has no critic: it would only cost time
            # ---- critic (Eq. 14)
            target = self.critic_targets(b)
            q = self.critic(b['obs'], b['actions'].reshape(B, -1))                   # [E, B]
            critic_loss = (q - target.unsqueeze(0)).square().mean()
            m.update(critic_loss=float(critic_loss.detach()), q_mean=float(q.detach().mean()),
                     target_mean=float(target.mean()))
            m['critic_grad_norm'] = self._step(self.critic_opt, self.critic.parameters(), critic_loss)
            self._polyak()
        self.counters['online_updates'] += 1
        if actor_frozen:
            return m
        # ---- actor
        if cfg.algorithm in ('bc', 'qc_best_of_n'):
            loss = self._data_bc_loss(b, online=True).mean()
            m.update(actor_loss=float(loss.detach()), bc_loss=float(loss.detach()))
        else:
            loss, am = self.poco_actor_loss(b)
            m.update(am)
        m['actor_grad_norm'] = self._step(self.actor_opt, self.actor.parameters(), loss)
        self.counters['actor_updates'] += 1
        self.counters['policy_version'] += 1
        return m

    def estep(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Implicit E-step: candidates [B, N, T*A], their Q [B, N] and weights softmax(Q / eta) [B, N].

        With bf16_critic_estep the candidates' Q comes from a bf16 pass (~3x faster than fp32). Measured at
        paper sizes with eta = 0.001 (bench_update.py): it moves the weights less than ONE critic gradient step
        does (total variation ~0.05 vs ~0.08; same argmax for ~95% vs ~91% of the states), i.e. it stays within
        the noise the critic's own training already puts on the weights. Set False for exact fp32 weights.
        """
        with torch.no_grad():
            cands = self.sample_candidates(obs, self.cfg.num_candidates)
            q = _agg(self.critic(obs, cands, bf16=self.bf16_critic), self.cfg.estep_q_agg)
            w = torch.softmax(q / self.cfg.eta, dim=1)
        return cands, q, w

    def poco_actor_loss(self, b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """M-step objective (Eq. 23; Eq. 22 for 'poco_noclip') on one batch.

        Candidates whose weight is below `candidate_weight_floor` are left out of the candidate term: each
        would add less than floor * zeta to the objective (and as little to its gradient), far below the
        bf16 rounding of the kept terms. With eta = 0.001 the weights are nearly one-hot, so this removes
        most of the M-step's work. floor = 0 keeps every candidate (exact Eq. 23).
        """
        cfg = self.cfg
        B, N = b['obs'].shape[0], cfg.num_candidates
        cands, q, w = self.estep(b['obs'])
        # noise and flow times for all candidates are drawn up front, so pruning never changes the others'
        a0 = torch.randn(cands.shape, generator=self.gen, device=self.device)
        mt = torch.rand((B, N), generator=self.gen, device=self.device)
        h_obs = self.actor.encode_obs(b['obs'])                              # shared by both BC terms
        l_data = self._data_bc_loss(b, h_obs=h_obs, online=True)             # [B]
        if cfg.candidate_weight_floor > 0:
            ib, ij = (w > cfg.candidate_weight_floor).nonzero(as_tuple=True)  # kept (state, candidate) pairs
        else:
            ib = torch.arange(B, device=self.device).repeat_interleave(N)
            ij = torch.arange(N, device=self.device).repeat(B)
        with bf16_autocast(self.bf16_cand, self.device.type):
            l_cand = self.actor.bc_loss(None, cands[ib, ij], noise=a0[ib, ij], m=mt[ib, ij],
                                        h_obs=h_obs.index_select(0, ib))     # [R] fp32
        w_kept = w[ib, ij]
        loss = poco_objective(l_data, l_cand, w_kept, cfg.beta, cfg.zeta, clip=cfg.algorithm != 'poco_noclip')
        with torch.no_grad():
            over = (l_cand > cfg.zeta).float()
            m = {'actor_loss': float(loss.detach()), 'bc_loss': float(l_data.mean()),
                 'candidate_loss': float((w_kept * l_cand).sum() / B),
                 'clip_fraction': float(over.mean()) if len(over) else 0.0,       # over kept candidates
                 'weighted_clip_fraction': float((w_kept * over).sum() / B),
                 'kept_fraction': float(len(ib) / (B * N)),
                 'ess': float((1.0 / w.square().sum(1)).mean()),
                 'q_candidates_mean': float(q.mean()), 'q_candidates_std': float(q.std(1).mean())}
        return loss, m

    # -------------------------------------------------------------------------------------------- act
    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Normalised chunk(s) for obs [D] -> [T, A] or [B, D] -> [B, T, A]. deterministic = zero noise."""
        x = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        single = x.dim() == 1
        x = x.reshape(1, -1) if single else x
        if x.shape[-1] != self.cfg.obs_dim:
            raise ValueError(f'obs has dim {x.shape[-1]}, agent expects {self.cfg.obs_dim}')
        if self.cfg.algorithm == 'qc_best_of_n':
            a, _ = self._best_of_n(x, self.critic, generator=self.act_gen, deterministic=deterministic)
        else:
            a = self.sample_candidates(x, 1, bf16=False, generator=self.act_gen, deterministic=deterministic)[:, 0]
        a = a.reshape(-1, self.cfg.horizon, self.cfg.action_dim).cpu().numpy()
        return a[0] if single else a

    # ------------------------------------------------------------------------------------ checkpoints
    def save(self, path_prefix: str, extra: Mapping[str, Any] | None = None) -> tuple[str, str]:
        """Write `<prefix>.safetensors` (weights, optimiser tensors, RNG states) and `<prefix>.json` (config,
        counters, optimiser hyper-parameters, plus `extra`, e.g. the learner's effective configuration). Both
        files are written atomically. No pickle."""
        from safetensors.torch import save_file
        tensors: dict[str, torch.Tensor] = {}
        for name, mod in (('actor', self.actor), ('critic', self.critic), ('critic_target', self.critic_target)):
            for k, v in mod.state_dict().items():
                tensors[f'{name}.{k}'] = v.detach().to('cpu', copy=True).contiguous()
        meta: dict[str, Any] = {'format': CHECKPOINT_FORMAT, 'config': self.cfg.to_json_dict(),
                                'counters': dict(self.counters), 'rng_device': self.gen.device.type,
                                **dict(extra or {})}
        for name, opt in (('actor_opt', self.actor_opt), ('critic_opt', self.critic_opt)):
            sd = opt.state_dict()
            scalars: dict[str, dict[str, Any]] = {}
            for idx, st in sd['state'].items():
                for k, v in st.items():
                    if torch.is_tensor(v):
                        tensors[f'{name}.state.{idx}.{k}'] = v.detach().to('cpu', copy=True).contiguous()
                    else:
                        scalars.setdefault(str(idx), {})[k] = v
            meta[name] = {'param_groups': sd['param_groups'], 'scalars': scalars}
        tensors['rng.gen'] = self.gen.get_state().cpu()           # get_state is a CPU byte tensor anyway
        tensors['rng.act_gen'] = self.act_gen.get_state().cpu()
        check_finite({k: v for k, v in tensors.items() if not k.startswith('rng.')}, 'agent checkpoint')
        st_path, js_path = f'{path_prefix}.safetensors', f'{path_prefix}.json'
        d = os.path.dirname(os.path.abspath(st_path))
        os.makedirs(d, exist_ok=True)
        _atomic_write(st_path, lambda p: save_file(tensors, p, metadata={'format': CHECKPOINT_FORMAT}))
        _atomic_write(js_path, lambda p: _write_text(p, json.dumps(meta, indent=1, default=_json_default)))
        return st_path, js_path

    @classmethod
    def load(cls, path_prefix: str, **overrides: Any) -> 'Agent':
        """Restore a `save`d agent. Overrides change non-architectural settings (e.g. algorithm, eta, zeta,
        learning rates, warm-up length) for a new phase; without overrides training resumes bit-identically
        (on the same kind of device).

        The device is not taken from the checkpoint (a GPU server's checkpoint must load on a CPU-only
        machine): it is the `device` override, else 'auto'. RNG states do not carry across device kinds
        (CPU and CUDA generators differ); loading on another kind reseeds both generators from the saved
        states (deterministic) and warns."""
        from safetensors.torch import load_file
        with open(f'{path_prefix}.json') as f:
            meta = json.load(f)
        if meta.get('format') != CHECKPOINT_FORMAT:
            raise ValueError(f'{path_prefix}.json: not a {CHECKPOINT_FORMAT} checkpoint')
        tensors = load_file(f'{path_prefix}.safetensors')
        saved = AgentConfig.from_json_dict(meta['config'])
        cfg = dataclasses.replace(saved, **{'device': 'auto', **overrides})
        for k in ARCHITECTURE_KEYS:
            if tuple(np.atleast_1d(getattr(cfg, k))) != tuple(np.atleast_1d(getattr(saved, k))):
                raise ValueError(f'Agent.load: {k} is fixed by the checkpoint ({getattr(saved, k)}), '
                                 f'cannot override with {getattr(cfg, k)}')
        agent = cls(cfg)
        for name, mod in (('actor', agent.actor), ('critic', agent.critic), ('critic_target', agent.critic_target)):
            pre = name + '.'
            mod.load_state_dict({k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}, strict=True)
        for name, opt in (('actor_opt', agent.actor_opt), ('critic_opt', agent.critic_opt)):
            om = meta[name]
            state: dict[int, dict[str, Any]] = {}
            pre = name + '.state.'
            for k, v in tensors.items():
                if k.startswith(pre):
                    idx, key = k[len(pre):].split('.', 1)
                    state.setdefault(int(idx), {})[key] = v
            for idx, sc in om['scalars'].items():
                state.setdefault(int(idx), {}).update(sc)
            groups = [dict(g, betas=tuple(g['betas'])) if 'betas' in g else dict(g) for g in om['param_groups']]
            opt.load_state_dict({'state': state, 'param_groups': groups})
        for opt, lr in ((agent.actor_opt, cfg.actor_lr), (agent.critic_opt, cfg.critic_lr)):
            for g in opt.param_groups:      # an lr override must win over the saved optimiser state
                g['lr'] = lr
        if meta.get('rng_device', 'cpu') == agent.gen.device.type:
            agent.gen.set_state(tensors['rng.gen'])
            agent.act_gen.set_state(tensors['rng.act_gen'])
        else:
            for gen, key in ((agent.gen, 'rng.gen'), (agent.act_gen, 'rng.act_gen')):
                digest = hashlib.sha256(tensors[key].numpy().tobytes()).digest()
                gen.manual_seed(int.from_bytes(digest[:8], 'little') & (2 ** 63 - 1))
            warnings.warn(f"Agent.load: {path_prefix} saved its RNG on {meta['rng_device']!r}, this agent runs on "
                          f"{agent.device.type!r}: generators reseeded from the saved states (training continues, "
                          f'not bit-identically)', stacklevel=2)
        agent.counters.update(meta['counters'])
        return agent


def _json_default(o: Any) -> Any:
    if isinstance(o, tuple):
        return list(o)
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    raise TypeError(f'not JSON-serialisable: {type(o)}')


def _write_text(path: str, text: str) -> None:
    with open(path, 'w') as f:
        f.write(text)


def _atomic_write(path: str, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + '.', suffix='.tmp', dir=os.path.dirname(path))
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
