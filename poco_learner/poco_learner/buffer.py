"""Replay buffer of steps with episode boundaries, optionally persisted append-only (survives `kill -9`).

Contents (learning-code units: observation vectors, NORMALISED actions, see docs/architecture.md)
------------------------------------------------------------------------------------------------
An episode is L steps (obs_t, a_t, r_t, intervention_t), t = 0..L-1, plus the final observation obs_L, and how it
ended: `terminal` (success / failure / e-stop: no bootstrapping past the end) or not (timeout / truncation:
bootstrap from obs_L). Episodes are streamed (`add_step` ... `end_episode`, several may be open at once, e.g. one
per robot) or added whole (`add_episode`). Rewards may be set late (`set_reward`).

Sampling (`sample(B, T, gamma, rng)`) draws start steps t uniformly from FINISHED episodes only (how an episode
ends decides the discount, and rewards may still arrive for open ones), either uniformly over all steps
(`demo_ratio` None or < 0) or round(B * demo_ratio) from demo steps and the rest from online steps (falling back
to whichever kind exists when one is empty). With n = min(T, L - t) it returns float32 arrays:

    obs       [B, D]     obs_t
    actions   [B, T, A]  a_t .. a_{t+T-1}; past the episode end padded with the last valid action a_{L-1}
    rewards   [B, T]     r_{t+k} for k < n, else 0
    valid     [B, T]     1 for k < n (inside the episode), else 0
    returns   [B]        sum_{k<n} gamma^k r_{t+k}
    next_obs  [B, D]     obs_{t+n} (the final observation when t + n == L)
    discount  [B]        0 if the episode ended terminally inside the window (t + n == L and terminal), else gamma^n
    is_demo   [B]        1 for demonstration steps
    intervention [B]     1 if a_t (the chunk's first action) was a human intervention
    intervention_mask [B, T]  per-step intervention flags (0 past the end)

so the T-step TD target is `returns + discount * Q_target(next_obs, a')`. Windows never cross episodes.

Capacity and eviction
---------------------
`capacity` counts stored steps (memory is about (capacity + episodes) x (D + A + small) x 4 bytes; a final
observation takes one extra row per episode). When a step would exceed it, the oldest finished ONLINE episode is
evicted; demo episodes only go once no other finished online episode is left (the episode being added is never
its own victim). Open episodes are never evicted (a warning
is logged if they alone exceed the capacity). An episode longer than the capacity is rejected.

Thread safety: all public methods take one re-entrant lock (ROS callbacks add, a train thread samples).

Validation: every public mutator checks shapes, dtypes convertible to float32, finiteness, episode ids and order
first and raises ValueError without changing memory or disk state.

Episode ids: int or str, unique among stored episodes (open or finished). `add_step` on a finished id raises.

On-disk format (`directory` set)
--------------------------------
    <directory>/log.bin   the record log (append-only between compactions)
    <directory>/lock      flock'ed while a ReplayBuffer has the directory open (a second opener gets an error)

log.bin starts with a header: 8 bytes magic b'POCORB01', uint32 n, n bytes UTF-8 JSON
({"format": "poco_replay_buffer", "version": 1, "obs_dim": D, "action_dim": A, "dtype": "<f4"}), uint32 CRC32 of
the JSON. Then records, all little-endian:

    record  = uint16 0xB0C0 | uint8 type | uint8 0 | uint32 payload_len | uint32 crc32(type byte + payload) | payload
    BEGIN  1: uint64 key, uint8 demo, episode id as JSON (rest of payload)
    STEP   2: uint64 key, uint32 t, uint8 flags (bit 0 = intervention), float32 reward, float32[D] obs, float32[A] action
    REWARD 3: uint64 key, uint32 t, float32 reward                       (late reward; overrides STEP's)
    END    4: uint64 key, uint32 L, uint8 terminal, uint8 success, float32[D] final obs
              (L may be < the number of STEPs: the episode is cut to L steps; used by crash recovery)
    DROP   5: uint64 key                                                 (episode evicted / aborted)

`key` is an internal episode number (BEGIN order). Every record is handed to the kernel with os.write as soon as
it arrives, so `kill -9` of the writer loses nothing already added; fsync happens at most every `flush_interval_s`
(a background thread, only when something was written) and at once on end_episode / add_episode / close, so a
power loss loses at most about the last second. Files are created atomically (temp file + rename + directory
fsync).

Loading (constructing on a directory that has log.bin, or `ReplayBuffer.load(directory)`) replays the log. A bad
record (short read, bad magic or CRC: a torn write) ends the log: the file is truncated there, with a warning
saying how many bytes were dropped. Episodes left open by a crash are closed as truncated (not terminal) at their
last recorded observation: that last step is dropped since its outcome is unknown, so all earlier steps stay
usable with bootstrapping; one-step episodes are dropped.

Disk is bounded too: evicted episodes leave dead records; when dead bytes exceed max(live bytes,
`compact_min_bytes`) the log is rewritten with only live episodes (temp file, fsync, atomic rename), so the file
stays below about 2x the live data + compact_min_bytes. `compact()` forces it.
"""
from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import struct
import threading
import time
import weakref
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Union

