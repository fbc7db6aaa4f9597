"""Teleoperation: keyboard (terminal) and sensor_msgs/Joy (gamepad, spacemouse) -> human intervention actions.

While intervening, publishes `teleop/action` (poco_msgs/ActionChunk, horizon 1, action_dim n + 1, physical units:
one delta [rad] per arm joint, bounded by max_joint_delta, + absolute gripper command in [0, 1]) at the control
rate. The arm is the policy node's: `joint_names` (any count n), `gripper_joint`, `gripper_closed` /
`gripper_open` (the same parameters, robot.yaml; poco_policy/node_config.py). The
policy node executes those instead of its own chunk and flags the steps `intervention=True`; when we stop
publishing, it goes back to the policy after a few ticks. Nothing is published while not intervening.

Keyboard (terminal in cbreak mode, so Ctrl-C still works):
    q/a  w/s  e/d  r/f  t/g  y/h  u/j  i/k   joint 1..8  +/-   (each key press = one tick of `key_step` *
                                             max_joint_delta; hold a key: the terminal's auto-repeat keeps it
                                             moving; joints past the 8th: Joy only)
    o / c                          gripper open / close
    space                          toggle intervention
    + / -                          speed up / down (scales key_step)
Joy: per joint one axis (`joy_axes`, -1 = none) scaled by `joy_scales`, with a dead zone; buttons for gripper
open/close, a toggle for intervention, and optionally a dead-man button (intervene only while held).
Gripper starts from the measured opening (joint_states) when intervention begins, so it never jumps.

The mapping is `TeleopMapper` (plain Python, tested without ROS); the node only feeds it and publishes.
"""
from __future__ import annotations

import math
import os
import select
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from poco_policy import contract
from poco_policy.node_config import check_arm, policy_field
from poco_policy.outputs import GripperScale
# key -> (joint index, direction); keys of joints the arm does not have do nothing
KEY_PAIRS = ('qa', 'ws', 'ed', 'rf', 'tg', 'yh', 'uj', 'ik')
JOINT_KEYS = {k: (j, s) for j, (kp, km) in enumerate(KEY_PAIRS) for k, s in ((kp, 1.0), (km, -1.0))}


@dataclass
class TeleopConfig:
    # the arm: the policy node's parameters (same names and defaults: one home, node_config.PolicyNodeConfig)
    joint_names: tuple = policy_field('joint_names')
    gripper_joint: str = policy_field('gripper_joint')
    gripper_closed: float = policy_field('gripper_closed')
    gripper_open: float = policy_field('gripper_open')
    control_rate_hz: float = 15.0
    max_joint_delta: float = contract.MAX_JOINT_DELTA  # rad per tick; every output delta is clipped to it (= policy's)
    keyboard: bool = True                    # read the terminal (only when stdin is a TTY)
    key_step: float = 0.5                    # one key press = key_step * max_joint_delta on that joint
    joy_topic: str = 'joy'
    # one entry per joint_names entry (a 7-joint arm sets 7 of each)
    joy_axes: tuple[int, ...] = (0, 1, 3, 4, 6, 7)     # Joy axis index per joint (-1 = not mapped)
    joy_scales: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)  # per joint: sign / gain (x max_joint_delta)
    joy_deadzone: float = 0.1                # |axis| below it = 0 (rest of the range rescaled to 0..1)
    joy_timeout_s: float = 0.5               # no Joy message for this long -> axes count as released
    joy_gripper_open_button: int = 0
    joy_gripper_close_button: int = 1
    joy_gripper_axis: int = -1               # optional analog gripper: axis in [-1, 1] -> command in [0, 1]
    joy_toggle_button: int = 4               # rising edge toggles intervention (-1 = none)
    joy_deadman_button: int = -1             # >= 0: intervene only while this button is held
    gripper_initial: float = 1.0             # used when no joint_states has been seen
    output_topic: str = contract.TELEOP_ACTION


def _clip_delta(x: np.ndarray, m: float) -> np.ndarray:
    return np.clip(x, -m, m)


