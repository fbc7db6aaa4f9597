"""What the policy node does each tick, as plain Python (no ROS), so it is unit-testable.

- `WeightsGate`: checks incoming weights (format, version, sha256, finiteness) and keeps the last good policy.
- `ChunkRunner`: samples a chunk when the previous one is used up, hands out one action per tick, and swaps
  to pending weights only at chunk boundaries (never mid-chunk: a chunk is one coherent plan).
- `Safety`: joint-limit clamping, end-effector box check and input staleness (watchdog).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np


class WeightsRejected(ValueError):
    """Raised for weights that must not be run; the message says why."""


class WeightsGate:
    """Validates weight payloads; the policy keeps serving the last good weights when a payload is bad."""

    def __init__(self, loader: Callable[[bytes, dict], object]):
        # loader(payload, metadata) -> policy; it must not unpickle anything (safetensors only).
        self._loader = loader
        self.version = 0

    def check(self, version: int, fmt: str, sha256: str, payload: bytes, metadata: str):
        if version <= self.version:
            raise WeightsRejected(f'version {version} is not newer than the running version {self.version}')
        if fmt != 'safetensors':
            raise WeightsRejected(f'format {fmt!r} refused: only safetensors is accepted')
        digest = hashlib.sha256(payload).hexdigest()
        if digest != sha256:
            raise WeightsRejected(f'sha256 mismatch: got {digest[:12]}.., message says {sha256[:12]}..')
        try:
            meta = json.loads(metadata) if metadata else {}
        except json.JSONDecodeError as e:
            raise WeightsRejected(f'metadata is not JSON: {e}') from e
        try:
            policy = self._loader(payload, meta)
        except Exception as e:  # a bad payload must never take the node down
            raise WeightsRejected(f'cannot load payload: {e}') from e
        for name, p in getattr(policy, 'state_dict', lambda: {})().items():
            if hasattr(p, 'isfinite') and not bool(p.isfinite().all()):
                raise WeightsRejected(f'non-finite values in {name}')
        return policy, meta

    def accept(self, version: int):
        self.version = version


class ChunkRunner:
    """Executes action chunks step by step; weights change only between chunks."""

    def __init__(self, sample_fn: Callable[[object, np.ndarray, bool], np.ndarray]):
        # sample_fn(policy, obs, deterministic) -> [T, A] normalised chunk
        self._sample = sample_fn
        self.policy = None
        self.version = 0
        self._pending: Optional[tuple] = None
        self.chunk: Optional[np.ndarray] = None
        self.index = 0
        self.chunks_started = 0

    def offer(self, policy, version: int):
        """New weights: used from the next chunk on."""
        self._pending = (policy, version)

    def swap_if_pending(self) -> bool:
        if self._pending is None:
            return False
        self.policy, self.version = self._pending
        self._pending = None
        return True

    @property
    def ready(self) -> bool:
        return self.policy is not None or self._pending is not None

    def drop_chunk(self):
        """Forget the current chunk (episode end, intervention): the next step samples a fresh one."""
        self.chunk, self.index = None, 0

    def needs_chunk(self) -> bool:
        return self.chunk is None or self.index >= len(self.chunk)

    def new_chunk(self, obs: np.ndarray, deterministic: bool, allow_swap: bool = True) -> np.ndarray:
        if allow_swap or self.policy is None:
            self.swap_if_pending()
        if self.policy is None:
            raise RuntimeError('no policy weights yet')
        chunk = np.asarray(self._sample(self.policy, obs, deterministic), dtype=np.float32)
        if chunk.ndim != 2 or not np.isfinite(chunk).all():
            raise RuntimeError(f'policy produced an invalid chunk (shape {chunk.shape})')
        self.chunk, self.index = chunk, 0
        self.chunks_started += 1
        return chunk

    def next_action(self) -> tuple[np.ndarray, int]:
        a = self.chunk[self.index]
        i = self.index
        self.index += 1
        return a, i


@dataclass
class SafetyLimits:
    joint_lower: np.ndarray
    joint_upper: np.ndarray
    box_min: np.ndarray  # metres, base frame
    box_max: np.ndarray
    staleness_s: float


class Safety:
    def __init__(self, limits: SafetyLimits):
        self.lim = limits

    def clamp_targets(self, q_target: np.ndarray) -> np.ndarray:
        return np.clip(q_target, self.lim.joint_lower, self.lim.joint_upper)

    def ee_outside(self, ee_pos: Optional[np.ndarray]) -> bool:
        if ee_pos is None:
            return False
        return bool(np.any(ee_pos < self.lim.box_min) or np.any(ee_pos > self.lim.box_max))

    def stale(self, stamps: dict[str, Optional[float]], now: Optional[float] = None) -> list[str]:
        """Names of inputs older than the tolerance (or never received)."""
        now = time.monotonic() if now is None else now
        return [k for k, t in stamps.items() if t is None or now - t > self.lim.staleness_s]


def finite_array(values, size: Optional[int] = None, name: str = 'array') -> np.ndarray:
    """Message field -> float32 array, with a clear error for wrong sizes or NaN/inf."""
    a = np.asarray(values, dtype=np.float32).reshape(-1)
    if size is not None and a.size != size:
        raise ValueError(f'{name}: expected {size} values, got {a.size}')
    if not np.isfinite(a).all():
        raise ValueError(f'{name}: contains NaN or inf')
    return a


def image_to_array(height: int, width: int, encoding: str, step: int, data) -> np.ndarray:
    """sensor_msgs/Image fields -> HxWx3 uint8 RGB (rgb8 / bgr8 / rgba8 / bgra8 / mono8)."""
    channels = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
    if encoding not in channels:
        raise ValueError(f'unsupported image encoding {encoding!r} (supported: {sorted(channels)})')
    c = channels[encoding]
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if step < width * c or buf.size < step * height:
        raise ValueError(f'image data too small: {buf.size} bytes for {height}x{width} {encoding} step {step}')
    img = buf[: step * height].reshape(height, step)[:, : width * c].reshape(height, width, c)
    if encoding == 'bgr8':
        img = img[..., ::-1]
    elif encoding == 'rgba8':
        img = img[..., :3]
    elif encoding == 'bgra8':
        img = img[..., 2::-1]
    elif encoding == 'mono8':
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img)
