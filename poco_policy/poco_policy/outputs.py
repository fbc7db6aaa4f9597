"""Command outputs a real arm takes, chosen by parameters (`command_interface`, `gripper_interface`).

Arm (`command_interface`):
- 'joint_state': sensor_msgs/JointState of absolute targets on `joint_commands`, one per tick (the sim takes it);
- 'forward_position': std_msgs/Float64MultiArray of the arm joints' targets (in `joint_names` order) on
  `forward_position_topic`, one per tick (ros2_control's forward position controller);
- 'joint_trajectory': trajectory_msgs/JointTrajectory on `joint_trajectory_topic`, one per chunk with one point
  per chunk step at 1/control_rate_hz spacing (the controller interpolates between them; sending single 0.05 rad
  steps at 15 Hz to a position interface is jerky). Holds and single steps (homing, teleop) are one-point
  trajectories, which replace whatever the controller was executing. The stamp is zero: start on receipt.
Gripper (`gripper_interface`): 'joint_state' (an entry `gripper_joint` of the JointState on `joint_commands`,
merged into the arm's message when the arm takes JointState too), 'float64_array' (Float64MultiArray [position]
on `gripper_topic`) or 'none'. The policy's gripper command in [0, 1] (0 closed, 1 open) maps linearly to
`gripper_closed` .. `gripper_open` (the joint's position units), and measured positions map back.

The planning (`chain_targets`, `GripperScale`) is plain numpy; `CommandOutputs` is the thin ROS adapter (message
modules imported when it is built, so this module imports without ROS).
"""
from __future__ import annotations

from dataclasses import dataclass
import numpy as np

COMMAND_INTERFACES = ('joint_state', 'forward_position', 'joint_trajectory')
GRIPPER_INTERFACES = ('joint_state', 'float64_array', 'none')


@dataclass(frozen=True)
class GripperScale:
    closed: float = 0.0   # joint position of command 0
    open: float = 1.0     # joint position of command 1

    def __post_init__(self):
        if not (np.isfinite(self.closed) and np.isfinite(self.open)) or self.closed == self.open:
            raise ValueError(f'gripper_closed ({self.closed}) and gripper_open ({self.open}) must differ')

    def to_position(self, command: float) -> float:
        c = float(np.clip(command, 0.0, 1.0))
        return self.closed + c * (self.open - self.closed)

    def to_command(self, position: float) -> float:
        """Measured position -> opening in [0, 1] units (not clipped: the caller checks the range)."""
        return (float(position) - self.closed) / (self.open - self.closed)


def chain_targets(q0: np.ndarray, deltas: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                  max_delta: float) -> np.ndarray:
    """Absolute targets of a chunk's deltas, each within max_delta of the one before (the first of q0, the
    measured position) and inside the joint limits where that is reachable in one step (a start outside the
    limits walks back at max_delta per step, never jumps). Returns [T, n]."""
    p = np.asarray(q0, np.float64)
    out = np.empty((len(deltas), p.size))
    for k, d in enumerate(np.asarray(deltas, np.float64).reshape(len(deltas), -1)):
        t = np.clip(p + np.clip(d, -max_delta, max_delta), lower, upper)
        p = np.clip(t, p - max_delta, p + max_delta)
        out[k] = p
    return out


def check_interfaces(command_interface: str, gripper_interface: str):
    if command_interface not in COMMAND_INTERFACES:
        raise ValueError(f'command_interface must be one of {COMMAND_INTERFACES}, got {command_interface!r}')
    if gripper_interface not in GRIPPER_INTERFACES:
        raise ValueError(f'gripper_interface must be one of {GRIPPER_INTERFACES}, got {gripper_interface!r}')


