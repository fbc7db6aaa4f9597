"""Shared by the real-arm tests (test_outputs, test_arm_config, test_estop) and benchmarks/bench_estop.py:

- `Proc`: a node executable as its own process (poco_policy.testing.NodeProc: own session, log, params file);
- `make_actor`: random policy weights of the right sizes for an arm (obs_dim = state + joints + 1);
- the stand-in robot, run as a script (`python _arm_helpers.py '<json>'`): a tiny rclpy node that publishes
  joint_states (any joints + a gripper joint) and sim/state, and integrates the commands it receives on the
  interface it is told to take (JointState targets, a forward position controller's Float64MultiArray, a joint
  trajectory controller's JointTrajectory interpolated in time, a Float64MultiArray gripper). It is what a
  ros2_control driver looks like from the policy's side; it only subscribes and publishes (no dynamics).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from poco_policy import testing
from poco_policy.testing import NodeProc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ARM_URDF = ROOT / 'poco_bringup' / 'config' / 'poco_arm.urdf'   # the sim arm's description
ARM7_URDF = HERE / 'arm7.urdf'
SIM_JOINTS = [f'joint{i}' for i in range(1, 7)]
SIM_HOME = [0.0, 0.41, 1.89, 0.0, 0.84, 0.0]


def ros_env(domain: int | None = None) -> dict:
    env = testing.ros_env(domain if domain is not None else testing.private_domain())
    env.pop('POCO_USE_SIM_TIME', None)  # wall clock: the e-stop and staleness checks run on it
    return env


def Proc(tmp: Path, name: str, env: dict, cmd: list[str] | None = None, params: dict | None = None) -> NodeProc:
    """`cmd` as its own process, or (no cmd) the installed policy node as node `name` with `params`."""
    return NodeProc(tmp, 'poco_policy', 'policy_node', name, params, env, cmd)


def standin(tmp: Path, env: dict, **cfg) -> NodeProc:
    return Proc(tmp, 'robot', env, cmd=[sys.executable, str(Path(__file__).resolve()), json.dumps(cfg)])


def make_actor(tmp: Path, obs_dim: int, action_dim: int, horizon: int = 5, name: str = 'actor', seed: int = 0):
    """Random actor weights (safetensors + JSON sidecar) the policy node loads as initial_weights."""
    import torch
    from poco_policy.flow_policy import FlowChunkPolicy, FlowPolicyConfig, weights_to_bytes
    torch.manual_seed(seed)
    actor = FlowChunkPolicy(FlowPolicyConfig(obs_dim=obs_dim, action_dim=action_dim, horizon=horizon,
                                             hidden_dims=(32, 32), flow_steps=3))
    payload, meta = weights_to_bytes(actor)
    (tmp / f'{name}.safetensors').write_bytes(payload)
    (tmp / f'{name}.json').write_text(json.dumps(meta))
    return tmp / f'{name}.safetensors', payload, meta


def policy_params(**over) -> dict:
    """The policy node as a real robot runs it (home reset, wall clock) on the stand-in robot, state mode."""
    p = dict(obs_mode='state', reset_mode='home', auto_reset=True, eval_every=0, max_episode_steps=40,
             staleness_s=0.5, max_sample_s=0.5, joint_names=SIM_JOINTS, home_pose=SIM_HOME,
             joint_lower=[-2.9, -1.6, -0.3, -2.9, -2.2, -2.9], joint_upper=[2.9, 2.0, 2.8, 2.9, 2.2, 2.9],
             robot_description_file=str(ARM_URDF), ee_link='ee', ee_box_min=[-0.3, -0.5, -0.05],
             ee_box_max=[0.9, 0.5, 0.8])
    p.update(over)
    return p


class Operator:
    """The test's own node: sees what the policy sends (every output topic, transitions, events, chunks,
    /diagnostics, joint_states) and presses its buttons. Spinning checks that the processes stay up."""

    def __init__(self, procs: list, forward_topic: str = '', trajectory_topic: str = '', gripper_topic: str = ''):
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray

        from poco_msgs.msg import ActionChunk, EpisodeEvent, PolicyWeights, Transition
        self.procs = procs
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = n = rclpy.create_node('arm_test_operator', context=self.context)
        self.ex = SingleThreadedExecutor(context=self.context)
        self.ex.add_node(n)
        rel = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.got: dict[str, list] = {k: [] for k in ('cmd', 'fwd', 'traj', 'grip', 'tr', 'ev', 'chunk', 'js')}
        self.diag: dict[str, str] = {}
        self.diag_level = None
        self.diag_message = ''

        def rec(key):
            return lambda m: self.got[key].append((time.monotonic(), m))
        n.create_subscription(JointState, 'joint_commands', rec('cmd'), rel)
        if forward_topic:
            n.create_subscription(Float64MultiArray, forward_topic, rec('fwd'), rel)
        if trajectory_topic:
            from trajectory_msgs.msg import JointTrajectory
            n.create_subscription(JointTrajectory, trajectory_topic, rec('traj'), rel)
        if gripper_topic:
            n.create_subscription(Float64MultiArray, gripper_topic, rec('grip'), rel)
        n.create_subscription(Transition, 'poco/transition', rec('tr'), rel)
        n.create_subscription(EpisodeEvent, 'poco/episode_event', rec('ev'), rel)
        n.create_subscription(ActionChunk, 'poco/action_chunk', rec('chunk'), rel)
        n.create_subscription(JointState, 'joint_states', rec('js'), qos_profile_sensor_data)
        n.create_subscription(DiagnosticArray, '/diagnostics', self._on_diag, rel)
        self.teleop = n.create_publisher(ActionChunk, 'teleop/action', 10)
        self.ee_pose = n.create_publisher(PoseStamped, 'ee_pose', qos_profile_sensor_data)
        self.weights = n.create_publisher(PolicyWeights, 'poco/policy_weights', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.EpisodeEvent = EpisodeEvent

    def _on_diag(self, m):
        for st in m.status:
            if st.name.endswith('/policy'):
                self.diag = {kv.key: kv.value for kv in st.values}
                self.diag_level, self.diag_message = st.level, st.message

    def spin(self, seconds: float, cond=None) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.ex.spin_once(timeout_sec=0.01)
            for p in self.procs:
                assert p.alive(), f'{p.name} exited:\n{p.text()[-3000:]}'
            if cond is not None and cond():
                return True
        return cond is None

    def events(self, kind=None) -> list:
        return [m for _, m in self.got['ev'] if kind is None or m.event == kind]

    def close(self):
        import rclpy
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def stamp_s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


# ------------------------------------------------------------------------------------------ the stand-in robot
def _run_standin(cfg: dict):
    import numpy as np
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.duration import Duration
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float32MultiArray, Float64MultiArray

    joints = list(cfg['joints'])
    gripper = cfg.get('gripper_joint', 'gripper')
    q = np.array(cfg['q0'], np.float64)
    g = [float(cfg.get('g0', 1.0))]
    traj = {'t0': 0.0, 'q0': q.copy(), 'pts': []}   # active trajectory: (time, positions) points
    state_dim = int(cfg.get('state_dim', 10))

    rclpy.init()
    node = rclpy.create_node('standin_robot')
    js_pub = node.create_publisher(JointState, 'joint_states', qos_profile_sensor_data)
    st_pub = node.create_publisher(Float32MultiArray, 'sim/state', qos_profile_sensor_data)

    def on_js(m):
        for n, v in zip(m.name, m.position):
            if n in joints:
                q[joints.index(n)] = v
            elif n == gripper:
                g[0] = v
        traj['pts'] = []

    def on_fwd(m):
        if len(m.data) == len(joints):
            q[:] = m.data
            traj['pts'] = []

    def on_traj(m):
        idx = [m.joint_names.index(n) for n in joints]
        traj['t0'], traj['q0'] = time.monotonic(), q.copy()
        traj['pts'] = [(p.time_from_start.sec + p.time_from_start.nanosec * 1e-9,
                        np.array([p.positions[i] for i in idx])) for p in m.points]

    def on_grip(m):
        if len(m.data) == 1:
            g[0] = m.data[0]

    node.create_subscription(JointState, 'joint_commands', on_js, 10)
    if cfg.get('forward_topic'):
        node.create_subscription(Float64MultiArray, cfg['forward_topic'], on_fwd, 10)
    if cfg.get('trajectory_topic'):
        from trajectory_msgs.msg import JointTrajectory
        node.create_subscription(JointTrajectory, cfg['trajectory_topic'], on_traj, 10)
    if cfg.get('gripper_topic'):
        node.create_subscription(Float64MultiArray, cfg['gripper_topic'], on_grip, 10)

    def publish():
        if traj['pts']:  # a trajectory controller: linear interpolation between the points in time
            t = time.monotonic() - traj['t0']
            prev_t, prev_q = 0.0, traj['q0']
            for tk, qk in traj['pts']:
                if t <= tk:
                    q[:] = prev_q + (qk - prev_q) * (t - prev_t) / max(tk - prev_t, 1e-9)
                    break
                prev_t, prev_q = tk, qk
            else:
                q[:] = traj['pts'][-1][1]
        m = JointState()
        # stamp_lag_s: a capture stamp that far in the past (a driver whose messages queue up somewhere)
        m.header.stamp = (node.get_clock().now() - Duration(seconds=cfg.get('stamp_lag_s', 0.0))).to_msg()
        m.name = joints + [gripper]
        m.position = [float(x) for x in q] + [g[0]]
        st = Float32MultiArray(data=[float(x) for x in np.resize(q, state_dim)])
        st_pub.publish(st)
        js_pub.publish(m)

    node.create_timer(1.0 / cfg.get('rate_hz', 50.0), publish)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    try:
        ex.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    _run_standin(json.loads(sys.argv[1]))


# ------------------------------------------------------------------------------------------ e-stop trials
TICK_S = 1.0 / 15.0


def wait_running(op, n_start_before: int, seconds: float = 30.0) -> bool:
    """A new episode started (after `n_start_before` START events) and commands flow in it."""
    def ok():
        starts = op.events(op.EpisodeEvent.START)
        if len(starts) <= n_start_before:
            return False
        t0 = stamp_s(starts[-1].header.stamp)
        return sum(1 for _, m in op.got['cmd'] if stamp_s(m.header.stamp) > t0) >= 3
    return op.spin(seconds, ok)


def estop_trial(op, pub, release: bool = True) -> dict:
    """Press the e-stop on `pub` while an episode runs; returns the latency from the press (wall clock, taken
    just before publishing) to the policy's ESTOP event (its stamp: the policy's wall clock, same host), and the
    commands stamped after that event until the release (must be none), and those stamped later than one tick
    after the press (`commands_late`: the one-tick contract; must be none). Releases afterwards when asked."""
    from std_msgs.msg import Bool
    n_start = len(op.events(op.EpisodeEvent.START))
    n_estop = len(op.events(op.EpisodeEvent.ESTOP))
    t_press = time.time()
    pub.publish(Bool(data=True))
    got = op.spin(5.0, lambda: len(op.events(op.EpisodeEvent.ESTOP)) > n_estop)
    out = {'latency_s': None, 'commands_after': None, 'commands_late': None, 'restarted': None}
    if got:
        ev = op.events(op.EpisodeEvent.ESTOP)[-1]
        t_ev = stamp_s(ev.header.stamp)
        op.spin(2 * TICK_S + 0.1)   # a command the policy might still send would arrive in this time
        out['latency_s'] = t_ev - t_press
        out['commands_after'] = sum(1 for _, m in op.got['cmd'] if stamp_s(m.header.stamp) > t_ev + 1e-6)
        # the contract itself: nothing commanded later than one tick after the press
        out['commands_late'] = sum(1 for _, m in op.got['cmd'] if stamp_s(m.header.stamp) > t_press + TICK_S)
        out['detail'] = ev.detail
    if release:
        pub.publish(Bool(data=False))
        out['restarted'] = wait_running(op, n_start)
    return out
