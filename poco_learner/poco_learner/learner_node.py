"""Learner node: stores what the robot did and trains the policy in a background thread.

ROS side (this file): transitions + episode events in, weights + status + pace out. Learning side (no ROS):
ReplayBuffer, EpisodeAssembler, Agent. Phases: pretrain (offline BC on demos, when no pre-trained policy is
given) -> warmup (critic only, actor frozen) -> poco (online updates, paced by the update-to-data ratio).
A restart resumes from the last checkpoint and the on-disk buffer.

Time: the node clock stamps messages (sim time in the sim graph); the timers (status, pace, episode polling,
diagnostics) run on the steady clock, so they keep going while the sim clock stands still waiting for us.
`poco/learner_pace` (poco_msgs/LearnerPace, ~50 Hz) carries `Learner.pacing()`: the sim graph's sim waits while
`behind`; on the wall clock (real robot) LearnerStatus.updates_per_env_step shows whether the learner keeps up.
Inputs: transitions and events are checked here before they reach the buffer; a bad message is counted per
reason (LearnerStatus.dropped_messages, /diagnostics), logged at most every few seconds per reason, dropped.

Several robots (`robots`, a node parameter: robot namespaces relative to the learner's, or absolute; the default
[''] = one robot in the learner's own namespace, as before): the node subscribes every robot's
`<ns>/poco/transition` and `<ns>/poco/episode_event`, stores its episodes under `'<ns>/<episode id>'` (ids from
different robots never collide; one buffer, one trainer), and publishes the same (signed) weights message, the
pace and the status on every robot's own `<ns>/poco/policy_weights` (latched), `<ns>/poco/learner_pace`,
`<ns>/poco/learner_status`: each robot keeps the single-robot contract, no remaps on the robot side.
/diagnostics (1 Hz): phase, weights version, updates, env steps, achieved updates per env step, updates/s,
buffer size/episodes, dropped inputs by reason, and per robot its transitions, episodes and input age.
"""
from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.clock import Clock, ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from poco_msgs.msg import EpisodeEvent, LearnerPace, LearnerStatus, PolicyWeights, Transition

from poco_policy import contract as C
from poco_policy.config import declare_ros_parameters
from poco_policy.ros_init import init_ros, spin
from poco_policy.runtime import BadInput, DropCounter, diagnostics, use_sim_time_from_env
from poco_learner.learner import LearnerConfig

PACE_PERIOD_S = 0.02          # poco/learner_pace at 50 Hz of wall time
MAX_FEATURES = 100_000        # a transition's observation can never be larger than this
END_EVENTS = C.END_EVENT_CODES


def robot_topic(robot: str, topic: str) -> str:
    """A contract topic in a robot's namespace: '' = the learner's own, 'robot0' relative, '/robot0' absolute."""
    robot = robot.strip()
    if not robot:
        return topic
    return f"{'/' if robot.startswith('/') else ''}{robot.strip('/')}/{topic}"


def parse_robots(value) -> list[str]:
    """The `robots` parameter: [''] (one robot, the learner's namespace) or unique non-empty namespaces."""
    robots = [str(r).strip() for r in (value or [''])]
    if robots == [''] or not robots:
        return ['']
    if any(not r.strip('/') for r in robots):
        raise ValueError(f"robots: an empty namespace only alone ([''] = the learner's own), got {robots}")
    bad = [r for r in robots if not all(c.isalnum() or c in '_/' for c in r) or '//' in r]
    if bad:
        raise ValueError(f'robots: {bad} are not ROS namespaces (letters, digits, _ and /)')
    if len(set(r.strip('/') for r in robots)) != len(robots):
        raise ValueError(f'robots: duplicated namespace in {robots}')
    return robots


@dataclasses.dataclass
class LearnerNodeConfig(LearnerConfig):
    """The learner node's parameters: the learning configuration (LearnerConfig: the same names, ROS parameters
    and YAML alike) plus what only this node uses. Those three never reach the learning code, its checkpoints or
    learner_config.json (`learning()` is what the core gets)."""
    weights_key_file: str = ''           # HMAC key file: sign the published weights ('' = unsigned)
    max_input_magnitude: float = 1.0e4   # a transition with a larger |value| is counted and dropped
    robots: tuple = ('',)                # robot namespaces (module docstring); ('',) = one, in our namespace

    def learning(self) -> LearnerConfig:
        return LearnerConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(LearnerConfig)})


