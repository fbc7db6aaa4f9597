"""Observation assembly and action scaling: the boundary between robot/env units and the learning code.

- `ActionScaler`: physical action (6 joint deltas [rad] + gripper command in [0, 1]) <-> normalised [-1, 1]
  (delta / max_joint_delta; gripper * 2 - 1). See docs/architecture.md "Units and spaces".
- `ObservationAssembler`: env/robot observation dict -> flat float32 vector `concat(features..., proprio)`.
  pixels mode: `{'front': uint8 HxWx3, 'wrist': uint8 HxWx3, 'proprio': float[7]}` -> encoder features of each
  camera in `cameras` order, then proprio. state mode: `{'state': float[S], 'proprio': float[7]}` -> state, proprio.

The encoder config (`poco_policy.encoder.EncoderConfig`) goes either in `ObservationConfig.encoder` (a nested
dataclass, a mapping from YAML, or a JSON string from a ROS parameter; None = defaults) or as the assembler's
second argument, which wins. Both forms load with `poco_policy.config`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np

from .contract import ACTION_DIM, MAX_JOINT_DELTA, NUM_JOINTS, PROPRIO_DIM  # noqa: F401 (re-exported)
from .encoder import EncoderConfig, ImageEncoder


class ActionScaler:
    """Physical <-> normalised actions, elementwise over the last axis (any leading shape, e.g. [T,7] chunks)."""

    def __init__(self, max_joint_delta: float = MAX_JOINT_DELTA, num_joints: int = NUM_JOINTS):
        if not (np.isfinite(max_joint_delta) and max_joint_delta > 0):
            raise ValueError(f'ActionScaler: max_joint_delta must be > 0, got {max_joint_delta}')
        self.max_joint_delta = float(max_joint_delta)
        self.num_joints = int(num_joints)

    @property
    def action_dim(self) -> int:
        return self.num_joints + 1

    def _check(self, a: np.ndarray, what: str) -> np.ndarray:
        a = np.asarray(a, dtype=np.float64)
        if a.ndim < 1 or a.shape[-1] != self.action_dim:
            raise ValueError(f'ActionScaler.{what}: last axis must be {self.action_dim}, got shape {a.shape}')
        if not np.all(np.isfinite(a)):
            raise ValueError(f'ActionScaler.{what}: non-finite action values')
        return a

    def normalize(self, action: np.ndarray, clip: bool = True) -> np.ndarray:
        """Physical -> [-1, 1]. Clipped by default: anything beyond the limits could not be executed anyway."""
        a = self._check(action, 'normalize')
        out = np.empty_like(a)
        out[..., :self.num_joints] = a[..., :self.num_joints] / self.max_joint_delta
        out[..., self.num_joints] = a[..., self.num_joints] * 2.0 - 1.0
        if clip:
            np.clip(out, -1.0, 1.0, out=out)
        return out.astype(np.float32)

    def denormalize(self, action: np.ndarray) -> np.ndarray:
        """[-1, 1] -> physical; always clipped so a sampled chunk can never command more than the limits."""
        a = np.clip(self._check(action, 'denormalize'), -1.0, 1.0)
        out = np.empty_like(a)
        out[..., :self.num_joints] = a[..., :self.num_joints] * self.max_joint_delta
        out[..., self.num_joints] = (a[..., self.num_joints] + 1.0) * 0.5
        return out.astype(np.float32)


@dataclass
class ObservationConfig:
    obs_mode: str = 'pixels'                 # 'pixels' | 'state'
    cameras: tuple[str, ...] = ('front', 'wrist')
    state_dim: int = 0                       # state mode: size of the env's 'state' vector (required there)
    proprio_dim: int = PROPRIO_DIM
    encoder: Optional[EncoderConfig] = None  # pixels mode; None = EncoderConfig() defaults

    def __post_init__(self) -> None:
        if isinstance(self.encoder, str):  # ROS parameters carry nested configs as JSON ('' = None)
            self.encoder = json.loads(self.encoder) if self.encoder.strip() else None
        if isinstance(self.encoder, Mapping):
            from .config import from_dict
            self.encoder = from_dict(EncoderConfig, dict(self.encoder))
        if self.encoder is not None and not isinstance(self.encoder, EncoderConfig):
            raise ValueError(f'ObservationConfig.encoder must be an EncoderConfig or mapping, got {self.encoder!r}')
        if self.obs_mode not in ('pixels', 'state'):
            raise ValueError(f"ObservationConfig.obs_mode must be 'pixels' or 'state', got {self.obs_mode!r}")
        self.cameras = tuple(self.cameras)
        if self.obs_mode == 'pixels' and not self.cameras:
            raise ValueError('ObservationConfig.cameras must not be empty in pixels mode')
        if self.obs_mode == 'state' and self.state_dim <= 0:
            raise ValueError('ObservationConfig.state_dim must be > 0 in state mode')
        if self.proprio_dim < 0:
            raise ValueError('ObservationConfig.proprio_dim must be >= 0')


class ObservationAssembler:
    """Observation dict -> float32 vector [obs_dim] (`assemble`) or batch of frames -> [N, obs_dim] (`assemble_batch`).

    In pixels mode an `ImageEncoder` is built from `encoder_cfg`, else `cfg.encoder`, else defaults, unless an
    encoder is passed in (share one encoder between assemblers to avoid loading it twice). State mode never builds
    an encoder.
    """

    def __init__(self, cfg: ObservationConfig | None = None, encoder_cfg: EncoderConfig | None = None, *,
                 encoder: ImageEncoder | None = None):
        self.cfg = cfg or ObservationConfig()
        if encoder_cfg is not None and self.cfg.encoder is not None and encoder_cfg != self.cfg.encoder:
            raise ValueError('ObservationAssembler: encoder_cfg and cfg.encoder are both given and differ')
        self.encoder: ImageEncoder | None = None
        if self.cfg.obs_mode == 'pixels':
            self.encoder = encoder if encoder is not None else \
                ImageEncoder(encoder_cfg or self.cfg.encoder or EncoderConfig())

    @property
    def feature_dim(self) -> int:
        """Size of the feature part (everything before proprio)."""
        if self.cfg.obs_mode == 'pixels':
            return len(self.cfg.cameras) * self.encoder.feature_dim
        return self.cfg.state_dim

    @property
    def obs_dim(self) -> int:
        return self.feature_dim + self.cfg.proprio_dim

    def _vector(self, obs: Mapping[str, np.ndarray], key: str, dim: int, n: int | None) -> np.ndarray:
        if key not in obs:
            raise ValueError(f'ObservationAssembler: observation has no {key!r} (keys: {sorted(obs)})')
        v = np.asarray(obs[key], dtype=np.float32)
        want = (dim,) if n is None else (n, dim)
        if v.shape != want:
            raise ValueError(f'ObservationAssembler: {key!r} must have shape {want}, got {v.shape}')
        if not np.all(np.isfinite(v)):
            raise ValueError(f'ObservationAssembler: {key!r} has non-finite values')
        return v

    def _images(self, obs: Mapping[str, np.ndarray], n: int | None) -> list[np.ndarray]:
        out = []
        for cam in self.cfg.cameras:
            if cam not in obs:
                raise ValueError(f'ObservationAssembler: observation has no camera {cam!r} (keys: {sorted(obs)})')
            img = np.asarray(obs[cam])
            want_ndim = 3 if n is None else 4
            if img.ndim != want_ndim or img.shape[-1] != 3 or (n is not None and img.shape[0] != n):
                raise ValueError(f'ObservationAssembler: camera {cam!r} must be uint8 '
                                 f'{"[H,W,3]" if n is None else f"[{n},H,W,3]"}, got shape {img.shape}')
            if img.dtype != np.uint8:
                raise ValueError(f'ObservationAssembler: camera {cam!r} must be uint8, got {img.dtype}')
            out.append(img if n is not None else img[None])
        return out

    def _features(self, obs: Mapping[str, np.ndarray], n: int | None) -> np.ndarray:
        if self.cfg.obs_mode == 'state':
            s = self._vector(obs, 'state', self.cfg.state_dim, n)
            return s if n is not None else s[None]
        images = self._images(obs, n)
        shapes = {im.shape[1:] for im in images}
        if len(shapes) == 1:
            # One forward pass for all cameras (front and wrist together): half the per-call overhead.
            feats = self.encoder.encode(np.concatenate(images, axis=0))
            feats = feats.reshape(len(images), -1, self.encoder.feature_dim)
        else:
            feats = np.stack([self.encoder.encode(im) for im in images])
        return np.concatenate(list(feats), axis=1)  # [N, cams*F], camera-major per row

    def assemble(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """One observation dict -> float32 [obs_dim]."""
        proprio = self._vector(obs, 'proprio', self.cfg.proprio_dim, None)
        feats = self._features(obs, None)[0]
        return np.concatenate([feats, proprio]).astype(np.float32)

    def assemble_batch(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Batch of frames (every entry with a leading axis N, e.g. a dataset episode's L+1 frames) -> [N, obs_dim]."""
        if 'proprio' not in obs:
            raise ValueError(f'ObservationAssembler: observation has no \'proprio\' (keys: {sorted(obs)})')
        n = int(np.shape(obs['proprio'])[0]) if np.ndim(obs['proprio']) == 2 else -1
        if n < 0:
            raise ValueError(f'ObservationAssembler.assemble_batch: proprio must be [N,{self.cfg.proprio_dim}], '
                             f'got shape {np.shape(obs["proprio"])}')
        proprio = self._vector(obs, 'proprio', self.cfg.proprio_dim, n)
        if n == 0:
            return np.zeros((0, self.obs_dim), np.float32)
        feats = self._features(obs, n)
        return np.concatenate([feats, proprio], axis=1).astype(np.float32)

    __call__ = assemble
