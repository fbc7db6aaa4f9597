"""The pacing sim's rules (poco_sim.sim_node.Pacer, plain Python): who the sim waits for, and when it stops."""
import pytest

pytest.importorskip('rclpy')
from poco_sim.sim_node import Pacer  # noqa: E402

P = 1 / 15
T1, T2 = 66_666_666, 133_333_332  # stamps of ticks 1 and 2


def test_waits_for_the_policy_ack_and_its_command():
    p = Pacer(P, timeout_s=1.0, real_time_factor=1.0, max_real_time_factor=0.0)
    p.stepped(0.0)
    assert p.waiting_for(T1, 0.01) == 'clock'  # no policy yet: wall-clock pace
    assert p.waiting_for(T1, P + 0.001) is None
    p.on_ack(T1, command_sent=True, now=0.1)  # the policy is here: lockstep from now on
    assert p.waiting_for(T1, 0.1) == 'policy'  # its command for T1 has not arrived
    p.on_command(T1)
    assert p.waiting_for(T1, 0.1) is None  # as fast as allowed, no wall-clock pace
    p.stepped(0.1)
    assert p.waiting_for(T2, 0.2) == 'policy'
    p.on_ack(T2, command_sent=False, now=0.2)  # idle tick: nothing to wait for
    assert p.waiting_for(T2, 0.2) is None


def test_waits_while_the_learner_is_behind_until_it_is_silent():
    p = Pacer(P, timeout_s=1.0, real_time_factor=1.0, max_real_time_factor=0.0)
    p.on_ack(T1, False, 0.0)
    p.stepped(0.0)
    p.on_ack(T2, False, 0.0)
    p.on_pace(True, 0.0)
    assert p.waiting_for(T2, 0.5) == 'learner'
    p.on_pace(False, 0.6)
    assert p.waiting_for(T2, 0.6) is None
    p.on_pace(True, 0.7)
    assert p.waiting_for(T2, 1.5) == 'learner'
    assert p.waiting_for(T2, 1.71) is None  # no pace message for > timeout: the learner is gone
    # a long learner stall is no reason to give up on the policy: it is asked only after the next step
    p.stepped(5.0)
    assert p.policy_here and p.waiting_for(T2 + T1, 5.01) == 'policy'


def test_a_silent_policy_is_not_waited_for_and_the_sim_runs_at_its_rate():
    p = Pacer(P, timeout_s=1.0, real_time_factor=2.0, max_real_time_factor=0.0)
    p.on_ack(T1, False, 0.0)
    p.stepped(0.0)
    assert p.waiting_for(T2, 0.9) == 'policy'
    assert p.waiting_for(T2, 1.01) is None and not p.policy_here  # silent for the timeout: absent
    p.stepped(1.01)
    assert p.waiting_for(T2 + T1, 1.01 + P / 2 - 0.001) == 'clock'  # real_time_factor 2
    assert p.waiting_for(T2 + T1, 1.01 + P / 2 + 0.001) is None
    p.on_ack(T2 + T1, False, 1.1)  # back
    assert p.policy_here


def test_max_real_time_factor_caps_the_speed():
    p = Pacer(P, timeout_s=1.0, real_time_factor=1.0, max_real_time_factor=10.0)
    p.on_ack(T1, False, 0.0)
    p.stepped(0.0)
    p.on_ack(T2, False, 0.0)
    assert p.waiting_for(T2, P / 10 - 0.001) == 'clock'
    assert p.waiting_for(T2, P / 10 + 0.001) is None
