"""Sim node configuration: one dataclass, the same names in YAML (`sim:` section) and as ROS parameters.

No ROS or MuJoCo import here, so launch/bringup code can read it cheaply.
"""
from __future__ import annotations

from dataclasses import dataclass

from poco_policy.contract import ARM_JOINTS, CAMERAS, MAX_JOINT_DELTA
from poco_policy.node_config import policy_field

# End-effector box [cm] in base_link: xmin, xmax, ymin, ymax, zmin, zmax. Violations are reported, not enforced.
DEFAULT_BBOX_CM = (15.0, 75.0, -40.0, 40.0, 0.0, 60.0)


@dataclass
class SimNodeConfig:
    task: str = 'pick_cube'             # 'pick_cube' | 'peg_insert'
    obs_mode: str = 'pixels'            # 'pixels': publish both cameras; 'state': no rendering, sim/state only
    image_size: int = 128               # square camera images [px]
    cameras: tuple = CAMERAS            # cameras to publish (subset of front, wrist)
    control_rate_hz: float = 15.0       # sim ticks per simulated second (one env step per tick)
    real_time_factor: float = 1.0       # >= 1: ticks per wall second = control_rate_hz * real_time_factor
    seed: int = 0                       # seed of the first episode and of the node's reset-seed sequence
    max_joint_delta: float = MAX_JOINT_DELTA  # rad per tick (env action bound; also the reported contract value)
    max_target_step: float = 0.1        # rad: a command is clamped to measured q +- this (driver speed limit)
    object_range: float = 0.05          # half-width [m] of the square in which the object / hole xy is drawn
    max_steps: int = 0                  # env step limit H (0 = task default); the policy node ends episodes
    bbox_cm: tuple = DEFAULT_BBOX_CM    # end-effector box [cm] (see above); reported as bbox_violation in logs
    # The arm: the policy node's parameters (one home: poco_policy/node_config.py). The names are published on
    # joint_states and accepted on joint_commands; the MuJoCo arm has len(ARM_JOINTS) = 6 joints, so any other
    # count is refused at start-up (a 7-joint robot.yaml describes a real arm, not this sim).
    joint_names: tuple = policy_field('joint_names')
    gripper_joint: str = policy_field('gripper_joint')
    frame_id: str = 'base_link'         # frame of ee_pose
    # Sim time (the sim graph turns these on; the standalone node keeps the wall clock):
    sim_time: bool = False              # publish /clock; stamps = sim time (ticks x control period, from 0)
    pacing: bool = False                # needs sim_time: advance one tick only when the policy acknowledged the
                                        # last one (poco/policy_tick) and the learner is not behind its
                                        # update-to-data ratio (poco/learner_pace); as fast as that allows
    pace_timeout_s: float = 1.0         # wall s without an ack / pace message: stop waiting for that partner
                                        # (no policy: real_time_factor pace; no learner: do not wait for it)
    max_real_time_factor: float = 0.0   # pacing: cap on sim seconds per wall second (0 = no cap)
    learner_stall_warn_s: float = 10.0  # pacing: warn (and repeat every this many wall s) while the sim waits
                                        # for a learner that says behind but reports no new update: a hung
                                        # training thread would otherwise freeze the run without a word
