"""Every poco_msgs type crosses DDS between two OS processes and comes back unchanged (messages and services)."""
import hashlib
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from rclpy.node import Node

from poco_msgs import msg, srv

sys.path.insert(0, str(Path(__file__).parent))
from echo_node import QOS, TYPES  # noqa: E402


def _filled():
    rng = np.random.default_rng(7)
    chunk = msg.ActionChunk()
    chunk.header.stamp.sec, chunk.header.stamp.nanosec, chunk.header.frame_id = 12, 345, 'base_link'
    chunk.policy_version, chunk.episode_id, chunk.step_index = 7, 2**40 + 3, 35
    chunk.horizon, chunk.action_dim = 5, 7
    chunk.data = rng.standard_normal(35).astype(np.float32).tolist()
    chunk.ee_path = rng.standard_normal(15).astype(np.float32).tolist()

    tr = msg.Transition()
    tr.header.stamp.sec = 99
    tr.episode_id, tr.step_index, tr.chunk_step = 4, 17, 2
    tr.features = rng.standard_normal(128).astype(np.float32).tolist()
    tr.proprio = rng.standard_normal(7).astype(np.float32).tolist()
    tr.action = rng.standard_normal(7).astype(np.float32).tolist()
    tr.intervention, tr.final_observation, tr.policy_version = True, False, 3
    tr.action_stamp.sec, tr.action_stamp.nanosec = 100, 5

    payload = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    w = msg.PolicyWeights()
    w.version, w.format = 9, 'safetensors'
    w.sha256 = hashlib.sha256(payload).hexdigest()
    w.payload = payload
    w.metadata = '{"horizon": 5}'

    st = msg.LearnerStatus()
    st.phase, st.algorithm = 'poco', 'poco'
    st.phase_step, st.update_step = 10, 1010
    st.critic_loss, st.actor_loss, st.bc_loss, st.candidate_loss, st.q_mean = 0.5, 1.5, 0.25, float('nan'), -2.0
    st.buffer_steps, st.demo_steps, st.online_steps, st.episodes = 5000, 3000, 2000, 60
    st.recent_success_rate, st.weights_version, st.updates_per_second = 0.75, 12, 4.5
    st.updates_per_env_step, st.utd_ratio, st.dropped_messages = 0.875, 1.0, 3

    pace = msg.LearnerPace()
    pace.header.stamp.sec = 66
    pace.behind, pace.env_steps, pace.updates, pace.updates_per_env_step = True, 2**33, 17, float('nan')
    pace.utd_ratio, pace.phase = 2.0, 'warmup'

    tick = msg.PolicyTick()
    tick.header.stamp.sec, tick.header.stamp.nanosec = 3, 66666666
    tick.observation_stamp.sec, tick.observation_stamp.nanosec = 3, 66666665
    tick.command_sent, tick.phase = True, 'running'

    ev = msg.EpisodeEvent()
    ev.episode_id, ev.event, ev.step_count, ev.evaluation = 5, msg.EpisodeEvent.ESTOP, 42, True
    ev.detail = 'e-stop pressed'
    return {type(m).__name__: m for m in (chunk, tr, w, st, ev, pace, tick)}


def _same(a, b):
    """Field-by-field equality that treats NaN == NaN and compares float32 arrays exactly."""
    for name in a.get_fields_and_field_types():
        x, y = getattr(a, name), getattr(b, name)
        if hasattr(x, 'get_fields_and_field_types'):
            _same(x, y)
        elif isinstance(x, float) and math.isnan(x):
            assert math.isnan(y), name
        elif isinstance(x, (bytes, bytearray)) or (hasattr(x, '__len__') and not isinstance(x, str)):
            assert np.array_equal(np.asarray(x), np.asarray(y)), name
        else:
            assert x == y, name


def test_every_type_imports_from_the_workspace_and_serialises_in_process():
    """The generated Python code of the sourced workspace (ws/install under colcon test, install/ here): each
    message survives CDR serialisation unchanged, without DDS."""
    import poco_msgs
    from ament_index_python.packages import get_package_prefix
    from rclpy.serialization import deserialize_message, serialize_message
    prefix = Path(get_package_prefix('poco_msgs'))
    assert Path(poco_msgs.__file__).is_relative_to(prefix), (poco_msgs.__file__, prefix)
    sent = _filled()
    assert set(sent) == {t.__name__ for t in TYPES}
    for name, m in sent.items():
        _same(m, deserialize_message(serialize_message(m), type(m)))
    for s in (srv.Reset, srv.SetMode):
        assert s.Request and s.Response and s.Request.__name__.endswith('_Request')


@pytest.fixture()
def echo_process():
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    assert 'ROS_DOMAIN_ID' in env, 'tests must run with a per-run ROS_DOMAIN_ID (scripts/test.sh sets it)'
    p = subprocess.Popen([sys.executable, str(Path(__file__).parent / 'echo_node.py')], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout.readline().strip() == 'echo ready'
        yield p
    finally:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_every_message_and_service_round_trips(echo_process):
    rclpy.init()
    node = Node('roundtrip_test')
    try:
        sent = _filled()
        assert set(sent) == {t.__name__ for t in TYPES}
        got = {}
        pubs = {n: node.create_publisher(type(m), f'in/{n}', QOS) for n, m in sent.items()}
        for t in TYPES:
            node.create_subscription(t, f'out/{t.__name__}', lambda m, n=t.__name__: got.setdefault(n, m), QOS)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in pubs.values()):
            rclpy.spin_once(node, timeout_sec=0.1)
        assert all(p.get_subscription_count() for p in pubs.values()), 'echo process never discovered'
        for n, m in sent.items():
            pubs[n].publish(m)
        while time.monotonic() < deadline and len(got) < len(sent):
            rclpy.spin_once(node, timeout_sec=0.1)
        assert set(got) == set(sent), f'missing: {set(sent) - set(got)}'
        for n in sent:
            _same(sent[n], got[n])
        # The payload is real bytes end to end: the checksum still matches after the trip.
        assert hashlib.sha256(bytes(got['PolicyWeights'].payload)).hexdigest() == sent['PolicyWeights'].sha256

        reset = node.create_client(srv.Reset, 'reset')
        mode = node.create_client(srv.SetMode, 'set_mode')
        assert reset.wait_for_service(timeout_sec=15) and mode.wait_for_service(timeout_sec=15)
        f1 = reset.call_async(srv.Reset.Request(seed=41, evaluation=True))
        f2 = mode.call_async(srv.SetMode.Request(mode='eval'))
        rclpy.spin_until_future_complete(node, f1, timeout_sec=10)
        rclpy.spin_until_future_complete(node, f2, timeout_sec=10)
        assert (f1.result().success, f1.result().episode_id, f1.result().message) == (True, 42, 'seed=41 eval=True')
        assert (f1.result().stamp.sec, f1.result().stamp.nanosec) == (41, 7)
        assert (f2.result().success, f2.result().message) == (True, 'EVAL')
    finally:
        node.destroy_node()
        rclpy.shutdown()
