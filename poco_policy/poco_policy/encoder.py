"""Frozen ResNet-10 image encoder: uint8 RGB images -> low-dimensional float32 features per image.

The policy node (every control tick) and the learner / dataset ingest (whole episodes at once) must produce the
same features for the same frame, because the replay buffer stores features, not pixels. So everything here is
deterministic: the trunk is either a pretrained checkpoint or seeded random weights, the feature head is a fixed
seeded random projection (never trained), and `ImageEncoder.fingerprint` identifies the exact encoder so two
processes can check they agree.

Architecture (torchvision ResNet layout with ONE BasicBlock per stage = ResNet-10)::

    conv1 7x7/2 (3->64) - bn1 - relu - maxpool 3x3/2
    layer1: BasicBlock(64->64,   /1)
    layer2: BasicBlock(64->128,  /2)   with downsample (1x1 conv/2 + bn)
    layer3: BasicBlock(128->256, /2)   with downsample
    layer4: BasicBlock(256->512, /2)   with downsample

At 128x128 input, layer3 is 256x8x8 and layer4 512x4x4.

Feature head (frozen, seeded by `EncoderConfig.seed`), `head`:
  - 'hybrid' (default): F//4 spatial-softmax keypoints (x, y in [-1, 1]) from a random 1x1 conv over layer3
    (where things are) + a random projection of globally average-pooled layer4 to the remaining dims (what is
    there). Both are divided by the image's feature RMS first, so feature scale does not depend on the checkpoint.
  - 'keypoints': F//2 keypoints only (F must be even).
  - 'pooled': random projection of pooled layer4 only.

Checkpoint (`EncoderConfig.checkpoint_path`, a LOCAL safetensors file; nothing is downloaded). Keys follow
torchvision's ResNet naming, float tensors of any float dtype (cast to float32)::

    conv1.weight                      [64, 3, 7, 7]
    bn1.{weight,bias,running_mean,running_var}            [64]
    layer{i}.0.conv1.weight           [C_i, C_{i-1}, 3, 3]       (C = 64, 64, 128, 256, 512)
    layer{i}.0.bn1.{weight,bias,running_mean,running_var}  [C_i]
    layer{i}.0.conv2.weight           [C_i, C_i, 3, 3]
    layer{i}.0.bn2.{weight,bias,running_mean,running_var}  [C_i]
    layer{i}.0.downsample.0.weight    [C_i, C_{i-1}, 1, 1]      (i = 2, 3, 4 only)
    layer{i}.0.downsample.1.{weight,bias,running_mean,running_var}  [C_i]

Ignored if present: `fc.weight`, `fc.bias` (a classifier head) and any `*.num_batches_tracked`. An optional
`checkpoint_prefix` (e.g. 'backbone.' or 'model.') is stripped from every key first; keys without it are
unexpected. Any other missing or unexpected key, or a wrong shape, raises ValueError listing them all.

Without a checkpoint the trunk gets seeded random He-uniform weights (BN = identity) and a WARNING is logged:
features are then still deterministic and usable for tests, but not pretrained.

Random numbers come from numpy's PCG64 bit stream (`Generator.random`, whose output is defined by the bit
stream), one stream per tensor derived from (seed, crc32(tensor name)), so the weights do not depend on torch's
RNG, on creation order, or on the platform.

Device (`EncoderConfig.device`: 'auto' | 'cpu' | 'cuda' | 'cuda:N', poco_policy.device): the weights are built on
the CPU and moved; images go to the device as uint8 and the features come back as CPU numpy. On CUDA the convolutions
run in IEEE fp32 (no TF32, deterministic cuDNN), so a GPU learner's features match a CPU robot's to float rounding
(TF32 would change them ~1e-3); the device is not part of `fingerprint`.

Threads: `num_threads > 0` calls `torch.set_num_threads`, which is process-wide (it also affects other torch code
in the process); 0 leaves torch's setting alone. Features are bitwise identical across processes for the same
config, machine and batch size; across different batch sizes oneDNN may pick different kernels (differences
~1e-6 relative), see `test_encoder.py`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from poco_policy.device import check_device_spec, resolve_device

_log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride) of layer1..layer4
_HEADS = ('hybrid', 'keypoints', 'pooled')
_KP_SHARPNESS = 3.0  # softmax inverse temperature on RMS-normalised logits: peaked, but still sub-cell smooth


@dataclass
class EncoderConfig:
    checkpoint_path: str = ''   # local safetensors file ('' = seeded random weights, with a logged warning)
    checkpoint_prefix: str = ''  # stripped from checkpoint keys (e.g. 'backbone.')
    feature_dim: int = 64        # features per image
    head: str = 'hybrid'         # 'hybrid' | 'keypoints' | 'pooled' (see module docstring)
    image_size: int = 128        # images of another size are resized (bilinear, antialiased) to this
    seed: int = 0                # random trunk (no checkpoint) and the frozen head projection
    bf16: bool = False           # run the trunk in bfloat16 (AMX: much faster; features differ from fp32 ~1e-2)
    channels_last: bool = True   # NHWC memory format (faster oneDNN convolutions on CPU)
    num_threads: int = 0         # >0: torch.set_num_threads (process-wide!); 0 = leave as is
    batch_size: int = 64         # images per forward pass when encoding many (bounds memory)
    device: str = 'auto'         # 'auto' (CUDA if available, else CPU) | 'cpu' | 'cuda' | 'cuda:N'

    def __post_init__(self) -> None:
        self.device = check_device_spec(self.device, 'EncoderConfig.device')  # availability: ImageEncoder
        if self.head not in _HEADS:
            raise ValueError(f'EncoderConfig.head must be one of {_HEADS}, got {self.head!r}')
        if self.feature_dim < 1:
            raise ValueError(f'EncoderConfig.feature_dim must be >= 1, got {self.feature_dim}')
        if self.head == 'keypoints' and self.feature_dim % 2:
            raise ValueError(f"EncoderConfig.feature_dim must be even for head='keypoints', got {self.feature_dim}")
        if self.head == 'hybrid' and self.feature_dim < 4:
            raise ValueError(f"EncoderConfig.feature_dim must be >= 4 for head='hybrid', got {self.feature_dim}")
        if self.image_size < 32:
            raise ValueError(f'EncoderConfig.image_size must be >= 32, got {self.image_size}')
        if self.batch_size < 1 or self.num_threads < 0:
            raise ValueError('EncoderConfig.batch_size must be >= 1 and num_threads >= 0')


# --------------------------------------------------------------------------------------------------- trunk
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet10(nn.Module):
    """ResNet-10 trunk; returns (layer3, layer4) feature maps."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (c, s) in enumerate(_STAGES, start=1):
            setattr(self, f'layer{i}', nn.Sequential(BasicBlock(cin, c, s)))
            cin = c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        l3 = self.layer3(x)
        return l3, self.layer4(l3)


