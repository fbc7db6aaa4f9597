"""The graph contract, in one place and without ROS: topic and service names, QoS profiles, episode event
codes, the action / proprioception layout and the `max_joint_delta` default.

Nodes, bag tools, teleop and the sim import their names and profiles from here instead of keeping copies.
Importing this module imports no rclpy; `qos(name)` builds the rclpy QoSProfile when a node asks for it.

Topic and service names are relative (they resolve in the node's namespace: one namespace per robot), except
the ROS-global ones (`/clock`, `/diagnostics`).
"""
from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------------------------------------ topics
JOINT_STATES = 'joint_states'             # sensor_msgs/JointState   driver/sim -> policy, teleop
JOINT_COMMANDS = 'joint_commands'         # sensor_msgs/JointState   policy -> driver/sim (absolute targets)
EE_POSE = 'ee_pose'                       # geometry_msgs/PoseStamped
SIM_STATE = 'sim/state'                   # std_msgs/Float32MultiArray (privileged state, sim only)
TELEOP_ACTION = 'teleop/action'           # poco_msgs/ActionChunk    teleop -> policy (interventions)
TRANSITION = 'poco/transition'            # poco_msgs/Transition     policy -> learner
EPISODE_EVENT = 'poco/episode_event'      # poco_msgs/EpisodeEvent
POLICY_WEIGHTS = 'poco/policy_weights'    # poco_msgs/PolicyWeights  learner -> policy (latched)
LEARNER_STATUS = 'poco/learner_status'    # poco_msgs/LearnerStatus
LEARNER_PACE = 'poco/learner_pace'        # poco_msgs/LearnerPace    learner -> sim (pacing)
POLICY_TICK = 'poco/policy_tick'          # poco_msgs/PolicyTick     policy -> sim (pacing)
ESTOP = 'poco/estop'                      # std_msgs/Bool (reliable, volatile: any reliable publisher matches)
SUCCESS = 'poco/success'                  # std_msgs/Bool            success button / sim success detection
START_BUTTON = 'poco/start'               # std_msgs/Bool            operator's start button
ACTION_CHUNK = 'poco/action_chunk'        # poco_msgs/ActionChunk    policy -> rviz / monitor
CHUNK_MARKERS = 'poco/chunk_markers'      # visualization_msgs/MarkerArray
SAFETY_BOX = 'poco/safety_box'            # visualization_msgs/Marker (latched)
STATUS_MARKER = 'poco/status_marker'      # visualization_msgs/Marker
CLOCK = '/clock'                          # rosgraph_msgs/Clock      sim -> everyone (sim time)
DIAGNOSTICS = '/diagnostics'              # diagnostic_msgs/DiagnosticArray
CAMERAS = ('front', 'wrist')
# ros2_control's stock controllers (the policy node's parameter defaults; relative, so they follow the namespace)
FORWARD_POSITION_COMMANDS = 'forward_position_controller/commands'     # std_msgs/Float64MultiArray
JOINT_TRAJECTORY = 'joint_trajectory_controller/joint_trajectory'     # trajectory_msgs/JointTrajectory
GRIPPER_COMMANDS = 'gripper_controller/commands'                      # std_msgs/Float64MultiArray


def camera_topic(camera: str) -> str:
    """'front' -> 'cameras/front/image_raw' (sensor_msgs/Image)."""
    return f'cameras/{camera}/image_raw'


# ------------------------------------------------------------------------------------------------ services
RESET_SERVICE = 'poco/reset'              # poco_msgs/Reset          sim (or a driver) resets the scene
SET_MODE_SERVICE = 'poco/set_mode'        # poco_msgs/SetMode        policy node
START_EPISODE_SERVICE = 'poco/start_episode'  # std_srvs/Trigger    policy node

# ------------------------------------------------------------------------------------------------ QoS


@dataclass(frozen=True)
class QosSpec:
    """A QoS profile as plain data (history is always keep-last)."""
    depth: int
    reliability: str = 'reliable'         # 'reliable' | 'best_effort'
    durability: str = 'volatile'          # 'volatile' | 'transient_local'


PROFILES: dict[str, QosSpec] = {
    'sensor': QosSpec(5, 'best_effort'),              # = rclpy's qos_profile_sensor_data
    'reliable': QosSpec(10),
    'commands': QosSpec(1),                           # only the newest matters (joint targets, pace, clock)
    'latched': QosSpec(1, durability='transient_local'),  # late joiners get the last value (weights, box)
    # e-stop: reliable + volatile matches default-QoS publishers (a button node) and latched ones alike; a
    # transient-local subscription matched only latched publishers (a default one got 0 of ~60 presses through)
    'estop': QosSpec(10),
    'events': QosSpec(100),
    'transitions': QosSpec(1000),
}

