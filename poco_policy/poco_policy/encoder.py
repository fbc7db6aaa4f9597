"""Frozen ResNet-10 image encoder: uint8 RGB images -> low-dimensional float32 features per image.

The policy node (every control tick) and the learner / dataset ingest (whole episodes at once) must produce the
same features for the same frame, because the replay buffer stores features, not pixels. So everything here is
deterministic: the trunk is either a checkpoint or seeded random weights, the feature head is either the
checkpoint's (trained by `poco_pretrain_encoder`) or a fixed seeded random projection, nothing is ever trained at
run time, and `ImageEncoder.fingerprint` identifies the exact encoder so two processes can check they agree.

Architecture (torchvision ResNet layout with ONE BasicBlock per stage = ResNet-10)::

    conv1 7x7/2 (3->64) - bn1 - relu - maxpool 3x3/2
    layer1: BasicBlock(64->64,   /1)
    layer2: BasicBlock(64->128,  /2)   with downsample (1x1 conv/2 + norm)
    layer3: BasicBlock(128->256, /2)   with downsample
    layer4: BasicBlock(256->512, /2)   with downsample

At 128x128 input, layer3 is 256x8x8 and layer4 512x4x4.

Normalisation (`EncoderConfig.norm`): 'batch' = BatchNorm (torchvision's ResNets, inference statistics) or
'group' = GroupNorm with 4 groups, eps 1e-5 (the ResNet-10 SERL / HIL-SERL pre-trained on ImageNet; the module
names stay torchvision's: `bn1` etc. hold a GroupNorm then). 'auto' (default) = what the checkpoint's metadata
says, BatchNorm for a checkpoint without metadata and for the random trunk.

Padding: 'torch' (symmetric, torchvision) or 'same' (TensorFlow/Flax 'SAME': stride-2 3x3 convolutions and the
max-pool pad bottom/right only on even sizes). SERL's weights were trained with 'same'; the converter records it
in the checkpoint so converted weights compute what they computed in Flax. Not a config field: it is a property of
the weights.

Feature head (`head`), on top of the trunk; its weights are the checkpoint's when it has them, else seeded random:
  - 'hybrid' (default): F//4 spatial-softmax keypoints (x, y in [-1, 1]) from a 1x1 projection of layer3
    (where things are) + a projection of globally average-pooled layer4 to the remaining dims (what is there).
    Both are divided by the image's feature RMS first, so feature scale does not depend on the checkpoint.
  - 'keypoints': F//2 keypoints only (F must be even).
  - 'pooled': projection of pooled layer4 only.

Checkpoint (`EncoderConfig.checkpoint_path`, a LOCAL safetensors file; nothing is downloaded, never a pickle).
Keys follow torchvision's ResNet naming, float tensors of any float dtype (cast to float32)::

    conv1.weight                      [64, 3, 7, 7]
    bn1.{weight,bias,running_mean,running_var}            [64]    (group: weight, bias only)
    layer{i}.0.conv1.weight           [C_i, C_{i-1}, 3, 3]       (C = 64, 64, 128, 256, 512)
    layer{i}.0.bn1.{weight,bias,running_mean,running_var}  [C_i]
    layer{i}.0.conv2.weight           [C_i, C_i, 3, 3]
    layer{i}.0.bn2.{weight,bias,running_mean,running_var}  [C_i]
    layer{i}.0.downsample.0.weight    [C_i, C_{i-1}, 1, 1]      (i = 2, 3, 4 only)
    layer{i}.0.downsample.1.{weight,bias,running_mean,running_var}  [C_i]
    head.keypoints                    [K, 256]   } only with metadata naming a head: the trained head, so the
    head.pooled                       [512, P]   } feature dimension (2K + P) is the checkpoint's

safetensors metadata key 'poco_encoder' (JSON, written by `save_checkpoint`, i.e. by `poco_convert_encoder` and
`poco_pretrain_encoder`): format_version, norm, padding, head + feature_dim (when head tensors are present),
weights_sha256 (digest of the tensors, checked on load: a corrupted or edited file is refused), fingerprint (the
`ImageEncoder.fingerprint` at the recorded image_size, fp32), source. A file without it is a plain torchvision
BatchNorm checkpoint (as before). A checkpoint head fixes `head` and `feature_dim`: a config asking for others
is refused (the learner sizes its networks from the config, so a silent change would break them).

Ignored if present: `fc.weight`, `fc.bias` (a classifier head) and any `*.num_batches_tracked`. An optional
`checkpoint_prefix` (e.g. 'backbone.' or 'model.') is stripped from every key first; keys without it are
unexpected. Any other missing or unexpected key, or a wrong shape, raises ValueError listing them all in one line.
To bring other layouts (SERL's Flax pickle, torchvision .pth) into this one: `poco_convert_encoder`.

Without a checkpoint the trunk gets seeded random He-uniform weights (norm = identity) and a WARNING is logged:
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
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

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
_NORMS = ('auto', 'batch', 'group')
_PADDINGS = ('torch', 'same')
GROUPS = 4          # GroupNorm groups of the SERL ResNet-10
NORM_EPS = 1e-5     # BatchNorm (torchvision) and GroupNorm (SERL) epsilon alike
META_KEY = 'poco_encoder'
FORMAT_VERSION = 1
_KP_SHARPNESS = 3.0  # softmax inverse temperature on RMS-normalised logits: peaked, but still sub-cell smooth


@dataclass
class EncoderConfig:
    checkpoint_path: str = ''   # local safetensors file ('' = seeded random weights, with a logged warning)
    checkpoint_prefix: str = ''  # stripped from checkpoint keys (e.g. 'backbone.')
    feature_dim: int = 64        # features per image (must equal a checkpoint head's)
    head: str = 'hybrid'         # 'hybrid' | 'keypoints' | 'pooled' (see module docstring)
    image_size: int = 128        # images of another size are resized (bilinear, antialiased) to this
    seed: int = 0                # random trunk (no checkpoint) and the head projection when the checkpoint has none
    bf16: bool = False           # run the trunk in bfloat16 (AMX: much faster; features differ from fp32 ~1e-2)
    channels_last: bool = True   # NHWC memory format (faster oneDNN convolutions on CPU)
    num_threads: int = 0         # >0: torch.set_num_threads (process-wide!); 0 = leave as is
    batch_size: int = 64         # images per forward pass when encoding many (bounds memory)
    device: str = 'auto'         # 'auto' (CUDA if available, else CPU) | 'cpu' | 'cuda' | 'cuda:N'
    norm: str = 'auto'           # 'auto' (the checkpoint's; batch without one) | 'batch' | 'group' (4 groups)

    def __post_init__(self) -> None:
        self.device = check_device_spec(self.device, 'EncoderConfig.device')  # availability: ImageEncoder
        if self.head not in _HEADS:
            raise ValueError(f'EncoderConfig.head must be one of {_HEADS}, got {self.head!r}')
        if self.norm not in _NORMS:
            raise ValueError(f'EncoderConfig.norm must be one of {_NORMS}, got {self.norm!r}')
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
def _norm_layer(norm: str, channels: int) -> nn.Module:
    if norm == 'group':
        return nn.GroupNorm(GROUPS, channels, eps=NORM_EPS)
    return nn.BatchNorm2d(channels, eps=NORM_EPS)


def _same_pad(x: torch.Tensor, k: int, s: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow/Flax 'SAME' padding: output ceil(n/s); the odd pixel of padding goes bottom/right."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):  # F.pad order: last dim first
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads, value=value) if any(pads) else x


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str = 'batch', padding: str = 'torch'):
        super().__init__()
        # 'same' differs from symmetric padding only for the strided 3x3 conv (stride-1 3x3 pads 1/1 either way)
        self._same = padding == 'same' and stride > 1
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 0 if self._same else 1, bias=False)
        self.bn1 = _norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _norm_layer(norm, cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm_layer(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(_same_pad(x, 3, 2) if self._same else x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet10(nn.Module):
    """ResNet-10 trunk; returns (layer3, layer4) feature maps."""

    def __init__(self, norm: str = 'batch', padding: str = 'torch'):
        super().__init__()
        if norm not in ('batch', 'group') or padding not in _PADDINGS:
            raise ValueError(f'ResNet10: norm must be batch|group and padding torch|same, got {norm!r}, {padding!r}')
        self.norm, self.padding = norm, padding
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)  # Flax's conv_init pads 3/3 explicitly: same in both
        self.bn1 = _norm_layer(norm, 64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (c, s) in enumerate(_STAGES, start=1):
            setattr(self, f'layer{i}', nn.Sequential(BasicBlock(cin, c, s, norm, padding)))
            cin = c

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(_same_pad(x, 3, 2, float('-inf')), 3, 2) if self.padding == 'same' else self.maxpool(x)
        x = self.layer2(self.layer1(x))
        l3 = self.layer3(x)
        return l3, self.layer4(l3)


def expected_checkpoint_keys(norm: str = 'batch') -> dict[str, tuple[int, ...]]:
    """The trunk layout this module loads for `norm` ('batch' | 'group'): key -> shape (see the module docstring)."""
    return {k: tuple(v.shape) for k, v in ResNet10(norm).state_dict().items()
            if not k.endswith('num_batches_tracked')}


def head_sizes(head: str, feature_dim: int) -> tuple[int, int]:
    """(keypoints K, pooled dims P) of a head; feature_dim = 2K + P."""
    k = 0 if head == 'pooled' else feature_dim // 2 if head == 'keypoints' else feature_dim // 4
    return k, feature_dim - 2 * k


def head_keys(head: str, feature_dim: int) -> dict[str, tuple[int, ...]]:
    """Checkpoint keys -> shapes of a head (present only in checkpoints that carry one)."""
    k, p = head_sizes(head, feature_dim)
    return {'head.keypoints': (k, _STAGES[2][0]), 'head.pooled': (_STAGES[3][0], p)}


class FeatureHead(nn.Module):
    """Trunk maps -> features: spatial-softmax keypoints of a layer3 projection and/or a pooled layer4 projection."""

    def __init__(self, head: str = 'hybrid', feature_dim: int = 64):
        super().__init__()
        self.head, self.feature_dim = head, feature_dim
        self.n_keypoints, self.n_pooled = head_sizes(head, feature_dim)
        self.keypoints = nn.Parameter(torch.zeros(self.n_keypoints, _STAGES[2][0]))
        self.pooled = nn.Parameter(torch.zeros(_STAGES[3][0], self.n_pooled))

    def forward(self, l3: torch.Tensor, l4: torch.Tensor) -> torch.Tensor:
        feats = []
        if self.n_keypoints:
            feats.append(self._keypoints(l3))
        if self.n_pooled:
            pooled = l4.mean(dim=(2, 3))
            pooled = pooled / (pooled.pow(2).mean(dim=1, keepdim=True).sqrt() + 1e-6)
            feats.append(pooled @ self.pooled)
        return torch.cat(feats, dim=1)

    def _keypoints(self, fmap: torch.Tensor) -> torch.Tensor:
        b, c, h, w = fmap.shape
        rms = fmap.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-6
        logits = torch.einsum('kc,bchw->bkhw', self.keypoints, fmap / rms).reshape(b, self.n_keypoints, h * w)
        attn = torch.softmax(logits * _KP_SHARPNESS, dim=-1)
        ys = torch.linspace(-1.0, 1.0, h, device=fmap.device).view(h, 1).expand(h, w).reshape(-1)
        xs = torch.linspace(-1.0, 1.0, w, device=fmap.device).view(1, w).expand(h, w).reshape(-1)
        # interleaved (x0, y0, x1, y1, ...)
        return torch.stack([attn @ xs, attn @ ys], dim=-1).reshape(b, 2 * self.n_keypoints)


def _uniform(seed: int, name: str, shape: Iterable[int], bound: float) -> np.ndarray:
    """Seeded U(-bound, bound), independent per tensor name; stable across numpy versions/platforms."""
    rng = np.random.Generator(np.random.PCG64([seed & 0xFFFFFFFF, zlib.crc32(name.encode())]))
    return ((rng.random(tuple(shape)) * 2.0 - 1.0) * bound).astype(np.float32)


def random_trunk_state(seed: int, norm: str = 'batch') -> dict[str, torch.Tensor]:
    """Seeded He-uniform convolutions, identity normalisation."""
    state = {}
    for name, shape in expected_checkpoint_keys(norm).items():
        if name.endswith('.weight') and len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            # He-uniform: keeps activation scale through ReLUs so deep features are not ~0 or huge.
            state[name] = torch.from_numpy(_uniform(seed, name, shape, np.sqrt(6.0 / fan_in)))
        elif name.endswith(('.weight', 'running_var')):
            state[name] = torch.ones(shape)
        else:  # bias, running_mean
            state[name] = torch.zeros(shape)
    return state


def random_head_state(seed: int, head: str, feature_dim: int) -> dict[str, torch.Tensor]:
    """Unit-variance uniform random projections (Johnson-Lindenstrauss style), scaled by 1/sqrt(fan_in)."""
    shapes = head_keys(head, feature_dim)
    s3, s4 = np.sqrt(3.0 / _STAGES[2][0]), np.sqrt(3.0 / _STAGES[3][0])
    return {'head.keypoints': torch.from_numpy(_uniform(seed, 'head.keypoints', shapes['head.keypoints'], s3)),
            'head.pooled': torch.from_numpy(_uniform(seed, 'head.pooled', shapes['head.pooled'], s4))}


# ----------------------------------------------------------------------------------------------- checkpoint
def weights_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (name, shape, float32 bytes) of every tensor in name order: what the metadata's
    weights_sha256 holds and the loader checks."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().to(torch.float32).cpu().contiguous()
        h.update(f'{k}{tuple(v.shape)}'.encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def _fmt(xs: list[str]) -> str:
    return ', '.join(xs[:25]) + (f' ... (+{len(xs) - 25} more)' if len(xs) > 25 else '')


def layout_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> str:
    """'' if `state` has exactly the `expected` keys and shapes (float tensors), else ONE line saying what is wrong."""
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    bad_shape = sorted(f'{k}: {tuple(v.shape)} != {expected[k]}' for k, v in state.items()
                       if k in expected and tuple(v.shape) != tuple(expected[k]))
    bad_dtype = sorted(f'{k}: {v.dtype}' for k, v in state.items() if not v.is_floating_point())
    parts = [f'{what} ({len(xs)}): {_fmt(xs)}' for what, xs in
             (('missing', missing), ('unexpected', unexpected), ('wrong shape', bad_shape), ('non-float', bad_dtype))
             if xs]
    return '; '.join(parts)


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """The 'poco_encoder' metadata of a safetensors checkpoint ({} for a plain one)."""
    from safetensors import safe_open
    with safe_open(str(path), 'pt') as f:
        raw = (f.metadata() or {}).get(META_KEY)
    if not raw:
        return {}
    meta = json.loads(raw)
    if not isinstance(meta, dict) or int(meta.get('format_version', 0)) > FORMAT_VERSION:
        raise ValueError(f'{path}: {META_KEY} metadata of an unknown format: {raw[:200]!r}')
    return meta


def save_checkpoint(path: str | Path, trunk_state: Mapping[str, torch.Tensor], *, norm: str,
                    padding: str = 'torch', head_state: Mapping[str, torch.Tensor] | None = None,
                    head: str = 'hybrid', feature_dim: int = 64, image_size: int = 128,
                    source: str = '', extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write the loader's safetensors (atomically) with its metadata; returns the metadata.

    `head_state` ({'head.keypoints', 'head.pooled'}) makes the head, and so `head` and `feature_dim`, part of the
    checkpoint; without it the loading config's seeded random head is used."""
    from safetensors.torch import save_file
    state = {k: v.detach().to(torch.float32).cpu().contiguous() for k, v in trunk_state.items()
             if not k.endswith('num_batches_tracked')}
    expected = dict(expected_checkpoint_keys(norm))
    if head_state is not None:
        state.update({k: v.detach().to(torch.float32).cpu().contiguous() for k, v in head_state.items()})
        expected.update(head_keys(head, feature_dim))
    problems = layout_problems(state, expected)
    if problems:
        raise ValueError(f'save_checkpoint: not the ResNet-10 {norm} layout: {problems}')
    meta: dict[str, Any] = {'format_version': FORMAT_VERSION, 'norm': norm, 'padding': padding,
                            'image_size': int(image_size), 'weights_sha256': weights_digest(state),
                            'source': source}
    if head_state is not None:
        meta.update(head=head, feature_dim=int(feature_dim))
    meta.update(extra or {})
    # the runtime fingerprint of this checkpoint at its image size in fp32, for logs and cross-checks
    cfg = EncoderConfig(head=head, feature_dim=feature_dim, image_size=image_size, device='cpu')
    trunk = ResNet10(norm, padding)
    trunk.load_state_dict({k: state[k] for k in expected_checkpoint_keys(norm)}, strict=False)
    hs = {k: state[k] for k in ('head.keypoints', 'head.pooled')} if head_state is not None else \
        random_head_state(cfg.seed, head, feature_dim)
    meta['fingerprint'] = _fingerprint(cfg, trunk, hs, head_from_checkpoint=head_state is not None)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}'
    try:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta, sort_keys=True)})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return meta


