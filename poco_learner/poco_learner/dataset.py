"""Episode dataset (docs/architecture.md "Episode dataset"): read, write, validate, load into a ReplayBuffer.

Layout::

    <directory>/meta.json              {"task", "obs_mode": "pixels"|"state", "image_size", "cameras": [...],
                                        "max_joint_delta", optional "joint_names": [...] (the proprio columns:
                                        the arm's n joints + the gripper; absent: the sim arm's 6 + 1), ...}
    <directory>/episode_000000.npz     one per episode, np.load(allow_pickle=False):
        proprio      [L+1, n+1] float   joint angles [rad] + gripper opening [0, 1]
        actions      [L, n+1]   float   PHYSICAL units (n joint deltas [rad] + gripper command [0, 1])
        rewards      [L]        float
        terminal     ()         bool    ended by success/failure (True) or timeout (False)
        success      ()         bool
        intervention [L]        bool    optional
        front, wrist [L+1, H, W, 3] uint8   (pixels mode: every camera in meta["cameras"]; H = W = image_size)
        state        [L+1, S]   float   (state mode)
    Index L is the observation after the last action. Extra arrays are allowed and passed through.

Writers are atomic: a hidden temp file in the same directory, fsync, rename, directory fsync, so a crash leaves
either the complete file or nothing (readers ignore the hidden temp files).
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from poco_policy.contract import ACTION_DIM

_log = logging.getLogger(__name__)

META_NAME = 'meta.json'
EPISODE_RE = re.compile(r'^episode_(\d{6,})\.npz$')
REQUIRED_META = {'task': str, 'obs_mode': str, 'image_size': int, 'cameras': list, 'max_joint_delta': float}


class DatasetError(ValueError):
    """A dataset file is missing or does not follow the format (message says which file and what)."""


# --------------------------------------------------------------------------------------------------- helpers
def _atomic_write(path: Path, write_fn) -> None:
    tmp = path.parent / f'.{path.name}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def episode_path(directory: str | Path, index: int) -> Path:
    return Path(directory) / f'episode_{int(index):06d}.npz'


def validate_meta(meta: Mapping[str, Any], where: str = 'meta') -> dict[str, Any]:
    meta = dict(meta)
    for key, tp in REQUIRED_META.items():
        if key not in meta:
            raise DatasetError(f'{where}: missing key {key!r} (required: {sorted(REQUIRED_META)})')
        v = meta[key]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) if tp is float else \
            isinstance(v, (list, tuple)) if tp is list else isinstance(v, tp) and not isinstance(v, bool)
        if not ok:
            raise DatasetError(f'{where}: {key!r} must be {tp.__name__}, got {v!r}')
    if meta['obs_mode'] not in ('pixels', 'state'):
        raise DatasetError(f"{where}: obs_mode must be 'pixels' or 'state', got {meta['obs_mode']!r}")
    meta['cameras'] = [str(c) for c in meta['cameras']]
    if meta['obs_mode'] == 'pixels' and not meta['cameras']:
        raise DatasetError(f'{where}: pixels mode needs at least one camera')
    if not (meta['max_joint_delta'] > 0 and meta['image_size'] > 0):
        raise DatasetError(f'{where}: max_joint_delta and image_size must be > 0')
    if 'joint_names' in meta:
        names = meta['joint_names']
        if not (isinstance(names, (list, tuple)) and len(names) >= 2 and all(isinstance(n, str) and n for n in names)
                and len(set(names)) == len(names)):
            raise DatasetError(f'{where}: joint_names must list the distinct names of the arm joints and the '
                               f'gripper, got {names!r}')
        meta['joint_names'] = list(names)
    return meta


def action_dim(meta: Mapping[str, Any] | None) -> int:
    """Action (= proprio) size of a dataset: its joint_names (the arm's joints + the gripper; the sim arm's
    6 + 1 when meta has none)."""
    return len(meta['joint_names']) if meta and 'joint_names' in meta else ACTION_DIM


def _flag(arrays: Mapping[str, np.ndarray], key: str, where: str) -> bool:
    v = np.asarray(arrays[key])
    if v.shape != () or not (v.dtype == bool or np.issubdtype(v.dtype, np.integer)) or int(v) not in (0, 1):
        raise DatasetError(f'{where}: {key!r} must be a scalar bool, got dtype {v.dtype} shape {v.shape}')
    return bool(v)


def _float_array(arrays: Mapping[str, np.ndarray], key: str, shape: tuple, where: str) -> np.ndarray:
    v = np.asarray(arrays[key])
    if not (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer)):
        raise DatasetError(f'{where}: {key!r} must be numeric, got dtype {v.dtype}')
    if v.shape != shape:
        raise DatasetError(f'{where}: {key!r} must have shape {shape}, got {v.shape}')
    if not np.all(np.isfinite(v)):
        raise DatasetError(f'{where}: {key!r} has non-finite values')
    return v


def validate_episode(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None,
                     where: str = 'episode') -> dict[str, np.ndarray]:
    """Check one episode's arrays against the format (and meta, if given); returns them with flags as bools."""
    out = dict(arrays)
    for key in ('proprio', 'actions', 'rewards', 'terminal', 'success'):
        if key not in out:
            raise DatasetError(f'{where}: missing array {key!r} (has {sorted(out)})')
    acts = np.asarray(out['actions'])
    adim = action_dim(meta)                # = proprio size: n joints + gripper
    if acts.ndim != 2 or acts.shape[1] != adim or acts.shape[0] < 1:
        raise DatasetError(f'{where}: actions must be [L>=1, {adim}], got {acts.shape}')
    L = acts.shape[0]
    _float_array(out, 'actions', (L, adim), where)
    _float_array(out, 'rewards', (L,), where)
    _float_array(out, 'proprio', (L + 1, adim), where)
    out['terminal'] = np.bool_(_flag(out, 'terminal', where))
    out['success'] = np.bool_(_flag(out, 'success', where))
    if 'intervention' in out:
        iv = np.asarray(out['intervention'])
        if iv.shape != (L,) or not (iv.dtype == bool or np.issubdtype(iv.dtype, np.integer)):
            raise DatasetError(f'{where}: intervention must be bool [L={L}], got {iv.dtype} {iv.shape}')
        out['intervention'] = iv.astype(bool)
    mode = meta['obs_mode'] if meta else ('pixels' if 'state' not in out else 'state')
    if mode == 'state':
        if 'state' not in out:
            raise DatasetError(f"{where}: state-mode episode has no 'state' array")
        s = np.asarray(out['state'])
        if s.ndim != 2:
            raise DatasetError(f'{where}: state must be [L+1, S], got {s.shape}')
        _float_array(out, 'state', (L + 1, s.shape[1]), where)
        if meta and 'state_dim' in meta and s.shape[1] != int(meta['state_dim']):
            raise DatasetError(f'{where}: state has {s.shape[1]} dims, meta says state_dim={meta["state_dim"]}')
    else:
        cams = list(meta['cameras']) if meta else [k for k in ('front', 'wrist') if k in out]
        if not cams:
            raise DatasetError(f'{where}: pixels-mode episode has no camera arrays')
        for cam in cams:
            if cam not in out:
                raise DatasetError(f'{where}: missing camera array {cam!r}')
            im = np.asarray(out[cam])
            if im.dtype != np.uint8 or im.ndim != 4 or im.shape[0] != L + 1 or im.shape[3] != 3:
                raise DatasetError(f'{where}: camera {cam!r} must be uint8 [L+1={L + 1}, H, W, 3], '
                                   f'got {im.dtype} {im.shape}')
            if meta and im.shape[1:3] != (meta['image_size'], meta['image_size']):
                raise DatasetError(f'{where}: camera {cam!r} images are {im.shape[1]}x{im.shape[2]}, meta says '
                                   f'image_size={meta["image_size"]}')
    return out


