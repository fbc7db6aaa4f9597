"""Console scripts `pretrain` (offline BC from an episode dataset) and `evaluate` (run a checkpoint in the sim).

    pretrain --dataset data/demos --out runs/pick/pretrained [--steps 20000] [--preset table3_pick_cube]
    evaluate runs/pick/pretrained --episodes 20 [--task pick_cube]

`pretrain` writes an agent checkpoint `<out>.safetensors` + `<out>.json` (the learner's `initial_checkpoint`)
and the actor alone as `<out>_actor.safetensors` + `<out>_actor.json` (the policy node's `initial_weights`);
the actor metadata also records how observations were built so `evaluate` can rebuild the same pipeline.
No ROS imports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from poco_policy.contract import ACTION_DIM


def _set_override(s: str) -> tuple[str, Any]:
    if '=' not in s:
        raise argparse.ArgumentTypeError(f'--set expects key=value, got {s!r}')
    k, v = s.split('=', 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def _fail(msg: str, code: int = 2) -> int:
    print(f'error: {msg}', file=sys.stderr)
    return code


def _encoder_cfg(obs: dict):
    from poco_policy.encoder import EncoderConfig
    return EncoderConfig(checkpoint_path=obs.get('encoder_checkpoint', ''), feature_dim=int(obs['feature_dim']),
                         image_size=int(obs['image_size']))


def _assembler(obs: dict):
    from poco_policy.observation import ObservationAssembler, ObservationConfig
    return ObservationAssembler(ObservationConfig(
        obs_mode=obs['obs_mode'], cameras=tuple(obs.get('cameras', ('front', 'wrist'))),
        state_dim=int(obs.get('state_dim', 0)),
        encoder=_encoder_cfg(obs) if obs['obs_mode'] == 'pixels' else None))


# ------------------------------------------------------------------------------------------------ pretrain
def pretrain_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='pretrain', description='Offline BC pre-training (Stage I) from an episode '
                                 'dataset directory; writes an agent checkpoint and an actor weights file.')
    ap.add_argument('--dataset', required=True, help='episode dataset directory (meta.json + episode_*.npz)')
    ap.add_argument('--out', required=True, help='output prefix, e.g. runs/pick/pretrained')
    ap.add_argument('--steps', type=int, default=None, help='BC steps (default: the preset\'s pretrain_steps)')
    ap.add_argument('--preset', default='', help='AgentConfig preset, e.g. table3_pick_cube')
    ap.add_argument('--set', dest='overrides', action='append', type=_set_override, default=[],
                    metavar='KEY=VALUE', help='AgentConfig override (repeatable), e.g. --set horizon=4')
    ap.add_argument('--feature-dim', type=int, default=64, help='encoder features per camera (pixels mode)')
    ap.add_argument('--encoder-checkpoint', default='', help='ResNet-10 safetensors ("" = seeded random trunk)')
    ap.add_argument('--max-joint-delta', type=float, default=None, help='default: from the dataset meta')
    ap.add_argument('--max-episodes', type=int, default=None)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--no-progress', action='store_true')
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(max(1, args.threads))
    from poco_learner.agent import Agent, AgentConfig
    from poco_learner.buffer import BufferConfig, ReplayBuffer
    from poco_learner.dataset import DatasetError, load_into_buffer, read_meta
    from poco_learner.train import pretrain
    from poco_policy.flow_policy import weights_to_bytes
    from poco_policy.observation import ActionScaler

    try:
        meta = read_meta(args.dataset)
    except (DatasetError, OSError) as e:
        return _fail(f'cannot read dataset {args.dataset!r}: {e}')
    obs_cfg = {'obs_mode': meta['obs_mode'], 'cameras': list(meta.get('cameras') or ['front', 'wrist']),
               'state_dim': int(meta.get('state_dim', 0)), 'feature_dim': args.feature_dim,
               'image_size': int(meta['image_size']), 'encoder_checkpoint': args.encoder_checkpoint,
               'max_joint_delta': float(args.max_joint_delta if args.max_joint_delta is not None
                                        else meta['max_joint_delta']),
               'task': meta.get('task', '')}
    try:
        assembler = _assembler(obs_cfg)
    except ValueError as e:
        return _fail(f'observation set-up from {args.dataset}/meta.json: {e}')
    scaler = ActionScaler(obs_cfg['max_joint_delta'])
    buffer = ReplayBuffer(BufferConfig(capacity=10_000_000), assembler.obs_dim, ACTION_DIM)
    t0 = time.time()
    try:
        n = load_into_buffer(args.dataset, buffer, assembler, scaler, demo=True, max_episodes=args.max_episodes)
    except (DatasetError, ValueError) as e:
        return _fail(f'loading {args.dataset}: {e}')
    if n == 0 or len(buffer) == 0:
        return _fail(f'{args.dataset} has no episodes')
    print(f'loaded {n} episodes, {len(buffer)} steps, obs_dim {assembler.obs_dim} ({time.time() - t0:.1f} s)')

    over = dict(args.overrides)
    over.update(obs_dim=assembler.obs_dim, action_dim=ACTION_DIM, seed=args.seed)
    try:
        cfg = AgentConfig.from_preset(args.preset, **over) if args.preset else AgentConfig.from_json_dict(over)
        agent = Agent(cfg)
    except (KeyError, ValueError, TypeError) as e:
        return _fail(f'agent config: {e}')
    steps = cfg.pretrain_steps if args.steps is None else args.steps
    if steps <= 0:
        return _fail(f'nothing to do: {steps} pre-training steps (use --steps)')
    m = pretrain(agent, buffer, steps, progress=not args.no_progress, rng=args.seed)
    out = args.out
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    agent.save(out)
    payload, wmeta = weights_to_bytes(agent.actor, extra={'update_step': 0, 'phase': 'pretrain',
                                                          'pretrain_steps': steps, 'observation': obs_cfg})
    with open(out + '_actor.safetensors', 'wb') as f:
        f.write(payload)
    with open(out + '_actor.json', 'w') as f:
        json.dump(wmeta, f, indent=1)
    print(f'pre-trained {steps} steps (final BC loss {m.get("bc_loss_avg", m.get("bc_loss", float("nan"))):.4f}); '
          f'wrote {out}.safetensors/.json and {out}_actor.safetensors/.json')
    return 0


# ------------------------------------------------------------------------------------------------ evaluate
class _ActorOnly:
    """`act` for a bare actor weights file (what the policy node runs)."""

    def __init__(self, policy, seed: int):
        import torch
        self.policy, self.torch = policy, torch
        self.gen = torch.Generator().manual_seed(seed)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        torch = self.torch
        x = torch.as_tensor(np.asarray(obs, np.float32)).reshape(1, -1)
        return self.policy.act(x, deterministic, generator=self.gen)[0].numpy()


def _load_actor_meta(prefix: str) -> dict:
    for p in (prefix + '_actor.json', prefix + '.json'):
        if os.path.isfile(p):
            with open(p) as f:
                d = json.load(f)
            if 'observation' in d:
                return d['observation']
    return {}


def evaluate_main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='evaluate', description='Run a checkpoint in the MuJoCo sim for N episodes '
                                 'and print the success rate.')
    ap.add_argument('checkpoint', help='agent checkpoint prefix (from pretrain / the learner) or an actor '
                                       '*_actor.safetensors file')
    ap.add_argument('--episodes', type=int, default=20)
    ap.add_argument('--task', default=None, help='pick_cube | peg_insert (default: recorded at pre-training)')
    ap.add_argument('--obs-mode', default=None, choices=('pixels', 'state'))
    ap.add_argument('--image-size', type=int, default=None)
    ap.add_argument('--feature-dim', type=int, default=None)
    ap.add_argument('--encoder-checkpoint', default=None)
    ap.add_argument('--max-joint-delta', type=float, default=None)
    ap.add_argument('--max-steps', type=int, default=None, help='episode step limit H (default: the task\'s)')
    ap.add_argument('--deterministic', action='store_true', help='zero initial noise instead of sampling')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=2)
    args = ap.parse_args(argv)

    import torch
    torch.set_num_threads(max(1, args.threads))
    from poco_policy.flow_policy import policy_from_bytes
    from poco_policy.observation import ActionScaler

    ck = args.checkpoint
    try:
        if ck.endswith('.safetensors'):                      # bare actor file (+ its .json sidecar)
            with open(ck[:-len('.safetensors')] + '.json') as f:
                wmeta = json.load(f)
            if wmeta.get('format') == 'poco_agent/1':
                raise ValueError('this is an agent checkpoint: pass its prefix (without .safetensors)')
            with open(ck, 'rb') as f:
                actor = _ActorOnly(policy_from_bytes(f.read(), wmeta), args.seed)
            obs_meta = wmeta.get('observation', {})
            horizon, obs_dim = actor.policy.cfg.horizon, actor.policy.cfg.obs_dim
        elif os.path.isfile(ck + '.json') and os.path.isfile(ck + '.safetensors'):
            from poco_learner.agent import Agent
            actor = Agent.load(ck)
            actor.act_gen.manual_seed(args.seed)             # evaluation noise from --seed, not the checkpoint
            obs_meta = _load_actor_meta(ck)
            horizon, obs_dim = actor.cfg.horizon, actor.cfg.obs_dim
        else:
            return _fail(f'no checkpoint at {ck!r} (expected <prefix>.json + <prefix>.safetensors, '
                         f'or an *_actor.safetensors file with its .json)')
    except (OSError, ValueError, KeyError) as e:
        return _fail(f'cannot load {ck!r}: {e}')

    obs_cfg = {'obs_mode': 'pixels', 'cameras': ['front', 'wrist'], 'feature_dim': 64, 'image_size': 128,
               'encoder_checkpoint': '', 'max_joint_delta': 0.05, 'task': 'pick_cube'}
    obs_cfg.update({k: v for k, v in obs_meta.items() if v not in (None, '') or k == 'encoder_checkpoint'})
    for key, val in (('obs_mode', args.obs_mode), ('image_size', args.image_size), ('task', args.task),
                     ('feature_dim', args.feature_dim), ('encoder_checkpoint', args.encoder_checkpoint),
                     ('max_joint_delta', args.max_joint_delta)):
        if val is not None:
            obs_cfg[key] = val
    try:
        from poco_sim.envs import make_env
    except ImportError as e:
        return _fail(f'poco_sim is not available: {e}')
    try:
        env = make_env(obs_cfg['task'], obs_mode=obs_cfg['obs_mode'], image_size=int(obs_cfg['image_size']),
                       max_steps=args.max_steps, seed=args.seed, max_joint_delta=float(obs_cfg['max_joint_delta']),
                       cameras=tuple(obs_cfg['cameras']))
        if obs_cfg['obs_mode'] == 'state':
            first, _ = env.reset(seed=args.seed)
            obs_cfg['state_dim'] = int(np.asarray(first['state']).shape[-1])
        assembler = _assembler(obs_cfg)
    except ValueError as e:
        return _fail(str(e))
    if assembler.obs_dim != obs_dim:
        return _fail(f'observation size {assembler.obs_dim} from {obs_cfg} does not match the checkpoint '
                     f'obs_dim {obs_dim}: pass the settings used at pre-training (--obs-mode/--feature-dim)')
    scaler = ActionScaler(float(obs_cfg['max_joint_delta']))
    successes = 0
    t0 = time.time()
    for ep in range(args.episodes):
        obs, info = env.reset(seed=args.seed + ep)
        done, steps, success = False, 0, False
        while not done:
            chunk = actor.act(assembler.assemble(obs), deterministic=args.deterministic)   # [T, A] normalised
            for k in range(horizon):
                obs, reward, terminated, truncated, info = env.step(scaler.denormalize(chunk[k]))
                steps += 1
                success = success or bool(info.get('success', reward > 0))
                if terminated or truncated:
                    done = True
                    break
        successes += int(success)
        print(f'episode {ep + 1:3d}/{args.episodes}: {"success" if success else "failure"} after {steps} steps')
    env.close()
    rate = successes / max(1, args.episodes)
    print(f'success rate {rate:.3f} ({successes}/{args.episodes}) on {obs_cfg["task"]} '
          f'[{time.time() - t0:.0f} s]')
    return 0


if __name__ == '__main__':
    sys.exit(pretrain_main())
