"""What the policy node does each tick, as plain Python (no ROS), so it is unit-testable.

- `WeightsGate`: checks incoming weights (poco_policy.weights: bounds, robot match, signature, sha256; then
  load, finiteness, a test forward pass) and keeps the last good policy; `Mailbox`: the worker thread it runs on.
- `ChunkRunner`: samples a chunk when the previous one is used up, hands out one action per tick, and swaps
  to pending weights only at chunk boundaries (never mid-chunk: a chunk is one coherent plan).
- `Safety`: joint-limit clamping, end-effector box check (an unknown position counts as outside) and input
  staleness (watchdog).
- `EstopMonitor`: the e-stop's state from its messages and, in heartbeat mode, from their absence.
- `DropCounter`: counts dropped input messages per reason and throttles their log lines per reason (the
  nodes' callbacks never raise: a bad message is counted, logged at most every few seconds, and dropped).
- `use_sim_time_from_env`: the sim graph's switch to sim time for nodes started by the runner / launch.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from poco_policy.weights import WeightsLimits, WeightsRejected, precheck  # noqa: F401 (re-exported)


SIM_TIME_ENV = 'POCO_USE_SIM_TIME'


class BadInput(ValueError):
    """A message that must be dropped; `reason` is a short fixed label (the counter key), the text the detail."""

    def __init__(self, reason: str, detail: str = ''):
        super().__init__(detail or reason)
        self.reason = reason


class DropCounter:
    """Dropped inputs by reason, with a per-reason log throttle of our own.

    rclpy's throttled logging keys its filter state by call site and raises when one call site is used with
    different filter settings; one `drop()` call site with no rclpy filter avoids that class of crash, and the
    throttle is per reason (a flood of one kind of bad message does not hide another kind)."""

    def __init__(self, throttle_s: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.throttle_s = throttle_s
        self._clock = clock
        self.counts: dict[str, int] = {}
        self._logged: dict[str, tuple[float, int]] = {}  # reason -> (time, count) of its last log line

    def drop(self, reason: str) -> Optional[str]:
        """Count one dropped message. Returns the suffix for a log line when this reason may log now
        (first time, or throttle_s after its last line), else None."""
        n = self.counts[reason] = self.counts.get(reason, 0) + 1
        return self.allow(reason, n)

    def allow(self, key: str, n: Optional[int] = None) -> Optional[str]:
        """Throttle only (no counting): the suffix when `key` may log now, else None."""
        now = self._clock()
        last = self._logged.get(key)
        if last is not None and now - last[0] < self.throttle_s:
            return None
        since = (n - last[1]) if (last is not None and n is not None) else None
        self._logged[key] = (now, n if n is not None else 0)
        if n is None:
            return ''
        return f'({n} so far' + (f', {since} in the last {now - last[0]:.0f} s)' if since is not None else ')')

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        return ', '.join(f'{k}: {v}' for k, v in sorted(self.counts.items())) or 'none'


def use_sim_time_from_env(node, environ=None) -> bool:
    """Switch `node` to sim time (the standard `use_sim_time` parameter) when $POCO_USE_SIM_TIME is 1/true.

    The sim graph sets the variable for every node but the sim (graph.py says why a variable and not a
    parameter file); a node started by hand uses `-p use_sim_time:=true` as usual. Returns whether the node
    clock follows /clock now. rclpy is imported here only, so this module stays importable without ROS."""
    env = os.environ if environ is None else environ
    if env.get(SIM_TIME_ENV, '').strip().lower() in ('1', 'true', 'yes', 'on'):
        from rclpy.parameter import Parameter
        if not node.get_parameter('use_sim_time').value:
            node.set_parameters([Parameter('use_sim_time', Parameter.Type.BOOL, True)])
    return bool(node.get_parameter('use_sim_time').value)


class WeightsGate:
    """Validates weight payloads; the policy keeps serving the last good weights when a payload is bad.

    Order (cheapest first, nothing deserialised before the bounds hold): `weights.precheck` (version and its
    jump, format, sizes, signature when a key is configured, sha256, bounded metadata JSON, the safetensors
    header parsed by hand, the actor config against the robot and the bounds), then the loader (safetensors
    only), finiteness, and `probe(policy)`, a test forward pass. Runs on the weights worker thread, never on
    the control executor."""

    def __init__(self, loader: Callable[[bytes, dict], object], limits: Optional[WeightsLimits] = None,
                 key: Optional[bytes] = None, probe: Optional[Callable[[object], None]] = None):
        # loader(payload, metadata) -> policy; it must not unpickle anything (safetensors only).
        self._loader = loader
        self.limits = limits   # None: no robot to match (plain-Python uses); the node always gives limits
        self.key = key
        self.probe = probe
        self.version = 0

    def check(self, version: int, fmt: str, sha256: str, payload: bytes, metadata: str, signature: str = '',
              trusted: bool = False):
        """`trusted`: a local file the operator placed (initial weights): no signature, no version bounds."""
        meta, _ = precheck(version, fmt, sha256, payload, metadata, signature, 0 if trusted else self.version,
                           self.limits, None if trusted else self.key)
        try:
            policy = self._loader(payload, meta)
        except Exception as e:  # a bad payload must never take the node down
            raise WeightsRejected('cannot load', f'cannot load payload: {str(e)[:300]}') from e
        for name, p in getattr(policy, 'state_dict', lambda: {})().items():
            if hasattr(p, 'isfinite') and not bool(p.isfinite().all()):
                raise WeightsRejected('non-finite', f'non-finite values in {name}')
        if self.probe is not None:
            try:
                self.probe(policy)
            except WeightsRejected:
                raise
            except Exception as e:  # noqa: BLE001
                raise WeightsRejected('test forward pass', f'{type(e).__name__}: {str(e)[:300]}') from e
        return policy, meta

    def accept(self, version: int):
        self.version = version


class Mailbox:
    """One worker thread that handles items one at a time; at most one item waits (a newer one replaces it).

    The policy node hands raw weights messages to it, so deserialisation and the test forward pass never run
    on the control executor. `handler(item)` must not raise (the node's handler is guarded)."""

    def __init__(self, handler: Callable[[object], None], name: str = 'mailbox'):
        self._handler = handler
        self._cv = threading.Condition()
        self._item = None
        self._closed = False
        self.busy = False
        self.superseded = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item) -> bool:
        """Queue `item`; returns True when it replaced one that was still waiting."""
        with self._cv:
            replaced = self._item is not None
            self.superseded += int(replaced)
            self._item = item
            self._cv.notify()
        return replaced

    def idle(self) -> bool:
        with self._cv:
            return self._item is None and not self.busy

    def close(self, timeout: float = 2.0):
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _run(self):
        while True:
            with self._cv:
                while self._item is None and not self._closed:
                    self._cv.wait()
                if self._closed:
                    return
                item, self._item = self._item, None
                self.busy = True
            try:
                self._handler(item)
            except Exception:  # noqa: BLE001 - the worker must outlive any item
                pass
            finally:
                with self._cv:
                    self.busy = False


