"""Learning experiments without ROS: the main job's loop (demos -> Stage I -> Stage II) in one process, in
lock-step with the MuJoCo sim, so a curve in env steps is the same on a slow and a fast machine.

What it mirrors from the ROS graph (sim node + policy node + learner node):
  - scripted demonstrations into the buffer (demo rows), `pretrain_steps` of BC (Stage I);
  - episodes of at most H steps; chunks of T actions executed open-loop, new weights between chunks;
  - the first `initial_eval_episodes` are evaluation episodes of the pre-trained policy (its dashed line),
    then every `eval_every`-th episode is an evaluation episode (zero-noise sample; best-of-N for QC);
  - sparse reward 1 on success; success ends the episode (terminal), so does leaving the end-effector box
    (failure, terminal); the step limit is a truncation;
  - Stage II through `train.OnlineTrainer`: `utd_ratio` updates per env step, critic warm-up first (actor frozen).
Where the graph runs the learner on its own thread, here updates run after each executed chunk, which is the
sim-time contract of the graph (the sim waits for the learner) without the waiting.

Outputs (in `out_dir`): episodes.csv (one row per episode), learner.csv (diagnostics every `log_every` env
steps), summary.json (the scores below), config.json.

Scores (evaluation episodes only): `pretrained` = success over the initial block; `final` = success over the
last `final_window` evaluation episodes; `worst_window` = the lowest success of any `window` consecutive
evaluation episodes that start after the critic warm-up; `auc` = mean evaluation success over the online phase.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from poco_learner.agent import Agent, AgentConfig
from poco_learner.buffer import BufferConfig, ReplayBuffer
from poco_learner.diagnostics import DIAG_KEYS
from poco_learner.train import OnlineTrainer, pretrain



@dataclass
class ExperimentConfig:
    task: str = 'pick_cube'
    algorithm: str = 'poco'
    seed: int = 0
    preset: str = 'sim_cpu'
    agent: dict = field(default_factory=dict)     # AgentConfig overrides on top of the preset
    demos: int = 5
    demo_noise: float = 0.0                       # expert action noise std (fraction of the max delta)
    env_steps: int = 15000                        # online env-step budget (after pre-training)
    initial_eval_episodes: int = 20
    eval_every: int = 4
    utd_ratio: float = 1.0
    demo_ratio: float = 0.5
    timeout_terminal: bool = True                 # RewardConfig.timeout_terminal
    log_every: int = 500
    torch_threads: int = 1
    window: int = 20
    final_window: int = 60


def score(rows: list[dict], window: int = 20, final_window: int = 60) -> dict[str, float]:
    """Scores of one run from its episode rows (see the module docstring)."""
    ev = [r for r in rows if int(r['evaluation'])]
    pre = [float(r['success']) for r in ev if r['phase'] == 'pretrained']
    online = [r for r in ev if r['phase'] != 'pretrained']
    after = [float(r['success']) for r in online if r['phase'] not in ('warmup',)]
    s_online = [float(r['success']) for r in online]
    worst = min((float(np.mean(after[i:i + window])) for i in range(0, max(1, len(after) - window + 1))),
                default=math.nan) if len(after) >= window else math.nan
    return {
        'pretrained': float(np.mean(pre)) if pre else math.nan,
        'final': float(np.mean(s_online[-final_window:])) if s_online else math.nan,
        'worst_window': worst,
        'auc': float(np.mean(s_online)) if s_online else math.nan,
        'eval_episodes': len(ev),
        'env_steps': int(rows[-1]['env_steps']) if rows else 0,
    }


# the policy node's default end-effector box (poco_bringup/config/robot.yaml): leaving it ends the episode
EE_BOX_MIN = np.array([0.15, -0.40, 0.0])
EE_BOX_MAX = np.array([0.75, 0.40, 0.60])


def _in_box(p) -> bool:
    return bool(np.all(np.asarray(p) >= EE_BOX_MIN) and np.all(np.asarray(p) <= EE_BOX_MAX))


def _state_obs(obs: dict) -> np.ndarray:
    # the policy node's state-mode observation: [sim state, proprio] (ObservationAssembler order)
    return np.concatenate([obs['state'], obs['proprio']]).astype(np.float32)


def run(cfg: ExperimentConfig, out_dir: str | Path, log=print) -> dict[str, Any]:
    import torch
    from poco_policy.observation import ActionScaler
    from poco_sim.collect import run_expert_episode
    from poco_sim.envs import make_env
    from poco_sim.expert import ScriptedExpert

    torch.set_num_threads(max(1, cfg.torch_threads))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    env = make_env(cfg.task, 'state', seed=cfg.seed)
    acfg = AgentConfig.from_preset(cfg.preset, **dict(cfg.agent, algorithm=cfg.algorithm, seed=cfg.seed))
    H = acfg.max_episode_steps or env.max_steps
    env.max_steps = H
    scaler = ActionScaler(env.max_joint_delta)
    rng = np.random.default_rng(cfg.seed)

    # ---- demonstrations (the sim's scripted expert, as collect_demos does)
    expert = ScriptedExpert(env, noise_std=cfg.demo_noise, seed=cfg.seed)
    demo_eps = []
    for _ in range(cfg.demos):
        demo_eps.append(run_expert_episode(env, expert, int(rng.integers(0, 2**31 - 1))))
    obs_dim = demo_eps[0]['state'].shape[1] + demo_eps[0]['proprio'].shape[1]
    acfg.obs_dim = obs_dim
    buffer = ReplayBuffer(BufferConfig(demo_ratio=cfg.demo_ratio), obs_dim, 7)
    for ep in demo_eps:
        obs = np.concatenate([ep['state'], ep['proprio']], 1)
        buffer.add_episode(obs, scaler.normalize(ep['actions']), ep['rewards'], bool(ep['terminal']),
                           bool(ep['success']), demo=True)
    (out / 'config.json').write_text(json.dumps({'experiment': asdict(cfg), 'agent': acfg.to_json_dict()},
                                                indent=1))
    agent = Agent(acfg)
    m = pretrain(agent, buffer, acfg.pretrain_steps, progress=False, rng=cfg.seed)
    log(f'[{cfg.algorithm} s{cfg.seed}] pre-trained {acfg.pretrain_steps} steps, bc {m.get("bc_loss_avg", 0):.4f} '
        f'({time.perf_counter() - t_start:.0f} s)')

    trainer = OnlineTrainer(agent, buffer, utd_ratio=cfg.utd_ratio, rng=cfg.seed + 1)
    rows: list[dict] = []
    diag_rows: list[dict] = []
    window_metrics: list[dict] = []
    env_steps = episode = 0
    next_log = cfg.log_every
    T = acfg.horizon
    f_ep = open(out / 'episodes.csv', 'w', newline='')
    ep_writer = csv.DictWriter(f_ep, ['episode', 'env_steps', 'evaluation', 'success', 'steps', 'phase', 'wall_s'])
    ep_writer.writeheader()
    try:
        while env_steps < cfg.env_steps:
            initial = episode < cfg.initial_eval_episodes
            evaluation = initial or (cfg.eval_every > 0 and
                                     (episode - cfg.initial_eval_episodes) % cfg.eval_every == cfg.eval_every - 1)
            phase = 'pretrained' if initial else ('warmup' if agent.in_critic_warmup else 'online')
            o, info = env.reset(seed=int(rng.integers(0, 2**31 - 1)))
            x = _state_obs(o)
            eid = f'online_{episode}'
            done = success = False
            steps = 0
            while not done:
                chunk = agent.act(x, deterministic=evaluation)          # [T, 7] normalised
                executed = 0
                for a in chunk[:T]:
                    a_norm = np.clip(a, -1.0, 1.0).astype(np.float32)
                    o, r, term, trunc, info = env.step(scaler.denormalize(a_norm[None])[0])
                    buffer.add_step(eid, x, a_norm, float(r))
                    x = _state_obs(o)
                    steps += 1
                    executed += 1
                    success = bool(info.get('success', False))
                    box = not _in_box(info['ee_pos'])
                    if term or trunc or success or box:
                        terminal = bool(term or success or box or (trunc and cfg.timeout_terminal))
                        buffer.end_episode(eid, x, terminal=terminal, success=success)
                        done = True
                        break
                env_steps += executed
                if not initial:   # weights are held (no actor change) during the initial evaluation block
                    ms = trainer.on_env_steps(executed)
                else:
                    # the critic may warm up on these steps already (the actor is frozen during warm-up)
                    ms = trainer.on_env_steps(executed) if agent.in_critic_warmup else []
                window_metrics.extend(ms)
            row = {'episode': episode, 'env_steps': env_steps, 'evaluation': int(evaluation),
                   'success': int(success), 'steps': steps, 'phase': phase,
                   'wall_s': round(time.perf_counter() - t_start, 1)}
            rows.append(row)
            ep_writer.writerow(row)
            f_ep.flush()
            episode += 1
            if env_steps >= next_log:
                d = {'env_steps': env_steps, 'updates': agent.counters['online_updates'],
                     'wall_s': round(time.perf_counter() - t_start, 1),
                     'train_success': float(np.mean([r['success'] for r in rows[-20:] if not r['evaluation']]
                                                    or [math.nan]))}
                for k in DIAG_KEYS:
                    v = [mm[k] for mm in window_metrics if k in mm and math.isfinite(mm[k])]
                    d[k] = float(np.mean(v)) if v else math.nan
                diag_rows.append(d)
                window_metrics = []
                next_log += cfg.log_every
                ev = [r['success'] for r in rows[-40:] if r['evaluation']]
                log(f'[{cfg.algorithm} s{cfg.seed}] {env_steps} steps, {d["updates"]} updates, eval(last '
                    f'{len(ev)}) {np.mean(ev) if ev else math.nan:.2f}, train {d["train_success"]:.2f}, '
                    f'q {d["q_mean"]:.3f} ess {d["ess"]:.2f} clip {d["clip_fraction"]:.2f} '
                    f'({d["wall_s"]:.0f} s)')
    finally:
        f_ep.close()
        env.close()
    if diag_rows:
        with open(out / 'learner.csv', 'w', newline='') as f:
            w = csv.DictWriter(f, list(diag_rows[0]))
            w.writeheader()
            w.writerows(diag_rows)
    s = score(rows, cfg.window, cfg.final_window)
    s.update(wall_s=round(time.perf_counter() - t_start, 1), algorithm=cfg.algorithm, task=cfg.task, seed=cfg.seed)
    (out / 'summary.json').write_text(json.dumps(s, indent=1))
    log(f'[{cfg.algorithm} s{cfg.seed}] done: {s}')
    return s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description='One learning run without ROS (see poco_learner.experiment).')
    p.add_argument('--task', default='pick_cube')
    p.add_argument('--algorithm', default='poco')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--preset', default='sim_cpu')
    p.add_argument('--env-steps', type=int, default=15000)
    p.add_argument('--demos', type=int, default=5)
    p.add_argument('--demo-noise', type=float, default=0.0)
    p.add_argument('--utd', type=float, default=1.0)
    p.add_argument('--timeout-truncates', action='store_true',
                   help='a timeout truncates the episode (bootstrap) instead of ending it (RewardConfig.timeout_terminal)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='AgentConfig override, e.g. --set eta=0.01 (YAML-parsed value)')
    p.add_argument('--out', required=True)
    a = p.parse_args(argv)
    import yaml
    over = {}
    for kv in a.set:
        k, _, v = kv.partition('=')
        over[k] = yaml.safe_load(v)
    cfg = ExperimentConfig(task=a.task, algorithm=a.algorithm, seed=a.seed, preset=a.preset, agent=over,
                           env_steps=a.env_steps, demos=a.demos, demo_noise=a.demo_noise, utd_ratio=a.utd,
                           timeout_terminal=not a.timeout_truncates)
    run(cfg, a.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
