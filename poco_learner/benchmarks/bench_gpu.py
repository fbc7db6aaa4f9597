"""GPU benchmark (issue 14): one POCO update and one chunk's latency on a CUDA device, with the CPU beside them.

    python poco_learner/benchmarks/bench_gpu.py [--reps 10] [--cpu-reps 1] [--no-cpu] [--json out.json]
                                                [--quick] [--device cuda:0]

Configurations (the agent's own code, `Agent.update` / `Agent.act`, nothing re-implemented):
  paper: Table III sizes (batch 256, N 32, K 10, T 4, 7-D actions, 4 x 512 MLPs, 2 critics), obs 1031
         (two cameras x 512 ResNet-10 features + 7 proprio);
  vla:   Table V's action head (batch 64, N 16, T 10), obs 2055 (a 2048-D VLA embedding + 7 proprio: an
         assumed embedding size; the paper's VLA backbone is not part of this project).
Each is timed in fp32 and with the agent's mixed precision (bf16 autocast for the E-step and the candidate
loss; the same finiteness checks run on every update), after warm-up, with torch.cuda.synchronize() around
every timed call. The CPU figure is the same update in the same process (1 torch thread, forced fp32 unless
the CPU has native bf16), so the README can state GPU and CPU times measured on one machine.

Without a CUDA device it prints one line saying so and exits 0 (a CPU-only machine is not an error);
`--device cpu` runs the whole script on the CPU at small sizes (how CI checks that the code path works).
Target (issue 14): update at the paper's sizes <= 50 ms on one GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from poco_learner.agent import Agent, AgentConfig
from poco_policy.device import cuda_device_count, resolve_device

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_update  # noqa: E402  (same folder: one synthetic batch for both benchmarks)

CONFIGS = {
    'paper': dict(preset='table3_pick_cube', obs_dim=1031),
    'vla': dict(preset='table5_pick_pen', obs_dim=2055),
}
QUICK = dict(batch_size=16, num_candidates=4, actor_hidden_dims=(64, 64), critic_hidden_dims=(64, 64),
             flow_steps=3)


def _sync(dev: torch.device) -> None:
    if dev.type == 'cuda':
        torch.cuda.synchronize(dev)


def make_agent(name: str, device: str, mixed: bool, quick: bool) -> Agent:
    c = CONFIGS[name]
    over = dict(obs_dim=c['obs_dim'], action_dim=7, device=device, seed=0, bf16_sampling=mixed,
                bf16_candidate_loss=mixed, bf16_critic_estep=mixed, **(QUICK if quick else {}))
    return Agent(AgentConfig.from_preset(c['preset'], **over))


def make_batch(cfg: AgentConfig, rng: np.random.Generator) -> dict:
    """bench_update's synthetic batch, at this agent's sizes."""
    return bench_update.make_batch(rng, bench_update.Sizes(batch=cfg.batch_size, horizon=cfg.horizon,
                                                           action_dim=cfg.action_dim, obs_dim=cfg.obs_dim))


def time_update(agent: Agent, reps: int, warmup: int = 3) -> dict:
    rng = np.random.default_rng(0)
    batch = make_batch(agent.cfg, rng)
    for _ in range(warmup):
        agent.update(batch)
    _sync(agent.device)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        m = agent.update(batch)
        _sync(agent.device)
        ts.append((time.perf_counter() - t0) * 1e3)
    bad = [k for k, v in m.items() if isinstance(v, float) and not np.isfinite(v)]
    return {'update_ms_median': statistics.median(ts), 'update_ms_min': min(ts), 'reps': reps,
            'nonfinite_metrics': bad}


def time_act(agent: Agent, n: int) -> dict:
    obs = np.random.default_rng(1).standard_normal(agent.cfg.obs_dim).astype(np.float32)
    for _ in range(5):
        agent.act(obs)
    ts = []
    for _ in range(n):
        _sync(agent.device)
        t0 = time.perf_counter()
        agent.act(obs)          # returns numpy: includes the copy back to the host, as the policy node would
        ts.append((time.perf_counter() - t0) * 1e3)
    ts.sort()
    return {'chunk_ms_p50': ts[n // 2], 'chunk_ms_p99': ts[min(n - 1, int(0.99 * n))]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--device', default='cuda', help="'cuda', 'cuda:N' or 'cpu' (a CPU-only smoke run)")
    ap.add_argument('--reps', type=int, default=10)
    ap.add_argument('--cpu-reps', type=int, default=1, help='CPU updates at the same sizes (slow: ~1-10 s each)')
    ap.add_argument('--no-cpu', action='store_true', help='skip the CPU figures')
    ap.add_argument('--configs', nargs='+', default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument('--quick', action='store_true', help='small sizes, 2 reps (code-path check)')
    ap.add_argument('--json', default=None)
    a = ap.parse_args(argv)
    if a.device != 'cpu' and cuda_device_count() == 0:
        why = 'torch is a CPU-only build' if torch.version.cuda is None else 'no CUDA device is visible'
        print(f'bench_gpu: skipped, no CUDA device here ({why}; torch {torch.__version__})')
        return 0
    dev = resolve_device(a.device, '--device')
    reps = 2 if a.quick else a.reps
    torch.set_num_threads(1)
    name = torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'CPU'
    print(f'bench_gpu: {name} ({dev}), torch {torch.__version__}' + (' [quick sizes]' if a.quick else ''))
    results = {'device': name, 'torch': torch.__version__, 'quick': a.quick, 'configs': {}}
    for cname in a.configs:
        row = {}
        for mixed in (False, True):
            agent = make_agent(cname, str(dev), mixed, a.quick)
            tag = 'mixed' if mixed else 'fp32'
            row[tag] = dict(time_update(agent, reps, warmup=1 if a.quick else 3),
                            **time_act(agent, 5 if a.quick else 100))
            del agent
            if dev.type == 'cuda':
                torch.cuda.empty_cache()
        if not a.no_cpu and dev.type == 'cuda':
            cpu = make_agent(cname, 'cpu', False, a.quick)
            row['cpu_fp32'] = time_update(cpu, a.cpu_reps, warmup=1)
        c = AgentConfig.from_preset(CONFIGS[cname]['preset'], obs_dim=CONFIGS[cname]['obs_dim'],
                                    action_dim=7, device="cpu", **(QUICK if a.quick else {}))
        row['sizes'] = dict(batch=c.batch_size, N=c.num_candidates, K=c.flow_steps, T=c.horizon,
                            hidden=list(c.actor_hidden_dims), obs_dim=c.obs_dim)
        results['configs'][cname] = row
        f, m = row['fp32'], row['mixed']
        line = (f"  {cname:5s} {row['sizes']}: update fp32 {f['update_ms_median']:.1f} ms, mixed "
                f"{m['update_ms_median']:.1f} ms; chunk p50/p99 {m['chunk_ms_p50']:.2f}/{m['chunk_ms_p99']:.2f} ms")
        if 'cpu_fp32' in row:
            line += f"; CPU fp32 update {row['cpu_fp32']['update_ms_median']:.0f} ms (1 thread)"
        print(line)
        if cname == 'paper' and dev.type == 'cuda' and not a.quick:
            best = min(f['update_ms_median'], m['update_ms_median'])
            print(f"  paper-size update target <= 50 ms: {'met' if best <= 50 else 'NOT met'} ({best:.1f} ms)")
        bad = f['nonfinite_metrics'] + m['nonfinite_metrics']
        if bad:
            print(f'  non-finite metrics: {bad}')
            return 1
    if a.json:
        with open(a.json, 'w') as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
