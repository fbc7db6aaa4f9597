"""rosbag2 tools for the ROS graph (there is no `ros2 bag` on pip-only machines): record, ingest, replay.

  bag_record --out PATH [--storage mcap|sqlite3] [--topics ...] [--duration S] [--task NAME]
  bag_record --sim-expert --task pick_cube --episodes N --out PATH     (no ROS needed: scripted demos as a bag)
  bag_ingest BAG --out DATASET_DIR [--buffer DIR] [--rate 15] [--encoder-checkpoint FILE]
             [--params-file robot.yaml] [--joint-names J1 ... Jn] [--gripper-joint NAME] ...
  bag_replay BAG [--rate 1.0] [--topics ...] [--loop] [--all-topics] [--namespace NS]

Bag reading/writing, alignment and episode segmentation are plain Python in `poco_learner.bag_io`; this module
only adds the rclpy parts and the command lines. rclpy is imported lazily so `bag_ingest` and
`bag_record --sim-expert` also run where ROS is not installed.
"""
from __future__ import annotations

import argparse
import array
import importlib
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from poco_policy import contract
from . import bag_io
from .bag_io import BagError

log = logging.getLogger('poco_learner.bags')

# QoS per topic: poco_policy.contract's table (topics outside it: its default profile, reliable depth 10).


_rel = bag_io.contract_topic


def _msg_class_rclpy(msgtype: str):
    """'sensor_msgs/msg/Image' -> sensor_msgs.msg.Image (rclpy class)."""
    pkg, kind, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{pkg}.{kind}'), name)


def _split_ros_args(argv) -> tuple[list[str], list[str]]:
    """Our options vs. everything from '--ros-args' on (remappings, namespace, parameters)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if '--ros-args' in argv:
        i = argv.index('--ros-args')
        return argv[:i], argv[i:]
    return argv, []


def _init_rclpy(ros_args=None, name='bag_tool'):
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    # Our own SIGINT/SIGTERM handling: the bag must be closed, which rclpy's handler would not let us do.
    rclpy.init(args=[name, *(ros_args or [])], signal_handler_options=SignalHandlerOptions.NO)
    return rclpy


class _StopFlag:
    def __init__(self):
        self.event = threading.Event()
        self.signum: Optional[int] = None
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, self._handler)

    def _handler(self, signum, frame):
        self.signum = signum
        self.event.set()

    def __bool__(self):
        return self.event.is_set()


# ============================================================================================ rosbags -> rclpy
_SEQ_TYPECODES = {'float': 'f', 'double': 'd', 'int8': 'b', 'uint8': 'B', 'int16': 'h', 'uint16': 'H',
                  'int32': 'i', 'uint32': 'I', 'int64': 'q', 'uint64': 'Q'}
_NP_DTYPES = {'float': np.float32, 'double': np.float64, 'int8': np.int8, 'uint8': np.uint8, 'int16': np.int16,
              'uint16': np.uint16, 'int32': np.int32, 'uint32': np.uint32, 'int64': np.int64, 'uint64': np.uint64}
_NESTED_CLASS_CACHE: dict[tuple, Any] = {}


def _nested_class(nt) -> Any:
    key = (tuple(nt.namespaces), nt.name)
    if key not in _NESTED_CLASS_CACHE:
        _NESTED_CLASS_CACHE[key] = getattr(importlib.import_module('.'.join(nt.namespaces)), nt.name)
    return _NESTED_CLASS_CACHE[key]


def _scalar(v):
    return v.item() if isinstance(v, np.generic) else v


def to_rclpy(src: Any, cls: Any) -> Any:
    """Convert a rosbags message (dataclass) into an instance of rclpy message class `cls`, field by field,
    driven by the rclpy class's own type description (SLOT_TYPES), so any message type works."""
    from rosidl_parser.definition import AbstractNestedType, Array, BasicType, NamespacedType
    dst = cls()
    for fname, slot in zip(cls.get_fields_and_field_types(), cls.SLOT_TYPES):
        value = getattr(src, fname)
        if isinstance(slot, NamespacedType):
            setattr(dst, fname, to_rclpy(value, type(getattr(dst, fname))))
        elif isinstance(slot, AbstractNestedType):
            vt = slot.value_type
            if isinstance(vt, NamespacedType):
                sub = _nested_class(vt)
                setattr(dst, fname, [to_rclpy(v, sub) for v in value])
            elif isinstance(vt, BasicType) and vt.typename in _NP_DTYPES:
                arr = np.asarray(value, dtype=_NP_DTYPES[vt.typename]).reshape(-1)
                if isinstance(slot, Array):       # fixed-size arrays are numpy arrays in rclpy
                    setattr(dst, fname, arr)
                else:                             # sequences are array.array (one memcpy, not a Python loop)
                    setattr(dst, fname, array.array(_SEQ_TYPECODES[vt.typename], arr.tobytes()))
            elif isinstance(vt, BasicType) and vt.typename == 'octet':
                setattr(dst, fname, [bytes([int(b)]) for b in np.asarray(value, np.uint8).reshape(-1)])
            elif isinstance(vt, BasicType) and vt.typename == 'boolean':
                setattr(dst, fname, [bool(b) for b in value])
            else:                                 # strings, chars
                setattr(dst, fname, [_scalar(v) for v in value])
        elif isinstance(slot, BasicType) and slot.typename == 'octet':
            setattr(dst, fname, bytes([int(value)]) if not isinstance(value, bytes) else value)
        else:
            setattr(dst, fname, _scalar(value))
    return dst


