"""The policy node's parameters: one dataclass (the one home of every name and default), each field with its
ROS descriptor (description, range, read-only), the start-up consistency checks and the run-time changes the
node supports. No ROS import: poco_policy.params turns the metadata into rclpy descriptors.

Run-time changes (`ros2 param set /policy <name> <value>`, validated, applied at once): max_joint_delta (only
down to and up to its start-up value: the start-up value is also the action normalisation the learner uses),
ee_box_min / ee_box_max, staleness_s, estop_heartbeat_timeout_s, mode. Every other parameter is read-only.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from poco_policy import contract as C
from poco_policy.outputs import COMMAND_INTERFACES, GRIPPER_INTERFACES


def param(default: Any, description: str, *, range: Optional[tuple] = None, runtime: bool = False,
          choices: Optional[tuple] = None):
    """A config field with its descriptor: read-only unless `runtime` (the node applies a change at once)."""
    meta = {'description': description, 'read_only': not runtime}
    if range is not None:
        meta['range'] = range
    if choices is not None:
        meta['choices'] = tuple(choices)
    return dataclasses.field(default=default, metadata=meta)


INF = math.inf


@dataclass
class PolicyNodeConfig:
    control_rate_hz: float = param(15.0, 'control ticks per second (chunks execute open-loop at this rate)',
                                   range=(1.0, 200.0))
    obs_mode: str = param('pixels', "'pixels' (cameras) or 'state' (sim privileged state on sim/state)",
                          choices=('pixels', 'state'))
    cameras: tuple = param(C.CAMERAS, 'camera names (cameras/<name>/image_raw)')
    feature_dim: int = param(64, "per camera, must match the learner's encoder", range=(1, 4096))
    image_size: int = param(128, 'encoder input size [px]', range=(8, 1024))
    encoder_checkpoint: str = param('', "local ResNet-10 safetensors; '' = seeded random weights")
    # --- the arm (robot.yaml): any joint count; action = one delta per arm joint + the gripper command
    joint_names: tuple = param(C.ARM_JOINTS, 'arm joints in action order (names in joint_states)')
    joint_lower: tuple = param((-3.1, -2.0, -2.6, -3.1, -2.0, -3.1), 'rad, per arm joint; targets are clipped to it')
    joint_upper: tuple = param((3.1, 2.0, 2.6, 3.1, 2.0, 3.1), 'rad, per arm joint; targets are clipped to it')
    gripper_joint: str = param(C.GRIPPER_JOINT, 'gripper joint name (joint_states and JointState commands)')
    gripper_closed: float = param(0.0, 'gripper joint position for command 0 (closed)')
    gripper_open: float = param(1.0, 'gripper joint position for command 1 (open)')
    base_frame: str = param('base_link', 'frame of the safety box, the ee_pose topic and the rviz markers')
    max_joint_delta: float = param(C.MAX_JOINT_DELTA, 'rad per tick: sampled deltas are clipped to it; changeable '
                                   'at run time up to its start-up value (the action normalisation)',
                                   range=(1e-4, 0.5), runtime=True)
    # --- command outputs (poco_policy/outputs.py)
    command_interface: str = param('joint_state', 'arm output: joint_state (joint_commands) | forward_position '
                                   '(Float64MultiArray) | joint_trajectory (JointTrajectory per chunk)',
                                   choices=COMMAND_INTERFACES)
    forward_position_topic: str = param('forward_position_controller/commands',
                                        'Float64MultiArray topic of command_interface forward_position')
    joint_trajectory_topic: str = param('joint_trajectory_controller/joint_trajectory',
                                        'JointTrajectory topic of command_interface joint_trajectory')
    gripper_interface: str = param('joint_state', 'gripper output: joint_state (entry of joint_commands) | '
                                   'float64_array (gripper_topic) | none', choices=GRIPPER_INTERFACES)
    gripper_topic: str = param('gripper_controller/commands', 'Float64MultiArray [position] topic of '
                               'gripper_interface float64_array')
    # --- safety box (poco_policy/kinematics.py): never off; unknown end-effector position = hold
    robot_description_file: str = param('', "URDF (path or package://pkg/rel): the end-effector position by forward "
                                        "kinematics of the joint states; '' = from the ee_pose topic")
    ee_link: str = param('ee', 'end-effector link of robot_description_file')
    ee_box_min: tuple = param((-0.3, -0.5, -0.05), 'm, base_frame: end-effector box (a target leaving it ends the '
                              'episode)', runtime=True)
    ee_box_max: tuple = param((0.9, 0.5, 0.8), 'm, base_frame', runtime=True)
    staleness_s: float = param(0.5, 'inputs (and ee_pose) older than this -> hold position (watchdog)',
                               range=(0.01, 60.0), runtime=True)
    # --- e-stop: any reliable publisher; heartbeat mode: silence longer than this = stop (0 = off)
    estop_heartbeat_timeout_s: float = param(0.0, 's; > 0: no message on poco/estop for longer = e-stop (send '
                                             'false as the heartbeat); 0 = off', range=(0.0, 60.0), runtime=True)
    max_episode_steps: int = param(100, 'H: step limit (timeout)', range=(1, 1_000_000))
    auto_reset: bool = param(True, 'sim: reset and start the next episode automatically')
    reset_mode: str = param('service', "'service': call poco/reset (sim); 'home': drive to home_pose (real)",
                            choices=('service', 'home'))
    home_pose: tuple = param((0.0, 0.41, 1.89, 0.0, 0.84, 0.0), 'rad, per arm joint (reset_mode home)')
    home_tolerance: float = param(0.02, 'rad: home reached', range=(1e-4, 1.0))
    eval_every: int = param(5, 'every k-th episode is an evaluation episode (0 = never)', range=(0, 1_000_000))
    initial_eval_episodes: int = param(0, 'the first n episodes evaluate the starting (pre-trained) policy',
                                       range=(0, 1_000_000))
    eval_scenes: int = param(0, 'evaluations cycle through this many fixed scenes, so any n consecutive ones see the '
                             "pre-trained block's scenes (sim: reset seeds eval_seed + 1000 x seed + k; home reset: "
                             'the start event names scene k for the operator); 0 = a random scene each time',
                             range=(0, 1_000_000))
    eval_seed: int = param(1_000_000, 'first reset seed of the evaluation scenes (see eval_scenes)',
                           range=(0, 1 << 30))
    eval_deterministic: bool = param(False, 'evaluate from zero initial noise (not the policy POCO trains)')
    mode: str = param('train', "'train' | 'eval' | 'hold'", runtime=True, choices=('train', 'eval', 'hold'))
    initial_weights: str = param('', "actor safetensors to start from ('' = wait for the learner)")
    reset_timeout_s: float = param(10.0, 's', range=(0.1, 3600.0))
    seed: int = param(0, 'sampling seed')
    torch_threads: int = param(1, 'torch intra-op threads', range=(1, 256))
    sync_timeout_s: float = param(0.25, 'sim time: wall s a tick waits for its observation, then runs anyway',
                                  range=(0.0, 60.0))
    # --- trust boundary (weights and joint states; poco_policy/weights.py)
    weights_key_file: str = param('', 'HMAC key file; set: refuse unsigned / wrongly signed weights')
    obs_dim: int = param(0, "weights' obs size; 0 = pixels: cameras x feature_dim + proprio, state: sim/state + "
                         'proprio', range=(0, 10_000_000))
    horizon: int = param(0, "weights' chunk length T; 0 = that of the running weights (first: any <= 64)",
                         range=(0, 4096))
    max_hidden_dim: int = param(1024, 'widest layer accepted in weights', range=(1, 1 << 20))
    max_hidden_layers: int = param(8, '', range=(1, 1024))
    max_flow_steps: int = param(100, '', range=(1, 100_000))
    max_weights_bytes: int = param(67108864, 'payload bytes (64 MiB)', range=(1, 1 << 40))
    max_metadata_bytes: int = param(65536, '', range=(1, 1 << 30))
    max_json_depth: int = param(16, '', range=(1, 10_000))
    max_version_jump: int = param(1000, 'weights more than this many versions past the running ones are refused',
                                  range=(1, 1 << 40))
    max_sample_s: float = param(0.04, 'test forward pass (best of 3) must sample a chunk within this',
                                range=(1e-4, 60.0))
    joint_limit_tolerance: float = param(0.2, 'rad: a joint state further outside the joint limits is insane',
                                         range=(0.0, 10.0))
    max_input_magnitude: float = param(1.0e4, 'sim/state values beyond this are refused (never reach the learner)',
                                       range=(0.0, INF))

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    @property
    def action_dim(self) -> int:
        return len(self.joint_names) + 1


# The arm's parameters that other nodes and tools share with the policy node (the sim, teleop, the bag tools):
# the same names, defaults and descriptions, declared here once (`policy_field`).
ARM_PARAMS = ('joint_names', 'gripper_joint', 'gripper_closed', 'gripper_open')


def policy_field(name: str):
    """A dataclass field for another node's config that is the policy node's parameter `name` (its default and
    descriptor): one home per parameter, so `joint_names` means the same in every section of robot.yaml."""
    f = {f.name: f for f in dataclasses.fields(PolicyNodeConfig)}[name]
    return dataclasses.field(default=f.default, metadata=f.metadata)


def policy_default(name: str):
    """The policy node's default of parameter `name`."""
    return {f.name: f for f in dataclasses.fields(PolicyNodeConfig)}[name].default


