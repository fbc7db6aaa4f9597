"""Learner diagnostics: one CSV row per window of updates and a PNG of the curves (no ROS).

What a person looks at when the policy drops: is the critic fitting (critic_loss), are its values on the scale
of what the policy achieves (q_mean vs target_mean), do the candidates differ in value (q_candidates_std), how
peaked the E-step weights are (ess: effective number of candidates out of N), how much of the candidate term the
clip removes (clip_fraction, weighted_clip_fraction), how much the M-step kept (kept_fraction), the data BC loss,
and whether the learner keeps its update-to-data ratio (updates_per_env_step).
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

DIAG_KEYS = ('critic_loss', 'q_mean', 'target_mean', 'q_candidates_mean', 'q_candidates_std', 'ess',
             'clip_fraction', 'weighted_clip_fraction', 'kept_fraction', 'bc_loss', 'candidate_loss',
             'actor_loss', 'actor_grad_norm', 'critic_grad_norm')

PANELS = (('critic', ('critic_loss',)), ('values', ('q_mean', 'target_mean', 'q_candidates_mean')),
          ('candidate Q spread', ('q_candidates_std',)), ('E-step ESS', ('ess',)),
          ('clip / kept fraction', ('clip_fraction', 'weighted_clip_fraction', 'kept_fraction')),
          ('actor losses', ('bc_loss', 'candidate_loss')), ('updates per env step', ('updates_per_env_step',)))


def append_row(path: str | Path, row: dict) -> None:
    """Append one row; the header is written with the first row (columns fixed by it)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, 'a', newline='') as f:
        w = csv.DictWriter(f, list(row), extrasaction='ignore')
        if new:
            w.writeheader()
        w.writerow(row)


def read_rows(path: str | Path) -> list[dict]:
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def plot_diagnostics(csv_path: str | Path, png_path: str | Path, x_key: str = 'env_steps') -> None:
    """Draw every panel against env steps (written atomically)."""
    # Agg canvas without pyplot: no global state, safe from the learner's training thread
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    rows = read_rows(csv_path)
    if not rows:
        return
    x = [_num(r.get(x_key)) for r in rows]
    fig = Figure(figsize=(8, 2.0 * len(PANELS)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for ax, (title, keys) in zip(axes, PANELS):
        for k in keys:
            if k in rows[0]:
                ax.plot(x, [_num(r.get(k)) for r in rows], label=k, lw=1.2)
        ax.set_title(title, fontsize=9, loc='left')
        ax.grid(alpha=0.3)
        if len(keys) > 1:
            ax.legend(fontsize=7, loc='best')
    axes[-1].set_xlabel(x_key.replace('_', ' '))
    fig.tight_layout()
    tmp = Path(png_path).with_suffix('.tmp.png')
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, png_path)