# ============================================================================================ QoS
def contract_qos(rel: str):
    """rclpy QoS of the contract (poco_policy.contract) for a (relative) topic name: what the graph's own
    publishers use, so a replay is indistinguishable from them (e-stop and weights latched, sensors best effort)."""
    return contract.to_rclpy(contract.topic_qos_spec(rel))


def _record_qos(rel: str, pub_qos: list):
    """Subscription QoS compatible with every current publisher (as rosbag2 does): reliable / transient-local
    only when all publishers offer it, so we never fail to match one. Depth: the contract's, at least 10
    (30 for best-effort sensor topics): the recorder must not drop what a burst delivers."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    rel_ok = bool(pub_qos) and all(q.reliability == ReliabilityPolicy.RELIABLE for q in pub_qos)
    tl_ok = bool(pub_qos) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in pub_qos)
    spec = contract.topic_qos_spec(rel)
    depth = max(spec.depth, 30 if spec.reliability == 'best_effort' else 10)
    return contract.to_rclpy(contract.QosSpec(depth, 'reliable' if rel_ok else 'best_effort',
                                              'transient_local' if tl_ok else 'volatile'))


def _qos_to_rosbags(q):
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
    from rosbags.interfaces import (Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime)
    zero = QosTime(0, 0)
    return Qos(history=QosHistory.KEEP_LAST, depth=int(q.depth or 10),
               reliability=(QosReliability.RELIABLE if q.reliability == ReliabilityPolicy.RELIABLE
                            else QosReliability.BEST_EFFORT),
               durability=(QosDurability.TRANSIENT_LOCAL if q.durability == DurabilityPolicy.TRANSIENT_LOCAL
                           else QosDurability.VOLATILE),
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC, liveliness_lease_duration=zero,
               avoid_ros_namespace_conventions=False)


# ============================================================================================ record
class Recorder:
    """Subscribes (raw, no deserialisation) to the wanted topics as their publishers appear and writes the CDR
    bytes with the receive time as log time. Topics are polled so publishers may come and go."""

    def __init__(self, node, writer: bag_io.BagWriter, topics: list[str]):
        self.node, self.writer = node, writer
        self.wanted = {node.resolve_topic_name(t): t for t in topics}
        self.subs: dict[str, Any] = {}
        self.sub_qos: dict[str, Any] = {}
        self.received = 0
        self._warned: set[str] = set()
        self.poll()
        self.timer = node.create_timer(0.25, self.poll)

    def poll(self):
        from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
        for full in self.wanted:
            infos = self.node.get_publishers_info_by_topic(full)
            if not infos:
                continue
            types = {i.topic_type for i in infos}
            rel = _rel(full)
            want_type = bag_io.TOPIC_TYPES.get(rel)
            msgtype = want_type if want_type in types else sorted(types)[0]
            if len(types) > 1 and full not in self._warned:
                self._warned.add(full)
                self.node.get_logger().warning(f'{full}: publishers with several types {types}; recording {msgtype}')
            qos = _record_qos(rel, [i.qos_profile for i in infos if i.topic_type == msgtype])
            old = self.sub_qos.get(full)
            if old is not None:
                # re-subscribe only when a new publisher needs a weaker QoS than the current subscription
                weaker = ((old.reliability == ReliabilityPolicy.RELIABLE and qos.reliability != old.reliability)
                          or (old.durability == DurabilityPolicy.TRANSIENT_LOCAL
                              and qos.durability != old.durability))
                if not weaker:
                    continue
                self.node.destroy_subscription(self.subs.pop(full))
                self.node.get_logger().info(f'{full}: re-subscribing with {qos.reliability.name}/'
                                            f'{qos.durability.name} for a new publisher')
            try:
                cls = _msg_class_rclpy(msgtype)
                if not self.writer.has_topic(full):
                    self.writer.add_topic(full, msgtype, offered_qos=[_qos_to_rosbags(qos)])
            except Exception as e:  # unknown type here or in the typestore: record the rest
                if full not in self._warned:
                    self._warned.add(full)
                    self.node.get_logger().error(f'cannot record {full} ({msgtype}): {e}')
                continue
            self.subs[full] = self.node.create_subscription(
                cls, full, lambda data, info, _t=full: self._on_msg(_t, data, info), qos, raw=True)
            self.sub_qos[full] = qos
            self.node.get_logger().info(f'recording {full} [{msgtype}] '
                                        f'({qos.reliability.name.lower()}, {qos.durability.name.lower()})')

    def _on_msg(self, topic: str, data: bytes, info) -> None:
        t = info.get('received_timestamp') if isinstance(info, dict) else None
        self.writer.write_raw(topic, int(t) if t else time.time_ns(), data)
        self.received += 1


def record(out: str, storage: str = 'mcap', topics: Optional[list[str]] = None, duration: float = 0.0,
           custom_data: Optional[dict] = None, ros_args: Optional[list[str]] = None) -> dict:
    """Record until SIGINT/SIGTERM or `duration` seconds; always closes the bag (valid rosbag2 on disk)."""
    # Written in place (like ros2 bag record): if we are killed hard, what was recorded stays on disk.
    writer = bag_io.BagWriter(out, storage, custom_data=custom_data, atomic=False)
    rclpy = _init_rclpy(ros_args)
    stop = _StopFlag()
    from rclpy.executors import SingleThreadedExecutor
    node = rclpy.create_node('bag_recorder')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    t_end = time.monotonic() + duration if duration and duration > 0 else None
    try:
        Recorder(node, writer, list(topics or bag_io.DEFAULT_RECORD_TOPICS))
        node.get_logger().info(f'recording to {out} ({storage}); stop with Ctrl-C')
        while not stop and (t_end is None or time.monotonic() < t_end):
            executor.spin_once(timeout_sec=0.05)
    finally:
        try:
            writer.close()
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
    counts = dict(writer.counts)
    print(f'bag_record: wrote {sum(counts.values())} messages to {out}: ' +
          ', '.join(f'{k} {v}' for k, v in sorted(counts.items())), flush=True)
    return counts


def _ee_pose_fn(env, proprio: np.ndarray):
    """k -> (position, quaternion wxyz) of the TCP for the recorded joint angles (forward kinematics on a private
    MjData, as the driver would publish ee_pose). None when the env does not expose what this needs."""
    try:
        import mujoco
        model, qadr, site = env.model, env._arm_qadr, env._ee_site
    except (ImportError, AttributeError):
        return None
    data = mujoco.MjData(model)

    def pose(k: int):
        data.qpos[qadr] = proprio[k, :6]
        mujoco.mj_kinematics(model, data)
        quat = np.empty(4)
        mujoco.mju_mat2Quat(quat, data.site_xmat[site])
        return data.site_xpos[site].copy(), quat
    return pose


def write_expert_bag(out: str, task: str = 'pick_cube', episodes: int = 5, seed: int = 0,
                     storage: str = 'mcap', image_size: int = 128, rate_hz: float = 15.0,
                     max_steps: Optional[int] = None, noise_std: float = 0.0, namespace: str = '',
                     gap_s: float = 1.0, transitions: bool = False,
                     encoder_overrides: Optional[dict] = None) -> list[dict]:
    """Scripted sim demonstrations as a rosbag2 with the topics of a live recording, stamped in sim time
    (t = 1 s + k / rate; `gap_s` of reset time between episodes). Returns the expert's episode arrays.
    With `transitions`, also poco/transition messages with frames encoded by the frozen encoder (as the policy
    node publishes them), so `bag_replay` of this bag can feed a learner node.
    Plain Python (no ROS): uses poco_sim's env, ScriptedExpert and collect.run_expert_episode."""
    from poco_sim.collect import run_expert_episode
    from poco_sim.envs import make_env
    from poco_sim.expert import ScriptedExpert
    assembler = None
    if transitions:
        from poco_policy.encoder import EncoderConfig
        from poco_policy.observation import ObservationAssembler, ObservationConfig
        assembler = ObservationAssembler(ObservationConfig(obs_mode='pixels', cameras=bag_io.CAMERAS),
                                         EncoderConfig(**(encoder_overrides or {})))
    env = make_env(task, obs_mode='pixels', image_size=image_size, max_steps=max_steps, seed=seed)
    base = getattr(env, 'unwrapped', env)
    limits = getattr(base, 'joint_limits', None)
    expert = ScriptedExpert(env, noise_std=noise_std, seed=seed)
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    custom = {'task': task, 'source': 'sim_expert', 'control_rate_hz': str(rate_hz), 'seed': str(seed),
              'max_joint_delta': str(getattr(base, 'max_joint_delta', contract.MAX_JOINT_DELTA))}
    eps = []
    try:
        with bag_io.BagWriter(out, storage, custom_data=custom) as w:
            for name in bag_io.DEFAULT_RECORD_TOPICS:
                if name != bag_io.T_TELEOP and (name != bag_io.T_TRANSITION or transitions):
                    w.add_topic(f'{ns}/{name}', bag_io.TOPIC_TYPES[name])
            t = 1_000_000_000
            w.write(f'{ns}/{bag_io.T_ESTOP}', t - 2_000_000, bag_io.bool_msg(False))  # latched e-stop state
            for i in range(episodes):
                ep = run_expert_episode(env, expert, seed + i)
                ee = _ee_pose_fn(base, ep['proprio'])
                feats = None
                if assembler is not None:
                    obs = assembler.assemble_batch({'front': ep['front'], 'wrist': ep['wrist'],
                                                    'proprio': ep['proprio']})
                    feats = obs[:, :assembler.feature_dim]
                t = bag_io.write_episode_to_bag(w, ep, i, t, rate_hz, limits, ns=ns, ee_pose=ee, features=feats)
                t += int(gap_s * 1e9)
                eps.append(ep)
    finally:
        env.close()
    return eps


