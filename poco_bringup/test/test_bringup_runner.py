"""The pip-only runner with real processes: log prefixes, clean Ctrl-C with SIGTERM/SIGKILL escalation,
crash detection (non-zero exit, node named, last lines shown), per-run domain id, real rclpy nodes talking.
Every test drives `python -m poco_bringup.runner` as a subprocess, like a user would."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from _bringup_helpers import PYTHON, Procs, make_tmp, needs_repo_setup, pid_alive, private_domain, ros_env, wait_for
from poco_bringup import rosparams, runner


@pytest.fixture
def tmp(tmp_path_factory):
    return make_tmp(tmp_path_factory, 'runner')


@pytest.fixture
def procs(tmp):
    p = Procs()
    yield p
    p.cleanup(pid_dir=tmp / 'pids')


# Plain-Python children: fast (no rclpy start-up), and their signal behaviour is under our control.
CHILD = textwrap.dedent('''
    import os, signal, subprocess, sys, time
    mode, piddir = sys.argv[1], sys.argv[2]
    open(os.path.join(piddir, mode + '.pid'), 'w').write(str(os.getpid()))
    print(f'{mode} up domain={os.environ.get("ROS_DOMAIN_ID")} range={os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")}'
          f' args={" ".join(sys.argv[3:])}', flush=True)
    if mode == 'steady':  # leaves a grandchild behind in its process group
        g = subprocess.Popen(['sleep', '300'])
        open(os.path.join(piddir, 'grandchild.pid'), 'w').write(str(g.pid))
        signal.signal(signal.SIGINT, lambda *a: (print('steady: clean stop', flush=True), sys.exit(0)))
    elif mode == 'stubborn':  # ignores SIGINT, stops on SIGTERM
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    elif mode == 'hard':  # ignores SIGINT and SIGTERM: needs SIGKILL
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif mode == 'crasher':
        time.sleep(0.5)
        print('about to fail', flush=True)
        print('boom: the last words', file=sys.stderr, flush=True)
        sys.exit(3)
    elif mode == 'quitter':
        sys.exit(0)
    n = 0
    while True:
        print(f'{mode} tick {n}', flush=True)
        n += 1
        time.sleep(0.2)
''')


def write_graph(tmp: Path, nodes: list[tuple[str, str]]) -> Path:
    """A graph file for `run <file>.py`: (node name, child mode) pairs."""
    (tmp / 'child.py').write_text(CHILD)
    (tmp / 'pids').mkdir(exist_ok=True)
    specs = ',\n'.join(
        f'        NodeSpec(package="test", executable="{mode}", name="{name}", '
        f'command=[sys.executable, {str(tmp / "child.py")!r}, "{mode}", {str(tmp / "pids")!r}])'
        for name, mode in nodes)
    path = tmp / 'graph_test.py'
    path.write_text(f'import sys\nfrom poco_bringup.graph import NodeSpec\n\n\ndef graph(args):\n'
                    f'    return [\n{specs},\n    ]\n')
    return path


def start_runner(procs, tmp, graph, *extra, env=None):
    cmd = [PYTHON, '-m', 'poco_bringup.runner', str(graph), '--run-dir', str(tmp / 'run'), *extra]
    p = procs.start(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                    env=env or ros_env(private_domain()[0]))
    return p


def read_pid(tmp, mode) -> int:
    f = tmp / 'pids' / f'{mode}.pid'
    assert wait_for(lambda: f.exists() and f.read_text().strip(), 10), f'{mode} never started'
    return int(f.read_text())


def test_prefixed_logs_duration_and_run_dir(procs, tmp):
    graph = write_graph(tmp, [('alpha', 'steady'), ('b', 'steady2')])
    p = start_runner(procs, tmp, graph, '--duration', '1.5', '--set', 'alpha.x=1')
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    lines = out.splitlines()
    # Every child line carries its node's prefix, padded to one column.
    assert any(re.match(r'\[alpha\] +steady up', line) for line in lines), out
    assert any(re.match(r'\[b\] +steady2 tick', line) for line in lines), out
    cols = {m.end() for m in (re.match(r'\[(alpha|b)\] +(?=steady)', line) for line in lines) if m}
    assert len(cols) == 1, 'log text of the nodes does not start in one column'
    assert 'duration of 1.5 s reached' in out
    run = tmp / 'run'
    assert (run / 'logs' / 'alpha.log').read_text().startswith('steady up')
    assert '[alpha]' in (run / 'logs' / 'run.log').read_text()
    meta = json.loads((run / 'run.json').read_text())
    assert [n['name'] for n in meta['nodes']] == ['alpha', 'b']
    # alpha handles SIGINT (exit 0); b dies of the default KeyboardInterrupt: both are clean stops.
    assert [(n['exit'], n['crashed']) for n in meta['nodes']] == [(0, False), (-signal.SIGINT, False)]
    # --set reached the node as a params file under its fully qualified name.
    assert '/alpha:' in (run / 'params' / 'alpha.run.yaml').read_text()
    assert '--params-file' in meta['nodes'][0]['command']


def test_crash_is_reported_and_everything_else_stopped(procs, tmp):
    graph = write_graph(tmp, [('steady', 'steady'), ('crasher', 'crasher')])
    p = start_runner(procs, tmp, graph, '--duration', '60')
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 1, out
    assert 'NODE CRASHED: crasher (exit code 3)' in out
    assert 'crasher| boom: the last words' in out  # its last lines, shown by the runner
    assert 'FAILED: crashed node(s): crasher' in out
    assert 'steady: clean stop' in out  # the others got SIGINT and stopped cleanly
    for mode in ('steady', 'grandchild'):
        pid = read_pid(tmp, mode)
        assert wait_for(lambda: not pid_alive(pid), 5), f'{mode} (pid {pid}) survived the runner'


def test_ctrl_c_escalates_sigterm_then_sigkill(procs, tmp):
    graph = write_graph(tmp, [('steady', 'steady'), ('stubborn', 'stubborn'), ('hard', 'hard')])
    p = start_runner(procs, tmp, graph, '--sigint-timeout', '1', '--sigterm-timeout', '1')
    pids = {m: read_pid(tmp, m) for m in ('steady', 'stubborn', 'hard', 'grandchild')}
    time.sleep(0.5)  # let the children install their signal handlers
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)  # what Ctrl-C does to the runner
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out  # a clean user stop is a success (wrappers carry on)
    assert time.monotonic() - t0 < 10
    assert 'stopping: SIGINT received' in out
    assert "still running after SIGINT: ['stubborn', 'hard'] -> SIGTERM" in out
    assert "still running after SIGTERM: ['hard'] -> SIGKILL" in out
    assert 'ok (needed SIGKILL)' in out
    for mode, pid in pids.items():
        assert not pid_alive(pid), f'{mode} (pid {pid}) still alive'


def test_required_node_exit_stops_graph(procs, tmp):
    graph = write_graph(tmp, [('steady', 'steady'), ('quitter', 'quitter')])
    p = start_runner(procs, tmp, graph, '--duration', '60')
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out
    assert 'quitter exited (exit code 0)' in out
    assert 'stopping: required node quitter exited' in out


def test_domain_id_per_run_or_given(procs, tmp):
    graph = write_graph(tmp, [('a', 'steady')])
    env = ros_env(0)
    del env['ROS_DOMAIN_ID']
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'SUBNET'  # the runner must force LOCALHOST anyway
    p = start_runner(procs, tmp, graph, '--duration', '0.5', env=env)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 0, out
    meta = json.loads((tmp / 'run' / 'run.json').read_text())
    d = meta['ros_domain_id']
    assert meta['domain_id_source'] == 'picked for this run' and 1 <= d <= 100
    assert f'steady up domain={d} range=LOCALHOST' in out
    p = start_runner(procs, tmp, graph, '--duration', '0.5', '--domain-id', '42', env=env)
    out, _ = p.communicate(timeout=30)
    assert 'steady up domain=42 range=LOCALHOST' in out, out
    env['ROS_DOMAIN_ID'] = '17'
    p = start_runner(procs, tmp, graph, '--duration', '0.5', env=env)
    out, _ = p.communicate(timeout=30)
    assert 'steady up domain=17 range=LOCALHOST' in out, out


def test_picked_domain_ids_are_locked():
    d1, _, lock1 = runner.choose_domain_id(None, {})
    try:
        d2, _, lock2 = runner.choose_domain_id(None, {})
        lock2.close()
        assert d1 != d2
    finally:
        lock1.close()


def test_missing_executable_starts_nothing(procs, tmp):
    graph = tmp / 'graph_missing.py'
    (tmp / 'child.py').write_text(CHILD)
    (tmp / 'pids').mkdir()
    graph.write_text(textwrap.dedent(f'''
        import sys
        from poco_bringup.graph import NodeSpec
        def graph(args):
            return [NodeSpec("test", "steady", "ok", command=[sys.executable, {str(tmp / "child.py")!r},
                                                            "steady", {str(tmp / "pids")!r}]),
                    NodeSpec("no_such_package_xyz", "nope", "missing")]
    '''))
    p = start_runner(procs, tmp, graph)
    out, _ = p.communicate(timeout=30)
    assert p.returncode == 2, out
    assert "package 'no_such_package_xyz' not found" in out
    assert not (tmp / 'pids' / 'steady.pid').exists()


# ------------------------------------------------------------------ parameters checked before any start
def run_cli(tmp, *args, timeout=60):
    """`python -m poco_bringup.runner ARGS` to completion: (returncode, stdout, stderr, seconds)."""
    t0 = time.monotonic()
    r = subprocess.run([PYTHON, '-m', 'poco_bringup.runner', *args], capture_output=True, text=True,
                       timeout=timeout, env=ros_env(private_domain()[0]), cwd=tmp)
    return r.returncode, r.stdout, r.stderr, time.monotonic() - t0


def assert_nothing_started(run: Path, out: str):
    assert 'started' not in out, out
    assert not (run / 'logs').exists() and not (run / 'params').exists()  # no node, no params written


@pytest.mark.parametrize('override, words', [
    ('policy.max_joint_delt=0.1', ['unknown parameter policy.max_joint_delt', 'from --set',
                                   'did you mean policy.max_joint_delta (float)']),
    ('policy.max_joint_delta=abc', ['parameter policy.max_joint_delta', 'from --set', 'expects float',
                                    "got 'abc' (string)"]),
])
def test_bad_set_fails_at_once_with_one_line_and_starts_nothing(tmp, override, words):
    # Not a dry run: if the check were missing, the nodes would start and run for the whole duration.
    run = tmp / 'run'
    rc, out, err, secs = run_cli(tmp, 'sim', '--obs-mode', 'state', '--run-dir', str(run), '--duration', '60',
                                 '--set', override)
    assert rc == 2 and secs < 20, (rc, secs, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith('poco_run: error: ') and all(w in lines[0] for w in words), lines[0]
    assert_nothing_started(run, out)
    # --dry-run checks too
    rc, out, err, _ = run_cli(tmp, 'sim', '--dry-run', '--run-dir', str(tmp / 'dry'), '--set', override)
    assert rc == 2 and err.strip().splitlines() == lines, err


def test_good_set_passes_dry_run_typed_like_the_parameter(tmp):
    run = tmp / 'run'
    rc, out, err, _ = run_cli(tmp, 'real', '--dry-run', '--run-dir', str(run),
                              '--set', 'policy.max_joint_delta=0.04', '--set', 'policy.staleness_s=1',
                              '--set', 'learner.demo_dataset=123', '--set', 'policy.joint_lower=[-3,-2,-2,-3,-2,-3]')
    assert rc == 0, out + err
    pol = rosparams.load_params_file(run / 'params' / 'policy.effective.yaml')['/policy']
    assert pol['max_joint_delta'] == 0.04 and pol['staleness_s'] == 1.0 and isinstance(pol['staleness_s'], float)
    assert pol['joint_lower'] == [-3.0, -2.0, -2.0, -3.0, -2.0, -3.0]
    assert rosparams.load_params_file(run / 'params' / 'learner.effective.yaml')['/learner']['demo_dataset'] == '123'
    # the real graph trains with the paper's real-robot preset (Table III, pick_cube), resolved before any start
    cfg = rosparams.load_params_file(run / 'params' / 'learner.config.yaml')['/learner']
    assert (cfg['preset'], cfg['agent.horizon'], cfg['agent.batch_size'], cfg['agent.num_candidates'],
            cfg['agent.actor_hidden_dims'], cfg['agent.critic_warmup_steps'], cfg['agent.eta'], cfg['agent.zeta'],
            cfg['agent.max_episode_steps']) == ('table3_pick_cube', 4, 256, 32, [512] * 4, 5000, 0.001, 0.1, 200)
    rc, out, err, _ = run_cli(tmp, 'sim', '--dry-run', '--run-dir', str(tmp / 'sim'), '--set', 'learner.preset=123')
    assert rc == 2 and "unknown agent preset '123'" in err and len(err.strip().splitlines()) == 1, err


def test_bad_params_file_names_file_and_parameters(tmp):
    user = tmp / 'user.yaml'
    user.write_text('/**/learner:\n  ros__parameters:\n    utd_ratio: 2\n    etaa: 0.1\n')
    run = tmp / 'run'
    rc, out, err, secs = run_cli(tmp, 'real', '--run-dir', str(run), '--duration', '60', '--params-file', str(user))
    assert rc == 2 and secs < 20, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    assert 'unknown parameter learner.etaa' in lines[0] and str(user) in lines[0]
    assert 'parameter learner.utd_ratio' in lines[1] and 'expects float (write 2.0, not 2)' in lines[1]
    assert_nothing_started(run, out)


def test_parse_duration():
    assert runner.parse_duration('90') == 90
    assert runner.parse_duration('30m') == 1800
    assert runner.parse_duration('1.5h') == 5400
    assert runner.parse_duration(None) is None and runner.parse_duration('0') is None
    with pytest.raises(runner.UsageError):
        runner.parse_duration('ten minutes')


# ----------------------------------------------------------------------------- real rclpy nodes
TALKER = textwrap.dedent('''
    import sys, rclpy
    from rclpy.node import Node
    from std_msgs.msg import String
    rclpy.init(args=sys.argv)
    node = Node('talker_default_name')  # the runner renames it with -r __node:=
    greeting = node.declare_parameter('greeting', 'default').value
    rate = node.declare_parameter('rate_hz', 1.0).value
    pub = node.create_publisher(String, 'chatter', 10)
    n = [0]
    def tick():
        m = String(); m.data = f'{greeting} {n[0]}'; n[0] += 1; pub.publish(m)
    node.create_timer(1.0 / rate, tick)
    print(f'talker is {node.get_fully_qualified_name()} greeting={greeting} rate={rate}', flush=True)
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    rclpy.try_shutdown()
''')
LISTENER = textwrap.dedent('''
    import sys, rclpy
    from rclpy.node import Node
    from std_msgs.msg import String
    rclpy.init(args=sys.argv)
    node = Node('listener')
    heard = []
    def cb(m):
        heard.append(m.data); print(f'heard: {m.data}', flush=True)
    node.create_subscription(String, 'chatter', cb, 10)
    while rclpy.ok() and len(heard) < 3:
        rclpy.spin_once(node, timeout_sec=0.1)
    rclpy.try_shutdown()  # done: a required node exiting ends the run
''')


def test_rclpy_talker_listener_through_the_runner(procs, tmp):
    (tmp / 'talker.py').write_text(TALKER)
    (tmp / 'listener.py').write_text(LISTENER)
    (tmp / 'talk.yaml').write_text('/**/talker:\n  ros__parameters:\n    greeting: hello\n    rate_hz: 5.0\n')
    graph = tmp / 'graph_ros.py'
    graph.write_text(textwrap.dedent(f'''
        import sys
        from poco_bringup.graph import NodeSpec
        def graph(args):
            params = [{str(tmp / 'talk.yaml')!r}, *args.params_files]
            return [NodeSpec('test', 'talker', 'talker', namespace=args.namespace, parameters=params,
                             command=[sys.executable, {str(tmp / 'talker.py')!r}]),
                    NodeSpec('test', 'listener', 'listener', namespace=args.namespace,
                             command=[sys.executable, {str(tmp / 'listener.py')!r}])]
    '''))
    extra = tmp / 'extra.yaml'
    extra.write_text('/**/talker:\n  ros__parameters:\n    rate_hz: 10.0\n')
    p = start_runner(procs, tmp, graph, '--namespace', 'bot1', '--params-file', str(extra),
                     '--set', 'talker.greeting=hi there', '--duration', '60')
    out, _ = p.communicate(timeout=90)
    assert p.returncode == 0, out
    # Renamed + namespaced, YAML < extra params file < --set, like ros2 launch.
    assert re.search(r'^\[talker\] +talker is /bot1/talker greeting=hi there rate=10.0$', out, re.M), out
    assert re.search(r'^\[listener\] heard: hi there', out, re.M), out
    assert 'stopping: required node listener exited' in out
    eff = (tmp / 'run' / 'params' / 'talker.effective.yaml').read_text()
    assert '/bot1/talker:' in eff and 'greeting: hi there' in eff and 'rate_hz: 10.0' in eff


@needs_repo_setup
def test_run_sim_script_dry_run(tmp):
    """scripts/run_sim.sh (`make run`): demos go to the run dir and the learner is pointed at them."""
    from _bringup_helpers import REPO
    env = ros_env(private_domain()[0])
    r = subprocess.run(['bash', str(REPO / 'scripts' / 'run_sim.sh'), '--dry-run', '--run-dir', str(tmp / 'r'),
                        '--obs-mode', 'state', '--episodes', '4', '--', '--set', 'learner.utd_ratio=3'],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'collect_demos --task pick_cube --obs-mode state --episodes 4 --out {tmp}/r/demos' in r.stdout
    learner = (tmp / 'r' / 'params' / 'learner.run.yaml').read_text()
    assert f'demo_dataset: {tmp}/r/demos' in learner and 'utd_ratio: 3.0' in learner
    assert 'until Ctrl-C' in r.stdout      # no wall-clock limit by default: the budget is in env steps
    mon = (tmp / 'r' / 'params' / 'monitor.run.yaml').read_text()
    assert 'stop_after_steps: 20000' in mon   # default budget: 20k env steps of sim time
    assert f'results in {tmp}/r' in r.stdout
    h = subprocess.run(['bash', str(REPO / 'scripts' / 'run_sim.sh'), '--help'], capture_output=True, text=True)
    assert h.returncode == 0 and '--env-steps' in h.stdout and 'set -euo' not in h.stdout



@needs_repo_setup
def test_run_sim_script_pixels_encoder_choices(tmp):
    """Pixels mode: the encoder is pre-trained on the demos by default and the one checkpoint goes to both the
    policy and the learner (their features must agree); --encoder random / FILE / a bad value."""
    from _bringup_helpers import REPO
    env = ros_env(private_domain()[0])

    def dry(run_dir, *args):
        return subprocess.run(['bash', str(REPO / 'scripts' / 'run_sim.sh'), '--dry-run', '--run-dir', str(run_dir),
                               '--obs-mode', 'pixels', *args], capture_output=True, text=True, timeout=60, env=env)
    r = dry(tmp / 'p')
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'poco_pretrain_encoder --data {tmp}/p/demos --out {tmp}/p/encoder.safetensors --steps 300' in r.stdout
    enc = f'{tmp}/p/encoder.safetensors'
    assert f'encoder_checkpoint: {enc}' in (tmp / 'p' / 'params' / 'policy.run.yaml').read_text()
    assert f'encoder.checkpoint_path: {enc}' in (tmp / 'p' / 'params' / 'learner.run.yaml').read_text()
    r = dry(tmp / 'r', '--encoder', 'random')
    assert r.returncode == 0 and 'pretrain_encoder' not in r.stdout and 'seeded random' in r.stdout
    assert 'encoder' not in (tmp / 'r' / 'params' / 'policy.run.yaml').read_text()
    (tmp / 'mine.safetensors').write_bytes(b'x' * 32)
    r = dry(tmp / 'f', '--encoder', str(tmp / 'mine.safetensors'))
    assert r.returncode == 0 and f'encoder_checkpoint: {tmp}/mine.safetensors' in \
        (tmp / 'f' / 'params' / 'policy.run.yaml').read_text()
    r = dry(tmp / 'b', '--encoder', str(tmp / 'missing.safetensors'))
    assert r.returncode == 2 and 'not pretrain, random or a file' in r.stdout

def test_exec_failure_stops_the_started_nodes(procs, tmp):
    graph = write_graph(tmp, [('steady', 'steady')])
    bad = tmp / 'not_executable.sh'
    bad.write_text('echo never\n')  # no x bit: exec fails after `steady` is already running
    bad_spec = f'        NodeSpec("test", "bad", "bad", command=[{str(bad)!r}]),\n'
    graph.write_text(graph.read_text().replace('    ]\n', bad_spec + '    ]\n'))
    p = start_runner(procs, tmp, graph, '--duration', '60')
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 2, out
    assert 'could not start a node' in out and re.search(r'bad +not started', out)
    pid = int(re.search(r'started steady \(pid (\d+)\)', out).group(1))
    assert not pid_alive(pid)


@needs_repo_setup
def test_env_sh_puts_the_console_scripts_on_path():
    """After `source scripts/env.sh` (what the README says), the tools run by their project-specific names
    (poco_*), once each on PATH; the generic ROS executables (run, monitor, evaluate, ...) are not on PATH."""
    from _bringup_helpers import REPO
    tools = 'poco_run poco_bag_ingest poco_bag_record poco_pretrain poco_evaluate poco_collect_demos'
    r = subprocess.run(['bash', '-c', f'set -u; source {REPO}/scripts/env.sh && source {REPO}/scripts/env.sh && '
                        f'for e in {tools}; do readlink -f "$(command -v $e)"; done '
                        '&& echo "$PATH" && poco_run --help '
                        '&& for e in run monitor evaluate pretrain collect_demos bag_ingest learner_node; do '
                        '   command -v $e && echo "GENERIC ON PATH: $e"; done; true'],
                       capture_output=True, text=True, timeout=60,
                       env={'HOME': os.environ.get('HOME', '/tmp'), 'PATH': '/usr/local/bin:/usr/bin:/bin'})
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == str(REPO.resolve() / 'install/poco_bringup/lib/poco_bringup/poco_run'), lines[0]
    assert lines[3] == str(REPO.resolve() / 'install/poco_learner/lib/poco_learner/poco_pretrain'), lines[3]
    path = lines[6].split(':')
    assert sum(p.endswith('/install/poco_bin') for p in path) == 1   # sourced twice
    assert not any('/lib/poco_' in p for p in path), path
    assert 'usage: poco_run' in r.stdout.lower()
    assert 'GENERIC ON PATH' not in r.stdout, r.stdout