def expected_checkpoint_keys() -> dict[str, tuple[int, ...]]:
    """The checkpoint layout this module loads: key -> shape (see the module docstring)."""
    return {k: tuple(v.shape) for k, v in ResNet10().state_dict().items() if not k.endswith('num_batches_tracked')}


def _uniform(seed: int, name: str, shape: Iterable[int], bound: float) -> np.ndarray:
    """Seeded U(-bound, bound), independent per tensor name; stable across numpy versions/platforms."""
    rng = np.random.Generator(np.random.PCG64([seed & 0xFFFFFFFF, zlib.crc32(name.encode())]))
    return ((rng.random(tuple(shape)) * 2.0 - 1.0) * bound).astype(np.float32)


def _random_trunk_state(seed: int) -> dict[str, torch.Tensor]:
    state = {}
    for name, shape in expected_checkpoint_keys().items():
        if name.endswith('.weight') and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            # He-uniform: keeps activation scale through ReLUs so deep features are not ~0 or huge.
            state[name] = torch.from_numpy(_uniform(seed, name, shape, np.sqrt(6.0 / fan_in)))
        elif name.endswith(('.weight', 'running_var')):
            state[name] = torch.ones(shape)
        else:  # bias, running_mean
            state[name] = torch.zeros(shape)
    return state


