"""`poco_pretrain_encoder`: train the ResNet-10 trunk and feature head on the user's own episode images, then
freeze them into the encoder checkpoint the policy node and the learner load (docs/encoder.md).

    poco_pretrain_encoder --data runs/X/demos --out runs/X/encoder.safetensors            # sim / real demos
    poco_pretrain_encoder --data demos_a demos_b --out enc.safetensors --init serl.safetensors  # from ImageNet

Then: learner `encoder.checkpoint_path=<OUT>`, policy node `encoder_checkpoint:=<OUT>` (feature_dim / head as
trained: the checkpoint carries its head, a config asking for another is refused).

Objective (why: docs/encoder.md): behaviour cloning through the encoder. Both cameras go through the one encoder
(shared weights, as at run time); their features + proprio feed a small MLP that predicts the demonstration's
next `--horizon` normalised actions (masked past the episode end), and the image features alone feed a second
one that predicts the proprio (the arm's pose must be visible in the features). Loss = BC MSE + `--aux-weight` x
proprio MSE; random-shift augmentation (DrQ: replicate-pad, random crop) on every image. The MLPs are thrown
away; trunk and head are frozen afterwards. Stages before `--train-from` keep their initial weights (seeded
random, or `--init`): they cost half the compute and random/ImageNet low-level filters serve well enough.

Data: episode dataset directories in the format poco_sim.collect / bag ingest write (poco_learner.dataset), pixels
mode. The last `--val-episodes` episodes are held out; the validation BC loss is printed with the progress.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from poco_policy.encoder import (IMAGENET_MEAN, IMAGENET_STD, EncoderConfig, FeatureHead, ResNet10,
                                 load_checkpoint, random_head_state, random_trunk_state, save_checkpoint)

_log = logging.getLogger(__name__)
_STAGE_ORDER = ('conv1', 'layer1', 'layer2', 'layer3', 'layer4')


@dataclass
class PretrainEncoderConfig:
    data: list[str] = field(default_factory=list)  # episode dataset directories (pixels mode)
    out: str = ''                # output safetensors
    init: str = ''               # start from this encoder checkpoint ('' = seeded random trunk)
    norm: str = 'group'          # trunk norm when not --init: GroupNorm trains the same with any batch size
    feature_dim: int = 64        # per camera; the policy node / learner default
    head: str = 'hybrid'
    image_size: int = 128
    seed: int = 0
    steps: int = 300
    batch_size: int = 16         # frames per step (x cameras images)
    lr: float = 3e-4             # trunk
    head_lr: float = 1e-3        # feature head and the (discarded) prediction MLPs
    weight_decay: float = 1e-4
    horizon: int = 5             # action chunk predicted (sim_cpu preset T)
    aux_weight: float = 0.5      # proprio-from-pixels loss weight
    shift: int = 4               # random-shift augmentation [px at 128; scaled with image_size]
    train_from: str = 'layer2'   # first trained stage: conv1 | layer1 | layer2 | layer3 | layer4
    val_episodes: int = 1        # held out (when >= 3 episodes)
    max_episodes: int = 0        # per dataset, 0 = all
    log_every: int = 25
    threads: int = 0             # >0: torch.set_num_threads

    def __post_init__(self) -> None:
        if self.train_from not in _STAGE_ORDER:
            raise ValueError(f'train_from must be one of {_STAGE_ORDER}, got {self.train_from!r}')
        if self.norm not in ('batch', 'group'):
            raise ValueError(f"norm must be 'batch' or 'group', got {self.norm!r}")
        if self.steps < 1 or self.batch_size < 2 or self.horizon < 1 or self.log_every < 1:
            raise ValueError('steps >= 1, batch_size >= 2, horizon >= 1, log_every >= 1 required')
        EncoderConfig(feature_dim=self.feature_dim, head=self.head, image_size=self.image_size)  # validates


# ------------------------------------------------------------------------------------------------------ data
@dataclass
class Frames:
    images: np.ndarray    # [N, C, H, W, 3] uint8, C cameras
    proprio: np.ndarray   # [N, 7] float32
    chunks: np.ndarray    # [N, T, 7] normalised actions
    valid: np.ndarray     # [N, T] float32 (0 past the episode end)
    episode: np.ndarray   # [N] episode number (0..E-1 in load order)
    cameras: tuple[str, ...]


def load_frames(dirs: Sequence[str], horizon: int, image_size: int, max_episodes: int = 0) -> Frames:
    """Every frame that has an action after it, from pixels-mode episode datasets."""
    from poco_learner.dataset import episode_indices, episode_path, read_episode, read_meta
    from poco_policy.observation import ActionScaler
    imgs, props, chunks, valid, eps = [], [], [], [], []
    cameras: tuple[str, ...] | None = None
    n_ep = 0
    for d in dirs:
        meta = read_meta(d)
        if meta['obs_mode'] != 'pixels':
            raise ValueError(f"{d}: obs_mode {meta['obs_mode']!r}; encoder pre-training needs a pixels dataset")
        cams = tuple(meta['cameras'])
        if cameras is not None and cams != cameras:
            raise ValueError(f'{d}: cameras {cams} differ from the first dataset\'s {cameras}')
        cameras = cams
        scaler = ActionScaler(float(meta['max_joint_delta']))
        indices = episode_indices(d)
        for index in indices[:max_episodes or None]:
            ep = read_episode(episode_path(d, index), meta)
            n = len(ep['actions'])
            if n == 0:
                continue
            frames = np.stack([ep[c][:n] for c in cams], axis=1)  # [n, C, H, W, 3]
            if frames.shape[2:4] != (image_size, image_size):  # resized like the encoder does at run time
                t = torch.from_numpy(frames.reshape(-1, *frames.shape[2:])).permute(0, 3, 1, 2).float()
                t = F.interpolate(t, size=(image_size, image_size), mode='bilinear', antialias=True,
                                  align_corners=False)
                frames = t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy().reshape(
                    n, len(cams), image_size, image_size, 3)
            act = scaler.normalize(ep['actions'])
            idx = np.arange(n)[:, None] + np.arange(horizon)[None, :]
            ok = idx < n
            imgs.append(frames)
            props.append(ep['proprio'][:n].astype(np.float32))
            chunks.append(np.where(ok[..., None], act[np.minimum(idx, n - 1)], 0.0).astype(np.float32))
            valid.append(ok.astype(np.float32))
            eps.append(np.full(n, n_ep))
            n_ep += 1
    if not imgs:
        raise ValueError(f'no episodes with actions in {list(dirs)}')
    return Frames(np.concatenate(imgs), np.concatenate(props), np.concatenate(chunks), np.concatenate(valid),
                  np.concatenate(eps), cameras or ())


# ----------------------------------------------------------------------------------------------------- model
def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class PretrainModel(nn.Module):
    """Encoder (trunk + head, kept) + BC and proprio predictors (discarded)."""

    def __init__(self, trunk: ResNet10, head: FeatureHead, n_cameras: int, horizon: int, proprio_dim: int = 7,
                 action_dim: int = 7):
        super().__init__()
        self.trunk, self.head = trunk, head
        f = head.feature_dim * n_cameras
        self.bc = _mlp([f + proprio_dim, 256, 256, horizon * action_dim])
        self.aux = _mlp([f, 128, proprio_dim])
        self.horizon, self.action_dim = horizon, action_dim
        self.register_buffer('mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer('std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0, persistent=False)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-valued float [B, C, 3, H, W] -> [B, C * feature_dim] (what ImageEncoder computes per camera)."""
        b, c = images.shape[:2]
        x = ((images.flatten(0, 1) - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
        l3, l4 = self.trunk(x)
        return self.head(l3, l4).reshape(b, c * self.head.feature_dim)

    def forward(self, images: torch.Tensor, proprio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(images)
        chunk = self.bc(torch.cat([feats, proprio], dim=1)).view(-1, self.horizon, self.action_dim)
        return chunk, self.aux(feats)


def random_shift(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """DrQ augmentation: replicate-pad by `pad` and crop back at a random offset, per image. x [N, 3, H, W]."""
    if pad <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode='replicate')
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)[None, :])  # [n, h]
    cols = (ox[:, None] + torch.arange(w)[None, :])  # [n, w]
    idx_n = torch.arange(n)[:, None, None]
    return padded.permute(0, 2, 3, 1)[idx_n, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _set_trainable(model: PretrainModel, train_from: str) -> list[str]:
    first = _STAGE_ORDER.index(train_from)
    frozen = []
    for i, stage in enumerate(_STAGE_ORDER):
        mods = [model.trunk.conv1, model.trunk.bn1] if stage == 'conv1' else [getattr(model.trunk, stage)]
        for m in mods:
            m.requires_grad_(i >= first)
        if i < first:
            frozen.append(stage)
    return frozen


def _train_mode(model: PretrainModel, frozen: list[str]) -> None:
    model.train()
    for stage in frozen:  # frozen BatchNorm keeps its statistics
        for m in ([model.trunk.bn1] if stage == 'conv1' else [getattr(model.trunk, stage)]):
            m.eval()


# ----------------------------------------------------------------------------------------------------- train
def pretrain(cfg: PretrainEncoderConfig, log=print) -> dict:
    """Train, write `cfg.out`, return a summary (losses, wall time, images/s, checkpoint metadata)."""
    if not cfg.data or not cfg.out:
        raise ValueError('pretrain_encoder: data (one or more dataset directories) and out are required')
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t_load = time.perf_counter()
    frames = load_frames(cfg.data, cfg.horizon, cfg.image_size, cfg.max_episodes)
    n_ep = int(frames.episode.max()) + 1
    n_val = cfg.val_episodes if n_ep >= 3 else 0
    val_mask = frames.episode >= n_ep - n_val
    train_idx, val_idx = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
    n_cam = frames.images.shape[1]

    # initial weights
    padding = 'torch'
    head_state = random_head_state(cfg.seed, cfg.head, cfg.feature_dim)
    if cfg.init:
        ck = load_checkpoint(EncoderConfig(checkpoint_path=cfg.init, feature_dim=cfg.feature_dim, head=cfg.head))
        trunk_state, norm, padding = ck.trunk, ck.norm, ck.padding
        head_state = ck.head or head_state
    else:
        norm = cfg.norm
        trunk_state = random_trunk_state(cfg.seed, norm)
    trunk = ResNet10(norm, padding)
    trunk.load_state_dict(trunk_state, strict=False)
    head = FeatureHead(cfg.head, cfg.feature_dim)
    head.load_state_dict({k.removeprefix('head.'): v for k, v in head_state.items()})
    model = PretrainModel(trunk, head, n_cam, cfg.horizon).to(memory_format=torch.channels_last)
    frozen = _set_trainable(model, cfg.train_from)
    init_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trunk_params = [p for p in model.trunk.parameters() if p.requires_grad]
    other = [p for m in (model.head, model.bc, model.aux) for p in m.parameters()]
    opt = torch.optim.AdamW([{'params': trunk_params, 'lr': cfg.lr}, {'params': other, 'lr': cfg.head_lr}],
                            weight_decay=cfg.weight_decay)

    p_mean = frames.proprio[train_idx].mean(0)
    p_std = frames.proprio[train_idx].std(0) + 1e-3  # joint angles that never move must not blow up
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pad = max(0, round(cfg.shift * cfg.image_size / 128))

    def batch(idx: np.ndarray, augment: bool):
        imgs = torch.from_numpy(frames.images[idx]).permute(0, 1, 4, 2, 3).float()  # [B, C, 3, H, W]
        if augment:
            imgs = random_shift(imgs.flatten(0, 1), pad, gen).view(imgs.shape)
        prop = torch.from_numpy(frames.proprio[idx])
        return (imgs, prop, torch.from_numpy((frames.proprio[idx] - p_mean) / p_std),
                torch.from_numpy(frames.chunks[idx]), torch.from_numpy(frames.valid[idx]))

    def losses(idx: np.ndarray, augment: bool) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, prop, prop_n, chunk, valid = batch(idx, augment)
        pred, prop_pred = model(imgs, prop)
        bc = (((pred - chunk) ** 2).mean(-1) * valid).sum() / valid.sum()
        return bc, F.mse_loss(prop_pred, prop_n)

    val_sub = val_idx[np.linspace(0, len(val_idx) - 1, min(64, len(val_idx))).astype(int)] if len(val_idx) else None

    # a fixed subset of training frames, unaugmented: the loss before vs after training, free of batch noise
    fit_sub = train_idx[np.linspace(0, len(train_idx) - 1, min(64, len(train_idx))).astype(int)]

    def evaluate(idx: np.ndarray | None) -> tuple[float, float]:
        if idx is None:
            return float('nan'), float('nan')
        model.eval()
        with torch.no_grad():
            bc, aux = losses(idx, augment=False)
        _train_mode(model, frozen)
        return float(bc), float(aux)

    def validate() -> float:
        return evaluate(val_sub)[0]

    fit_before = evaluate(fit_sub)

    log(f'[poco_pretrain_encoder] {len(train_idx)} train frames ({n_ep - n_val} episodes), {len(val_idx)} val '
        f'frames ({n_val}), cameras {list(frames.cameras)}, {cfg.image_size}px, norm={norm} padding={padding}, '
        f'frozen {frozen or "none"}, init {cfg.init or "seeded random"}; loaded in {time.perf_counter() - t_load:.1f} s')
    _train_mode(model, frozen)
    history: list[tuple[int, float, float, float]] = []
    t0, c0 = time.perf_counter(), time.process_time()
    t_last, win, win_bc, win_aux = t0, 0, 0.0, 0.0
    for step in range(1, cfg.steps + 1):
        idx = rng.choice(train_idx, size=cfg.batch_size, replace=len(train_idx) < cfg.batch_size)
        bc, aux = losses(idx, augment=True)
        loss = bc + cfg.aux_weight * aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise FloatingPointError(f'pretrain_encoder: loss became {lv} at step {step}')
        win, win_bc, win_aux = win + 1, win_bc + float(bc.detach()), win_aux + float(aux.detach())
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            ips = win * cfg.batch_size * n_cam / (now - t_last)
            val = validate()
            mb, ma = win_bc / win, win_aux / win
            history.append((step, mb, ma, val))
            eta = (now - t0) / step * (cfg.steps - step)
            log(f'[poco_pretrain_encoder] step {step}/{cfg.steps} loss {mb + cfg.aux_weight * ma:.4f} (bc {mb:.4f} '
                f'proprio {ma:.4f}) val bc {"n/a" if math.isnan(val) else f"{val:.4f}"} | {ips:.1f} img/s | {now - t0:.0f} s, eta {eta:.0f} s')
            t_last, win, win_bc, win_aux = time.perf_counter(), 0, 0.0, 0.0
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    fit_after = evaluate(fit_sub)
    log(f'[poco_pretrain_encoder] fixed train subset (no augmentation): bc {fit_before[0]:.4f} -> {fit_after[0]:.4f}, '
        f'proprio {fit_before[1]:.4f} -> {fit_after[1]:.4f}')

    model.eval()
    trunk_out = {k: v for k, v in model.trunk.state_dict().items() if not k.endswith('num_batches_tracked')}
    head_out = {'head.keypoints': model.head.keypoints.detach(), 'head.pooled': model.head.pooled.detach()}
    changed = any(not torch.equal(v, init_state[k]) for k, v in model.state_dict().items() if k.startswith('trunk.'))
    summary = {
        'objective': f'bc(T={cfg.horizon}) + {cfg.aux_weight} x proprio-from-pixels, random shift {pad}px',
        'data': [str(Path(d)) for d in cfg.data], 'train_frames': int(len(train_idx)),
        'val_frames': int(len(val_idx)), 'steps': cfg.steps, 'batch_size': cfg.batch_size,
        'train_from': cfg.train_from, 'init': cfg.init,
        'fit_bc_before': fit_before[0], 'fit_bc_after': fit_after[0],
        'fit_proprio_before': fit_before[1], 'fit_proprio_after': fit_after[1],
        'final_bc': history[-1][1], 'final_proprio': history[-1][2], 'final_val_bc': history[-1][3],
        'wall_s': round(wall, 1), 'cpu_s': round(cpu, 1), 'images_per_s': round(cfg.steps * cfg.batch_size * n_cam / wall, 1),
        'trunk_changed': changed,
    }
    meta = save_checkpoint(cfg.out, trunk_out, norm=norm, padding=padding, head_state=head_out, head=cfg.head,
                           feature_dim=cfg.feature_dim, image_size=cfg.image_size, source='poco_pretrain_encoder',
                           extra={'pretrain': {k: v for k, v in summary.items() if k != 'trunk_changed'},
                                  'pretrain_config': dataclasses.asdict(cfg)})
    summary.update(history=history, checkpoint=meta)
    log(f'[poco_pretrain_encoder] wrote {cfg.out} (fingerprint {meta["fingerprint"]}, {wall:.0f} s training); use '
        f'it with encoder.checkpoint_path={cfg.out} encoder.feature_dim={cfg.feature_dim} (learner) / '
        f'encoder_checkpoint:={cfg.out} feature_dim:={cfg.feature_dim} (policy node)')
    return summary


def build_parser() -> argparse.ArgumentParser:
    d = PretrainEncoderConfig()
    p = argparse.ArgumentParser(prog='poco_pretrain_encoder', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--data', nargs='+', required=True, help='episode dataset directories (pixels mode)')
    p.add_argument('--out', required=True, help='output encoder checkpoint (safetensors)')
    for f in dataclasses.fields(PretrainEncoderConfig):
        if f.name in ('data', 'out'):
            continue
        default = getattr(d, f.name)
        kw = {'choices': ['batch', 'group']} if f.name == 'norm' else \
            {'choices': list(_STAGE_ORDER)} if f.name == 'train_from' else \
            {'choices': ['hybrid', 'keypoints', 'pooled']} if f.name == 'head' else {}
        p.add_argument('--' + f.name.replace('_', '-'), type=type(default), default=default,
                       help=f'(default: {default!r})', **kw)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING)
    args = vars(build_parser().parse_args(argv))
    try:
        cfg = PretrainEncoderConfig(**args)
        summary = pretrain(cfg, log=lambda s: print(s, flush=True))
    except (ValueError, OSError, FloatingPointError) as e:
        print(f'poco_pretrain_encoder: error: {e}', file=sys.stderr)
        return 1
    if not summary['trunk_changed']:
        print('poco_pretrain_encoder: warning: the trunk did not change', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