def record_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='bag_record', description='Record the robot topics into a rosbag2 '
                                '(MCAP by default) with rosbags; Ctrl-C / SIGTERM stops and closes the bag. '
                                'With --sim-expert: write scripted sim demonstrations as such a bag instead.')
    p.add_argument('--out', required=True, help='bag directory to create (must not exist)')
    p.add_argument('--storage', choices=bag_io.STORAGES, default='mcap')
    p.add_argument('--topics', nargs='+', default=None,
                   help='topics to record (relative names resolve in the node namespace); default: '
                        + ' '.join(bag_io.DEFAULT_RECORD_TOPICS))
    p.add_argument('--duration', type=float, default=0.0, help='stop after S seconds (0 = until Ctrl-C)')
    p.add_argument('--task', default=None, help='task name stored in the bag metadata')
    p.add_argument('--sim-expert', action='store_true', help='write scripted demos from poco_sim (no ROS)')
    p.add_argument('--episodes', type=int, default=5)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--image-size', type=int, default=128)
    p.add_argument('--max-steps', type=int, default=None)
    p.add_argument('--noise-std', type=float, default=0.0)
    p.add_argument('--namespace', default='', help='--sim-expert: robot namespace of the topics')
    p.add_argument('--with-transitions', action='store_true',
                   help='--sim-expert: also write poco/transition (frames encoded with the frozen encoder)')
    p.add_argument('--feature-dim', type=int, default=64, help='--with-transitions: encoder features per camera')
    argv, ros_args = _split_ros_args(argv)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[%(name)s] %(message)s')
    try:
        if args.sim_expert:
            t0 = time.perf_counter()
            eps = write_expert_bag(args.out, args.task or 'pick_cube', args.episodes, args.seed, args.storage,
                                   args.image_size, max_steps=args.max_steps, noise_std=args.noise_std,
                                   namespace=args.namespace, transitions=args.with_transitions,
                                   encoder_overrides={'feature_dim': args.feature_dim,
                                                      'image_size': args.image_size})
            n_ok = sum(bool(e.get('success')) for e in eps)
            print(f'bag_record: {len(eps)} expert episodes ({n_ok} successful, '
                  f'{sum(len(e["actions"]) for e in eps)} steps) -> {args.out} '
                  f'in {time.perf_counter() - t0:.1f} s', flush=True)
            return 0
        custom = {'task': args.task} if args.task else {}
        custom['recorder'] = 'poco_learner.bags'
        record(args.out, args.storage, args.topics, args.duration, custom, ros_args)
        return 0
    except BagError as e:
        print(f'bag_record: error: {e}', file=sys.stderr)
        return 2


