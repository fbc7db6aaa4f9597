"""How often does a policy that never changes fail "no 20-episode evaluation window after the warm-up more than
0.1 below the pre-trained level"? Monte Carlo over Bernoulli evaluation outcomes with a constant success rate p:
20 pre-trained evaluations, then `online` evaluations scored in overlapping 20-episode windows (the main job's
scoring, poco_bringup.plotting.score_run).

    python docs/results/main_job_pixels/window_null.py [--online 120] [--trials 20000]
"""
import argparse

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument('--online', type=int, default=120, help='online evaluation episodes (a 20k-step run has ~100-130)')
ap.add_argument('--trials', type=int, default=20000)
ap.add_argument('--window', type=int, default=20)
a = ap.parse_args()
rng = np.random.default_rng(0)
print(f'constant success rate p, 20 pre-trained + {a.online} online evaluations, {a.window}-episode windows')
for p in (0.3, 0.5, 0.7, 0.8, 0.9, 1.0):
    pre = (rng.random((a.trials, 20)) < p).mean(1)
    on = rng.random((a.trials, a.online)) < p
    c = np.cumsum(np.pad(on, ((0, 0), (1, 0))), 1)
    worst = ((c[:, a.window:] - c[:, :-a.window]) / a.window).min(1)
    fail = np.mean(worst < pre - 0.1 - 1e-9)
    print(f'p {p:.1f}: fails the criterion in {fail:.0%} of runs; median worst window {np.median(worst):.2f}')
