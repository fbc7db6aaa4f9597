"""The learner's brain without ROS: buffer + episode assembly + agent + background training thread.

The learner node is a thin shell around `Learner`; tests can drive `Learner` directly.
Phases: waiting -> pretrain -> warmup -> poco. Counters and the phase survive restarts through
`<run_dir>/learner_state.json` next to the agent checkpoint; the buffer reloads from `<run_dir>/buffer`.
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from poco_learner.episodes import EpisodeAssembler, RewardConfig

ACTION_DIM = 7


@dataclass
class LearnerConfig:
    """The learner node's parameters (YAML keys = ROS parameter names)."""
    run_dir: str = 'runs/default'        # buffer/, checkpoints/, learner_state.json
    demo_dataset: str = ''               # episode dataset directory loaded as demos (once per run dir)
    initial_checkpoint: str = ''         # agent checkpoint prefix to start from (skips pre-training)
    preset: str = ''                     # AgentConfig preset name ('' = defaults)
    algorithm: str = ''                  # override: poco | poco_noclip | bc | qc_best_of_n
    obs_mode: str = 'pixels'
    feature_dim: int = 64
    image_size: int = 128
    encoder_checkpoint: str = ''
    max_joint_delta: float = 0.05
    horizon: int = 0                     # 0 = from preset
    hidden_dim: int = 0                  # 0 = from preset
    hidden_layers: int = 0
    batch_size: int = 0
    num_candidates: int = 0
    flow_steps: int = 0
    critic_warmup_steps: int = -1        # -1 = from preset
    eta: float = -1.0                    # softmax temperature on Q (E-step); <0 = from preset
    beta: float = -1.0                   # posterior guidance scale; <0 = from preset
    zeta: float = -1.0                   # clip threshold of the candidate loss; <0 = from preset
    bc_data: str = ''                    # data term: 'buffer' (paper) | 'demos'; '' = from preset
    pretrain_steps: int = 2000
    utd_ratio: float = 1.0               # gradient updates per new online step
    publish_every: int = 50              # updates between weight publications
    checkpoint_every_s: float = 60.0
    status_rate_hz: float = 1.0
    demo_ratio: float = -1.0             # <0: uniform over all steps
    buffer_capacity: int = 1_000_000
    success_reward: float = 1.0
    step_penalty: float = 0.0
    failure_penalty: float = 0.0
    learn_from_eval: bool = True
    torch_threads: int = 1
    seed: int = 0