def recover_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='bag_recover', description='Rebuild a bag whose recorder was killed hard '
                                '(no metadata.yaml, e.g. the .<name>.partial-<pid> folder bag_record leaves) '
                                'from what reached the disk. The source is not modified.')
    p.add_argument('src', help='the unfinished bag folder, or its .mcap / .db3 file')
    p.add_argument('--out', required=True, help='bag directory to create (must not exist)')
    args = p.parse_args(argv)
    try:
        rep = bag_io.recover_bag(args.src, args.out)
    except BagError as e:
        print(f'bag_recover: error: {e}', file=sys.stderr)
        return 2
    print(f'bag_recover: {rep.summary()}', flush=True)
    return 0


# ============================================================================================ ingest
def default_buffer_writer(encoder_checkpoint: str = '', encoder_overrides: Optional[dict] = None,
                          demo: bool = True, capacity: Optional[int] = None):
    """Buffer writer for `bag_io.ingest_bag`: `poco_learner.dataset.load_into_buffer` (the learner's own demo
    loader) with the frozen encoder the policy uses (ObservationAssembler) and ActionScaler normalisation.
    Episode ids are 'bag:<bag name>/episode_<n>', so ingesting the same bag twice adds nothing the second time;
    all episodes are encoded before the first is added, so an error leaves an appended-to buffer unchanged."""
    def write(dataset_dir: Path, buffer_dir: Path, meta: dict) -> None:
        from poco_policy.encoder import EncoderConfig
        from poco_policy.observation import ActionScaler, ObservationAssembler, ObservationConfig

        from .buffer import BufferConfig, ReplayBuffer
        from .dataset import load_into_buffer
        enc_kw = dict(encoder_overrides or {})
        if encoder_checkpoint:
            enc_kw['checkpoint_path'] = encoder_checkpoint
        from .dataset import action_dim
        adim = action_dim(meta)               # the arm's joints + the gripper (= proprio size)
        assembler = ObservationAssembler(ObservationConfig(obs_mode='pixels', cameras=tuple(meta['cameras']),
                                                           proprio_dim=adim), EncoderConfig(**enc_kw))
        scaler = ActionScaler(float(meta['max_joint_delta']), num_joints=adim - 1)
        bag_tag = Path(meta['source']['bag']).name
        if (Path(buffer_dir) / 'log.bin').exists():
            buf = ReplayBuffer.load(str(buffer_dir))
            if buf.obs_dim != assembler.obs_dim or buf.action_dim != scaler.action_dim:
                buf.close()
                raise BagError(f'buffer {buffer_dir} holds obs_dim {buf.obs_dim} / action_dim {buf.action_dim}, '
                               f'this bag and encoder give {assembler.obs_dim} / {scaler.action_dim} (feature_dim, '
                               'cameras or the arm\'s joint count differ from the buffer\'s)')
        else:
            cfg = BufferConfig(directory=str(buffer_dir), **({'capacity': capacity} if capacity else {}))
            buf = ReplayBuffer(cfg, obs_dim=assembler.obs_dim, action_dim=scaler.action_dim)
        try:
            added = load_into_buffer(dataset_dir, buf, assembler, scaler, demo=demo,
                                     id_prefix=f'bag:{bag_tag}/episode_')
        finally:
            buf.close()
        meta['buffer_episodes_added'] = added
        (Path(buffer_dir) / f'ingest-{bag_tag}.json').write_text(json.dumps(
            {'bag': meta['source']['bag'], 'episodes_added': added, 'demo': demo,
             'encoder_fingerprint': assembler.encoder.fingerprint, 'obs_dim': assembler.obs_dim}, indent=1))
    return write


