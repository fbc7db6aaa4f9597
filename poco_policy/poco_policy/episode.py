"""The policy node's episode lifecycle, without ROS: phases, evaluation schedule, ends (success, timeout, box
failure, e-stop), resets. The node feeds it what happened and publishes what it returns.

    IDLE --request_start--> RESETTING (sim: poco/reset service) or HOMING (real: drive to the home pose)
    RESETTING/HOMING --begin--> RUNNING --end(SUCCESS|FAILURE|TIMEOUT)--> ENDED --request_start--> ...
    any --estop_pressed--> HALTED (ends a running episode as ESTOP); only a new start leaves HALTED, and not
    while the button is still engaged.

Event codes are poco_msgs/EpisodeEvent's, taken from poco_policy.contract (no ROS import).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional

from poco_policy import contract


class Phase(enum.Enum):
    IDLE = 'idle'
    RESETTING = 'resetting'
    HOMING = 'homing'
    RUNNING = 'running'
    ENDED = 'ended'
    HALTED = 'halted'


class Event(enum.IntEnum):
    START = contract.EVENT_START
    SUCCESS = contract.EVENT_SUCCESS
    FAILURE = contract.EVENT_FAILURE
    ESTOP = contract.EVENT_ESTOP
    TIMEOUT = contract.EVENT_TIMEOUT


@dataclass
class LifecycleConfig:
    max_episode_steps: int = 100
    eval_every: int = 5              # every k-th episode evaluates (0 = never)
    initial_eval_episodes: int = 0   # the first n episodes evaluate the starting policy (weights held)
    reset_mode: str = 'service'      # 'service' (sim) | 'home' (real robot)
    # Evaluation scenes: evaluations cycle through this many fixed scenes (0 = a fresh random scene each time),
    # so any eval_scenes consecutive evaluations see the same scenes as the pre-trained block: a window is
    # compared with where the policy started on equal terms (paired), not on another draw of scenes.
    eval_scenes: int = 0
    eval_seed: int = 0               # reset seed of scene k: eval_seed + k (service reset)


def eval_scene_seed_base(eval_seed: int, run_seed: int) -> int:
    """Reset seed of evaluation scene 0 of a run (scene k: + k): each run seed gets its own scenes. The policy
    node and the learning harness both reset with these."""
    return eval_seed + 1000 * run_seed


class EpisodeLifecycle:
    def __init__(self, cfg: LifecycleConfig, first_episode_id: int = 0):
        if cfg.reset_mode not in ('service', 'home'):
            raise ValueError(f"reset_mode must be 'service' or 'home', got {cfg.reset_mode!r}")
        self.cfg = cfg
        self.phase = Phase.IDLE
        self.episode_id = int(first_episode_id)
        self.episodes_started = 0
        self.evaluation = False
        self.evaluations_started = 0
        self.step = 0
        self.success_flag = False
        self.estop = False

    # ------------------------------------------------------------------ queries
    @property
    def can_start(self) -> bool:
        return not self.estop and self.phase in (Phase.IDLE, Phase.ENDED, Phase.HALTED)

    @property
    def weights_frozen(self) -> bool:
        """The initial evaluation block measures the starting policy: no weight swaps until it is over."""
        return self.episodes_started <= self.cfg.initial_eval_episodes

    # ------------------------------------------------------------------ transitions
    def request_start(self, mode: str = 'train') -> Phase:
        """Choose train/eval for the next episode and go to RESETTING or HOMING. mode 'eval' forces evaluation."""
        if not self.can_start:
            raise RuntimeError(f'cannot start an episode while {"e-stop engaged" if self.estop else self.phase.value}')
        self.episodes_started += 1
        k = self.cfg.eval_every
        self.evaluation = (mode == 'eval' or self.episodes_started <= self.cfg.initial_eval_episodes
                           or (k > 0 and self.episodes_started % k == 0))
        self.evaluations_started += self.evaluation
        self.success_flag = False
        self.phase = Phase.HOMING if self.cfg.reset_mode == 'home' else Phase.RESETTING
        return self.phase

    @property
    def eval_scene(self) -> Optional[int]:
        """The fixed scene (0..eval_scenes-1) of the evaluation being started or run, None if it has none."""
        if not self.evaluation or self.cfg.eval_scenes <= 0:
            return None
        return (self.evaluations_started - 1) % self.cfg.eval_scenes

    @property
    def reset_seed(self) -> int:
        """The poco/reset seed of the episode being started: its scene's for a fixed-scene evaluation, else -1
        (the sim draws one)."""
        k = self.eval_scene
        return -1 if k is None else self.cfg.eval_seed + k

    def start_failed(self) -> None:
        """The reset service was unavailable, failed or timed out: back to IDLE (the next tick retries)."""
        if self.phase in (Phase.RESETTING, Phase.HOMING):
            self.phase = Phase.IDLE

    def begin(self) -> Event:
        """The scene is ready (reset answered / home pose reached): the episode runs."""
        if self.phase not in (Phase.RESETTING, Phase.HOMING):
            raise RuntimeError(f'begin() while {self.phase.value}')
        self.episode_id += 1
        self.step, self.success_flag = 0, False
        self.phase = Phase.RUNNING
        return Event.START

    def on_success(self) -> None:
        if self.phase == Phase.RUNNING:
            self.success_flag = True

    def due_end(self) -> Optional[tuple[Event, str]]:
        """An end this tick must report before acting: success pressed, or the step limit H reached."""
        if self.phase != Phase.RUNNING:
            return None
        if self.success_flag:
            return Event.SUCCESS, ''
        if self.step >= self.cfg.max_episode_steps:
            return Event.TIMEOUT, f'step limit {self.cfg.max_episode_steps}'
        return None

    def stepped(self) -> None:
        if self.phase == Phase.RUNNING:
            self.step += 1

    def end(self, event: Event) -> None:
        if self.phase != Phase.RUNNING:
            raise RuntimeError(f'end({event.name}) while {self.phase.value}')
        if event not in (Event.SUCCESS, Event.FAILURE, Event.TIMEOUT, Event.ESTOP):
            raise ValueError(f'{event!r} does not end an episode')
        self.phase = Phase.ENDED

    def estop_pressed(self) -> Optional[Event]:
        """Halt. Returns ESTOP when it ended a running episode (the node reports it), else None."""
        ended = None
        if not self.estop:
            self.estop = True
            if self.phase == Phase.RUNNING:
                ended = Event.ESTOP
        self.phase = Phase.HALTED   # whatever else fails: a release never resumes an episode
        return ended

    def estop_released(self) -> None:
        self.estop = False          # still HALTED: only a new start (reset) moves on
