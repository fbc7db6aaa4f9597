"""bench_update.py stays honest: its batched fp32 references compute what the agent computes (same weights and
noise), and it names the CPU's bf16 features next to its figures."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from poco_learner.agent import Agent, AgentConfig

BENCH = Path(__file__).resolve().parents[1] / 'benchmarks' / 'bench_update.py'


def load_bench():
    spec = importlib.util.spec_from_file_location('bench_update_under_test', BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod                       # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_batched_references_match_the_agent_and_update():
    bu = load_bench()
    s = bu.Sizes(batch=6, candidates=3, flow_steps=4, horizon=2, action_dim=3, hidden=16, layers=2, obs_dim=5)
    cfg = AgentConfig(obs_dim=s.obs_dim, action_dim=s.action_dim, horizon=s.horizon, num_candidates=s.candidates,
                      flow_steps=s.flow_steps, batch_size=s.batch, actor_hidden_dims=(s.hidden,) * s.layers,
                      critic_hidden_dims=(s.hidden,) * s.layers, device='cpu', seed=1)
    agent = Agent(cfg)
    batch = bu.make_batch(np.random.default_rng(0), s)
    for cache in (False, True):
        ref = bu.BatchedReference(agent, cache_obs=cache)
        eq = bu.check_equivalence(agent, ref, batch, s)
        assert max(eq.values()) < 1e-5, eq
        loss = ref.update({k: torch.as_tensor(v) for k, v in batch.items()}, torch.Generator().manual_seed(0))
        assert np.isfinite(loss)


def test_cpu_features_name_the_bf16_path():
    cpu = load_bench().cpu_features()
    assert cpu['native_bf16'] in ('AMX', 'AVX512-BF16', 'neither')
    assert {'model', 'amx', 'avx512_bf16', 'torch', 'bf16_paths_used'} <= set(cpu)


def test_gpu_benchmark_skips_in_one_line_without_cuda_and_runs_on_cpu_at_small_sizes(capsys):
    spec = importlib.util.spec_from_file_location('bench_gpu_under_test', BENCH.parent / 'bench_gpu.py')
    bg = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bg
    spec.loader.exec_module(bg)
    if not torch.cuda.is_available():
        assert bg.main([]) == 0
        out = capsys.readouterr().out.strip().splitlines()
        assert len(out) == 1 and out[0].startswith('bench_gpu: skipped, no CUDA device here'), out
    # the same code path on the CPU (what runs on the GPU, at small sizes): both configs, both precisions
    assert bg.main(['--device', 'cpu', '--quick']) == 0
    out = capsys.readouterr().out
    assert 'paper' in out and 'vla' in out and 'update fp32' in out and 'mixed' in out, out
