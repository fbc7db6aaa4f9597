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
"""
from __future__ import annotations

import gc
import math
import threading
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, Point
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32MultiArray
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker, MarkerArray

from poco_msgs.msg import ActionChunk, EpisodeEvent, PolicyTick, PolicyWeights, Transition
from poco_msgs.srv import Reset, SetMode

from poco_policy import contract as C
from poco_policy.config import declare_ros_parameters
from poco_policy.episode import EpisodeLifecycle, Event, LifecycleConfig, Phase
from poco_policy.runtime import (BadInput, ChunkRunner, DropCounter, Mailbox, Safety, SafetyLimits, WeightsGate,
                                 diagnostics, finite_array, image_to_array, use_sim_time_from_env)
from poco_policy.weights import WeightsLimits, WeightsRejected, load_key



def _ns(t) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


@dataclass
class PolicyNodeConfig:
    control_rate_hz: float = 15.0
    obs_mode: str = 'pixels'            # 'pixels' (cameras) or 'state' (sim privileged state on sim/state)
    cameras: tuple = C.CAMERAS
    feature_dim: int = 64               # per camera, must match the learner's encoder
    image_size: int = 128
    encoder_checkpoint: str = ''        # local ResNet-10 safetensors; '' = seeded random weights
    joint_names: tuple = C.ARM_JOINTS
    joint_lower: tuple = (-3.1, -2.0, -2.6, -3.1, -2.0, -3.1)
    joint_upper: tuple = (3.1, 2.0, 2.6, 3.1, 2.0, 3.1)
    max_joint_delta: float = C.MAX_JOINT_DELTA  # rad per tick; sampled deltas are clipped to this
    ee_box_min: tuple = (-0.3, -0.5, -0.05)  # metres, base frame
    ee_box_max: tuple = (0.9, 0.5, 0.8)
    staleness_s: float = 0.5            # inputs older than this -> hold position (watchdog)
    max_episode_steps: int = 100        # H: timeout
    auto_reset: bool = True             # sim: reset and start the next episode automatically
    reset_mode: str = 'service'         # 'service': call poco/reset (sim); 'home': drive to home_pose (real)
    home_pose: tuple = (0.0, 0.41, 1.89, 0.0, 0.84, 0.0)
    home_tolerance: float = 0.02        # rad: home reached
    eval_every: int = 5                 # every k-th episode is an evaluation episode (0 = never)
    initial_eval_episodes: int = 0      # the first n episodes evaluate the starting (pre-trained) policy
    eval_deterministic: bool = False    # True: evaluate from zero initial noise (not the policy POCO trains, docs/learning.md)
    mode: str = 'train'                 # 'train' | 'eval' | 'hold'
    initial_weights: str = ''           # actor safetensors to start from ('' = wait for the learner)
    reset_timeout_s: float = 10.0
    seed: int = 0
    torch_threads: int = 1
    sync_timeout_s: float = 0.25        # sim time: wall s a tick waits for its observation, then runs anyway
    # --- trust boundary (weights and joint states; poco_policy/weights.py)
    weights_key_file: str = ''          # HMAC key file; set: refuse unsigned / wrongly signed weights
    obs_dim: int = 0                    # weights' obs size; 0 = pixels: cameras x feature_dim + 7, state: sim/state + 7
    horizon: int = 0                    # weights' chunk length T; 0 = that of the running weights (first: any <= 64)
    max_hidden_dim: int = 1024          # widest layer accepted in weights
    max_hidden_layers: int = 8
    max_flow_steps: int = 100
    max_weights_bytes: int = 67108864   # payload bytes (64 MiB)
    max_metadata_bytes: int = 65536
    max_json_depth: int = 16
    max_version_jump: int = 1000        # weights more than this many versions past the running ones are refused
    max_sample_s: float = 0.04          # test forward pass (best of 3) must sample a chunk within this
    joint_limit_tolerance: float = 0.2  # rad: a joint state further outside the joint limits is insane
    max_input_magnitude: float = 1.0e4  # sim/state values beyond this are refused (never reach the learner)


class PolicyNode(Node):
    def __init__(self, **kwargs):
        super().__init__('policy', **kwargs)
        self.cfg = declare_ros_parameters(self, PolicyNodeConfig)
        cfg = self.cfg
        self.sim_time = use_sim_time_from_env(self)  # before any timer: they run on the node clock
        self.drops = DropCounter()
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        import torch  # imported here so `--help`-like uses of the module stay light
        torch.set_num_threads(max(1, cfg.torch_threads))
        self._torch = torch
        from poco_policy.flow_policy import policy_from_bytes
        from poco_policy.observation import ActionScaler
        self.scaler = ActionScaler(cfg.max_joint_delta)
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
                                                     cfg.reset_mode), first_episode_id=int(time.time()) * 1000)
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
        self.create_subscription(PoseStamped, C.EE_POSE, g('ee_pose', self.on_ee), q(C.EE_POSE))
        self.create_subscription(Bool, C.ESTOP, g('estop', self.on_estop), q(C.ESTOP))
        self.create_subscription(Bool, C.SUCCESS, g('success', self.on_success), q(C.SUCCESS))
        # raw: the control executor only takes the serialised bytes; parsing, checks, deserialisation and the
        # test forward pass run on the weights worker thread (the swap itself waits for a chunk boundary)
        self.weights_worker = Mailbox(self._weights_guarded, 'poco-weights')
        self.create_subscription(PolicyWeights, C.POLICY_WEIGHTS, g('weights', self.on_weights),
                                 q(C.POLICY_WEIGHTS), raw=True)
        self.create_subscription(ActionChunk, C.TELEOP_ACTION, g('teleop', self.on_teleop), q(C.TELEOP_ACTION))

        self.cmd_pub = self.create_publisher(JointState, C.JOINT_COMMANDS, q(C.JOINT_COMMANDS))
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
        self.create_timer(1.0, g('diagnostics', self.publish_diagnostics), clock=self._steady)
        self.get_logger().info(f'policy node up: obs_mode={cfg.obs_mode} rate={cfg.control_rate_hz} Hz '
                               f'H={cfg.max_episode_steps} mode={cfg.mode}'
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
        g = float(pos.get(C.GRIPPER_JOINT, self.gripper))
        tol = self.cfg.joint_limit_tolerance
        if not (np.isfinite(q).all() and math.isfinite(g)):
            raise self._insane('non-finite', f'joint_states: {q.tolist()} gripper {g}')
        outside = (q < self.safety.lim.joint_lower - tol) | (q > self.safety.lim.joint_upper + tol)
        if outside.any() or not -tol <= g <= 1.0 + tol:
            raise self._insane('outside limits', f'joint_states: {np.round(q, 3).tolist()} gripper {g:.3g} '
                                                 f'outside the joint limits by more than {tol} rad')
        self.joint_state_bad = None
        self.q, self.gripper = q.astype(np.float32), g
        self.stamps['joint_states'] = self._now()
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
        self.stamps[cam] = self._now()
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
        ee = np.array([p.x, p.y, p.z], dtype=np.float32)
        if not np.isfinite(ee).all():
            raise BadInput('non-finite', f'ee_pose position {ee.tolist()}')
        self.ee = ee
        self._ee_ns = _ns(msg.header.stamp)
        self._run_due()

    def on_teleop(self, msg: ActionChunk):
        a = finite_array(msg.data, 7, 'teleop/action')
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
        if msg.data and not self.estop:
            was_running = self.life.phase == Phase.RUNNING
            try:
                self._hold()  # halt now, not at the next tick
                if was_running:
                    self._end_episode(EpisodeEvent.ESTOP, 'e-stop pressed')
            finally:  # halted whatever failed above: a release must never resume a running episode
                self.life.estop_pressed()
            self.get_logger().error('E-STOP engaged: motion halted until reset')
        elif not msg.data and self.estop:
            self.life.estop_released()
            self.get_logger().warning('e-stop released; waiting for a reset')

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
            return cfg.feature_dim * len(cfg.cameras) + 7
        state = getattr(self, 'state', None)
        if state is not None:
            return int(state.size) + 7
        pol = self.runner.policy if hasattr(self, 'runner') else None
        return int(pol.cfg.obs_dim) if pol is not None else 0

    def _weights_limits(self) -> WeightsLimits:
        cfg = self.cfg
        pol = self.runner.policy if hasattr(self, 'runner') else None
        horizon = cfg.horizon or (int(pol.cfg.horizon) if pol is not None else 0)
        return WeightsLimits(obs_dim=self._robot_obs_dim(), action_dim=len(cfg.joint_names) + 1, horizon=horizon,
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
        want = (self.cfg.horizon or policy.cfg.horizon, len(self.cfg.joint_names) + 1)
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

    def _send(self, q_target: np.ndarray, gripper: float):
        # Final guard, whatever computed the target: finite, within max_joint_delta of the measured position,
        # gripper in [0, 1]. The measured position itself passed the joint-state checks.
        q = self.q
        if q is None or not np.isfinite(q).all():
            self._drop('command guard: no measured position', 'command withheld')
            return
        q_target = np.asarray(q_target, dtype=np.float64)
        if q_target.shape != q.shape or not np.isfinite(q_target).all() or not math.isfinite(float(gripper)):
            self._drop('command guard: non-finite', f'target {q_target.tolist()} gripper {gripper}: holding')
            q_target, gripper = q.astype(np.float64), self.gripper
        d = self.cfg.max_joint_delta
        bounded = np.clip(q_target, q - d, q + d)
        if np.abs(bounded - q_target).max() > 1e-6:
            self._drop('command guard: beyond max_joint_delta',
                       f'target moved {np.abs(q_target - q).max():.3g} rad > {d}: clipped')
        q_target, gripper = bounded, float(np.clip(gripper, 0.0, 1.0))
        msg = JointState()
        msg.header.stamp = self.get_clock().now().to_msg()  # sim time: the tick's time (the sim waits for it)
        msg.name = list(self.cfg.joint_names) + [C.GRIPPER_JOINT]
        msg.position = [float(x) for x in q_target] + [float(gripper)]
        self.cmd_pub.publish(msg)
        self.last_cmd = np.concatenate([q_target, [gripper]])
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
            self._send(self.last_cmd[:6], float(self.last_cmd[6]))

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
            return
        self.life.request_start(self.cfg.mode)           # -> resetting (chooses train / evaluation)
        self._reset_future = self.reset_client.call_async(Reset.Request(seed=-1, evaluation=self.evaluation))
        self._reset_started = self._now()

    def _begin_episode(self):
        self.life.begin()
        self.runner.drop_chunk()
        self._event(EpisodeEvent.START, 'evaluation' if self.evaluation else 'train')

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

    def _publish_box(self):
        m = Marker()
        m.header.frame_id = 'base_link'
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
        msg.header.frame_id = 'base_link'
        msg.policy_version, msg.episode_id, msg.step_index = self.runner.version, self.episode_id, self.step
        msg.horizon, msg.action_dim = chunk_phys.shape
        msg.data = chunk_phys.reshape(-1).astype(np.float32).tolist()
        self.chunk_pub.publish(msg)
        # rviz: the chunk's joint-space plan as a bar strip (one sphere per step, height = cumulative motion)
        arr = MarkerArray()
        base = self.ee if self.ee is not None else np.zeros(3, np.float32)
        cum = np.cumsum(np.abs(chunk_phys[:, :6]).sum(axis=1))
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

    def publish_diagnostics(self):
        values = {'phase': self.phase, 'ticks': self.ticks, 'episode_id': self.episode_id, 'step': self.step,
                  'weights_version': self.runner.version, 'weights_checked_version': self.gate.version,
                  'weights_signed': self.weights_key is not None, 'joint_state_bad': self.joint_state_bad or '',
                  'estop': self.estop, 'sim_time': self.sim_time}
        self.diag_pub.publish(diagnostics(self.get_clock().now().to_msg(), self.get_fully_qualified_name(),
                                          values, self.drops))

    def _tick(self):
        cfg = self.cfg
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
        if self.safety.ee_outside(self.ee):
            self._hold()
            self._end_episode(EpisodeEvent.FAILURE, f'end effector {np.round(self.ee, 3).tolist()} left the box')
            return
        if cfg.mode == 'hold':
            self._hold()
            return

        intervention, feats, proprio = False, None, None
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
                self._publish_chunk(chunk, self.scaler.denormalize(chunk))
            a_norm, chunk_step = self.runner.next_action()
            action_phys = self.scaler.denormalize(a_norm[None])[0]
        delta = np.clip(action_phys[:6], -cfg.max_joint_delta, cfg.max_joint_delta)
        action_phys[:6] = delta
        action_phys[6] = float(np.clip(action_phys[6], 0.0, 1.0))
        self._send(self.safety.clamp_targets(self.q + delta), action_phys[6])
        # Encoding for the learner happens after the command went out, so it adds no control jitter
        # (the images and joint state used are the ones this tick acted on).
        if feats is None:
            feats, proprio = self._observation()
        self._publish_transition(feats, proprio, action_phys, intervention, chunk_step)
        self.life.stepped()


def main(args=None):
    rclpy.init(args=args)
    node = PolicyNode()
    # Single-threaded on purpose: MultiThreadedExecutor showed 0.5-2.4 s stalls under load (measured by
    # benchmarks/bench_policy_node.py). The e-stop callback still runs within one tick (ticks take < 50 ms).
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    gc.collect()
    gc.freeze()  # long-lived objects out of the collector: no 100+ ms full collections mid-episode
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.weights_worker.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
