"""How often does a policy that never changes fail "no 20-episode evaluation window after the warm-up more than
0.1 below the pre-trained level"? Monte Carlo over Bernoulli evaluation outcomes with a constant success rate p:
20 pre-trained evaluations, then `online` evaluations scored in overlapping 20-episode windows (the main job's
scoring, poco_bringup.plotting.score_run).

Two evaluation protocols:
  - random scenes (each evaluation draws a new scene): every outcome is Bernoulli(p);
  - fixed scenes (`eval_scenes: 20`, the task YAMLs): scene k has its own success rate p_k, drawn once per run from
    Beta(p * kappa, (1 - p) * kappa) (mean p; the smaller kappa, the more the scene decides the outcome), and
    evaluation i is scene i mod 20: every window holds each scene once, as the pre-trained block does.

    python docs/results/main_job_pixels/window_null.py [--online 120] [--trials 20000] [--kappa 0.7 1.2]
"""
import argparse

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument('--online', type=int, default=120, help='online evaluation episodes (a 20k-step run has ~100-130)')
ap.add_argument('--trials', type=int, default=20000)
ap.add_argument('--window', type=int, default=20)
ap.add_argument('--kappa', type=float, nargs='*', default=[0.5, 2.0],
                help='scene concentrations of the fixed-scene protocol (Beta(p k, (1-p) k) per scene)')
a = ap.parse_args()
rng = np.random.default_rng(0)
W = a.window


def fail_rate(pre: np.ndarray, on: np.ndarray) -> tuple[float, float]:
    c = np.cumsum(np.pad(on, ((0, 0), (1, 0))), 1)
    worst = ((c[:, W:] - c[:, :-W]) / W).min(1)
    return float(np.mean(worst < pre.mean(1) - 0.1 - 1e-9)), float(np.median(worst))


print(f'constant policy, 20 pre-trained + {a.online} online evaluations, {W}-episode windows: share of runs that '
      'fail the criterion (median worst window)')
print('p    | random scenes ' + ''.join(f'| fixed, kappa {k:g} ' for k in a.kappa))
for p in (0.3, 0.5, 0.7, 0.8, 0.9):
    cells = [fail_rate(rng.random((a.trials, 20)) < p, rng.random((a.trials, a.online)) < p)]
    for k in a.kappa:
        pk = rng.beta(p * k, (1 - p) * k, size=(a.trials, W))                 # each run's scenes
        scene = np.arange(a.online) % W
        cells.append(fail_rate(rng.random((a.trials, W)) < pk, rng.random((a.trials, a.online)) < pk[:, scene]))
    print(f'{p:.1f}  | ' + ' | '.join(f'{f:4.0%} ({m:.2f})    ' for f, m in cells))
