"""One home per parameter: a params file naming a preset plus one explicit value gives the preset's values with
that one override, in the learner node's effective config and in its saved checkpoint."""
import json
import os
import random

import numpy as np
import pytest

from poco_learner.dataset import write_episode, write_meta
from poco_learner.learner import LearnerConfig, resolve_agent_config
from poco_learner.presets import PRESETS
from poco_policy.config import param_schema

PRESET = 'table3_pick_cube'


def _demos(directory):
    write_meta(directory, {'task': 'pick_cube', 'obs_mode': 'state', 'image_size': 32, 'cameras': [],
                           'max_joint_delta': 0.05, 'state_dim': 5})
    rng = np.random.default_rng(0)
    L = 12
    write_episode(directory, 0, {
        'proprio': rng.uniform(-1, 1, (L + 1, 7)).astype(np.float32),
        'actions': np.concatenate([rng.uniform(-0.05, 0.05, (L, 6)), rng.uniform(0, 1, (L, 1))], 1),
        'rewards': (np.arange(L) == L - 1).astype(np.float32), 'terminal': True, 'success': True,
        'state': rng.normal(size=(L + 1, 5)).astype(np.float32)})


def test_resolution_order_in_plain_python():
    cfg = LearnerConfig(preset=PRESET)
    cfg.agent.eta = 0.05                       # differs from the default: explicit
    a = resolve_agent_config(cfg)
    assert (a.horizon, a.batch_size, a.num_candidates, a.critic_warmup_steps, a.zeta, a.max_episode_steps) == \
        (4, 256, 32, 5000, 0.1, 200)
    assert a.eta == 0.05 and a.preset == PRESET
    # an explicit value equal to the AgentConfig default still wins when the node says it was set
    cfg = LearnerConfig(preset='sim_cpu')
    assert resolve_agent_config(cfg, explicit={'agent.batch_size'}).batch_size == 256
    assert resolve_agent_config(cfg, explicit=set()).batch_size == PRESETS['sim_cpu']['batch_size']
    with pytest.raises(KeyError, match='unknown agent preset'):
        resolve_agent_config(LearnerConfig(preset='table9'))


def test_schema_has_dotted_component_names_and_no_derived_fields():
    names = param_schema(LearnerConfig)
    assert {'agent.eta', 'agent.num_candidates', 'buffer.demo_ratio', 'reward.timeout_terminal',
            'encoder.feature_dim', 'preset', 'utd_ratio', 'seed'} <= set(names)
    assert not {'agent.obs_dim', 'agent.action_dim', 'agent.seed', 'agent.preset'} & set(names)  # derived
    assert names['agent.eta'] is float and names['agent.num_candidates'] is int


def test_params_file_preset_plus_one_override_reaches_config_and_checkpoint(tmp_path):
    rclpy = pytest.importorskip('rclpy')
    from poco_learner.learner_node import LearnerNode
    demos = tmp_path / 'demos'
    _demos(demos)
    run_dir = tmp_path / 'run'
    params = tmp_path / 'mine.yaml'
    params.write_text(f'/**/learner:\n  ros__parameters:\n    preset: {PRESET}\n    agent:\n      eta: 0.05\n'
                      f'    run_dir: {run_dir}\n    demo_dataset: {demos}\n    obs_mode: state\n'
                      '    checkpoint_every_s: 3600.0\n')
    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('ROS_DOMAIN_ID', str(random.randint(100, 200)))
    ctx = rclpy.Context()
    rclpy.init(args=['--ros-args', '--params-file', str(params)], context=ctx)
    node = None
    try:
        node = LearnerNode(context=ctx)
        eff = json.loads((run_dir / 'learner_config.json').read_text())
    finally:
        if node is not None:
            node.destroy_node()                 # stops training and writes the checkpoint
        rclpy.shutdown(context=ctx)
    expected = dict(PRESETS[PRESET], eta=0.05)
    for k, v in expected.items():
        assert eff['agent'][k] == (list(v) if isinstance(v, tuple) else v), k
    assert eff['agent']['preset'] == PRESET and eff['preset'] == PRESET
    ckpt = json.loads((run_dir / 'checkpoints' / 'latest.json').read_text())
    assert ckpt['config']['eta'] == 0.05 and ckpt['config']['horizon'] == 4 and ckpt['config']['batch_size'] == 256
    assert ckpt['learner_config']['agent'] == eff['agent']