def _load_checkpoint(cfg: EncoderConfig) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(cfg.checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'ImageEncoder: checkpoint_path {str(path)!r} does not exist (local safetensors file '
                                'expected; nothing is downloaded)')
    try:
        raw = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f'ImageEncoder: cannot read {str(path)!r} as safetensors: {e}') from e
    expected = expected_checkpoint_keys()
    state, unexpected = {}, []
    for key, tensor in raw.items():
        if cfg.checkpoint_prefix:
            if not key.startswith(cfg.checkpoint_prefix):
                unexpected.append(key)
                continue
            key = key[len(cfg.checkpoint_prefix):]
        if key in ('fc.weight', 'fc.bias') or key.endswith('num_batches_tracked'):
            continue
        if key not in expected:
            unexpected.append(cfg.checkpoint_prefix + key)
            continue
        state[key] = tensor
    missing = sorted(cfg.checkpoint_prefix + k for k in expected if k not in state)
    bad_shape = sorted(f'{k}: {tuple(v.shape)} != {expected[k]}' for k, v in state.items()
                       if tuple(v.shape) != expected[k])
    bad_dtype = sorted(f'{k}: {v.dtype}' for k, v in state.items() if not v.is_floating_point())
    if missing or unexpected or bad_shape or bad_dtype:
        def fmt(xs: list[str]) -> str:
            return ', '.join(xs[:25]) + (f' ... (+{len(xs) - 25} more)' if len(xs) > 25 else '') if xs else 'none'
        raise ValueError(
            f'ImageEncoder: checkpoint {str(path)!r} does not match the ResNet-10 layout '
            f'(torchvision names, one BasicBlock per stage; see poco_policy.encoder docstring'
            f'{", prefix " + repr(cfg.checkpoint_prefix) if cfg.checkpoint_prefix else ""}).\n'
            f'  missing ({len(missing)}): {fmt(missing)}\n  unexpected ({len(unexpected)}): {fmt(sorted(unexpected))}\n'
            f'  wrong shape ({len(bad_shape)}): {fmt(bad_shape)}\n  non-float ({len(bad_dtype)}): {fmt(bad_dtype)}')
    return {k: v.to(torch.float32) for k, v in state.items()}


