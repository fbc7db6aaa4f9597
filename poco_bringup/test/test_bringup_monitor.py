"""The installed `monitor` executable in its own process, fed real poco_msgs messages from this process."""
from __future__ import annotations

import csv
import math
import signal
import subprocess
import time

import pytest

from _bringup_helpers import Procs, make_tmp, private_domain, ros_env, wait_for
from poco_bringup import graph, runner

rclpy = pytest.importorskip('rclpy')
from poco_msgs.msg import ActionChunk, EpisodeEvent, LearnerStatus  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from visualization_msgs.msg import Marker  # noqa: E402


def reliable(depth):
    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


@pytest.fixture
def domain():
    d, lock = private_domain()
    yield d
    lock.close()


@pytest.fixture
def procs():
    p = Procs()
    yield p
    p.cleanup()


@pytest.fixture
def ros(domain):
    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=domain)
    node = rclpy.create_node('monitor_test', context=ctx)
    ex = rclpy.executors.SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    yield node, ex
    ex.shutdown()
    node.destroy_node()
    ctx.try_shutdown()


def event(ep, kind, steps=0, evaluation=False, detail=''):
    m = EpisodeEvent()
    m.episode_id, m.event, m.step_count, m.evaluation, m.detail = ep, kind, steps, evaluation, detail
    return m


def csv_rows(path):
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def test_monitor_node_writes_csv_and_plot(procs, ros, domain, tmp_path_factory):
    run_dir = make_tmp(tmp_path_factory, 'monitor')
    node, ex = ros
    spec = next(s for s in graph.sim_graph(run_dir=str(run_dir)) if s.name == 'monitor')
    files, _ = runner.write_params(spec, run_dir / 'params')
    cmd = runner.build_command(spec, files) + ['-p', 'plot_period_s:=1.0', '-p', 'progress_period_s:=1.0']
    mon = procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ros_env(domain))

    ev_pub = node.create_publisher(EpisodeEvent, 'poco/episode_event', reliable(100))
    st_pub = node.create_publisher(LearnerStatus, 'poco/learner_status', reliable(10))
    ch_pub = node.create_publisher(ActionChunk, 'poco/action_chunk', reliable(10))
    markers = []
    node.create_subscription(Marker, 'poco/status_marker', markers.append, reliable(1))

    def spin_until(pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not pred():
            ex.spin_once(timeout_sec=0.05)
            assert mon.poll() is None, f'monitor died: {mon.stdout.read()}'
        return pred()

    assert spin_until(lambda: min(p.get_subscription_count() for p in (ev_pub, st_pub, ch_pub)) > 0, 30), \
        'monitor never subscribed'
    chunk = ActionChunk()
    chunk.episode_id, chunk.policy_version = 3, 7
    ch_pub.publish(chunk)
    spin_until(lambda: False, 0.5)  # the chunk's version must be known before episode 3 ends

    status = LearnerStatus()
    status.phase, status.algorithm, status.update_step, status.weights_version = 'poco\n', 'poco', 12, 7
    status.critic_loss = math.nan
    st_pub.publish(status)
    for m in [event(1, EpisodeEvent.START), event(1, EpisodeEvent.SUCCESS, 50),
              event(1, EpisodeEvent.ESTOP, 51),  # second end of episode 1: ignored
              event(2, EpisodeEvent.START, evaluation=True), event(2, EpisodeEvent.TIMEOUT, 100, True),
              event(9, 200, 3),  # malformed event code
              event(3, EpisodeEvent.START), event(3, EpisodeEvent.FAILURE, 20, detail='left the box')]:
        ev_pub.publish(m)

    episodes = run_dir / 'episodes.csv'
    assert spin_until(lambda: len(csv_rows(episodes)) >= 3, 20), csv_rows(episodes)
    assert spin_until(lambda: (run_dir / 'learning_curve.png').exists() and markers, 20)
    assert 'poco' in markers[-1].text and markers[-1].type == Marker.TEXT_VIEW_FACING
    rows = csv_rows(episodes)
    assert [(r['episode_id'], r['evaluation'], r['outcome'], r['steps'], r['policy_version'], r['env_steps'])
            for r in rows] == [('1', '0', 'success', '50', '', '50'), ('2', '1', 'timeout', '100', '', '50'),
                               ('3', '0', 'failure', '20', '7', '70')]

    mon.send_signal(signal.SIGINT)  # like the runner's shutdown
    out, _ = mon.communicate(timeout=30)
    assert mon.returncode == 0, out
    final = [line for line in out.splitlines() if line.startswith('final |')]
    # duplicate end of episode 1 + unknown event code: counted, never fatal
    assert final and final[-1].endswith('rejected msgs 2') and 'env steps 70' in final[-1], out
    learner_rows = csv_rows(run_dir / 'learner.csv')
    assert learner_rows[0]['critic_loss'] == 'nan' and learner_rows[0]['phase'] == 'poco '
    assert (run_dir / 'learning_curve.png').stat().st_size > 10_000
    assert wait_for(lambda: not list(run_dir.glob('.*.tmp')), 1)


def test_monitor_ends_the_run_at_the_step_budget(procs, ros, domain, tmp_path_factory):
    """stop_after_steps (the main job's env-step budget): the monitor finishes its files and exits 0 by
    itself once the finished episodes (training + evaluation) hold that many steps; not before."""
    run_dir = make_tmp(tmp_path_factory, 'budget')
    node, ex = ros
    spec = next(s for s in graph.sim_graph(run_dir=str(run_dir)) if s.name == 'monitor')
    files, _ = runner.write_params(spec, run_dir / 'params')
    cmd = runner.build_command(spec, files) + ['-p', 'stop_after_steps:=120']
    mon = procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ros_env(domain))
    ev_pub = node.create_publisher(EpisodeEvent, 'poco/episode_event', reliable(100))
    end = time.monotonic() + 30
    while ev_pub.get_subscription_count() == 0 and time.monotonic() < end:
        ex.spin_once(timeout_sec=0.05)
    assert ev_pub.get_subscription_count() > 0, 'monitor never subscribed'
    for m in [event(1, EpisodeEvent.START), event(1, EpisodeEvent.SUCCESS, 50),
              event(2, EpisodeEvent.START, evaluation=True), event(2, EpisodeEvent.TIMEOUT, 50, True)]:
        ev_pub.publish(m)
    episodes = run_dir / 'episodes.csv'
    assert wait_for(lambda: len(csv_rows(episodes)) == 2, 20)
    time.sleep(1.0)
    assert mon.poll() is None                          # 100 steps < 120: keeps running
    ev_pub.publish(event(3, EpisodeEvent.START))
    ev_pub.publish(event(3, EpisodeEvent.FAILURE, 30))
    out, _ = mon.communicate(timeout=30)
    assert mon.returncode == 0, out
    assert 'step budget reached: 130 >= 120' in out
    assert len(csv_rows(episodes)) == 3 and (run_dir / 'learning_curve.png').exists()
