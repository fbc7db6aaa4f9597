"""Learner node: stores what the robot did and trains the policy in a background thread.

ROS side (this file): transitions + episode events in, weights + status out. Learning side (no ROS):
ReplayBuffer, EpisodeAssembler, Agent. Phases: pretrain (offline BC on demos, when no pre-trained policy is
given) -> warmup (critic only, actor frozen) -> poco (online updates, paced by the update-to-data ratio).
A restart resumes from the last checkpoint and the on-disk buffer.
"""
from __future__ import annotations

import hashlib
import json

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from poco_msgs.msg import EpisodeEvent, LearnerStatus, PolicyWeights, Transition

from poco_policy.config import declare_ros_parameters
from poco_learner.learner import LearnerConfig as LearnerNodeConfig  # one config, same names as ROS params

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     history=HistoryPolicy.KEEP_LAST)


class LearnerNode(Node):
    def __init__(self, **kwargs):
        super().__init__('learner', **kwargs)
        self.cfg = cfg = declare_ros_parameters(self, LearnerNodeConfig)
        import torch
        torch.set_num_threads(max(1, cfg.torch_threads))
        from poco_learner.learner import Learner
        self.core = Learner(cfg, log=self._log)
        self.create_subscription(Transition, 'poco/transition', self.on_transition, QoSProfile(
            depth=1000, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST))
        self.create_subscription(EpisodeEvent, 'poco/episode_event', self.on_event, QoSProfile(
            depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST))
        self.weights_pub = self.create_publisher(PolicyWeights, 'poco/policy_weights', LATCHED)
        self.status_pub = self.create_publisher(LearnerStatus, 'poco/learner_status', QoSProfile(
            depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST))
        self.core.publish_fn = self.publish_weights
        self.core.phase_fn = self.publish_status
        self.create_timer(1.0 / max(cfg.status_rate_hz, 0.1), self.publish_status)
        self.create_timer(0.5, self.core.poll)
        self.core.start()
        self.get_logger().info(f'learner up: run_dir={cfg.run_dir} buffer={self.core.buffer_len()} steps')

    def _log(self, level: str, text: str):
        # 'warn' goes through rclpy's deprecation wrapper (one shared call site, which breaks throttling)
        getattr(self.get_logger(), {'warn': 'warning'}.get(level, level))(text)

    def on_transition(self, m: Transition):
        self.core.on_transition(m.episode_id, m.step_index, m.features, m.proprio, m.action, m.intervention,
                                m.final_observation)

    def on_event(self, m: EpisodeEvent):
        self.core.on_event(m.episode_id, m.event, m.step_count, m.evaluation)

    def publish_weights(self, version: int, payload: bytes, metadata: dict):
        msg = PolicyWeights()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.version, msg.format = version, 'safetensors'
        msg.sha256 = hashlib.sha256(payload).hexdigest()
        msg.payload = payload
        msg.metadata = json.dumps(metadata)
        self.weights_pub.publish(msg)

    def publish_status(self):
        s = self.core.status()
        m = LearnerStatus()
        m.header.stamp = self.get_clock().now().to_msg()
        for k, v in s.items():
            if hasattr(m, k):
                setattr(m, k, type(getattr(m, k))(v))
        self.status_pub.publish(m)

    def destroy_node(self):
        self.core.stop()
        super().destroy_node()


def main(args=None):
    rclpy.init(args=args)
    node = LearnerNode()
    executor = SingleThreadedExecutor()  # callbacks are light; training runs in its own thread
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