def policy_params(paths) -> dict:
    """The policy node's parameters in ROS 2 parameter files (robot.yaml and the like), as rcl applies them to a
    node named `policy` in any namespace: the `/**` and `.../policy` sections in order, later ones winning.
    The bag tools take the arm from here, so a robot's one robot.yaml serves the live graph and its bags."""
    import yaml  # YAML 1.1: '1e-3' stays a string; callers convert with float()
    out: dict = {}
    for path in paths or ():
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise BagError(f'cannot read parameter file {path}: {e}') from e
        for key, body in doc.items():
            name = str(key).rstrip('/').rsplit('/', 1)[-1]
            if (str(key) == '/**' or name == 'policy') and isinstance(body, dict):
                out.update(body.get('ros__parameters') or {})
    return out


def ingest_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='bag_ingest', description='Turn a rosbag2 recording (MCAP or sqlite3) into '
                                'an episode dataset and/or a replay buffer. Nothing is written unless the '
                                'whole bag ingests.')
    p.add_argument('bag', help='rosbag2 directory (or a single .mcap / .db3 file)')
    p.add_argument('--out', default=None, help='episode dataset directory to create')
    p.add_argument('--buffer', default=None, help='replay buffer directory to create (frames are encoded)')
    p.add_argument('--rate', type=float, default=15.0, help='control rate of the recording [Hz]')
    p.add_argument('--tolerance', type=float, default=None,
                   help='max age [s] of a camera frame / joint state at its command (default 1.5 / rate)')
    p.add_argument('--namespace', default=None, help='robot namespace in the bag (default: auto)')
    p.add_argument('--image-size', type=int, default=None, help='resize frames to N x N (default: keep)')
    p.add_argument('--task', default=None)
    p.add_argument('--max-joint-delta', type=float, default=None,
                   help=f'rad per tick (default: the --params-file policy value, else {contract.MAX_JOINT_DELTA})')
    p.add_argument('--params-file', action='append', default=[], metavar='YAML',
                   help='ROS 2 parameter file(s) of the robot (e.g. your copy of poco_bringup/config/robot.yaml): '
                        'the policy section\'s joint_names, gripper_joint, gripper_closed, gripper_open and '
                        'max_joint_delta describe the arm of the recording (repeatable, later files win)')
    p.add_argument('--joint-names', nargs='+', default=None, metavar='NAME',
                   help='the arm joints in action order (overrides --params-file; default: the sim arm\'s)')
    p.add_argument('--gripper-joint', default=None, help='gripper joint name (overrides --params-file)')
    p.add_argument('--gripper-closed', type=float, default=None, help='gripper position of command 0')
    p.add_argument('--gripper-open', type=float, default=None, help='gripper position of command 1')
    p.add_argument('--include-evaluation', action='store_true')
    p.add_argument('--keep-unfinished', action='store_true', help='keep episodes without end event (timeouts)')
    p.add_argument('--strict', action='store_true', help='error on stale observations instead of dropping')
    p.add_argument('--compress', action='store_true', help='compressed npz episodes')
    p.add_argument('--overwrite', action='store_true', help='replace existing output directories')
    p.add_argument('--append', action='store_true', help='append to an existing --buffer directory')
    p.add_argument('--online', action='store_true',
                   help='store the episodes as online (policy) data, not as demonstrations')
    p.add_argument('--encoder-checkpoint', default='', help='frozen encoder weights (safetensors) for --buffer')
    p.add_argument('--feature-dim', type=int, default=64, help='encoder features per camera (= the policy\'s)')
    p.add_argument('--encoder-image-size', type=int, default=128,
                   help='image size the encoder resizes to (= the policy\'s image_size)')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[%(name)s] %(message)s')
    enc_over = {'feature_dim': args.feature_dim, 'image_size': args.encoder_image_size}
    try:
        # the arm: command line > the policy section of --params-file > the policy node's defaults
        arm = {k: v for k, v in policy_params(args.params_file).items()
               if k in ('joint_names', 'gripper_joint', 'gripper_closed', 'gripper_open', 'max_joint_delta')}
        for k in ('joint_names', 'gripper_joint', 'gripper_closed', 'gripper_open', 'max_joint_delta'):
            if getattr(args, k) is not None:
                arm[k] = getattr(args, k)
        if 'joint_names' in arm:
            arm['joint_names'] = tuple(arm['joint_names'])
        for k in ('gripper_closed', 'gripper_open', 'max_joint_delta'):
            if k in arm:
                arm[k] = float(arm[k])
        cfg = bag_io.IngestConfig(rate_hz=args.rate, tolerance_s=args.tolerance, namespace=args.namespace,
                                  image_size=args.image_size, task=args.task,
                                  include_evaluation=args.include_evaluation, keep_unfinished=args.keep_unfinished,
                                  strict=args.strict, compress=args.compress, **arm)
        writer = (default_buffer_writer(args.encoder_checkpoint, enc_over, demo=not args.online)
                  if args.buffer else None)
        rep = bag_io.ingest_bag(args.bag, args.out, cfg, buffer_dir=args.buffer, buffer_writer=writer,
                                overwrite=args.overwrite, append=args.append)
    except (BagError, ValueError, OSError) as e:  # DatasetError is a ValueError
        print(f'bag_ingest: error: {e}', file=sys.stderr)
        return 2
    targets = ' and '.join(x for x in (args.out, args.buffer) if x)
    print(f'bag_ingest: {rep.summary()} -> {targets}', flush=True)
    for w in rep.warnings:
        print(f'bag_ingest: warning: {w}', file=sys.stderr)
    return 0


