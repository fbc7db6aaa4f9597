"""Encoder throughput and encoder pre-training wall time on this CPU.

    python poco_learner/benchmarks/bench_encoder.py [--demos DIR] [--episodes 10] [--steps 300] [--quick]

1. Frozen encoder images/s (fp32, channels_last, what the policy node and the learner run), batch 1 and batch 32,
   for the BatchNorm trunk (random encoder) and the GroupNorm trunk (pre-trained / SERL), median of --repeats.
2. `poco_pretrain_encoder` with its defaults on the sim demo set: --episodes pixel demos of pick_cube (the main
   job's 10, collected here unless --demos names a pixels dataset), wall time of collection and of training,
   training images/s.

`--quick`: 32 px, 2 demos of <= 12 steps, 3 training steps, 1 repeat (a smoke run; `make bench` runs it). The CPU
name, its bf16 features and torch's thread count are printed first: the figures are properties of that CPU and of
how busy it was (load average printed too; on a shared machine the per-CPU-second figures, this process's CPU
time, say more than wall time: on two idle cores wall throughput is at most twice them).
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def cpu_line() -> str:
    name, flags = 'unknown CPU', set()
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name') and name == 'unknown CPU':
                name = line.split(':', 1)[1].strip()
            elif line.startswith('flags') and not flags:
                flags = set(line.split(':', 1)[1].split())
    except OSError:
        pass
    feats = [f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in flags]
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    # the kernels torch dispatches to (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA can limit them below the flags)
    caps = [f'torch kernels {torch.backends.cpu.get_cpu_capability()}'] + \
        [f'{k}={os.environ[k]}' for k in ('ONEDNN_MAX_CPU_ISA', 'MKL_ENABLE_INSTRUCTIONS') if os.environ.get(k)]
    return (f'CPU: {name} ({", ".join(feats) or "no avx2/avx512/amx"}; {", ".join(caps)}); '
            f'{os.cpu_count()} logical CPUs, torch '
            f'threads {torch.get_num_threads()}; load average {load:.1f}; torch {torch.__version__}')


def bench_encode(size: int, repeats: int) -> None:
    from poco_policy.encoder import EncoderConfig, ImageEncoder
    images = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
    for norm in ('batch', 'group'):
        enc = ImageEncoder(EncoderConfig(image_size=size, norm=norm, batch_size=32, device='cpu'))
        for b in (1, 32):
            x = images[:b]
            enc.encode(x)  # warm-up: oneDNN builds kernels per shape on first use
            times, cpus = [], []
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                enc.encode(x)
                times.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
            med, cpu = statistics.median(times), statistics.median(cpus)
            print(f'encode  {norm:5s}-norm  {size}px  batch {b:2d}: {b / med:7.1f} images/s wall  '
                  f'({med * 1e3:7.1f} ms per call; {b / cpu:7.1f} images per CPU-second; median of {repeats})',
                  flush=True)


def bench_pretrain(args) -> None:
    from poco_learner.pretrain_encoder import PretrainEncoderConfig, pretrain
    with tempfile.TemporaryDirectory() as tmp:
        demos = args.demos
        if not demos:
            from poco_sim.collect import collect
            demos = str(Path(tmp) / 'demos')
            t0 = time.perf_counter()
            collect('pick_cube', 'pixels', args.episodes, demos, image_size=args.image_size,
                    max_steps=args.max_steps, seed=4, log=None)
            print(f'collect {args.episodes} pick_cube pixel demos at {args.image_size}px: '
                  f'{time.perf_counter() - t0:.1f} s', flush=True)
        cfg = PretrainEncoderConfig(data=[demos], out=str(Path(tmp) / 'enc.safetensors'),
                                    image_size=args.image_size, steps=args.steps,
                                    log_every=max(1, args.steps // 6))
        t0 = time.perf_counter()
        s = pretrain(cfg, log=lambda line: print('  ' + line, flush=True))
        total = time.perf_counter() - t0
        print(f'pretrain {s["train_frames"]} train frames, {cfg.steps} steps x {cfg.batch_size} frames x 2 cameras: '
              f'{s["wall_s"]:.0f} s training wall ({s["images_per_s"]:.1f} images/s), {s["cpu_s"]:.0f} CPU-s '
              f'({cfg.steps * cfg.batch_size * 2 / max(s["cpu_s"], 1e-9):.1f} images per CPU-second), {total:.0f} s '
              f'with loading and writing; fixed-subset BC loss {s["fit_bc_before"]:.4f} -> {s["fit_bc_after"]:.4f}, '
              f'val BC {s["final_val_bc"]:.4f}', flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--demos', default='', help='a pixels episode dataset to train on (default: collect one)')
    ap.add_argument('--episodes', type=int, default=10)
    ap.add_argument('--max-steps', type=int, default=None, help='demo step limit (default: the task default)')
    ap.add_argument('--image-size', type=int, default=128)
    ap.add_argument('--steps', type=int, default=300, help='pre-training steps (the CLI default)')
    ap.add_argument('--repeats', type=int, default=7)
    ap.add_argument('--skip-pretrain', action='store_true')
    ap.add_argument('--quick', action='store_true', help='smoke run: small sizes, one repetition')
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(episodes=2, max_steps=12, image_size=32, steps=3, repeats=1)
        args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the random-weights warning is expected here
    print(cpu_line(), flush=True)
    bench_encode(args.image_size, args.repeats)
    if not args.skip_pretrain:
        bench_pretrain(args)


if __name__ == '__main__':
    main()
