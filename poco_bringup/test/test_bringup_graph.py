"""graph.py is the one node list: its content, parameter layering (checked against what rclpy really
reads), and that both launch files and the runner build their processes from it."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import yaml

from _bringup_helpers import PYTHON, make_tmp, private_domain, ros_env
from poco_bringup import graph, rosparams, runner

PKG = Path(graph.__file__).resolve().parents[1]
LAUNCH_DIR = PKG / 'launch'


def names(specs):
    return [(s.package, s.executable, s.name) for s in specs]


def test_sim_and_real_graph_nodes():
    assert names(graph.sim_graph()) == [('poco_sim', 'sim_node', 'sim'), ('poco_policy', 'policy_node', 'policy'),
                                        ('poco_learner', 'learner_node', 'learner'),
                                        ('poco_bringup', 'monitor', 'monitor')]
    assert names(graph.real_graph()) == [('poco_policy', 'policy_node', 'policy'),
                                         ('poco_learner', 'learner_node', 'learner'),
                                         ('poco_bringup', 'monitor', 'monitor')]
    assert [s.name for s in graph.sim_graph(monitor=False, rviz=True)] == ['sim', 'policy', 'learner', 'rviz2']
    with pytest.raises(ValueError, match='pixels'):
        graph.real_graph(obs_mode='state')
    with pytest.raises(ValueError, match='unknown task'):
        graph.sim_graph(task='juggle')
    with pytest.raises(ValueError, match='unknown graph arguments'):
        graph.sim_graph(tsak='pick_cube')


def test_parameter_layering_and_run_values(tmp_path):
    user = tmp_path / 'mine.yaml'
    user.write_text('/**/policy:\n  ros__parameters:\n    max_episode_steps: 77\n    control_rate_hz: 10.0\n')
    specs = {s.name: s for s in graph.sim_graph(
        task='peg_insert', obs_mode='state', algorithm='bc', run_dir=str(tmp_path / 'run'), seed='7',
        demo_dataset=str(tmp_path / 'demos'), params_files=[str(user)],
        overrides=['policy.control_rate_hz=12', 'learner.agent.pretrain_steps=5', 'policy.cameras=[front]'])}
    pol = specs['policy']
    files = [Path(p).name for p in pol.parameters if not isinstance(p, dict)]
    assert files == ['robot.yaml', 'cameras.yaml', 'monitor.yaml', 'task_peg_insert.yaml', 'algo_poco.yaml',
                     'algo_bc.yaml', 'mine.yaml']
    assert isinstance(pol.parameters[-1], dict)  # per-run values + overrides come last
    eff = pol.effective_parameters()
    assert eff['max_episode_steps'] == 77  # user file beats the task file
    assert eff['control_rate_hz'] == 12.0 and isinstance(eff['control_rate_hz'], float)  # stays DOUBLE
    assert eff['cameras'] == ['front'] and eff['obs_mode'] == 'state' and eff['seed'] == 7
    assert eff['ee_box_min'] == [0.25, -0.25, 0.0]  # task box beats robot box
    lrn = specs['learner'].effective_parameters()
    assert lrn['agent.algorithm'] == 'bc' and lrn['agent.pretrain_steps'] == 5 and lrn['preset'] == 'sim_cpu'
    assert lrn['run_dir'] == str(tmp_path / 'run') and lrn['demo_dataset'] == str(tmp_path / 'demos')
    assert specs['sim'].effective_parameters()['task'] == 'peg_insert'
    assert specs['monitor'].effective_parameters()['run_dir'] == str(tmp_path / 'run')


def test_overrides_are_checked():
    with pytest.raises(ValueError, match="no node 'polcy'"):
        graph.sim_graph(overrides=['polcy.seed=1'])
    with pytest.raises(ValueError, match='node.param=value'):
        graph.sim_graph(overrides=['seed=1'])
    with pytest.raises(ValueError, match='empty lists'):
        graph.sim_graph(overrides=['policy.cameras=[]'])
    d = graph.parse_overrides(['learner.a.b=1e-3', 'learner.s=hello world', 'learner.f=false', 'learner.e='],
                              ['learner'])
    assert d == {'learner': {'a.b': 1e-3, 's': 'hello world', 'f': False, 'e': ''}}


def test_args_from_strings_matches_cli_types():
    a = graph.args_from_strings({'task': 'peg_insert', 'monitor': 'false', 'rviz': 'True',
                                 'params_files': 'a.yaml, b.yaml', 'overrides': 'policy.x=1; learner.y=2 ',
                                 'seed': ''})
    assert (a.task, a.monitor, a.rviz, a.seed) == ('peg_insert', False, True, '')
    assert a.params_files == ['a.yaml', 'b.yaml'] and a.overrides == ['policy.x=1', 'learner.y=2']
    # Every launch argument has a string default that parses back to the dataclass default.
    back = graph.args_from_strings({f.name: graph.default_string(f) for f in graph.graph_fields()})
    assert back == graph.GraphArgs()


def test_section_matching_rules():
    m = rosparams.section_matches
    assert m('/**/policy', '/policy') and m('/**/policy', '/robot1/policy') and m('/**', '/a/b')
    assert m('policy', '/policy') and not m('policy', '/robot1/policy')
    assert m('/*/policy', '/r/policy') and not m('/*/policy', '/policy')
    assert not m('/**/policy', '/policy_x')


EFFECTIVE_PROBE = textwrap.dedent('''
    import json, sys, rclpy
    from rclpy.node import Node
    out = {}
    for name, args in json.loads(sys.argv[1]).items():
        ctx = rclpy.Context()
        ctx.init(args)
        node = Node('probe', context=ctx, allow_undeclared_parameters=True,
                    automatically_declare_parameters_from_overrides=True)
        out[name] = {p.name: p.value for p in node._parameters.values()
                     if p.name not in ('use_sim_time', 'start_type_description_service')}
        node.destroy_node()
        ctx.shutdown()
    print(json.dumps(out))
''')


def test_effective_parameters_equal_what_rclpy_reads(tmp_path_factory):
    """Our params-file merge (written to the run dir) must be exactly what rcl/rclpy give each node,
    including `/**/node` sections in a namespace, later files winning, and the per-run dict last."""
    tmp = make_tmp(tmp_path_factory, 'effective')
    specs = graph.sim_graph(namespace='robot1', run_dir=str(tmp), seed='3',
                            overrides=['learner.utd_ratio=2', 'policy.cameras=[wrist]'])
    args = {}
    for s in specs:
        files, _ = runner.write_params(s, tmp / 'params')
        args[s.name] = runner.build_command(s, files)[1:]  # what follows the executable
    d, lock = private_domain()
    try:
        r = subprocess.run([PYTHON, '-c', EFFECTIVE_PROBE, json.dumps(args)], capture_output=True, text=True,
                           timeout=60, env=ros_env(d))
    finally:
        lock.close()
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    for s in specs:
        ours = yaml.safe_load((tmp / 'params' / f'{s.name}.effective.yaml').read_text())
        assert ours == {s.fqn: {'ros__parameters': seen[s.name]}}, s.name
    assert seen['learner']['utd_ratio'] == 2.0 and seen['policy']['cameras'] == ['wrist']


# ------------------------------------------------------------------------------------- launch files
def _imports(tree: ast.Module) -> set[str]:
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            mods.add(node.module + ''.join(f':{a.name}' for a in node.names))
    return mods


@pytest.mark.parametrize('kind', ['sim', 'real'])
def test_launch_file_parses_and_only_uses_graph(kind):
    path = LAUNCH_DIR / f'{kind}.launch.py'
    text = path.read_text()
    tree = ast.parse(text)
    funcs = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert 'generate_launch_description' in funcs
    imports = _imports(tree)
    assert 'poco_bringup:graph' in imports
    assert all(m.split(':')[0] in ('launch', 'launch.actions', 'launch.substitutions', 'launch_ros.actions',
                                   'launch_ros.parameter_descriptions', 'poco_bringup') for m in imports), imports
    # No second node list: no executable or package of the graph is spelled in the launch file.
    for s in graph.sim_graph(rviz=True):
        assert repr(s.executable) not in text and f'"{s.executable}"' not in text, s.executable
        assert repr(s.package) not in text, s.package
    assert f"graph.launch_description('{kind}')" in text


class _Recorder:
    """Stand-in for launch/launch_ros classes: records constructor arguments."""
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _fake_launch_modules(monkeypatch):
    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context.launch_configurations[self.name]

    mods = {
        'launch': types.SimpleNamespace(LaunchDescription=lambda entities: list(entities)),
        'launch.actions': types.SimpleNamespace(DeclareLaunchArgument=type('DeclareLaunchArgument', (_Recorder,), {}),
                                                OpaqueFunction=type('OpaqueFunction', (_Recorder,), {}),
                                                Shutdown=type('Shutdown', (_Recorder,), {})),
        'launch.substitutions': types.SimpleNamespace(LaunchConfiguration=LaunchConfiguration),
        'launch_ros': types.SimpleNamespace(),
        'launch_ros.actions': types.SimpleNamespace(Node=type('Node', (_Recorder,), {})),
        'launch_ros.parameter_descriptions': types.SimpleNamespace(
            ParameterValue=type('ParameterValue', (_Recorder,), {})),
    }
    for k, v in mods.items():
        monkeypatch.setitem(sys.modules, k, v)


@pytest.mark.parametrize('kind', ['sim', 'real'])
def test_launch_file_builds_the_graph_nodes(kind, monkeypatch, tmp_path):
    """Run generate_launch_description() against recording stand-ins of launch/launch_ros (not
    installable here) and compare the Node actions with the graph."""
    _fake_launch_modules(monkeypatch)
    ns = {'__name__': f'{kind}_launch', '__file__': str(LAUNCH_DIR / f'{kind}.launch.py')}
    exec(compile((LAUNCH_DIR / f'{kind}.launch.py').read_text(), ns['__file__'], 'exec'), ns)
    entities = ns['generate_launch_description']()
    declared = {e.args[0] if e.args else e.kwargs['name']: e.kwargs for e in entities
                if type(e).__name__ == 'DeclareLaunchArgument'}
    assert set(declared) == {f.name for f in graph.graph_fields()}
    assert declared['task']['choices'] == list(graph.TASKS)
    opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction']
    assert len(opaque) == 1
    values = {k: v['default_value'] for k, v in declared.items()}
    values.update(task='peg_insert', run_dir=str(tmp_path), overrides='learner.seed=5', namespace='robot2',
                  rviz='true')
    context = types.SimpleNamespace(launch_configurations=values)
    nodes = opaque[0].kwargs['function'](context)
    expected = graph.GRAPHS[kind](task='peg_insert', run_dir=str(tmp_path), overrides=['learner.seed=5'],
                                  namespace='robot2', rviz=True)
    assert len(nodes) == len(expected)
    def unwrap(params):  # string values travel as ParameterValue(v, value_type=str)
        out = []
        for p in params:
            if isinstance(p, dict):
                for v in p.values():
                    assert type(v).__name__ != 'ParameterValue' or v.kwargs == {'value_type': str}
                p = {k: v.args[0] if type(v).__name__ == 'ParameterValue' else v for k, v in p.items()}
            out.append(p)
        return out

    for node, spec in zip(nodes, expected):
        kw = dict(node.kwargs)
        on_exit = kw.pop('on_exit', None)
        if 'parameters' in kw:
            kw['parameters'] = unwrap(kw['parameters'])
        assert kw == spec.launch_kwargs()
        assert kw['namespace'] == '/robot2'
        assert (on_exit is not None) == spec.required  # rviz may close without ending the run
    learner = next(n for n in nodes if n.kwargs['name'] == 'learner')
    assert learner.kwargs['parameters'][-1]['seed'] == 5
    run_dir_value = learner.kwargs['parameters'][-1]['run_dir']
    assert type(run_dir_value).__name__ == 'ParameterValue' and run_dir_value.args == (str(tmp_path),)
    assert all(isinstance(p, (str, dict)) for n in nodes for p in n.kwargs.get('parameters', []))


def test_runner_uses_graph():
    """The runner's sim/real come from graph.GRAPHS and its options from GraphArgs."""
    text = Path(runner.__file__).read_text()
    assert 'graph_mod.GRAPHS[ns.graph]' in text
    opts = {a.dest for a in runner.build_parser()._actions}
    assert {f.name for f in graph.graph_fields()} <= opts