# ============================================================================================ replay
# Topics that move the robot or release its e-stop: replaying them into a live graph is dangerous, so they are
# played only when named in --topics or with --all-topics.
ACTUATION_TOPICS = {bag_io.T_COMMANDS, bag_io.T_TELEOP, bag_io.T_ESTOP}


def _topic_selected(full: str, selectors: Optional[list[str]], all_topics: bool = False) -> bool:
    if not selectors:
        return all_topics or _rel(full) not in ACTUATION_TOPICS
    for s in selectors:
        if full == s or full.strip('/') == s.strip('/') or _rel(full) == s.strip('/'):
            return True
    return False


def replay(bag: str, rate: float = 1.0, topics: Optional[list[str]] = None, loop: bool = False,
           wait_for_subscribers: float = 0.0, ros_args: Optional[list[str]] = None,
           namespace: Optional[str] = None, all_topics: bool = False) -> int:
    """Publish a bag's messages with their recorded spacing divided by `rate`. Returns messages published.
    `namespace` moves the bag's robot namespace (e.g. '' or '/robot1') to another one (e.g. '/robot2')."""
    if rate <= 0:
        raise BagError('--rate must be > 0')
    rclpy = _init_rclpy(ros_args)
    stop = _StopFlag()
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.duration import Duration
    from rclpy.qos import ReliabilityPolicy
    node = rclpy.create_node('bag_replay')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    ts = bag_io.typestore()
    published = 0
    try:
        # robot namespace only needed (and auto-detected) to move it; a multi-robot bag plays as recorded
        with bag_io.BagReader(bag, namespace=None if namespace is not None else '') as reader:
            pubs: dict[str, tuple] = {}
            for full, msgtype in sorted(reader.topics.items()):
                if not _topic_selected(full, topics, all_topics):
                    if not topics:
                        node.get_logger().info(f'not replaying {full} (moves the robot / e-stop; name it in '
                                               '--topics or use --all-topics)')
                    continue
                name = full
                if namespace is not None and (reader.namespace == '' or full.startswith(reader.namespace + '/')):
                    new_ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
                    name = new_ns + full[len(reader.namespace):]
                try:
                    cls = _msg_class_rclpy(msgtype)
                except Exception as e:
                    node.get_logger().warning(f'skipping {full}: no rclpy type {msgtype} ({e})')
                    continue
                qos = contract_qos(_rel(full))
                pubs[full] = (node.create_publisher(cls, name, qos), cls, msgtype,
                              qos.reliability == ReliabilityPolicy.RELIABLE)
            if not pubs:
                raise BagError(f'nothing to replay: no selected topic in {sorted(reader.topics)}')
            node.get_logger().info(f'replaying {len(pubs)} topics from {bag} at x{rate}: '
                                   f'{sorted(p.topic_name for p, *_ in pubs.values())}')
            if wait_for_subscribers > 0:
                # Messages published before discovery completes are lost: give subscribers time to match.
                deadline = time.monotonic() + wait_for_subscribers
                while not stop and time.monotonic() < deadline:
                    if all(p.get_subscription_count() > 0 for p, *_ in pubs.values()):
                        break
                    executor.spin_once(timeout_sec=0.05)
                missing = [t for t, (p, *_) in pubs.items() if p.get_subscription_count() == 0]
                if missing:
                    node.get_logger().info(f'no subscriber (yet) on {missing}; playing anyway')
            while not stop:
                t_bag0, t_wall0 = None, None
                for topic, msgtype, t, data in reader.raw_messages(list(pubs)):
                    if stop:
                        break
                    if t_bag0 is None:
                        t_bag0, t_wall0 = t, time.monotonic()
                    due = t_wall0 + (t - t_bag0) / 1e9 / rate
                    while not stop:
                        remaining = due - time.monotonic()
                        if remaining <= 0:
                            break
                        executor.spin_once(timeout_sec=min(remaining, 0.02))
                    pub, cls, _, _ = pubs[topic]
                    try:
                        msg = to_rclpy(ts.deserialize_cdr(data, msgtype), cls)
                    except Exception as e:
                        raise BagError(f'malformed {msgtype} message on {topic} at t={t} ns: {e}') from e
                    pub.publish(msg)
                    published += 1
                if not loop:
                    break
            # Reliable messages still in flight are lost if we exit now: wait for the acknowledgements.
            for pub, _, _, reliable in pubs.values():
                if reliable and pub.get_subscription_count() > 0:
                    pub.wait_for_all_acked(Duration(seconds=3.0))
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    print(f'bag_replay: published {published} messages', flush=True)
    return published


