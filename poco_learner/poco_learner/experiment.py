"""Learning experiments without ROS: the main job's loop (demos -> Stage I -> Stage II) in one process, in
lock-step with the MuJoCo sim, so a curve in env steps is the same on a slow and a fast machine.

What it mirrors from the ROS graph (sim node + policy node + learner node):
  - scripted demonstrations into the buffer (demo rows), `pretrain_steps` of BC (Stage I);
  - episodes of at most H steps; chunks of T actions executed open-loop, new weights between chunks;
  - the first `initial_eval_episodes` are evaluation episodes of the pre-trained policy (its dashed line),
    then every `eval_every`-th episode is an evaluation episode (sampled like training, the policy POCO
    improves; best-of-N for QC; `eval_deterministic` = zero noise);
  - sparse reward 1 on success; success ends the episode (terminal), so does leaving the end-effector box
    (failure, terminal); the step limit ends the task too (`timeout_terminal`, as RewardConfig's default);
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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from poco_learner.agent import Agent, AgentConfig
from poco_learner.buffer import BufferConfig, ReplayBuffer
from poco_learner.diagnostics import DIAG_KEYS
from poco_learner.train import OnlineTrainer, pretrain
from poco_policy.episode import eval_scene_seed_base
from poco_policy.node_config import PolicyNodeConfig


@dataclass
class ExperimentConfig:
    name: str = ''                                # label in log lines ('' = the algorithm)
    task: str = 'pick_cube'
    obs_mode: str = 'state'                       # state | pixels (both cameras through the frozen encoder)
    # pixels: 'pretrain' = poco_pretrain_encoder on this run's demos (the main job's default), 'random' = the
    # seeded random ResNet-10, or a checkpoint path
    encoder: str = 'pretrain'
    encoder_steps: int = 300
    algorithm: str = 'poco'
    seed: int = 0
    preset: str = 'sim_cpu'
    agent: dict = field(default_factory=dict)     # AgentConfig overrides on top of the preset
    demos: int = 10                               # scripted demonstrations (the main job: 10)
    demo_noise: float = 0.0                       # expert action noise std (fraction of the max delta)
    env_steps: int = 15000                        # online env-step budget (after pre-training)
    initial_eval_episodes: int = 20
    eval_every: int = 4
    # evaluation samples like training (False) or from zero noise; the policy POCO trains is the sampled one
    eval_deterministic: bool = False
    # evaluations cycle through this many fixed scenes (the policy node's eval_scenes; 0 = random each time):
    # any `eval_scenes` consecutive evaluations see the pre-trained block's scenes
    eval_scenes: int = 20
    utd_ratio: float = 1.0
    robots: int = 1                               # simulated robots feeding the one learner, a chunk each in turn
    demo_ratio: float = 0.5
    timeout_terminal: bool = True                 # RewardConfig.timeout_terminal
    log_every: int = 500
    torch_threads: int = 1
    window: int = 20
    final_window: int = 20                        # 'final' = the last this many evaluation episodes


def score(rows: list[dict], window: int = 20, final_window: int = 20) -> dict[str, float]:
    """Scores of one run from its episode rows (see the module docstring)."""
    ev = [r for r in rows if int(r['evaluation'])]
    pre = [float(r['success']) for r in ev if r['phase'] == 'pretrained']
    online = [r for r in ev if r['phase'] != 'pretrained']
    after = [float(r['success']) for r in online if r['phase'] not in ('warmup',)]
    s_online = [float(r['success']) for r in online]
    worst = min((float(np.mean(after[i:i + window])) for i in range(0, max(1, len(after) - window + 1))),
                default=math.nan) if len(after) >= window else math.nan
    return {
        'final_window': int(final_window),
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


def _pixel_observer(cfg: ExperimentConfig, out: Path, env, demo_eps: list[dict], log, tag: str):
    """Pixels mode: the frozen encoder the policy node and the learner would share (pre-trained on this run's
    demos, as run_sim.sh does, or random / a given file) and the observation function built on it."""
    from poco_policy.encoder import EncoderConfig
    from poco_policy.observation import ObservationAssembler, ObservationConfig
    from poco_sim.collect import FORMAT_VERSION, write_episode, write_meta
    ckpt = ''
    if cfg.encoder == 'pretrain':
        from poco_learner.pretrain_encoder import PretrainEncoderConfig, pretrain as pretrain_encoder
        demo_dir = out / 'demos'
        demo_dir.mkdir(exist_ok=True)
        for i, ep in enumerate(demo_eps):
            write_episode(demo_dir, i, ep)
        write_meta(demo_dir, {'format_version': FORMAT_VERSION, 'source': 'poco_learner.experiment', 'task': cfg.task,
                              'obs_mode': 'pixels', 'image_size': env.image_size, 'cameras': list(env.cameras),
                              'state_dim': 0, 'proprio_dim': 7, 'action_dim': 7,
                              'max_joint_delta': env.max_joint_delta, 'control_rate_hz': env.control_rate_hz,
                              'max_steps': env.max_steps, 'joint_names': env.joint_names,
                              'num_episodes': len(demo_eps)})
        ckpt = str(out / 'encoder.safetensors')
        s = pretrain_encoder(PretrainEncoderConfig(data=[str(demo_dir)], out=ckpt, seed=cfg.seed,
                                                   steps=cfg.encoder_steps, threads=max(1, cfg.torch_threads)),
                             log=lambda m: None)
        log(f'{tag} encoder pre-trained on {len(demo_eps)} demos: bc {s["fit_bc_before"]:.3f} -> '
            f'{s["fit_bc_after"]:.3f}, val {s["final_val_bc"]:.3f} ({s["wall_s"]:.0f} s)')
    elif cfg.encoder != 'random':
        ckpt = str(Path(cfg.encoder).expanduser().resolve())
    asm = ObservationAssembler(ObservationConfig('pixels', cameras=tuple(env.cameras)),
                               EncoderConfig(checkpoint_path=ckpt, image_size=env.image_size,
                                             num_threads=max(1, cfg.torch_threads)))
    return asm.assemble, asm.assemble_batch


def run(cfg: ExperimentConfig, out_dir: str | Path, log=print) -> dict[str, Any]:
    import torch
    from poco_policy.observation import ActionScaler
    from poco_sim.collect import run_expert_episode
    from poco_sim.envs import make_env
    from poco_sim.expert import ScriptedExpert

    if cfg.obs_mode not in ('state', 'pixels'):
        raise ValueError(f"obs_mode must be 'state' or 'pixels', got {cfg.obs_mode!r}")
    if cfg.robots < 1:
        raise ValueError(f'robots must be >= 1, got {cfg.robots}')
    torch.set_num_threads(max(1, cfg.torch_threads))
    tag = f'[{cfg.task}{" pixels" if cfg.obs_mode == "pixels" else ""} {cfg.name or cfg.algorithm} s{cfg.seed}]'
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    env = make_env(cfg.task, cfg.obs_mode, seed=cfg.seed)
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
    if cfg.obs_mode == 'pixels':
        observe, observe_batch = _pixel_observer(cfg, out, env, demo_eps, log, tag)
    else:
        observe, observe_batch = _state_obs, lambda ep: np.concatenate([ep['state'], ep['proprio']], 1)
    obs_dim = int(observe_batch({k: v[:1] for k, v in demo_eps[0].items() if np.ndim(v) > 0}).shape[1])
    acfg.obs_dim = obs_dim
    buffer = ReplayBuffer(BufferConfig(demo_ratio=cfg.demo_ratio), obs_dim, 7)
    for ep in demo_eps:
        obs = observe_batch(ep)
        buffer.add_episode(obs, scaler.normalize(ep['actions']), ep['rewards'], bool(ep['terminal']),
                           bool(ep['success']), demo=True)
    (out / 'config.json').write_text(json.dumps({'experiment': asdict(cfg), 'agent': acfg.to_json_dict()},
                                                indent=1))
    agent = Agent(acfg)
    m = pretrain(agent, buffer, acfg.pretrain_steps, progress=False, rng=cfg.seed)
    log(f'{tag} pre-trained {acfg.pretrain_steps} steps, bc {m.get("bc_loss_avg", 0):.4f} '
        f'({time.perf_counter() - t_start:.0f} s)')

    trainer = OnlineTrainer(agent, buffer, utd_ratio=cfg.utd_ratio, rng=cfg.seed + 1)
    # K robots feeding one learner (the sim graph's --robots K): one env each, a chunk each in turn, every
    # executed step paid for by updates as in the graph; robot 0 is the env the demos came from
    envs = [env] + [make_env(cfg.task, cfg.obs_mode, seed=cfg.seed + 1000 * k) for k in range(1, cfg.robots)]
    for e in envs[1:]:
        e.max_steps = H
    rows: list[dict] = []
    diag_rows: list[dict] = []
    window_metrics: list[dict] = []
    env_steps = episode = 0
    next_log = cfg.log_every
    T = acfg.horizon
    f_ep = open(out / 'episodes.csv', 'w', newline='')
    ep_writer = csv.DictWriter(f_ep, ['episode', 'env_steps', 'evaluation', 'success', 'steps', 'phase', 'wall_s',
                                      'robot', 'seed'])
    ep_writer.writeheader()
    active: list[dict | None] = [None] * len(envs)

    evaluations = 0

    def start(k: int) -> dict:
        nonlocal episode, evaluations
        initial = episode < cfg.initial_eval_episodes
        evaluation = initial or (cfg.eval_every > 0 and
                                 (episode - cfg.initial_eval_episodes) % cfg.eval_every == cfg.eval_every - 1)
        seed = int(rng.integers(0, 2**31 - 1))      # drawn for every episode: training scenes do not depend on it
        if evaluation and cfg.eval_scenes > 0:      # the scene seeds the policy node resets with
            seed = eval_scene_seed_base(PolicyNodeConfig.eval_seed, cfg.seed) + evaluations % cfg.eval_scenes
        evaluations += evaluation
        o, _ = envs[k].reset(seed=seed)
        ep = {'episode': episode, 'initial': initial, 'evaluation': evaluation, 'x': observe(o), 'steps': 0,
              'seed': seed,
              'phase': 'pretrained' if initial else ('warmup' if agent.in_critic_warmup else 'online'),
              'eid': f'online_{episode}' if len(envs) == 1 else f'robot{k}/online_{episode}'}
        episode += 1
        return ep

    try:
        while True:
            for k, e in enumerate(envs):
                if active[k] is None:
                    if env_steps >= cfg.env_steps:
                        continue
                    # weights are held during the initial evaluation block: no training episode starts while
                    # another robot still evaluates the pre-trained policy
                    if episode >= cfg.initial_eval_episodes and any(a and a['initial'] for a in active):
                        continue
                    active[k] = start(k)
                ep = active[k]
                chunk = agent.act(ep['x'], deterministic=ep['evaluation'] and cfg.eval_deterministic)  # [T, 7]
                executed = 0
                done = success = False
                for a in chunk[:T]:
                    a_norm = np.clip(a, -1.0, 1.0).astype(np.float32)
                    o, r, term, trunc, info = e.step(scaler.denormalize(a_norm[None])[0])
                    buffer.add_step(ep['eid'], ep['x'], a_norm, float(r))
                    ep['x'] = observe(o)
                    ep['steps'] += 1
                    executed += 1
                    success = bool(info.get('success', False))
                    box = not _in_box(info['ee_pos'])
                    if term or trunc or success or box:
                        terminal = bool(term or success or box or (trunc and cfg.timeout_terminal))
                        buffer.end_episode(ep['eid'], ep['x'], terminal=terminal, success=success)
                        done = True
                        break
                env_steps += executed
                if not ep['initial']:   # weights are held (no actor change) during the initial evaluation block
                    ms = trainer.on_env_steps(executed)
                else:
                    # the critic may warm up on these steps already (the actor is frozen during warm-up)
                    ms = trainer.on_env_steps(executed) if agent.in_critic_warmup else []
                window_metrics.extend(ms)
                if not done:
                    continue
                active[k] = None
                row = {'episode': ep['episode'], 'env_steps': env_steps, 'evaluation': int(ep['evaluation']),
                       'success': int(success), 'steps': ep['steps'], 'phase': ep['phase'],
                       'wall_s': round(time.perf_counter() - t_start, 1), 'robot': k, 'seed': ep['seed']}
                rows.append(row)
                ep_writer.writerow(row)
                f_ep.flush()
                if env_steps >= next_log:
                    d = {'env_steps': env_steps, 'updates': agent.counters['online_updates'],
                         'wall_s': round(time.perf_counter() - t_start, 1),
                         'train_success': float(np.mean([r['success'] for r in rows[-20:] if not r['evaluation']]
                                                        or [math.nan]))}
                    for key in DIAG_KEYS:
                        v = [mm[key] for mm in window_metrics if key in mm and math.isfinite(mm[key])]
                        d[key] = float(np.mean(v)) if v else math.nan
                    diag_rows.append(d)
                    window_metrics = []
                    next_log += cfg.log_every
                    ev = [r['success'] for r in rows[-40:] if r['evaluation']]
                    log(f'{tag} {env_steps} steps, {d["updates"]} updates, eval(last '
                        f'{len(ev)}) {np.mean(ev) if ev else math.nan:.2f}, train {d["train_success"]:.2f}, '
                        f'q {d["q_mean"]:.3f} ess {d["ess"]:.2f} clip {d["clip_fraction"]:.2f} '
                        f'({d["wall_s"]:.0f} s)')
            if env_steps >= cfg.env_steps and all(a is None for a in active):
                break
    finally:
        f_ep.close()
        for e in envs:
            e.close()
    if diag_rows:
        with open(out / 'learner.csv', 'w', newline='') as f:
            w = csv.DictWriter(f, list(diag_rows[0]))
            w.writeheader()
            w.writerows(diag_rows)
    s = score(rows, cfg.window, cfg.final_window)
    s.update(wall_s=round(time.perf_counter() - t_start, 1), algorithm=cfg.algorithm, task=cfg.task, seed=cfg.seed)
    (out / 'summary.json').write_text(json.dumps(s, indent=1))
    log(f'{tag} done: {s}')
    return s


# ------------------------------------------------------------------------------------------------ sweeps
# The harness's arms: name -> (algorithm, AgentConfig overrides). Every arm runs the same preset, demos,
# budget and evaluation protocol; only what the name says differs.
ARMS: dict[str, tuple[str, dict]] = {
    'poco': ('poco', {}),
    'poco_buffer': ('poco', {'bc_data': 'buffer'}),     # the paper's data term: every buffer row
    'poco_noclip': ('poco_noclip', {}),
    'bc': ('bc', {'bc_data': 'buffer'}),                # BC fine-tuning on the growing buffer, no critic
    'qc_best_of_n': ('qc_best_of_n', {'bc_data': 'buffer'}),
}
# two-sided 95 % Student-t quantiles by degrees of freedom (no scipy on these machines)
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % confidence interval (Student t over seeds)."""
    v = np.asarray([x for x in values if math.isfinite(x)], float)
    if len(v) == 0:
        return math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan
    return float(v.mean()), float(_T95.get(len(v) - 1, 1.96) * v.std(ddof=1) / math.sqrt(len(v)))