class Learner:
    def __init__(self, cfg, log: Callable[[str, str], None] = lambda lvl, s: print(f'[{lvl}] {s}')):
        from poco_policy.observation import ActionScaler
        self.cfg = cfg
        self.log = log
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_prefix = str(self.run_dir / 'checkpoints' / 'latest')
        self.scaler = ActionScaler(cfg.max_joint_delta)
        self.lock = threading.RLock()          # buffer access: ROS callbacks vs train thread
        self.agent_lock = threading.Lock()
        self.publish_fn: Optional[Callable[[int, bytes, dict], None]] = None
        # Called (from the train thread) right after the phase changes, so a status goes out at every
        # transition even when a phase lasts less than one status period.
        self.phase_fn: Optional[Callable[[], None]] = None
        self.buffer = None
        self.agent = None
        self.assembler: Optional[EpisodeAssembler] = None
        self.state = {'phase': 'waiting', 'pretrain_done': 0, 'warmup_done': 0, 'online_updates': 0,
                      'weights_version': 0, 'online_steps_at_start': 0}
        self.losses: dict[str, float] = {}
        self._ups = 0.0
        self._stop = threading.Event()
        self._published_once = False
        self._thread: Optional[threading.Thread] = None
        self._pending: list[tuple] = []  # messages that arrived before the buffer existed
        self._last_ckpt = time.monotonic()
        self._rng = np.random.default_rng(cfg.seed)
        self._resume_or_init()

    # ------------------------------------------------------------------ set-up
    def _buffer_cfg(self):
        from poco_learner.buffer import BufferConfig
        return BufferConfig(capacity=self.cfg.buffer_capacity, directory=str(self.run_dir / 'buffer'),
                            demo_ratio=None if self.cfg.demo_ratio < 0 else self.cfg.demo_ratio)

    def _resume_or_init(self):
        from poco_learner.buffer import ReplayBuffer
        bdir = self.run_dir / 'buffer'
        if ReplayBuffer.exists(str(bdir)):
            self.buffer = ReplayBuffer.load(str(bdir))
            self.log('info', f'resumed buffer: {self.buffer.stats()}')
            self._make_agent(self.buffer.obs_dim)
            return
        if self.cfg.demo_dataset:
            from poco_learner.dataset import read_meta
            meta = read_meta(self.cfg.demo_dataset)
            self._ensure(self._obs_dim_from_meta(meta))
            from poco_learner.dataset import load_into_buffer
            with self.lock:
                n = load_into_buffer(self.cfg.demo_dataset, self.buffer, self._assembler_for(meta), self.scaler,
                                     demo=True)
            self.log('info', f'loaded {n} demo episodes from {self.cfg.demo_dataset}: {self.buffer.stats()}')

    def _obs_dim_from_meta(self, meta: dict) -> int:
        if meta.get('obs_mode', self.cfg.obs_mode) != self.cfg.obs_mode:
            raise ValueError(f"demo dataset obs_mode {meta.get('obs_mode')!r} != learner obs_mode {self.cfg.obs_mode!r}")
        if self.cfg.obs_mode == 'pixels':
            return len(meta.get('cameras', ('front', 'wrist'))) * self.cfg.feature_dim + 7
        return int(meta['state_dim']) + 7

    def _assembler_for(self, meta: dict):
        from poco_policy.observation import ObservationAssembler, ObservationConfig
        from poco_policy.encoder import EncoderConfig
        return ObservationAssembler(ObservationConfig(
            obs_mode=self.cfg.obs_mode, cameras=tuple(meta.get('cameras', ('front', 'wrist'))),
            state_dim=int(meta.get('state_dim', 0)),
            encoder=EncoderConfig(checkpoint_path=self.cfg.encoder_checkpoint, feature_dim=self.cfg.feature_dim,
                                  image_size=self.cfg.image_size)))

    def _ensure(self, obs_dim: int):
        """Create buffer + agent once the observation size is known (from demos or the first transition)."""
        if self.buffer is None:
            from poco_learner.buffer import ReplayBuffer
            self.buffer = ReplayBuffer(self._buffer_cfg(), obs_dim, ACTION_DIM)
        if self.agent is None:
            self._make_agent(obs_dim)

    def _agent_config(self, obs_dim: int):
        from poco_learner.agent import AgentConfig
        c = self.cfg
        over = {'obs_dim': obs_dim, 'action_dim': ACTION_DIM, 'seed': c.seed}
        if c.algorithm:
            over['algorithm'] = c.algorithm
        if c.horizon > 0:
            over['horizon'] = c.horizon
        if c.hidden_dim > 0:
            dims = (c.hidden_dim,) * (c.hidden_layers if c.hidden_layers > 0 else 4)
            over['actor_hidden_dims'] = over['critic_hidden_dims'] = dims
        for name in ('batch_size', 'num_candidates', 'flow_steps'):
            if getattr(c, name) > 0:
                over[name] = getattr(c, name)
        if c.critic_warmup_steps >= 0:
            over['critic_warmup_steps'] = c.critic_warmup_steps
        for name in ('eta', 'beta', 'zeta'):
            if getattr(c, name) >= 0:
                over[name] = getattr(c, name)
        if c.bc_data:
            over['bc_data'] = c.bc_data
        return AgentConfig.from_preset(c.preset, **over) if c.preset else AgentConfig(**over)

    def _make_agent(self, obs_dim: int):
        from poco_learner.agent import Agent
        state_file = self.run_dir / 'learner_state.json'
        if Path(self.ckpt_prefix + '.json').exists():
            self.agent = Agent.load(self.ckpt_prefix)
            if state_file.exists():
                self.state.update(json.loads(state_file.read_text()))
            self.log('info', f"resumed checkpoint {self.ckpt_prefix} (phase {self.state['phase']}, "
                             f"weights v{self.state['weights_version']})")
        elif self.cfg.initial_checkpoint:
            self.agent = Agent.load(self.cfg.initial_checkpoint)
            self.state['pretrain_done'] = self.cfg.pretrain_steps  # pre-trained elsewhere
            self.log('info', f'starting from pre-trained checkpoint {self.cfg.initial_checkpoint}')
        else:
            self.agent = Agent(self._agent_config(obs_dim))
        vfile = self.run_dir / 'weights_version'
        if vfile.exists():  # versions only grow, even across crashes between checkpoints
            self.state['weights_version'] = max(self.state['weights_version'], int(vfile.read_text() or 0))
        if self.agent.cfg.obs_dim != obs_dim:
            raise ValueError(f'agent obs_dim {self.agent.cfg.obs_dim} != data obs_dim {obs_dim}')
        self.assembler = EpisodeAssembler(
            self.buffer, self._obs_vector, self.scaler.normalize,
            RewardConfig(self.cfg.success_reward, self.cfg.step_penalty, self.cfg.failure_penalty),
            learn_from_eval=self.cfg.learn_from_eval, lock=self.lock)
        for kind, args in self._pending:
            getattr(self.assembler, kind)(*args)
        self._pending.clear()

    @staticmethod
    def _obs_vector(features: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        if proprio.size != 7:
            raise ValueError(f'proprio must have 7 values, got {proprio.size}')
        obs = np.concatenate([features, proprio]).astype(np.float32)
        if not np.isfinite(obs).all():
            raise ValueError('observation contains NaN or inf')
        return obs

    # ------------------------------------------------------------------ inputs (ROS callback thread)
    def on_transition(self, episode_id, step_index, features, proprio, action, intervention, final_observation):
        if self.assembler is None:
            obs_dim = len(features) + len(proprio)
            if obs_dim <= 7 or obs_dim > 100_000:
                self.log('warn', f'dropping transition with implausible observation size {obs_dim}')
                return
            self._ensure(obs_dim)
        if len(features) + len(proprio) != self.buffer.obs_dim:
            self.log('warn', f'dropping transition: observation size {len(features) + len(proprio)} '
                             f'!= {self.buffer.obs_dim}')
            return
        self.assembler.on_transition(episode_id, step_index, features, proprio, action, intervention,
                                     final_observation)

    def on_event(self, episode_id, event, step_count, evaluation):
        if self.assembler is None:
            self._pending.append(('on_event', (episode_id, event, step_count, evaluation)))
            return
        self.assembler.on_event(episode_id, event, step_count, evaluation)

    def poll(self):
        if self.assembler is not None:
            self.assembler.poll()

    # ------------------------------------------------------------------ training thread
    def start(self):
        self._thread = threading.Thread(target=self._train_loop, name='train', daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.checkpoint()
        if self.buffer is not None:
            with self.lock:
                self.buffer.close()

    def _sample(self, batch_size: int):
        a = self.agent.cfg
        with self.lock:
            return self.buffer.sample(batch_size, a.horizon, a.gamma, self._rng)

    def _publish(self):
        from poco_policy.flow_policy import BestOfN, weights_to_bytes
        a = self.agent.cfg
        # the QC baseline acts with the argmax-Q of N chunks: its critic goes to the robot with the actor
        sel = (BestOfN(self.agent.critic, a.num_candidates, a.critic_agg)
               if a.algorithm == 'qc_best_of_n' and self.state['phase'] != 'pretrain' else None)
        with self.agent_lock:
            payload, meta = weights_to_bytes(self.agent.actor, best_of_n=sel)
        self.state['weights_version'] += 1
        self._published_once = True
        meta['update_step'] = self.state['online_updates']
        meta['phase'] = self.state['phase']
        # persist the version now: after a crash the next version must still be newer than what robots run
        self._atomic_text(self.run_dir / 'weights_version', str(self.state['weights_version']))
        if self.publish_fn is not None:
            self.publish_fn(self.state['weights_version'], payload, meta)
        self.log('info', f"published weights v{self.state['weights_version']} ({self.state['phase']}, "
                         f"{len(payload) / 1e6:.1f} MB)")

    def _online_steps(self) -> int:
        return int(self.buffer.stats()['online_steps']) if self.buffer is not None else 0

    def _train_loop(self):
        try:
            self._train_loop_inner()
        except Exception as e:  # surface the error in the status instead of dying silently
            import traceback
            self._set_phase('error')
            self.log('error', f'training thread failed: {e}\n{traceback.format_exc()}')

    def _set_phase(self, phase: str):
        if self.state['phase'] == phase:
            return
        old, self.state['phase'] = self.state['phase'], phase
        self.log('info', f'phase {old} -> {phase}')
        if self.phase_fn is not None:
            try:
                self.phase_fn()
            except Exception as e:  # e.g. the node is shutting down: the status is informational only
                self.log('warn', f'could not announce phase {phase}: {e}')

    def _train_loop_inner(self):
        cfg = self.cfg
        t_window, n_window = time.monotonic(), 0
        while not self._stop.is_set():
            if self.agent is None or self.buffer is None or self.buffer.num_sampleable() == 0:
                time.sleep(0.2)
                continue
            a = self.agent.cfg
            st = self.state
            did = False
            if st['pretrain_done'] < cfg.pretrain_steps:
                self._set_phase('pretrain')
                batch = self._sample(a.batch_size)
                with self.agent_lock:
                    self.losses = self.agent.pretrain_step(batch)
                st['pretrain_done'] += 1
                did = True
                if st['pretrain_done'] % 500 == 0:
                    self.log('info', f"pretrain {st['pretrain_done']}/{cfg.pretrain_steps} "
                                     f"bc={self.losses.get('bc_loss', math.nan):.4f}")
                if st['pretrain_done'] >= cfg.pretrain_steps:
                    self._publish()
                    st['online_steps_at_start'] = self._online_steps()
                    self.checkpoint()
            else:
                if not self._published_once:
                    # resumed / pre-trained elsewhere: (re)announce the weights so robots can act
                    first = st['weights_version'] == 0
                    self._publish()
                    if first:
                        st['online_steps_at_start'] = self._online_steps()
                warm = st['warmup_done'] < a.critic_warmup_steps
                # update-to-data pacing: never more updates than utd_ratio x new online steps (+ warm-up)
                new_steps = self._online_steps() - st['online_steps_at_start']
                allowed = self._allowed_updates(new_steps)
                if warm or st['warmup_done'] + st['online_updates'] < allowed:
                    self._set_phase('warmup' if warm else 'poco')
                    batch = self._sample(a.batch_size)
                    with self.agent_lock:
                        self.losses = self.agent.update(batch, actor_frozen=warm)
                    if warm:
                        st['warmup_done'] += 1
                    else:
                        st['online_updates'] += 1
                        if st['online_updates'] % cfg.publish_every == 0:
                            self._publish()
                    did = True
            if did:
                n_window += 1
            else:
                time.sleep(0.02)
            now = time.monotonic()
            if now - t_window > 2.0:
                self._ups = n_window / (now - t_window)
                t_window, n_window = now, 0
            if now - self._last_ckpt > cfg.checkpoint_every_s:
                self.checkpoint()

    def pacing(self) -> dict:
        """The update-to-data contract, for the sim graph's clock (sim_node waits while `behind`).

        behind: the learner wants the environment to wait (pre-training, or fewer updates done than
        utd_ratio x online env steps received, beyond a slack of one chunk). env_steps: online steps received
        since the online phase began; updates: online updates done (critic warm-up included);
        updates_per_env_step: achieved ratio (what an operator on the wall clock watches)."""
        st = self.state
        if self.agent is None or st['phase'] in ('waiting', 'error'):
            return {'behind': False, 'env_steps': 0, 'updates': 0, 'updates_per_env_step': math.nan}
        steps = max(0, self._online_steps() - st['online_steps_at_start'])
        done = st['warmup_done'] + st['online_updates']
        behind = st['phase'] == 'pretrain' or done < self._allowed_updates(steps) - self._pace_slack()
        return {'behind': bool(behind), 'env_steps': int(steps), 'updates': int(done),
                'updates_per_env_step': done / steps if steps else math.nan}

    def _allowed_updates(self, new_steps: int) -> float:
        return self.agent.cfg.critic_warmup_steps + self.cfg.utd_ratio * new_steps

    def _pace_slack(self) -> float:
        return max(1.0, self.cfg.utd_ratio * self.agent.cfg.horizon)

    # ------------------------------------------------------------------ persistence + status
    def checkpoint(self):
        if self.agent is None:
            return
        Path(self.ckpt_prefix).parent.mkdir(parents=True, exist_ok=True)
        with self.agent_lock:
            self.agent.save(self.ckpt_prefix)
        self._write_state()
        if self.buffer is not None:
            with self.lock:
                self.buffer.flush()
        self._last_ckpt = time.monotonic()

    def _write_state(self):
        self._atomic_text(self.run_dir / 'learner_state.json', json.dumps(self.state, indent=1))

    @staticmethod
    def _atomic_text(path: Path, text: str):
        tmp = path.with_name(path.name + '.tmp')
        tmp.write_text(text)
        os.replace(tmp, path)

    def buffer_len(self) -> int:
        return len(self.buffer) if self.buffer is not None else 0

    def status(self) -> dict:
        with self.lock:  # also called from the train thread (phase changes) while callbacks append
            s = self.buffer.stats() if self.buffer is not None else {}
        st = self.state
        phase_step = {'pretrain': st['pretrain_done'], 'warmup': st['warmup_done'],
                      'poco': st['online_updates']}.get(st['phase'], 0)
        return {
            'phase': st['phase'],
            'algorithm': self.agent.cfg.algorithm if self.agent is not None else '',
            'phase_step': phase_step,
            'update_step': st['pretrain_done'] + st['warmup_done'] + st['online_updates'],
            'critic_loss': self.losses.get('critic_loss', math.nan),
            'actor_loss': self.losses.get('actor_loss', math.nan),
            'bc_loss': self.losses.get('bc_loss', math.nan),
            'candidate_loss': self.losses.get('candidate_loss', math.nan),
            'q_mean': self.losses.get('q_mean', math.nan),
            'buffer_steps': s.get('steps', 0), 'demo_steps': s.get('demo_steps', 0),
            'online_steps': s.get('online_steps', 0), 'episodes': s.get('episodes', 0),
            'recent_success_rate': self.assembler.recent_success_rate() if self.assembler else math.nan,
            'weights_version': st['weights_version'],
            'updates_per_second': self._ups,
        }