import numpy as np

_log = logging.getLogger(__name__)

EpisodeId = Union[int, str]

FILE_MAGIC = b'POCORB01'
FORMAT_VERSION = 1
REC_MAGIC = 0xB0C0
_REC_HDR = struct.Struct('<HBBII')
T_BEGIN, T_STEP, T_REWARD, T_END, T_DROP = 1, 2, 3, 4, 5
_BEGIN = struct.Struct('<QB')
_STEP = struct.Struct('<QIBf')
_REWARD = struct.Struct('<QIf')
_END = struct.Struct('<QIBB')
_DROP = struct.Struct('<Q')
_U32 = struct.Struct('<I')
LOG_NAME = 'log.bin'
LOCK_NAME = 'lock'


@dataclass
class BufferConfig:
    capacity: int = 1_000_000            # stored steps (demo + online)
    directory: str = ''                  # '' = in memory only
    demo_ratio: Optional[float] = None   # None / < 0: uniform over all steps; else fraction of each batch from demos
    flush_interval_s: float = 1.0        # fsync at most this often (kill -9 loses nothing either way, see docstring)
    compact_min_bytes: int = 64 << 20    # rewrite the log only once dead bytes exceed max(live, this)
    action_bound: Optional[float] = None  # if set, reject |action| > bound (e.g. 1.0 catches un-normalised actions)

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f'BufferConfig.capacity must be >= 1, got {self.capacity}')
        if self.demo_ratio is not None and self.demo_ratio > 1:
            raise ValueError(f'BufferConfig.demo_ratio must be <= 1 (or None/negative), got {self.demo_ratio}')
        if not self.flush_interval_s > 0:
            raise ValueError(f'BufferConfig.flush_interval_s must be > 0, got {self.flush_interval_s}')


@dataclass
class _Episode:
    key: int
    id: EpisodeId
    demo: bool
    rows: list = field(default_factory=list)  # step rows, in order
    final_row: int = -1
    ended: bool = False
    terminal: bool = False
    success: bool = False
    nbytes: int = 0  # bytes of its records in the log (for compaction accounting)

    @property
    def length(self) -> int:
        return len(self.rows)


def _rec(rtype: int, payload: bytes) -> bytes:
    crc = zlib.crc32(payload, zlib.crc32(bytes((rtype,))))
    return _REC_HDR.pack(REC_MAGIC, rtype, 0, len(payload), crc) + payload


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_loop(ref: weakref.ref, stop: threading.Event, interval: float) -> None:
    # Holds only a weak reference so an unclosed buffer can still be garbage collected.
    while not stop.wait(interval):
        buf = ref()
        if buf is None:
            return
        buf._sync_if_dirty()
        del buf


