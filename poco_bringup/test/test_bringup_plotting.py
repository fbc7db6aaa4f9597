"""Learning-curve plot and episode bookkeeping, without ROS."""
from __future__ import annotations

import csv
import math

import numpy as np

from poco_bringup import plotting
from poco_bringup.progress import (ESTOP, FAILURE, RESET, START, SUCCESS, TIMEOUT, EPISODE_FIELDS,
                                   EpisodeTracker, LearnerLog)


def write_csv(path, rows):
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=EPISODE_FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow(r)


def synthetic_rows():
    """Eval blocks of 5 episodes every 10 training episodes; success improves from 20 % to 100 %."""
    rows, steps, ep, t = [], 0, 0, 0.0
    for block in range(5):
        for i in range(5):  # evaluation block: `block + 1` successes out of 5
            t += 5
            rows.append(dict(wall_time=1e9 + t, elapsed_s=t, episode_id=ep, evaluation=1,
                             outcome='success' if i <= block else 'timeout', success=int(i <= block), steps=100,
                             policy_version=block, env_steps=steps, total_steps=0, detail=''))
            ep += 1
        for i in range(10):
            t += 5
            s = int(i < 2 * block)
            steps += 60 if s else 100
            rows.append(dict(wall_time=1e9 + t, elapsed_s=t, episode_id=ep, evaluation=0,
                             outcome='success' if s else 'failure', success=s, steps=60 if s else 100,
                             policy_version=block, env_steps=steps, total_steps=0, detail=''))
            ep += 1
    return rows


def test_eval_windows_and_moving_average():
    rows = [dict(evaluation=e, success=s, env_steps=float(i), elapsed_s=float(i))
            for i, (e, s) in enumerate([(1, 1), (1, 0), (0, 1), (1, 1), (0, 0), (1, 1), (1, 1), (0, 1)])]
    w = plotting.eval_windows(rows, eval_window=2)
    # [1,0] closes at the first training ep; [1] is too small, merges with [1,1] -> 3 episodes
    assert [(x['n'], x['success_rate']) for x in w] == [(2, 0.5), (3, 1.0)]
    ma = plotting.train_moving_average(rows, window=2)
    assert [x['success_ma'] for x in ma] == [1.0, 0.5, 0.5]


def test_plot_learning_curve_png(tmp_path):
    csv_path, png = tmp_path / 'episodes.csv', tmp_path / 'learning_curve.png'
    rows = synthetic_rows()
    write_csv(csv_path, rows)
    with open(csv_path, 'a') as f:  # malformed lines must be skipped, not fatal
        f.write('garbage,line\n,,,,,,,,,,\n')
    summary = plotting.plot_learning_curve(csv_path, png, train_window=10, eval_window=5)
    assert summary['episodes'] == len(rows) and summary['eval_windows'] == 5
    assert summary['pretrained_success'] == 0.2 and summary['last_eval_success'] == 1.0
    data = png.read_bytes()
    assert data[:8] == b'\x89PNG\r\n\x1a\n' and len(data) > 20_000
    from matplotlib.image import imread
    img = imread(png)
    assert img.shape[:2] == (420, 1100)
    rgb = img[..., :3]
    assert rgb.std() > 0.05  # not a blank canvas
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)
    assert red.sum() > 200  # the evaluation curve (tab:red) is drawn
    assert not list(tmp_path.glob('.*.tmp'))  # atomic write leaves no temp file


def test_plot_without_episodes(tmp_path):
    png = tmp_path / 'empty.png'
    summary = plotting.plot_learning_curve(tmp_path / 'missing.csv', png)
    assert summary['episodes'] == 0 and summary['pretrained_success'] is None
    assert png.stat().st_size > 5_000


def test_plot_cli(tmp_path):
    write_csv(tmp_path / 'episodes.csv', synthetic_rows()[:12])
    assert plotting.main([str(tmp_path / 'episodes.csv')]) == 0
    assert (tmp_path / 'learning_curve.png').exists()