def _fingerprint(cfg: EncoderConfig, trunk: nn.Module, head_state: Mapping[str, torch.Tensor], *,
                 head_from_checkpoint: bool) -> str:
    h = hashlib.sha256()
    fields = ('feature_dim', 'head', 'image_size', 'bf16') + (() if head_from_checkpoint else ('seed',))
    relevant = {k: v for k, v in dataclasses.asdict(cfg).items() if k in fields}  # seed matters only if it made weights
    h.update(repr(sorted(relevant.items())).encode())
    if (trunk.norm, trunk.padding) != ('batch', 'torch'):  # absent for the original layout: its fingerprints stay
        h.update(f'norm={trunk.norm} padding={trunk.padding}'.encode())
    for k, v in sorted(trunk.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(head_state['head.keypoints'].detach().float().cpu().contiguous().numpy().tobytes())
    h.update(head_state['head.pooled'].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class LoadedCheckpoint:
    trunk: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor] | None   # None: the checkpoint has no head (use the seeded random one)
    norm: str
    padding: str
    meta: dict[str, Any]


def load_checkpoint(cfg: EncoderConfig) -> LoadedCheckpoint:
    """Read and check `cfg.checkpoint_path` against the layout and `cfg` (every problem in one ValueError line)."""
    from safetensors.torch import load_file

    path = Path(cfg.checkpoint_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'ImageEncoder: checkpoint_path {str(path)!r} does not exist (local safetensors file '
                                'expected; nothing is downloaded)')
    try:
        raw = load_file(str(path))
        meta = read_checkpoint_meta(path)
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f'ImageEncoder: cannot read {str(path)!r} as safetensors: {e}') from e
    where = f'ImageEncoder: checkpoint {str(path)!r}'
    ck_norm = meta.get('norm', 'batch')
    if cfg.norm != 'auto' and meta.get('norm') and cfg.norm != ck_norm:
        raise ValueError(f"{where} holds a {ck_norm}-norm ResNet-10, EncoderConfig.norm is {cfg.norm!r} "
                         f"(use 'auto' or {ck_norm!r})")
    norm = ck_norm if cfg.norm == 'auto' else cfg.norm
    padding = meta.get('padding', 'torch')
    if padding not in _PADDINGS:
        raise ValueError(f'{where}: unknown padding {padding!r} in its metadata')
    has_head = 'head' in meta
    if has_head and (meta['head'], int(meta['feature_dim'])) != (cfg.head, cfg.feature_dim):
        raise ValueError(f"{where} carries a trained {meta['head']!r} head with feature_dim {meta['feature_dim']}; "
                         f"EncoderConfig asks for head={cfg.head!r}, feature_dim={cfg.feature_dim}: set "
                         f"encoder head/feature_dim (policy node: feature_dim) to the checkpoint's")
    expected = dict(expected_checkpoint_keys(norm))
    if has_head:
        expected.update(head_keys(cfg.head, cfg.feature_dim))
    pre = cfg.checkpoint_prefix
    state, unexpected = {}, {}
    for key, tensor in raw.items():
        if pre:
            if not key.startswith(pre):
                unexpected[key] = tensor
                continue
            key = key[len(pre):]
        if key in ('fc.weight', 'fc.bias') or key.endswith('num_batches_tracked'):
            continue
        state[key] = tensor
    problems = layout_problems({**state, **unexpected}, expected)
    if problems:
        raise ValueError(
            f'{where} does not match the ResNet-10 {norm}-norm layout (torchvision names, one BasicBlock per stage; '
            f'see poco_policy.encoder docstring{", prefix " + repr(pre) if pre else ""}; poco_convert_encoder '
            f'converts other layouts): {problems}')
    if 'weights_sha256' in meta and weights_digest(state) != meta['weights_sha256']:
        raise ValueError(f'{where}: tensors do not match the weights_sha256 of its metadata (corrupted or edited '
                         'after it was written); re-create it with poco_convert_encoder / poco_pretrain_encoder')
    state = {k: v.to(torch.float32) for k, v in state.items()}
    head = {k: state.pop(k) for k in ('head.keypoints', 'head.pooled')} if has_head else None
    return LoadedCheckpoint(state, head, norm, padding, meta)


