"""Joins per-step transitions and episode events into buffer episodes (plain Python, no ROS).

Transitions and events travel on different topics, so they can arrive in any order: an episode is written to
the buffer's "finished" state only once both its end event and its final observation are in (or after a grace
period, falling back to the last step's observation). Steps go to the buffer as they arrive, so a crash loses
at most the unfinished episode's end, never stored steps.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from poco_policy.contract import (EVENT_ESTOP as ESTOP, EVENT_FAILURE as FAILURE, EVENT_RESET as RESET,
                                  EVENT_START as START, EVENT_SUCCESS as SUCCESS, EVENT_TIMEOUT as TIMEOUT,
                                  END_EVENT_CODES)

log = logging.getLogger('poco_learner.episodes')

END_EVENTS = set(END_EVENT_CODES)  # poco_msgs/EpisodeEvent codes, from the contract (no ROS import)


@dataclass
class RewardConfig:
    success_reward: float = 1.0
    step_penalty: float = 0.0      # subtracted every step (0 = pure sparse reward, the paper's setting)
    failure_penalty: float = 0.0   # subtracted on the last step of failed / e-stopped episodes
    # A timeout ends the task (terminal, no bootstrap) instead of truncating it: with a sparse success reward
    # and no time in the observation, bootstrapping past a failed episode's last state lets the critic carry
    # values learnt on the demos into states the policy never recovers from (docs/learning.md).
    timeout_terminal: bool = True


@dataclass
class _Episode:
    next_step: int = 0
    last_obs: Optional[np.ndarray] = None
    final_obs: Optional[np.ndarray] = None
    end_event: Optional[int] = None
    end_steps: int = 0
    ended_at: float = 0.0
    evaluation: bool = False
    dropped: bool = False
    touched: float = 0.0            # wall time of its last message (idle entries are forgotten)


class EpisodeAssembler:
    """Feeds a ReplayBuffer from transitions + events. `obs_fn(features, proprio) -> obs vector` and
    `action_fn(physical action) -> normalised action` are the boundary conversions."""

    def __init__(self, buffer, obs_fn: Callable, action_fn: Callable, rewards: RewardConfig,
                 learn_from_eval: bool = True, grace_s: float = 2.0, lock=None):
        self.buffer, self.obs_fn, self.action_fn = buffer, obs_fn, action_fn
        self.rewards, self.learn_from_eval, self.grace_s = rewards, learn_from_eval, grace_s
        self.lock = lock
        self.episodes: dict[int, _Episode] = {}
        self.finished: list[tuple[int, int, bool, bool]] = []  # (episode, steps, success, evaluation)
        self.dropped_messages = 0
        self.drop_reasons: dict[str, int] = {}
        # entries with no message for this long and no end are forgotten (a START or an end event for an episode
        # whose steps never come would otherwise stay forever)
        self.idle_s = max(300.0, 10 * grace_s)

    def _ep(self, eid: int) -> _Episode:
        ep = self.episodes.setdefault(eid, _Episode())
        ep.touched = time.monotonic()
        return ep

    def _drop(self, reason: str, detail: str) -> None:
        """Count a dropped message; log the 1st, 10th, 100th, ... of each reason (a flood must not flood the log)."""
        self.dropped_messages += 1
        n = self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1
        if n & (n - 1) == 0 or n % 1000 == 0:   # powers of two, then every 1000th
            log.warning('dropping transition (%s, %d so far): %s', reason, n, detail)

    def on_transition(self, episode_id: int, step_index: int, features, proprio, action, intervention: bool,
                      final_observation: bool) -> bool:
        """Returns False (and stores nothing) for a malformed or out-of-order step."""
        if episode_id not in self.episodes and self._locked(self.buffer.has_finished_episode, episode_id):
            # a late or stray message for an episode that is already stored and finished: never touch it
            self._drop('finished episode', f'episode {episode_id} step {step_index}: already stored and finished')
            return False
        ep = self._ep(episode_id)
        if ep.dropped:
            return False
        try:
            obs = self.obs_fn(np.asarray(features, np.float32), np.asarray(proprio, np.float32))
            if final_observation:
                ep.final_obs = obs
                self._maybe_finish(episode_id)
                return True
            if step_index != ep.next_step:
                raise ValueError(f'step {step_index} arrived, expected {ep.next_step} (lost messages?)')
            act = self.action_fn(np.asarray(action, np.float32))
            reward = -self.rewards.step_penalty
            if ep.evaluation and not self.learn_from_eval:
                ep.next_step += 1
                ep.last_obs = obs
                return True
            self._locked(self.buffer.add_step, episode_id, obs, act, reward, intervention=intervention)
        except ValueError as e:
            self._drop('step gap' if 'expected' in str(e) else 'bad values', f'episode {episode_id} step {step_index}: {e}')
            if 'expected' in str(e):
                # a gap would splice unrelated states into one sequence: drop this episode entirely
                ep.dropped = True
                if (self._locked(self.buffer.has_episode, episode_id)
                        and not self._locked(self.buffer.has_finished_episode, episode_id)):
                    self._locked(self.buffer.abort_episode, episode_id)
            return False
        ep.next_step += 1
        ep.last_obs = obs
        return True

    def on_event(self, episode_id: int, event: int, step_count: int, evaluation: bool):
        if episode_id not in self.episodes and self._locked(self.buffer.has_finished_episode, episode_id):
            self._drop('finished episode', f'event {event} for episode {episode_id}: already stored and finished')
            return
        ep = self._ep(episode_id)
        if event == START:
            ep.evaluation = evaluation
            return
        if event in END_EVENTS and ep.end_event is None:
            ep.end_event, ep.end_steps, ep.ended_at = event, step_count, time.monotonic()
            ep.evaluation = ep.evaluation or evaluation
            self._maybe_finish(episode_id)

    def poll(self):
        """Finish episodes whose final observation never came (grace period over)."""
        now = time.monotonic()
        for eid, ep in list(self.episodes.items()):
            if ep.end_event is not None and ep.final_obs is None and now - ep.ended_at > self.grace_s:
                ep.final_obs = ep.last_obs
                self._maybe_finish(eid)
                if ep.final_obs is None and eid in self.episodes:   # an end event for an episode with no steps
                    del self.episodes[eid]
            elif eid in self.episodes and now - ep.touched > self.idle_s:
                del self.episodes[eid]  # its steps (if any) stay in the buffer as an open episode

    def _locked(self, fn, *args, **kwargs):
        if self.lock is None:
            return fn(*args, **kwargs)
        with self.lock:
            return fn(*args, **kwargs)

    def _maybe_finish(self, eid: int):
        ep = self.episodes[eid]
        if ep.end_event is None or ep.final_obs is None:
            return
        del self.episodes[eid]
        success = ep.end_event == SUCCESS
        n = ep.next_step
        store = not ep.dropped and n > 0 and (self.learn_from_eval or not ep.evaluation)
        self.finished.append((eid, n, success, ep.evaluation))
        del self.finished[:-1000]  # bounded: only recent outcomes are reported
        if not store:
            return
        last = n - 1
        r_last = -self.rewards.step_penalty
        if success:
            r_last += self.rewards.success_reward
        elif ep.end_event in (FAILURE, ESTOP):
            r_last -= self.rewards.failure_penalty
        self._locked(self.buffer.set_reward, eid, last, r_last)
        # success / failure / e-stop end the task (no value after them); a timeout is a truncation unless
        # timeout_terminal.
        terminal = ep.end_event != TIMEOUT or self.rewards.timeout_terminal
        self._locked(self.buffer.end_episode, eid, ep.final_obs, terminal, success)

    def recent_success_rate(self, n: int = 20, evaluation: Optional[bool] = None) -> float:
        xs = [s for (_, _, s, ev) in self.finished if evaluation is None or ev == evaluation][-n:]
        return float(np.mean(xs)) if xs else float('nan')