def check_arm(joint_names, gripper_joint: str, gripper_closed: float = 0.0, gripper_open: float = 1.0) -> None:
    """The arm parameters' own consistency (what `validate` checks of them), for the nodes that share them."""
    names = list(joint_names)
    if not names or len(set(names)) != len(names) or '' in names:
        raise ValueError(f'joint_names must be distinct non-empty names, got {names}')
    if gripper_joint in names:
        raise ValueError(f'gripper_joint {gripper_joint!r} is also an arm joint')
    if not (math.isfinite(gripper_closed) and math.isfinite(gripper_open)) or gripper_closed == gripper_open:
        raise ValueError('gripper_closed and gripper_open must be finite and differ')


RUNTIME_PARAMS = tuple(f.name for f in dataclasses.fields(PolicyNodeConfig) if not f.metadata.get('read_only', True))


def _finite(name: str, values) -> None:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        raise ValueError(f'{name} must be finite numbers, got {list(values)}')


def validate(cfg: PolicyNodeConfig) -> None:
    """Start-up and run-time consistency; raises ValueError naming the parameter."""
    n = cfg.n_joints
    check_arm(cfg.joint_names, cfg.gripper_joint, cfg.gripper_closed, cfg.gripper_open)
    for name in ('joint_lower', 'joint_upper', 'home_pose'):
        v = getattr(cfg, name)
        if len(v) != n:
            raise ValueError(f'{name} has {len(v)} values for {n} joint_names {list(cfg.joint_names)}')
        _finite(name, v)
    if not all(lo < hi for lo, hi in zip(cfg.joint_lower, cfg.joint_upper)):
        raise ValueError('joint_lower must be below joint_upper for every joint')
    if not all(lo <= h <= hi for lo, h, hi in zip(cfg.joint_lower, cfg.home_pose, cfg.joint_upper)):
        raise ValueError(f'home_pose {list(cfg.home_pose)} lies outside joint_lower/joint_upper')
    for name in ('ee_box_min', 'ee_box_max'):
        if len(getattr(cfg, name)) != 3:
            raise ValueError(f'{name} needs 3 values (x, y, z in base_frame), got {list(getattr(cfg, name))}')
        _finite(name, getattr(cfg, name))
    if not all(lo < hi for lo, hi in zip(cfg.ee_box_min, cfg.ee_box_max)):
        raise ValueError(f'ee_box_min {list(cfg.ee_box_min)} must be below ee_box_max {list(cfg.ee_box_max)}')
    if not (math.isfinite(cfg.max_joint_delta) and cfg.max_joint_delta > 0):
        raise ValueError(f'max_joint_delta must be > 0, got {cfg.max_joint_delta}')
    for f in dataclasses.fields(cfg):
        ch = f.metadata.get('choices')
        if ch and getattr(cfg, f.name) not in ch:
            raise ValueError(f'{f.name} must be one of {list(ch)}, got {getattr(cfg, f.name)!r}')
    if not cfg.base_frame:
        raise ValueError('base_frame must name a frame')


def runtime_update(cfg: PolicyNodeConfig, startup: PolicyNodeConfig, changes: dict) -> PolicyNodeConfig:
    """The config after run-time `changes` {name: value}, validated; ValueError says why it is refused."""
    from poco_policy.config import from_dict
    not_runtime = sorted(set(changes) - set(RUNTIME_PARAMS))
    if not_runtime:
        raise ValueError(f'{not_runtime} cannot change at run time')
    new = from_dict(PolicyNodeConfig, changes, base=cfg)
    validate(new)
    if new.max_joint_delta > startup.max_joint_delta + 1e-12:
        raise ValueError(f'max_joint_delta {new.max_joint_delta} > its start-up value {startup.max_joint_delta} '
                         '(the action normalisation the learner uses; restart to raise it)')
    return new
