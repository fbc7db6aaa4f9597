"""Per-image latency of the frozen ResNet-10 encoder: naive reference vs the configurations we use.

    python poco_policy/benchmarks/bench_encoder.py [--n 32] [--image-size 128] [--repeats 7] [--quick]

naive   : fp32, NCHW, one image per forward pass (a straightforward loop)
tick    : one control tick of the policy node: front + wrist in ONE forward pass (B=2), fp32 channels_last
batched : dataset / bag ingest: B=n per forward pass, fp32 channels_last
bf16    : batched + bfloat16 trunk (AMX); features differ from fp32 (~1e-2), so producer and consumer must agree

Runs are interleaved and the median is reported, because the machine is shared and noisy.
"""
from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch

from poco_policy.encoder import EncoderConfig, ImageEncoder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--n', type=int, default=32, help='images per batched call')
    ap.add_argument('--image-size', type=int, default=128)
    ap.add_argument('--repeats', type=int, default=7)
    ap.add_argument('--feature-dim', type=int, default=64)
    ap.add_argument('--quick', action='store_true',
                    help='smoke run: small sizes, one repetition (what `make bench` runs)')
    args = ap.parse_args()
    if args.quick:
        ap.set_defaults(n=4, repeats=1)
        args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the random-weights warning is expected here

    size = args.image_size
    images = np.random.default_rng(0).integers(0, 256, (args.n, size, size, 3), dtype=np.uint8)
    base = dict(image_size=size, feature_dim=args.feature_dim, batch_size=max(args.n, 2))
    encoders = {
        'naive': ImageEncoder(EncoderConfig(channels_last=False, **base)),
        'fp32_cl': ImageEncoder(EncoderConfig(channels_last=True, **base)),
        'bf16_cl': ImageEncoder(EncoderConfig(channels_last=True, bf16=True, **base)),
    }
    cases = {
        'naive fp32 per-image loop': ('naive', lambda e: [e.encode(im) for im in images], args.n),
        'tick: front+wrist B=2 fp32': ('fp32_cl', lambda e: e.encode(images[:2]), 2),
        'tick: front+wrist B=2 bf16': ('bf16_cl', lambda e: e.encode(images[:2]), 2),
        f'batched B={args.n} fp32 channels_last': ('fp32_cl', lambda e: e.encode(images), args.n),
        f'batched B={args.n} bf16 channels_last': ('bf16_cl', lambda e: e.encode(images), args.n),
    }
    for enc_name, fn, _ in cases.values():  # warm-up: oneDNN builds kernels per input shape on first use
        fn(encoders[enc_name])
        fn(encoders[enc_name])
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.repeats):
        for name, (enc_name, fn, count) in cases.items():
            t0 = time.perf_counter()
            fn(encoders[enc_name])
            times[name].append((time.perf_counter() - t0) / count * 1e3)
    naive = float(np.median(times['naive fp32 per-image loop']))
    print(f'ResNet-10 encoder, {size}x{size} images, feature_dim {args.feature_dim}, torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, median of {args.repeats}')
    print(f'{"case":42s} {"ms/image":>9s} {"speed-up vs naive":>18s}')
    for name in cases:
        med = float(np.median(times[name]))
        print(f'{name:42s} {med:9.2f} {naive / med:17.2f}x')
    f32 = encoders['fp32_cl'].encode(images)
    bf = encoders['bf16_cl'].encode(images)
    ref = np.concatenate([encoders['naive'].encode(im) for im in images])
    print(f'max |fp32 batched - naive| = {np.abs(f32 - ref).max():.2e}   '
          f'max |bf16 - fp32| = {np.abs(bf - f32).max():.2e}  (feature std {f32.std():.3f})')


if __name__ == '__main__':
    main()
