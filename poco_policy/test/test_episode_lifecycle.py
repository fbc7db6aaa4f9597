"""The policy node's episode lifecycle as a plain class: every transition, evaluation schedule, e-stop."""
import pytest

from poco_policy.episode import EpisodeLifecycle, Event, LifecycleConfig, Phase


def make(**kw):
    return EpisodeLifecycle(LifecycleConfig(**{'max_episode_steps': 3, 'eval_every': 4, **kw}), first_episode_id=100)


def run_to_start(lc, mode='train'):
    lc.request_start(mode)
    assert lc.begin() == Event.START
    assert lc.phase == Phase.RUNNING


def test_start_success_and_ids():
    lc = make()
    assert lc.phase == Phase.IDLE and lc.can_start
    assert lc.request_start() == Phase.RESETTING
    assert not lc.can_start
    with pytest.raises(RuntimeError):
        lc.request_start()                          # no second start while resetting
    lc.begin()
    assert (lc.episode_id, lc.step) == (101, 0)
    lc.stepped()
    assert lc.due_end() is None
    lc.on_success()
    assert lc.due_end() == (Event.SUCCESS, '')
    lc.end(Event.SUCCESS)
    assert lc.phase == Phase.ENDED and lc.can_start
    run_to_start(lc)
    assert lc.episode_id == 102 and not lc.success_flag   # a new episode forgets the old success


def test_timeout_at_the_step_limit():
    lc = make()
    run_to_start(lc)
    for _ in range(3):
        assert lc.due_end() is None
        lc.stepped()
    assert lc.due_end() == (Event.TIMEOUT, 'step limit 3')
    lc.end(Event.TIMEOUT)
    assert lc.phase == Phase.ENDED


def test_box_failure_and_end_rules():
    lc = make()
    with pytest.raises(RuntimeError):
        lc.end(Event.FAILURE)                       # nothing runs
    run_to_start(lc)
    with pytest.raises(ValueError):
        lc.end(Event.START)
    lc.end(Event.FAILURE)                           # the node saw the end effector leave the box
    assert lc.phase == Phase.ENDED
    lc.on_success()                                 # a late success press changes nothing
    assert not lc.success_flag and lc.due_end() is None


def test_estop_ends_a_running_episode_and_holds_until_released_and_restarted():
    lc = make()
    run_to_start(lc)
    assert lc.estop_pressed() == Event.ESTOP
    assert lc.phase == Phase.HALTED and not lc.can_start
    assert lc.estop_pressed() is None               # held button: reported once
    with pytest.raises(RuntimeError, match='e-stop'):
        lc.request_start()
    lc.estop_released()
    assert lc.phase == Phase.HALTED and lc.can_start   # released: waits for a new start, never resumes
    run_to_start(lc)
    # pressed while idle or resetting: no episode to end, still halted
    lc.end(Event.SUCCESS)
    assert lc.estop_pressed() is None and lc.phase == Phase.HALTED
    lc.estop_released()
    lc.request_start()
    assert lc.estop_pressed() is None and lc.phase == Phase.HALTED


def test_reset_failure_and_homing():
    lc = make()
    lc.request_start()
    lc.start_failed()
    assert lc.phase == Phase.IDLE and lc.episodes_started == 1
    real = make(reset_mode='home')
    assert real.request_start() == Phase.HOMING
    real.begin()
    assert real.phase == Phase.RUNNING
    with pytest.raises(ValueError):
        make(reset_mode='teleport')


def schedule(lc, n, *attrs):
    """Start and end n episodes; per attribute, its value right after each start."""
    seen = {a: [] for a in attrs}
    for _ in range(n):
        lc.request_start()
        for a in attrs:
            seen[a].append(getattr(lc, a))
        lc.begin()
        lc.end(Event.TIMEOUT)
    return [seen[a] for a in attrs]


def test_evaluation_schedule_initial_block_and_forced_eval():
    lc = make(initial_eval_episodes=2, eval_every=3)
    flags, frozen = schedule(lc, 8, 'evaluation', 'weights_frozen')
    # episodes 1-2: the pre-trained block; then every 3rd episode (3, 6)
    assert flags == [True, True, True, False, False, True, False, False]
    assert frozen == [True, True] + [False] * 6
    lc.request_start('eval')
    assert lc.evaluation
    never = make(eval_every=0)
    never.request_start()
    assert not never.evaluation


def test_evaluations_cycle_through_fixed_scenes():
    """eval_scenes = 3: evaluations reset with seeds base+0, +1, +2, +0, ... (training episodes: -1, the sim
    draws), so any 3 consecutive evaluations see the initial block's scenes."""
    lc = make(initial_eval_episodes=3, eval_every=2, eval_scenes=3, eval_seed=500)
    seeds, scenes = schedule(lc, 11, 'reset_seed', 'eval_scene')
    # episodes 1-3 the initial block, then every 2nd episode (4, 6, 8, 10) evaluates
    assert seeds == [500, 501, 502, 500, -1, 501, -1, 502, -1, 500, -1]
    assert scenes == [0, 1, 2, 0, None, 1, None, 2, None, 0, None]
    free = make(initial_eval_episodes=2, eval_scenes=0)
    free.request_start()
    assert free.evaluation and free.reset_seed == -1 and free.eval_scene is None
