"""Every parameter the YAMLs give a node must be declared by that node's config, with the ROS type the node
will declare (a typo or `1` for a DOUBLE fails here, not at start-up on the robot).

The effective parameters are computed per node exactly as the graph passes them (all config files, every
task / algorithm combination), so sections, layering and names are all covered. The schema is the one the
runner checks user parameters against (rosparams.node_schema: the dataclass each node module declares).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from poco_bringup import graph, rosparams

NODES = {  # graph node name -> (package, executable); teleop runs beside a graph with robot.yaml
    'sim': ('poco_sim', 'sim_node'),
    'policy': ('poco_policy', 'policy_node'),
    'learner': ('poco_learner', 'learner_node'),
    'monitor': ('poco_bringup', 'monitor'),
    'teleop': ('poco_policy', 'teleop_node'),
}
CONFIG_DIR = graph.config_dir()
YAMLS = sorted(p.name for p in CONFIG_DIR.glob('*.yaml'))


def schema(node: str) -> rosparams.NodeSchema:
    try:
        s = rosparams.node_schema(*NODES[node])
    except ImportError as e:
        pytest.fail(f'{node}: cannot read its parameter schema ({e}); the YAMLs for this node are unchecked')
    assert s is not None, f'{node}: {NODES[node]} declares no config; the YAMLs for this node are unchecked'
    return s


def combos():
    for task in graph.TASKS:
        for algo in graph.ALGORITHMS:
            yield task, algo


@pytest.mark.parametrize('node', list(NODES))
def test_yaml_parameters_match_node_config(node, tmp_path):
    sch = schema(node)
    if node == 'teleop':   # not a graph node: its section of robot.yaml alone
        params = rosparams.merge_traced([str(CONFIG_DIR / 'robot.yaml')], '/teleop')
        assert params and not rosparams.check_params(node, params, sch)
        return
    for task, algo in combos():
        for make in (graph.sim_graph, graph.real_graph):
            if node == 'sim' and make is graph.real_graph:
                continue
            specs = {s.name: s for s in make(task=task, algorithm=algo, run_dir=str(tmp_path), seed='1',
                                             demo_dataset=str(tmp_path), preset='x')}
            assert (specs[node].package, specs[node].executable) == NODES[node]
            params = rosparams.merge_traced(specs[node].parameters, specs[node].fqn)
            errors = rosparams.check_params(node, params, sch)
            assert not errors, f'{make.__name__}, task={task}, algorithm={algo}:\n' + '\n'.join(errors)


@pytest.mark.parametrize('name', YAMLS)
def test_every_section_targets_a_graph_node(name):
    sections = rosparams.load_params_file(CONFIG_DIR / name)
    assert sections, f'{name} is empty'
    for key, params in sections.items():
        # `/**/<node>`: applies in any namespace (one per robot) and keeps rclpy's section order simple.
        assert key.startswith('/**/'), f'{name}: section {key!r} should be /**/<node>'
        node = key[len('/**/'):]
        assert node in NODES, f'{name}: section for unknown node {node!r}'
        for k, v in params.items():
            rosparams.check_ros_value(f'{name}:{key}.{k}', v)


def test_every_yaml_is_used_by_the_graph():
    used = set()
    for task, algo in combos():
        for s in graph.sim_graph(task=task, algorithm=algo) + graph.real_graph(task=task, algorithm=algo):
            used |= {Path(p).name for p in s.parameters if isinstance(p, str)}
    assert used == set(YAMLS)


def test_robot_yaml_is_consistent():
    pol = rosparams.load_params_file(CONFIG_DIR / 'robot.yaml')['/**/policy']
    lo, hi = pol['joint_lower'], pol['joint_upper']
    assert len(pol['joint_names']) == len(lo) == len(hi) == 6
    assert all(a < b for a, b in zip(lo, hi))
    assert all(a < b for a, b in zip(pol['ee_box_min'], pol['ee_box_max']))
    assert 0 < pol['max_joint_delta'] <= 0.1
    for node in ('learner', 'sim', 'teleop'):  # one per-tick limit: the learner normalises actions with it
        other = rosparams.load_params_file(CONFIG_DIR / 'robot.yaml')['/**/' + node]
        assert other['max_joint_delta'] == pol['max_joint_delta'], node
    # one arm: the sim and teleop sections repeat the policy's arm parameters (rcl has no YAML anchors)
    from poco_policy.node_config import ARM_PARAMS
    for node in ('sim', 'teleop'):
        other = rosparams.load_params_file(CONFIG_DIR / 'robot.yaml')['/**/' + node]
        for name in ARM_PARAMS:
            if name in other:
                assert other[name] == pol[name], (node, name)
        assert other['joint_names'] == pol['joint_names'] and other['gripper_joint'] == pol['gripper_joint'], node


def test_monitor_config_defaults_match_yaml():
    # The monitor's own dataclass and monitor.yaml should not drift apart silently.
    from poco_bringup.monitor_node import MonitorNodeConfig
    yaml_params = rosparams.load_params_file(CONFIG_DIR / 'monitor.yaml')['/**/monitor']
    defaults = dataclasses.asdict(MonitorNodeConfig())
    assert {k: defaults[k] for k in yaml_params} == yaml_params


# ------------------------------------------------------------------------------ schema of a node config
@dataclasses.dataclass
class _Agent:
    eta: float = 0.01
    hidden: tuple[int, ...] = (256, 256)


@dataclasses.dataclass
class _Composed:  # the shape of a config that composes components under dotted names (agent.eta, ...)
    agent: _Agent = dataclasses.field(default_factory=_Agent)
    run_dir: str = ''
    cameras: tuple = ('front', 'wrist')
    threads: int = 1
    enabled: bool = True
    checkpoint: 'str | None' = None
    extra: dict = dataclasses.field(default_factory=dict)


def test_schema_flattens_nested_configs_with_ros_types():
    types = {k: str(v) for k, v in rosparams.schema_types(_Composed).items()}
    assert types == {'agent.eta': 'float', 'agent.hidden': 'list of integer', 'run_dir': 'string',
                     'cameras': 'list of string', 'threads': 'integer', 'enabled': 'bool',
                     'checkpoint': 'string', 'extra': 'string'}  # None and dicts travel as strings


def test_schema_prefers_the_shared_param_schema(monkeypatch):
    import poco_policy.config
    monkeypatch.setattr(poco_policy.config, 'param_schema', lambda cls: {'only.this': float}, raising=False)
    assert rosparams.param_schema(_Composed) == {'only.this': float}
    monkeypatch.delattr(poco_policy.config, 'param_schema')
    assert rosparams.param_schema(_Composed)['agent.eta'] is float  # the local fallback


def test_check_params_names_each_bad_parameter_once(tmp_path):
    sch = rosparams.NodeSchema(rosparams.schema_types(_Composed), 'test (_Composed)')
    user = tmp_path / 'user.yaml'
    user.write_text('/**/learner:\n  ros__parameters:\n    agent: {eta: 1, etaa: 0.1, hidden: [512, 512]}\n'
                    '    threads: 2\n    enabled: yes\n    use_sim_time: true\n    cameras: [front]\n'
                    '/**/other:\n  ros__parameters:\n    nonsense: 1\n')
    params = rosparams.merge_traced([str(user), {'run_dir': 5}], '/learner')
    errors = rosparams.check_params('learner', params, sch)
    assert errors == [
        f'parameter learner.agent.eta (from {user}) expects float (write 1.0, not 1), got 1 (integer)',
        f'unknown parameter learner.agent.etaa (from {user}): not declared by test (_Composed); '
        'did you mean learner.agent.eta (float)?',
        "parameter learner.run_dir (from {'run_dir': 5}) expects string, got 5 (integer)",
    ], errors
    ok = rosparams.merge_traced([{'agent.eta': 0.5, 'agent.hidden': [8], 'extra': '{}', 'checkpoint': ''}], '/x')
    assert rosparams.check_params('x', ok, sch) == []


def test_params_file_keys_stay_strings():
    assert rosparams.load_yaml('on: yes\n1: 2.5\nx: 1e-3\n') == {'on': True, '1': 2.5, 'x': 0.001}


def test_node_schema_of_non_config_executables_is_none():
    assert rosparams.node_schema('rviz2', 'rviz2') is None
    assert rosparams.node_schema('no_such_package_xyz', 'nope') is None


def test_check_graph_passes_the_package_graphs_and_names_bad_overrides(tmp_path):
    for make in (graph.sim_graph, graph.real_graph):
        assert rosparams.check_graph(make(run_dir=str(tmp_path), rviz=True)) == []  # rviz2: no schema, skipped
    sets = ['policy.max_joint_delt=0.1', 'sim.seed=1.5', 'policy.staleness_s=2', 'learner.preset=07']
    specs = {s.name: s for s in graph.sim_graph(overrides=sets)}
    errors = rosparams.check_graph(specs.values(), sets)
    assert len(errors) == 2, errors  # in graph order: sim, policy
    assert errors[0] == 'parameter sim.seed (from --set) expects integer, got 1.5 (float)'
    assert errors[1].startswith('unknown parameter policy.max_joint_delt (from --set)')
    assert specs['policy'].effective_parameters()['staleness_s'] == 2.0  # typed like the parameter
    assert specs['learner'].effective_parameters()['preset'] == '07'     # the text, not YAML's octal 7