class _RobotStats:
    """What the learner got from one robot (for /diagnostics)."""

    def __init__(self):
        self.transitions = 0
        self.episodes = 0          # end events
        self.last_input = math.nan  # monotonic time of the last transition


class LearnerNode(Node):
    def __init__(self, **kwargs):
        super().__init__('learner', **kwargs)
        self.cfg = cfg = declare_ros_parameters(self, LearnerNodeConfig)
        key_file = cfg.weights_key_file
        self.max_input_magnitude = float(cfg.max_input_magnitude)
        self.robots = parse_robots(cfg.robots)
        self.multi = self.robots != ['']
        self.robot_stats = {r: _RobotStats() for r in self.robots}
        from poco_policy.weights import load_key
        self.weights_key = load_key(key_file) if key_file else None  # a bad key file stops the node here
        self.sim_time = use_sim_time_from_env(self)
        self.drops = DropCounter()
        self._log_throttle = DropCounter()  # per-message-kind throttle of the core's warnings
        import torch
        torch.set_num_threads(max(1, cfg.torch_threads))
        from poco_learner.learner import Learner
        kw = {}
        if 'explicit' in inspect.signature(Learner).parameters:  # the names the user set win over a preset
            kw['explicit'] = getattr(self, 'explicit_parameters', None)
        self.core = Learner(cfg.learning(), log=self._log, **kw)
        cfg.run_dir = self.core.cfg.run_dir  # '' became a fresh runs/<timestamp> in the core
        q = C.qos
        self.weights_pubs, self.pace_pubs = [], []
        self.status_pubs = [self.create_publisher(LearnerStatus, C.LEARNER_STATUS, q(C.LEARNER_STATUS))]
        for r in self.robots:
            tag = f'{r}: ' if self.multi else ''
            self.create_subscription(Transition, robot_topic(r, C.TRANSITION),
                                     self._guard(f'{tag}transition', self._per_robot(self.on_transition, r)),
                                     q(C.TRANSITION))
            self.create_subscription(EpisodeEvent, robot_topic(r, C.EPISODE_EVENT),
                                     self._guard(f'{tag}episode_event', self._per_robot(self.on_event, r)),
                                     q(C.EPISODE_EVENT))
            self.weights_pubs.append(self.create_publisher(PolicyWeights, robot_topic(r, C.POLICY_WEIGHTS),
                                                           q(C.POLICY_WEIGHTS)))
            self.pace_pubs.append(self.create_publisher(LearnerPace, robot_topic(r, C.LEARNER_PACE),
                                                        q(C.LEARNER_PACE)))
            if r:
                self.status_pubs.append(self.create_publisher(LearnerStatus, robot_topic(r, C.LEARNER_STATUS),
                                                              q(C.LEARNER_STATUS)))
        self.weights_pub, self.pace_pub, self.status_pub = self.weights_pubs[0], self.pace_pubs[0], self.status_pubs[0]
        self.diag_pub = self.create_publisher(DiagnosticArray, C.DIAGNOSTICS, q(C.DIAGNOSTICS))
        self.core.publish_fn = self.publish_weights
        self.core.phase_fn = self.publish_status
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(1.0 / max(cfg.status_rate_hz, 0.1), self._guard('status', self.publish_status),
                          clock=steady)
        self.create_timer(PACE_PERIOD_S, self._guard('pace', self.publish_pace), clock=steady)
        self.create_timer(0.5, self._guard('poll', self.core.poll), clock=steady)
        self.create_timer(1.0, self._guard('diagnostics', self.publish_diagnostics), clock=steady)
        self.core.start()
        self.get_logger().info(f'learner up: run_dir={cfg.run_dir} buffer={self.core.buffer_len()} steps'
                               + (' weights signed (hmac-sha256)' if self.weights_key is not None else ' weights unsigned')
                               + (' on sim time (/clock)' if self.sim_time else '')
                               + (f' robots {self.robots}' if self.multi else ''))

    # ------------------------------------------------------------------ logging + input guard
    def _log(self, level: str, text: str):
        # One call site per severity (rclpy keys a call site's severity and filters; `.warn` goes through a
        # deprecation wrapper that makes every call one site). Warnings are throttled per kind, by our own
        # throttle: the core warns per dropped message.
        lg = self.get_logger()
        if level == 'error':
            lg.error(text)
        elif level in ('warn', 'warning'):
            suffix = self._log_throttle.drop(text.split(':')[0][:60])
            if suffix is not None:
                lg.warning(f'{text} {suffix}')
        elif level == 'debug':
            lg.debug(text)
        else:
            lg.info(text)

    def _guard(self, what: str, fn):
        """Callbacks never raise: a failure is counted under `what: reason`, logged (throttled per reason)."""
        def guarded(*args):
            try:
                return fn(*args)
            except BadInput as e:
                self._drop(f'{what}: {e.reason}', str(e))
            except Exception as e:  # noqa: BLE001 - no message may take the learner down
                self._drop(f'{what}: {type(e).__name__}', str(e))
        guarded.__name__ = getattr(fn, '__name__', what)
        return guarded

    def _drop(self, reason: str, detail: str):
        suffix = self.drops.drop(reason)
        if suffix is not None:
            self.get_logger().warning(f'dropped {reason}: {detail[:300]} {suffix}')

    # ------------------------------------------------------------------ inputs
    def _per_robot(self, fn, robot: str):
        def cb(m):
            return fn(m, robot)
        cb.__name__ = getattr(fn, '__name__', 'cb')
        return cb

    def episode_key(self, robot: str, episode_id: int):
        """The buffer's episode id: the robot's own id, prefixed with its namespace when there are several."""
        return f"{robot.strip('/')}/{episode_id}" if self.multi else episode_id

    def on_transition(self, m: Transition, robot: str = ''):
        nf, np_, na = len(m.features), len(m.proprio), len(m.action)
        lim = self.max_input_magnitude
        if np_ != 7:
            raise BadInput('proprio size', f'proprio has {np_} values, expected 7')
        if nf == 0 or nf > MAX_FEATURES:
            raise BadInput('features size', f'{nf} features')
        if m.final_observation:
            if na not in (0, 7):
                raise BadInput('action size', f'final observation with {na} action values')
        elif na != 7:
            raise BadInput('action size', f'action has {na} values, expected 7')
        buf = self.core.buffer
        if buf is not None and nf + np_ != buf.obs_dim:
            raise BadInput('observation size', f'observation size {nf + np_} != buffer {buf.obs_dim}')
        for name, values in (('features', m.features), ('proprio', m.proprio), ('action', m.action)):
            a = np.asarray(values, dtype=np.float64)
            if a.size and not np.isfinite(a).all():
                raise BadInput('non-finite', f'{name} contains NaN or inf')
            if a.size and float(np.abs(a).max()) > lim:
                raise BadInput('out of range', f'{name} has |x| = {float(np.abs(a).max()):.3g} > {lim:g}')
        self.core.on_transition(self.episode_key(robot, m.episode_id), m.step_index, m.features, m.proprio,
                                m.action, m.intervention, m.final_observation)
        st = self.robot_stats[robot]
        st.transitions += 0 if m.final_observation else 1
        st.last_input = time.monotonic()

    def on_event(self, m: EpisodeEvent, robot: str = ''):
        if m.event not in (C.EVENT_START, C.EVENT_RESET, *END_EVENTS):
            raise BadInput('unknown event', f'event code {m.event}')
        self.core.on_event(self.episode_key(robot, m.episode_id), m.event, m.step_count, m.evaluation)
        if m.event in END_EVENTS:
            self.robot_stats[robot].episodes += 1

    # ------------------------------------------------------------------ outputs
    def publish_weights(self, version: int, payload: bytes, metadata: dict):
        msg = PolicyWeights()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.version, msg.format = version, 'safetensors'
        msg.sha256 = hashlib.sha256(payload).hexdigest()
        msg.payload = payload
        msg.metadata = json.dumps(metadata)
        if self.weights_key is not None and hasattr(msg, 'signature'):
            from poco_policy.weights import sign
            msg.signature = sign(self.weights_key, version, msg.sha256, msg.metadata)
        for pub in self.weights_pubs:  # the same signed message to every robot (the signature names no topic)
            pub.publish(msg)

    def _pacing(self) -> dict:
        try:
            return self.core.pacing()
        except Exception:  # noqa: BLE001 - e.g. an older core without pacing(): report, never hold the sim
            return {'behind': False, 'env_steps': 0, 'updates': 0, 'updates_per_env_step': math.nan}

    def publish_status(self):
        s = self.core.status()
        pace = self._pacing()
        s.update(updates_per_env_step=pace['updates_per_env_step'], utd_ratio=self.cfg.utd_ratio,
                 dropped_messages=self.drops.total)
        m = LearnerStatus()
        m.header.stamp = self.get_clock().now().to_msg()
        for k, v in s.items():
            if hasattr(m, k):
                setattr(m, k, type(getattr(m, k))(v))
        for pub in self.status_pubs:
            pub.publish(m)

    def publish_pace(self):
        pace = self._pacing()
        m = LearnerPace()
        m.header.stamp = self.get_clock().now().to_msg()
        m.behind = bool(pace['behind'])
        m.env_steps, m.updates = int(pace['env_steps']), int(pace['updates'])
        m.updates_per_env_step = float(pace['updates_per_env_step'])
        m.utd_ratio = float(self.cfg.utd_ratio)
        m.phase = str(self.core.state.get('phase', ''))
        for pub in self.pace_pubs:  # every robot's sim waits for the one learner
            pub.publish(m)

    def diagnostic_values(self) -> dict:
        """What /diagnostics carries (besides the drop counters): the learner's health at a glance."""
        pace = self._pacing()
        core = self.core
        buf = core.buffer
        values = {'phase': core.state.get('phase', ''), 'weights_version': core.state.get('weights_version', 0),
                  'behind': pace['behind'], 'env_steps': pace['env_steps'], 'updates': pace['updates'],
                  'updates_per_env_step': round(float(pace['updates_per_env_step']), 3),
                  'utd_ratio': self.cfg.utd_ratio, 'updates_per_second': round(float(getattr(core, '_ups', 0.0)), 2),
                  'buffer_steps': core.buffer_len(),
                  'buffer_episodes': buf.num_episodes if buf is not None else 0,
                  'episode_gaps_dropped': core.assembler.dropped_messages if core.assembler is not None else 0,
                  'sim_time': self.sim_time, 'robots': ','.join(r or '.' for r in self.robots)}
        now = time.monotonic()
        ids = buf.episode_ids() if (buf is not None and self.multi) else []
        for r, st in self.robot_stats.items():
            p = f"{r.strip('/') or '.'}/"
            values[p + 'transitions'] = st.transitions
            values[p + 'episodes'] = st.episodes
            values[p + 'input_age_s'] = round(now - st.last_input, 2) if st.transitions else ''
            if self.multi:  # its episodes in the buffer (open ones included), by the namespace prefix
                values[p + 'buffer_episodes'] = sum(1 for e in ids if isinstance(e, str) and e.startswith(p))
        return values

    def publish_diagnostics(self):
        failed = self.core.state.get('phase', '') == 'error'
        arr = diagnostics(self.get_clock().now().to_msg(), self.get_fully_qualified_name(),
                          self.diagnostic_values(), self.drops, 'training thread failed (see the log)' if failed else '')
        if failed:
            arr.status[0].level = DiagnosticStatus.ERROR
        self.diag_pub.publish(arr)

    def destroy_node(self):
        self.core.stop()
        if self.drops.total:
            self.get_logger().info(f'dropped inputs: {self.drops.summary()}')
        super().destroy_node()


def main(args=None):
    init_ros(args)
    node = LearnerNode()
    executor = SingleThreadedExecutor()  # callbacks are light; training runs in its own thread
    executor.add_node(node)
    try:
        spin(executor)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
