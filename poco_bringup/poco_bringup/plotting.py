"""Learning-curve plot from episodes.csv (pure function; matplotlib's Agg canvas, no pyplot state, no ROS).

    python -m poco_bringup.plotting runs/<run>/episodes.csv runs/<run>/learning_curve.png

Evaluation points: eval episodes are grouped into windows of consecutive eval episodes; a window closes once
it holds >= eval_window episodes and a training episode follows, so a block of evaluations gives one point
and "every k-th episode is an eval" schemes give one point per eval_window evaluations. The first window is
the pre-trained level (dashed line).
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from pathlib import Path
from typing import Optional


def _num(v, default=math.nan) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return default
    return x


def read_episodes(csv_path: str | Path) -> list[dict]:
    """Rows of episodes.csv as dicts with numeric fields parsed; malformed rows are skipped."""
    rows = []
    try:
        with open(csv_path, newline='') as f:
            for r in csv.DictReader(f):
                try:
                    rows.append(dict(evaluation=int(_num(r.get('evaluation'), 0)) == 1,
                                     success=1.0 if _num(r.get('success'), 0) >= 0.5 else 0.0,
                                     env_steps=_num(r.get('env_steps')), elapsed_s=_num(r.get('elapsed_s')),
                                     total_steps=_num(r.get('total_steps')),
                                     episode_id=r.get('episode_id', ''),
                                     scene=int(r['scene']) if (r.get('scene') or '').isdigit() else None))
                except (TypeError, ValueError):
                    continue
    except FileNotFoundError:
        pass
    return [r for r in rows if not math.isnan(r['env_steps'])]


def eval_windows(rows: list[dict], eval_window: int = 5) -> list[dict]:
    out, cur = [], []

    def close():
        out.append(dict(env_steps=cur[-1]['env_steps'], elapsed_s=cur[-1]['elapsed_s'], n=len(cur),
                        success_rate=sum(r['success'] for r in cur) / len(cur)))
    for r in rows:
        if r['evaluation']:
            cur.append(r)
        elif len(cur) >= max(1, eval_window):
            close()
            cur = []
    if cur:
        close()  # the last (possibly short) window: the latest information we have
    return out


def train_moving_average(rows: list[dict], window: int = 20) -> list[dict]:
    out, recent = [], []
    for r in rows:
        if r['evaluation']:
            continue
        recent = (recent + [r['success']])[-max(1, window):]
        out.append(dict(env_steps=r['env_steps'], elapsed_s=r['elapsed_s'], success_ma=sum(recent) / len(recent)))
    return out


def plot_learning_curve(csv_path: str | Path, png_path: str | Path, *, train_window: int = 20,
                        eval_window: int = 5, title: Optional[str] = None) -> dict:
    """Write the learning-curve PNG (atomically) and return a summary of what was plotted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = read_episodes(csv_path)
    windows = eval_windows(rows, eval_window)
    train = train_moving_average(rows, train_window)
    pre = windows[0]['success_rate'] if windows else None

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, key, scale, label in ((axes[0], 'env_steps', 1.0, 'training env steps'),
                                  (axes[1], 'elapsed_s', 1 / 60.0, 'wall time [min]')):
        if train:
            ax.plot([t[key] * scale for t in train], [t['success_ma'] for t in train], color='tab:blue',
                    alpha=0.6, lw=1.2, label=f'training success (moving avg, {train_window} ep)')
        if windows:
            ax.plot([w[key] * scale for w in windows], [w['success_rate'] for w in windows], 'o-',
                    color='tab:red', lw=2, ms=4, label=f'evaluation success (>= {eval_window} ep windows)')
        if pre is not None:
            ax.axhline(pre, ls='--', color='gray', lw=1.2, label=f'pre-trained (first eval window) {pre:.2f}')
        ax.set_xlabel(label)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        if not rows:
            ax.text(0.5, 0.5, 'no finished episodes yet', ha='center', va='center', transform=ax.transAxes)
    axes[0].set_ylabel('success rate')
    if train or windows:
        axes[0].legend(loc='upper left', fontsize=8)
    n_eval = sum(r['evaluation'] for r in rows)
    fig.suptitle(title or f'{Path(csv_path).resolve().parent.name}: {len(rows)} episodes '
                          f'({len(rows) - n_eval} training, {n_eval} evaluation)', fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f'.{png_path.name}.{os.getpid()}.tmp')
    fig.savefig(tmp, format='png')
    os.replace(tmp, png_path)  # viewers never see a half-written file
    return dict(episodes=len(rows), eval_episodes=n_eval, eval_windows=len(windows), pretrained_success=pre,
                last_eval_success=windows[-1]['success_rate'] if windows else None,
                last_train_success_ma=train[-1]['success_ma'] if train else None)


