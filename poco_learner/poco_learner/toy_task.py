"""A tiny sparse-reward task for learning tests of the agent (pure numpy, vectorised, no ROS, no MuJoCo).

"Gate reach": a point in the plane starts left of a wall at x = 0 and must reach the finish line x >= FINISH_X
on the right. The wall has one gate of half-width GATE_HALF centred at a random height (observed). Moving
into the wall outside the gate ends the episode as a failure (like an e-stop); reaching the finish line gives
reward 1 and ends it; otherwise it times out after `max_steps`.
  observation (3): x, y, gate centre
  action (2): normalised velocity in [-1, 1]^2; one step moves by STEP * action
The scripted demonstrator aims at the gate centre plus a per-episode offset and jitters its actions, so its
demonstrations (and a policy cloned from them) pass the gate only part of the time: there is a clear better
behaviour (aim at the centre) for RL to find.

Episodes come out as dicts (obs [L+1, 3], actions [L, 2], rewards [L], terminal, success), ready for
`ReplayBuffer.add_episode`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP = 0.1
FINISH_X = 0.5
GATE_HALF = 0.15
START_X = -0.6


@dataclass
class GateReachConfig:
    max_steps: int = 30
    start_y_range: float = 0.5
    gate_range: float = 0.4
    gate_half: float = GATE_HALF


class GateReachEnv:
    """Batch of `n` independent episodes stepped together (numpy arrays in, numpy arrays out)."""

    obs_dim = 3
    action_dim = 2

    def __init__(self, n: int, cfg: GateReachConfig | None = None, seed: int | None = None):
        self.n = n
        self.cfg = cfg or GateReachConfig()
        self.rng = np.random.default_rng(seed)
        self.pos = np.zeros((n, 2))
        self.gate = np.zeros(n)
        self.t = np.zeros(n, dtype=np.int64)
        self.done = np.ones(n, dtype=bool)
        self.success = np.zeros(n, dtype=bool)

    def obs(self) -> np.ndarray:
        return np.concatenate([self.pos, self.gate[:, None]], 1).astype(np.float32)

    def reset(self, mask: np.ndarray | None = None) -> np.ndarray:
        idx = np.arange(self.n) if mask is None else np.flatnonzero(mask)
        k = len(idx)
        c = self.cfg
        self.pos[idx, 0] = START_X
        self.pos[idx, 1] = self.rng.uniform(-c.start_y_range, c.start_y_range, k)
        self.gate[idx] = self.rng.uniform(-c.gate_range, c.gate_range, k)
        self.t[idx] = 0
        self.done[idx] = False
        self.success[idx] = False
        return self.obs()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Step every live episode. Returns obs, reward, terminated, truncated (all [n]); finished episodes
        are frozen (zero reward, flags False) until `reset`."""
        live = ~self.done
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        old = self.pos.copy()
        new = old + STEP * a
        new[:, 1] = np.clip(new[:, 1], -1.0, 1.0)
        new[:, 0] = np.clip(new[:, 0], -1.0, 1.0)
        crosses = (old[:, 0] < 0.0) & (new[:, 0] >= 0.0)
        frac = np.where(crosses, (0.0 - old[:, 0]) / np.maximum(new[:, 0] - old[:, 0], 1e-12), 0.0)
        y_cross = old[:, 1] + frac * (new[:, 1] - old[:, 1])
        crash = crosses & (np.abs(y_cross - self.gate) > self.cfg.gate_half)
        new[crash, 0] = 0.0
        new[crash, 1] = y_cross[crash]
        win = (new[:, 0] >= FINISH_X) & ~crash
        self.pos = np.where(live[:, None], new, old)
        self.t += live
        terminated = live & (crash | win)
        truncated = live & ~terminated & (self.t >= self.cfg.max_steps)
        reward = (live & win).astype(np.float32)
        self.success |= live & win
        self.done |= terminated | truncated
        return self.obs(), reward, terminated, truncated