class CommandOutputs:
    """Publishers for the configured interfaces; every send goes through here (the node's `_send` guards the
    values first: finite, within max_joint_delta of the measured position, inside the limits)."""

    def __init__(self, node, cfg, qos, joint_commands_topic: str):
        check_interfaces(cfg.command_interface, cfg.gripper_interface)
        self.arm, self.grip = cfg.command_interface, cfg.gripper_interface
        self.joint_names = list(cfg.joint_names)
        self.gripper_joint = cfg.gripper_joint
        self.scale = GripperScale(cfg.gripper_closed, cfg.gripper_open)
        self.dt = 1.0 / cfg.control_rate_hz
        self._node = node
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        self._JointState, self._F64 = JointState, Float64MultiArray
        self.js_pub = self.fwd_pub = self.traj_pub = self.grip_pub = None
        if self.arm == 'joint_state' or self.grip == 'joint_state':
            self.js_pub = node.create_publisher(JointState, joint_commands_topic, qos)
        if self.arm == 'forward_position':
            self.fwd_pub = node.create_publisher(Float64MultiArray, cfg.forward_position_topic, qos)
        if self.arm == 'joint_trajectory':
            # trajectory_msgs only when asked for: the sim graph runs without it
            from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
            self._Traj, self._Point = JointTrajectory, JointTrajectoryPoint
            self.traj_pub = node.create_publisher(JointTrajectory, cfg.joint_trajectory_topic, qos)
        if self.grip == 'float64_array':
            self.grip_pub = node.create_publisher(Float64MultiArray, cfg.gripper_topic, qos)

    @property
    def per_chunk(self) -> bool:
        """The arm is commanded once per chunk (trajectory), not once per tick."""
        return self.arm == 'joint_trajectory'

    def send_step(self, q_target: np.ndarray, gripper: float, stamp) -> None:
        """One target for the arm (a one-point trajectory on the trajectory interface) and the gripper."""
        if self.arm == 'joint_state':
            self._joint_state(q_target, gripper if self.grip == 'joint_state' else None, stamp)
        elif self.arm == 'forward_position':
            self.fwd_pub.publish(self._F64(data=[float(x) for x in q_target]))
        else:
            self._trajectory(np.asarray(q_target)[None])
        if self.arm != 'joint_state':
            self.send_gripper(gripper, stamp)
        elif self.grip == 'float64_array':
            self.send_gripper(gripper, stamp)

    def send_trajectory(self, targets: np.ndarray, gripper: float, stamp) -> None:
        """A chunk's targets [T, n] as one trajectory (trajectory interface only), and this tick's gripper."""
        self._trajectory(targets)
        self.send_gripper(gripper, stamp)

    def send_gripper(self, gripper: float, stamp) -> None:
        """The gripper alone (ticks between trajectories; with the arm on JointState it rides along there)."""
        if self.grip == 'float64_array':
            self.grip_pub.publish(self._F64(data=[self.scale.to_position(gripper)]))
        elif self.grip == 'joint_state':
            if self.arm == 'joint_state':
                return  # sent with the arm's targets
            self._joint_state(None, gripper, stamp)

    def _joint_state(self, q_target, gripper, stamp):
        msg = self._JointState()
        msg.header.stamp = stamp
        names: list[str] = []
        pos: list[float] = []
        if q_target is not None:
            names += self.joint_names
            pos += [float(x) for x in q_target]
        if gripper is not None:
            names.append(self.gripper_joint)
            pos.append(self.scale.to_position(gripper))
        msg.name, msg.position = names, pos
        self.js_pub.publish(msg)

    def _trajectory(self, targets: np.ndarray):
        msg = self._Traj()
        msg.joint_names = self.joint_names   # header stamp zero: the controller starts it on receipt
        for k, q in enumerate(np.asarray(targets, np.float64)):
            pt = self._Point()
            pt.positions = [float(x) for x in q]
            ns = round((k + 1) * self.dt * 1e9)   # from integer ns: nanosec stays < 1e9
            pt.time_from_start.sec, pt.time_from_start.nanosec = ns // 1_000_000_000, ns % 1_000_000_000
            msg.points.append(pt)
        self.traj_pub.publish(msg)
