"""Probe behind docs/learning.md's peg_insert section: BC pre-training alone on scripted demonstrations, then 20
sampled and 20 zero-noise rollouts; prints success, the median final xy distance peg-hole [mm] and peg height.

    python docs/results/investigation/peg_probe.py DEMOS BC_STEPS [NOISE_STD RECOVERY_PROB]

Run at commit 29b651f (20-number state, no chamfer) for the "before" rows, at a99050f and later for the others.
Seed 0, sim_cpu preset, fp32, one torch thread.
"""
import sys

import numpy as np
import torch

from poco_learner.agent import Agent, AgentConfig
from poco_learner.buffer import BufferConfig, ReplayBuffer
from poco_learner.experiment import _state_obs
from poco_learner.train import pretrain
from poco_policy.observation import ActionScaler
from poco_sim.collect import run_expert_episode
from poco_sim.envs import make_env
from poco_sim.expert import ScriptedExpert

torch.set_num_threads(1)
ndemo, steps = int(sys.argv[1]), int(sys.argv[2])
noise = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
rec = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
seed = 0
env = make_env('peg_insert', 'state', seed=seed)
scaler = ActionScaler(env.max_joint_delta)
rng = np.random.default_rng(seed)
expert = ScriptedExpert(env, noise_std=noise, recovery_prob=rec, seed=seed)
eps = [run_expert_episode(env, expert, int(rng.integers(0, 2**31 - 1))) for _ in range(ndemo)]
print('demo success', np.mean([e['success'] for e in eps]), 'mean length', np.mean([len(e['actions']) for e in eps]))
obs_dim = eps[0]['state'].shape[1] + eps[0]['proprio'].shape[1]
cfg = AgentConfig.from_preset('sim_cpu', algorithm='poco', seed=seed, obs_dim=obs_dim, pretrain_steps=steps)
buf = ReplayBuffer(BufferConfig(demo_ratio=0.5), obs_dim, 7)
for ep in eps:
    buf.add_episode(np.concatenate([ep['state'], ep['proprio']], 1), scaler.normalize(ep['actions']), ep['rewards'],
                    bool(ep['terminal']), bool(ep['success']), demo=True)
agent = Agent(cfg)
m = pretrain(agent, buf, steps, progress=False, rng=seed)
print('bc loss', m.get('bc_loss_avg'))
for det in (False, True):
    wins, errs = [], []
    for _ in range(20):
        o, info = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
        x, done = _state_obs(o), False
        while not done:
            for a in agent.act(x, deterministic=det)[:cfg.horizon]:
                o, r, term, trunc, info = env.step(scaler.denormalize(np.clip(a, -1, 1)[None])[0])
                x = _state_obs(o)
                if term or trunc:
                    done = True
                    break
        s = o['state']
        errs.append((np.linalg.norm(s[0:2] - s[17:19]) * 1000, s[2] * 1000))
        wins.append(info['success'])
    e = np.array(errs)
    print('zero-noise' if det else 'sampled', 'success', np.mean(wins), 'final xy mm p50', round(float(np.median(e[:, 0])), 1),
          'peg z mm p50', round(float(np.median(e[:, 1])), 1))
