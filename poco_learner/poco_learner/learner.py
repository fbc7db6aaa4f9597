"""The learner's brain without ROS: buffer + episode assembly + agent + background training thread.

The learner node is a thin shell around `Learner`; tests can drive `Learner` directly.
Phases: waiting -> pretrain -> warmup -> poco. Counters and the phase survive restarts through
`<run_dir>/learner_state.json` next to the agent checkpoint; the buffer reloads from `<run_dir>/buffer`.
`<run_dir>/progress.json` (the update counters, rewritten atomically every PROGRESS_EVERY_S, a few hundred
bytes) tells a restarted learner how far the previous run got past its last checkpoint: it logs
`resumed at update U (checkpoint); the previous run reached V: V-U updates lost` and reports it in status().
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np

from poco_learner.agent import AgentConfig
from poco_learner.buffer import BufferConfig
from poco_learner.episodes import EpisodeAssembler, RewardConfig
from poco_policy.config import fresh_run_dir
from poco_policy.contract import ACTION_DIM, MAX_JOINT_DELTA
from poco_policy.encoder import EncoderConfig
PROGRESS_EVERY_S = 0.25  # how often the update counters go to <run_dir>/progress.json (a small atomic write)


@dataclass
class LearnerConfig:
    """The learner node's parameters. ROS parameter names = these field names; the components' own configs
    are nested under dotted names (`agent.eta`, `buffer.demo_ratio`, `reward.success_reward`,
    `encoder.feature_dim`), the same names in YAML (nested mappings) and on the command line.

    `preset` names an AgentConfig preset (agent.PRESETS): it fills every `agent.*` value the user did not set
    explicitly (params file, --set, launch argument); explicit values win. The resolved configuration is
    logged at start, written to `<run_dir>/learner_config.json` and recorded in every checkpoint."""
    # buffer/, checkpoints/, learner_state.json. '' = a fresh runs/<timestamp> (never an existing folder);
    # an existing run folder is resumed only when named here explicitly
    run_dir: str = ''
    demo_dataset: str = ''               # episode dataset directory loaded as demos (once per run dir)
    initial_checkpoint: str = ''         # agent checkpoint prefix to start from (skips pre-training)
    preset: str = ''                     # agent preset (poco_learner/presets.py); '' = AgentConfig defaults
    obs_mode: str = 'pixels'
    # observation size (features + 7 proprio) when neither a demo dataset nor a stored buffer gives it;
    # never taken from the first message (one bad message would fix it for the whole run)
    obs_dim: int = 0
    max_joint_delta: float = MAX_JOINT_DELTA  # rad per tick: the action normalisation (must equal the policy's)
    utd_ratio: float = 1.0               # gradient updates per new online env step (critic warm-up included)
    publish_every: int = 50              # actor updates between weight publications
    checkpoint_every_s: float = 5.0      # a kill -9 loses at most this much training (plus the buffer: nothing)
    status_rate_hz: float = 1.0
    diagnostics_every: int = 100         # updates per row of diagnostics.csv
    learn_from_eval: bool = True
    torch_threads: int = 1
    seed: int = 0                        # agent initialisation and sampling (AgentConfig.seed)
    agent: AgentConfig = field(default_factory=AgentConfig)
    # half of each batch from the demonstrations (RLPD-style); stored actions are normalised, so |a| <= 1
    buffer: BufferConfig = field(default_factory=lambda: BufferConfig(demo_ratio=0.5, action_bound=1.0))
    reward: RewardConfig = field(default_factory=RewardConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)


# agent fields the learner sets from the data or from its own settings, never from a preset or the user
_DERIVED_AGENT_FIELDS = ('obs_dim', 'action_dim', 'preset', 'seed')


def resolve_agent_config(cfg: LearnerConfig, explicit: Optional[Iterable[str]] = None) -> AgentConfig:
    """The effective AgentConfig: defaults <- preset <- explicitly set `agent.*` values.

    explicit: the `agent.<field>` names the user set (the node knows them from rclpy's overrides). None
    (plain Python use): every agent field that differs from the AgentConfig default counts as explicit."""
    default = AgentConfig()
    if explicit is None:
        names = {f.name for f in dataclasses.fields(AgentConfig)
                 if getattr(cfg.agent, f.name) != getattr(default, f.name)}
    else:
        names = {n[len('agent.'):] for n in explicit if n.startswith('agent.')}
    names -= set(_DERIVED_AGENT_FIELDS)
    over = {n: getattr(cfg.agent, n) for n in names}
    over['seed'] = cfg.seed
    if cfg.preset:
        return AgentConfig.from_preset(cfg.preset, **over)
    return dataclasses.replace(default, **over)


def effective_parameters(params: dict) -> dict:
    """A learner's ROS parameters (flat, dotted) with every `agent.*` value resolved (defaults <- preset <-
    the given values): what the node will train with. The runner writes it to params/learner.effective.yaml."""
    from poco_policy.config import flat_dict, from_dict
    cfg = from_dict(LearnerConfig, dict(params))
    agent = resolve_agent_config(cfg, explicit=set(params))
    out = dict(params)
    out.update({f'agent.{k}': v for k, v in flat_dict(agent).items()})
    return out


class Learner:
    def __init__(self, cfg: LearnerConfig, log: Callable[[str, str], None] = lambda lvl, s: print(f'[{lvl}] {s}'),
                 explicit: Optional[Iterable[str]] = None):
        from poco_policy.observation import ActionScaler
        self.cfg = cfg
        self.log = log
        if not cfg.run_dir:  # the default is a new folder: an implicit default never resumes another run
            cfg.run_dir = str(fresh_run_dir())
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.ckpt_prefix = str(self.run_dir / 'checkpoints' / 'latest')
        self.scaler = ActionScaler(cfg.max_joint_delta)
        # what this run trains with: the preset filled in under the user's explicit values
        self.agent_cfg = resolve_agent_config(cfg, explicit)
        self.lock = threading.RLock()          # buffer access: ROS callbacks vs train thread
        self.agent_lock = threading.RLock()    # the trainer publishes (under it) from inside an update
        self.publish_fn: Optional[Callable[[int, bytes, dict], None]] = None
        # Called (from the train thread) right after the phase changes, so a status goes out at every
        # transition even when a phase lasts less than one status period.
        self.phase_fn: Optional[Callable[[], None]] = None
        self.buffer = None
        self.agent = None
        self.trainer = None
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
        self._steps_fed = 0                # online env steps already handed to the trainer
        self._diag: list[dict] = []        # metrics of the current diagnostics window
        self._rng = np.random.default_rng(self.agent_cfg.seed)
        self._last_progress = 0.0
        # what a restart found: the checkpoint's update count, the previous run's last recorded one, the loss
        self.resume_report: dict = {}
        self._resume_or_init()

    # ------------------------------------------------------------------ set-up
    def effective_config(self) -> dict:
        """The configuration this run uses (agent values resolved), as plain JSON-able data."""
        from poco_policy.config import to_dict
        d = to_dict(self.cfg)
        d['agent'] = (self.agent.cfg if self.agent is not None else self.agent_cfg).to_json_dict()
        d['buffer']['directory'] = self._buffer_cfg().directory
        return d

    def _record_config(self):
        text = json.dumps(self.effective_config(), indent=1, default=str)
        self._atomic_text(self.run_dir / 'learner_config.json', text)
        a = self.agent.cfg
        self.log('info', f"effective config (preset {a.preset or '-'}): algorithm={a.algorithm} T={a.horizon} "
                         f"batch={a.batch_size} N={a.num_candidates} K={a.flow_steps} "
                         f"actor={list(a.actor_hidden_dims)} critic={list(a.critic_hidden_dims)} "
                         f"warmup={a.critic_warmup_steps} pretrain={a.pretrain_steps} eta={a.eta} beta={a.beta} "
                         f"zeta={a.zeta} bc_data={a.bc_data} H={a.max_episode_steps} utd={self.cfg.utd_ratio} "
                         f"demo_ratio={self.cfg.buffer.demo_ratio} -> {self.run_dir / 'learner_config.json'}")

    def _buffer_cfg(self) -> BufferConfig:
        return dataclasses.replace(self.cfg.buffer, directory=self.cfg.buffer.directory or str(self.run_dir / 'buffer'))

    def _resume_or_init(self):
        from poco_learner.buffer import ReplayBuffer
        bdir = self._buffer_cfg().directory
        if ReplayBuffer.exists(bdir):
            self.buffer = ReplayBuffer.load(bdir, self._buffer_cfg())
            self.log('info', f'resumed buffer: {self.buffer.stats()}')
            self._make_agent(self.buffer.obs_dim)
            return
        if self.cfg.demo_dataset:
            from poco_learner.dataset import read_meta
            meta = read_meta(self.cfg.demo_dataset)
            obs_dim = self._obs_dim_from_meta(meta)
            if 0 < self.cfg.obs_dim != obs_dim:
                raise ValueError(f'obs_dim {self.cfg.obs_dim} contradicts the demo dataset ({obs_dim})')
            self._ensure(obs_dim)
            from poco_learner.dataset import load_into_buffer
            with self.lock:
                n = load_into_buffer(self.cfg.demo_dataset, self.buffer, self._assembler_for(meta), self.scaler,
                                     demo=True)
            self.log('info', f'loaded {n} demo episodes from {self.cfg.demo_dataset}: {self.buffer.stats()}')

    def _obs_dim_from_meta(self, meta: dict) -> int:
        if meta.get('obs_mode', self.cfg.obs_mode) != self.cfg.obs_mode:
            raise ValueError(f"demo dataset obs_mode {meta.get('obs_mode')!r} != learner obs_mode {self.cfg.obs_mode!r}")
        if self.cfg.obs_mode == 'pixels':
            return len(meta.get('cameras', ('front', 'wrist'))) * self.cfg.encoder.feature_dim + 7
        return int(meta['state_dim']) + 7

    def _assembler_for(self, meta: dict):
        from poco_policy.observation import ObservationAssembler, ObservationConfig
        return ObservationAssembler(ObservationConfig(
            obs_mode=self.cfg.obs_mode, cameras=tuple(meta.get('cameras', ('front', 'wrist'))),
            state_dim=int(meta.get('state_dim', 0)), encoder=self.cfg.encoder))

    def _ensure(self, obs_dim: int):
        """Create buffer + agent once the observation size is known (from demos or the first transition)."""
        if self.buffer is None:
            from poco_learner.buffer import ReplayBuffer
            self.buffer = ReplayBuffer(self._buffer_cfg(), obs_dim, ACTION_DIM)
        if self.agent is None:
            self._make_agent(obs_dim)

    def _make_agent(self, obs_dim: int):
        from poco_learner.agent import Agent
        from poco_learner.train import OnlineTrainer
        state_file = self.run_dir / 'learner_state.json'
        if Path(self.ckpt_prefix + '.json').exists():
            self.agent = Agent.load(self.ckpt_prefix, device=self.agent_cfg.device)
            if state_file.exists():
                self.state.update(json.loads(state_file.read_text()))
            self.log('info', f"resumed checkpoint {self.ckpt_prefix} (phase {self.state['phase']}, "
                             f"weights v{self.state['weights_version']})")
            self._report_resume('checkpoint')
        elif (self.run_dir / 'progress.json').exists():
            # killed before its first checkpoint: everything the previous run trained is redone
            self._report_resume('no checkpoint')
        elif self.cfg.initial_checkpoint:
            self.agent = Agent.load(self.cfg.initial_checkpoint, device=self.agent_cfg.device)
            self.state['pretrain_done'] = self.agent.cfg.pretrain_steps  # pre-trained elsewhere
            self.log('info', f'starting from pre-trained checkpoint {self.cfg.initial_checkpoint}')
        else:
            self.agent = Agent(dataclasses.replace(self.agent_cfg, obs_dim=obs_dim, action_dim=ACTION_DIM))
        vfile = self.run_dir / 'weights_version'
        if vfile.exists():  # versions only grow, even across crashes between checkpoints
            self.state['weights_version'] = max(self.state['weights_version'], int(vfile.read_text() or 0))
        if self.agent.cfg.obs_dim != obs_dim:
            raise ValueError(f'agent obs_dim {self.agent.cfg.obs_dim} != data obs_dim {obs_dim}')
        self.assembler = EpisodeAssembler(
            self.buffer, self._obs_vector, self.scaler.normalize, self.cfg.reward,
            learn_from_eval=self.cfg.learn_from_eval, lock=self.lock)
        # the one training loop of the project (train.OnlineTrainer): updates paced by new env steps, critic
        # warm-up (actor frozen) first; it samples through a locked view of the buffer
        self.trainer = OnlineTrainer(self.agent, _LockedBuffer(self.buffer, self.lock), utd_ratio=self.cfg.utd_ratio,
                                     on_policy_update=self._on_policy_update, rng=self._rng)
        self._steps_fed = self._online_steps_since_start()   # steps before a restart were paid for already
        # ... except the updates a kill lost after the last checkpoint (and steps stored after it): the data
        # paid for them, pacing() counts them as owed (the sim graph's clock waits for them), so the trainer
        # redoes them; without this the sim would wait forever for updates the trainer thinks are done
        st = self.state
        owed = self._allowed_updates(self._steps_fed) - (st['warmup_done'] + st['online_updates'])
        if (self.resume_report and self.cfg.utd_ratio > 0 and owed >= 1
                and st['pretrain_done'] >= self.agent.cfg.pretrain_steps):
            self.trainer.add_env_steps(owed / self.cfg.utd_ratio)
            self.log('info', f'redoing {int(owed)} updates the stored env steps paid for (utd {self.cfg.utd_ratio:g})')
        self._record_config()
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
        """One executed step. Raises BadInput (counted and dropped by the node) when its observation size
        does not match the configured one, or when no size is configured yet."""
        from poco_policy.runtime import BadInput
        size = len(features) + len(proprio)
        if self.assembler is None:
            if self.cfg.obs_dim <= 0:
                raise BadInput('observation size unknown', 'set the learner\'s obs_dim or demo_dataset: the '
                                                           'observation size is never taken from a message')
            self._ensure(self.cfg.obs_dim)
        if size != self.buffer.obs_dim:
            raise BadInput('observation size', f'observation size {size} != {self.buffer.obs_dim}')
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

    def _on_policy_update(self, agent):
        # called by the trainer after every actor update (same thread)
        if (agent.counters['actor_updates']) % self.cfg.publish_every == 0:
            self._publish()

    def _online_steps(self) -> int:
        return int(self.buffer.stats()['online_steps']) if self.buffer is not None else 0

    def _online_steps_since_start(self) -> int:
        return max(0, self._online_steps() - self.state['online_steps_at_start'])

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
        """Stage I through train.pretrain, Stage II through train.OnlineTrainer, in small slices so that
        stop requests, checkpoints and status stay responsive."""
        from poco_learner.train import pretrain
        t_window, n_window = time.monotonic(), 0
        while not self._stop.is_set():
            if self.agent is None or self.buffer is None or self.buffer.num_sampleable() == 0:
                time.sleep(0.2)
                continue
            a = self.agent.cfg
            st = self.state
            did = 0
            if st['pretrain_done'] < a.pretrain_steps:
                self._set_phase('pretrain')
                n = min(25, a.pretrain_steps - st['pretrain_done'])
                with self.agent_lock:
                    self.losses = pretrain(self.agent, self.trainer.buffer, n, progress=False, rng=self._rng)
                before = st['pretrain_done']
                st['pretrain_done'] += n
                did = n
                if st['pretrain_done'] // 500 > before // 500:
                    self.log('info', f"pretrain {st['pretrain_done']}/{a.pretrain_steps} "
                                     f"bc={self.losses.get('bc_loss', math.nan):.4f}")
                if st['pretrain_done'] >= a.pretrain_steps:
                    st['online_steps_at_start'] = self._online_steps()
                    self._steps_fed = 0
                    self._publish()          # announced as pre-trained weights (phase 'pretrain')
                    self.checkpoint()
            else:
                if not self._published_once:
                    # resumed / pre-trained elsewhere: (re)announce the weights so robots can act
                    first = st['weights_version'] == 0
                    self._publish()
                    if first:
                        st['online_steps_at_start'] = self._online_steps()
                        self._steps_fed = 0
                self._set_phase('warmup' if self.agent.in_critic_warmup else 'poco')
                new = self._online_steps_since_start() - self._steps_fed
                if new > 0:
                    self._steps_fed += new
                    self.trainer.add_env_steps(new)
                with self.agent_lock:
                    ms = self.trainer.run_pending(max_updates=5)
                for m in ms:
                    self._record_update(m)
                did = len(ms)
            if did:
                n_window += did
            else:
                time.sleep(0.01)
            now = time.monotonic()
            if now - t_window > 2.0:
                self._ups = n_window / (now - t_window)
                t_window, n_window = now, 0
            if now - self._last_ckpt > self.cfg.checkpoint_every_s:
                self.checkpoint()
            elif did and now - self._last_progress > PROGRESS_EVERY_S:
                self._write_progress()

    def _record_update(self, m: dict):
        self.losses = m
        st = self.state
        if m.get('phase_warmup'):
            st['warmup_done'] += 1
        else:
            st['online_updates'] += 1
        self._diag.append(m)
        if len(self._diag) >= self.cfg.diagnostics_every:
            self._write_diagnostics()

    def _write_diagnostics(self):
        """One row of diagnostics.csv (means over the window) and a refreshed diagnostics.png."""
        from poco_learner.diagnostics import append_row, plot_diagnostics
        rows, self._diag = self._diag, []
        p = self.pacing()
        row = {'wall_time': round(time.time(), 2), 'phase': self.state['phase'], 'env_steps': p['env_steps'],
               'updates': p['updates'], 'updates_per_env_step': p['updates_per_env_step'],
               'updates_per_second': round(self._ups, 3)}
        row.update(summarise(rows))
        path = self.run_dir / 'diagnostics.csv'
        append_row(path, row)
        try:
            plot_diagnostics(path, self.run_dir / 'diagnostics.png')
        except Exception as e:  # a plot must never stop training
            self.log('warn', f'diagnostics plot failed: {e}')

    # ------------------------------------------------------------------ persistence + status
    def checkpoint(self):
        if self.agent is None:
            return
        Path(self.ckpt_prefix).parent.mkdir(parents=True, exist_ok=True)
        with self.agent_lock:
            self.agent.save(self.ckpt_prefix, extra={'learner_config': self.effective_config()})
        self._write_state()
        self._write_progress()
        if self.buffer is not None:
            with self.lock:
                self.buffer.flush()
        self._last_ckpt = time.monotonic()

    def total_updates(self) -> int:
        st = self.state
        return int(st['pretrain_done'] + st['warmup_done'] + st['online_updates'])

    def _write_progress(self):
        """The update counters as far as this run got (cheap: a few hundred bytes, atomic). A restart compares
        them with its checkpoint to report the updates a kill lost."""
        st = self.state
        d = {'updates': self.total_updates(), 'pretrain_done': st['pretrain_done'],
             'warmup_done': st['warmup_done'], 'online_updates': st['online_updates'], 'phase': st['phase'],
             'weights_version': st['weights_version'], 'wall_time': round(time.time(), 3), 'pid': os.getpid()}
        self._atomic_text(self.run_dir / 'progress.json', json.dumps(d))
        self._last_progress = time.monotonic()

    def _report_resume(self, source: str):
        """One line: where this run resumes, where the previous one got to, how many updates are lost."""
        u = self.total_updates()
        try:
            prev = json.loads((self.run_dir / 'progress.json').read_text())
            v = int(prev['updates'])
        except (OSError, ValueError, KeyError, TypeError):
            v = u   # no (readable) progress record: nothing known beyond the checkpoint
            prev = {}
        lost = max(0, v - u)
        self.resume_report = {'resumed_at_update': u, 'source': source, 'previous_run_reached': v,
                              'updates_lost': lost}
        if prev.get('wall_time'):
            self.resume_report['previous_run_last_seen'] = prev['wall_time']
        self.log('info', f'resumed at update {u} ({source}); the previous run reached {v}: {lost} updates lost')

    def _write_state(self):
        self._atomic_text(self.run_dir / 'learner_state.json', json.dumps(self.state, indent=1))

    @staticmethod
    def _atomic_text(path: Path, text: str):
        tmp = path.with_name(path.name + '.tmp')
        tmp.write_text(text)
        os.replace(tmp, path)

    def buffer_len(self) -> int:
        return len(self.buffer) if self.buffer is not None else 0

    def pacing(self) -> dict:
        """The update-to-data contract, for the sim graph's clock (sim_node waits while `behind`).

        behind: the learner wants the environment to wait (pre-training, or fewer updates done than
        utd_ratio x online env steps received, beyond a slack of one chunk). env_steps: online steps received
        since the online phase began; updates: online updates done (critic warm-up included);
        updates_per_env_step: achieved ratio (what an operator on the wall clock watches)."""
        st = self.state
        if self.agent is None or st['phase'] in ('waiting', 'error'):
            return {'behind': False, 'env_steps': 0, 'updates': 0, 'updates_per_env_step': math.nan}
        steps = self._online_steps_since_start()
        done = st['warmup_done'] + st['online_updates']
        behind = st['phase'] == 'pretrain' or done < self._allowed_updates(steps) - self._pace_slack()
        return {'behind': bool(behind), 'env_steps': int(steps), 'updates': int(done),
                'updates_per_env_step': done / steps if steps else math.nan}

    def _allowed_updates(self, new_steps: int) -> float:
        return self.cfg.utd_ratio * new_steps

    def _pace_slack(self) -> float:
        return max(1.0, self.cfg.utd_ratio * self.agent.cfg.horizon)

    def status(self) -> dict:
        with self.lock:  # also called from the train thread (phase changes) while callbacks append
            s = self.buffer.stats() if self.buffer is not None else {}
        st = self.state
        phase_step = {'pretrain': st['pretrain_done'], 'warmup': st['warmup_done'],
                      'poco': st['online_updates']}.get(st['phase'], 0)
        p = self.pacing()
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
            'updates_per_env_step': p['updates_per_env_step'],
            # set after a restart: {'resumed_at_update', 'source', 'previous_run_reached', 'updates_lost'}
            'resume': dict(self.resume_report),
            'updates_lost_at_resume': self.resume_report.get('updates_lost', 0),
        }


def summarise(rows: list[dict]) -> dict[str, float]:
    """Means of the numeric metrics over a window of updates (NaN-free keys only)."""
    from poco_learner.diagnostics import DIAG_KEYS
    out = {}
    for k in DIAG_KEYS:
        v = [float(m[k]) for m in rows if k in m and math.isfinite(float(m[k]))]
        out[k] = float(np.mean(v)) if v else math.nan
    return out


class _LockedBuffer:
    """The replay buffer as the trainer sees it: sampling under the lock the ROS callbacks append under."""

    def __init__(self, buffer, lock):
        self._b, self._lock = buffer, lock

    def sample(self, *args, **kwargs):
        with self._lock:
            return self._b.sample(*args, **kwargs)

    def num_sampleable(self) -> int:
        with self._lock:
            return self._b.num_sampleable()

    def __len__(self) -> int:
        return len(self._b)
