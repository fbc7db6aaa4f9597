"""bf16 inference helpers shared by the actor (flow_policy) and the critic (chunk_critic); no ROS.

CPU bf16 pays off only where the CPU has native bf16 matmul; the fused linear+SiLU is a torch-internal oneDNN
op, used only for CPU tensors and only when it exists and matches the eager result on a probe. On CUDA the same
code runs the plain bf16 ops (tensor cores); `bf16_autocast` takes the tensors' device type.
"""
from __future__ import annotations

import contextlib
from functools import lru_cache

import torch
from torch.nn import functional as F


@lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX); otherwise autocast-bf16 is slower."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
    except OSError:
        return False
    return ('avx512_bf16' in flags) or ('amx_bf16' in flags)


def _linear_silu_eager(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.silu(F.linear(x, w, b))


def _linear_silu_onednn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # oneDNN matmul with the SiLU ("swish") fused as a post-op: saves a full pass over the activations.
    return torch.ops.mkldnn._linear_pointwise(x, w, b, 'swish', [], '')


@lru_cache(maxsize=1)
def _fused_linear_silu_ok() -> bool:
    """The fused op is a torch-internal one: use it only if it exists here and matches eager on a probe."""
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(64, 32, generator=g).to(torch.bfloat16)
        w = (torch.randn(16, 32, generator=g) / 6).to(torch.bfloat16)
        b = torch.randn(16, generator=g).to(torch.bfloat16)
        ref = _linear_silu_eager(x.float(), w.float(), b.float())
        out = _linear_silu_onednn(x, w, b).float()
        return out.shape == ref.shape and bool(torch.allclose(out, ref, atol=0.05, rtol=0.02))
    except Exception:
        return False


def linear_silu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """silu(x @ w.T + b) for 2-D bf16 inference inputs; fused on oneDNN when it verifiably works."""
    if (x.dtype == torch.bfloat16 and x.dim() == 2 and x.device.type == 'cpu' and not torch.is_grad_enabled()
            and _fused_linear_silu_ok()):
        return _linear_silu_onednn(x, w, b)
    return _linear_silu_eager(x, w, b)


def bf16_autocast(enabled: bool, device_type: str = 'cpu'):
    """bf16 autocast context for 'cpu' or 'cuda' tensors (a no-op context when disabled)."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.bfloat16)