# --------------------------------------------------------------------------------------------------- writing
def write_meta(directory: str | Path, meta: Mapping[str, Any]) -> Path:
    """Validate and atomically write meta.json (creates the directory)."""
    meta = validate_meta(meta)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / META_NAME
    data = (json.dumps(meta, indent=2, sort_keys=True) + '\n').encode()
    _atomic_write(path, lambda f: f.write(data))
    return path


def write_episode(directory: str | Path, index: int, arrays: Mapping[str, np.ndarray], *,
                  compress: bool = True) -> Path:
    """Validate (against meta.json if the directory has one) and atomically write episode_<index>.npz."""
    directory = Path(directory)
    if int(index) < 0:
        raise DatasetError(f'episode index must be >= 0, got {index}')
    meta = read_meta(directory) if (directory / META_NAME).exists() else None
    arrays = validate_episode(arrays, meta, where=f'episode {index}')
    directory.mkdir(parents=True, exist_ok=True)
    path = episode_path(directory, index)
    saver = np.savez_compressed if compress else np.savez
    _atomic_write(path, lambda f: saver(f, **{k: np.asarray(v) for k, v in arrays.items()}))
    return path


def next_episode_index(directory: str | Path) -> int:
    idx = episode_indices(directory)
    return idx[-1] + 1 if idx else 0


