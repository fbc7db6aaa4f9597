"""Learner node: stores what the robot did and trains the policy in a background thread.

ROS side (this file): transitions + episode events in, weights + status out. Learning side (no ROS):
ReplayBuffer, EpisodeAssembler, Agent. Phases: pretrain (offline BC on demos, when no pre-trained policy is
given) -> warmup (critic only, actor frozen) -> poco (online updates, paced by the update-to-data ratio).
A restart resumes from the last checkpoint and the on-disk buffer.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from poco_msgs.msg import EpisodeEvent, LearnerStatus, PolicyWeights, Transition

from poco_policy.config import declare_ros_parameters

LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                     history=HistoryPolicy.KEEP_LAST)


@dataclass
class LearnerNodeConfig:
    run_dir: str = 'runs/default'        # buffer/, checkpoints/, learner_state.json
    demo_dataset: str = ''               # episode dataset directory loaded as demos (once per run dir)
    initial_checkpoint: str = ''         # agent checkpoint prefix to start from (skips pre-training)
    preset: str = ''                     # AgentConfig preset name ('' = defaults)
    algorithm: str = ''                  # override: poco | poco_noclip | bc | qc_best_of_n
    obs_mode: str = 'pixels'
    feature_dim: int = 64
    image_size: int = 128
    encoder_checkpoint: str = ''
    max_joint_delta: float = 0.05
    horizon: int = 0                     # 0 = from preset
    hidden_dim: int = 0                  # 0 = from preset
    hidden_layers: int = 0
    batch_size: int = 0
    num_candidates: int = 0
    flow_steps: int = 0
    critic_warmup_steps: int = -1        # -1 = from preset
    eta: float = -1.0                    # softmax temperature on Q (E-step); <0 = from preset
    beta: float = -1.0                   # posterior guidance scale; <0 = from preset
    zeta: float = -1.0                   # clip threshold of the candidate loss; <0 = from preset
    bc_data: str = ''                    # data term: 'buffer' (paper) | 'demos'; '' = from preset
    pretrain_steps: int = 2000
    utd_ratio: float = 1.0               # gradient updates per new online step
    publish_every: int = 50              # updates between weight publications
    checkpoint_every_s: float = 60.0
    status_rate_hz: float = 1.0
    demo_ratio: float = -1.0             # <0: uniform over all steps
    buffer_capacity: int = 1_000_000
    success_reward: float = 1.0
    step_penalty: float = 0.0
    failure_penalty: float = 0.0
    learn_from_eval: bool = True
    torch_threads: int = 1
    seed: int = 0


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
        self.create_timer(1.0 / max(cfg.status_rate_hz, 0.1), self.publish_status)
        self.create_timer(0.5, self.core.poll)
        self.core.start()
        self.get_logger().info(f'learner up: run_dir={cfg.run_dir} buffer={self.core.buffer_len()} steps')

    def _log(self, level: str, text: str):
        getattr(self.get_logger(), level)(text)

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
