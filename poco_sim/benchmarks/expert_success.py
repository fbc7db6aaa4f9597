"""Scripted-expert success over seeded episodes, per task, noiseless and with the noisy-demo preset.

    python poco_sim/benchmarks/expert_success.py [--episodes 100] [--tasks pick_cube peg_insert] [--quick]

Episode i uses env seed 1000 + i (state mode; the expert acts on the same privileged state in pixels mode).
Targets (issue #4): noiseless >= 90 %, noisy preset ~60-80 %.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from poco_sim.envs import make_env
from poco_sim.expert import NOISY, ScriptedExpert


def evaluate(task: str, episodes: int, noise_std: float = 0.0, recovery_prob: float = 0.0,
             seed0: int = 1000) -> dict:
    env = make_env(task, 'state', seed=0)
    expert = ScriptedExpert(env, noise_std=noise_std, recovery_prob=recovery_prob)
    wins, lengths = [], []
    for i in range(episodes):
        obs, info = env.reset(seed=seed0 + i)
        expert.reset(seed=seed0 + i)
        steps, done = 0, False
        while not done:
            obs, _, term, trunc, info = env.step(expert.act(obs, info))
            steps += 1
            done = term or trunc
        wins.append(bool(info['success']))
        if info['success']:
            lengths.append(steps)
    return {'success': float(np.mean(wins)), 'episodes': episodes,
            'mean_len_success': float(np.mean(lengths)) if lengths else float('nan')}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--episodes', type=int, default=100)
    p.add_argument('--tasks', nargs='+', default=['pick_cube', 'peg_insert'])
    p.add_argument('--json', action='store_true')
    p.add_argument('--quick', action='store_true',
                   help='smoke run: small sizes, one repetition (what `make bench` runs)')
    args = p.parse_args(argv)
    if args.quick:
        p.set_defaults(episodes=3)
        args = p.parse_args(argv)
    out = {}
    for task in args.tasks:
        t0 = time.time()
        clean = evaluate(task, args.episodes)
        noisy = evaluate(task, args.episodes, **NOISY[task])
        out[task] = {'noiseless': clean, 'noisy': noisy, 'noisy_preset': NOISY[task]}
        print(f'{task:11s} noiseless {clean["success"]:6.1%} (mean {clean["mean_len_success"]:.1f} steps)   '
              f'noisy {noisy["success"]:6.1%} (mean {noisy["mean_len_success"]:.1f} steps; '
              f'noise_std={NOISY[task]["noise_std"]}, recovery_prob={NOISY[task]["recovery_prob"]})   '
              f'[{args.episodes} episodes each, {time.time() - t0:.0f} s]')
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
