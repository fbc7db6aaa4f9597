"""Several robots, one learner (issue 14 item 4).

Layout (plain Python): `sim_graph(robots=2)` gives robot<i> namespaces with sim + policy (+ monitor) each, every
robot node's /clock remapped to the robot's own clock, one learner on the wall clock with `robots: [robot0,
robot1]`, seeds apart, runner labels unique.

Processes (real runner, real nodes, real DDS on loopback, private domain): two simulated robots feeding one
learner vs one robot (poco_bringup/benchmarks/bench_multi_robot.py `run_graph`). Each sim is capped at real time
(15 env steps/s), like a real arm at its control rate, and the learner's update-to-data ratio is low (0.1), so the
figure measures whether the one learner takes two robots' data without slowing them: expected ~2x. Asserted
>= 1.3x only: the 2-core CI machine also runs other jobs, and two robots are four more busy processes (measured
1.62x at load average 18 on 2 cores; the benchmark prints the figures, capped at 2x real time and uncapped).
Also asserted: both robots' episodes are in the learner's buffer (on disk, ids prefixed with the namespace) and
both policy nodes accepted every weights version the learner published (their own logs).
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import pytest

from _bringup_helpers import REPO, make_tmp
from poco_bringup import graph, runner

BENCH = REPO / 'poco_bringup' / 'benchmarks' / 'bench_multi_robot.py'


def _bench():
    spec = importlib.util.spec_from_file_location('bench_multi_robot', BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_multi_robot_graph_layout(tmp_path):
    specs = graph.sim_graph(robots=2, run_dir=str(tmp_path), seed='4',
                            overrides=['robot1_sim.max_steps=7', 'sim.image_size=64'])
    by = {s.key: s for s in specs}
    assert list(by) == ['robot0_sim', 'robot0_policy', 'robot0_monitor', 'robot1_sim', 'robot1_policy',
                        'robot1_monitor', 'learner']
    for i in (0, 1):
        for n in ('sim', 'policy', 'monitor'):
            s = by[f'robot{i}_{n}']
            assert (s.name, s.namespace, s.fqn) == (n, f'robot{i}', f'/robot{i}/{n}')
            assert s.remappings == {'/clock': f'/robot{i}/clock'}            # each robot its own sim time
            assert ('POCO_USE_SIM_TIME' in s.env) == (n != 'sim')
        sim, pol = by[f'robot{i}_sim'].effective_parameters(), by[f'robot{i}_policy'].effective_parameters()
        assert sim['seed'] == pol['seed'] == 4 + i                          # robots draw different scenes
        assert sim['sim_time'] and sim['pacing'] and sim['image_size'] == 64
        assert pol['max_episode_steps'] == 100                                # H from the learner's preset
        assert by[f'robot{i}_monitor'].effective_parameters()['run_dir'] == str(tmp_path / f'robot{i}')
    assert by['robot1_sim'].effective_parameters()['max_steps'] == 7
    assert 'max_steps' not in by['robot0_sim'].effective_parameters()
    lrn = by['learner']
    assert lrn.namespace == '' and lrn.remappings == {} and 'POCO_USE_SIM_TIME' not in lrn.env  # wall clock
    assert lrn.effective_parameters()['robots'] == ['robot0', 'robot1'] and not lrn.required
    # one robot: the graph as before (no labels, no remaps, learner on sim time, no robots parameter)
    one = {s.key: s for s in graph.sim_graph()}
    assert list(one) == ['sim', 'policy', 'learner', 'monitor']
    assert all(not s.remappings for s in one.values()) and 'robots' not in one['learner'].effective_parameters()
    # the namespace argument puts the whole fleet below it
    fleet = {s.key: s for s in graph.sim_graph(robots=2, namespace='lab', monitor=False)}
    assert fleet['robot1_policy'].fqn == '/lab/robot1/policy' and fleet['learner'].fqn == '/lab/learner'
    assert fleet['robot1_policy'].remappings == {'/clock': '/lab/robot1/clock'}
    with pytest.raises(ValueError, match='robots must be'):
        graph.sim_graph(robots=0)
    with pytest.raises(ValueError, match='one robot'):
        graph.real_graph(robots=2, allow_unsigned=True)
    # parts of a fleet: the robots without the learner, or the learner alone
    assert [s.key for s in graph.sim_graph(robots=2, part='learner')] == ['learner']
    assert 'learner' not in [s.key for s in graph.sim_graph(robots=2, part='robot')]


def test_runner_dry_run_two_robots(tmp_path, capsys):
    rc = runner.main(['sim', '--robots', '2', '--dry-run', '--run-dir', str(tmp_path), '--domain-id', '9',
                      '--obs-mode', 'state', '--set', 'robot1_policy.seed=11', '--no-monitor'])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert '-r __node:=sim -r __ns:=/robot1 -r /clock:=/robot1/clock' in out
    assert '-r __node:=policy -r __ns:=/robot0 -r /clock:=/robot0/clock' in out
    import yaml
    assert yaml.safe_load((tmp_path / 'params' / 'learner.run.yaml').read_text())['/learner'][
        'ros__parameters']['robots'] == ['robot0', 'robot1']
    pol1 = yaml.safe_load((tmp_path / 'params' / 'robot1_policy.effective.yaml').read_text())
    assert pol1['/robot1/policy']['ros__parameters']['seed'] == 12   # --set robot1_policy.seed=11, + 1
    assert runner.main(['sim', '--robots', '2', '--dry-run', '--run-dir', str(tmp_path), '--domain-id', '9',
                        '--set', 'robot2_sim.seed=1']) == 2                # no such robot


def test_learner_robot_topics_and_names():
    from poco_learner.learner_node import parse_robots, robot_topic
    assert robot_topic('', 'poco/transition') == 'poco/transition'
    assert robot_topic('robot0', 'poco/transition') == 'robot0/poco/transition'
    assert robot_topic('/lab/robot0/', 'poco/policy_weights') == '/lab/robot0/poco/policy_weights'
    assert parse_robots(['']) == [''] and parse_robots([]) == ['']
    assert parse_robots(['robot0', 'robot1']) == ['robot0', 'robot1']
    for bad in (['robot0', ''], ['robot0', 'robot0'], ['robot 0'], ['a//b']):
        with pytest.raises(ValueError):
            parse_robots(bad)


@pytest.fixture(scope='module')
def tmp(tmp_path_factory):
    return make_tmp(tmp_path_factory, 'multi-robot')


def test_two_robots_feed_one_learner(tmp):
    """Two simulated robots vs one: env steps per wall second, episodes of both in the buffer, every weights
    version accepted by both policy nodes."""
    bench = _bench()
    demos = bench.collect_demos(tmp / 'demos')
    one = bench.run_graph(1, tmp, demos, window_s=20.0, cap=1.0, utd=0.1)
    print('\n' + bench.describe(one))
    two = bench.run_graph(2, tmp, demos, window_s=20.0, cap=1.0, utd=0.1, publish_every=25, tail_s=4.0)
    print(bench.describe(two))
    ratio = two['total'] / one['total']
    print(f'ratio 2 robots / 1 robot: {ratio:.2f}x (cores {os.cpu_count()}, load {os.getloadavg()[0]:.1f})')
    assert one['rc'] == 0 and two['rc'] == 0, two['out'].read_text()[-3000:]
    assert one['total'] > 5.0, bench.describe(one)
    # both robots contribute, and together about twice one robot (15 steps/s each at most; loaded CI: >= 1.3x)
    assert min(two['rates'].values()) > 0.35 * two['total'], two['rates']
    assert ratio >= 1.3, (bench.describe(one), bench.describe(two))

    # both robots' episodes are in the one buffer, under their namespaces
    from poco_learner.buffer import ReplayBuffer
    buf = ReplayBuffer.load(str(two['run_dir'] / 'buffer'))
    try:
        ids = buf.episode_ids()
        stats = buf.stats()
    finally:
        buf.close()
    online = [e for e in ids if isinstance(e, str) and e.split('/')[0] in ('robot0', 'robot1')]
    per = {r: sum(1 for e in online if e.startswith(r + '/')) for r in ('robot0', 'robot1')}
    print(f'buffer: {stats}; online episodes per robot {per}')
    assert per['robot0'] >= 1 and per['robot1'] >= 1, ids
    assert all(e.split('/')[1].isdigit() for e in online)                 # '<namespace>/<the robot's own id>'
    last = two['rows'][-1][1]
    assert int(last['robot0/buffer_episodes']) >= 1 and int(last['robot1/buffer_episodes']) >= 1, last

    # every weights version the learner published (before the last seconds) reached both policy nodes
    run = two['run_dir']
    published = bench.published_versions(run)
    expected = {v for v, t in published if t < two['stopped_at'] - 2.0}
    assert len(expected) >= 2, published
    for label in ('robot0_policy', 'robot1_policy'):
        got = bench.received_versions(run, label)
        assert expected <= got, (label, sorted(expected - got), sorted(got))
    print(f'weights versions published {sorted(expected)}; both policy nodes accepted all of them')


if __name__ == '__main__':
    sys.exit(pytest.main([__file__, '-q', '-s']))


def test_learner_diagnostics_per_robot(tmp):
    """A real learner node process serving two robots: its /diagnostics names the phase, weights version,
    achieved updates per env step, buffer size and dropped inputs by reason and robot; a robot's bad message is
    counted under that robot and never touches the other's counts."""
    import subprocess
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from poco_msgs.msg import Transition
    from poco_policy import contract as C
    from _bringup_helpers import Procs, private_domain, ros_env
    domain, lock = private_domain()
    procs = Procs()
    from poco_policy.testing import executable
    exe = executable('poco_learner', 'learner_node')
    log = open(tmp / 'learner-diag.out', 'w')
    procs.start([str(exe), '--ros-args', '-p', f'run_dir:={tmp / "diag-run"}', '-p', 'obs_mode:=state',
                 '-p', 'obs_dim:=27', '-p', 'robots:=[robot0, robot1]', '-p', 'agent.actor_hidden_dims:=[32]',
                 '-p', 'agent.critic_hidden_dims:=[32]'],
                env=ros_env(domain), stdout=log, stderr=subprocess.STDOUT)
    os.environ['ROS_DOMAIN_ID'], os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = str(domain), 'LOCALHOST'
    rclpy.init()
    node = rclpy.create_node('diag_probe')
    rows = []
    node.create_subscription(DiagnosticArray, C.DIAGNOSTICS, lambda m: rows.extend(
        {kv.key: kv.value for kv in st.values} for st in m.status if st.name == '/learner'), C.qos(C.DIAGNOSTICS))
    pubs = {r: node.create_publisher(Transition, f'/{r}/{C.TRANSITION}', C.qos(C.TRANSITION))
            for r in ('robot0', 'robot1')}

    def spin_until(cond, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not cond():
            rclpy.spin_once(node, timeout_sec=0.1)
        return cond()

    def transition(step, proprio=7):
        m = Transition()
        m.episode_id, m.step_index = 5, step
        m.features, m.proprio, m.action = [0.1] * 20, [0.0] * proprio, [0.0] * 7
        return m
    try:
        assert spin_until(lambda: rows and all(p.get_subscription_count() for p in pubs.values()), 120), \
            (tmp / 'learner-diag.out').read_text()[-2000:]
        pubs['robot0'].publish(transition(0))
        pubs['robot0'].publish(transition(1))
        pubs['robot1'].publish(transition(0, proprio=3))      # malformed: dropped, counted under robot1
        assert spin_until(lambda: rows and rows[-1].get('robot0/transitions') == '2'
                          and rows[-1].get('dropped/robot1: transition: proprio size') == '1', 30), rows[-1:]
        d = rows[-1]
        for key in ('phase', 'weights_version', 'updates', 'env_steps', 'updates_per_env_step', 'utd_ratio',
                    'updates_per_second', 'buffer_steps', 'buffer_episodes', 'dropped_total'):
            assert key in d, (key, d)
        assert d['robot1/transitions'] == '0' and d['dropped_total'] == '1' and d['robots'] == 'robot0,robot1'
        assert d['robot0/buffer_episodes'] == '1' and d['robot1/buffer_episodes'] == '0'   # 'robot0/5', open
        assert d['buffer_steps'] == '2' and d['phase'] == 'waiting' and d['weights_version'] == '0'
        print('\nlearner /diagnostics: ' + ', '.join(f'{k}={v}' for k, v in d.items()))
    finally:
        node.destroy_node()
        rclpy.shutdown()
        procs.cleanup()
        log.close()
        if lock is not None:
            lock.close()
