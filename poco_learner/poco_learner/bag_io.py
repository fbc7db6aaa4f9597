"""rosbag2 files without ROS: our typestore, writing bags, and ingesting bags into episode datasets / buffers.

Plain Python on top of `rosbags` (reads and writes rosbag2 with MCAP or sqlite3 storage), so the learning side
can turn recordings into training data on a machine without ROS. The ROS adapters (recorder, replayer) live in
`poco_learner.bags`.

Ingest model (docs/architecture.md, "Units and spaces"):
  - every `joint_commands` message inside an episode is one executed control step;
  - its observation is the latest `joint_states` / camera frame at or before the command (within a tolerance);
  - action = (commanded joint targets - measured joint positions of that observation, commanded gripper),
    i.e. physical units, the deltas clipped to +-max_joint_delta;
  - episodes are cut by poco_msgs/EpisodeEvent: START ... SUCCESS | FAILURE | ESTOP | TIMEOUT;
  - sparse reward: 1.0 on the last step of a successful episode, else 0.
Alignment uses the bag's log (receive) time: it is the one clock every topic has (std_msgs/Bool has no
header) and the recorder stamps all topics with it. One exception: when the bag has the policy node's
poco/transition messages, each step's joint state is the one whose header stamp the transition names (the
observation the policy really acted on; arrival order at the recorder can differ by a message).

A bag whose recorder was killed hard (no metadata.yaml) is rebuilt by `recover_bag` from what reached the disk.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np

from poco_policy import contract as C
from poco_policy.node_config import check_arm, policy_default, policy_field

log = logging.getLogger('poco_learner.bag_io')

# ---------------------------------------------------------------------------------------------- topics & types
# names, event codes and the joint layout come from the contract (poco_policy.contract, no ROS import)
T_FRONT = C.camera_topic('front')
T_WRIST = C.camera_topic('wrist')
T_JOINTS = C.JOINT_STATES
T_COMMANDS = C.JOINT_COMMANDS
T_EE = C.EE_POSE
T_SUCCESS = C.SUCCESS
T_ESTOP = C.ESTOP
T_EVENT = C.EPISODE_EVENT
T_TRANSITION = C.TRANSITION
T_TELEOP = C.TELEOP_ACTION
T_CHUNK = C.ACTION_CHUNK

# Relative topic name -> message type (the contract table of docs/architecture.md).
TOPIC_TYPES: dict[str, str] = {
    T_FRONT: 'sensor_msgs/msg/Image',
    T_WRIST: 'sensor_msgs/msg/Image',
    T_JOINTS: 'sensor_msgs/msg/JointState',
    T_COMMANDS: 'sensor_msgs/msg/JointState',
    T_EE: 'geometry_msgs/msg/PoseStamped',
    T_SUCCESS: 'std_msgs/msg/Bool',
    T_ESTOP: 'std_msgs/msg/Bool',
    T_EVENT: 'poco_msgs/msg/EpisodeEvent',
    T_TRANSITION: 'poco_msgs/msg/Transition',
    T_TELEOP: 'poco_msgs/msg/ActionChunk',
    T_CHUNK: 'poco_msgs/msg/ActionChunk',
}
# What `bag_record` records by default (transitions are optional but cheap and let a replay feed a learner).
DEFAULT_RECORD_TOPICS = (T_FRONT, T_WRIST, T_JOINTS, T_COMMANDS, T_EE, T_SUCCESS, T_ESTOP, T_EVENT,
                         T_TRANSITION, T_TELEOP)
CAMERAS = C.CAMERAS
CAMERA_TOPICS = {'front': T_FRONT, 'wrist': T_WRIST}
REQUIRED_INGEST_TOPICS = (T_JOINTS, T_COMMANDS, T_EVENT, T_FRONT, T_WRIST)
# The arm's defaults (the policy node's joint_names / gripper_joint); IngestConfig and write_episode_to_bag
# take any arm through those same parameters.
JOINT_NAMES = tuple(policy_default('joint_names'))
GRIPPER_NAME = policy_default('gripper_joint')

# poco_msgs/EpisodeEvent codes
START, SUCCESS, FAILURE, ESTOP, TIMEOUT, RESET = (C.EVENT_START, C.EVENT_SUCCESS, C.EVENT_FAILURE, C.EVENT_ESTOP,
                                                  C.EVENT_TIMEOUT, C.EVENT_RESET)
END_EVENTS = {SUCCESS: 'success', FAILURE: 'failure', ESTOP: 'estop', TIMEOUT: 'timeout'}

STORAGES = ('mcap', 'sqlite3')


def contract_topic(topic: str) -> str:
    """'/robot1/poco/estop' -> 'poco/estop' when the name ends in a contract topic, else the name without '/'."""
    t = topic.strip('/')
    for rel in sorted(TOPIC_TYPES, key=len, reverse=True):
        if t == rel or t.endswith('/' + rel):
            return rel
    return t


class BagError(RuntimeError):
    """A bag that cannot be read / ingested, with a message meant for the user."""


# ---------------------------------------------------------------------------------------------- typestore
def _msg_dir_candidates() -> list[Path]:
    out = []
    if os.environ.get('POCO_MSGS_DIR'):
        out.append(Path(os.environ['POCO_MSGS_DIR']))
    # source checkout (symlink install imports from the source tree)
    out.append(Path(__file__).resolve().parents[2] / 'poco_msgs' / 'msg')
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            out.append(Path(prefix) / 'share' / 'poco_msgs' / 'msg')
    return out


def poco_msgs_dir() -> Path:
    for d in _msg_dir_candidates():
        if d.is_dir() and any(d.glob('*.msg')):
            return d
    raise BagError('cannot find the poco_msgs .msg files (set POCO_MSGS_DIR or source scripts/env.sh); '
                   f'looked in {[str(d) for d in _msg_dir_candidates()]}')


@lru_cache(maxsize=1)
def typestore():
    """rosbags typestore: ROS 2 Kilted standard messages + our poco_msgs, parsed from the .msg files (so the
    definitions and RIHS01 hashes in the bag are the ones rosidl generates for the live graph)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    ts = get_typestore(Stores.ROS2_KILTED)
    types: dict = {}
    for p in sorted(poco_msgs_dir().glob('*.msg')):
        types.update(get_types_from_msg(p.read_text(), f'poco_msgs/msg/{p.stem}'))
    ts.register(types)
    return ts


def msg_class(msgtype: str):
    try:
        return typestore().types[msgtype]
    except KeyError:
        raise BagError(f'message type {msgtype!r} is unknown to the typestore') from None