def _run_one(job: tuple) -> dict:
    arm, task, seed, base, out = job
    algo, over = ARMS[arm]
    cfg = ExperimentConfig(**dict(base, name=arm, task=task, algorithm=algo, seed=seed, agent=dict(base.get('agent', {}), **over)))
    d = Path(out) / f'{task}_{arm}_s{seed}'
    if (d / 'summary.json').exists():      # resumable: a finished run is not repeated
        s = json.loads((d / 'summary.json').read_text())
    else:
        s = run(cfg, d, log=lambda m: print(m, flush=True))
    return dict(s, arm=arm)


def _agent_overrides(pairs: list[str]) -> dict:
    """`['eta=0.01', 'bf16_sampling=true']` -> AgentConfig overrides (YAML-parsed values), unknown names refused."""
    import yaml
    known = {f.name for f in fields(AgentConfig)}
    over = {}
    for kv in pairs:
        k, sep, v = kv.partition('=')
        if not sep or k not in known:
            raise SystemExit(f'--set {kv!r}: expected NAME=VALUE with NAME an AgentConfig field')
        over[k] = yaml.safe_load(v)
    return over


def sweep(arms: list[str], tasks: list[str], seeds: list[int], out: str | Path, workers: int = 2,
          base: dict | None = None) -> list[dict]:
    """Every arm x task x seed (one process per run, `workers` at a time, one torch thread each), then
    results.md (table) and results.png (mean curves) in `out`."""
    import concurrent.futures as cf
    import multiprocessing as mp
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f'unknown arms {unknown}; known: {sorted(ARMS)}')
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(a, t, s, dict(base or {}), str(out)) for t in tasks for s in seeds for a in arms]
    results = []
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context('spawn')) as ex:
        for r in ex.map(_run_one, jobs):
            results.append(r)
    write_report(out, arms, tasks, results, base)
    return results


