"""`collect_demos`: roll out the scripted expert and write an episode dataset (docs/architecture.md).

    collect_demos --task pick_cube --obs-mode pixels --episodes 50 --out data/pick_demos --seed 0
    collect_demos --task peg_insert --obs-mode state --episodes 20 --out /tmp/peg --noisy --only-success

Layout: DIR/meta.json + DIR/episode_XXXXXX.npz (np.savez_compressed; load with allow_pickle=False) holding
proprio [L+1,7], actions [L,7] (physical units), rewards [L], terminal, success, and front/wrist [L+1,H,W,3]
uint8 (pixels) or state [L+1,S] (state). Each file is written to a hidden temp name then os.replace'd, so a
reader never sees half an episode. An existing dataset of the same task/obs_mode is appended to.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
META = 'meta.json'


def run_expert_episode(env, expert, seed: int) -> dict[str, np.ndarray]:
    """One expert episode from `env.reset(seed=seed)` until success or the step limit.

    Returns the dataset arrays of docs/architecture.md: proprio [L+1,7] float32, actions [L,7] float32,
    rewards [L] float32, terminal (bool: ended by success, not by the step limit), success (bool), and
    front/wrist [L+1,H,W,3] uint8 (pixels) or state [L+1,S] float32. Index L is the observation after the
    last action. (Also what a rosbag writer can replay: env.control_dt apart.)
    """
    env = env.unwrapped
    obs, info = env.reset(seed=seed)
    expert.reset(seed=seed)
    keys = [k for k in ('front', 'wrist', 'state') if k in obs]
    frames: dict[str, list] = {k: [obs[k]] for k in keys}
    proprio = [obs['proprio']]
    actions, rewards = [], []
    terminated = truncated = False
    while not (terminated or truncated):
        action = np.asarray(expert.act(obs, info), dtype=np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        rewards.append(reward)
        proprio.append(obs['proprio'])
        for k in keys:
            frames[k].append(obs[k])
    out = {
        'proprio': np.asarray(proprio, dtype=np.float32),
        'actions': np.asarray(actions, dtype=np.float32).reshape(-1, 7),
        'rewards': np.asarray(rewards, dtype=np.float32),
        'terminal': np.asarray(bool(terminated)),
        'success': np.asarray(bool(info['success'])),
    }
    for k in keys:
        out[k] = np.asarray(frames[k], dtype=np.uint8 if k != 'state' else np.float32)
    return out


def write_episode(out_dir: Path, index: int, arrays: dict[str, np.ndarray]) -> Path:
    """Atomically write `episode_{index:06d}.npz` (temp file + os.replace)."""
    final = out_dir / f'episode_{index:06d}.npz'
    tmp = out_dir / f'.{final.name}.tmp'
    with open(tmp, 'wb') as f:  # a file object: np.savez would append '.npz' to a temp *name*
        np.savez_compressed(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    return final


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    tmp = out_dir / f'.{META}.tmp'
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')
    os.replace(tmp, out_dir / META)


def _existing_episodes(out_dir: Path) -> list[int]:
    return sorted(int(p.stem.split('_')[1]) for p in out_dir.glob('episode_*.npz'))


def collect(task: str, obs_mode: str, episodes: int, out: str | Path, *, image_size: int = 128,
            max_steps: int | None = None, object_range: float | None = None, noise_std: float = 0.0,
            recovery_prob: float = 0.0, seed: int = 0, only_success: bool = False,
            max_attempts: int | None = None, log=print) -> dict[str, Any]:
    """Collect `episodes` expert episodes into `out`; returns the final meta dict."""
    from poco_sim.envs import make_env
    from poco_sim.expert import ScriptedExpert

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = make_env(task, obs_mode, image_size=image_size, max_steps=max_steps, object_range=object_range, seed=seed)
    expert = ScriptedExpert(env, noise_std=noise_std, recovery_prob=recovery_prob, seed=seed)
    meta: dict[str, Any] = {
        'format_version': FORMAT_VERSION, 'source': 'poco_sim.collect', 'task': task, 'obs_mode': obs_mode,
        'image_size': image_size, 'cameras': list(env.cameras) if obs_mode == 'pixels' else [],
        'state_dim': env.state_dim if obs_mode == 'state' else 0, 'proprio_dim': 7, 'action_dim': 7,
        'action_units': 'physical: 6 delta joint positions [rad] + gripper command [0 closed, 1 open]',
        'max_joint_delta': env.max_joint_delta, 'control_rate_hz': env.control_rate_hz,
        'max_steps': env.max_steps, 'object_range': env.object_range.tolist(),
        'joint_names': env.joint_names, 'expert': {'noise_std': noise_std, 'recovery_prob': recovery_prob},
        'seed': seed, 'num_episodes': 0, 'num_success': 0, 'episode_seeds': {},
    }
    meta_path = out_dir / META
    existing = _existing_episodes(out_dir)
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for k in ('task', 'obs_mode', 'image_size', 'max_joint_delta'):
            if old.get(k) != meta[k]:
                raise ValueError(f'{out_dir} holds a dataset with {k}={old.get(k)!r}, not {meta[k]!r}')
        meta['num_episodes'] = int(old.get('num_episodes', len(existing)))
        meta['num_success'] = int(old.get('num_success', 0))
        meta['episode_seeds'] = dict(old.get('episode_seeds', {}))
    elif existing:
        raise ValueError(f'{out_dir} has episode files but no {META}; refusing to mix datasets')
    index = (existing[-1] + 1) if existing else 0
    # Episode seeds: a deterministic sequence from --seed; appended runs should use another --seed.
    seed_rng = np.random.default_rng(seed)
    max_attempts = max_attempts or (episodes * 5 if only_success else episodes)
    written = attempts = successes = 0
    t0 = time.time()
    while written < episodes and attempts < max_attempts:
        ep_seed = int(seed_rng.integers(0, 2**31 - 1))
        attempts += 1
        arrays = run_expert_episode(env, expert, ep_seed)
        ok = bool(arrays['success'])
        successes += ok
        if only_success and not ok:
            continue
        path = write_episode(out_dir, index, arrays)
        meta['episode_seeds'][path.name] = ep_seed
        meta['num_episodes'] += 1
        meta['num_success'] += int(ok)
        index += 1
        written += 1
        write_meta(out_dir, meta)  # after every episode: an interrupted run still leaves a valid dataset
        if log and (written % 10 == 0 or written == episodes):
            log(f'[collect_demos] {written}/{episodes} episodes written ({attempts} attempts, '
                f'{successes / attempts:.0%} success, {time.time() - t0:.0f} s)')
    env.close()
    write_meta(out_dir, meta)
    if written < episodes:
        raise RuntimeError(f'only {written} of {episodes} episodes after {attempts} attempts '
                           f'(success rate {successes / max(attempts, 1):.0%})')
    return meta


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='collect_demos', description=__doc__.split('\n\n')[0])
    p.add_argument('--task', default='pick_cube', choices=['pick_cube', 'peg_insert'])
    p.add_argument('--obs-mode', default='pixels', choices=['pixels', 'state'])
    p.add_argument('--episodes', type=int, default=20)
    p.add_argument('--out', required=True, help='dataset directory (created; appended to if it exists)')
    p.add_argument('--image-size', type=int, default=128)
    p.add_argument('--max-steps', type=int, default=None, help='step limit H (default: the task default)')
    p.add_argument('--object-range', type=float, default=None, help='object xy half-range [m]')
    p.add_argument('--noise', type=float, default=0.0, help='action noise std, fraction of max_joint_delta')
    p.add_argument('--recovery-prob', type=float, default=0.0,
                   help='per-step probability of a perturbation burst the expert recovers from')
    p.add_argument('--noisy', action='store_true', help="use the task's noisy-demo preset (~60-80%% success)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--only-success', action='store_true', help='keep only successful episodes')
    p.add_argument('--max-attempts', type=int, default=None,
                   help='give up after this many rollouts (default: 5x episodes with --only-success)')
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    noise, recovery = args.noise, args.recovery_prob
    if args.noisy:
        from poco_sim.expert import NOISY
        noise, recovery = NOISY[args.task]['noise_std'], NOISY[args.task]['recovery_prob']
    try:
        meta = collect(args.task, args.obs_mode, args.episodes, args.out, image_size=args.image_size,
                       max_steps=args.max_steps, object_range=args.object_range, noise_std=noise,
                       recovery_prob=recovery, seed=args.seed, only_success=args.only_success,
                       max_attempts=args.max_attempts)
    except (ValueError, RuntimeError) as e:
        print(f'collect_demos: error: {e}', file=sys.stderr)
        return 1
    print(f'[collect_demos] {args.out}: {meta["num_episodes"]} episodes, {meta["num_success"]} successful')
    return 0


if __name__ == '__main__':
    sys.exit(main())