def test_episode_tracker_rows_and_bad_input(tmp_path):
    tr = EpisodeTracker(tmp_path / 'episodes.csv', train_window=3, eval_window=1, t0=100.0)
    assert tr.on_event(1, START, 0, False, wall_time=101) is None
    tr.on_chunk(1, 4)
    tr.on_chunk(1, 3)  # an older version arriving late does not win
    r1 = tr.on_event(1, SUCCESS, 40, False, 'lifted', wall_time=105)
    assert r1['outcome'] == 'success' and r1['policy_version'] == 4 and r1['env_steps'] == 40
    assert tr.on_event(1, ESTOP, 41, False) is None  # second end of the same episode: ignored
    tr.on_event(2, START, 0, True)
    r2 = tr.on_event(2, TIMEOUT, 100, False)  # eval flag taken from START
    assert r2['evaluation'] == 1 and r2['env_steps'] == 40 and r2['total_steps'] == 140
    assert tr.on_event(3, 99, 5, False) is None  # unknown event code
    assert tr.on_event(-1, SUCCESS, 5, False) is None
    assert tr.on_event('x', SUCCESS, 5, False) is None
    assert tr.on_event(4, RESET, 0, False) is None
    r3 = tr.on_event(5, FAILURE, 7, False, 'multi\nline')  # end without START is still recorded
    assert r3['detail'] == 'multi line' and r3['policy_version'] == ''
    assert tr.rejected == 4
    assert 'train 2 succ 0.50' in tr.progress() and 'eval 1 succ 0.00' in tr.progress()
    tr.close()
    with open(tmp_path / 'episodes.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['episode_id'] for r in rows] == ['1', '2', '5']
    assert rows[0]['elapsed_s'] == '5.0'


def test_learner_log_handles_nan(tmp_path):
    log = LearnerLog(tmp_path / 'learner.csv', t0=0)
    row = log.on_status(dict(phase='po\nco', algorithm='poco', update_step=10, critic_loss=math.nan,
                             actor_loss=float('inf'), buffer_steps=5, demo_steps=3, weights_version=2,
                             updates_per_second=np.float32(1.5).item()), wall_time=3)
    assert row['critic_loss'] == 'nan' and row['actor_loss'] == 'inf' and row['phase'] == 'po co'
    assert 'upd 10 v2' in log.progress()
    log.close()
    assert (tmp_path / 'learner.csv').read_text().count('\n') == 2


def test_score_run_blocks_windows_and_warmup(tmp_path, capsys):
    # 4 pre-trained evaluations (3 successes), then evaluations at env steps 10, 20, ...: the ones before the
    # warm-up's end (steps <= 30) never count in a window; the worst window after it is (0, 0)
    ev = [1, 1, 1, 0] + [0, 0, 0] + [1, 0, 0, 1, 1, 1]
    rows = [dict(evaluation=True, success=float(s), env_steps=0.0 if i < 4 else 10.0 * (i - 3),
                 elapsed_s=float(i), total_steps=float(20 * i)) for i, s in enumerate(ev)]
    s = plotting.score_run(rows, pretrained=4, final=3, window=2, warmup_steps=30)
    assert s['pretrained'] == 0.75 and s['final'] == 1.0
    assert s['worst_window'] == 0.0 and s['drop'] == 0.75
    assert s['eval_episodes'] == len(ev) and s['total_steps'] == 20 * (len(ev) - 1)
    assert math.isnan(plotting.score_run(rows, pretrained=4, window=2, warmup_steps=100)['worst_window'])
    # the CLI reads the warm-up from the learner_config.json beside the CSV
    write_csv(tmp_path / 'episodes.csv', [dict(r, episode_id=i, evaluation=1, success=int(r['success']))
                                          for i, r in enumerate(rows)])
    (tmp_path / 'learner_config.json').write_text('{"agent": {"critic_warmup_steps": 30}}')
    assert plotting.main([str(tmp_path / 'episodes.csv'), '--score', '--pretrained', '4', '--final', '3',
                          '--window', '2']) == 0
    out = capsys.readouterr().out
    assert 'pretrained 0.75' in out and 'worst_window 0.00' in out and 'final 1.00' in out


def test_fixed_scene_evaluations_are_logged_and_scored_per_scene(tmp_path, capsys):
    """The policy node's start detail 'evaluation scene k/n' becomes the row's scene; --score adds a per-scene
    line (successes/evaluations), so the scenes a policy keeps failing are visible."""
    tr = EpisodeTracker(tmp_path / 'episodes.csv', t0=0.0)
    outcomes = [(1, SUCCESS), (2, TIMEOUT), (1, SUCCESS), (2, SUCCESS), (1, FAILURE)]
    for i, (k, end) in enumerate(outcomes):
        tr.on_event(10 + i, START, 0, True, f'evaluation scene {k}/2', wall_time=float(i))
        tr.on_event(10 + i, end, 20, True, wall_time=i + 0.5)
    tr.on_event(20, START, 0, False, 'train')
    assert tr.on_event(20, SUCCESS, 20, False)['scene'] == ''
    tr.on_event(21, START, 0, True, 'evaluation scene x/2')      # malformed: no scene, still a row
    assert tr.on_event(21, SUCCESS, 20, True)['scene'] == ''
    tr.close()
    rows = plotting.read_episodes(tmp_path / 'episodes.csv')
    assert [r['scene'] for r in rows] == [1, 2, 1, 2, 1, None, None]
    assert plotting.scene_scores(rows) == {1: (2, 3), 2: (1, 2)}
    assert plotting.main([str(tmp_path / 'episodes.csv'), '--score', '--pretrained', '2']) == 0
    assert 'evaluation scenes (successes/evaluations): 1:2/3 2:1/2' in capsys.readouterr().out


def test_compare_plots_several_runs_into_one_png(tmp_path):
    import pytest
    for name in ('a', 'b'):
        (tmp_path / name).mkdir()
        write_csv(tmp_path / name / 'episodes.csv', synthetic_rows())
    png = tmp_path / 'cmp.png'
    assert plotting.main([str(tmp_path / 'a' / 'episodes.csv'), str(png), '--compare',
                          str(tmp_path / 'b' / 'episodes.csv'), '--labels', 'A', 'B', '--pretrained', '5',
                          '--window', '3']) == 0
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and png.stat().st_size > 5000
    with pytest.raises(SystemExit):   # no output file named
        plotting.main([str(tmp_path / 'a' / 'episodes.csv'), '--compare', str(tmp_path / 'b' / 'episodes.csv')])