class ChunkRunner:
    """Executes action chunks step by step; weights change only between chunks."""

    def __init__(self, sample_fn: Callable[[object, np.ndarray, bool], np.ndarray]):
        # sample_fn(policy, obs, deterministic) -> [T, A] normalised chunk
        self._sample = sample_fn
        self.policy = None
        self.version = 0
        self._pending: Optional[tuple] = None
        self._lock = threading.Lock()  # offer() comes from the weights worker thread
        self.chunk: Optional[np.ndarray] = None
        self.index = 0
        self.chunks_started = 0

    def offer(self, policy, version: int):
        """New weights: used from the next chunk on."""
        with self._lock:
            self._pending = (policy, version)

    def swap_if_pending(self) -> bool:
        with self._lock:
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
        """True when the position is outside the box or unknown (None): the box is never silently off."""
        if ee_pos is None:
            return True
        return bool(np.any(ee_pos < self.lim.box_min) or np.any(ee_pos > self.lim.box_max))

    def stale(self, stamps: dict[str, Optional[float]], now: Optional[float] = None) -> list[str]:
        """Names of inputs older than the tolerance (or never received)."""
        now = time.monotonic() if now is None else now
        return [k for k, t in stamps.items() if t is None or now - t > self.lim.staleness_s]


class EstopMonitor:
    """E-stop from messages (`true` = pressed, `false` = released) and, when `heartbeat_timeout_s` > 0, from
    silence: no message for longer than that counts as pressed (a cut cable, a dead button node), counting from
    start-up until the first message. Times are steady seconds (a button is a wall-clock device)."""

    def __init__(self, heartbeat_timeout_s: float, now: float):
        self.heartbeat_timeout_s = float(heartbeat_timeout_s)
        self.started = now
        self.last_message: Optional[float] = None
        self.pressed = False          # the newest message said pressed
        self.messages = 0

    def on_message(self, pressed: bool, now: float) -> None:
        self.last_message, self.pressed = now, bool(pressed)
        self.messages += 1

    def silence(self, now: float) -> float:
        return now - (self.started if self.last_message is None else self.last_message)

    def heartbeat_lost(self, now: float) -> Optional[str]:
        """Why the heartbeat counts as lost now, else None (always None with the heartbeat off)."""
        if self.heartbeat_timeout_s <= 0:
            return None
        quiet = self.silence(now)
        if quiet <= self.heartbeat_timeout_s:
            return None
        what = 'no e-stop heartbeat yet' if self.last_message is None else 'e-stop heartbeat lost'
        return f'{what}: {quiet:.2f} s > estop_heartbeat_timeout_s {self.heartbeat_timeout_s}'


