"""The learning harness (no ROS): scoring rules, confidence intervals, and a tiny sweep end to end
(real MuJoCo, real agent; small networks and a few hundred env steps so that it runs in CI)."""
import csv
import json
import math

import pytest

from poco_learner.experiment import mean_ci, score, sweep

TINY = {'actor_hidden_dims': [32, 32], 'critic_hidden_dims': [32, 32], 'batch_size': 16, 'num_candidates': 4,
        'flow_steps': 3, 'pretrain_steps': 30, 'critic_warmup_steps': 20, 'max_episode_steps': 30}


def _rows(evals):
    # evals: list of (phase, success); every row an evaluation episode 10 env steps apart
    return [{'episode': i, 'env_steps': 10 * (i + 1), 'evaluation': 1, 'success': s, 'steps': 10, 'phase': p}
            for i, (p, s) in enumerate(evals)]


def test_score_windows_and_phases():
    rows = _rows([('pretrained', 1), ('pretrained', 0)] + [('warmup', 0)] * 3 + [('online', 1)] * 2 +
                 [('online', 0)] * 2 + [('online', 1)] * 2)
    s = score(rows, window=2, final_window=4)
    assert s['pretrained'] == 0.5
    assert s['final'] == 0.5                      # last 4 online evaluations: 0 0 1 1
    assert s['worst_window'] == 0.0               # windows start after the warm-up: (0, 0) is the worst
    assert s['auc'] == pytest.approx(4 / 9)       # every online evaluation, warm-up included
    assert s['eval_episodes'] == len(rows) and s['env_steps'] == 10 * len(rows)
    assert math.isnan(score(rows[:4], window=2)['worst_window'])   # no window after the warm-up


def test_mean_ci():
    m, h = mean_ci([0.5, 0.7, 0.9])
    assert m == pytest.approx(0.7) and h == pytest.approx(4.303 * 0.2 / 3 ** 0.5)
    assert mean_ci([0.4])[0] == 0.4 and math.isnan(mean_ci([0.4])[1])


def test_tiny_sweep_writes_runs_table_and_plot(tmp_path):
    base = {'env_steps': 200, 'demos': 1, 'initial_eval_episodes': 1, 'eval_every': 2, 'agent': TINY,
            'window': 2, 'final_window': 2, 'log_every': 100}
    results = sweep(['poco', 'bc'], ['pick_cube'], [0], tmp_path, workers=1, base=base)
    assert sorted(r['arm'] for r in results) == ['bc', 'poco']
    for arm in ('poco', 'bc'):
        d = tmp_path / f'pick_cube_{arm}_s0'
        rows = list(csv.DictReader(open(d / 'episodes.csv')))
        assert int(rows[-1]['env_steps']) >= 200 and rows[0]['phase'] == 'pretrained'
        cfg = json.loads((d / 'config.json').read_text())
        assert cfg['agent']['algorithm'] == arm and cfg['agent']['batch_size'] == 16
        diag = list(csv.DictReader(open(d / 'learner.csv')))
        assert diag and 'ess' in diag[0] and 'clip_fraction' in diag[0]
    table = (tmp_path / 'results.md').read_text()
    assert '| pick_cube | poco | 1 |' in table and '| pick_cube | bc | 1 |' in table and 'CPU:' in table
    assert (tmp_path / 'results.png').stat().st_size > 1000
    # resumable: a second call reuses the finished runs
    again = sweep(['poco'], ['pick_cube'], [0], tmp_path, workers=1, base=base)
    assert again[0]['wall_s'] == next(r for r in results if r['arm'] == 'poco')['wall_s']


def test_pixels_run_pretrains_the_encoder_on_its_demos_and_learns_from_features(tmp_path):
    """Pixels mode as the main job runs it: demos -> encoder pre-trained on them (frozen) -> both cameras'
    features + proprio are the observation (2 x 64 + 7) -> Stage I / II."""
    import numpy as np
    from poco_learner.experiment import ExperimentConfig, run
    from poco_policy.encoder import EncoderConfig, ImageEncoder
    cfg = ExperimentConfig(obs_mode='pixels', encoder='pretrain', encoder_steps=3, demos=3, env_steps=120,
                           initial_eval_episodes=1, eval_every=2, agent=TINY, window=2, final_window=2,
                           log_every=60)
    s = run(cfg, tmp_path / 'pre', log=lambda m: None)
    d = tmp_path / 'pre'
    assert s['env_steps'] >= 120 and s['eval_episodes'] >= 1
    assert json.loads((d / 'config.json').read_text())['agent']['obs_dim'] == 2 * 64 + 7
    enc = ImageEncoder(EncoderConfig(checkpoint_path=str(d / 'encoder.safetensors')))
    rnd = ImageEncoder(EncoderConfig())
    img = np.full((1, 128, 128, 3), 90, np.uint8)
    assert not np.allclose(enc.encode(img), rnd.encode(img))   # trained, not the random weights
    assert len(list((d / 'demos').glob('episode_*.npz'))) == 3
    with pytest.raises(ValueError, match='obs_mode'):
        run(ExperimentConfig(obs_mode='depth'), tmp_path / 'bad', log=lambda m: None)


def test_two_robots_feed_one_learner_in_turn(tmp_path):
    """--robots 2: two envs, a chunk each in turn, one agent and buffer; the pre-trained block is finished
    before any training episode starts (weights held), and both robots' episodes are logged."""
    from poco_learner.experiment import ExperimentConfig, run
    s = run(ExperimentConfig(env_steps=300, demos=1, initial_eval_episodes=3, eval_every=2, agent=TINY, window=2,
                             final_window=2, log_every=100, robots=2), tmp_path, log=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / 'episodes.csv')))
    assert {r['robot'] for r in rows} == {'0', '1'} and s['env_steps'] >= 300
    assert sorted(int(r['episode']) for r in rows) == list(range(len(rows)))  # every started episode finished
    first_online = min(i for i, r in enumerate(rows) if r['phase'] != 'pretrained')
    assert [r['phase'] for r in rows[:first_online]] == ['pretrained'] * 3
    with pytest.raises(ValueError, match='robots'):
        run(ExperimentConfig(robots=0), tmp_path / 'bad', log=lambda m: None)


def test_evaluations_cycle_through_the_policy_nodes_fixed_scenes(tmp_path):
    """eval_scenes = 3: evaluation episodes reset with the policy node's scene seeds (eval_seed + 1000 x seed + k),
    cycling, so any 3 consecutive evaluations see the pre-trained block's scenes; training episodes draw fresh
    ones."""
    from poco_learner.experiment import ExperimentConfig, run
    from poco_policy.node_config import PolicyNodeConfig
    run(ExperimentConfig(env_steps=400, demos=1, initial_eval_episodes=3, eval_every=2, eval_scenes=3, seed=2,
                         agent=TINY, window=2, final_window=2, log_every=100), tmp_path, log=lambda m: None)
    rows = list(csv.DictReader(open(tmp_path / 'episodes.csv')))
    base = PolicyNodeConfig.eval_seed + 1000 * 2
    evals = [int(r['seed']) for r in rows if r['evaluation'] == '1']
    assert len(evals) >= 5 and evals == [base + i % 3 for i in range(len(evals))]
    train = [int(r['seed']) for r in rows if r['evaluation'] == '0']
    assert train and not set(train) & set(evals) and len(set(train)) == len(train)