class NoisyGateExpert:
    """Scripted demonstrator: aims at (gate centre + per-episode offset), then at the finish line.

    aim_std sets how often it misses the gate (|offset| > GATE_HALF roughly means a crash); act_std adds
    per-step jitter. Actions are normalised (full speed towards the current aim point). The defaults give
    ~50% successful demonstrations and a cloned policy at ~45% (the learning test's calibration)."""

    def __init__(self, n: int, aim_std: float = 0.25, act_std: float = 0.1, seed: int | None = None):
        self.n = n
        self.aim_std = aim_std
        self.act_std = act_std
        self.rng = np.random.default_rng(seed)
        self.offset = np.zeros(n)

    def reset(self, mask: np.ndarray | None = None) -> None:
        idx = np.arange(self.n) if mask is None else np.flatnonzero(mask)
        self.offset[idx] = self.rng.normal(0.0, self.aim_std, len(idx))

    def act(self, obs: np.ndarray) -> np.ndarray:
        x, y, g = obs[:, 0], obs[:, 1], obs[:, 2]
        before = x < 0.0
        tx = np.where(before, 0.05, FINISH_X + 0.2)
        ty = np.where(before, g + self.offset, g)
        d = np.stack([tx - x, ty - y], 1)
        d = d / np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
        # scale so the larger component is 1 (full speed inside the [-1, 1] box), then jitter
        d = d / np.maximum(np.abs(d).max(1, keepdims=True), 1e-9)
        a = d + self.rng.normal(0.0, self.act_std, d.shape)
        return np.clip(a, -1.0, 1.0).astype(np.float32)


def collect_demos(num_episodes: int, aim_std: float = 0.25, act_std: float = 0.1, seed: int = 0,
                  max_steps: int = 30) -> list[dict[str, np.ndarray]]:
    """Run the noisy expert; every episode is kept (successes and failures), like raw teleop logs."""
    env = GateReachEnv(num_episodes, GateReachConfig(max_steps=max_steps), seed=seed)
    ex = NoisyGateExpert(num_episodes, aim_std, act_std, seed=seed + 1)
    obs = env.reset()
    ex.reset()
    O, Acts, R = [obs], [], []
    ended = np.zeros(num_episodes, dtype=bool)
    end_t = np.full(num_episodes, -1)
    term = np.zeros(num_episodes, dtype=bool)
    for t in range(max_steps):
        live = ~env.done
        a = ex.act(obs)
        obs, r, te, tr = env.step(a)
        O.append(obs)
        Acts.append(a)
        R.append(r)
        fin = live & (te | tr)
        end_t[fin] = t + 1
        term[fin] = te[fin]
        ended |= fin
        if ended.all():
            break
    O, Acts, R = np.stack(O, 1), np.stack(Acts, 1), np.stack(R, 1)
    eps = []
    for i in range(num_episodes):
        L = end_t[i]
        eps.append(dict(obs=O[i, :L + 1], actions=Acts[i, :L], rewards=R[i, :L], terminal=bool(term[i]),
                        success=bool(R[i, :L].sum() > 0)))
    return eps


def run_chunked_episodes(policy_fn, num_episodes: int, horizon: int, seed: int, max_steps: int = 30,
                         record: bool = False) -> tuple[float, list[dict[str, np.ndarray]]]:
    """Run `num_episodes` episodes at once, asking policy_fn(obs [B, 3]) -> chunks [B, T, 2] at every chunk
    boundary and executing each chunk open-loop. Returns (success rate, episodes if record)."""
    env = GateReachEnv(num_episodes, GateReachConfig(max_steps=max_steps), seed=seed)
    obs = env.reset()
    O, Acts, R = [obs], [], []
    end_t = np.full(num_episodes, -1)
    term = np.zeros(num_episodes, dtype=bool)
    t = 0
    while t < max_steps and not env.done.all():
        chunk = np.asarray(policy_fn(obs), dtype=np.float32)
        for k in range(horizon):
            if t >= max_steps or env.done.all():
                break
            live = ~env.done
            a = chunk[:, k]
            obs, r, te, tr = env.step(a)
            O.append(obs)
            Acts.append(a)
            R.append(r)
            fin = live & (te | tr)
            end_t[fin] = t + 1
            term[fin] = te[fin]
            t += 1
    rate = float(env.success.mean())
    if not record:
        return rate, []
    O, Acts, R = np.stack(O, 1), np.stack(Acts, 1), np.stack(R, 1)
    eps = [dict(obs=O[i, :end_t[i] + 1], actions=Acts[i, :end_t[i]], rewards=R[i, :end_t[i]],
                terminal=bool(term[i]), success=bool(env.success[i])) for i in range(num_episodes)]
    return rate, eps
