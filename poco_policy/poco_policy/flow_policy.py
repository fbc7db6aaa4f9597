"""Flow-matching policy over a flattened action chunk (no ROS).

The network is a velocity field v(a_m, m, s) over the chunk a = a_{t:t+T} flattened to T*A numbers
(normalised action space, [-1, 1]). Training uses the linear path a_m = (1 - m) a0 + m a1 with
a0 ~ N(0, I) and target velocity a1 - a0; sampling integrates v with K Euler steps from m = 0 to 1.

Speed: the first layer of the MLP acts on concat(s, a_m, m). It is split into an observation part and an
(action, time) part, so W_s s is computed once per state and shared by every candidate and every flow step
(the small-model analogue of reusing a VLA's KV cache). The time term m * w_m is folded into that cached
projection once per flow step, so the per-step work is one small matmul on the action plus the trunk.

Weights travel as safetensors bytes (`weights_to_bytes` / `policy_from_bytes`); never pickle. They are always
serialised from CPU copies; `policy_from_bytes(..., device=)` puts the rebuilt policy on 'cpu' (the default),
'cuda', 'cuda:N' or 'auto' (poco_policy.device), and `act` / `sample` take observations on any device.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from poco_policy.bf16 import bf16_autocast, cpu_supports_bf16, linear_silu  # noqa: F401 (re-exported)
from poco_policy.chunk_critic import ChunkCritic, select_best
from poco_policy.config import from_dict as config_from_dict
from poco_policy.device import module_device, resolve_device

WEIGHTS_FORMAT = 'poco_flow_policy/1'
# fp32 CPU sampling works on blocks of states whose [rows, widest hidden] activations take about this much
# (cache-sized temporaries; measured best at 2-4 MiB with 4x512 on a Xeon with 2 MiB L2 per core, see `sample`)
_CPU_BLOCK_BYTES = 4 << 20


@dataclass
class FlowPolicyConfig:
    obs_dim: int = 0
    action_dim: int = 7
    horizon: int = 5
    hidden_dims: tuple[int, ...] = (512, 512, 512, 512)
    flow_steps: int = 10
    # Clip final samples to the normalised action box (the buffer and the robot only know [-1, 1]).
    clip_samples: bool = True

    @property
    def chunk_dim(self) -> int:
        return self.horizon * self.action_dim

    def validate(self) -> 'FlowPolicyConfig':
        if self.obs_dim <= 0 or self.action_dim <= 0 or self.horizon <= 0:
            raise ValueError(f'FlowPolicyConfig needs positive obs_dim/action_dim/horizon, got {self}')
        if not self.hidden_dims or any(int(h) <= 0 for h in self.hidden_dims):
            raise ValueError(f'FlowPolicyConfig.hidden_dims must be non-empty and positive: {self.hidden_dims}')
        if self.flow_steps <= 0:
            raise ValueError(f'FlowPolicyConfig.flow_steps must be positive: {self.flow_steps}')
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        return self

    def to_json_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['hidden_dims'] = list(self.hidden_dims)
        return d

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> 'FlowPolicyConfig':
        # the project's one strict loader: unknown keys are errors, lists become the tuple fields
        return config_from_dict(cls, dict(d)).validate()


@dataclass
class BestOfN:
    """Act with the argmax-Q of N sampled chunks (the QC best-of-N baseline) instead of one sample."""
    critic: ChunkCritic
    num_candidates: int
    critic_agg: str = 'mean'     # over the critic ensemble: 'mean' | 'min'


class FlowChunkPolicy(nn.Module):
    """SiLU MLP velocity field over the flattened chunk with a split first layer (see module docstring)."""

    def __init__(self, cfg: FlowPolicyConfig):
        super().__init__()
        self.cfg = cfg.validate()
        self.best_of_n: BestOfN | None = None   # set by policy_from_bytes when the weights carry a critic
        h = cfg.hidden_dims
        da = cfg.chunk_dim
        self.obs_in = nn.Linear(cfg.obs_dim, h[0])             # W_s s + b  (cached per state)
        self.act_in = nn.Linear(da + 1, h[0], bias=False)      # W_a a_m + w_m m
        layers: list[nn.Module] = []
        for i in range(1, len(h)):
            layers += [nn.SiLU(), nn.Linear(h[i - 1], h[i])]
        layers += [nn.SiLU(), nn.Linear(h[-1], da)]
        self.trunk = nn.Sequential(*layers)
        # The split layer should start like ONE linear layer on concat(s, a, m): same fan-in for both halves.
        bound = 1.0 / math.sqrt(cfg.obs_dim + da + 1)
        with torch.no_grad():
            for p in (self.obs_in.weight, self.obs_in.bias, self.act_in.weight):
                p.uniform_(-bound, bound)

    @property
    def device(self) -> torch.device:
        return module_device(self)

    # ----------------------------------------------------------------------------------------------- core
    def encode_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Observation part of the first layer, [B, D] -> [B, H0]; reuse it for many candidates/steps."""
        return self.obs_in(obs)

    def velocity_encoded(self, h_obs: torch.Tensor, a_flat: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """v(a_m, m, s) from the cached projection. h_obs [..., H0] broadcastable; a_flat [..., T*A]; m [...]."""
        w_a = self.act_in.weight[:, :-1]
        w_m = self.act_in.weight[:, -1]
        x = h_obs + F.linear(a_flat, w_a) + m.unsqueeze(-1) * w_m
        return self.trunk(x)

    def forward(self, obs: torch.Tensor, a_flat: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Velocity for obs [B, D], a_flat [B, T*A], m [B]."""
        return self.velocity_encoded(self.encode_obs(obs), a_flat, m)

    # ----------------------------------------------------------------------------------------------- loss
    def bc_loss(self, obs: torch.Tensor | None, actions: torch.Tensor, noise: torch.Tensor | None = None,
                m: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                generator: torch.Generator | None = None, h_obs: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample flow-matching loss (mean squared velocity error over the chunk's numbers).

        obs [B, D]; actions [B, *S, T, A] or [B, *S, T*A] where *S are optional candidate dims that share the
        state's cached projection (this is the batched candidate loss of the M-step). noise: like actions
        (a0); m: [B, *S] in [0, 1]; mask: [B, *S, T] (1 = real step) averages over real steps only.
        h_obs: precomputed `encode_obs(obs)` [B, H0] (then obs may be None). Returns [B, *S].
        """
        cfg = self.cfg
        T, A = cfg.horizon, cfg.action_dim
        if actions.shape[-1] == T * A and (actions.dim() < 2 or actions.shape[-2:] != (T, A)):
            lead = actions.shape[:-1]
        elif actions.shape[-2:] == (T, A):
            lead = actions.shape[:-2]
        else:
            raise ValueError(f'actions shape {tuple(actions.shape)} does not end in ({T},{A}) or ({T * A},)')
        if obs is not None and lead[0] != obs.shape[0]:
            raise ValueError(f'batch mismatch: obs {tuple(obs.shape)} vs actions {tuple(actions.shape)}')
        a1 = actions.reshape(*lead, T * A)
        a0 = (_draw(torch.randn, a1.shape, generator, a1.device, a1.dtype)
              if noise is None else noise.reshape(a1.shape).to(a1.device, a1.dtype))
        if m is None:
            m = _draw(torch.rand, lead, generator, a1.device, a1.dtype)
        m = m.reshape(lead).to(a1.device, a1.dtype)
        a_m = (1.0 - m.unsqueeze(-1)) * a0 + m.unsqueeze(-1) * a1
        if h_obs is None:
            h_obs = self.encode_obs(obs)
        h = h_obs.reshape(h_obs.shape[0], *([1] * (len(lead) - 1)), h_obs.shape[-1])
        v = self.velocity_encoded(h, a_m, m)
        err = (v.float() - (a1 - a0).float()).square()
        if mask is None:
            return err.mean(-1)
        mask = mask.reshape(*lead, T).to(err.dtype)
        err = err.reshape(*lead, T, A).sum(-1)
        return (err * mask).sum(-1) / (mask.sum(-1).clamp_min(1.0) * A)

    # ------------------------------------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, obs: torch.Tensor, num_samples: int = 1, noise: torch.Tensor | None = None,
               bf16: bool = False, generator: torch.Generator | None = None,
               clip: bool | None = None) -> torch.Tensor:
        """Euler-integrate the flow from a0 (noise) at m=0 to m=1 in K steps. obs [B, D] -> [B, N, T, A].

        Each state is encoded once; with bf16=True the trunk runs in bf16 (fused linear+SiLU where
        available) while the observation projection and the integration state stay fp32.
        noise: [B, N, T, A] (or [B, N, T*A]); zero noise = deterministic mode.

        fp32 on the CPU: the states are integrated a block at a time (all K steps of a block, then the next),
        sized so that a block's activations (~`_CPU_BLOCK_BYTES`) stay in the cache; every chunk goes through
        the same ops as unblocked (equal to float rounding; test_sampling_blocks). Measured at the paper's sizes
        (B 256, N 32, 4x512, one thread, Xeon with AMX, shared machine): fp32 sampling 1.45 s -> 1.2 s (3.7 s ->
        2.0 s while neighbours load the memory system): unblocked, ~30% of the time went to page faults and
        memory passes over the 16 MB per-layer temporaries (bias copy, SiLU, broadcast add), not to matmul.
        The bf16 path (AMX kernels like a large M) and CUDA run as one block.
        """
        cfg = self.cfg
        B, N, TA = obs.shape[0], int(num_samples), cfg.chunk_dim
        if noise is None:
            a = _draw(torch.randn, (B, N, TA), generator, obs.device, torch.float32)
        else:
            if noise.numel() != B * N * TA:
                raise ValueError(f'noise shape {tuple(noise.shape)} does not match [B={B}, N={N}, {TA}]')
            a = noise.reshape(B, N, TA).to(obs.device, torch.float32, copy=True)
        K = cfg.flow_steps
        dt = 1.0 / K
        w_a = self.act_in.weight[:, :-1]
        w_m = self.act_in.weight[:, -1]
        h_obs = self.encode_obs(obs).unsqueeze(1)                  # [B, 1, H0] fp32, once per state
        if bf16:
            # weights cast once per call; the big [B*N, H] activations stay bf16 end to end (no fp32 round
            # trips: those cost ~40% of the bf16 path); only the integration state `a` is fp32
            wa16 = w_a.to(torch.bfloat16)
            lin = [(m.weight.to(torch.bfloat16), m.bias.to(torch.bfloat16))
                   for m in self.trunk if isinstance(m, nn.Linear)]
            for k in range(K):
                h_k = (h_obs + (k * dt) * w_m).to(torch.bfloat16)  # time term folded into the cached part
                x = F.silu(F.linear(a.to(torch.bfloat16), wa16) + h_k).reshape(B * N, -1)
                for w, b in lin[:-1]:
                    x = linear_silu(x, w, b)
                v = F.linear(x, *lin[-1]).reshape(B, N, TA)
                a = a + dt * v.float()
        else:
            block = B if obs.device.type != 'cpu' else max(1, _CPU_BLOCK_BYTES // (4 * max(cfg.hidden_dims) * N))
            parts = []
            for i in range(0, B, block):                            # states i..i+block, all K steps
                ai, hi = a[i:i + block], h_obs[i:i + block]
                for k in range(K):
                    ai = ai + dt * self.trunk(F.linear(ai, w_a) + (hi + (k * dt) * w_m))
                parts.append(ai)
            a = parts[0] if len(parts) == 1 else torch.cat(parts)
        if cfg.clip_samples if clip is None else clip:
            a = a.clamp_(-1.0, 1.0)
        return a.reshape(B, N, cfg.horizon, cfg.action_dim)

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
        """The chunk to execute, obs [B, D] -> [B, T, A]: one sample (zero noise when deterministic), or with
        `best_of_n` the argmax-Q of N samples (deterministic: the single zero-noise sample, as the learner's
        agent does). obs may live on any device: it is moved to the policy's; the chunk stays there."""
        cfg, sel = self.cfg, self.best_of_n
        obs = obs.to(self.device, torch.float32)
        B = obs.shape[0]
        n = 1 if sel is None or deterministic else sel.num_candidates
        noise = torch.zeros(B, n, cfg.chunk_dim, device=obs.device) if deterministic else None
        a = self.sample(obs, n, noise=noise, generator=generator)
        if n == 1:
            return a[:, 0]
        best, _ = select_best(sel.critic, obs, a.reshape(B, n, cfg.chunk_dim), sel.critic_agg)
        return best.reshape(B, cfg.horizon, cfg.action_dim)


def _draw(fn, shape, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """torch.randn/rand from `generator` (on the generator's own device, so a CPU generator gives the same
    numbers for a CUDA policy), placed on `device`."""
    if generator is None or generator.device == device:
        return fn(shape, generator=generator, dtype=dtype, device=device)
    return fn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)


# ------------------------------------------------------------------------------------------ serialisation
def state_is_finite(tensors: Mapping[str, torch.Tensor] | nn.Module) -> bool:
    """True when every floating tensor (module parameters/buffers or a state dict) is finite."""
    items = tensors.state_dict().values() if isinstance(tensors, nn.Module) else tensors.values()
    return all(bool(torch.isfinite(t).all()) for t in items if t.is_floating_point())


def check_finite(tensors: Mapping[str, torch.Tensor] | nn.Module, what: str = 'weights') -> None:
    """Raise ValueError naming the first non-finite tensor (NaN/Inf weights must never reach a robot)."""
    items = tensors.state_dict().items() if isinstance(tensors, nn.Module) else tensors.items()
    for name, t in items:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f'{what}: tensor {name!r} contains NaN or Inf')


def payload_sha256(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def weights_to_bytes(policy: FlowChunkPolicy, extra: Mapping[str, Any] | None = None,
                     best_of_n: BestOfN | None = None) -> tuple[bytes, dict]:
    """Serialise the actor to safetensors bytes. Returns (payload, metadata).

    metadata is a JSON-able dict: {'format', 'config' (dict), 'sha256', **extra}; the same config is also
    stored in the safetensors header so the bytes alone are self-describing. With `best_of_n` the critic's
    tensors travel in the same payload as 'critic.*' and its spec as 'best_of_n' (header and metadata).
    Refuses non-finite weights.
    """
    from safetensors.torch import save as st_save
    state = {k: v.detach().to('cpu').contiguous() for k, v in policy.state_dict().items()}
    cfg_dict = policy.cfg.to_json_dict()
    header = {'format': WEIGHTS_FORMAT, 'config': json.dumps(cfg_dict, sort_keys=True)}
    sel = None
    if best_of_n is not None:
        sel = {'num_candidates': int(best_of_n.num_candidates), 'critic_agg': best_of_n.critic_agg,
               'critic': dict(best_of_n.critic.spec)}
        _check_best_of_n(sel, policy.cfg)
        state.update({'critic.' + k: v.detach().to('cpu').contiguous()
                      for k, v in best_of_n.critic.state_dict().items()})
        header['best_of_n'] = json.dumps(sel, sort_keys=True)
    check_finite(state, 'policy weights')
    payload = st_save(state, metadata=header)
    meta: dict[str, Any] = dict(extra or {})
    meta.update({'format': WEIGHTS_FORMAT, 'config': cfg_dict, 'sha256': payload_sha256(payload)})
    if sel is not None:
        meta['best_of_n'] = sel
    return payload, meta


def _check_best_of_n(sel: Mapping[str, Any], cfg: FlowPolicyConfig) -> None:
    try:
        c = sel['critic']
        ok = (int(sel['num_candidates']) >= 1 and sel['critic_agg'] in ('mean', 'min')
              and int(c['obs_dim']) == cfg.obs_dim and int(c['chunk_dim']) == cfg.chunk_dim
              and int(c['num_critics']) >= 1 and len(c['hidden']) >= 1 and all(int(h) >= 1 for h in c['hidden']))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f'policy weights: malformed best_of_n spec: {e!r}') from e
    if not ok:
        raise ValueError(f'policy weights: best_of_n spec does not fit the actor: {dict(sel)}')


def policy_from_bytes(payload: bytes, metadata: Mapping[str, Any] | str | None = None,
                      device: str | torch.device = 'cpu') -> FlowChunkPolicy:
    """Rebuild a FlowChunkPolicy from `weights_to_bytes` output (metadata as dict or JSON string).

    Checks: format, checksum (when given), config agreement between metadata and header, exact tensor
    names/shapes, finiteness. Raises ValueError on any mismatch. The policy (and a best-of-N critic) is
    rebuilt on the CPU and then moved to `device` ('cpu' | 'auto' | 'cuda' | 'cuda:N'; an unavailable CUDA
    device is a ValueError before the payload is parsed).
    """
    from safetensors.torch import load as st_load
    dev = resolve_device(device, 'policy device')
    if isinstance(metadata, str):
        metadata = json.loads(metadata) if metadata else {}
    metadata = dict(metadata or {})
    payload = bytes(payload)
    if metadata.get('sha256') and metadata['sha256'] != payload_sha256(payload):
        raise ValueError('policy weights: sha256 mismatch')
    header = _safetensors_header_metadata(payload)
    fmt_header, fmt_meta = header.get('format', WEIGHTS_FORMAT), metadata.get('format', WEIGHTS_FORMAT)
    if fmt_header != WEIGHTS_FORMAT or fmt_meta != WEIGHTS_FORMAT:
        raise ValueError(f'policy weights: unknown format {header.get("format")!r}/{metadata.get("format")!r}')
    cfg_meta = metadata.get('config')
    cfg_head = json.loads(header['config']) if 'config' in header else None
    if cfg_meta is None and cfg_head is None:
        raise ValueError('policy weights: no config in metadata or payload header')
    if isinstance(cfg_meta, str):
        cfg_meta = json.loads(cfg_meta)
    if cfg_meta is not None and cfg_head is not None and \
            FlowPolicyConfig.from_json_dict(cfg_meta) != FlowPolicyConfig.from_json_dict(cfg_head):
        raise ValueError('policy weights: metadata config disagrees with payload header')
    cfg = FlowPolicyConfig.from_json_dict(cfg_meta if cfg_meta is not None else cfg_head)
    try:
        state = st_load(payload)
    except Exception as e:  # safetensors raises its own error types on corrupt input
        raise ValueError(f'policy weights: cannot parse safetensors payload: {e}') from e
    check_finite(state, 'policy weights')
    sel = json.loads(header['best_of_n']) if 'best_of_n' in header else None
    if metadata.get('best_of_n') is not None and metadata['best_of_n'] != sel:
        raise ValueError('policy weights: metadata best_of_n disagrees with payload header')
    critic_state = {k[len('critic.'):]: state.pop(k) for k in [k for k in state if k.startswith('critic.')]}
    policy = FlowChunkPolicy(cfg)
    if sel is not None:
        _check_best_of_n(sel, cfg)
        c = sel['critic']
        critic = ChunkCritic(int(c['obs_dim']), int(c['chunk_dim']), tuple(int(h) for h in c['hidden']),
                             int(c['num_critics']))
        want = critic.state_dict()
        if set(critic_state) != set(want) or any(critic_state[k].shape != want[k].shape for k in want):
            raise ValueError('policy weights: critic tensor names/shapes do not match its best_of_n spec')
        critic.load_state_dict(critic_state, strict=True)
        policy.best_of_n = BestOfN(critic.eval(), int(sel['num_candidates']), sel['critic_agg'])
    elif critic_state:
        raise ValueError('policy weights: critic tensors without a best_of_n spec')
    expected = policy.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
        raise ValueError('policy weights: tensor names/shapes do not match the config')
    policy.load_state_dict(state, strict=True)
    policy.eval()
    if dev.type != 'cpu':
        policy.to(dev)                     # best_of_n's critic is not a submodule: move it too
        if policy.best_of_n is not None:
            policy.best_of_n.critic.to(dev)
    return policy


def _safetensors_header_metadata(payload: bytes) -> dict[str, str]:
    # safetensors layout: u64 little-endian header length, then a JSON header with optional __metadata__.
    if len(payload) < 8:
        raise ValueError('policy weights: payload too short')
    n = int.from_bytes(payload[:8], 'little')
    if n <= 0 or 8 + n > len(payload):
        raise ValueError('policy weights: corrupt safetensors header')
    try:
        header = json.loads(payload[8:8 + n])
    except ValueError as e:
        raise ValueError('policy weights: corrupt safetensors header') from e
    return dict(header.get('__metadata__') or {})
