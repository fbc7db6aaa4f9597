"""Every parameter the YAMLs give a node must be a field of that node's config dataclass, with the ROS type
the node will declare (a typo or `1` for a DOUBLE fails here, not at start-up on the robot).

The effective parameters are computed per node exactly as the graph passes them (all config files, every
task / algorithm combination), so sections, layering and names are all covered.
"""
from __future__ import annotations

import dataclasses
import importlib
import typing
from pathlib import Path

import pytest

from poco_bringup import graph, rosparams
from poco_policy.config import from_dict

NODE_CONFIGS = {
    'sim': ('poco_sim.sim_node', 'SimNodeConfig'),
    'policy': ('poco_policy.policy_node', 'PolicyNodeConfig'),
    'learner': ('poco_learner.learner_node', 'LearnerNodeConfig'),
    'monitor': ('poco_bringup.monitor_node', 'MonitorNodeConfig'),
}
CONFIG_DIR = graph.config_dir()
YAMLS = sorted(p.name for p in CONFIG_DIR.glob('*.yaml'))


def config_class(node: str):
    module, cls = NODE_CONFIGS[node]
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f'{node}: cannot import {module} ({e}); the YAMLs for this node are unchecked')
    if not hasattr(mod, cls):
        pytest.fail(f'{node}: {module} has no {cls}')
    return getattr(mod, cls)


def check_ros_types(cls, params: dict, where: str):
    """ROS declares each parameter with the dataclass default's type; an override of another type is
    rejected at start-up (e.g. INTEGER for a DOUBLE). config.from_dict would silently convert."""
    hints = typing.get_type_hints(cls)
    defaults = cls()
    for name, value in params.items():
        default = getattr(defaults, name)
        tp = hints[name]
        if isinstance(default, bool) or tp is bool:
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, float)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, str) or default is None:
            ok = isinstance(value, str)
        elif isinstance(default, (tuple, list)):
            elem = {type(v) for v in default}
            ok = isinstance(value, list) and (not elem or {type(v) for v in value} <= elem)
        else:
            ok = True
        assert ok, f'{where}: {name}={value!r} ({type(value).__name__}) but {cls.__name__}.{name} is {default!r}'


def combos():
    for task in graph.TASKS:
        for algo in graph.ALGORITHMS:
            yield task, algo


@pytest.mark.parametrize('node', list(NODE_CONFIGS))
def test_yaml_parameters_match_node_config(node, tmp_path):
    cls = config_class(node)
    for task, algo in combos():
        for make in (graph.sim_graph, graph.real_graph):
            if node == 'sim' and make is graph.real_graph:
                continue
            specs = {s.name: s for s in make(task=task, algorithm=algo, run_dir=str(tmp_path), seed='1',
                                             demo_dataset=str(tmp_path), preset='x')}
            params = specs[node].effective_parameters()
            where = f'{node} ({make.__name__}, task={task}, algorithm={algo})'
            try:
                from_dict(cls, params, strict=True)
            except ValueError as e:
                pytest.fail(f'{where}: {e}')
            check_ros_types(cls, params, where)


@pytest.mark.parametrize('name', YAMLS)
def test_every_section_targets_a_graph_node(name):
    sections = rosparams.load_params_file(CONFIG_DIR / name)
    assert sections, f'{name} is empty'
    for key, params in sections.items():
        # `/**/<node>`: applies in any namespace (one per robot) and keeps rclpy's section order simple.
        assert key.startswith('/**/'), f'{name}: section {key!r} should be /**/<node>'
        node = key[len('/**/'):]
        assert node in NODE_CONFIGS, f'{name}: section for unknown node {node!r}'
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
    lrn = rosparams.load_params_file(CONFIG_DIR / 'robot.yaml')['/**/learner']
    assert lrn['max_joint_delta'] == pol['max_joint_delta']  # both sides normalise actions with it


def test_monitor_config_defaults_match_yaml():
    # The monitor's own dataclass and monitor.yaml should not drift apart silently.
    from poco_bringup.monitor_node import MonitorNodeConfig
    yaml_params = rosparams.load_params_file(CONFIG_DIR / 'monitor.yaml')['/**/monitor']
    defaults = dataclasses.asdict(MonitorNodeConfig())
    assert {k: defaults[k] for k in yaml_params} == yaml_params
