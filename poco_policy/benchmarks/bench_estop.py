"""E-stop latency from a default-QoS publisher (a plain button node), in real processes over DDS.

Starts the stand-in robot (poco_policy/test/_arm_helpers.py: publishes joint_states, integrates the commands)
and the real policy node (the sim arm's configuration and URDF, random weights, reset_mode home), then runs N
trials: wait until an episode runs and commands flow, press the e-stop from an rclpy default-QoS publisher
(reliable, volatile, depth 10), measure press -> the policy's ESTOP episode event (the event's stamp against the
wall time just before publishing; same host, same clock), count commands stamped after that event, release, and
wait for the next episode. Prints the latency distribution and how many trials halted within one 15 Hz tick
with no command after.

    python poco_policy/benchmarks/bench_estop.py            # 100 trials
    python poco_policy/benchmarks/bench_estop.py --quick    # 10 trials
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TEST_DIR = Path(__file__).resolve().parents[1] / 'test'
sys.path.insert(0, str(TEST_DIR))
from _arm_helpers import (SIM_HOME, SIM_JOINTS, TICK_S, Operator, Proc, estop_trial, make_actor,  # noqa: E402
                          policy_params, ros_env, standin, wait_running)

STATE_DIM = 10


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--trials', type=int, default=100)
    ap.add_argument('--quick', action='store_true', help='10 trials')
    args = ap.parse_args(argv)
    trials = 10 if args.quick else args.trials
    tmp = Path(tempfile.mkdtemp(prefix='bench_estop_'))
    env = ros_env()
    os.environ.update(ROS_DOMAIN_ID=env['ROS_DOMAIN_ID'], ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    path, _, _ = make_actor(tmp, STATE_DIM + 7, 7)
    robot = standin(tmp, env, joints=SIM_JOINTS, q0=SIM_HOME, state_dim=STATE_DIM)
    policy = Proc(tmp, 'policy', env, params=policy_params(initial_weights=str(path), max_episode_steps=100000))
    procs = [robot, policy]
    op = Operator(procs)
    results = []
    try:
        from std_msgs.msg import Bool
        pub = op.node.create_publisher(Bool, 'poco/estop', 10)   # rclpy default QoS
        if not wait_running(op, 0, 120) or not op.spin(10, lambda: pub.get_subscription_count() >= 1):
            print(f'the policy never ran:\n{policy.text()[-3000:]}')
            return 2
        t0 = time.monotonic()
        for i in range(trials):
            r = estop_trial(op, pub)
            results.append(r)
            if not r['restarted']:
                print(f'trial {i}: no restart after the release; stopping')
                break
        wall = time.monotonic() - t0
    finally:
        op.close()
        for p in procs:
            p.stop()
    lat = np.array([r['latency_s'] for r in results if r['latency_s'] is not None]) * 1e3
    missed = sum(1 for r in results if r['latency_s'] is None)
    within = sum(1 for r in results if r['latency_s'] is not None and r['latency_s'] < TICK_S
                 and r['commands_after'] == 0)
    after = sum(r['commands_after'] or 0 for r in results)
    late = sum(r.get('commands_late') or 0 for r in results)
    print(f'e-stop from a default-QoS publisher: {len(results)} trials in {wall:.0f} s, {missed} without an event')
    if lat.size:
        print(f'latency press -> ESTOP event [ms]: p50 {np.percentile(lat, 50):.2f}  p90 {np.percentile(lat, 90):.2f}'
              f'  p99 {np.percentile(lat, 99):.2f}  max {lat.max():.2f}  min {lat.min():.2f}')
    print(f'halted within one tick ({TICK_S * 1e3:.1f} ms) with no command after: {within}/{len(results)}; '
          f'commands after the event in all trials: {after}; commands later than one tick after the press: {late}')
    return 0 if within == len(results) == trials else 1


if __name__ == '__main__':
    sys.exit(main())