# Relative topic name -> profile name. Publishers and subscribers of a topic both use it.
TOPIC_QOS: dict[str, str] = {
    JOINT_STATES: 'sensor',
    EE_POSE: 'sensor',
    SIM_STATE: 'sensor',
    **{camera_topic(c): 'sensor' for c in CAMERAS},
    JOINT_COMMANDS: 'commands',
    FORWARD_POSITION_COMMANDS: 'commands',
    JOINT_TRAJECTORY: 'commands',
    GRIPPER_COMMANDS: 'commands',
    LEARNER_PACE: 'commands',
    CLOCK: 'commands',
    TRANSITION: 'transitions',
    EPISODE_EVENT: 'events',
    POLICY_WEIGHTS: 'latched',
    ESTOP: 'estop',
    SAFETY_BOX: 'latched',
    LEARNER_STATUS: 'reliable',
    POLICY_TICK: 'reliable',
    SUCCESS: 'reliable',
    START_BUTTON: 'reliable',
    ACTION_CHUNK: 'reliable',
    CHUNK_MARKERS: 'reliable',
    TELEOP_ACTION: 'reliable',
    DIAGNOSTICS: 'reliable',
    STATUS_MARKER: 'commands',
}
DEFAULT_PROFILE = 'reliable'              # topics outside the table (bag replay of foreign topics)


def qos_spec(name: str) -> QosSpec:
    """Plain-data profile for a profile name ('latched') or a relative topic name ('joint_commands',
    'cameras/<any>/image_raw'). Unknown names raise KeyError."""
    if name in PROFILES:
        return PROFILES[name]
    if name in TOPIC_QOS:
        return PROFILES[TOPIC_QOS[name]]
    if name.startswith('cameras/') and name.endswith('/image_raw'):
        return PROFILES['sensor']
    raise KeyError(f'no QoS profile or contract topic named {name!r}')


def topic_qos_spec(topic: str) -> QosSpec:
    """Like qos_spec for a topic, but topics outside the contract get DEFAULT_PROFILE."""
    try:
        return qos_spec(topic)
    except KeyError:
        return PROFILES[DEFAULT_PROFILE]


def to_rclpy(spec: QosSpec):
    """QosSpec -> rclpy.qos.QoSProfile (rclpy imported here only)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=spec.depth,
                      reliability={'reliable': ReliabilityPolicy.RELIABLE,
                                   'best_effort': ReliabilityPolicy.BEST_EFFORT}[spec.reliability],
                      durability={'volatile': DurabilityPolicy.VOLATILE,
                                  'transient_local': DurabilityPolicy.TRANSIENT_LOCAL}[spec.durability])


def qos(name: str):
    """rclpy QoSProfile for a profile name or a contract topic (see qos_spec)."""
    return to_rclpy(qos_spec(name))


# ------------------------------------------------------------------------------------------------ episode events
# poco_msgs/msg/EpisodeEvent constants (a test checks they agree with the generated message).
EVENT_START = 0
EVENT_SUCCESS = 1
EVENT_FAILURE = 2
EVENT_ESTOP = 3
EVENT_TIMEOUT = 4
EVENT_RESET = 5
EVENT_CODES = {'START': EVENT_START, 'SUCCESS': EVENT_SUCCESS, 'FAILURE': EVENT_FAILURE, 'ESTOP': EVENT_ESTOP,
               'TIMEOUT': EVENT_TIMEOUT, 'RESET': EVENT_RESET}
END_EVENT_CODES = (EVENT_SUCCESS, EVENT_FAILURE, EVENT_ESTOP, EVENT_TIMEOUT)

# ------------------------------------------------------------------------------------------------ layout
# Action step = NUM_JOINTS joint deltas [rad] + 1 absolute gripper command in [0, 1];
# proprioception = NUM_JOINTS joint angles [rad] + gripper opening. These are the sim arm's (and the defaults of
# the policy node's joint_names / gripper_joint parameters); the policy node takes any joint count from its
# parameters (action_dim = len(joint_names) + 1).
ARM_JOINTS = ('joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'joint6')
NUM_JOINTS = len(ARM_JOINTS)
GRIPPER_JOINT = 'gripper'
ACTION_DIM = NUM_JOINTS + 1
PROPRIO_DIM = NUM_JOINTS + 1

MAX_JOINT_DELTA = 0.05                    # rad per control tick: action bound and normalisation (default)
