"""Sim node: the MuJoCo env impersonating the robot on the ROS graph (docs/architecture.md, "ROS graph").

Each tick (control_rate_hz * real_time_factor per wall second) it applies the latest `joint_commands`
(absolute targets, clamped to the joint limits and to measured q +- max_target_step), steps the physics by one
control period, and publishes `joint_states`, `cameras/<name>/image_raw` (pixels mode), `ee_pose`, `sim/state`
(the privileged state vector, which the policy uses in state mode) and, once per episode, `poco/success`.
`poco/estop` (true) halts the arm (hold position, commands ignored) until the next `poco/reset`.
Thin by design: all physics/task logic lives in poco_sim.envs.

Sim time (`sim_time`, on in the sim graph): the node publishes `/clock`, and every stamp is sim time (tick k is
k control periods after 0), so the rest of the graph (use_sim_time) sees time advance exactly as the sim does.
Pacing (`pacing`, on in the sim graph) makes the sim advance one tick only when
  (a) the policy acknowledged the tick of the latest observation (poco_msgs/PolicyTick on `poco/policy_tick`
      stamped with that observation's time; when it says a command was sent, that command, stamped the same,
      must have arrived too), and
  (b) the learner is not behind its update-to-data ratio (poco_msgs/LearnerPace on `poco/learner_pace`,
      `behind` false),
and otherwise as fast as the CPU allows (`max_real_time_factor` caps it). A partner silent for
`pace_timeout_s` wall seconds is not waited for: with no policy acknowledging, the sim ticks at
`control_rate_hz * real_time_factor` per wall second; with no learner, it does not wait for updates (the robot
keeps acting on its last good weights while the learner is down).
Every input callback is guarded: a bad message is counted per reason (diagnostics on /diagnostics), logged at
most every few seconds per reason, and dropped; the node never exits for it.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Optional

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, MultiArrayDimension

from poco_msgs.msg import LearnerPace, PolicyTick
from poco_msgs.srv import Reset
from poco_policy import contract as C
from poco_policy.node_config import check_arm
from poco_policy.params import declare_ros_parameters
from poco_policy.ros_init import init_ros, spin
from poco_policy.runtime import BadInput, DropCounter, diagnostics
from poco_sim.config import ARM_JOINTS, CAMERAS, SimNodeConfig
from poco_sim.envs import TASKS, make_env

POLL_S = 0.005  # pacing: how often timeouts and the wall-clock pace are checked (acks step at once)
CLOCK_RESEND_S = 0.2  # pacing: re-send /clock when the policy has not acknowledged for this long (rclpy reads
                      # /clock best-effort: a lost message would otherwise cost a whole pace_timeout_s)


def stamp_ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def ns_to_time(ns: int) -> Time:
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class Pacer:
    """When a pacing sim may take its next tick (plain Python; the node feeds it messages and wall times).

    `last_stamp_ns`: stamp of the latest published tick. The policy is done with it when an ack stamped
    >= it arrived (and, if that tick sent a command, a command stamped >= the ack). A policy that leaves a tick
    unacknowledged for `timeout_s` counts as absent until its next ack (meanwhile the sim ticks at the wall-clock
    pace); a policy that is merely not asked (the sim waits for the learner) stays present. The learner holds the
    sim while its latest pace message says behind and is not older than `timeout_s`."""

    def __init__(self, period_s: float, timeout_s: float, real_time_factor: float, max_real_time_factor: float):
        self.period_s, self.timeout_s = period_s, timeout_s
        self.fallback_s = period_s / real_time_factor                       # no policy: wall pace
        self.min_interval_s = period_s / max_real_time_factor if max_real_time_factor > 0 else 0.0
        self.ack_ns, self.ack_cmd = -1, False
        self.cmd_ns = -1
        self.policy_here = False  # no policy until its first ack
        self.behind, self.pace_wall = False, -math.inf
        self.last_step_wall = -math.inf  # also when the wait for the newest tick's ack began

    def on_ack(self, stamp_ns: int, command_sent: bool, now: float):
        if stamp_ns >= self.ack_ns:
            self.ack_ns, self.ack_cmd = stamp_ns, command_sent
        self.policy_here = True

    def on_command(self, stamp_ns: int):
        self.cmd_ns = max(self.cmd_ns, stamp_ns)

    def on_pace(self, behind: bool, now: float):
        self.behind, self.pace_wall = behind, now

    def policy_done(self, last_stamp_ns: int) -> bool:
        return self.ack_ns >= last_stamp_ns and (not self.ack_cmd or self.cmd_ns >= self.ack_ns)

    def learner_present(self, now: float) -> bool:
        return now - self.pace_wall <= self.timeout_s

    def waiting_for(self, last_stamp_ns: int, now: float) -> Optional[str]:
        """None = tick now; else what the sim waits for: 'policy', 'learner' or 'clock' (a wall-time pace)."""
        since = now - self.last_step_wall
        if not self.policy_done(last_stamp_ns):
            if self.policy_here and since > self.timeout_s:
                self.policy_here = False  # silent for timeout_s while asked: absent until its next ack
            if self.policy_here:
                return 'policy'
            if since < self.fallback_s:
                return 'clock'
        if self.behind and self.learner_present(now):
            return 'learner'
        if since < self.min_interval_s:
            return 'clock'
        return None

    def stepped(self, now: float):
        self.last_step_wall = now


def _check_config(cfg: SimNodeConfig) -> None:
    if cfg.task not in TASKS:
        raise ValueError(f'task must be one of {sorted(TASKS)}, got {cfg.task!r}')
    if cfg.obs_mode not in ('pixels', 'state'):
        raise ValueError(f"obs_mode must be 'pixels' or 'state', got {cfg.obs_mode!r}")
    if cfg.control_rate_hz <= 0 or cfg.real_time_factor < 1.0:
        raise ValueError('control_rate_hz must be > 0 and real_time_factor >= 1')
    if cfg.pacing and not cfg.sim_time:
        raise ValueError('pacing needs sim_time: true (the sim owns the clock it paces)')
    if cfg.pace_timeout_s <= 0 or cfg.max_real_time_factor < 0:
        raise ValueError('pace_timeout_s must be > 0 and max_real_time_factor >= 0')
    check_arm(cfg.joint_names, cfg.gripper_joint)
    if len(cfg.joint_names) != len(ARM_JOINTS):
        raise ValueError(f'joint_names has {len(cfg.joint_names)} joints {list(cfg.joint_names)} but the MuJoCo arm '
                         f'has {len(ARM_JOINTS)}; the sim stands in for a {len(ARM_JOINTS)}-joint arm only')
    if len(cfg.bbox_cm) != 6:
        raise ValueError('bbox_cm must have 6 values')
    if not cfg.cameras or any(c not in CAMERAS for c in cfg.cameras):
        raise ValueError(f'cameras must be a non-empty subset of {CAMERAS}, got {cfg.cameras!r}')


class SimNode(Node):
    def __init__(self, **kwargs):
        super().__init__('sim', **kwargs)
        self.env = None
        self.cfg = declare_ros_parameters(self, SimNodeConfig)
        cfg = self.cfg
        _check_config(cfg)
        self.env = make_env(cfg.task, cfg.obs_mode, image_size=cfg.image_size, max_steps=cfg.max_steps or None,
                            object_range=cfg.object_range, seed=cfg.seed, control_rate_hz=cfg.control_rate_hz,
                            max_joint_delta=cfg.max_joint_delta, bbox_cm=tuple(cfg.bbox_cm),
                            cameras=tuple(cfg.cameras))
        self.joint_names = list(cfg.joint_names)
        self.gripper_joint = cfg.gripper_joint
        self._seed_rng = np.random.default_rng(cfg.seed)  # seeds of resets that do not name one
        self.episode_id = 0
        self.episode_seed = cfg.seed
        self.env.reset(seed=cfg.seed)
        # Header stamps. At real_time_factor 1: the wall clock when the tick's observation is ready, as a real
        # driver stamps at capture (a start + ticks / rate clock fell 17-75 ms behind as ticks ran late, which
        # inflated measured latencies). Faster than real time: start + simulated time, one period per tick.
        # With sim_time: tick k is stamped k x period_ns, the integer period rclpy gives a 1/rate timer, so a
        # policy timer on this clock fires exactly once per tick.
        self._t0 = time.time()
        self._period_ns = int(1e9 / cfg.control_rate_hz)
        self._last_stamp_ns = 0
        self._ticks = 0
        self._cmd: Optional[tuple[np.ndarray, float]] = None
        self._estop_engaged = False  # the button's current state
        self._halted = False         # latched by the e-stop, cleared by a reset
        self._success_sent = False
        self._was_in_bbox = True
        self.drops = DropCounter()
        self.pacer = Pacer(1.0 / cfg.control_rate_hz, cfg.pace_timeout_s, cfg.real_time_factor,
                           cfg.max_real_time_factor)
        self._waiting: Optional[str] = None      # what the pacing sim waits for now (logged on change)
        self._wait_s = {'policy': 0.0, 'learner': 0.0, 'clock': 0.0}  # wall seconds spent waiting, by partner
        self._wait_since = time.monotonic()
        self._partners = {'policy': False, 'learner': False}  # present last time we looked (logged on change)
        self._rate_window = (time.monotonic(), 0)  # (wall time, ticks) at the start of the diagnostics window
        self._clock_sent = (None, 0.0)  # (stamp, wall time) of the last /clock message
        self.clock_resent = 0
        self._rtf = 0.0
        # learner progress as its pace messages report it: (updates, phase), wall time it last changed
        self._learner_progress = (None, time.monotonic())
        self._stall_warned = time.monotonic()
        self.learner_stall_warnings = 0

        q = C.qos
        self.js_pub = self.create_publisher(JointState, C.JOINT_STATES, q(C.JOINT_STATES))
        self.ee_pub = self.create_publisher(PoseStamped, C.EE_POSE, q(C.EE_POSE))
        self.state_pub = self.create_publisher(Float32MultiArray, C.SIM_STATE, q(C.SIM_STATE))
        self.img_pubs = {}
        if cfg.obs_mode == 'pixels':
            self.img_pubs = {c: self.create_publisher(Image, C.camera_topic(c), q(C.camera_topic(c)))
                             for c in cfg.cameras}
        self.success_pub = self.create_publisher(Bool, C.SUCCESS, q(C.SUCCESS))
        self.clock_pub = self.create_publisher(Clock, C.CLOCK, q(C.CLOCK)) if cfg.sim_time else None
        self.diag_pub = self.create_publisher(DiagnosticArray, C.DIAGNOSTICS, q(C.DIAGNOSTICS))
        self.create_subscription(JointState, C.JOINT_COMMANDS, self._guard('joint_commands', self.on_command),
                                 q(C.JOINT_COMMANDS))
        self.create_subscription(Bool, C.ESTOP, self._guard('estop', self.on_estop), q(C.ESTOP))
        self.create_service(Reset, C.RESET_SERVICE, self.on_reset)
        if cfg.pacing:
            self.create_subscription(PolicyTick, C.POLICY_TICK, self._guard('policy_tick', self.on_policy_tick),
                                     q(C.POLICY_TICK))
            self.create_subscription(LearnerPace, C.LEARNER_PACE, self._guard('learner_pace', self.on_pace),
                                     q(C.LEARNER_PACE))
            self.timer = self.create_timer(POLL_S, self._guard('pace', self.maybe_step))
        else:
            period = 1.0 / (cfg.control_rate_hz * cfg.real_time_factor)
            self.timer = self.create_timer(period, self._guard('tick', self.tick))
        self.create_timer(1.0, self._guard('diagnostics', self.publish_diagnostics))
        self.get_logger().info(
            f'sim ready: task={cfg.task} obs_mode={cfg.obs_mode} image_size={cfg.image_size} '
            f'rate={cfg.control_rate_hz} Hz x{cfg.real_time_factor} seed={cfg.seed}'
            + (' sim_time (publishes /clock)' if cfg.sim_time else '')
            + (f' pacing (waits for poco/policy_tick and poco/learner_pace, timeout {cfg.pace_timeout_s} s)'
               if cfg.pacing else ''))

    # ------------------------------------------------------------------ input guard
    def _guard(self, what: str, fn):
        """Callbacks never raise: a failure is counted under `what: reason`, logged per reason (throttled) and
        the message dropped."""
        def guarded(*args):
            try:
                return fn(*args)
            except BadInput as e:
                self._drop(f'{what}: {e.reason}', str(e))
            except Exception as e:  # noqa: BLE001 - nothing outside may take the robot's stand-in down
                self._drop(f'{what}: {type(e).__name__}', str(e))
        guarded.__name__ = getattr(fn, '__name__', what)
        return guarded

    def _drop(self, reason: str, detail: str) -> None:
        suffix = self.drops.drop(reason)
        if suffix is not None:
            self.get_logger().warning(f'dropped {reason}: {detail[:300]} {suffix}')

    # ------------------------------------------------------------------ inputs
    def on_command(self, msg: JointState) -> None:
        """The arm's joint targets + gripper command, by name when names are given, else by position."""
        pos = list(msg.position)
        if msg.name:
            if len(msg.name) != len(pos):
                raise BadInput('names/positions mismatch', f'{len(msg.name)} names but {len(pos)} positions')
            if len(set(msg.name)) != len(msg.name):
                raise BadInput('duplicated joint', f'duplicated names in {list(msg.name)[:20]}')
            by_name = dict(zip(msg.name, pos))
            missing = [n for n in self.joint_names + [self.gripper_joint] if n not in by_name]
            if missing:
                raise BadInput('missing joint', f'missing joints {missing}')
            pos = [by_name[n] for n in self.joint_names] + [by_name[self.gripper_joint]]
        n = len(self.joint_names)
        if len(pos) != n + 1:
            raise BadInput('wrong size', f'expected {n + 1} positions ({n} joints + gripper), got {len(pos)}')
        v = np.asarray(pos, dtype=float)
        if not np.all(np.isfinite(v)):
            raise BadInput('non-finite', f'non-finite value in {v.tolist()}')
        self._cmd = (v[:n], float(np.clip(v[n], 0.0, 1.0)))
        if self.cfg.pacing:
            self.pacer.on_command(stamp_ns(msg.header.stamp))
            self.maybe_step()

    def on_policy_tick(self, msg: PolicyTick) -> None:
        self.pacer.on_ack(stamp_ns(msg.header.stamp), bool(msg.command_sent), time.monotonic())
        self.maybe_step()

    def on_pace(self, msg: LearnerPace) -> None:
        now = time.monotonic()
        self.pacer.on_pace(bool(msg.behind), now)
        progress = (int(msg.updates), str(msg.phase))
        if progress != self._learner_progress[0]:
            self._learner_progress = (progress, now)
        self.maybe_step()

    def _check_learner_stall(self, now: float) -> None:
        """Waiting for a learner that says behind yet reports no new update for learner_stall_warn_s: say so
        (repeated every period) instead of freezing the run silently. Pre-training counts no online updates,
        so there the message says it is pre-training."""
        warn_s = self.cfg.learner_stall_warn_s
        progress, since = self._learner_progress
        if warn_s <= 0 or now - since < warn_s or now - self._stall_warned < warn_s:
            return
        self._stall_warned = now
        self.learner_stall_warnings += 1
        updates, phase = progress if progress else (0, '?')
        if phase == 'pretrain':
            self.get_logger().info(f'waiting for the learner: pre-training ({now - since:.0f} s so far)')
        else:
            self.get_logger().warning(
                f'waiting for the learner for {now - since:.0f} s: it says behind but reports no new update '
                f'(phase {phase}, {updates} updates); a stalled training thread? see the learner log')

    def on_estop(self, msg: Bool) -> None:
        self._estop_engaged = bool(msg.data)
        if msg.data and not self._halted:
            self._halted = True
            self.get_logger().error('E-STOP engaged: holding position until poco/reset')

    def on_reset(self, req: Reset.Request, resp: Reset.Response) -> Reset.Response:
        try:
            return self._reset(req, resp)
        except Exception as e:  # noqa: BLE001 - answer, count and stay up
            self._drop(f'reset: {type(e).__name__}', str(e))
            resp.success, resp.message = False, f'reset failed: {type(e).__name__}: {e}'[:500]
            return resp

    def _reset(self, req: Reset.Request, resp: Reset.Response) -> Reset.Response:
        seed = int(req.seed) if req.seed >= 0 else int(self._seed_rng.integers(0, 2**31 - 1))
        self.env.reset(seed=seed)
        self.episode_id += 1
        self.episode_seed = seed
        self._cmd = None  # a stale absolute target would drag the arm away from the new start pose
        self._success_sent = False
        self._was_in_bbox = True
        self._halted = self._estop_engaged  # the reset clears the latch, unless the button is still pressed
        resp.success = True
        resp.episode_id = self.episode_id
        resp.stamp = ns_to_time(self._last_stamp_ns)  # observations stamped later show the new scene
        resp.message = f'episode {self.episode_id} seed {seed}' + (' (e-stop still engaged)' if self._halted else '')
        self.get_logger().info(f'reset: {resp.message}')
        return resp

    # ------------------------------------------------------------------ tick
    def maybe_step(self) -> None:
        """Pacing: take the next tick if the policy and the learner allow it (called on every ack / pace /
        command message and from a fast wall-clock poll)."""
        now = time.monotonic()
        waiting = self.pacer.waiting_for(self._last_stamp_ns, now)
        present = {'policy': self.pacer.policy_here, 'learner': self.pacer.learner_present(now)}
        for who, here in present.items():
            if here != self._partners[who]:
                self._partners[who] = here
                self.get_logger().info(f'{who} {"present: the sim waits for it" if here else "silent"}'
                                       + ('' if here else f' for {self.cfg.pace_timeout_s} s: not waiting for it'
                                          + (' (wall-clock pace)' if who == 'policy' else '')))
        if waiting != self._waiting:
            if self._waiting is not None:
                self._wait_s[self._waiting] += now - self._wait_since
            self._waiting, self._wait_since = waiting, now
        if waiting == 'learner':
            self._check_learner_stall(now)
        if waiting is None:
            self.pacer.stepped(now)
            self.tick()
        elif waiting == 'policy' and self._clock_sent[0] is not None and now - self._clock_sent[1] > CLOCK_RESEND_S:
            self._publish_clock(self._clock_sent[0])
            self.clock_resent += 1

    def _publish_clock(self, stamp: Time) -> None:
        self.clock_pub.publish(Clock(clock=stamp))
        self._clock_sent = (stamp, time.monotonic())

    def tick(self) -> None:
        env = self.env
        if self._halted or self._cmd is None:
            obs, _, _, _, info = env.hold()
        else:
            targets, grip = self._cmd
            q = env.joint_positions()
            step = self.cfg.max_target_step
            targets = np.clip(targets, q - step, q + step)  # like a driver's velocity limit
            obs, _, _, _, info = env.step_targets(targets, grip)
        self._ticks += 1
        stamp = self._stamp()
        self._publish(obs, stamp)
        if self.clock_pub is not None:  # after the observation: a node seeing time T may expect T's data
            self._publish_clock(stamp)
        if info['bbox_violation'] and self._was_in_bbox:
            self.get_logger().warning(f'end effector left the bbox at {np.round(info["ee_pos"], 3).tolist()} m',
                                   throttle_duration_sec=2.0)
        self._was_in_bbox = not info['bbox_violation']
        if env.succeeded and not self._success_sent:
            self.success_pub.publish(Bool(data=True))
            self._success_sent = True
            self.get_logger().info(f'episode {self.episode_id}: success after {env.step_count} ticks')

    def _stamp(self) -> Time:
        if self.cfg.sim_time:
            ns = self._ticks * self._period_ns
        elif self.cfg.real_time_factor == 1.0:
            ns = self.get_clock().now().nanoseconds
        else:
            ns = int(round((self._t0 + self._ticks / self.cfg.control_rate_hz) * 1e9))
        ns = max(ns, self._last_stamp_ns + 1)  # strictly increasing: stamps identify a tick's messages
        self._last_stamp_ns = ns
        return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def publish_diagnostics(self) -> None:
        now = time.monotonic()
        t0, n0 = self._rate_window
        if now - t0 >= 1.0:
            self._rtf = (self._ticks - n0) / self.cfg.control_rate_hz / (now - t0)
            self._rate_window = (now, self._ticks)
        waits = dict(self._wait_s)
        if self._waiting is not None:
            waits[self._waiting] += now - self._wait_since
        values = {'ticks': self._ticks, 'episode': self.episode_id,
                  'sim_time_s': round(self._ticks / self.cfg.control_rate_hz, 3) if self.cfg.sim_time else '',
                  'real_time_factor': round(self._rtf, 3), 'halted': self._halted}
        if self.cfg.pacing:
            values.update({'waiting_for': self._waiting or '', **{f'waited_{k}_s': round(v, 1)
                                                                   for k, v in waits.items()},
                           'policy_present': self._partners['policy'], 'clock_resent': self.clock_resent,
                           'learner_stall_warnings': self.learner_stall_warnings,
                           'learner_present': self._partners['learner']})
        self.diag_pub.publish(diagnostics(self.get_clock().now().to_msg(), self.get_fully_qualified_name(),
                                          values, self.drops))

    def _publish(self, obs: dict, stamp: Time) -> None:
        env = self.env
        # sim/state before joint_states: a policy that waits for the joint state of time T then has T's state
        st = Float32MultiArray()
        state = env.state_vector()
        st.layout.dim = [MultiArrayDimension(label='state', size=int(state.size), stride=int(state.size))]
        st.data = state.tolist()
        self.state_pub.publish(st)

        js = JointState()
        js.header.stamp = stamp
        js.name = self.joint_names + [self.gripper_joint]
        js.position = [float(x) for x in obs['proprio']]
        js.velocity = [float(x) for x in env.joint_velocities()] + [0.0]
        self.js_pub.publish(js)

        pos, quat = env.ee_pose()
        pose = PoseStamped()
        pose.header.stamp = stamp
        pose.header.frame_id = self.cfg.frame_id
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = (float(v) for v in pos)
        # MuJoCo quaternions are (w, x, y, z); ROS messages are (x, y, z, w).
        pose.pose.orientation.w, pose.pose.orientation.x, pose.pose.orientation.y, pose.pose.orientation.z = (
            float(v) for v in quat)
        self.ee_pub.publish(pose)

        for cam, pub in self.img_pubs.items():
            img = obs[cam]
            msg = Image()
            msg.header.stamp = stamp
            msg.header.frame_id = f'{cam}_camera'
            msg.height, msg.width = int(img.shape[0]), int(img.shape[1])
            msg.encoding = 'rgb8'
            msg.is_bigendian = 0
            msg.step = int(img.shape[1] * 3)
            msg.data = img.tobytes()  # bytes: ~1000x faster than assigning an ndarray
            pub.publish(msg)

    def destroy_node(self) -> None:
        if self.cfg.pacing:
            waits = ', '.join(f'{k} {v:.1f} s' for k, v in self._wait_s.items())
            self.get_logger().info(f'pacing: {self._ticks} ticks, waited for {waits}; /clock re-sent '
                                   f'{self.clock_resent} times')
        if self.drops.total:
            self.get_logger().info(f'dropped inputs: {self.drops.summary()}')
        if self.env is not None:
            self.env.close()
            self.env = None
        super().destroy_node()


def main(args=None) -> int:
    init_ros(args)
    node = None
    rc = 0
    try:
        node = SimNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin(executor)
    except ValueError as e:  # bad parameters: one clear line instead of a traceback
        print(f'sim_node: invalid configuration: {e}', file=sys.stderr)
        rc = 2
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return rc


if __name__ == '__main__':
    sys.exit(main())