# --------------------------------------------------------------------------------------------------- encoder
class ImageEncoder:
    """Frozen ResNet-10 + fixed feature head. `encode(uint8 [B,H,W,3] or [H,W,3]) -> float32 [B, feature_dim]`."""

    def __init__(self, cfg: EncoderConfig | None = None):
        self.cfg = cfg = cfg or EncoderConfig()
        self.device = resolve_device(cfg.device, 'EncoderConfig.device')  # one-line ValueError if unavailable
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        if cfg.checkpoint_path:
            state = _load_checkpoint(cfg)
            self.pretrained = True
        else:
            state = _random_trunk_state(cfg.seed)
            self.pretrained = False
            _log.warning('ImageEncoder: no checkpoint_path configured, using deterministic RANDOM ResNet-10 weights '
                         '(seed=%d); features are NOT pretrained. Set EncoderConfig.checkpoint_path to a local '
                         'safetensors ResNet-10 checkpoint for real use.', cfg.seed)
        self.trunk = ResNet10()
        self.trunk.load_state_dict(state, strict=False)  # strictness already checked (num_batches_tracked aside)
        self.trunk.eval().requires_grad_(False)
        self._dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        self._mem = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.trunk.to(device=self.device, dtype=self._dtype, memory_format=self._mem)

        # Frozen head: unit-variance uniform random projections (Johnson-Lindenstrauss style), scaled by 1/sqrt(fan_in).
        if cfg.head == 'pooled':
            self.n_keypoints = 0
        elif cfg.head == 'keypoints':
            self.n_keypoints = cfg.feature_dim // 2
        else:
            self.n_keypoints = cfg.feature_dim // 4
        self.n_pooled = cfg.feature_dim - 2 * self.n_keypoints
        c3, c4 = _STAGES[2][0], _STAGES[3][0]
        s3 = np.sqrt(3.0 / c3)
        s4 = np.sqrt(3.0 / c4)
        dev = self.device
        self._kp_proj = torch.from_numpy(_uniform(cfg.seed, 'head.keypoints', (self.n_keypoints, c3), s3)).to(dev)
        self._pool_proj = torch.from_numpy(_uniform(cfg.seed, 'head.pooled', (c4, self.n_pooled), s4)).to(dev)
        self._mean = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0).to(dev)
        self._std = (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0).to(dev)
        self._fingerprint: str | None = None

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    @property
    def fingerprint(self) -> str:
        """Hash of everything that determines the features (weights, head, config); equal => same encoder."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            relevant = {k: v for k, v in dataclasses.asdict(self.cfg).items()
                        if k in ('feature_dim', 'head', 'image_size', 'seed', 'bf16')}
            h.update(repr(sorted(relevant.items())).encode())
            for k, v in sorted(self.trunk.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
            h.update(self._kp_proj.cpu().numpy().tobytes())
            h.update(self._pool_proj.cpu().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def _check(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f'ImageEncoder.encode: expected uint8 RGB images, got dtype {images.dtype}')
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] < 8 or images.shape[2] < 8:
            raise ValueError(f'ImageEncoder.encode: expected [B,H,W,3] or [H,W,3] uint8 (H, W >= 8), got shape '
                             f'{images.shape}')
        return images

    def _forward(self, images: np.ndarray) -> torch.Tensor:
        """Features on the CPU, [B, feature_dim] float32."""
        if self.device.type != 'cuda':
            return self._forward_on_device(images)
        # IEEE fp32 convolutions (no TF32) so GPU features match CPU ones to rounding
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True, allow_tf32=False):
            return self._forward_on_device(images).cpu()

    @torch.inference_mode()
    def _forward_on_device(self, images: np.ndarray) -> torch.Tensor:
        # uint8 travels to the device (4x less than float32), converted there
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        size = self.cfg.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode='bilinear', antialias=True, align_corners=False)
        x = ((x - self._mean) / self._std).to(dtype=self._dtype, memory_format=self._mem)
        l3, l4 = self.trunk(x)
        l3, l4 = l3.float(), l4.float()
        feats = []
        if self.n_keypoints:
            feats.append(self._keypoints(l3))
        if self.n_pooled:
            pooled = l4.mean(dim=(2, 3))
            pooled = pooled / (pooled.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-6)
            feats.append(pooled @ self._pool_proj)
        return torch.cat(feats, dim=1)

    def _keypoints(self, fmap: torch.Tensor) -> torch.Tensor:
        b, c, h, w = fmap.shape
        rms = fmap.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-6
        logits = torch.einsum('kc,bchw->bkhw', self._kp_proj, fmap / rms).reshape(b, self.n_keypoints, h * w)
        attn = torch.softmax(logits * _KP_SHARPNESS, dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=fmap.device).view(h, 1).expand(h, w).reshape(-1)
        xs = torch.linspace(-1.0, 1.0, w, device=fmap.device).view(1, w).expand(h, w).reshape(-1)
        # interleaved (x0, y0, x1, y1, ...)
        return torch.stack([attn @ xs, attn @ ys], dim=-1).reshape(b, 2 * self.n_keypoints)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 [B,H,W,3] (or one [H,W,3], treated as B=1) -> float32 [B, feature_dim]."""
        images = self._check(images)
        n, bs = images.shape[0], self.cfg.batch_size
        if n <= bs:
            return self._forward(images).numpy().astype(np.float32, copy=False)
        out = np.empty((n, self.cfg.feature_dim), np.float32)
        for i in range(0, n, bs):
            out[i:i + bs] = self._forward(images[i:i + bs]).numpy()
        return out

    __call__ = encode
