"""Monitor node (`monitor`): progress line, episodes.csv / learner.csv and learning_curve.png in the run dir.

Subscribes poco/episode_event, poco/learner_status and poco/action_chunk (for the policy version that ran
each episode). Publishes the status as a text marker on poco/status_marker for rviz. A thin adapter: the
bookkeeping is poco_bringup.progress, the plot poco_bringup.plotting (both plain Python). Nothing a message
contains may crash it: callbacks catch, count and log.
Time: in the sim graph the node runs on sim time (events are stamped in sim time, episodes.csv's
`sim_time_s`); its timers (progress line, plot) run on the steady clock, so they keep going while the sim
clock stands still.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from poco_msgs.msg import ActionChunk, EpisodeEvent, LearnerStatus
from poco_policy import contract as C
from poco_policy.config import declare_ros_parameters
from poco_policy.ros_init import init_ros, spin
from poco_policy.runtime import use_sim_time_from_env
from visualization_msgs.msg import Marker

from poco_bringup.plotting import plot_learning_curve
from poco_bringup.progress import EpisodeTracker, LearnerLog


@dataclass
class MonitorNodeConfig:
    run_dir: str = '.'               # episodes.csv, learner.csv, learning_curve.png go here
    plot_period_s: float = 30.0      # learning-curve refresh (also written at shutdown)
    progress_period_s: float = 10.0  # progress line at least this often (and after every episode)
    train_window: int = 20           # training success moving average [episodes]
    eval_window: int = 10             # min evaluation episodes per learning-curve point
    status_marker: bool = True       # publish poco/status_marker (TEXT_VIEW_FACING) for rviz
    base_frame: str = 'base_link'
    # > 0: end the run (the monitor exits cleanly, the runner stops the graph) once the finished episodes hold
    # this many executed steps, training and evaluation (the budget of the sim main job and of the harness)
    stop_after_steps: int = 0


class MonitorNode(Node):
    def __init__(self, **kwargs):
        super().__init__('monitor', **kwargs)
        self.cfg = cfg = declare_ros_parameters(self, MonitorNodeConfig)
        self.sim_time = use_sim_time_from_env(self)
        self.run_dir = Path(cfg.run_dir or '.').resolve()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / 'episodes.csv'
        self.png_path = self.run_dir / 'learning_curve.png'
        t0 = time.time()
        self.episodes = EpisodeTracker(self.csv_path, train_window=cfg.train_window,
                                       eval_window=cfg.eval_window, t0=t0)
        self.learner = LearnerLog(self.run_dir / 'learner.csv', t0=t0)
        self.errors = 0
        self._dirty = True  # plot needs refreshing
        self._last_progress = 0.0
        self.create_subscription(EpisodeEvent, C.EPISODE_EVENT, self._guard(self.on_event), C.qos(C.EPISODE_EVENT))
        self.create_subscription(LearnerStatus, C.LEARNER_STATUS, self._guard(self.on_status),
                                 C.qos(C.LEARNER_STATUS))
        self.create_subscription(ActionChunk, C.ACTION_CHUNK, self._guard(self.on_chunk), C.qos(C.ACTION_CHUNK))
        self.marker_pub = self.create_publisher(Marker, C.STATUS_MARKER, C.qos(C.STATUS_MARKER)) \
            if cfg.status_marker else None
        steady = Clock(clock_type=ClockType.STEADY_TIME)
        self.create_timer(max(cfg.plot_period_s, 1.0), self._guard(self.plot), clock=steady)
        self.create_timer(1.0, self._guard(self.tick), clock=steady)
        self.get_logger().info(f'monitor up: writing {self.csv_path} and {self.png_path}')

    def _guard(self, fn):
        def wrapped(*a):
            try:
                fn(*a)
            except Exception as e:  # a monitor must never take the run down
                self.errors += 1
                self.get_logger().warning(f'{fn.__name__}: {type(e).__name__}: {e}', throttle_duration_sec=5.0)
        wrapped.__name__ = fn.__name__
        return wrapped

    # callbacks -------------------------------------------------------------------------------------
    def on_event(self, m: EpisodeEvent):
        stamp_s = m.header.stamp.sec + m.header.stamp.nanosec * 1e-9
        row = self.episodes.on_event(m.episode_id, m.event, m.step_count, m.evaluation, m.detail, stamp_s=stamp_s)
        if row is not None:
            self._dirty = True
            self.progress(f'{"eval" if row["evaluation"] else "train"} ep {row["episode_id"]} '
                          f'{row["outcome"]} in {row["steps"]} steps')
            budget = self.cfg.stop_after_steps
            if budget > 0 and self.episodes.total_steps >= budget:
                self.get_logger().info(f'step budget reached: {self.episodes.total_steps} >= {budget} env steps; '
                                       'ending the run')
                raise SystemExit(0)     # out of spin; main() finalises (plot, CSVs) and exits 0
        if self.episodes.log.error:
            self.get_logger().error(f'cannot write {self.csv_path}: {self.episodes.log.error}',
                                    throttle_duration_sec=30.0)

    def on_status(self, m: LearnerStatus):
        fields = {k: getattr(m, k) for k in ('phase', 'algorithm', 'phase_step', 'update_step', 'critic_loss',
                                             'actor_loss', 'bc_loss', 'candidate_loss', 'q_mean', 'buffer_steps',
                                             'demo_steps', 'online_steps', 'episodes', 'recent_success_rate',
                                             'weights_version', 'updates_per_second', 'updates_per_env_step',
                                             'utd_ratio', 'dropped_messages')}
        self.learner.on_status(fields)
        self._publish_marker()

    def on_chunk(self, m: ActionChunk):
        self.episodes.on_chunk(m.episode_id, m.policy_version)

    # periodic --------------------------------------------------------------------------------------
    def tick(self):
        if time.monotonic() - self._last_progress >= self.cfg.progress_period_s:
            self.progress()

    def progress(self, head: str = ''):
        self._last_progress = time.monotonic()
        extra = f' | rejected msgs {self.episodes.rejected}' if self.episodes.rejected else ''
        line = f'{head + " | " if head else ""}{self.episodes.progress()} | {self.learner.progress()}{extra}'
        print(line, flush=True)  # plain stdout: the runner prefixes it with [monitor]

    def plot(self, force: bool = False):
        if not (self._dirty or force):
            return
        self._dirty = False
        plot_learning_curve(self.csv_path, self.png_path, train_window=self.cfg.train_window,
                            eval_window=self.cfg.eval_window)

    def _publish_marker(self):
        if self.marker_pub is None:
            return
        s = self.learner.last or {}
        m = Marker()
        m.header.frame_id = self.cfg.base_frame
        m.header.stamp = self.get_clock().now().to_msg()
        m.ns, m.id, m.type, m.action = 'poco_status', 0, Marker.TEXT_VIEW_FACING, Marker.ADD
        m.pose.position.x, m.pose.position.y, m.pose.position.z = 0.4, 0.0, 0.9
        m.pose.orientation.w = 1.0
        m.scale.z = 0.04
        m.color.r = m.color.g = m.color.b = m.color.a = 1.0
        ma = self.episodes.train_success_ma
        m.text = (f'{s.get("phase", "?")} ({s.get("algorithm", "?")}) upd {s.get("update_step", 0)} '
                  f'weights v{s.get("weights_version", 0)}\n'
                  f'episodes {self.episodes.n_train}+{self.episodes.n_eval} eval  train succ '
                  f'{"-" if ma is None or math.isnan(ma) else f"{ma:.2f}"}  env steps {self.episodes.env_steps}')
        self.marker_pub.publish(m)

    def finalize(self):
        try:
            self.plot(force=True)
            self.progress('final')
        finally:
            self.episodes.close()
            self.learner.close()


def main(args=None) -> int:
    init_ros(args if args is not None else sys.argv)
    node = None
    try:
        node = MonitorNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        spin(executor)
    finally:
        if node is not None:
            node.finalize()
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
