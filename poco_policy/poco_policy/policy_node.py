"""Policy node: turns camera images + joint states into joint targets at a steady 15 Hz.

Per tick: take the latest inputs (reject stale ones), encode the observation once, sample a new action chunk
when the previous one is used up, send one step of it as joint targets, and publish the executed step as a
Transition for the learner. Weights arrive from the learner and are swapped in between chunks only.
It also runs the episode lifecycle (start, success, e-stop, timeout, reset), because it is the one process
that knows which step the robot is on.

Time: every time comparison (watchdog staleness, teleop freshness, reset timeout) and the tick timer use the
node clock, so in the sim graph (use_sim_time, the sim publishes /clock) a paused sim pauses the policy too and
never trips the watchdog. With sim time a tick waits (at most `sync_timeout_s` wall seconds) until the
observation stamped with the tick's time has arrived, then runs; after every tick, whatever the phase, the node
publishes poco_msgs/PolicyTick on `poco/policy_tick` (the sim's pacing acknowledgement; its joint command of
that tick, stamped with the same time, went out first).
Inputs: every callback is guarded; a bad message is counted per reason (on /diagnostics), logged at most every
few seconds per reason, and dropped. Nothing a message contains may stop the node.

Any arm (parameters, poco_policy/node_config.py; robot.yaml has the sim arm's): joint names and count, limits,
gripper joint and its scale, base frame, home pose. Outputs per `command_interface` / `gripper_interface`
(poco_policy/outputs.py: JointState, ros2_control's Float64MultiArray, a JointTrajectory per chunk). Safety box
from the URDF's forward kinematics or the ee_pose topic (poco_policy/kinematics.py); unknown = hold. E-stop:
reliable + volatile (any reliable publisher), optional heartbeat; an incompatible publisher is an error.
"""
from __future__ import annotations

import gc
import math
import threading
import time
from typing import Optional

import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, Point
from sensor_msgs.msg import Image, JointState
from rclpy.event_handler import SubscriptionEventCallbacks
from std_msgs.msg import Bool, Float32MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from poco_msgs.msg import ActionChunk, EpisodeEvent, PolicyTick, PolicyWeights, Transition
from poco_msgs.srv import Reset, SetMode

from poco_policy import contract as C
from poco_policy.episode import EpisodeLifecycle, Event, LifecycleConfig, Phase, eval_scene_seed_base
from poco_policy.kinematics import EndEffector, UrdfKinematics
from poco_policy.node_config import PolicyNodeConfig, RUNTIME_PARAMS, runtime_update, validate
from poco_policy.outputs import CommandOutputs, GripperScale, chain_targets
from poco_policy.params import declare_ros_parameters
from poco_policy.ros_init import init_ros, spin
from poco_policy.runtime import (BadInput, ChunkRunner, DropCounter, EstopMonitor, Mailbox, Safety, SafetyLimits,
                                 WeightsGate, diagnostics, finite_array, image_to_array, use_sim_time_from_env)
from poco_policy.weights import WeightsLimits, WeightsRejected, load_key

# A header stamp older than this is taken to be on another clock (an unsynchronised driver PC, a bag): the
# watchdog then ages that input by its arrival instead.
STAMP_TRUST_S = 30.0


def _ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


