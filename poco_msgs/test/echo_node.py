"""Echo process for the round-trip test: every poco_msgs message received on `in/<Type>` is republished on
`out/<Type>`; the services answer with values derived from the request so the test can check both ways."""
import sys

import rclpy
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy, DurabilityPolicy, HistoryPolicy

from poco_msgs import msg, srv

TYPES = [msg.ActionChunk, msg.Transition, msg.PolicyWeights, msg.LearnerStatus, msg.EpisodeEvent,
         msg.LearnerPace, msg.PolicyTick]
QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL,
                 history=HistoryPolicy.KEEP_LAST)


class Echo(Node):
    def __init__(self):
        super().__init__('poco_msgs_echo')
        self._subs = []
        for t in TYPES:
            pub = self.create_publisher(t, f'out/{t.__name__}', QOS)
            self._subs.append(self.create_subscription(t, f'in/{t.__name__}', pub.publish, QOS))
        self.create_service(srv.Reset, 'reset', self.on_reset)
        self.create_service(srv.SetMode, 'set_mode', self.on_mode)

    def on_reset(self, req, resp):
        resp.success = True
        resp.message = f'seed={req.seed} eval={req.evaluation}'
        resp.episode_id = abs(req.seed) + 1
        resp.stamp.sec, resp.stamp.nanosec = abs(req.seed), 7
        return resp

    def on_mode(self, req, resp):
        resp.success = req.mode in ('train', 'eval', 'hold')
        resp.message = req.mode.upper()
        return resp


def main():
    rclpy.init(args=sys.argv)
    node = Echo()
    print('echo ready', flush=True)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == '__main__':
    main()