def _cpu_name() -> str:
    try:
        model = next(line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name'))
        flags = open('/proc/cpuinfo').read()
        feats = [f for f in ('amx_bf16', 'avx512_bf16') if f in flags]
        return f"{model} ({', '.join(feats) or 'no native bf16'}; {os.cpu_count()} cores)"
    except (OSError, StopIteration):
        return 'unknown CPU'


def write_report(out: Path, arms: list[str], tasks: list[str], results: list[dict], base: dict | None = None) -> str:
    fw = sorted({int(r.get('final_window', 20)) for r in results}) or [20]
    setup = ''
    if base:
        pix = (f", pixels (encoder {base.get('encoder', 'pretrain')}"
               + (f", {base.get('encoder_steps', 300)} steps" if base.get('encoder', 'pretrain') == 'pretrain' else '')
               + ')') if base.get('obs_mode') == 'pixels' else ''
        pix += f", {base['robots']} robots" if base.get('robots', 1) != 1 else ''
        setup = (f" Setup: preset {base.get('preset', 'sim_cpu')}, {base.get('demos', 10)} demos{pix}"
                 + ''.join(f', {k}={v}' for k, v in sorted(base.get('agent', {}).items())) + '.')
    lines = [f'CPU: {_cpu_name()}. Evaluation success (sampled like training), mean and 95 % interval over seeds.'
             + setup,
             '', f"| task | arm | seeds | pre-trained | final (last {'/'.join(map(str, fw))} eval) | AUC (online eval) | "
             'worst 20-eval window after warm-up | env steps |', '|---|---|---|---|---|---|---|---|']
    for t in tasks:
        for a in arms:
            rs = [r for r in results if r['task'] == t and r['arm'] == a]
            if not rs:
                continue
            cells = []
            for k in ('pretrained', 'final', 'auc', 'worst_window'):
                m, h = mean_ci([r[k] for r in rs])
                cells.append(f'{m:.2f} ± {h:.2f}' if math.isfinite(h) else f'{m:.2f}')
            lines.append(f"| {t} | {a} | {len(rs)} | {' | '.join(cells)} | {int(np.mean([r['env_steps'] for r in rs]))} |")
    text = '\n'.join(lines) + '\n'
    (out / 'results.md').write_text(text)
    (out / 'results.json').write_text(json.dumps(results, indent=1))
    try:
        plot_curves(out, arms, tasks, results)
    except Exception as e:  # the table is the result; a plot failure must not lose it
        print(f'plot failed: {e}')
    return text


def eval_curve(rows: list[dict], window: int = 20, step: int = 250, until: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Evaluation success (moving window of `window` eval episodes) sampled every `step` env steps."""
    ev = [(int(r['env_steps']), float(r['success'])) for r in rows if int(r['evaluation'])]
    xs = np.arange(step, (until or (ev[-1][0] if ev else step)) + 1, step)
    ys = []
    for x in xs:
        past = [s for e, s in ev if e <= x][-window:]
        ys.append(np.mean(past) if past else np.nan)
    return xs, np.asarray(ys)


def plot_curves(out: Path, arms: list[str], tasks: list[str], results: list[dict]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(6 * len(tasks), 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, t in zip(axes, tasks):
        for a in arms:
            rs = [r for r in results if r['task'] == t and r['arm'] == a]
            curves = []
            until = min((r['env_steps'] for r in rs), default=0)
            for r in rs:
                with open(out / f"{t}_{a}_s{r['seed']}" / 'episodes.csv', newline='') as f:
                    curves.append(eval_curve(list(csv.DictReader(f)), until=until))
            if not curves:
                continue
            xs = curves[0][0]
            ys = np.stack([c[1][:len(xs)] for c in curves])
            m = np.nanmean(ys, 0)
            line, = ax.plot(xs, m, label=f'{a} ({len(rs)} seeds)')
            if len(rs) > 1:
                ax.fill_between(xs, np.nanmin(ys, 0), np.nanmax(ys, 0), color=line.get_color(), alpha=0.15)
        ax.set_title(t)
        ax.set_xlabel('env steps (online)')
        ax.set_ylabel('eval success (20-episode window)')
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc='lower right')
    fig.tight_layout()
    fig.savefig(out / 'results.png', dpi=90)


def _pixel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument('--obs-mode', choices=('state', 'pixels'), default='state')
    p.add_argument('--encoder', default='pretrain',
                   help="pixels: 'pretrain' (on the run's demos, as the main job does), 'random', or a checkpoint")
    p.add_argument('--encoder-steps', type=int, default=300, help='pixels: encoder pre-training steps')
    p.add_argument('--robots', type=int, default=1,
                   help='simulated robots feeding the one learner (a chunk each in turn; the budget is their sum)')


def sweep_main(argv=None) -> int:
    p = argparse.ArgumentParser(description='Learning harness: arms x tasks x seeds at a fixed env-step budget '
                                            '(no ROS), then a table and a plot.')
    p.add_argument('--arms', nargs='+', default=list(ARMS), help=f'of {list(ARMS)}')
    p.add_argument('--tasks', nargs='+', default=['pick_cube', 'peg_insert'])
    p.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    p.add_argument('--env-steps', type=int, default=10000)
    p.add_argument('--workers', type=int, default=2, help='runs at a time (one torch thread each)')
    p.add_argument('--preset', default='sim_cpu')
    p.add_argument('--demos', type=int, default=10, help='scripted demonstrations per run')
    _pixel_args(p)
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='AgentConfig override for every arm, e.g. --set bf16_sampling=true')
    p.add_argument('--out', default='docs/results/harness')
    a = p.parse_args(argv)
    base = {'env_steps': a.env_steps, 'preset': a.preset, 'demos': a.demos, 'agent': _agent_overrides(a.set)}
    if a.obs_mode == 'pixels':
        base.update(obs_mode='pixels', encoder=a.encoder, encoder_steps=a.encoder_steps)
    if a.robots != 1:
        base['robots'] = a.robots
    sweep(a.arms, a.tasks, a.seeds, a.out, a.workers, base=base)
    print((Path(a.out) / 'results.md').read_text())
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description='One learning run without ROS (see poco_learner.experiment).')
    p.add_argument('--task', default='pick_cube')
    p.add_argument('--algorithm', default='poco')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--preset', default='sim_cpu')
    p.add_argument('--env-steps', type=int, default=15000)
    p.add_argument('--demos', type=int, default=10)
    p.add_argument('--demo-noise', type=float, default=0.0)
    _pixel_args(p)
    p.add_argument('--utd', type=float, default=1.0)
    p.add_argument('--eval-deterministic', action='store_true', help='evaluate from zero noise')
    p.add_argument('--timeout-truncates', action='store_true',
                   help='a timeout truncates the episode (bootstrap) instead of ending it (RewardConfig.timeout_terminal)')
    p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                   help='AgentConfig override, e.g. --set eta=0.01 (YAML-parsed value)')
    p.add_argument('--out', required=True)
    a = p.parse_args(argv)
    over = _agent_overrides(a.set)
    cfg = ExperimentConfig(task=a.task, algorithm=a.algorithm, seed=a.seed, preset=a.preset, agent=over,
                           env_steps=a.env_steps, demos=a.demos, demo_noise=a.demo_noise, utd_ratio=a.utd,
                           timeout_terminal=not a.timeout_truncates,
                           eval_deterministic=a.eval_deterministic, obs_mode=a.obs_mode, encoder=a.encoder,
                           encoder_steps=a.encoder_steps, robots=a.robots)
    run(cfg, a.out)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