def replay_main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='bag_replay', description='Play a rosbag2 (MCAP or sqlite3) into the running '
                                'graph at the recorded rate (like ros2 bag play), with the contract QoS per topic.')
    p.add_argument('bag')
    p.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    p.add_argument('--topics', nargs='+', default=None, help='only these topics (full or relative names)')
    p.add_argument('--all-topics', action='store_true',
                   help='also replay joint_commands, teleop/action and poco/estop (skipped by default: they '
                        'would move a live robot or release its e-stop)')
    p.add_argument('--loop', action='store_true')
    p.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='S',
                   help='before playing, wait up to S seconds until every replayed topic has a subscriber')
    p.add_argument('--namespace', default=None,
                   help='publish under this robot namespace instead of the recorded one (e.g. /robot2)')
    argv, ros_args = _split_ros_args(argv)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[%(name)s] %(message)s')
    try:
        replay(args.bag, args.rate, args.topics, args.loop, args.wait_for_subscribers, ros_args, args.namespace,
               args.all_topics)
        return 0
    except BagError as e:
        print(f'bag_replay: error: {e}', file=sys.stderr)
        return 2


if __name__ == '__main__':  # python -m poco_learner.bags {record,ingest,replay} ...
    cmd = sys.argv[1] if len(sys.argv) > 1 else ''
    mains = {'record': record_main, 'ingest': ingest_main, 'replay': replay_main}
    if cmd not in mains:
        print('usage: python -m poco_learner.bags {record|ingest|replay} ...', file=sys.stderr)
        sys.exit(2)
    sys.exit(mains[cmd](sys.argv[2:]))