def test_runner_dry_run_sim(tmp_path, capsys):
    rc = runner.main(['sim', '--dry-run', '--run-dir', str(tmp_path), '--domain-id', '9', '--obs-mode', 'state',
                      '--set', 'learner.agent.pretrain_steps=10'])
    out = capsys.readouterr().out
    assert rc == 0, out
    for s in graph.sim_graph():
        assert f'lib/{s.package}/{s.executable} --ros-args -r __node:={s.name}' in out
    assert yaml.safe_load((tmp_path / 'params' / 'learner.run.yaml').read_text()) == {
        '/learner': {'ros__parameters': {'obs_mode': 'state', 'run_dir': str(tmp_path), 'agent.pretrain_steps': 10}}}
    assert runner.main(['sim', '--dry-run', '--run-dir', str(tmp_path), '--set', 'nobody.x=1']) == 2


def test_rviz_config_shows_the_topics():
    cfg = yaml.safe_load((PKG / 'config' / 'poco.rviz').read_text())
    displays = {d['Class']: [] for d in cfg['Visualization Manager']['Displays']}
    for d in cfg['Visualization Manager']['Displays']:
        displays[d['Class']].append(d.get('Topic', {}).get('Value'))
    # relative: rviz2 in namespace:=robot1 shows /robot1/... (test_rviz_config.py)
    assert displays['rviz_default_plugins/Image'] == ['cameras/front/image_raw', 'cameras/wrist/image_raw']
    assert displays['rviz_default_plugins/MarkerArray'] == ['poco/chunk_markers']
    assert set(displays['rviz_default_plugins/Marker']) == {'poco/safety_box', 'poco/status_marker'}
    assert cfg['Visualization Manager']['Global Options']['Fixed Frame'] == 'base_link'


