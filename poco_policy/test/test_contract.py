"""poco_policy.contract is the one home of the graph contract: event codes agree with poco_msgs, no package module
keeps its own QoS profiles or event-code constants, the QoS helper builds real rclpy profiles, and importing the
contract imports no ROS."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from poco_policy import contract as C

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ('poco_policy', 'poco_learner', 'poco_sim', 'poco_bringup')
EVENT_NAMES = {'START', 'SUCCESS', 'FAILURE', 'ESTOP', 'TIMEOUT', 'RESET'}
CONTRACT = REPO / 'poco_policy' / 'poco_policy' / 'contract.py'


def package_modules():
    for pkg in PACKAGES:
        yield from sorted((REPO / pkg / pkg).rglob('*.py'))


def test_event_codes_equal_the_message_constants():
    from poco_msgs.msg import EpisodeEvent
    for name, code in C.EVENT_CODES.items():
        assert getattr(EpisodeEvent, name) == code, name
    assert set(C.EVENT_CODES) == {n for n in dir(EpisodeEvent) if n.isupper() and n != 'SLOT_TYPES'}
    assert set(C.END_EVENT_CODES) == {EpisodeEvent.SUCCESS, EpisodeEvent.FAILURE, EpisodeEvent.ESTOP,
                                      EpisodeEvent.TIMEOUT}
    # the users' names are the contract's
    from poco_learner import bag_io, episodes
    from poco_policy.episode import Event
    for name, code in C.EVENT_CODES.items():
        assert getattr(episodes, name) == code and getattr(bag_io, name) == code
        if name != 'RESET':
            assert Event[name] == code


def _int_literal(node) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def _own_event_codes(tree) -> list[str]:
    """Assignments of literal ints (or range(...)) to event-code names, at module or class level."""
    found = []
    bodies = [tree.body] + [n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
    for body in bodies:
        for st in body:
            if isinstance(st, ast.Assign):
                targets, value = st.targets, st.value
            elif isinstance(st, ast.AnnAssign) and st.value is not None:
                targets, value = [st.target], st.value
            else:
                continue
            for t in targets:
                names = [t] if isinstance(t, ast.Name) else list(getattr(t, 'elts', []))
                for i, n in enumerate(names):
                    if not isinstance(n, ast.Name):
                        continue
                    bare = n.id[len('EVENT_'):] if n.id.startswith('EVENT_') else n.id
                    if bare not in EVENT_NAMES:
                        continue
                    v = value
                    if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(names):
                        v = value.elts[i]
                    is_range = (isinstance(v, ast.Call) and isinstance(v.func, ast.Name) and v.func.id == 'range')
                    if _int_literal(v) or is_range:
                        found.append(f'{n.id} (line {st.lineno})')
    return found


def _qos_profile_calls(tree) -> list[int]:
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Call):
            f = n.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ''
            if name == 'QoSProfile':
                out.append(n.lineno)
    return out


def test_no_module_keeps_its_own_qos_or_event_codes():
    mods = list(package_modules())
    assert CONTRACT in mods and len(mods) > 20
    offenders = []
    for f in mods:
        if f == CONTRACT:
            continue
        tree = ast.parse(f.read_text(), str(f))
        rel = f.relative_to(REPO)
        offenders += [f'{rel}:{line}: QoSProfile(...)' for line in _qos_profile_calls(tree)]
        offenders += [f'{rel}: event code {what}' for what in _own_event_codes(tree)]
    assert not offenders, 'take these from poco_policy.contract:\n' + '\n'.join(offenders)


def test_scan_catches_copies():
    """The scan itself finds the patterns it is there for."""
    src = ('from rclpy.qos import QoSProfile\nimport enum\nSTART, SUCCESS = range(2)\nESTOP = 3\n'
           'class E(enum.IntEnum):\n    TIMEOUT = 4\nP = QoSProfile(depth=1)\nQ = rclpy.qos.QoSProfile(depth=2)\n'
           'RESET = C.EVENT_RESET\n')
    tree = ast.parse(src)
    assert _qos_profile_calls(tree) == [7, 8]
    assert [s.split()[0] for s in _own_event_codes(tree)] == ['START', 'SUCCESS', 'ESTOP', 'TIMEOUT']


def test_qos_helper_builds_rclpy_profiles():
    from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                           qos_profile_sensor_data)
    for name in list(C.PROFILES) + list(C.TOPIC_QOS):
        q = C.qos(name)
        spec = C.qos_spec(name)
        assert isinstance(q, QoSProfile)
        assert q.depth == spec.depth and q.history == HistoryPolicy.KEEP_LAST
        assert q.reliability == (ReliabilityPolicy.RELIABLE if spec.reliability == 'reliable'
                                 else ReliabilityPolicy.BEST_EFFORT)
        assert q.durability == (DurabilityPolicy.TRANSIENT_LOCAL if spec.durability == 'transient_local'
                                else DurabilityPolicy.VOLATILE)
    sensor = C.qos('sensor')
    for attr in ('depth', 'history', 'reliability', 'durability'):
        assert getattr(sensor, attr) == getattr(qos_profile_sensor_data, attr), attr
    # the values the graph has always used
    assert C.qos(C.JOINT_COMMANDS).depth == 1
    assert C.qos(C.TRANSITION).depth == 1000 and C.qos(C.EPISODE_EVENT).depth == 100
    assert C.qos(C.POLICY_WEIGHTS).durability == DurabilityPolicy.TRANSIENT_LOCAL
    # e-stop: reliable + volatile, so default-QoS button nodes and latched publishers both reach it
    assert C.qos(C.ESTOP).durability == DurabilityPolicy.VOLATILE
    assert C.qos(C.ESTOP).reliability == ReliabilityPolicy.RELIABLE
    assert C.qos(C.camera_topic('side')).reliability == ReliabilityPolicy.BEST_EFFORT
    with pytest.raises(KeyError):
        C.qos('no/such/topic')
    assert C.topic_qos_spec('no/such/topic') == C.PROFILES[C.DEFAULT_PROFILE]


def test_bag_tools_use_the_contract_profiles():
    from poco_learner import bags
    for topic in C.TOPIC_QOS:
        assert bags.contract_qos(topic) == C.qos(topic), topic
    assert bags.contract_qos(C.JOINT_COMMANDS).depth == 1


def test_layout_and_defaults():
    assert C.NUM_JOINTS == 6 and C.ACTION_DIM == 7 and C.PROPRIO_DIM == 7 and C.GRIPPER_JOINT == 'gripper'
    assert C.MAX_JOINT_DELTA == 0.05
    from poco_learner.bag_io import IngestConfig
    from poco_learner.learner import LearnerConfig
    from poco_policy.observation import ActionScaler
    from poco_policy.teleop_node import TeleopConfig
    from poco_sim.config import SimNodeConfig
    for cfg in (IngestConfig, LearnerConfig, TeleopConfig, SimNodeConfig):
        assert cfg().max_joint_delta == C.MAX_JOINT_DELTA, cfg.__name__
    assert ActionScaler().max_joint_delta == C.MAX_JOINT_DELTA
    assert ActionScaler().action_dim == C.ACTION_DIM


def test_contract_imports_no_ros():
    code = ('import sys; import poco_policy.contract as c; c.qos_spec("joint_states"); '
            'bad = [m for m in sys.modules if m.split(".")[0] in ("rclpy", "poco_msgs", "torch")]; '
            'assert not bad, bad')
    subprocess.run([sys.executable, '-c', code], check=True, timeout=60)
