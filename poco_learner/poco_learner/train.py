"""Plain-Python training loops around `Agent` (no ROS): offline pre-training and the online update schedule.

The learner node (ROS) and the learning tests drive the same code: the node feeds executed steps into the
buffer and calls `OnlineTrainer.on_env_steps(n)`; the trainer runs as many updates as the update-to-data
ratio allows, with the actor frozen for the first `critic_warmup_steps` online updates (Algorithm 1).

Buffers: `poco_learner.buffer.ReplayBuffer` or anything with the same `sample(batch_size, horizon, gamma, rng)`
(batch contract in its docstring) and `len()`. Batches use the agent's chunk length T and gamma.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable

import numpy as np

from .agent import Agent


def _sampleable(buffer: Any) -> int:
    # ReplayBuffer samples finished episodes only; len() also counts steps of episodes still open
    return int(buffer.num_sampleable()) if hasattr(buffer, 'num_sampleable') else len(buffer)


def sample_batch(agent: Agent, buffer: Any, batch_size: int, rng: np.random.Generator) -> dict:
    """A batch of T-step windows for this agent (T = its chunk length, its gamma)."""
    return buffer.sample(batch_size, agent.cfg.horizon, agent.cfg.gamma, rng)


def pretrain(agent: Agent, buffer: Any, steps: int, progress: bool = True, batch_size: int | None = None,
             log_every: int = 100, callback: Callable[[int, dict], None] | None = None,
             rng: np.random.Generator | int | None = None) -> dict[str, float]:
    """Stage I: `steps` BC updates on batches from `buffer` (Eq. 24). Returns the last metrics (with a running
    mean of the BC loss over the last `log_every` steps). rng: batch sampling (default: seeded by agent seed)."""
    bs = batch_size or agent.cfg.batch_size
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(
        agent.cfg.seed if rng is None else rng)
    if _sampleable(buffer) == 0:
        raise ValueError('pretrain: the buffer has no finished episodes to sample from')
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=steps, desc='pretrain (BC)', unit='step', dynamic_ncols=True)
    recent: list[float] = []
    m: dict[str, float] = {}
    try:
        for i in range(steps):
            m = agent.pretrain_step(sample_batch(agent, buffer, bs, rng))
            recent.append(m['bc_loss'])
            if len(recent) > log_every:
                recent.pop(0)
            if callback is not None:
                callback(i, m)
            if bar is not None:
                bar.update(1)
                if (i + 1) % log_every == 0 or i + 1 == steps:
                    bar.set_postfix(bc_loss=f'{sum(recent) / len(recent):.4f}')
    finally:
        if bar is not None:
            bar.close()
    if recent:
        m = dict(m, bc_loss_avg=sum(recent) / len(recent))
    return m


class OnlineTrainer:
    """Stage II schedule: critic warm-up (actor frozen), then updates of the configured algorithm.

    utd_ratio: gradient updates per new environment step (fractions accumulate). min_buffer_steps: no update
    before the buffer holds this many steps. on_policy_update(agent) is called after every update that changed
    the actor (the node publishes weights from there, possibly throttled)."""

    def __init__(self, agent: Agent, buffer: Any, utd_ratio: float = 1.0, batch_size: int | None = None,
                 min_buffer_steps: int = 0,
                 on_policy_update: Callable[[Agent], None] | None = None,
                 rng: np.random.Generator | int | None = None):
        if not utd_ratio >= 0:
            raise ValueError('utd_ratio must be >= 0 (0 = no online updates)')
        self.agent = agent
        self.buffer = buffer
        self.utd_ratio = float(utd_ratio)
        self.batch_size = batch_size or agent.cfg.batch_size
        self.min_buffer_steps = min_buffer_steps
        self.on_policy_update = on_policy_update
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(
            agent.cfg.seed + 1 if rng is None else rng)
        self._credit = 0.0
        self.last_metrics: dict[str, float] = {}
        self._rate = 0.0             # updates per second, exponential moving average
        self._t_last: float | None = None

    @property
    def phase(self) -> str:
        if _sampleable(self.buffer) < max(1, self.min_buffer_steps):
            return 'waiting'
        return 'warmup' if self.agent.in_critic_warmup else self.agent.cfg.algorithm

    @property
    def updates_per_second(self) -> float:
        return self._rate

    def update_once(self) -> dict[str, float]:
        """One update now (actor frozen while in critic warm-up)."""
        frozen = self.agent.in_critic_warmup
        m = self.agent.update(sample_batch(self.agent, self.buffer, self.batch_size, self.rng), actor_frozen=frozen)
        m = dict(m, phase_warmup=float(frozen))
        self.last_metrics = m
        now = time.perf_counter()
        if self._t_last is not None:
            inst = 1.0 / max(now - self._t_last, 1e-9)
            self._rate = inst if self._rate == 0 else 0.95 * self._rate + 0.05 * inst
        self._t_last = now
        if not frozen and self.on_policy_update is not None:
            self.on_policy_update(self.agent)
        return m

    def add_env_steps(self, n_steps: int) -> None:
        """Account for `n_steps` new environment steps (they pay for utd_ratio updates each)."""
        if _sampleable(self.buffer) < max(1, self.min_buffer_steps):
            return                   # steps taken while waiting for data earn no backlog of updates
        self._credit += n_steps * self.utd_ratio

    @property
    def pending_updates(self) -> int:
        return int(math.floor(self._credit + 1e-9))

    def run_pending(self, max_updates: int | None = None) -> list[dict[str, float]]:
        """Run the updates the accounted steps paid for (at most max_updates now)."""
        todo = self.pending_updates
        if max_updates is not None:
            todo = min(todo, max_updates)
        out = [self.update_once() for _ in range(todo)]
        self._credit -= todo
        return out

    def on_env_steps(self, n_steps: int, max_updates: int | None = None) -> list[dict[str, float]]:
        """Account for `n_steps` new environment steps and run the updates they pay for."""
        self.add_env_steps(n_steps)
        return self.run_pending(max_updates)

    def train(self, num_updates: int) -> list[dict[str, float]]:
        """Run a fixed number of updates regardless of new data (offline-style or catch-up)."""
        return [self.update_once() for _ in range(num_updates)]