def finite_array(values, size: Optional[int] = None, name: str = 'array') -> np.ndarray:
    """Message field -> float32 array, with a clear error for wrong sizes or NaN/inf."""
    a = np.asarray(values, dtype=np.float32).reshape(-1)
    if size is not None and a.size != size:
        raise BadInput('wrong size', f'{name}: expected {size} values, got {a.size}')
    if not np.isfinite(a).all():
        raise BadInput('non-finite', f'{name}: contains NaN or inf')
    return a


def image_to_array(height: int, width: int, encoding: str, step: int, data) -> np.ndarray:
    """sensor_msgs/Image fields -> HxWx3 uint8 RGB (rgb8 / bgr8 / rgba8 / bgra8 / mono8)."""
    channels = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
    if encoding not in channels:
        raise BadInput('unsupported encoding',
                       f'unsupported image encoding {encoding[:40]!r} (supported: {sorted(channels)})')
    c = channels[encoding]
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if height <= 0 or width <= 0:
        raise BadInput('empty image', f'image of {height}x{width} pixels')
    if step < width * c or buf.size < step * height:
        raise BadInput('image too small',
                       f'image data too small: {buf.size} bytes for {height}x{width} {encoding} step {step}')
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


def diagnostics(stamp, name: str, values: dict, drops: Optional[DropCounter] = None, message: str = '',
                level: Optional[str] = None):
    """A diagnostic_msgs/DiagnosticArray with one status `name`: `values` plus the drop counters
    (`dropped/<reason>`). Level WARN while any input was dropped in the node's life, else OK; `level`
    ('ok' | 'warn' | 'error') and `message` override that when given (e.g. e-stop engaged)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
    st = DiagnosticStatus()
    st.name, st.hardware_id = name, name
    kv = {k: v for k, v in values.items()}
    if drops is not None:
        kv['dropped_total'] = drops.total
        kv.update({f'dropped/{k}': n for k, n in sorted(drops.counts.items())})
    st.values = [KeyValue(key=str(k), value=str(v)) for k, v in kv.items()]
    dropped = drops is not None and drops.total > 0
    st.level = DiagnosticStatus.WARN if dropped else DiagnosticStatus.OK
    if level is not None:
        st.level = {'ok': DiagnosticStatus.OK, 'warn': DiagnosticStatus.WARN, 'error': DiagnosticStatus.ERROR}[level]
    st.message = message or (f'dropped inputs: {drops.summary()}' if dropped else 'ok')
    arr = DiagnosticArray()
    arr.header.stamp = stamp
    arr.status = [st]
    return arr