class TeleopMapper:
    """Key presses and Joy messages -> one action per control tick (physical units) or None (not intervening).

    Key presses accumulate until the next tick and are then consumed (any excess beyond max_joint_delta is
    dropped, so a burst of key repeats never turns into motion after the key is released). Joy axes are a level:
    they act every tick until released or until Joy messages stop (`joy_timeout_s`)."""

    def __init__(self, cfg: Optional[TeleopConfig] = None):
        self.cfg = cfg or TeleopConfig()
        if not (self.cfg.max_joint_delta > 0 and math.isfinite(self.cfg.max_joint_delta)):
            raise ValueError('TeleopConfig.max_joint_delta must be > 0')
        check_arm(self.cfg.joint_names, self.cfg.gripper_joint, self.cfg.gripper_closed, self.cfg.gripper_open)
        n = self.n = len(self.cfg.joint_names)
        if len(self.cfg.joy_axes) != n or len(self.cfg.joy_scales) != n:
            raise ValueError(f'joy_axes / joy_scales need {n} entries, one per joint_names '
                             f'{list(self.cfg.joint_names)} (-1 = axis not mapped), got '
                             f'{len(self.cfg.joy_axes)} / {len(self.cfg.joy_scales)}')
        self.gripper_scale = GripperScale(self.cfg.gripper_closed, self.cfg.gripper_open)
        self.toggled = False
        self.deadman = False
        self.speed = 1.0
        self.gripper: Optional[float] = None
        self.measured_gripper: Optional[float] = None
        self._pending = np.zeros(n)
        self._joy_delta = np.zeros(n)
        self._joy_time = -math.inf
        self._prev_buttons: list[int] = []

    # ------------------------------------------------------------------ state
    @property
    def intervening(self) -> bool:
        return self.toggled or self.deadman

    def _set_intervening(self, toggled: Optional[bool] = None, deadman: Optional[bool] = None) -> None:
        was = self.intervening
        if toggled is not None:
            self.toggled = toggled
        if deadman is not None:
            self.deadman = deadman
        if self.intervening and not was:
            # start from where the gripper is, not from a stale command
            self.gripper = self.measured_gripper if self.measured_gripper is not None else self.gripper
            self._pending[:] = 0.0
        if not self.intervening:
            self._pending[:] = 0.0

    def set_measured_gripper(self, opening: float) -> None:
        """The measured opening in command units [0, 1] (see `set_measured_gripper_position`)."""
        if math.isfinite(opening):
            self.measured_gripper = float(np.clip(opening, 0.0, 1.0))

    def set_measured_gripper_position(self, position: float) -> None:
        """The gripper joint's measured position (its units: gripper_closed .. gripper_open)."""
        self.set_measured_gripper(self.gripper_scale.to_command(position))

    # ------------------------------------------------------------------ inputs
    def on_key(self, key: str) -> Optional[str]:
        """Apply one key press; returns a short description of what it did (for the operator), or None."""
        if key == ' ':
            self._set_intervening(toggled=not self.toggled)
            return 'intervention ON' if self.intervening else 'intervention off'
        if key in ('+', '='):
            self.speed = min(self.speed * 1.5, 4.0)
            return f'speed x{self.speed:.2f}'
        if key in ('-', '_'):
            self.speed = max(self.speed / 1.5, 0.1)
            return f'speed x{self.speed:.2f}'
        if key == 'o':
            self.gripper = 1.0
            return 'gripper open'
        if key == 'c':
            self.gripper = 0.0
            return 'gripper close'
        k = key.lower()
        if k in JOINT_KEYS:
            j, s = JOINT_KEYS[k]
            if self.intervening and j < self.n:
                self._pending[j] += s * self.cfg.key_step * self.speed * self.cfg.max_joint_delta
            return None
        return None

    def on_joy(self, axes: Sequence[float], buttons: Sequence[int], now: float) -> None:
        cfg = self.cfg
        axes = [float(a) if math.isfinite(float(a)) else 0.0 for a in axes]
        buttons = [int(b) for b in buttons]
        pressed = lambda i: 0 <= i < len(buttons) and buttons[i] != 0  # noqa: E731
        was = lambda i: 0 <= i < len(self._prev_buttons) and self._prev_buttons[i] != 0  # noqa: E731
        if cfg.joy_toggle_button >= 0 and pressed(cfg.joy_toggle_button) and not was(cfg.joy_toggle_button):
            self._set_intervening(toggled=not self.toggled)
        if cfg.joy_deadman_button >= 0:
            self._set_intervening(deadman=pressed(cfg.joy_deadman_button))
        if pressed(cfg.joy_gripper_open_button):
            self.gripper = 1.0
        elif pressed(cfg.joy_gripper_close_button):
            self.gripper = 0.0
        elif 0 <= cfg.joy_gripper_axis < len(axes):
            self.gripper = float(np.clip((axes[cfg.joy_gripper_axis] + 1.0) * 0.5, 0.0, 1.0))
        d = np.zeros(self.n)
        dz = min(max(cfg.joy_deadzone, 0.0), 0.99)
        for j, (ax, sc) in enumerate(zip(cfg.joy_axes, cfg.joy_scales)):
            if 0 <= int(ax) < len(axes):
                v = float(np.clip(axes[int(ax)], -1.0, 1.0))
                v = 0.0 if abs(v) < dz else math.copysign((abs(v) - dz) / (1.0 - dz), v)
                d[j] = v * float(sc) * cfg.max_joint_delta
        self._joy_delta = d
        self._joy_time = now
        self._prev_buttons = buttons

    # ------------------------------------------------------------------ output
    def tick(self, now: float) -> Optional[np.ndarray]:
        """The action for this control tick (float32[n + 1], physical units), or None when not intervening."""
        if not self.intervening:
            self._pending[:] = 0.0
            return None
        delta = self._pending.copy()
        self._pending[:] = 0.0
        if now - self._joy_time <= self.cfg.joy_timeout_s:
            delta += self._joy_delta
        delta = _clip_delta(delta, self.cfg.max_joint_delta)
        g = self.gripper if self.gripper is not None else self.cfg.gripper_initial
        self.gripper = g
        return np.append(delta, np.clip(g, 0.0, 1.0)).astype(np.float32)


