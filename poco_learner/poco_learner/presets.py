"""Hyper-parameter presets of the agent (plain data, no torch: the bringup reads them without importing the
learning stack). A preset names AgentConfig fields; LearnerConfig.preset fills every agent value the user did
not set explicitly (poco_learner.learner.resolve_agent_config).

Paper presets: Table II (online RL with demos in the buffer), Table III (offline-to-online, sim and real robot;
H = episode length), Table V (VLA action head). `sim_cpu`: the sim main job on 2 CPU cores.
"""
from __future__ import annotations

from typing import Any


def _table2(eta: float, zeta: float) -> dict[str, Any]:
    # Table II (online RL with demonstrations in the buffer, no offline pre-training stage).
    return dict(batch_size=256, actor_lr=3e-4, critic_lr=3e-4, gamma=0.99, horizon=5, critic_warmup_steps=5000,
                num_candidates=32, eta=eta, beta=1.0, zeta=zeta, pretrain_steps=0)


def _table3(H: int, T: int, pretrain: int, zeta: float) -> dict[str, Any]:
    # Table III (offline-to-online, simulation and real robot).
    return dict(batch_size=256, actor_lr=3e-4, critic_lr=3e-4, gamma=0.99, max_episode_steps=H, horizon=T,
                pretrain_steps=pretrain, critic_warmup_steps=5000, num_candidates=32, eta=0.001, beta=1.0,
                zeta=zeta)


def _table5() -> dict[str, Any]:
    # Table V (VLA action-head fine-tuning on the real robot): smaller batch, slower actor, T = 10, N = 16.
    return dict(batch_size=64, actor_lr=5e-5, critic_lr=3e-4, gamma=0.99, max_episode_steps=200, horizon=10,
                critic_warmup_steps=2000, num_candidates=16, eta=0.001, beta=1.0, zeta=0.01)


def _sim_cpu() -> dict[str, Any]:
    # The sim main job on 2 CPU cores: Table III (pick_cube) scaled down so that one update costs ~50 ms in
    # fp32 on one core (no bf16 anywhere: the same numbers on every CPU). Differences from Table III and why
    # (docs/learning.md): 4x256 networks, batch 64, N 8 (cost); T 5 (Table II's); warm-up 500 and 3000 BC steps
    # (a run of ~15k env steps, not 100k); eta 0.01 and zeta 0.5 (this code's Q and BC-loss scales);
    # data term on the demonstrations (bc_data='demos'); H 100 (the sim tasks' episode length).
    return dict(batch_size=64, actor_lr=3e-4, critic_lr=3e-4, gamma=0.99, max_episode_steps=100, horizon=5,
                actor_hidden_dims=(256,) * 4, critic_hidden_dims=(256,) * 4, flow_steps=10,
                pretrain_steps=3000, critic_warmup_steps=500, num_candidates=8, eta=0.01, beta=1.0, zeta=0.5,
                bc_data='demos', bf16_sampling=False, bf16_candidate_loss=False, bf16_critic_estep=False)


PRESETS: dict[str, dict[str, Any]] = {
    'sim_cpu': _sim_cpu(),
    'table2_scene': _table2(0.1, 0.3),
    'table2_puzzle_3x3': _table2(0.1, 0.3),
    'table2_cube_double': _table2(0.1, 0.3),
    'table2_cube_triple': _table2(0.1, 0.3),
    'table2_lift': _table2(0.001, 0.15),
    'table2_can': _table2(0.001, 0.15),
    'table2_square': _table2(0.001, 0.15),
    'table3_scene': _table3(750, 5, 500_000, 0.3),
    'table3_puzzle_3x3': _table3(500, 5, 500_000, 0.15),
    'table3_can': _table3(300, 5, 100_000, 0.3),
    'table3_square': _table3(400, 5, 500_000, 0.08),
    'table3_pick_cube': _table3(200, 4, 20_000, 0.1),
    'table3_route_cable': _table3(150, 4, 20_000, 0.1),
    'table3_insert_usb': _table3(200, 4, 20_000, 0.08),
    'table3_assemble_ssd': _table3(180, 4, 20_000, 0.08),
    'table5_pick_pen': _table5(),
    'table5_hang_keychain': _table5(),
}

# Environment-side settings from the same tables (for the episode manager / sim, not the agent).
# EEF bounding box (x, y, z) and object random range (x, y) in centimetres.
PRESET_ENV_INFO: dict[str, dict[str, Any]] = {
    'table3_pick_cube': dict(eef_bbox_cm=(40, 40, 30), object_range_cm=(25, 10)),
    'table3_route_cable': dict(eef_bbox_cm=(20, 30, 30), object_range_cm=(5, 15)),
    'table3_insert_usb': dict(eef_bbox_cm=(20, 15, 15), object_range_cm=(5, 5)),
    'table3_assemble_ssd': dict(eef_bbox_cm=(12, 15, 15), object_range_cm=(5, 3)),
    'table5_pick_pen': dict(eef_bbox_cm=(40, 40, 40), object_range_cm=(30, 30)),
    'table5_hang_keychain': dict(eef_bbox_cm=(40, 40, 40), object_range_cm=(20, 20)),
}