# --------------------------------------------------------------------------------------------------- encoder
class ImageEncoder:
    """Frozen ResNet-10 + feature head. `encode(uint8 [B,H,W,3] or [H,W,3]) -> float32 [B, feature_dim]`."""

    def __init__(self, cfg: EncoderConfig | None = None):
        self.cfg = cfg = cfg or EncoderConfig()
        self.device = resolve_device(cfg.device, 'EncoderConfig.device')  # one-line ValueError if unavailable
        if cfg.num_threads > 0:
            torch.set_num_threads(cfg.num_threads)
        self.checkpoint_meta: dict[str, Any] = {}
        head_state = None
        if cfg.checkpoint_path:
            ck = load_checkpoint(cfg)
            state, head_state, norm, padding = ck.trunk, ck.head, ck.norm, ck.padding
            self.checkpoint_meta = ck.meta
            self.pretrained = True
        else:
            norm = 'batch' if cfg.norm == 'auto' else cfg.norm
            padding = 'torch'
            state = random_trunk_state(cfg.seed, norm)
            self.pretrained = False
            _log.warning('ImageEncoder: no checkpoint_path configured, using deterministic RANDOM ResNet-10 weights '
                         '(seed=%d); features are NOT pretrained. Set EncoderConfig.checkpoint_path to a local '
                         'safetensors ResNet-10 checkpoint (poco_pretrain_encoder / poco_convert_encoder) for real '
                         'use.', cfg.seed)
        self.head_from_checkpoint = head_state is not None
        self.trunk = ResNet10(norm, padding)
        self.trunk.load_state_dict(state, strict=False)  # strictness already checked (num_batches_tracked aside)
        self.trunk.eval().requires_grad_(False)
        self._dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        self._mem = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.trunk.to(device=self.device, dtype=self._dtype, memory_format=self._mem)

        self.head = FeatureHead(cfg.head, cfg.feature_dim)
        self.head.load_state_dict({k.removeprefix('head.'): v for k, v in
                                   (head_state or random_head_state(cfg.seed, cfg.head, cfg.feature_dim)).items()})
        self.head.eval().requires_grad_(False).to(self.device)  # fp32 even with a bf16 trunk
        self.n_keypoints, self.n_pooled = self.head.n_keypoints, self.head.n_pooled
        self._mean = (torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0).to(self.device)
        self._std = (torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0).to(self.device)
        self._fingerprint: str | None = None
        if self.pretrained:
            _log.info('ImageEncoder: %s (%s norm, %s padding, head %s)', cfg.checkpoint_path, norm, padding,
                      'from the checkpoint' if self.head_from_checkpoint else f'seeded random (seed={cfg.seed})')

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    @property
    def fingerprint(self) -> str:
        """Hash of everything that determines the features (weights, head, config); equal => same encoder."""
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(
                self.cfg, self.trunk, {'head.keypoints': self.head.keypoints, 'head.pooled': self.head.pooled},
                head_from_checkpoint=self.head_from_checkpoint)
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
        return self.head(l3.float(), l4.float())

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
