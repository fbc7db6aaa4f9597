"""Chunk critic Q(s, a_{t:t+T}) and best-of-N chunk selection (no ROS).

The critic lives here, next to the actor, because it can act too: the QC best-of-N baseline executes the
argmax-Q of N sampled chunks, so the policy node needs the critic when that baseline runs on the robot. The
learner trains it (poco_learner.agent); weights travel with the actor's (flow_policy.weights_to_bytes).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from poco_policy.bf16 import linear_silu


class _CriticMember(nn.Module):
    """Q(s, a): MLP with the first layer split like the actor's (obs part reusable across candidates),
    Linear -> SiLU -> LayerNorm per hidden layer, linear scalar output."""

    def __init__(self, obs_dim: int, chunk_dim: int, hidden: tuple[int, ...]):
        super().__init__()
        self.obs_in = nn.Linear(obs_dim, hidden[0])
        self.act_in = nn.Linear(chunk_dim, hidden[0], bias=False)
        self.norm0 = nn.LayerNorm(hidden[0])
        layers: list[nn.Module] = []
        for i in range(1, len(hidden)):
            layers += [nn.Linear(hidden[i - 1], hidden[i]), nn.SiLU(), nn.LayerNorm(hidden[i])]
        layers += [nn.Linear(hidden[-1], 1)]
        self.trunk = nn.Sequential(*layers)
        bound = 1.0 / math.sqrt(obs_dim + chunk_dim)   # start like one linear layer on concat(s, a)
        with torch.no_grad():
            for p in (self.obs_in.weight, self.obs_in.bias, self.act_in.weight):
                p.uniform_(-bound, bound)

    def q_encoded(self, h_obs: torch.Tensor, a_flat: torch.Tensor) -> torch.Tensor:
        x = self.norm0(F.silu(h_obs + self.act_in(a_flat)))
        return self.trunk(x).squeeze(-1)

    @torch.no_grad()
    def q_encoded_bf16(self, h_obs: torch.Tensor, a_flat: torch.Tensor) -> torch.Tensor:
        """Inference-only bf16 twin of q_encoded (fused linear+SiLU, bf16 LayerNorm, fp32 output layer)."""
        bf = torch.bfloat16
        lead = torch.broadcast_shapes(h_obs.shape[:-1], a_flat.shape[:-1])
        x = F.silu(h_obs.to(bf) + F.linear(a_flat.to(bf), self.act_in.weight.to(bf)))
        x = x.reshape(-1, x.shape[-1])
        x = F.layer_norm(x, x.shape[-1:], self.norm0.weight.to(bf), self.norm0.bias.to(bf))
        mods = list(self.trunk)
        for i in range(0, len(mods) - 1, 3):                 # (Linear, SiLU, LayerNorm) blocks
            lin, ln = mods[i], mods[i + 2]
            x = linear_silu(x, lin.weight.to(bf), lin.bias.to(bf))
            x = F.layer_norm(x, x.shape[-1:], ln.weight.to(bf), ln.bias.to(bf))
        return F.linear(x.float(), mods[-1].weight, mods[-1].bias).reshape(lead)


class ChunkCritic(nn.Module):
    """Ensemble of chunk critics. forward(obs [B, D], a [B, (N,) T*A]) -> [E, B(, N)]."""

    def __init__(self, obs_dim: int, chunk_dim: int, hidden: tuple[int, ...], num_critics: int):
        super().__init__()
        self.spec = {'obs_dim': int(obs_dim), 'chunk_dim': int(chunk_dim), 'hidden': [int(h) for h in hidden],
                     'num_critics': int(num_critics)}     # enough to rebuild it (weights metadata)
        self.members = nn.ModuleList(_CriticMember(obs_dim, chunk_dim, hidden) for _ in range(num_critics))

    def forward(self, obs: torch.Tensor, a_flat: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        extra = a_flat.dim() - obs.dim()               # candidate dims: encode the state once, broadcast
        out = []
        for mem in self.members:
            h = mem.obs_in(obs)                        # fp32, once per state
            h = h.reshape(h.shape[0], *([1] * extra), h.shape[-1])
            out.append(mem.q_encoded_bf16(h, a_flat) if bf16 else mem.q_encoded(h, a_flat))
        return torch.stack(out, 0)


def aggregate(q: torch.Tensor, how: str) -> torch.Tensor:
    """Combine the ensemble axis (dim 0): 'mean' or 'min'."""
    return q.mean(0) if how == 'mean' else q.min(0).values


@torch.no_grad()
def select_best(critic: ChunkCritic, obs: torch.Tensor, cands: torch.Tensor, how: str = 'mean'):
    """Argmax-Q candidate per state. obs [B, D], cands [B, N, T*A] -> (chunks [B, T*A], q [B])."""
    q = aggregate(critic(obs, cands), how)                 # [B, N]
    idx = q.argmax(1)
    ar = torch.arange(obs.shape[0], device=cands.device)
    return cands[ar, idx], q[ar, idx]