# --------------------------------------------------------------------------------------------------- reading
def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_NAME
    if not path.is_file():
        raise DatasetError(f'{path}: not found (is {str(directory)!r} an episode dataset directory?)')
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DatasetError(f'{path}: invalid JSON: {e}') from e
    if not isinstance(meta, dict):
        raise DatasetError(f'{path}: must hold a JSON object')
    return validate_meta(meta, where=str(path))


def episode_indices(directory: str | Path) -> list[int]:
    directory = Path(directory)
    if not directory.is_dir():
        raise DatasetError(f'{directory}: not a directory')
    return sorted(int(m.group(1)) for p in directory.iterdir() if (m := EPISODE_RE.match(p.name)))


def read_episode(path: str | Path, meta: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise DatasetError(f'{path}: not found') from None
    except ValueError as e:  # object arrays need pickle: refuse, say so
        raise DatasetError(f'{path}: cannot load without pickle ({e})') from e
    except Exception as e:  # zipfile.BadZipFile, OSError, EOFError on truncated/corrupt files
        raise DatasetError(f'{path}: unreadable ({type(e).__name__}: {e})') from e
    return validate_episode(arrays, meta, where=str(path))


def iter_episodes(directory: str | Path) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """Yield (index, arrays) for every episode in index order, validated against meta.json."""
    meta = read_meta(directory)
    for index in episode_indices(directory):
        yield index, read_episode(episode_path(directory, index), meta)


# --------------------------------------------------------------------------------------------------- buffer
def load_into_buffer(directory: str | Path, buffer, assembler, scaler, demo: bool = True, *,
                     max_episodes: int | None = None, id_prefix: str | None = None) -> int:
    """Encode every episode (images once per frame) and add it to `buffer` with normalised actions.

    Episode ids are `id_prefix + str(index)` (default prefix: '<resolved directory>/episode_'); episodes whose id
    the buffer already holds are skipped, so re-loading demos into a persisted buffer after a restart does not
    duplicate them. All episodes are read and encoded before the first is added, so a bad file leaves the buffer
    unchanged. Returns the number of episodes added.
    """
    meta = read_meta(directory)
    mode = assembler.cfg.obs_mode
    if meta['obs_mode'] != mode:
        raise DatasetError(f'{directory}: dataset obs_mode {meta["obs_mode"]!r} != assembler obs_mode {mode!r}')
    if mode == 'pixels':
        missing = [c for c in assembler.cfg.cameras if c not in meta['cameras']]
        if missing:
            raise DatasetError(f'{directory}: dataset has cameras {meta["cameras"]}, assembler needs {missing}')
    adim = action_dim(meta)
    if buffer.obs_dim != assembler.obs_dim or buffer.action_dim != adim or scaler.action_dim != adim:
        raise ValueError(f'load_into_buffer: buffer is ({buffer.obs_dim}, {buffer.action_dim}), assembler gives '
                         f'obs_dim {assembler.obs_dim}, the action scaler {scaler.action_dim} dims and the '
                         f'dataset\'s actions have {adim} dims')
    if abs(float(meta['max_joint_delta']) - scaler.max_joint_delta) > 1e-9:
        _log.warning('load_into_buffer: dataset max_joint_delta=%g but ActionScaler uses %g: actions are '
                     'normalised (and clipped) with the scaler\'s value', meta['max_joint_delta'],
                     scaler.max_joint_delta)
    prefix = f'{Path(directory).resolve()}/episode_' if id_prefix is None else id_prefix
    pending, skipped = [], 0
    for n, (index, ep) in enumerate(iter_episodes(directory)):
        if max_episodes is not None and n >= max_episodes:
            break
        if buffer.has_episode(prefix + str(index)):
            skipped += 1
            continue
        if len(ep['actions']) > buffer.cfg.capacity:
            raise DatasetError(f'{episode_path(directory, index)}: {len(ep["actions"])} steps exceed the buffer '
                               f'capacity {buffer.cfg.capacity}')
        keys = ('state',) if mode == 'state' else tuple(assembler.cfg.cameras)
        obs = assembler.assemble_batch({'proprio': ep['proprio'], **{k: ep[k] for k in keys}})
        pending.append((index, obs, scaler.normalize(ep['actions']), ep['rewards'].astype(np.float32),
                        bool(ep['terminal']), bool(ep['success']), ep.get('intervention')))
    for index, obs, actions, rewards, terminal, success, interv in pending:
        buffer.add_episode(obs, actions, rewards, terminal, success, demo=demo, intervention=interv,
                           episode_id=prefix + str(index))
    if skipped:
        _log.info('load_into_buffer: %d episode(s) of %s already in the buffer, skipped', skipped, directory)
    return len(pending)