__all__ = ['PolicyNode', 'PolicyNodeConfig', 'main']  # the config lives in node_config (its one home)


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__('policy', **kwargs)
        self.cfg = declare_ros_parameters(self, PolicyNodeConfig)
        validate(self.cfg)  # a wrong arm description stops the start, with the parameter named
        self._startup_cfg = cfg = self.cfg
        self.n = cfg.n_joints
        self.sim_time = use_sim_time_from_env(self)  # before any timer: they run on the node clock
        self.drops = DropCounter()
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        import torch  # imported here so `--help`-like uses of the module stay light
        torch.set_num_threads(max(1, cfg.torch_threads))
        self._torch = torch
        from poco_policy.flow_policy import policy_from_bytes
        from poco_policy.observation import ActionScaler
        # the start-up max_joint_delta is the action normalisation (the learner's); a run-time change only clips
        self.scaler = ActionScaler(cfg.max_joint_delta, num_joints=self.n)
        self.gripper_scale = GripperScale(cfg.gripper_closed, cfg.gripper_open)
        self.encoder = None
        if cfg.obs_mode == 'pixels':
            from poco_policy.encoder import EncoderConfig, ImageEncoder
            self.encoder = ImageEncoder(EncoderConfig(checkpoint_path=cfg.encoder_checkpoint,
                                                      feature_dim=cfg.feature_dim, image_size=cfg.image_size))
        elif cfg.obs_mode != 'state':
            raise ValueError(f"obs_mode must be 'pixels' or 'state', got {cfg.obs_mode!r}")
        self.weights_key = load_key(cfg.weights_key_file) if cfg.weights_key_file else None
        self.gate = WeightsGate(policy_from_bytes, self._weights_limits(), self.weights_key, self._probe)
        self._drop_lock = threading.Lock()
        self.joint_state_bad: Optional[str] = None  # reason while the newest joint state is insane (hold)
        self.runner = ChunkRunner(self._sample)
        self.safety = Safety(SafetyLimits(np.array(cfg.joint_lower), np.array(cfg.joint_upper),
                                          np.array(cfg.ee_box_min), np.array(cfg.ee_box_max), cfg.staleness_s))
        fk = None
        if cfg.robot_description_file:
            fk = UrdfKinematics.from_file(cfg.robot_description_file, cfg.joint_names, cfg.ee_link, cfg.base_frame)
        self.ee_src = EndEffector(fk, cfg.base_frame, cfg.staleness_s)
        self.box_state = 'not checked yet'   # diagnostics: ok | why the box holds or ended an episode
        self.estop_mon = EstopMonitor(cfg.estop_heartbeat_timeout_s, time.monotonic())
        self.estop_reason = ''
        self.estop_incompatible = 0          # publishers on poco/estop whose QoS cannot reach us
        self.rng = np.random.default_rng(cfg.seed)

        # latest inputs, with their receive time on the node clock (sim time in the sim graph)
        self.q: Optional[np.ndarray] = None
        self.gripper = 1.0
        self.stamps: dict[str, Optional[float]] = {'joint_states': None}
        self.images: dict[str, np.ndarray] = {}
        self.state: Optional[np.ndarray] = None
        self.ee: Optional[np.ndarray] = None
        self.teleop: Optional[tuple[np.ndarray, float]] = None
        if cfg.obs_mode == 'pixels':
            for c in cfg.cameras:
                self.stamps[c] = None
        else:
            self.stamps['state'] = None

        # episode state
        # the episode lifecycle (phases, evaluation schedule, ends) is a plain class: poco_policy.episode;
        # ids unique across restarts (the learner keys its buffer by them)
        self.life = EpisodeLifecycle(LifecycleConfig(cfg.max_episode_steps, cfg.eval_every, cfg.initial_eval_episodes,
                                                     cfg.reset_mode, cfg.eval_scenes,
                                                     eval_scene_seed_base(cfg.eval_seed, cfg.seed)),
                                     first_episode_id=int(time.time()) * 1000)
        self.last_cmd: Optional[np.ndarray] = None
        self.obs_stamp = None  # capture stamp (header) of the newest joint state: stamps chunks and transitions
        # header stamps [ns] of the newest joint state / images / ee pose, and sim/state arrivals (it has no
        # header): with sim time a tick runs once the observation of its time is in
        self._obs_ns = {'joint_states': -1}
        self._ee_ns: Optional[int] = None
        self._state_seq = self._state_seq_used = 0
        self._due: Optional[tuple[int, float]] = None  # sim time: (tick time ns, wall time) of a waiting tick
        self._cmd_in_tick = False
        self._reset_stamp_ns = 0
        self.ticks = 0

        q = C.qos
        g = self._guard
        self.create_subscription(JointState, C.JOINT_STATES, g('joint_states', self.on_joint_states),
                                 q(C.JOINT_STATES))
        for c in cfg.cameras if cfg.obs_mode == 'pixels' else ():
            self.create_subscription(Image, C.camera_topic(c),
                                     g(f'cameras/{c}', lambda m, c=c: self.on_image(c, m)), q(C.camera_topic(c)))
        if cfg.obs_mode == 'state':
            self.create_subscription(Float32MultiArray, C.SIM_STATE, g('sim/state', self.on_state), q(C.SIM_STATE))
        if fk is None:  # with a description the box uses forward kinematics only
            self.create_subscription(PoseStamped, C.EE_POSE, g('ee_pose', self.on_ee), q(C.EE_POSE))
        self.create_subscription(Bool, C.ESTOP, g('estop', self.on_estop), q(C.ESTOP), event_callbacks=
                                 SubscriptionEventCallbacks(incompatible_qos=g('estop qos', self._estop_incompatible)))
        self.create_subscription(Bool, C.SUCCESS, g('success', self.on_success), q(C.SUCCESS))
        # raw: the control executor only takes the serialised bytes; parsing, checks, deserialisation and the
        # test forward pass run on the weights worker thread (the swap itself waits for a chunk boundary)
        self.weights_worker = Mailbox(self._weights_guarded, 'poco-weights')
        self.create_subscription(PolicyWeights, C.POLICY_WEIGHTS, g('weights', self.on_weights),
                                 q(C.POLICY_WEIGHTS), raw=True)
        self.create_subscription(ActionChunk, C.TELEOP_ACTION, g('teleop', self.on_teleop), q(C.TELEOP_ACTION))

        self.out = CommandOutputs(self, cfg, q('commands'), C.JOINT_COMMANDS)
        self.transition_pub = self.create_publisher(Transition, C.TRANSITION, q(C.TRANSITION))
        self.event_pub = self.create_publisher(EpisodeEvent, C.EPISODE_EVENT, q(C.EPISODE_EVENT))
        self.chunk_pub = self.create_publisher(ActionChunk, C.ACTION_CHUNK, q(C.ACTION_CHUNK))
        self.marker_pub = self.create_publisher(MarkerArray, C.CHUNK_MARKERS, q(C.CHUNK_MARKERS))
        self.box_pub = self.create_publisher(Marker, C.SAFETY_BOX, q(C.SAFETY_BOX))
        self.tick_pub = self.create_publisher(PolicyTick, C.POLICY_TICK, q(C.POLICY_TICK))
        self.diag_pub = self.create_publisher(DiagnosticArray, C.DIAGNOSTICS, q(C.DIAGNOSTICS))
        self.reset_client = self.create_client(Reset, C.RESET_SERVICE)
        self.create_service(SetMode, C.SET_MODE_SERVICE, self._guard_service('set_mode', self.on_set_mode))
        self.create_service(Trigger, C.START_EPISODE_SERVICE,
                            self._guard_service('start_episode', self.on_start_episode))
        # operator's start button (real robot): same as the service
        self.create_subscription(Bool, C.START_BUTTON, g('start', self.on_start_button), q(C.START_BUTTON))
        self._reset_future = None
        self._reset_started = 0.0
        self._reset_unready_since: Optional[float] = None   # wall (monotonic) s: service not yet discovered

        if cfg.initial_weights:
            self._load_initial(cfg.initial_weights)
        if self.weights_key is None:
            self.get_logger().warning('weights_key_file is empty: unsigned weights are accepted (sim only; a '
                                      'real robot needs a key, see README "Signed weights")')
        self._publish_box()
        # The control tick runs on the node clock (sim time in the sim graph); bookkeeping on the steady clock.
        self.timer = self.create_timer(1.0 / cfg.control_rate_hz, self.tick)
        if self.sim_time:
            self.create_timer(0.05, g('sync', self._run_due), clock=self._steady)
        # e-stop heartbeat on the steady clock (a button is a wall-clock device; 50 Hz: well inside a deadline);
        # cancelled while the heartbeat mode is off (no wake-ups in the sim graph)
        self._hb_timer = self.create_timer(0.02, g('estop heartbeat', self._check_heartbeat), clock=self._steady)
        if cfg.estop_heartbeat_timeout_s <= 0:
            self._hb_timer.cancel()
        self._rate_mark = (time.monotonic(), 0)
        self.create_timer(1.0, g('diagnostics', self.publish_diagnostics), clock=self._steady)
        self.add_on_set_parameters_callback(self._on_set_parameters)  # after declaring: run-time changes only
        self.get_logger().info(
            f'policy node up: obs_mode={cfg.obs_mode} rate={cfg.control_rate_hz} Hz H={cfg.max_episode_steps} '
            f'mode={cfg.mode} arm={list(cfg.joint_names)} + {cfg.gripper_joint} -> {cfg.command_interface} / '
            f'gripper {cfg.gripper_interface}; box from {self._box_source()}'
            + (f'; e-stop heartbeat {cfg.estop_heartbeat_timeout_s} s' if cfg.estop_heartbeat_timeout_s > 0 else '')
            + (' on sim time (/clock)' if self.sim_time else ''))

    # ---------------------------------------------------------------- input guard
    def _guard(self, what: str, fn):
        """Callbacks never raise: a failure is counted under `what: reason`, logged per reason at most every
        few seconds (our own throttle: no rclpy filter state to conflict), and the message is dropped."""
        def guarded(*args):
            try:
                return fn(*args)
            except BadInput as e:
                self._drop(f'{what}: {e.reason}', str(e))
            except Exception as e:  # noqa: BLE001 - nothing a message contains may stop the node
                self._drop(f'{what}: {type(e).__name__}', str(e))
        guarded.__name__ = getattr(fn, '__name__', what)
        return guarded

    def _guard_service(self, what: str, fn):
        def guarded(req, resp):
            try:
                return fn(req, resp)
            except Exception as e:  # noqa: BLE001
                self._drop(f'{what}: {type(e).__name__}', str(e))
                resp.success, resp.message = False, f'{type(e).__name__}: {e}'[:500]
                return resp
        return guarded

    def _drop(self, reason: str, detail: str):
        with self._drop_lock:  # the weights worker thread drops too
            suffix = self.drops.drop(reason)
        if suffix is not None:
            self.get_logger().warning(f'dropped {reason}: {detail[:300]} {suffix}')

    def _now(self) -> float:
        """Node-clock seconds (sim time in the sim graph, else ROS/system time): all time comparisons."""
        return self.get_clock().now().nanoseconds * 1e-9

    def _input_time(self, stamp) -> float:
        """When an input counts as taken, for the staleness watchdog: its header stamp when that is on this
        node's clock (not in the future, at most STAMP_TRUST_S old), else its arrival. A backlog in this node's
        own queues (a loaded CPU) then ages an input by its capture time, not by when its callback ran (a fuzz
        run under load found pixels-mode targets planned on 1 s old joint states with staleness_s 0.5)."""
        now = self._now()
        t = _ns(stamp) * 1e-9
        return t if now - STAMP_TRUST_S <= t <= now else now

    # ---------------------------------------------------------------- inputs
    def on_joint_states(self, msg: JointState):
        names, positions = list(msg.name), list(msg.position)
        if len(names) != len(positions):
            raise self._insane('names/positions mismatch', f'{len(names)} names but {len(positions)} positions')
        if len(set(names)) != len(names):
            raise self._insane('duplicated joint', f'duplicated names in {names[:20]}')
        pos = dict(zip(names, positions))
        missing = [n for n in self.cfg.joint_names if n not in pos]
        if missing:
            raise self._insane('missing joint', f'missing joints {missing}')
        q = np.asarray([pos[n] for n in self.cfg.joint_names], dtype=np.float64)
        # the gripper as an opening in [0, 1] (gripper_closed .. gripper_open); absent: the last known
        gj = self.cfg.gripper_joint
        g = float(self.gripper_scale.to_command(pos[gj])) if gj in pos else self.gripper
        tol = self.cfg.joint_limit_tolerance
        if not (np.isfinite(q).all() and math.isfinite(g)):
            raise self._insane('non-finite', f'joint_states: {q.tolist()} gripper {g}')
        outside = (q < self.safety.lim.joint_lower - tol) | (q > self.safety.lim.joint_upper + tol)
        if outside.any() or not -tol <= g <= 1.0 + tol:
            raise self._insane('outside limits', f'joint_states: {np.round(q, 3).tolist()} gripper {g:.3g} '
                                                 f'outside the joint limits by more than {tol} rad')
        self.joint_state_bad = None
        self.q, self.gripper = q.astype(np.float32), g
        self.stamps['joint_states'] = self._input_time(msg.header.stamp)
        self.obs_stamp = msg.header.stamp
        self._obs_ns['joint_states'] = _ns(msg.header.stamp)
        self._run_due()

    def _insane(self, reason: str, detail: str) -> BadInput:
        """An insane joint state: the robot's state is unknown until the next sane one, so the node holds
        (no new plan, no transition) and the message is dropped and counted."""
        self.joint_state_bad = reason
        self.runner.drop_chunk()
        return BadInput(reason, detail)

    def on_image(self, cam: str, msg: Image):
        self.images[cam] = image_to_array(msg.height, msg.width, msg.encoding, msg.step, msg.data)
        self.stamps[cam] = self._input_time(msg.header.stamp)
        self._obs_ns[cam] = _ns(msg.header.stamp)
        self._run_due()

    def on_state(self, msg: Float32MultiArray):
        state = finite_array(msg.data, None, 'sim/state')
        if state.size == 0 or state.size > 100_000 or float(np.abs(state).max()) > self.cfg.max_input_magnitude:
            raise BadInput('out of range', f'sim/state: {state.size} values, max |x| '
                                           f'{float(np.abs(state).max()) if state.size else 0:.3g}')
        self.state = state
        self.stamps['state'] = self._now()
        self._state_seq += 1
        self._run_due()

    def on_ee(self, msg: PoseStamped):
        p = msg.pose.position
        why = self.ee_src.on_pose(np.array([p.x, p.y, p.z]), msg.header.frame_id, self._now())
        if why is not None:  # a pose in another frame would put the box somewhere else: never used
            raise BadInput(why, f'ee_pose in frame {msg.header.frame_id[:60]!r} (base_frame '
                                f'{self.cfg.base_frame!r}) at {[p.x, p.y, p.z]}')
        self._ee_ns = _ns(msg.header.stamp)
        self._run_due()

    def on_teleop(self, msg: ActionChunk):
        a = finite_array(msg.data, self.n + 1, 'teleop/action')
        self.teleop = (a, self._now())

    # read-only views of the lifecycle, for messages and logs
    @property
    def estop(self) -> bool:
        return self.life.estop

    @property
    def phase(self) -> str:
        return self.life.phase.value

    @property
    def episode_id(self) -> int:
        return self.life.episode_id

    @property
    def evaluation(self) -> bool:
        return self.life.evaluation

    @property
    def step(self) -> int:
        return self.life.step

    def on_success(self, msg: Bool):
        if msg.data:
            self.life.on_success()

    def on_estop(self, msg: Bool):
        # Single-threaded executor: this runs between ticks, so the hold goes out before the next tick.
        self.estop_mon.on_message(msg.data, time.monotonic())   # any message is a heartbeat
        if msg.data:
            self._engage_estop('e-stop pressed')
        elif self.estop:
            self.life.estop_released()
            self.get_logger().warning(f'e-stop released ({self.estop_reason}); waiting for a reset')

    def _engage_estop(self, reason: str):
        if self.estop:
            return
        was_running = self.life.phase == Phase.RUNNING
        self.estop_reason = reason
        try:
            self._hold()  # halt now, not at the next tick
            if was_running:
                self._end_episode(EpisodeEvent.ESTOP, reason)
        finally:  # halted whatever failed above: a release must never resume a running episode
            self.life.estop_pressed()
        self.get_logger().error(f'E-STOP engaged ({reason}): motion halted until reset')

    def _check_heartbeat(self):
        why = self.estop_mon.heartbeat_lost(time.monotonic())
        if why is not None:
            self._engage_estop(why)

    def _estop_incompatible(self, info):
        """A publisher on poco/estop whose QoS cannot reach this subscription (e.g. best effort): its presses
        would be lost, so it is an error, not a warning."""
        self.estop_incompatible = int(getattr(info, 'total_count', self.estop_incompatible + 1))
        suffix = self.drops.allow('estop incompatible qos')
        if suffix is not None:
            self.get_logger().error(
                f'E-STOP PUBLISHER CANNOT REACH THE POLICY: a publisher on {C.ESTOP} offers incompatible QoS '
                f'(policy {getattr(info, "last_policy_kind", "?")}; {self.estop_incompatible} so far); publish '
                'the e-stop with reliable QoS (rclpy default QoS works)')

    def on_weights(self, raw: bytes):
        """Control executor: size check and hand-off only (the worker parses, checks and loads)."""
        bound = self.cfg.max_weights_bytes + self.cfg.max_metadata_bytes + 65536
        if len(raw) > bound:
            raise BadInput('too large', f'serialised weights message of {len(raw)} bytes > {bound}')
        if self.weights_worker.submit(raw):
            self._drop('weights: superseded', 'a newer weights message replaced one still waiting for checks')

    def _weights_guarded(self, raw: bytes):
        """Weights worker thread: every failure is counted as `weights: <reason>`; never raises."""
        try:
            self._load_weights(raw)
        except WeightsRejected as e:
            self._drop(f'weights: {e.reason}', f'{e}; keeping v{self.gate.version}')
        except Exception as e:  # noqa: BLE001
            self._drop(f'weights: {type(e).__name__}', str(e))

    def _load_weights(self, raw: bytes):
        from rclpy.serialization import deserialize_message
        try:
            msg = deserialize_message(raw, PolicyWeights)
        except Exception as e:  # noqa: BLE001
            raise WeightsRejected('corrupt message', f'cannot deserialise: {str(e)[:200]}') from e
        self.gate.limits = self._weights_limits()
        payload = msg.payload.tobytes() if hasattr(msg.payload, 'tobytes') else bytes(msg.payload)
        policy, _ = self.gate.check(msg.version, msg.format, msg.sha256, payload, msg.metadata,
                                    getattr(msg, 'signature', ''))
        self.gate.accept(msg.version)
        self.runner.offer(policy, msg.version)
        self.get_logger().info(f'received weights v{msg.version} (used from the next chunk)')

    def _robot_obs_dim(self) -> int:
        cfg = self.cfg
        if cfg.obs_dim:
            return cfg.obs_dim
        if cfg.obs_mode == 'pixels':
            return cfg.feature_dim * len(cfg.cameras) + cfg.action_dim   # + proprio (joints + gripper)
        state = getattr(self, 'state', None)
        if state is not None:
            return int(state.size) + cfg.action_dim
        pol = self.runner.policy if hasattr(self, 'runner') else None
        return int(pol.cfg.obs_dim) if pol is not None else 0

    def _weights_limits(self) -> WeightsLimits:
        cfg = self.cfg
        pol = self.runner.policy if hasattr(self, 'runner') else None
        horizon = cfg.horizon or (int(pol.cfg.horizon) if pol is not None else 0)
        return WeightsLimits(obs_dim=self._robot_obs_dim(), action_dim=cfg.action_dim, horizon=horizon,
                             max_hidden_dim=cfg.max_hidden_dim, max_hidden_layers=cfg.max_hidden_layers,
                             max_flow_steps=cfg.max_flow_steps, max_weights_bytes=cfg.max_weights_bytes,
                             max_metadata_bytes=cfg.max_metadata_bytes, max_json_depth=cfg.max_json_depth,
                             max_version_jump=cfg.max_version_jump)

    def _probe(self, policy):
        """Test forward pass on the worker thread: a chunk of the robot's shape, finite, sampled in time."""
        obs_dim = self._robot_obs_dim() or int(policy.cfg.obs_dim)
        obs = np.zeros(obs_dim, np.float32)
        best = math.inf
        for _ in range(3):
            t0 = time.perf_counter()
            chunk = np.asarray(self._sample(policy, obs, False))
            best = min(best, time.perf_counter() - t0)
        want = (self.cfg.horizon or policy.cfg.horizon, self.cfg.action_dim)
        if chunk.shape != want or not np.isfinite(chunk).all():
            raise WeightsRejected('test forward pass', f'chunk of shape {chunk.shape} (want {want}) or non-finite')
        if best > self.cfg.max_sample_s:
            raise WeightsRejected('too slow', f'sampling a chunk took {best * 1e3:.0f} ms > '
                                              f'{self.cfg.max_sample_s * 1e3:.0f} ms')

    def on_set_mode(self, req, resp):
        if req.mode not in ('train', 'eval', 'hold'):
            resp.success, resp.message = False, f'unknown mode {req.mode!r}'
            return resp
        self.cfg.mode = req.mode
        resp.success, resp.message = True, f'mode={req.mode}'
        self._param_echo('mode', req.mode)
        return resp

    def on_start_episode(self, req, resp):
        if self.estop:
            resp.success, resp.message = False, 'e-stop engaged'
        elif not self.life.can_start:
            resp.success, resp.message = False, f'episode already {self.phase}'
        else:
            self._request_reset()
            resp.success, resp.message = True, 'resetting'
        return resp

    def on_start_button(self, msg: Bool):
        if msg.data and self.life.can_start:
            self._request_reset()

    # ---------------------------------------------------------------- helpers
    def _load_initial(self, path: str):
        """Start from an actor file (safetensors + JSON metadata sidecar), e.g. from offline pre-training."""
        meta_path = path[:-len('.safetensors')] + '.json' if path.endswith('.safetensors') else path + '.json'
        with open(path, 'rb') as f:
            payload = f.read()
        with open(meta_path) as f:
            meta = f.read()
        import hashlib
        policy, _ = self.gate.check(1, 'safetensors', hashlib.sha256(payload).hexdigest(), payload, meta,
                                    trusted=True)
        self.runner.offer(policy, 0)
        self.get_logger().info(f'loaded initial weights from {path}')

    def _sample(self, policy, obs: np.ndarray, deterministic: bool) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            o = torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)
            chunk = policy.act(o, deterministic=deterministic)   # best-of-N when the weights carry a critic
        return chunk.reshape(policy.cfg.horizon, policy.cfg.action_dim).cpu().numpy()

    def _observation(self) -> tuple[np.ndarray, np.ndarray]:
        proprio = np.concatenate([self.q, [self.gripper]]).astype(np.float32)
        if self.cfg.obs_mode == 'pixels':
            imgs = np.stack([self.images[c] for c in self.cfg.cameras])
            feats = self.encoder.encode(imgs).reshape(-1)
        else:
            feats = self.state
        return np.asarray(feats, dtype=np.float32), proprio

    def _guard_target(self, q_target: np.ndarray, gripper: float, q_from: np.ndarray):
        """Final guard, whatever computed the target: finite, within max_joint_delta of `q_from` (the measured
        position, or the previous point of a trajectory), gripper in [0, 1]. Returns (target, gripper)."""
        q_target = np.asarray(q_target, dtype=np.float64)
        if q_target.shape != q_from.shape or not np.isfinite(q_target).all() or not math.isfinite(float(gripper)):
            self._drop('command guard: non-finite', f'target {q_target.tolist()} gripper {gripper}: holding')
            q_target, gripper = q_from.astype(np.float64), self.gripper
        d = self.cfg.max_joint_delta
        bounded = np.clip(q_target, q_from - d, q_from + d)
        if np.abs(bounded - q_target).max() > 1e-6:
            self._drop('command guard: beyond max_joint_delta',
                       f'target moved {np.abs(q_target - q_from).max():.3g} rad > {d}: clipped')
        return bounded, float(np.clip(gripper, 0.0, 1.0))

    def _measured(self) -> Optional[np.ndarray]:
        q = self.q
        if q is None or not np.isfinite(q).all():
            self._drop('command guard: no measured position', 'command withheld')
            return None
        return q.astype(np.float64)

    def _send(self, q_target: np.ndarray, gripper: float):
        """One target for the arm and the gripper (every interface; a one-point trajectory on joint_trajectory)."""
        q = self._measured()
        if q is None:
            return
        q_target, gripper = self._guard_target(q_target, gripper, q)
        # sim time: the stamp is the tick's time (the sim waits for it)
        self.out.send_step(q_target, gripper, self.get_clock().now().to_msg())
        self.last_cmd = np.concatenate([q_target, [gripper]])
        self._cmd_in_tick = True

    def _send_chunk(self, targets: np.ndarray, gripper: float):
        """joint_trajectory: the chunk's chained targets as one trajectory, each point re-checked against the
        one before (the first against the measured position)."""
        q = self._measured()
        if q is None:
            return
        prev, pts = q, []
        for t in targets:
            t, _ = self._guard_target(t, gripper, prev)
            pts.append(t)
            prev = t
        _, gripper = self._guard_target(pts[0], gripper, q)
        self.out.send_trajectory(np.array(pts), gripper, self.get_clock().now().to_msg())
        self.last_cmd = np.concatenate([pts[0], [gripper]])
        self._cmd_in_tick = True

    def _hold(self):
        """Stay put. With a fresh, sane joint state: its position. Otherwise the position is not known now, so
        the last command is repeated (within max_joint_delta of the last sane measurement, and where the arm is
        already going): holding at an old measurement would drive the arm back to where it was."""
        if self.q is None:
            return
        fresh = self.joint_state_bad is None and not self.safety.stale(
            {'joint_states': self.stamps['joint_states']}, self._now())
        if fresh or self.last_cmd is None:
            self._send(self.q, self.gripper)
        else:
            self._send(self.last_cmd[:self.n], float(self.last_cmd[self.n]))

    def _event(self, kind: int, detail: str = ''):
        ev = EpisodeEvent()
        ev.header.stamp = self.get_clock().now().to_msg()
        ev.episode_id, ev.event, ev.step_count = self.episode_id, kind, self.step
        ev.evaluation, ev.detail = self.evaluation, detail
        self.event_pub.publish(ev)

    def _end_episode(self, kind: int, detail: str):
        """Publish the final observation (to bootstrap from on timeouts) and the end event."""
        if self.q is not None and self._inputs_ok():
            feats, proprio = self._observation()
            self._publish_transition(feats, proprio, None, False, 0)
        self._event(kind, detail)
        self.runner.drop_chunk()
        if self.life.phase == Phase.RUNNING:
            self.life.end(Event(kind))
        names = {1: 'SUCCESS', 2: 'FAILURE', 3: 'ESTOP', 4: 'TIMEOUT'}
        self.get_logger().info(f'episode {self.episode_id} {"(eval) " if self.evaluation else ""}'
                               f'{names.get(kind, kind)} after {self.step} steps {detail}')

    def _inputs_ok(self) -> bool:
        return not self.safety.stale(self.stamps, self._now()) and self.q is not None

    def _publish_transition(self, feats, proprio, action_phys, intervention: bool, chunk_step: int):
        if self.joint_state_bad is not None:
            return  # the robot's state is unknown: nothing of it may reach the buffer
        parts = [np.asarray(feats), np.asarray(proprio)] + ([] if action_phys is None else [np.asarray(action_phys)])
        if not all(np.isfinite(p).all() and (p.size == 0 or np.abs(p).max() <= self.cfg.max_input_magnitude)
                   for p in parts):
            self._drop('transition guard: out of range', 'transition withheld from the learner')
            return
        t = Transition()
        t.header.stamp = self.obs_stamp or self.get_clock().now().to_msg()
        t.episode_id, t.step_index, t.chunk_step = self.episode_id, self.step, chunk_step
        t.features = feats.tolist()
        t.proprio = proprio.tolist()
        t.final_observation = action_phys is None
        t.action = [] if action_phys is None else [float(x) for x in action_phys]
        t.intervention = intervention
        t.policy_version = self.runner.version
        t.action_stamp = self.get_clock().now().to_msg()
        self.transition_pub.publish(t)

    def _request_reset(self):
        if not self.life.can_start:
            return
        if self.cfg.reset_mode == 'home':
            self.life.request_start(self.cfg.mode)       # -> homing
            return
        if not self.reset_client.service_is_ready():
            self.get_logger().warning('reset service poco/reset not available yet', throttle_duration_sec=5.0)
            self._rediscover_reset_service()
            return
        self._reset_unready_since = None
        self.life.request_start(self.cfg.mode)           # -> resetting (chooses train / evaluation)
        self._reset_future = self.reset_client.call_async(Reset.Request(seed=self.life.reset_seed,
                                                                        evaluation=self.evaluation))
        self._reset_started = self._now()

    def _rediscover_reset_service(self):
        """A client that has not matched the service for reset_timeout_s (wall) is made anew. Seen once in a
        loaded sim main job: the service was in the graph, yet this client never became ready and the run sat
        idle; service readiness needs both the request and the response topics matched, and a fresh client
        discovers both again."""
        now = time.monotonic()
        if self._reset_unready_since is None:
            self._reset_unready_since = now
        elif now - self._reset_unready_since > self.cfg.reset_timeout_s:
            self.get_logger().warning(f'reset service not ready for {self.cfg.reset_timeout_s:g} s: made a new '
                                      'client to discover it again')
            self.destroy_client(self.reset_client)
            self.reset_client = self.create_client(Reset, C.RESET_SERVICE)
            self._reset_unready_since = now

    def _begin_episode(self):
        self.life.begin()
        self.runner.drop_chunk()
        scene = self.life.eval_scene
        self._event(EpisodeEvent.START, ('train' if not self.evaluation else 'evaluation' if scene is None else
                                         f'evaluation scene {scene + 1}/{self.cfg.eval_scenes}'))

    def _home_tick(self):
        """Drive to the home pose at the per-tick speed limit; start the episode once there."""
        if self.q is None or self.joint_state_bad is not None or \
                self.safety.stale({'joint_states': self.stamps['joint_states']}, self._now()):
            return
        err = np.asarray(self.cfg.home_pose, np.float64) - self.q
        if np.max(np.abs(err)) < self.cfg.home_tolerance:
            self._begin_episode()
            return
        step = np.clip(err, -self.cfg.max_joint_delta, self.cfg.max_joint_delta)
        self._send(self.safety.clamp_targets(self.q + step), 1.0)  # gripper open while homing

    def _chunk_targets(self, plan: np.ndarray) -> np.ndarray:
        """The chunk's absolute targets from the measured position (max_joint_delta chain, joint limits), up to
        the first one whose end effector would leave the box (the tick that reaches it ends the episode)."""
        cfg = self.cfg
        targets = chain_targets(self.q, plan[:, :self.n], self.safety.lim.joint_lower, self.safety.lim.joint_upper,
                                cfg.max_joint_delta)
        for k, t in enumerate(targets):
            ee = self.ee_src.target_position(t)
            if ee is not None and self.safety.ee_outside(ee):
                return targets[:max(k, 1)]
        return targets

    def _publish_box(self):
        m = Marker()
        m.header.frame_id = self.cfg.base_frame
        m.ns, m.id, m.type, m.action = 'safety_box', 0, Marker.LINE_LIST, Marker.ADD
        lo, hi = np.array(self.cfg.ee_box_min), np.array(self.cfg.ee_box_max)
        corners = [np.array([x, y, z]) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        for i in range(8):
            for j in range(i + 1, 8):
                if np.sum(corners[i] != corners[j]) == 1:  # box edges differ in exactly one coordinate
                    m.points += [Point(x=float(corners[i][0]), y=float(corners[i][1]), z=float(corners[i][2])),
                                 Point(x=float(corners[j][0]), y=float(corners[j][1]), z=float(corners[j][2]))]
        m.scale.x = 0.005
        m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 0.3, 0.1, 0.8
        m.pose.orientation.w = 1.0
        self.box_pub.publish(m)

    def _publish_chunk(self, chunk_norm: np.ndarray, chunk_phys: np.ndarray):
        msg = ActionChunk()
        msg.header.stamp = self.obs_stamp or self.get_clock().now().to_msg()
        msg.header.frame_id = self.cfg.base_frame
        msg.policy_version, msg.episode_id, msg.step_index = self.runner.version, self.episode_id, self.step
        msg.horizon, msg.action_dim = chunk_phys.shape
        msg.data = chunk_phys.reshape(-1).astype(np.float32).tolist()
        self.chunk_pub.publish(msg)
        # rviz: the chunk's joint-space plan as a bar strip (one sphere per step, height = cumulative motion)
        arr = MarkerArray()
        base = self.ee if self.ee is not None else np.zeros(3, np.float32)
        cum = np.cumsum(np.abs(chunk_phys[:, :self.n]).sum(axis=1))
        for k in range(len(chunk_phys)):
            m = Marker()
            m.header = msg.header
            m.ns, m.id, m.type, m.action = 'chunk', k, Marker.SPHERE, Marker.ADD
            m.pose.position.x, m.pose.position.y = float(base[0]), float(base[1])
            m.pose.position.z = float(base[2] + 0.02 * k)
            m.pose.orientation.w = 1.0
            m.scale.x = m.scale.y = m.scale.z = 0.01 + 0.05 * float(cum[k]) / (1e-6 + float(cum[-1]))
            m.color.g, m.color.b, m.color.a = 0.8, 1.0 - k / len(chunk_phys), 0.9
            arr.markers.append(m)
        self.marker_pub.publish(arr)

    # ---------------------------------------------------------------- the 15 Hz tick
    def tick(self):
        """Timer on the node clock. Wall clock: tick now. Sim time: the tick of this time waits for its
        observation (`_run_due`); a newer tick replaces one whose observation never came."""
        now_ns = self.get_clock().now().nanoseconds
        if not self.sim_time:
            self._run_tick(now_ns)
            return
        self._due = (now_ns, time.monotonic())
        self._run_due()

    def _observation_in(self, t_ns: int) -> bool:
        """Sim time: the observation stamped t_ns (or later) has arrived (sim/state has no header: one new
        message since the last tick; the sim publishes it before the joint state)."""
        if self._obs_ns['joint_states'] < t_ns or (self._ee_ns is not None and self._ee_ns < t_ns):
            return False
        if self.cfg.obs_mode == 'pixels':
            return all(self._obs_ns.get(c, -1) >= t_ns for c in self.cfg.cameras)
        return self._state_seq > self._state_seq_used

    def _run_due(self):
        if self._due is None:
            return
        t_ns, since = self._due
        if not self._observation_in(t_ns) and time.monotonic() - since < self.cfg.sync_timeout_s:
            return
        self._due = None
        self._run_tick(t_ns)

    def _run_tick(self, t_ns: int):
        self._cmd_in_tick = False
        self._state_seq_used = self._state_seq
        try:
            self._tick()
        except Exception as e:  # the control loop must survive anything; hold and report
            self.get_logger().error(f'tick failed: {type(e).__name__}: {e}', throttle_duration_sec=2.0)
            self._hold()
        self.ticks += 1
        ack = PolicyTick()
        ack.header.stamp = Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)
        if self.obs_stamp is not None:
            ack.observation_stamp = self.obs_stamp
        ack.command_sent, ack.phase = self._cmd_in_tick, self.phase
        self.tick_pub.publish(ack)

    def _box_source(self) -> str:
        if self.ee_src.fk is not None:
            return f'description:{self.cfg.robot_description_file}#{self.cfg.ee_link}'
        return f'topic:{self.resolve_topic_name(C.EE_POSE)}[{self.cfg.base_frame}]'

    def publish_diagnostics(self):
        mono, now = time.monotonic(), self._now()
        t0, n0 = self._rate_mark
        rate = (self.ticks - n0) / max(mono - t0, 1e-9)
        self._rate_mark = (mono, self.ticks)
        cfg = self.cfg
        values = {'phase': self.phase, 'ticks': self.ticks, 'tick_rate_hz': round(rate, 2),
                  'control_rate_hz': cfg.control_rate_hz, 'episode_id': self.episode_id, 'step': self.step,
                  'weights_version': self.runner.version, 'weights_checked_version': self.gate.version,
                  'weights_signed': self.weights_key is not None, 'joint_state_bad': self.joint_state_bad or '',
                  'estop': self.estop, 'estop_reason': self.estop_reason if self.estop else '',
                  'estop_heartbeat_timeout_s': cfg.estop_heartbeat_timeout_s,
                  'estop_silence_s': round(self.estop_mon.silence(mono), 3),
                  'estop_incompatible_publishers': self.estop_incompatible,
                  'box_source': self._box_source(), 'box_state': self.box_state,
                  'command_interface': cfg.command_interface, 'gripper_interface': cfg.gripper_interface,
                  'max_joint_delta': cfg.max_joint_delta, 'sim_time': self.sim_time}
        for k, t in self.stamps.items():  # input staleness on the node clock
            values[f'input_age_s/{k}'] = 'never' if t is None else round(now - t, 3)
        level, message = None, ''
        if self.estop_incompatible:
            level, message = 'error', f'{self.estop_incompatible} e-stop publisher(s) with incompatible QoS'
        elif self.estop:
            level, message = 'error', f'e-stop engaged: {self.estop_reason}'
        elif self.box_state.startswith('holding'):
            level, message = 'error', f'safety box: {self.box_state}'
        self.diag_pub.publish(diagnostics(self.get_clock().now().to_msg(), self.get_fully_qualified_name(),
                                          values, self.drops, message=message, level=level))

    # ---------------------------------------------------------------- parameters at run time
    def _on_set_parameters(self, params):
        """Validate and apply run-time changes (node_config.RUNTIME_PARAMS); rclpy refuses read-only ones."""
        from rcl_interfaces.msg import SetParametersResult
        ours = {p.name: p.value for p in params if p.name in RUNTIME_PARAMS}
        if not ours:
            return SetParametersResult(successful=True)
        try:
            new = runtime_update(self.cfg, self._startup_cfg, {k: list(v) if not isinstance(v, (str, bytes, int,
                                 float, bool)) else v for k, v in ours.items()})
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e)[:500])
        self.cfg = new
        lim = self.safety.lim
        lim.box_min, lim.box_max = np.array(new.ee_box_min), np.array(new.ee_box_max)
        lim.staleness_s = self.ee_src.staleness_s = new.staleness_s
        self.estop_mon.heartbeat_timeout_s = new.estop_heartbeat_timeout_s
        if new.estop_heartbeat_timeout_s > 0:
            self._hb_timer.reset()
        else:
            self._hb_timer.cancel()
        self._publish_box()
        self.get_logger().info(f'parameters changed at run time: {ours}')
        return SetParametersResult(successful=True)

    def _param_echo(self, name: str, value):
        """Keep the ROS parameter equal to a value changed another way (poco/set_mode)."""
        from rclpy.parameter import Parameter
        try:
            self.set_parameters([Parameter(name, value=value)])
        except Exception as e:  # noqa: BLE001 - the change itself already happened
            self._drop(f'parameter echo: {type(e).__name__}', str(e))

    def _tick(self):
        cfg = self.cfg
        self._check_heartbeat()
        if self.estop or self.life.phase == Phase.HALTED:
            if self.estop:
                return  # nothing moves while engaged (the hold was sent when it engaged)
            if cfg.auto_reset:
                self._request_reset()
            return
        if self.life.phase == Phase.RESETTING:
            f = self._reset_future
            if f is not None and f.done():
                res = f.result()
                if res is None or not res.success:
                    self.get_logger().error(f'reset failed: {getattr(res, "message", "no response")}')
                    self.life.start_failed()
                    return
                # the episode starts from an observation of the new scene (stamped after the reset)
                if self.obs_stamp is not None and _ns(self.obs_stamp) > _ns(res.stamp):
                    self._begin_episode()
                    return
            if self._now() - self._reset_started > cfg.reset_timeout_s:
                self.get_logger().error('reset timed out; retrying')
                self.life.start_failed()
            return
        if self.life.phase == Phase.HOMING:
            self._home_tick()
            return
        if self.life.phase in (Phase.IDLE, Phase.ENDED):
            if cfg.mode == 'hold' or not self.runner.ready:
                if not self.runner.ready:
                    self.get_logger().info('waiting for policy weights', throttle_duration_sec=10.0)
                return
            if cfg.auto_reset:
                self._request_reset()
            return

        # phase RUNNING
        due = self.life.due_end()      # success pressed / step limit H reached
        if due is not None:
            self._end_episode(int(due[0]), due[1])
            return
        if self.joint_state_bad is not None:
            self._hold()  # dropped and counted per message (joint_states: <reason>); act again on a sane one
            return
        stale = self.safety.stale(self.stamps, self._now())
        if stale or self.q is None:
            self.get_logger().warning(f'watchdog: stale inputs {stale}; holding position', throttle_duration_sec=2.0)
            self._hold()
            return
        self.ee, why = self.ee_src.position(self.q, self._now())
        if self.ee is None:  # the box cannot be checked: never act blind
            self.box_state = f'holding: {why}'
            suffix = self.drops.allow('box unknown')
            if suffix is not None:
                self.get_logger().error(f'safety box: end-effector position unknown ({why}); holding position')
            self._hold()
            return
        if self.safety.ee_outside(self.ee):
            self.box_state = f'ended an episode: end effector {np.round(self.ee, 3).tolist()} outside'
            self._hold()
            self._end_episode(EpisodeEvent.FAILURE, f'end effector {np.round(self.ee, 3).tolist()} left the box')
            return
        self.box_state = 'ok'
        if cfg.mode == 'hold':
            self._hold()
            return

        intervention, feats, proprio, plan = False, None, None, None
        if self.teleop is not None and self._now() - self.teleop[1] < 3.0 / cfg.control_rate_hz:
            action_phys, chunk_step, intervention = self.teleop[0].copy(), 0, True
            self.runner.drop_chunk()  # after the human lets go, plan afresh from the new state
        else:
            if self.runner.needs_chunk():
                feats, proprio = self._observation()
                obs = np.concatenate([feats, proprio])
                # the initial evaluation block measures the starting policy: no swaps until it is over
                frozen = self.life.weights_frozen
                det = self.evaluation and cfg.eval_deterministic
                chunk = self.runner.new_chunk(obs, deterministic=det, allow_swap=not frozen)
                plan = self.scaler.denormalize(chunk)
                self._publish_chunk(chunk, plan)
            a_norm, chunk_step = self.runner.next_action()
            action_phys = self.scaler.denormalize(a_norm[None])[0]
        n = self.n
        delta = np.clip(action_phys[:n], -cfg.max_joint_delta, cfg.max_joint_delta)
        action_phys[:n] = delta
        action_phys[n] = float(np.clip(action_phys[n], 0.0, 1.0))
        q_target = chain_targets(self.q, delta[None], self.safety.lim.joint_lower, self.safety.lim.joint_upper,
                                 cfg.max_joint_delta)[0]
        ee_target = self.ee_src.target_position(q_target)  # with a description: where this target goes
        if ee_target is not None and self.safety.ee_outside(ee_target):
            where = np.round(ee_target, 3).tolist()
            self.box_state = f'ended an episode: target end effector {where} outside'
            self._hold()
            self._end_episode(EpisodeEvent.FAILURE, f'target end effector {where} would leave the box')
            return
        if intervention or not self.out.per_chunk:
            self._send(q_target, action_phys[n])
        elif chunk_step == 0:  # joint_trajectory: the whole chunk at once, cut before it would leave the box
            self._send_chunk(self._chunk_targets(plan), action_phys[n])
        else:  # the controller is executing this chunk's trajectory; the gripper goes per tick
            self.out.send_gripper(action_phys[n], self.get_clock().now().to_msg())
            self.last_cmd = np.concatenate([q_target, [action_phys[n]]])
            self._cmd_in_tick = True
        # Encoding for the learner happens after the command went out, so it adds no control jitter
        # (the images and joint state used are the ones this tick acted on).
        if feats is None:
            feats, proprio = self._observation()
        self._publish_transition(feats, proprio, action_phys, intervention, chunk_step)
        self.life.stepped()


def main(args=None):
    init_ros(args)
    node = PolicyNode()
    # Single-threaded on purpose: MultiThreadedExecutor showed 0.5-2.4 s stalls under load (measured by
    # benchmarks/bench_policy_node.py). The e-stop callback still runs within one tick (ticks take < 50 ms).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    gc.collect()
    gc.freeze()  # long-lived objects out of the collector: no 100+ ms full collections mid-episode
    try:
        spin(executor)
    finally:
        executor.shutdown()
        node.weights_worker.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
