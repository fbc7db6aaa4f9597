"""Sim node: the MuJoCo env impersonating the robot on the ROS graph (docs/architecture.md, "ROS graph").

Each tick (control_rate_hz * real_time_factor per wall second) it applies the latest `joint_commands`
(absolute targets, clamped to the joint limits and to measured q +- max_target_step), steps the physics by one
control period, and publishes `joint_states`, `cameras/<name>/image_raw` (pixels mode), `ee_pose`, `sim/state`
(the privileged state vector, which the policy uses in state mode) and, once per episode, `poco/success`.
`poco/estop` (true) halts the arm (hold position, commands ignored) until the next `poco/reset`.
Thin by design: all physics/task logic lives in poco_sim.envs.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float32MultiArray, MultiArrayDimension

from poco_msgs.srv import Reset
from poco_policy.config import declare_ros_parameters
from poco_sim.config import CAMERAS, SimNodeConfig
from poco_sim.envs import TASKS, make_env

RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
COMMANDS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     history=HistoryPolicy.KEEP_LAST)
GRIPPER = 'gripper'


def _check_config(cfg: SimNodeConfig) -> None:
    if cfg.task not in TASKS:
        raise ValueError(f'task must be one of {sorted(TASKS)}, got {cfg.task!r}')
    if cfg.obs_mode not in ('pixels', 'state'):
        raise ValueError(f"obs_mode must be 'pixels' or 'state', got {cfg.obs_mode!r}")
    if cfg.control_rate_hz <= 0 or cfg.real_time_factor < 1.0:
        raise ValueError('control_rate_hz must be > 0 and real_time_factor >= 1')
    if len(cfg.joint_names) != 6 or len(cfg.bbox_cm) != 6:
        raise ValueError('joint_names must name 6 joints and bbox_cm have 6 values')
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
        self._seed_rng = np.random.default_rng(cfg.seed)  # seeds of resets that do not name one
        self.episode_id = 0
        self.episode_seed = cfg.seed
        self.env.reset(seed=cfg.seed)
        # Header stamps. At real_time_factor 1: the wall clock when the tick's observation is ready, as a real
        # driver stamps at capture (a start + ticks / rate clock fell 17-75 ms behind as ticks ran late, which
        # inflated measured latencies). Faster than real time: start + simulated time, one period per tick.
        self._t0 = time.time()
        self._last_stamp_ns = 0
        self._ticks = 0
        self._cmd: Optional[tuple[np.ndarray, float]] = None
        self._estop_engaged = False  # the button's current state
        self._halted = False         # latched by the e-stop, cleared by a reset
        self._success_sent = False
        self._was_in_bbox = True

        sensors = qos_profile_sensor_data
        self.js_pub = self.create_publisher(JointState, 'joint_states', sensors)
        self.ee_pub = self.create_publisher(PoseStamped, 'ee_pose', sensors)
        self.state_pub = self.create_publisher(Float32MultiArray, 'sim/state', sensors)
        self.img_pubs = {}
        if cfg.obs_mode == 'pixels':
            self.img_pubs = {c: self.create_publisher(Image, f'cameras/{c}/image_raw', sensors) for c in cfg.cameras}
        self.success_pub = self.create_publisher(Bool, 'poco/success', RELIABLE)
        self.create_subscription(JointState, 'joint_commands', self.on_command, COMMANDS)
        self.create_subscription(Bool, 'poco/estop', self.on_estop, LATCHED)
        self.create_service(Reset, 'poco/reset', self.on_reset)
        period = 1.0 / (cfg.control_rate_hz * cfg.real_time_factor)
        self.timer = self.create_timer(period, self.tick)
        self.get_logger().info(
            f'sim ready: task={cfg.task} obs_mode={cfg.obs_mode} image_size={cfg.image_size} '
            f'rate={cfg.control_rate_hz} Hz x{cfg.real_time_factor} seed={cfg.seed}')

    # ------------------------------------------------------------------ inputs
    def on_command(self, msg: JointState) -> None:
        """6 joint targets + gripper command, by name when names are given, else by position."""
        try:
            pos = list(msg.position)
            if msg.name:
                if len(msg.name) != len(pos):
                    raise ValueError(f'{len(msg.name)} names but {len(pos)} positions')
                by_name = dict(zip(msg.name, pos))
                missing = [n for n in self.joint_names + [GRIPPER] if n not in by_name]
                if missing:
                    raise ValueError(f'missing joints {missing}')
                pos = [by_name[n] for n in self.joint_names] + [by_name[GRIPPER]]
            if len(pos) != 7:
                raise ValueError(f'expected 7 positions (6 joints + gripper), got {len(pos)}')
            v = np.asarray(pos, dtype=float)
            if not np.all(np.isfinite(v)):
                raise ValueError('non-finite value')
        except (ValueError, TypeError) as e:
            self.get_logger().warning(f'rejecting malformed joint_commands: {e}', throttle_duration_sec=2.0)
            return
        self._cmd = (v[:6], float(np.clip(v[6], 0.0, 1.0)))

    def on_estop(self, msg: Bool) -> None:
        self._estop_engaged = bool(msg.data)
        if msg.data and not self._halted:
            self._halted = True
            self.get_logger().error('E-STOP engaged: holding position until poco/reset')

    def on_reset(self, req: Reset.Request, resp: Reset.Response) -> Reset.Response:
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
        resp.message = f'episode {self.episode_id} seed {seed}' + (' (e-stop still engaged)' if self._halted else '')
        self.get_logger().info(f'reset: {resp.message}')
        return resp

    # ------------------------------------------------------------------ tick
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
        if info['bbox_violation'] and self._was_in_bbox:
            self.get_logger().warning(f'end effector left the bbox at {np.round(info["ee_pos"], 3).tolist()} m',
                                   throttle_duration_sec=2.0)
        self._was_in_bbox = not info['bbox_violation']
        if env.succeeded and not self._success_sent:
            self.success_pub.publish(Bool(data=True))
            self._success_sent = True
            self.get_logger().info(f'episode {self.episode_id}: success after {env.step_count} ticks')

    def _stamp(self) -> Time:
        if self.cfg.real_time_factor == 1.0:
            ns = self.get_clock().now().nanoseconds
        else:
            ns = int(round((self._t0 + self._ticks / self.cfg.control_rate_hz) * 1e9))
        ns = max(ns, self._last_stamp_ns + 1)  # strictly increasing: stamps identify a tick's messages
        self._last_stamp_ns = ns
        return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

    def _publish(self, obs: dict, stamp: Time) -> None:
        env = self.env
        js = JointState()
        js.header.stamp = stamp
        js.name = self.joint_names + [GRIPPER]
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

        st = Float32MultiArray()
        state = env.state_vector()
        st.layout.dim = [MultiArrayDimension(label='state', size=int(state.size), stride=int(state.size))]
        st.data = state.tolist()
        self.state_pub.publish(st)

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
        if self.env is not None:
            self.env.close()
            self.env = None
        super().destroy_node()


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    rc = 0
    try:
        node = SimNode()
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
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