# ---------------------------------------------------------------------------------------------- message builders
def stamp(t_ns: int):
    Time = msg_class('builtin_interfaces/msg/Time')
    return Time(sec=int(t_ns // 1_000_000_000), nanosec=int(t_ns % 1_000_000_000))


def header(t_ns: int, frame_id: str = ''):
    return msg_class('std_msgs/msg/Header')(stamp=stamp(t_ns), frame_id=frame_id)


def image_msg(img: np.ndarray, t_ns: int, frame_id: str = ''):
    img = np.ascontiguousarray(img, dtype=np.uint8)
    h, w = img.shape[:2]
    return msg_class('sensor_msgs/msg/Image')(header=header(t_ns, frame_id), height=h, width=w, encoding='rgb8',
                                              is_bigendian=0, step=w * 3, data=img.reshape(-1))


def joint_state_msg(positions: np.ndarray, t_ns: int, names=JOINT_NAMES + (GRIPPER_NAME,)):
    JS = msg_class('sensor_msgs/msg/JointState')
    empty = np.zeros(0, np.float64)
    return JS(header=header(t_ns, 'base_link'), name=list(names), position=np.asarray(positions, np.float64),
              velocity=empty, effort=empty)


def pose_msg(pos, quat_wxyz, t_ns: int, frame_id: str = 'base_link'):
    g = typestore().types
    p = g['geometry_msgs/msg/Point'](x=float(pos[0]), y=float(pos[1]), z=float(pos[2]))
    q = g['geometry_msgs/msg/Quaternion'](w=float(quat_wxyz[0]), x=float(quat_wxyz[1]), y=float(quat_wxyz[2]),
                                          z=float(quat_wxyz[3]))
    return g['geometry_msgs/msg/PoseStamped'](header=header(t_ns, frame_id),
                                              pose=g['geometry_msgs/msg/Pose'](position=p, orientation=q))


def bool_msg(value: bool):
    return msg_class('std_msgs/msg/Bool')(data=bool(value))


def event_msg(t_ns: int, episode_id: int, event: int, step_count: int, evaluation: bool = False, detail: str = ''):
    return msg_class('poco_msgs/msg/EpisodeEvent')(header=header(t_ns), episode_id=int(episode_id),
                                                   event=int(event), step_count=int(step_count),
                                                   evaluation=bool(evaluation), detail=detail)


def transition_msg(t_ns: int, episode_id: int, step_index: int, chunk_step: int, features, proprio, action,
                   intervention=False, final_observation=False, policy_version=0, action_t_ns: int = 0):
    f32 = lambda x: np.asarray(x if x is not None else [], np.float32).reshape(-1)  # noqa: E731
    return msg_class('poco_msgs/msg/Transition')(
        header=header(t_ns), episode_id=int(episode_id), step_index=int(step_index), chunk_step=int(chunk_step),
        features=f32(features), proprio=f32(proprio), action=f32(action), intervention=bool(intervention),
        final_observation=bool(final_observation), policy_version=int(policy_version),
        action_stamp=stamp(action_t_ns))


# ---------------------------------------------------------------------------------------------- writing
class BagWriter:
    """rosbag2 writer (MCAP or sqlite3) for our topics. Writes into `<path>.partial-<pid>` and renames to `path`
    on a clean close, so a crash never leaves something that looks like a finished bag at `path`.
    Use as a context manager: an exception aborts and deletes the partial bag."""

    def __init__(self, path: str | Path, storage: str = 'mcap', custom_data: Optional[dict] = None,
                 atomic: bool = True, flush_every_s: float = 1.0):
        from rosbags.rosbag2 import StoragePlugin, Writer
        if storage not in STORAGES:
            raise BagError(f'unknown storage {storage!r}; use one of {STORAGES}')
        self.path = Path(path)
        if self.path.exists():
            raise BagError(f'{self.path} exists already; not overwriting a bag')
        self.atomic = atomic
        # atomic: the bag is built as <parent>/.<name>.partial-<pid>/<name> (so its storage file already has
        # its final name, <name>.mcap) and moved to <parent>/<name> on close.
        self._stage = self.path.with_name(f'.{self.path.name}.partial-{os.getpid()}') if atomic else None
        if self._stage is not None and self._stage.exists():
            shutil.rmtree(self._stage)
        self._tmp = self._stage / self.path.name if atomic else self.path
        self._tmp.parent.mkdir(parents=True, exist_ok=True)
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self._w = Writer(self._tmp, version=9, storage_plugin=plugin)
        for k, v in (custom_data or {}).items():
            self._w.set_custom_data(str(k), v if isinstance(v, str) else json.dumps(v))
        self._w.open()
        self._conns: dict[str, Any] = {}
        self._types: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.closed = False
        # rosbags keeps the open MCAP chunk (up to 1 MB) in memory and commits sqlite3 only on close: a hard kill
        # would lose all of it (sqlite3) or up to 1 MB (MCAP). Flushing every second bounds the loss to ~1 s,
        # and `recover_bag` rebuilds the rest. (< 0 = never; rosbags is pinned, these are its internals.)
        self.flush_every_s = flush_every_s
        self._last_flush = time.monotonic()

    def add_topic(self, topic: str, msgtype: str, offered_qos=()) -> None:
        if topic in self._conns:
            return
        self._conns[topic] = self._w.add_connection(topic, msgtype, typestore=typestore(),
                                                    offered_qos_profiles=list(offered_qos))
        self._types[topic] = msgtype
        self.counts[topic] = 0

    def has_topic(self, topic: str) -> bool:
        return topic in self._conns

    def write(self, topic: str, t_ns: int, msg) -> None:
        """Serialise a rosbags message (topic must have been added, or is a contract topic)."""
        if topic not in self._conns:
            rel = contract_topic(topic)
            if rel not in TOPIC_TYPES:
                raise BagError(f'topic {topic} was not added to the bag')
            self.add_topic(topic, TOPIC_TYPES[rel])
        data = typestore().serialize_cdr(msg, self._types[topic])
        self.write_raw(topic, t_ns, data)

    def write_raw(self, topic: str, t_ns: int, data: bytes | memoryview) -> None:
        self._w.write(self._conns[topic], int(t_ns), data)
        self.counts[topic] += 1
        if 0 <= self.flush_every_s <= time.monotonic() - self._last_flush:
            self.flush()

    def flush(self) -> None:
        """Put everything written so far on disk in a form `recover_bag` can read after a hard kill."""
        st = getattr(self._w, 'storage', None)
        if hasattr(st, 'close_chunk'):                    # MCAP: end the open chunk
            if st.chunk.bio.tell():
                st.close_chunk()
            st.bio.flush()
        elif hasattr(st, 'conn'):                         # sqlite3: commit the open transaction
            st.conn.commit()
        self._last_flush = time.monotonic()

    def close(self) -> Path:
        if self.closed:
            return self.path
        self._w.close()
        self.closed = True
        if self.atomic:
            os.rename(self._tmp, self.path)
            shutil.rmtree(self._stage, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Give up: a partial (atomic) bag is deleted; an in-place bag is left as it is (it may be all the
        user has of a recording)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._w.abort()
        finally:
            if self.atomic:
                shutil.rmtree(self._stage, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# ---------------------------------------------------------------------------------------------- reading
def _bag_error(path, e: BaseException) -> BagError:
    text = str(e) or type(e).__name__
    hint = ''
    if 'magic' in text.lower() or 'malformed' in text.lower() or 'truncat' in text.lower() \
            or isinstance(e, (EOFError,)):
        hint = ' (the file looks truncated or corrupt: was the recorder killed before it closed the bag?)'
    return BagError(f'cannot read bag {path}: {text}{hint}')


class BagReader:
    """Thin wrapper over rosbags' Reader: topic lookup by relative name (namespace-aware), typed deserialisation,
    and every storage error turned into a BagError naming the bag."""

    def __init__(self, path: str | Path, namespace: Optional[str] = None):
        from rosbags.rosbag2 import Reader
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f'bag {self.path} does not exist')
        if self.path.is_dir() and not (self.path / 'metadata.yaml').exists():
            files = sorted(p.name for p in self.path.iterdir())
            raise BagError(f'cannot read bag {self.path}: no metadata.yaml (files: {files}); the bag was not '
                           'closed cleanly (recorder killed? `bag_recover` rebuilds it) or this is not a rosbag2 '
                           'directory')
        try:
            self._r = Reader(self.path)
            self._r.open()
        except BagError:
            raise
        except Exception as e:  # rosbags raises ReaderError, KeyError, sqlite errors, struct errors ...
            raise _bag_error(self.path, e) from e
        self.topics: dict[str, str] = {}
        for c in self._r.connections:
            self.topics[c.topic] = c.msgtype
        self.namespace = self._resolve_namespace(namespace)

    @property
    def custom_data(self) -> dict:
        meta = getattr(self._r.storage, 'metadata', None)
        return dict(getattr(meta, 'custom', None) or {})

    @property
    def storage(self) -> str:
        return 'sqlite3' if any(str(p).endswith('.db3') for p in self._paths()) else 'mcap'

    def _paths(self):
        if self.path.is_dir():
            return list(self.path.iterdir())
        return [self.path]

    @property
    def start_time(self) -> int:
        return self._r.start_time

    @property
    def end_time(self) -> int:
        return self._r.end_time

    def _resolve_namespace(self, namespace: Optional[str]) -> str:
        """'' or '/robot1'. Without an explicit namespace it is read off the joint_commands topic (or any topic
        of the contract), and several candidates are an error: mixing robots would splice their data."""
        if namespace is not None:
            ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
            return ns
        for rel in (T_COMMANDS, T_JOINTS, T_EVENT, T_TRANSITION):
            cands = sorted({t[: -len(rel)].rstrip('/') for t in self.topics
                            if t == '/' + rel or t.endswith('/' + rel) or t == rel})
            if len(cands) > 1:
                raise BagError(f'bag {self.path} holds {rel} of several robots ({cands}); choose one with '
                               '--namespace')
            if cands:
                return cands[0] if cands[0].startswith('/') or not cands[0] else '/' + cands[0]
        return ''

    def full(self, rel: str) -> str:
        return f'{self.namespace}/{rel}'

    def has(self, rel: str) -> bool:
        return self.full(rel) in self.topics

    def check_type(self, rel: str) -> None:
        want = TOPIC_TYPES.get(rel)
        have = self.topics.get(self.full(rel))
        if want and have and have != want:
            raise BagError(f'bag {self.path}: topic {self.full(rel)} has type {have}, expected {want}')

    def connections(self, topics: Iterable[str]):
        names = set(topics)
        return [c for c in self._r.connections if c.topic in names]

    def raw_messages(self, topics: Optional[Iterable[str]] = None, start: Optional[int] = None,
                     stop: Optional[int] = None):
        """(topic, msgtype, t_ns, rawdata) in log-time order; topics are full names (None = all)."""
        conns = self._r.connections if topics is None else self.connections(topics)
        if not conns:
            return
        try:
            for c, t, data in self._r.messages(conns, start=start, stop=stop):
                yield c.topic, c.msgtype, t, data
        except BagError:
            raise
        except Exception as e:
            raise _bag_error(self.path, e) from e

    def messages(self, rels: Iterable[str], start: Optional[int] = None, stop: Optional[int] = None):
        """(relative topic, t_ns, deserialised rosbags message) for contract topics, log-time order."""
        full2rel = {self.full(r): r for r in rels}
        ts = typestore()
        for topic, msgtype, t, data in self.raw_messages(full2rel, start, stop):
            try:
                msg = ts.deserialize_cdr(data, msgtype)
            except Exception as e:
                raise BagError(f'bag {self.path}: malformed {msgtype} message on {topic} at t={t} ns: '
                               f'{type(e).__name__}: {e}') from e
            yield full2rel[topic], t, msg

    def close(self) -> None:
        try:
            self._r.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


# ---------------------------------------------------------------------------------------------- decoding
def decode_image(msg, where: str = '') -> np.ndarray:
    """sensor_msgs/Image (rosbags) -> uint8 HxWx3 RGB with the policy node's own conversion
    (poco_policy.runtime.image_to_array), so training frames are decoded exactly as the acting policy sees them.
    Unknown encodings are an error, not a guess: a wrong channel order would silently poison the data."""
    from poco_policy.runtime import image_to_array
    try:
        return image_to_array(int(msg.height), int(msg.width), str(msg.encoding), int(msg.step),
                              np.asarray(msg.data, np.uint8))
    except ValueError as e:
        raise BagError(f'{where}: {e}') from None


def resize_image(img: np.ndarray, size: Optional[int]) -> np.ndarray:
    if not size or img.shape[:2] == (size, size):
        return img
    import cv2
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


def joint_vector(msg, where: str = '', joint_names=JOINT_NAMES, gripper_joint: str = GRIPPER_NAME) -> np.ndarray:
    """JointState -> float64[n + 1] = the arm joints `joint_names` + `gripper_joint` (positions as in the
    message), by name when names are given, else by position."""
    pos = np.asarray(msg.position, np.float64)
    names = list(msg.name)
    want = tuple(joint_names) + (gripper_joint,)
    if names:
        if len(names) != len(pos):
            raise BagError(f'{where}: malformed JointState ({len(names)} names, {len(pos)} positions)')
        idx = {n: i for i, n in enumerate(names)}
        missing = [n for n in want if n not in idx]
        if missing:
            raise BagError(f'{where}: JointState lacks joints {missing} (has {names})')
        return pos[[idx[n] for n in want]]
    if len(pos) < len(want):
        raise BagError(f'{where}: JointState has {len(pos)} positions, expected {len(want)} '
                       f'({", ".join(want)})')
    return pos[: len(want)]


# ---------------------------------------------------------------------------------------------- ingest
@dataclass
class IngestConfig:
    rate_hz: float = 15.0                 # control rate of the recording
    tolerance_s: Optional[float] = None   # max age of an observation at its command; None = 1.5 / rate
    namespace: Optional[str] = None       # robot namespace in the bag (None = auto, error when ambiguous)
    image_size: Optional[int] = None      # resize frames to image_size x image_size (None = keep)
    task: Optional[str] = None            # recorded in meta.json (default: the bag's custom data, else 'unknown')
    max_joint_delta: float = C.MAX_JOINT_DELTA  # rad per tick; deltas beyond it are clipped (and counted)
    # The arm (the policy node's parameters, same names and defaults): which joint_states / joint_commands
    # entries make the action (one delta per joint + the gripper command) and how the gripper joint's position
    # maps to the [0, 1] command (gripper_closed .. gripper_open), as the policy node maps it.
    joint_names: tuple = policy_field('joint_names')
    gripper_joint: str = policy_field('gripper_joint')
    gripper_closed: float = policy_field('gripper_closed')
    gripper_open: float = policy_field('gripper_open')
    include_evaluation: bool = False      # evaluation episodes are not training data by default
    keep_unfinished: bool = False         # episodes without an end event: drop (default) or keep as timeouts
    strict: bool = False                  # stale / missing observations: error (True) or drop the episode
    min_steps: int = 1
    compress: bool = False                # np.savez_compressed (smaller, ~5x slower to write)

    @property
    def tol_ns(self) -> int:
        tol = self.tolerance_s if self.tolerance_s is not None else 1.5 / self.rate_hz
        return int(tol * 1e9)

    @property
    def n_joints(self) -> int:
        return len(self.joint_names)

    def to_opening(self, position):
        """Gripper joint position(s) -> command units (0 closed, 1 open)."""
        return (np.asarray(position, np.float64) - self.gripper_closed) / (self.gripper_open - self.gripper_closed)


@dataclass
class _Ep:
    episode_id: int
    t_start: int
    evaluation: bool = False
    t_end: Optional[int] = None
    end_event: Optional[int] = None
    end_step_count: int = -1
    unfinished: bool = False


@dataclass
class IngestReport:
    bag: str
    out: Optional[str]
    episodes: int = 0
    steps: int = 0
    successes: int = 0
    dropped: list = field(default_factory=list)     # (episode_id, reason)
    warnings: list = field(default_factory=list)
    clipped_deltas: int = 0
    stamp_aligned_steps: int = 0                    # joint states picked by the transition's stamp (exact)
    seconds: float = 0.0
    frames: int = 0
    buffer: Optional[str] = None

    def summary(self) -> str:
        fps = self.frames / self.seconds if self.seconds > 0 else float('nan')
        s = (f'{self.episodes} episodes ({self.successes} successful), {self.steps} steps, {self.frames} frames '
             f'in {self.seconds:.2f} s ({fps:.0f} frames/s)')
        if self.dropped:
            s += f'; dropped {len(self.dropped)}: ' + '; '.join(f'episode {e}: {r}' for e, r in self.dropped)
        if self.stamp_aligned_steps:
            s += f'; {self.stamp_aligned_steps} observations matched to poco/transition by stamp'
        if self.clipped_deltas:
            s += f'; {self.clipped_deltas} joint deltas clipped to max_joint_delta'
        return s


def _segment(events: list[tuple[int, Any]], cfg: IngestConfig, report: IngestReport) -> list[_Ep]:
    """EpisodeEvents (log-time order) -> closed episodes. First end event of an episode wins."""
    eps: list[_Ep] = []
    cur: Optional[_Ep] = None

    def drop_open(reason):
        nonlocal cur
        if cur is None:
            return
        if cfg.keep_unfinished:
            # t_end filled in by the caller (next start / bag end)
            cur.end_event, cur.t_end, cur.unfinished = TIMEOUT, None, True
            eps.append(cur)
            report.warnings.append(f'episode {cur.episode_id}: {reason}; kept as a timeout')
        else:
            report.dropped.append((cur.episode_id, reason))
        cur = None

    for t, m in events:
        ev = int(m.event)
        if ev == START:
            if cur is not None:
                if cfg.keep_unfinished:
                    cur.t_end = t - 1
                drop_open('no end event before the next START')
            cur = _Ep(int(m.episode_id), t, bool(m.evaluation))
        elif ev in END_EVENTS:
            if cur is None or int(m.episode_id) != cur.episode_id:
                continue  # duplicate end event, or an end of an episode whose START is not in the bag
            cur.t_end, cur.end_event, cur.end_step_count = t, ev, int(m.step_count)
            cur.evaluation = cur.evaluation or bool(m.evaluation)
            eps.append(cur)
            cur = None
    if cur is not None:
        drop_open('the bag ends before the episode does')
    return eps


def _ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _latest_at_or_before(times: np.ndarray, t: np.ndarray) -> np.ndarray:
    return np.searchsorted(times, t, side='right') - 1


def _final_index(times: np.ndarray, c_last: int, period: int, tol: int) -> int:
    """Observation after the last action, i.e. one control period after its command: the latest one in
    (c_last, c_last + period], else the first one after c_last within the tolerance. -1 if none. (Not "the
    latest before the end event": an operator may end the episode seconds later.)"""
    i = int(np.searchsorted(times, c_last + period, side='right')) - 1
    if i >= 0 and times[i] > c_last:
        return i
    j = int(np.searchsorted(times, c_last, side='right'))
    if j < len(times) and times[j] - c_last <= max(tol, period):
        return j
    return -1


def _align(cidx, c_t, period, jt_a, it_a, tol, sel: dict) -> Optional[str]:
    """Fill `sel` with the joint-state / frame index of each step (+ the final observation); or say what's wrong."""
    L = len(cidx)
    for name, times in (('joint_states', jt_a),) + tuple((c, it_a[c]) for c in CAMERAS):
        idx = _latest_at_or_before(times, c_t)
        bad = (idx < 0) | (c_t - times[np.maximum(idx, 0)] > tol)
        fin = _final_index(times, int(c_t[-1]), period, tol)
        if bad.any() or fin < 0:
            k = int(np.argmax(bad)) if bad.any() else L
            return (f'no {name} within {tol / 1e6:.0f} ms before step {k}' if k < L
                    else f'no {name} after the last step')
        sel[name] = np.append(idx, fin)
    return None


def ingest_bag(bag: str | Path, out: Optional[str | Path] = None, cfg: Optional[IngestConfig] = None,
               buffer_dir: Optional[str | Path] = None,
               buffer_writer: Optional[Callable[[Path, Path, dict], None]] = None,
               overwrite: bool = False, append: bool = False) -> IngestReport:
    """Read a rosbag2 bag and write an episode dataset to `out` and/or a replay buffer to `buffer_dir`.

    Everything is written under temporary names next to the targets and renamed at the very end, so a bad bag
    leaves no output at all. `buffer_writer(dataset_dir, buffer_dir, meta)` fills the buffer from the finished
    dataset (see `poco_learner.bags.default_buffer_writer`: frozen encoder + ReplayBuffer). With `append`, an
    existing buffer directory is appended to (only after the whole bag has been ingested and encoded).
    """
    cfg = cfg or IngestConfig()
    try:
        check_arm(cfg.joint_names, cfg.gripper_joint, cfg.gripper_closed, cfg.gripper_open)
    except ValueError as e:
        raise BagError(f'ingest: {e}') from None
    if out is None and buffer_dir is None:
        raise BagError('nothing to do: give an output dataset directory and/or a buffer directory')
    if out is not None and Path(out).exists() and not overwrite:
        raise BagError(f'{out} exists already; choose a new directory (or --overwrite)')
    append_to = None
    if buffer_dir is not None and Path(buffer_dir).exists():
        if append:
            append_to = Path(buffer_dir)
        elif not overwrite:
            raise BagError(f'{buffer_dir} exists already; choose a new directory, --append or --overwrite')
    if buffer_dir is not None and buffer_writer is None:
        raise BagError('writing a buffer needs a buffer_writer')
    report = IngestReport(bag=str(bag), out=str(out) if out else None,
                          buffer=str(buffer_dir) if buffer_dir else None)
    t0 = time.perf_counter()
    pid = os.getpid()
    ds_tmp = (Path(out).with_name(f'.{Path(out).name}.tmp-{pid}') if out is not None
              else Path(buffer_dir).with_name(f'.{Path(buffer_dir).name}.dataset-tmp-{pid}'))
    buf_tmp = (Path(buffer_dir).with_name(f'.{Path(buffer_dir).name}.tmp-{pid}')
               if buffer_dir is not None and append_to is None else None)
    tmps = [p for p in (ds_tmp, buf_tmp) if p is not None]
    try:
        for p in tmps:
            if p.exists():
                shutil.rmtree(p)
        with BagReader(bag, cfg.namespace) as reader:
            meta = _ingest_to_dir(reader, ds_tmp, cfg, report)
        if buffer_dir is not None:
            buffer_writer(ds_tmp, append_to or buf_tmp, meta)
        # all good: publish the results
        if out is not None:
            _replace_dir(ds_tmp, Path(out))
        else:
            shutil.rmtree(ds_tmp, ignore_errors=True)
        if buf_tmp is not None:
            _replace_dir(buf_tmp, Path(buffer_dir))
    except BaseException:
        for p in tmps:
            shutil.rmtree(p, ignore_errors=True)
        raise
    report.seconds = time.perf_counter() - t0
    return report


def _replace_dir(src: Path, dst: Path) -> None:
    if dst.exists():
        old = dst.with_name(f'.{dst.name}.old-{os.getpid()}')
        os.rename(dst, old)
        os.rename(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(src, dst)


def _ingest_to_dir(reader: BagReader, out: Path, cfg: IngestConfig, report: IngestReport) -> dict:
    where = f'bag {reader.path}'
    missing = [reader.full(r) for r in REQUIRED_INGEST_TOPICS if not reader.has(r)]
    if missing:
        raise BagError(f'{where}: required topic(s) missing: {missing}; the bag has {sorted(reader.topics)}')
    for rel in TOPIC_TYPES:
        reader.check_type(rel)
    tol = cfg.tol_ns
    nj = cfg.n_joints

    # Pass 1: everything but pixels (small), plus image log times (to align without holding frames in memory).
    jt, jq, jh, ct, cq, events, success_t = [], [], [], [], [], [], []
    img_t: dict[str, list[int]] = {c: [] for c in CAMERAS}
    trans_iv: dict[tuple[int, int], bool] = {}
    trans_act: dict[tuple[int, int], np.ndarray] = {}   # what the policy node says it executed (cross-check)
    trans_obs: dict[tuple[int, int], int] = {}          # header stamp of the joint state each step acted on
    small = [T_JOINTS, T_COMMANDS, T_EVENT, T_SUCCESS]
    if reader.has(T_TRANSITION):
        small.append(T_TRANSITION)
    for rel, t, m in reader.messages(small):
        w = f'{where}: {rel} at t={t} ns'
        if rel == T_JOINTS:
            jt.append(t); jq.append(joint_vector(m, w, cfg.joint_names, cfg.gripper_joint))  # noqa: E702
            jh.append(_ns(m.header.stamp))
        elif rel == T_COMMANDS:
            ct.append(t); cq.append(joint_vector(m, w, cfg.joint_names, cfg.gripper_joint))  # noqa: E702
        elif rel == T_EVENT:
            events.append((t, m))
        elif rel == T_SUCCESS:
            if bool(m.data):
                success_t.append(t)
        elif rel == T_TRANSITION:
            trans_obs[(int(m.episode_id), int(m.step_index))] = _ns(m.header.stamp)
            if m.final_observation:
                continue
            trans_iv[(int(m.episode_id), int(m.step_index))] = bool(m.intervention)
            if len(m.action) == nj + 1:
                trans_act[(int(m.episode_id), int(m.step_index))] = np.asarray(m.action, np.float32)
    cam_full = {reader.full(CAMERA_TOPICS[c]): c for c in CAMERAS}
    for topic, _, t, _ in reader.raw_messages(cam_full):
        img_t[cam_full[topic]].append(t)
    for name, xs in (('joint_states', jt), ('joint_commands', ct), ('episode events', events),
                     ('front images', img_t['front']), ('wrist images', img_t['wrist'])):
        if not xs:
            raise BagError(f'{where}: no {name} messages')
    jt_a, jq_a = np.asarray(jt, np.int64), np.asarray(jq, np.float64)
    ct_a, cq_a = np.asarray(ct, np.int64), np.asarray(cq, np.float64)
    # the gripper in command units [0, 1] (proprio and action), as the policy node sees and sends it
    jq_a[:, nj] = cfg.to_opening(jq_a[:, nj])
    cq_a[:, nj] = cfg.to_opening(cq_a[:, nj])
    it_a = {c: np.asarray(v, np.int64) for c, v in img_t.items()}
    # Joint states by header stamp. Arrival order at the recorder does not tell which joint state the policy
    # had when it sent a command (the two race by a few ms); the transition's stamp does.
    by_stamp = {h: i for i, h in enumerate(jh) if h > 0} if trans_obs else {}
    succ_a = np.asarray(success_t, np.int64)

    if len(ct_a) > 3:
        dt = float(np.median(np.diff(ct_a))) / 1e9
        if abs(dt * cfg.rate_hz - 1.0) > 0.25:
            report.warnings.append(f'median joint_commands interval {dt * 1e3:.1f} ms does not match '
                                   f'--rate {cfg.rate_hz} Hz')

    eps = _segment(events, cfg, report)
    # unfinished-but-kept episodes end where the next one starts / the bag ends
    for k, e in enumerate(eps):
        if e.t_end is None:
            nxt = eps[k + 1].t_start - 1 if k + 1 < len(eps) else int(max(ct_a[-1], jt_a[-1]))
            e.t_end = nxt

    # Plan each episode: which command / joint / image indices make its steps.
    plans = []
    prev_end = -(2 ** 62)
    for e in eps:
        if e.evaluation and not cfg.include_evaluation:
            report.dropped.append((e.episode_id, 'evaluation episode (use --include-evaluation)'))
            prev_end = e.t_end
            continue
        lo = max(prev_end + 1, e.t_start - tol // 2)  # START may be overtaken by the first command
        prev_end = e.t_end
        c0, c1 = np.searchsorted(ct_a, lo, side='left'), np.searchsorted(ct_a, e.t_end, side='right')
        cidx = np.arange(c0, c1)
        L = len(cidx)
        if L < cfg.min_steps:
            report.dropped.append((e.episode_id, f'{L} steps'))
            continue
        if e.end_step_count >= 0 and e.end_step_count != L:
            report.warnings.append(f'episode {e.episode_id}: {L} joint_commands in the bag but the end event '
                                   f'counts {e.end_step_count} steps')
        sel: dict[str, np.ndarray] = {}
        problem = None
        while True:
            c_t = ct_a[cidx]
            problem = _align(cidx, c_t, int(1e9 / cfg.rate_hz), jt_a, it_a, tol, sel)
            # a cut-off episode's last command has no observation after it: its outcome is unknown, drop it
            if problem and problem.startswith('no ') and 'after the last step' in problem and e.unfinished \
                    and len(cidx) > cfg.min_steps:
                cidx = cidx[:-1]
                continue
            break
        if problem:
            if cfg.strict:
                raise BagError(f'{where}: episode {e.episode_id}: {problem}')
            report.dropped.append((e.episode_id, problem))
            continue
        if by_stamp:
            js = sel['joint_states']
            for i in range(len(js)):
                j = by_stamp.get(trans_obs.get((e.episode_id, i), 0))
                if j is not None and abs(int(jt_a[j]) - int(c_t[min(i, len(c_t) - 1)])) <= 2 * tol:
                    js[i] = j
                    report.stamp_aligned_steps += 1
        plans.append((e, cidx, sel))
    if not plans:
        raise BagError(f'{where}: no usable episodes ({len(eps)} segmented; dropped: {report.dropped}; '
                       f'{len(events)} episode events)')

    # Pass 2: per episode, read only its time range of images and write the episode file (with
    # poco_learner.dataset's writer: the format is validated and each file written atomically).
    from . import dataset as ds_format
    custom = reader.custom_data
    meta = {
        'task': cfg.task or custom.get('task') or 'unknown',
        'obs_mode': 'pixels',
        'image_size': 0,                     # set from the first frames
        'cameras': list(CAMERAS),
        'max_joint_delta': float(cfg.max_joint_delta),
        'control_rate_hz': float(cfg.rate_hz),
        'joint_names': list(cfg.joint_names) + [cfg.gripper_joint],   # the proprio / action columns
        'gripper_joint': cfg.gripper_joint,
        'source': {'kind': 'rosbag2', 'bag': str(Path(reader.path).resolve()), 'storage': reader.storage,
                   'namespace': reader.namespace, 'custom_data': custom, 'tolerance_s': tol / 1e9},
    }
    out.mkdir(parents=True)
    ep_files = []
    for n, (e, cidx, sel) in enumerate(plans):
        q = jq_a[sel['joint_states']]                       # [L+1, nj+1]
        cmd = cq_a[cidx]                                    # [L, nj+1]
        delta = cmd[:, :nj] - q[:-1, :nj]
        over = np.abs(delta) > cfg.max_joint_delta * (1 + 1e-6)
        report.clipped_deltas += int(over.sum())
        delta = np.clip(delta, -cfg.max_joint_delta, cfg.max_joint_delta)
        actions = np.concatenate([delta, cmd[:, nj:nj + 1]], axis=1).astype(np.float32)
        L = len(cidx)
        in_window = succ_a[(succ_a >= e.t_start) & (succ_a <= e.t_end)] if len(succ_a) else succ_a
        success = e.end_event == SUCCESS or (e.end_event == TIMEOUT and len(in_window) > 0)
        terminal = e.end_event in (SUCCESS, FAILURE, ESTOP) or success
        rewards = np.zeros(L, np.float32)
        if success:
            rewards[-1] = 1.0
        intervention = np.array([trans_iv.get((e.episode_id, i), False) for i in range(L)], bool)
        if trans_act:
            mism = [i for i in range(L) if (e.episode_id, i) in trans_act
                    and np.abs(trans_act[(e.episode_id, i)] - actions[i]).max() > 1e-3]
            if mism:
                report.warnings.append(f'episode {e.episode_id}: {len(mism)} steps differ from the actions in '
                                       f'poco/transition (first: step {mism[0]}); topic timing is off?')
        frames = _read_frames(reader, e, sel, it_a, cfg, where)
        for c in CAMERAS:
            h, w = frames[c].shape[1:3]
            if h != w:
                raise BagError(f'{where}: {c} frames are {w}x{h}; the dataset format needs square images: '
                               'pass --image-size N (the policy\'s image_size, e.g. 128)')
            if not meta['image_size']:
                meta['image_size'] = int(h)
                ds_format.write_meta(out, meta)
            elif h != meta['image_size']:
                raise BagError(f'{where}: {c} frames change size ({meta["image_size"]} -> {h}); '
                               'use --image-size')
        arrays = dict(proprio=q.astype(np.float32), actions=actions, rewards=rewards,
                      terminal=np.array(terminal), success=np.array(success), intervention=intervention,
                      front=frames['front'], wrist=frames['wrist'])
        try:
            path = ds_format.write_episode(out, n, arrays, compress=cfg.compress)
        except ds_format.DatasetError as err:
            raise BagError(f'{where}: episode {e.episode_id} does not make a valid dataset episode: {err}') from err
        ep_files.append({'file': path.name, 'episode_id': e.episode_id, 'steps': L, 'success': bool(success),
                         'end': END_EVENTS.get(e.end_event, 'timeout')})
        report.episodes += 1
        report.steps += L
        report.successes += int(success)
        report.frames += 2 * (L + 1)

    meta.update({
        'num_episodes': report.episodes,
        'num_steps': report.steps,
        'episodes': ep_files,
        'dropped': [{'episode_id': int(i), 'reason': r} for i, r in report.dropped],
        'clipped_deltas': report.clipped_deltas,
    })
    ds_format.write_meta(out, meta)
    for wmsg in report.warnings:
        log.warning('%s', wmsg)
    return meta


def _read_frames(reader: BagReader, e: _Ep, sel: dict, it_a: dict, cfg: IngestConfig, where: str) -> dict:
    """Decode exactly the frames an episode uses, reading only its time range of the bag."""
    out = {}
    for c in CAMERAS:
        idx = sel[c]
        times = it_a[c][idx]
        want = {int(t): [] for t in times}  # log time -> positions in the episode (a frame can repeat)
        for pos, t in enumerate(times):
            want[int(t)].append(pos)
        got: dict[int, np.ndarray] = {}
        for _, t, m in reader.messages([CAMERA_TOPICS[c]], start=int(times.min()), stop=int(times.max()) + 1):
            if t in want and t not in got:
                got[t] = resize_image(decode_image(m, f'{where}: {CAMERA_TOPICS[c]} at t={t} ns'), cfg.image_size)
        if len(got) != len(want):
            raise BagError(f'{where}: {c} frames vanished between passes (bag modified while reading?)')
        first = next(iter(got.values()))
        arr = np.empty((len(times),) + first.shape, np.uint8)
        for t, positions in want.items():
            arr[positions] = got[t]
        out[c] = arr
    return out


# ---------------------------------------------------------------------------------------------- dataset reading
def load_dataset_episodes(path: str | Path) -> tuple[dict, list[dict]]:
    """(meta, [episode dict]) of an episode dataset directory (helper for tests and tools)."""
    path = Path(path)
    meta = json.loads((path / 'meta.json').read_text())
    eps = []
    for f in sorted(path.glob('episode_*.npz')):
        with np.load(f, allow_pickle=False) as z:
            eps.append({k: z[k] for k in z.files})
    return meta, eps


# ---------------------------------------------------------------------------------------------- expert bags
def write_episode_to_bag(w: BagWriter, ep: dict, episode_id: int, t0_ns: int, rate_hz: float = 15.0,
                         joint_limits: Optional[np.ndarray] = None, ns: str = '', evaluation: bool = False,
                         ee_pose: Optional[Callable[[int], tuple]] = None,
                         features: Optional[np.ndarray] = None, chunk_len: int = 5,
                         joint_names=JOINT_NAMES, gripper_joint: str = GRIPPER_NAME, gripper_closed: float = 0.0,
                         gripper_open: float = 1.0) -> int:
    """Write one episode (dataset arrays: proprio [L+1,n+1], actions [L,n+1] physical, front/wrist [L+1,H,W,3],
    success, terminal) as the topics a live recording has, at `rate_hz` from `t0_ns`. Returns the end time.
    The arm: `joint_names` (n of them) and `gripper_joint`, whose position is gripper_closed .. gripper_open for
    the opening / command 0 .. 1 (the policy node's parameters).

    Per tick k (t_k = t0 + k / rate): joint_states, both cameras and ee_pose at t_k, then joint_commands
    (measured position + delta, clipped to joint limits as a driver would, + gripper) 1 ms later, as the policy
    node does. START 1 ms before the first tick; success and the end event at / 1 ms after the last observation.
    With `features` [L+1, F] (encoded frames) it also writes poco/transition messages as the policy node would
    (one per step plus the final observation), so the bag can feed a learner through bag_replay.
    """
    P = lambda rel: f'{ns}/{rel}'  # noqa: E731
    period = 1e9 / rate_hz
    proprio = np.asarray(ep['proprio'], np.float64)
    actions = np.asarray(ep['actions'], np.float64)
    L = len(actions)
    n = len(joint_names)
    if proprio.shape[-1] != n + 1 or actions.shape[-1] != n + 1:
        raise BagError(f'episode {episode_id}: proprio / actions have {proprio.shape[-1]} / {actions.shape[-1]} '
                       f'columns, the arm {list(joint_names)} + {gripper_joint} needs {n + 1}')
    names = tuple(joint_names) + (gripper_joint,)
    to_pos = lambda c: gripper_closed + float(c) * (gripper_open - gripper_closed)  # noqa: E731
    interv = np.asarray(ep.get('intervention', np.zeros(L, bool)), bool)
    w.write(P(T_EVENT), t0_ns - 1_000_000, event_msg(t0_ns - 1_000_000, episode_id, START, 0, evaluation))
    for k in range(L + 1):
        t = t0_ns + int(round(k * period))
        w.write(P(T_JOINTS), t, joint_state_msg(np.append(proprio[k, :n], to_pos(proprio[k, n])), t, names))
        w.write(P(T_FRONT), t, image_msg(ep['front'][k], t, 'front_camera'))
        w.write(P(T_WRIST), t, image_msg(ep['wrist'][k], t, 'wrist_camera'))
        if ee_pose is not None:
            pos, quat = ee_pose(k)
            w.write(P(T_EE), t, pose_msg(pos, quat, t))
        if k < L:
            target = proprio[k, :n] + actions[k, :n]
            if joint_limits is not None:
                target = np.clip(target, joint_limits[:, 0], joint_limits[:, 1])
            tc = t + 1_000_000
            w.write(P(T_COMMANDS), tc, joint_state_msg(np.append(target, to_pos(actions[k, n])), tc, names))
            if features is not None:
                executed = np.append(target - proprio[k, :n], actions[k, n])
                w.write(P(T_TRANSITION), tc + 100_000, transition_msg(
                    t, episode_id, k, k % max(1, chunk_len), features[k], proprio[k], executed,
                    intervention=bool(interv[k]), action_t_ns=tc))
    t_last = t0_ns + int(round(L * period))
    if features is not None:
        w.write(P(T_TRANSITION), t_last + 100_000, transition_msg(
            t_last, episode_id, L, 0, features[L], proprio[L], None, final_observation=True))
    success = bool(ep.get('success', False))
    terminal = bool(ep.get('terminal', success))
    if success:
        w.write(P(T_SUCCESS), t_last, bool_msg(True))
    end = SUCCESS if success else (FAILURE if terminal else TIMEOUT)
    w.write(P(T_EVENT), t_last + 1_000_000, event_msg(t_last + 1_000_000, episode_id, end, L, evaluation))
    return t_last + 1_000_000



# ---------------------------------------------------------------------------------------------- recovery
@dataclass
class RecoverReport:
    source: str
    out: str
    storage: str
    messages: dict = field(default_factory=dict)     # topic -> messages recovered
    skipped_topics: list = field(default_factory=list)
    torn_bytes: int = 0                               # MCAP: unreadable tail (the chunk being written, cut off)
    t_first: int = 0
    t_last: int = 0

    def summary(self) -> str:
        n = sum(self.messages.values())
        s = (f'recovered {n} messages on {len(self.messages)} topics '
             f'({(self.t_last - self.t_first) / 1e9:.1f} s of recording) from {self.source} -> {self.out}')
        if self.torn_bytes:
            s += f'; {self.torn_bytes} bytes of a torn tail dropped'
        if self.skipped_topics:
            s += f'; skipped topics of unknown type: {self.skipped_topics}'
        return s


def _find_storage_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise BagError(f'{path} does not exist')
    found = sorted(p for p in path.rglob('*') if p.suffix in ('.mcap', '.db3') and p.is_file())
    if len(found) != 1:
        raise BagError(f'{path}: expected exactly one .mcap or .db3 file below it, found '
                       f'{[str(p.relative_to(path)) for p in found]}')
    return found[0]


def _u16(b, o):
    return int.from_bytes(b[o:o + 2], 'little'), o + 2


def _u32(b, o):
    return int.from_bytes(b[o:o + 4], 'little'), o + 4


def _u64(b, o):
    return int.from_bytes(b[o:o + 8], 'little'), o + 8


def _str(b, o):
    n, o = _u32(b, o)
    return bytes(b[o:o + n]).decode('utf-8'), o + n


def _mcap_records(buf, pos: int, end: int):
    """(opcode, body) of each complete record in buf[pos:end]; yields ('torn', offset) for a cut-off record."""
    while pos < end:
        if pos + 9 > end:
            yield 'torn', pos
            return
        op = buf[pos]
        n = int.from_bytes(buf[pos + 1:pos + 9], 'little')
        if pos + 9 + n > end:
            yield 'torn', pos
            return
        yield op, memoryview(buf)[pos + 9:pos + 9 + n]
        pos += 9 + n


def _read_partial_mcap(path: Path, report: RecoverReport):
    """Messages of every complete chunk of an MCAP file without footer: [(topic, msgtype, log_time, data)]."""
    buf = path.read_bytes()
    magic = b'\x89MCAP0\r\n'
    if not buf.startswith(magic):
        raise BagError(f'{path}: not an MCAP file (bad magic)')
    schemas: dict[int, str] = {}
    channels: dict[int, tuple[str, str]] = {}
    out = []

    def inner(records, stop):
        for op, body in _mcap_records(records, 0, stop):
            if op == 'torn':
                raise BagError(f'{path}: corrupt chunk (record cut at {body})')
            if op == 0x03:                                   # Schema: id, name, encoding, data
                sid, o = _u16(body, 0)
                schemas[sid], _ = _str(body, o)
            elif op == 0x04:                                 # Channel: id, schema_id, topic, encoding, metadata
                cid, o = _u16(body, 0)
                sid, o = _u16(body, o)
                topic, o = _str(body, o)
                channels[cid] = (topic, schemas.get(sid, ''))
            elif op == 0x05:                                 # Message: channel, sequence, log_time, publish_time
                cid, o = _u16(body, 0)
                _, o = _u32(body, o)
                t, o = _u64(body, o)
                if cid not in channels:
                    raise BagError(f'{path}: message on unknown channel {cid}')
                topic, msgtype = channels[cid]
                out.append((topic, msgtype, t, bytes(body[o + 8:])))

    for op, body in _mcap_records(buf, len(magic), len(buf)):
        if op == 'torn':
            report.torn_bytes = len(buf) - body
            break
        if op == 0x06:                                       # Chunk
            o = 16
            usize, o = _u64(body, o)
            _, o = _u32(body, o)                             # crc (0 = not computed)
            compression, o = _str(body, o)
            clen, o = _u64(body, o)
            data = body[o:o + clen]
            if compression:
                try:
                    from rosbags.rosbag2.storage_mcap import decompress
                    data = decompress(bytes(data), compression, usize, 0)
                except Exception as e:  # noqa: BLE001 (any codec error: say which chunk)
                    raise BagError(f'{path}: cannot decompress a {compression!r} chunk: {e}') from e
            inner(data, len(data))
        elif op in (0x03, 0x04, 0x05):                       # records outside chunks (unchunked writers)
            inner(bytes([op]) + len(body).to_bytes(8, 'little') + bytes(body), 9 + len(body))
    return out


def _read_partial_sqlite(path: Path, report: RecoverReport):
    import sqlite3
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        # work on a copy (with its journal, so SQLite rolls back a half-written transaction there, not here)
        for f in path.parent.glob(path.name + '*'):
            shutil.copy2(f, Path(tmp) / f.name)
        con = sqlite3.connect(Path(tmp) / path.name)
        try:
            topics = {tid: (name, typ) for tid, name, typ in con.execute('SELECT id, name, type FROM topics')}
            rows = con.execute('SELECT topic_id, timestamp, data FROM messages ORDER BY timestamp, id').fetchall()
        except sqlite3.DatabaseError as e:
            raise BagError(f'{path}: not a readable rosbag2 sqlite3 database: {e}') from e
        finally:
            con.close()
    return [(topics[tid][0], topics[tid][1], int(t), bytes(d)) for tid, t, d in rows if tid in topics]


def recover_bag(src: str | Path, out: str | Path) -> RecoverReport:
    """Rebuild a proper bag at `out` from the storage file of a bag that was never closed (recorder killed hard:
    no metadata.yaml). MCAP: every chunk that reached the disk (the one being filled, <= 1 MB, is lost);
    sqlite3: every committed message. The recovered bag is written atomically; `src` is not modified."""
    if Path(out).exists():
        raise BagError(f'{out} exists already; not overwriting a bag')
    f = _find_storage_file(Path(src))
    storage = 'mcap' if f.suffix == '.mcap' else 'sqlite3'
    report = RecoverReport(str(f), str(out), storage)
    msgs = _read_partial_mcap(f, report) if storage == 'mcap' else _read_partial_sqlite(f, report)
    if not msgs:
        raise BagError(f'{f}: no complete messages to recover')
    msgs.sort(key=lambda m: m[2])
    known = typestore().fielddefs
    with BagWriter(out, storage, custom_data={'recovered_from': str(f.resolve())}) as w:
        for topic, msgtype, t, data in msgs:
            if msgtype not in known:
                if topic not in report.skipped_topics:
                    report.skipped_topics.append(topic)
                continue
            w.add_topic(topic, msgtype)
            w.write_raw(topic, t, data)
            report.messages[topic] = report.messages.get(topic, 0) + 1
        if not report.messages:
            raise BagError(f'{f}: no messages of known types (topics {report.skipped_topics})')
    report.t_first, report.t_last = msgs[0][2], msgs[-1][2]
    return report