def test_graph_defaults_sit_below_files_and_overrides(tmp_path):
    """Graph defaults (the sim's clock settings, the learner's preset, the policy's H from that preset) live in
    the `/**/<name>` section, so package files, user files and --set all beat them, exactly as rcl merges."""
    user = tmp_path / 'mine.yaml'
    user.write_text('/**/sim:\n  ros__parameters:\n    pace_timeout_s: 3.0\n')
    specs = {s.name: s for s in graph.sim_graph(obs_mode='state', params_files=[str(user)],
                                                 overrides=['sim.image_size=64', 'policy.max_joint_delta=0.04'])}
    sim = specs['sim'].effective_parameters()
    assert sim['image_size'] == 64                      # --set beats cameras.yaml despite the sim's defaults
    assert sim['pacing'] is True and sim['pace_timeout_s'] == 3.0   # default kept / a user file beats it
    assert specs['policy'].effective_parameters()['max_joint_delta'] == 0.04
    assert specs['policy'].effective_parameters()['max_episode_steps'] == 100      # sim_cpu's H
    real = {s.name: s for s in graph.real_graph()}
    assert real['learner'].effective_parameters()['preset'] == 'table3_pick_cube'
    assert real['policy'].effective_parameters()['max_episode_steps'] == 200       # Table III pick_cube H
    over = {s.name: s for s in graph.sim_graph(preset='table3_pick_cube', overrides=['policy.max_episode_steps=33'])}
    assert over['learner'].effective_parameters()['preset'] == 'table3_pick_cube'
    assert over['policy'].effective_parameters()['max_episode_steps'] == 33