def help_line(n_joints: int) -> str:
    pairs = KEY_PAIRS[:n_joints]
    keys = ' '.join(f'{p[0]}/{p[1]}' for p in pairs)
    extra = f' (joints {len(pairs) + 1}..{n_joints}: Joy only)' if n_joints > len(pairs) else ''
    return (f'teleop: space = toggle intervention | {keys} = joint 1..{len(pairs)} +/-{extra} | o/c = gripper '
            'open/close | +/- = speed | Ctrl-C = quit')


HELP = help_line(len(TeleopConfig().joint_names))


class _Terminal:
    """stdin in cbreak mode (no echo, one key at a time, Ctrl-C still a signal); restored on close."""

    def __init__(self):
        import termios
        import tty
        self.fd = sys.stdin.fileno()
        self.old = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)

    def read_key(self, timeout: float) -> Optional[str]:
        r, _, _ = select.select([self.fd], [], [], timeout)
        if not r:
            return None
        ch = os.read(self.fd, 1)
        return ch.decode(errors='ignore') if ch else None

    def close(self):
        import termios
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.old)


def main(args=None):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from sensor_msgs.msg import JointState, Joy

    from poco_msgs.msg import ActionChunk
    from poco_policy.params import declare_ros_parameters
    from poco_policy.ros_init import init_ros, spin

    class TeleopNode(Node):
        def __init__(self):
            super().__init__('teleop')
            self.cfg = declare_ros_parameters(self, TeleopConfig)
            self.mapper = TeleopMapper(self.cfg)
            self.lock = threading.Lock()
            # reliable like the policy node's subscription (a dropped teleop tick would hand control back)
            self.pub = self.create_publisher(ActionChunk, self.cfg.output_topic,
                                             contract.qos(contract.TELEOP_ACTION))
            self.create_subscription(Joy, self.cfg.joy_topic, self.on_joy, contract.qos('sensor'))
            self.create_subscription(JointState, contract.JOINT_STATES, self.on_joint_states,
                                     contract.qos(contract.JOINT_STATES))
            self.create_timer(1.0 / self.cfg.control_rate_hz, self.on_tick)
            self.was_intervening = False

        def on_joy(self, msg):
            with self.lock:
                self.mapper.on_joy(msg.axes, msg.buttons, time.monotonic())

        def on_joint_states(self, msg):
            if self.cfg.gripper_joint in msg.name:
                i = list(msg.name).index(self.cfg.gripper_joint)
                if i < len(msg.position):
                    with self.lock:
                        self.mapper.set_measured_gripper_position(float(msg.position[i]))

        def on_key(self, key: str):
            with self.lock:
                note = self.mapper.on_key(key)
            if note:
                self.get_logger().info(note)

        def on_tick(self):
            with self.lock:
                a = self.mapper.tick(time.monotonic())
                on = self.mapper.intervening
            if on != self.was_intervening:
                self.get_logger().info('intervening' if on else 'back to the policy')
                self.was_intervening = on
            if a is None:
                return
            m = ActionChunk()
            m.header.stamp = self.get_clock().now().to_msg()
            m.header.frame_id = 'base_link'
            m.horizon = 1
            m.action_dim = self.mapper.n + 1
            m.data = a.tolist()
            self.pub.publish(m)

    init_ros(args)
    try:
        node = TeleopNode()
    except ValueError as e:  # bad parameters (e.g. joy_axes for another joint count): one clear line
        print(f'teleop_node: invalid configuration: {e}', file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    term = None
    stop = threading.Event()
    if node.cfg.keyboard and sys.stdin.isatty():
        term = _Terminal()
        node.get_logger().info(help_line(node.mapper.n))

        def keyboard_loop():
            while not stop.is_set():
                k = term.read_key(0.1)
                if k:
                    node.on_key(k)
        threading.Thread(target=keyboard_loop, daemon=True).start()
    else:
        node.get_logger().info(f'keyboard off (no TTY or keyboard:=false); Joy on {node.cfg.joy_topic}')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        spin(executor)
    finally:
        stop.set()
        if term is not None:
            term.close()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    sys.exit(main())
