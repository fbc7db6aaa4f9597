"""Where the models run: one rule for the agent, the image encoder and the acting policy (no ROS).

A device setting is 'auto' | 'cpu' | 'cuda' | 'cuda:N'. 'auto' takes the first CUDA device when torch sees
one, else the CPU. Asking for a CUDA device this machine does not have is an error at construction, in one
line that names the setting and what is available (never a silent fallback to the CPU).

Weights never depend on the device: modules are initialised on the CPU (same seeds, same numbers everywhere)
and moved; checkpoints and shipped weights are saved from CPU copies, so a GPU learner's files load on a
CPU-only robot PC and the other way round.
"""
from __future__ import annotations

import re

import torch

from poco_policy.bf16 import cpu_supports_bf16

DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N'"
_PATTERN = re.compile(r'^(auto|cpu|cuda(:\d+)?)$')


def check_device_spec(spec: object, setting: str = 'device') -> str:
    """The spec as a normalised string if it is syntactically valid (no CUDA query), else ValueError."""
    s = str(spec).strip().lower() if isinstance(spec, (str, torch.device)) else None
    if s is None or not _PATTERN.match(s):
        raise ValueError(f'{setting}={spec!r} is not a device; use {DEVICE_CHOICES}')
    return s


def cuda_device_count() -> int:
    """CUDA devices torch can use here (0 on CPU-only builds and machines without a GPU)."""
    try:
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:       # a broken driver install counts as no CUDA
        return 0


def available_devices() -> list[str]:
    """What this machine offers, e.g. ['cpu'] or ['cpu', 'cuda:0', 'cuda:1']."""
    return ['cpu'] + [f'cuda:{i}' for i in range(cuda_device_count())]


def resolve_device(spec: object = 'auto', setting: str = 'device') -> torch.device:
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' (or a torch.device) -> torch.device; ValueError in one line when the
    spec is malformed or names a CUDA device that is not available. `setting` names the option in the message,
    e.g. 'AgentConfig.device'."""
    s = check_device_spec(spec, setting)
    if s == 'cpu':
        return torch.device('cpu')
    n = cuda_device_count()
    if s == 'auto':
        return torch.device('cuda', 0) if n else torch.device('cpu')
    index = int(s.split(':', 1)[1]) if ':' in s else 0
    if index >= n:
        why = (f'torch {torch.__version__} is a CPU-only build' if torch.version.cuda is None
               else 'no CUDA device is visible' if n == 0 else f'only {n} CUDA device(s)')
        raise ValueError(f'{setting}={s!r} but CUDA is not available here ({why}); available: '
                         f"{', '.join(repr(d) for d in ['auto'] + available_devices())}")
    return torch.device('cuda', index)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a module without parameters)."""
    for p in module.parameters():
        return p.device
    return torch.device('cpu')


def supports_bf16(device: torch.device) -> bool:
    """Native bf16 matmul on this device: AVX512-BF16/AMX on a CPU, compute capability >= 8.0 on CUDA.
    Where it is missing, bf16 is emulated and slower than fp32, so the bf16 paths stay off."""
    if device.type == 'cuda':
        try:
            return bool(torch.cuda.get_device_capability(device)[0] >= 8)
        except Exception:
            return False
    return cpu_supports_bf16() if device.type == 'cpu' else False