class ReplayBuffer:
    """See the module docstring for semantics and the on-disk format."""

    def __init__(self, cfg: BufferConfig | None, obs_dim: int, action_dim: int = 7):
        self.cfg = cfg = cfg or BufferConfig()
        if int(obs_dim) < 1 or int(action_dim) < 1:
            raise ValueError(f'ReplayBuffer: obs_dim and action_dim must be >= 1, got {obs_dim}, {action_dim}')
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self._lock = threading.RLock()
        self._rows = 0
        self._alloc_arrays(1024)
        self._free: list[int] = list(range(self._rows - 1, -1, -1))
        self._episodes: dict[int, _Episode] = {}   # key -> episode, in key (= age) order
        self._by_id: dict[EpisodeId, int] = {}     # id -> key
        self._next_key = 0
        self._num_steps = 0
        self._num_demo_steps = 0
        self._evicted = 0
        self._index_dirty = True
        self._idx_all = self._idx_demo = self._idx_online = np.zeros(0, np.int64)
        # persistence state
        self._fd: int | None = None
        self._lock_fd: int | None = None
        self._dirty = False
        self._last_sync = time.monotonic()
        self._file_bytes = 0
        self._header_bytes = 0
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        self._loading = False
        if cfg.directory:
            self._open_directory(cfg.directory)

    @staticmethod
    def exists(directory: str) -> bool:
        """True if `directory` holds a buffer log (then `load` it rather than create a new one)."""
        return os.path.isfile(os.path.join(directory, LOG_NAME))

    @classmethod
    def load(cls, directory: str, cfg: BufferConfig | None = None) -> 'ReplayBuffer':
        """Open an existing buffer directory (dimensions come from its header)."""
        header = _read_header(os.path.join(directory, LOG_NAME))[0]
        cfg = replace(cfg or BufferConfig(), directory=str(directory))
        return cls(cfg, header['obs_dim'], header['action_dim'])

    # ------------------------------------------------------------------------------------------ storage rows
    def _alloc_arrays(self, rows: int) -> None:
        old = self._rows
        d, a = self.obs_dim, self.action_dim

        def grow(name: str, shape: tuple, dtype: Any, fill: Any = 0) -> None:
            new = np.full(shape, fill, dtype)
            if old:
                new[:old] = getattr(self, name)
            setattr(self, name, new)

        grow('_obs', (rows, d), np.float32)
        grow('_act', (rows, a), np.float32)
        grow('_rew', (rows,), np.float32)
        grow('_next', (rows,), np.int64, -1)   # row of step t+1 (or of the final obs for the last step)
        grow('_t', (rows,), np.int32)          # step index in the episode (L for the final-obs row)
        grow('_len', (rows,), np.int32)        # episode length L (finished episodes)
        grow('_term', (rows,), bool)
        grow('_interv', (rows,), bool)
        grow('_demo', (rows,), bool)
        grow('_succ', (rows,), bool)           # the row's episode ended in success
        grow('_sampleable', (rows,), bool)
        self._rows = rows

    def _take_rows(self, n: int) -> list[int]:
        if len(self._free) < n:
            old = self._rows
            new = max(2 * old, old + n - len(self._free))
            self._alloc_arrays(new)
            self._free = list(range(new - 1, old - 1, -1)) + self._free  # keep low rows first (pop from the end)
        rows = self._free[-n:][::-1]
        del self._free[-n:]
        return rows

    def _release_rows(self, rows: list[int]) -> None:
        if not rows:
            return
        r = np.asarray(rows)
        self._sampleable[r] = False
        self._next[r] = -1
        self._free.extend(rows)

    # ------------------------------------------------------------------------------------------ validation
    def _vec(self, x: Any, dim: int, what: str) -> np.ndarray:
        try:
            v = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as e:
            raise ValueError(f'ReplayBuffer: {what} is not numeric: {e}') from e
        if v.shape != (dim,):
            raise ValueError(f'ReplayBuffer: {what} must have shape ({dim},), got {v.shape}')
        if not np.all(np.isfinite(v)):
            raise ValueError(f'ReplayBuffer: {what} has non-finite values')
        return v

    def _check_action(self, a: np.ndarray, what: str) -> None:
        b = self.cfg.action_bound
        if b is not None and np.any(np.abs(a) > b + 1e-6):
            raise ValueError(f'ReplayBuffer: {what} exceeds action_bound {b} (max |a| = {np.abs(a).max():.4g}); '
                             'the buffer stores NORMALISED actions (ActionScaler.normalize)')

    @staticmethod
    def _scalar(x: Any, what: str) -> float:
        try:
            v = float(x)
        except (TypeError, ValueError) as e:
            raise ValueError(f'ReplayBuffer: {what} must be a real number, got {x!r}') from e
        if not np.isfinite(v):
            raise ValueError(f'ReplayBuffer: {what} must be finite, got {v}')
        return v

    @staticmethod
    def _check_id(episode_id: Any) -> EpisodeId:
        if isinstance(episode_id, (bool, np.bool_)):
            raise ValueError(f'ReplayBuffer: episode_id must be int or str, got {episode_id!r}')
        if isinstance(episode_id, (int, np.integer)):
            return int(episode_id)
        if isinstance(episode_id, str):
            return episode_id
        raise ValueError(f'ReplayBuffer: episode_id must be int or str, got {type(episode_id).__name__}')

    def _episode(self, episode_id: Any) -> _Episode:
        eid = self._check_id(episode_id)
        key = self._by_id.get(eid)
        if key is None:
            raise ValueError(f'ReplayBuffer: unknown episode {eid!r} (never started, or evicted)')
        return self._episodes[key]

    # ------------------------------------------------------------------------------------------ public API
    def add_step(self, episode_id: EpisodeId, obs: np.ndarray, action: np.ndarray, reward: float = 0.0, *,
                 demo: bool = False, intervention: bool = False) -> int:
        """Append one step to an open episode (started by its first step). Returns the step index."""
        eid = self._check_id(episode_id)
        o = self._vec(obs, self.obs_dim, 'obs')
        a = self._vec(action, self.action_dim, 'action')
        self._check_action(a, 'action')
        r = self._scalar(reward, 'reward')
        with self._lock:
            key = self._by_id.get(eid)
            ep = self._episodes[key] if key is not None else None
            if ep is not None and ep.ended:
                raise ValueError(f'ReplayBuffer: episode {eid!r} has already ended; episode ids must be unique')
            if ep is not None and ep.demo != bool(demo):
                raise ValueError(f'ReplayBuffer: episode {eid!r} was started with demo={ep.demo}, got demo={demo}')
            data = b''
            if ep is None:
                key = self._next_key
                data += _rec(T_BEGIN, _BEGIN.pack(key, int(bool(demo))) + json.dumps(eid).encode())
                t = 0
            else:
                t = ep.length
            data += _rec(T_STEP, _STEP.pack(key, t, int(bool(intervention)), r) + o.tobytes() + a.tobytes())
            self._write(data)
            if ep is None:
                ep = self._apply_begin(key, eid, bool(demo))
            self._apply_step(ep, t, r, o, a, bool(intervention))
            ep.nbytes += len(data)
            self._enforce_capacity()
            return t

    def set_reward(self, episode_id: EpisodeId, step_index: int, reward: float) -> None:
        """Set r_t of a stored step (open or finished episode); rewards may arrive after the step."""
        r = self._scalar(reward, 'reward')
        with self._lock:
            ep = self._episode(episode_id)
            t = int(step_index)
            if not 0 <= t < ep.length:
                raise ValueError(f'ReplayBuffer: step_index {t} out of range for episode {ep.id!r} '
                                 f'with {ep.length} steps')
            self._write(_rec(T_REWARD, _REWARD.pack(ep.key, t, r)))
            self._rew[ep.rows[t]] = r

    def end_episode(self, episode_id: EpisodeId, final_obs: np.ndarray, terminal: bool, success: bool = False) -> None:
        """Close an open episode. terminal: success/failure/e-stop (no bootstrap); False: timeout (bootstrap)."""
        o = self._vec(final_obs, self.obs_dim, 'final_obs')
        with self._lock:
            ep = self._episode(episode_id)
            if ep.ended:
                raise ValueError(f'ReplayBuffer: episode {ep.id!r} has already ended')
            data = _rec(T_END, _END.pack(ep.key, ep.length, int(bool(terminal)), int(bool(success))) + o.tobytes())
            self._write(data)
            ep.nbytes += len(data)
            self._apply_end(ep, ep.length, o, bool(terminal), bool(success))
            self._sync()

    def abort_episode(self, episode_id: EpisodeId) -> None:
        """Drop an open (or finished) episode entirely, e.g. when its producer went away mid-episode."""
        with self._lock:
            self._drop(self._episode(episode_id))

    def add_episode(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminal: bool,
                    success: bool = False, *, demo: bool = False, intervention: np.ndarray | None = None,
                    episode_id: EpisodeId | None = None) -> EpisodeId:
        """Add a whole episode: obs [L+1, D] (index L = final obs), actions [L, A], rewards [L]. Returns its id."""
        obs = np.asarray(obs, dtype=np.float32)
        actions = np.asarray(actions, dtype=np.float32)
        rewards = np.asarray(rewards, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[1] != self.action_dim or actions.shape[0] < 1:
            raise ValueError(f'ReplayBuffer.add_episode: actions must be [L>=1, {self.action_dim}], '
                             f'got {actions.shape}')
        L = actions.shape[0]
        if obs.shape != (L + 1, self.obs_dim):
            raise ValueError(f'ReplayBuffer.add_episode: obs must be [L+1={L + 1}, {self.obs_dim}], got {obs.shape}')
        if rewards.shape != (L,):
            raise ValueError(f'ReplayBuffer.add_episode: rewards must be [L={L}], got {rewards.shape}')
        interv = np.zeros(L, bool) if intervention is None else np.asarray(intervention)
        if interv.shape != (L,):
            raise ValueError(f'ReplayBuffer.add_episode: intervention must be [L={L}], got {interv.shape}')
        interv = interv.astype(bool)
        for name, arr in (('obs', obs), ('actions', actions), ('rewards', rewards)):
            if not np.all(np.isfinite(arr)):
                raise ValueError(f'ReplayBuffer.add_episode: {name} has non-finite values')
        self._check_action(actions, 'actions')
        if L > self.cfg.capacity:
            raise ValueError(f'ReplayBuffer.add_episode: episode of {L} steps exceeds capacity {self.cfg.capacity}')
        with self._lock:
            if episode_id is None:
                episode_id = f'auto-{self._next_key}'
                while episode_id in self._by_id:
                    episode_id += '+'
            eid = self._check_id(episode_id)
            if eid in self._by_id:
                raise ValueError(f'ReplayBuffer.add_episode: episode id {eid!r} already stored')
            key = self._next_key
            parts = [_rec(T_BEGIN, _BEGIN.pack(key, int(bool(demo))) + json.dumps(eid).encode())]
            for t in range(L):
                parts.append(_rec(T_STEP, _STEP.pack(key, t, int(interv[t]), float(rewards[t]))
                                  + obs[t].tobytes() + actions[t].tobytes()))
            parts.append(_rec(T_END, _END.pack(key, L, int(bool(terminal)), int(bool(success))) + obs[L].tobytes()))
            data = b''.join(parts)
            self._write(data)
            ep = self._apply_begin(key, eid, bool(demo))
            self._apply_steps(ep, rewards, obs[:L], actions, interv)
            self._apply_end(ep, L, obs[L], bool(terminal), bool(success))
            ep.nbytes = len(data)
            self._enforce_capacity(protect=key)
            self._sync()
            return eid

    def sample(self, batch_size: int, horizon: int, gamma: float,
               rng: np.random.Generator | int | None = None) -> dict[str, np.ndarray]:
        """Sample B windows of T steps from finished episodes (see module docstring for the returned arrays)."""
        B, T = int(batch_size), int(horizon)
        if B < 1 or T < 1:
            raise ValueError(f'ReplayBuffer.sample: batch_size and horizon must be >= 1, got {B}, {T}')
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f'ReplayBuffer.sample: gamma must be in [0, 1], got {gamma}')
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        with self._lock:
            self._refresh_index()
            if not len(self._idx_all):
                raise ValueError('ReplayBuffer.sample: no finished episodes to sample from')
            ratio = self.cfg.demo_ratio
            if ratio is None or ratio < 0 or not len(self._idx_demo) or not len(self._idx_online):
                starts = self._idx_all[rng.integers(len(self._idx_all), size=B)]
            else:
                nd = int(round(B * ratio))
                starts = np.concatenate([self._idx_demo[rng.integers(len(self._idx_demo), size=nd)],
                                         self._idx_online[rng.integers(len(self._idx_online), size=B - nd)]])
                starts = starts[rng.permutation(B)]
            t = self._t[starts].astype(np.int64)
            L = self._len[starts].astype(np.int64)
            n = np.minimum(T, L - t)
            rows = np.empty((B, T), np.int64)
            rows[:, 0] = starts
            for k in range(1, T):
                # Follow next-pointers while inside the window; past the end stay on the last step (padding).
                rows[:, k] = np.where(k < n, self._next[rows[:, k - 1]], rows[:, k - 1])
            valid = np.arange(T)[None, :] < n[:, None]
            last = rows[np.arange(B), n - 1]
            next_rows = self._next[last]
            powers = gamma ** np.arange(T, dtype=np.float64)
            rewards = np.where(valid, self._rew[rows], 0.0)
            ended = (t + n == L) & self._term[starts]
            out = {
                'obs': self._obs[starts],
                'actions': self._act[rows],
                'rewards': rewards.astype(np.float32),
                'valid': valid.astype(np.float32),
                'returns': (rewards * powers).sum(axis=1).astype(np.float32),
                'next_obs': self._obs[next_rows],
                'discount': np.where(ended, 0.0, float(gamma) ** n).astype(np.float32),
                'is_demo': self._demo[starts].astype(np.float32),
                'is_success': self._succ[starts].astype(np.float32),
                'intervention': self._interv[starts].astype(np.float32),
                'intervention_mask': (self._interv[rows] & valid).astype(np.float32),
            }
            return out

    # ------------------------------------------------------------------------------------------ inspection
    def __len__(self) -> int:
        return self._num_steps

    @property
    def num_episodes(self) -> int:
        """Finished (sampleable) episodes."""
        with self._lock:
            return sum(1 for e in self._episodes.values() if e.ended)

    @property
    def num_demo_steps(self) -> int:
        return self._num_demo_steps

    @property
    def num_online_steps(self) -> int:
        return self._num_steps - self._num_demo_steps

    @property
    def num_successes(self) -> int:
        with self._lock:
            return sum(1 for e in self._episodes.values() if e.ended and e.success)

    @property
    def open_episode_ids(self) -> list[EpisodeId]:
        with self._lock:
            return [e.id for e in self._episodes.values() if not e.ended]

    def num_sampleable(self) -> int:
        """Steps that `sample` can start from (steps of finished episodes)."""
        with self._lock:
            self._refresh_index()
            return len(self._idx_all)

    def has_episode(self, episode_id: EpisodeId) -> bool:
        with self._lock:
            return self._check_id(episode_id) in self._by_id

    def has_finished_episode(self, episode_id: EpisodeId) -> bool:
        """Stored and ended (its steps are final: nothing may add to or remove it through the online path)."""
        with self._lock:
            key = self._by_id.get(self._check_id(episode_id))
            return key is not None and self._episodes[key].ended

    def episode_ids(self) -> list[EpisodeId]:
        """All stored episodes, oldest first."""
        with self._lock:
            return [e.id for e in self._episodes.values()]

    def stats(self) -> dict[str, int]:
        with self._lock:
            eps = list(self._episodes.values())
            fin = [e for e in eps if e.ended]
            return {
                'steps': self._num_steps,
                'demo_steps': self._num_demo_steps,
                'online_steps': self._num_steps - self._num_demo_steps,
                'episodes': len(fin),
                'open_episodes': len(eps) - len(fin),
                'demo_episodes': sum(e.demo for e in fin),
                'online_episodes': sum(not e.demo for e in fin),
                'successes': sum(e.success for e in fin),
                'online_successes': sum(e.success and not e.demo for e in fin),
                'sampleable_steps': sum(e.length for e in fin),
                'evicted_episodes': self._evicted,
                'capacity': self.cfg.capacity,
            }

    def get_episode(self, episode_id: EpisodeId) -> dict[str, Any]:
        """Copy of one stored episode: obs [L+1 or L (open), D], actions [L, A], rewards, intervention, flags."""
        with self._lock:
            ep = self._episode(episode_id)
            rows = np.asarray(ep.rows, np.int64)
            obs_rows = np.append(rows, ep.final_row) if ep.ended else rows
            return {'id': ep.id, 'obs': self._obs[obs_rows].copy(), 'actions': self._act[rows].copy(),
                    'rewards': self._rew[rows].copy(), 'intervention': self._interv[rows].copy(),
                    'demo': ep.demo, 'ended': ep.ended, 'terminal': ep.terminal, 'success': ep.success}

    # ------------------------------------------------------------------------------------------ state changes
    def _apply_begin(self, key: int, eid: EpisodeId, demo: bool) -> _Episode:
        ep = _Episode(key=key, id=eid, demo=demo)
        self._episodes[key] = ep
        self._by_id[eid] = key
        self._next_key = max(self._next_key, key + 1)
        return ep

    def _apply_step(self, ep: _Episode, t: int, r: float, o: np.ndarray, a: np.ndarray, interv: bool) -> None:
        (row,) = self._take_rows(1)
        self._obs[row], self._act[row], self._rew[row] = o, a, r
        self._t[row], self._interv[row], self._demo[row] = t, interv, ep.demo
        self._next[row] = -1
        self._sampleable[row] = False
        if ep.rows:
            self._next[ep.rows[-1]] = row
        ep.rows.append(row)
        self._num_steps += 1
        self._num_demo_steps += ep.demo

    def _apply_steps(self, ep: _Episode, r: np.ndarray, o: np.ndarray, a: np.ndarray, interv: np.ndarray) -> None:
        n = len(r)
        rows = np.asarray(self._take_rows(n), np.int64)
        self._obs[rows], self._act[rows], self._rew[rows] = o, a, r
        self._t[rows] = np.arange(ep.length, ep.length + n)
        self._interv[rows], self._demo[rows], self._sampleable[rows] = interv, ep.demo, False
        self._next[rows[:-1]] = rows[1:]
        self._next[rows[-1]] = -1
        if ep.rows:
            self._next[ep.rows[-1]] = rows[0]
        ep.rows.extend(rows.tolist())
        self._num_steps += n
        self._num_demo_steps += n * ep.demo

    def _apply_end(self, ep: _Episode, length: int, final_obs: np.ndarray, terminal: bool, success: bool) -> None:
        if length < ep.length:
            # Cut (crash recovery): step `length`'s row becomes the final-obs row, later rows are freed.
            final_row = ep.rows[length]
            extra = ep.rows[length + 1:]
            self._release_rows(extra)
            del ep.rows[length:]
            cut = 1 + len(extra)
            self._num_steps -= cut
            self._num_demo_steps -= cut * ep.demo
        else:
            (final_row,) = self._take_rows(1)
        self._obs[final_row] = final_obs
        self._t[final_row], self._next[final_row], self._sampleable[final_row] = length, -1, False
        self._interv[final_row] = False
        rows = np.asarray(ep.rows, np.int64)
        if len(rows):
            self._next[rows[-1]] = final_row
            self._len[rows], self._term[rows], self._sampleable[rows] = length, terminal, True
            self._succ[rows] = bool(success)
        ep.final_row, ep.ended, ep.terminal, ep.success = final_row, True, terminal, success
        self._index_dirty = True

    def _apply_drop(self, ep: _Episode) -> None:
        self._release_rows(ep.rows + ([ep.final_row] if ep.final_row >= 0 else []))
        self._num_steps -= ep.length
        self._num_demo_steps -= ep.length * ep.demo
        del self._episodes[ep.key]
        del self._by_id[ep.id]
        self._index_dirty = True

    def _drop(self, ep: _Episode) -> None:
        self._write(_rec(T_DROP, _DROP.pack(ep.key)))
        self._apply_drop(ep)
        self._maybe_compact()

    def _enforce_capacity(self, protect: int = -1) -> None:
        # `protect`: the episode just added is never its own victim (else a full demo set would make every new
        # online episode vanish at once; over capacity, the oldest demo goes instead).
        if self._loading:
            return
        while self._num_steps > self.cfg.capacity:
            done = [e for e in self._episodes.values() if e.ended and e.key != protect]
            victim = next((e for e in done if not e.demo), None) or next(iter(done), None)
            if victim is None:
                _log.warning('ReplayBuffer: open episodes alone hold %d steps > capacity %d; nothing evictable',
                             self._num_steps, self.cfg.capacity)
                return
            self._drop(victim)
            self._evicted += 1

    def _refresh_index(self) -> None:
        if not self._index_dirty:
            return
        self._idx_all = np.flatnonzero(self._sampleable)
        demo = self._demo[self._idx_all]
        self._idx_demo, self._idx_online = self._idx_all[demo], self._idx_all[~demo]
        self._index_dirty = False

    # ------------------------------------------------------------------------------------------ persistence
    def _write(self, data: bytes) -> None:
        if self._loading or not self.cfg.directory:
            return
        if self._fd is None:  # never silently stop persisting
            raise ValueError(f'ReplayBuffer: {self.cfg.directory!r} is closed; reopen it to add data')
        view = memoryview(data)
        try:
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
        except OSError:
            # e.g. disk full: cut the partial record off again, or the next load would stop (and truncate) here.
            try:
                os.ftruncate(self._fd, self._file_bytes)
            except OSError:
                pass
            raise
        self._file_bytes += len(data)
        self._dirty = True
        if time.monotonic() - self._last_sync >= self.cfg.flush_interval_s:
            self._sync()

    def _sync(self) -> None:
        if self._fd is not None and self._dirty and not self._loading:
            os.fsync(self._fd)
            self._dirty = False
            self._last_sync = time.monotonic()

    def _sync_if_dirty(self) -> None:
        with self._lock:
            self._sync()

    def flush(self) -> None:
        """fsync now (normally not needed: see flush_interval_s)."""
        with self._lock:
            self._sync()

    def close(self) -> None:
        with self._lock:
            self._stop.set()
            if self._fd is not None:
                self._sync()
                os.close(self._fd)
                self._fd = None
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None
        if self._syncer is not None and self._syncer is not threading.current_thread():
            self._syncer.join(timeout=5)

    def __enter__(self) -> 'ReplayBuffer':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _header_bytes_for(self) -> bytes:
        meta = json.dumps({'format': 'poco_replay_buffer', 'version': FORMAT_VERSION, 'obs_dim': self.obs_dim,
                           'action_dim': self.action_dim, 'dtype': '<f4'}).encode()
        return FILE_MAGIC + _U32.pack(len(meta)) + meta + _U32.pack(zlib.crc32(meta))

    def _open_directory(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self._lock_fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise ValueError(f'ReplayBuffer: directory {directory!r} is in use by another ReplayBuffer') from None
        try:
            path = os.path.join(directory, LOG_NAME)
            if os.path.exists(path):
                self._replay(path)
            else:
                self._write_file_atomically(path, [self._header_bytes_for()])
                self._header_bytes = self._file_bytes = os.path.getsize(path)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._recover_open_episodes()
            self._enforce_capacity()
            self._sync()
        except BaseException:
            self.close()
            raise
        self._syncer = threading.Thread(target=_sync_loop, name='replay-buffer-fsync', daemon=True,
                                        args=(weakref.ref(self), self._stop, self.cfg.flush_interval_s))
        self._syncer.start()

    @staticmethod
    def _write_file_atomically(path: str, chunks: list[bytes]) -> None:
        tmp = f'{path}.tmp-{os.getpid()}'
        with open(tmp, 'wb') as f:
            for c in chunks:
                f.write(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path) or '.')

    def _replay(self, path: str) -> None:
        header, hdr_len = _read_header(path)
        if (header['obs_dim'], header['action_dim']) != (self.obs_dim, self.action_dim):
            raise ValueError(f'ReplayBuffer: {path!r} holds obs_dim={header["obs_dim"]}, action_dim='
                             f'{header["action_dim"]}, but obs_dim={self.obs_dim}, action_dim={self.action_dim} '
                             'were requested')
        size = os.path.getsize(path)
        D, A = self.obs_dim, self.action_dim
        step_len = _STEP.size + 4 * (D + A)
        good = hdr_len
        self._loading = True
        try:
            with open(path, 'rb', buffering=1 << 20) as f:
                f.seek(hdr_len)
                while True:
                    hdr = f.read(_REC_HDR.size)
                    if len(hdr) < _REC_HDR.size:
                        break
                    magic, rtype, _, plen, crc = _REC_HDR.unpack(hdr)
                    if magic != REC_MAGIC or plen > size:
                        break
                    payload = f.read(plen)
                    if len(payload) < plen or zlib.crc32(payload, zlib.crc32(bytes((rtype,)))) != crc:
                        break
                    self._replay_record(rtype, payload, D, A, step_len, good, _REC_HDR.size + plen)
                    good += _REC_HDR.size + plen
        finally:
            self._loading = False
        if good < size:
            _log.warning('ReplayBuffer: %s: dropped %d bytes after offset %d (torn or corrupt tail from an '
                         'interrupted write)', path, size - good, good)
            os.truncate(path, good)
        self._header_bytes, self._file_bytes = hdr_len, good

    def _replay_record(self, rtype: int, p: bytes, D: int, A: int, step_len: int, offset: int, nbytes: int) -> None:
        def corrupt(msg: str) -> ValueError:
            return ValueError(f'ReplayBuffer: inconsistent log record at offset {offset}: {msg}')

        if rtype == T_BEGIN:
            key, demo = _BEGIN.unpack_from(p)
            eid = json.loads(p[_BEGIN.size:].decode())
            if key in self._episodes or eid in self._by_id:
                raise corrupt(f'episode key {key} / id {eid!r} begun twice')
            ep = self._apply_begin(key, eid, bool(demo))
        elif rtype == T_STEP:
            if len(p) != step_len:
                raise corrupt(f'STEP payload {len(p)} bytes, expected {step_len}')
            key, t, flags, r = _STEP.unpack_from(p)
            ep = self._episodes.get(key)
            if ep is None or ep.ended or t != ep.length:
                raise corrupt(f'STEP {t} for episode key {key} out of order')
            o = np.frombuffer(p, np.float32, D, _STEP.size)
            a = np.frombuffer(p, np.float32, A, _STEP.size + 4 * D)
            self._apply_step(ep, t, r, o, a, bool(flags & 1))
        elif rtype == T_REWARD:
            key, t, r = _REWARD.unpack_from(p)
            ep = self._episodes.get(key)
            if ep is None or not 0 <= t < ep.length:
                raise corrupt(f'REWARD for unknown step {t} of episode key {key}')
            self._rew[ep.rows[t]] = r
            return  # folded into STEP on compaction: counts as dead bytes
        elif rtype == T_END:
            key, length, term, succ = _END.unpack_from(p)
            ep = self._episodes.get(key)
            if ep is None or ep.ended or not 1 <= length <= ep.length or len(p) != _END.size + 4 * D:
                raise corrupt(f'END for episode key {key}')
            self._apply_end(ep, length, np.frombuffer(p, np.float32, D, _END.size), bool(term), bool(succ))
        elif rtype == T_DROP:
            (key,) = _DROP.unpack_from(p)
            ep = self._episodes.get(key)
            if ep is None:
                raise corrupt(f'DROP of unknown episode key {key}')
            self._apply_drop(ep)
            return
        else:
            raise corrupt(f'unknown record type {rtype}')
        ep.nbytes += nbytes

    def _recover_open_episodes(self) -> None:
        open_eps = [e for e in self._episodes.values() if not e.ended]
        if not open_eps:
            return
        closed = dropped = 0
        for ep in open_eps:
            if ep.length >= 2:
                # The last step's outcome (next obs, end) is unknown: end the episode, truncated, at its obs.
                L = ep.length - 1
                final = self._obs[ep.rows[L]].copy()
                data = _rec(T_END, _END.pack(ep.key, L, 0, 0) + final.tobytes())
                self._write(data)
                ep.nbytes += len(data)
                self._apply_end(ep, L, final, False, False)
                closed += 1
            else:
                self._drop(ep)
                dropped += 1
        _log.warning('ReplayBuffer: %d episode(s) were still open when the log was last written (crash, or closed '
                     'mid-episode): %d closed '
                     'as truncated at their last observation, %d one-step episode(s) dropped',
                     len(open_eps), closed, dropped)

    def _maybe_compact(self) -> None:
        if self._fd is None or self._loading:
            return
        live = sum(e.nbytes for e in self._episodes.values())
        dead = self._file_bytes - self._header_bytes - live
        if dead > max(live, self.cfg.compact_min_bytes):
            self.compact()

    def compact(self) -> None:
        """Rewrite the log with only the live episodes (atomic: temp file + fsync + rename)."""
        with self._lock:
            if self._fd is None:
                return
            path = os.path.join(self.cfg.directory, LOG_NAME)
            chunks = [self._header_bytes_for()]
            total = len(chunks[0])
            for ep in self._episodes.values():
                buf = io.BytesIO()
                buf.write(_rec(T_BEGIN, _BEGIN.pack(ep.key, int(ep.demo)) + json.dumps(ep.id).encode()))
                for t, row in enumerate(ep.rows):
                    buf.write(_rec(T_STEP, _STEP.pack(ep.key, t, int(self._interv[row]), float(self._rew[row]))
                                   + self._obs[row].tobytes() + self._act[row].tobytes()))
                if ep.ended:
                    buf.write(_rec(T_END, _END.pack(ep.key, ep.length, int(ep.terminal), int(ep.success))
                                   + self._obs[ep.final_row].tobytes()))
                data = buf.getvalue()
                ep.nbytes = len(data)
                chunks.append(data)
                total += len(data)
            self._write_file_atomically(path, chunks)
            os.close(self._fd)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            self._header_bytes, self._file_bytes = len(chunks[0]), total
            self._dirty = False
            _log.info('ReplayBuffer: compacted %s to %d bytes', path, total)


def _read_header(path: str) -> tuple[dict, int]:
    try:
        with open(path, 'rb') as f:
            head = f.read(12)
            if len(head) < 12 or head[:8] != FILE_MAGIC:
                raise ValueError(f'ReplayBuffer: {path!r} is not a replay buffer log (bad magic)')
            (n,) = _U32.unpack_from(head, 8)
            meta = f.read(n)
            crc = f.read(4)
    except FileNotFoundError:
        raise FileNotFoundError(f'ReplayBuffer: no buffer log at {path!r}') from None
    if len(meta) < n or len(crc) < 4 or _U32.unpack(crc)[0] != zlib.crc32(meta):
        raise ValueError(f'ReplayBuffer: {path!r} has a corrupt header')
    header = json.loads(meta.decode())
    if header.get('format') != 'poco_replay_buffer' or header.get('version') != FORMAT_VERSION:
        raise ValueError(f'ReplayBuffer: {path!r}: unsupported format {header.get("format")!r} '
                         f'version {header.get("version")!r}')
    return header, 12 + n + 4