def plot_runs(csv_paths: list[str | Path], png_path: str | Path, labels: Optional[list[str]] = None,
              pretrained: int = 20, window: int = 20) -> None:
    """Several runs in one figure: each run's evaluation success over a moving window of `window` evaluations
    (after its pre-trained block) against training env steps, its pre-trained level dashed in the same colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(8, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, path in enumerate(csv_paths):
        ev = [r for r in read_episodes(path) if r['evaluation']]
        pre, online = ev[:pretrained], ev[pretrained:]
        label = labels[i] if labels and i < len(labels) else Path(path).resolve().parent.name
        xs = [online[j]['env_steps'] for j in range(window - 1, len(online))]
        ys = [sum(r['success'] for r in online[j - window + 1:j + 1]) / window for j in range(window - 1, len(online))]
        line, = ax.plot(xs, ys, lw=1.8, label=label)
        if pre:
            ax.axhline(sum(r['success'] for r in pre) / len(pre), ls='--', lw=1, color=line.get_color())
    ax.set_xlabel('training env steps')
    ax.set_ylabel(f'evaluation success ({window}-episode window)')
    ax.set_title(f'dashed: pre-trained level (first {pretrained} evaluations)', fontsize=9)
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(png_path, format='png')


def score_run(rows: list[dict], pretrained: int = 20, final: int = 60, window: int = 20,
              warmup_steps: float = 0) -> dict:
    """The main job's scores from its episode rows (evaluation episodes only): `pretrained` = success over the
    first `pretrained` evaluations (the initial block, weights held); `final` = over the last `final`;
    `worst_window` = the lowest success of `window` consecutive evaluations after the block that end after
    the critic warm-up (`warmup_steps` training env steps); `drop` = pretrained - worst_window."""
    ev = [r for r in rows if r['evaluation']]
    pre, online = ev[:pretrained], ev[pretrained:]
    after = [r for r in online if r['env_steps'] > warmup_steps]
    wins = [sum(r['success'] for r in after[i:i + window]) / window for i in range(len(after) - window + 1)]
    mean = (lambda xs: sum(xs) / len(xs) if xs else math.nan)
    out = dict(pretrained=mean([r['success'] for r in pre]), final=mean([r['success'] for r in online[-final:]]),
               worst_window=min(wins) if wins else math.nan, eval_episodes=len(ev),
               env_steps=int(rows[-1]['env_steps']) if rows else 0,  # training steps (warm-up counts these)
               total_steps=int(rows[-1].get('total_steps', 0) or 0) if rows and math.isfinite(
                   rows[-1].get('total_steps', 0)) else 0,  # evaluations included
               wall_s=round(rows[-1]['elapsed_s'], 1) if rows else math.nan)
    out['drop'] = out['pretrained'] - out['worst_window']
    return out


def scene_scores(rows: list[dict]) -> dict[int, tuple[int, int]]:
    """Fixed-scene evaluations (the policy node's eval_scenes): scene -> (successes, evaluations), in scene order.
    Which scenes the policy fails, and whether learning fixed them, for runs that logged their scenes."""
    out: dict[int, list[int]] = {}
    for r in rows:
        if r['evaluation'] and r.get('scene') is not None:
            c = out.setdefault(r['scene'], [0, 0])
            c[0] += int(r['success'])
            c[1] += 1
    return {k: (v[0], v[1]) for k, v in sorted(out.items())}


def _run_warmup_steps(csv_path: str | Path) -> float:
    # the learner writes its resolved configuration beside the episode log
    import json
    try:
        cfg = json.loads(Path(csv_path).with_name('learner_config.json').read_text())
        return float(cfg['agent']['critic_warmup_steps'])
    except (OSError, KeyError, TypeError, ValueError):
        return 0.0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description='Plot the learning curve of a run from its episodes.csv')
    ap.add_argument('csv')
    ap.add_argument('png', nargs='?', help='default: learning_curve.png next to the CSV')
    ap.add_argument('--compare', nargs='+', metavar='CSV', default=[],
                    help='more runs: plot csv and these evaluation curves together into png')
    ap.add_argument('--labels', nargs='+', default=None, help='with --compare: one label per run')
    ap.add_argument('--train-window', type=int, default=20)
    ap.add_argument('--eval-window', type=int, default=5)
    ap.add_argument('--score', action='store_true',
                    help='print the scores instead (pre-trained = first --pretrained evaluations, final = last '
                         '--final, worst --window-evaluation window after the critic warm-up of learner_config.json)')
    ap.add_argument('--pretrained', type=int, default=20)
    ap.add_argument('--final', type=int, default=60)
    ap.add_argument('--window', type=int, default=20)
    a = ap.parse_args(argv)
    if a.score:
        rows = read_episodes(a.csv)
        s = score_run(rows, a.pretrained, a.final, a.window, _run_warmup_steps(a.csv))
        print(' | '.join(f'{k} {v:.2f}' if isinstance(v, float) else f'{k} {v}' for k, v in s.items()))
        scenes = scene_scores(rows)
        if scenes:
            print('evaluation scenes (successes/evaluations): '
                  + ' '.join(f'{k}:{n_ok}/{n}' for k, (n_ok, n) in scenes.items()))
        return 0
    if a.compare:
        if not a.png:
            ap.error('--compare needs the output png')
        plot_runs([a.csv, *a.compare], a.png, a.labels, a.pretrained, a.window)
        return 0
    png = a.png or str(Path(a.csv).with_name('learning_curve.png'))
    print(plot_learning_curve(a.csv, png, train_window=a.train_window, eval_window=a.eval_window))
    return 0


if __name__ == '__main__':
    sys.exit(main())
