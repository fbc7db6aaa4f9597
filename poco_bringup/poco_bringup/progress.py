"""Episode / learner bookkeeping of the monitor, in plain Python (the ROS node only feeds it messages).

episodes.csv: one row per finished episode. `env_steps` counts the steps of *training* episodes only (the
interaction budget the learning curve is plotted against); `total_steps` also counts evaluation episodes.
`sim_time_s` is the end event's stamp (node clock: sim time in the sim graph, where it counts every tick since
the sim started, resets included; Unix time on the real robot); `wall_time` / `elapsed_s` / `episode_wall_s`
are wall-clock figures beside it, so curves are in env steps and the wall time a machine needed is reported.
learner.csv: one row per LearnerStatus message (with the achieved updates per env step).
Bad input (unknown event codes, a second end for the same episode, NaN) is counted and skipped, never raised.
"""
from __future__ import annotations

import collections
import csv
import math
import re
import time
from pathlib import Path
from typing import Any, Optional

from poco_bringup.plotting import eval_windows
from poco_policy.contract import (EVENT_ESTOP as ESTOP, EVENT_FAILURE as FAILURE, EVENT_RESET as RESET,
                                  EVENT_START as START, EVENT_SUCCESS as SUCCESS, EVENT_TIMEOUT as TIMEOUT)
OUTCOMES = {SUCCESS: 'success', FAILURE: 'failure', ESTOP: 'estop', TIMEOUT: 'timeout'}

EPISODE_FIELDS = ['wall_time', 'elapsed_s', 'episode_id', 'evaluation', 'outcome', 'success', 'steps',
                  'policy_version', 'env_steps', 'total_steps', 'detail', 'sim_time_s', 'episode_wall_s', 'scene']
# the policy node's start detail of a fixed-scene evaluation (PolicyNodeConfig.eval_scenes): 'evaluation scene k/n'
_SCENE = re.compile(r'evaluation scene (\d+)/\d+$')
LEARNER_FIELDS = ['wall_time', 'elapsed_s', 'phase', 'algorithm', 'phase_step', 'update_step', 'critic_loss',
                  'actor_loss', 'bc_loss', 'candidate_loss', 'q_mean', 'buffer_steps', 'demo_steps',
                  'online_steps', 'episodes', 'recent_success_rate', 'weights_version', 'updates_per_second',
                  'updates_per_env_step', 'utd_ratio', 'dropped_messages']
_MAX_TRACKED = 10_000  # episode ids remembered for start/version/duplicate bookkeeping


class CsvLog:
    """Append-only CSV with a header; a write failure is reported once, not raised."""

    def __init__(self, path: Path, fields: list[str]):
        self.path, self.fields = Path(path), fields
        self.error: Optional[str] = None
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, 'a', newline='')
        self._w = csv.DictWriter(self._f, fieldnames=fields, extrasaction='ignore')
        if new:
            self._w.writeheader()
            self._f.flush()

    def write(self, row: dict) -> bool:
        try:
            self._w.writerow(row)
            self._f.flush()
            return True
        except (OSError, ValueError) as e:
            self.error = str(e)
            return False

    def close(self):
        try:
            self._f.close()
        except OSError:
            pass


def _fmt(x: Any, nd: int = 4) -> Any:
    if isinstance(x, float):
        return 'nan' if math.isnan(x) else ('inf' if math.isinf(x) else round(x, nd))
    return x


class EpisodeTracker:
    def __init__(self, csv_path: Path, *, train_window: int = 20, eval_window: int = 5,
                 t0: Optional[float] = None):
        self.log = CsvLog(csv_path, EPISODE_FIELDS)
        self.t0 = time.time() if t0 is None else t0
        self.train_recent: collections.deque[int] = collections.deque(maxlen=max(1, train_window))
        self.started: collections.OrderedDict[int, bool] = collections.OrderedDict()  # id -> evaluation
        self.finished: collections.OrderedDict[int, None] = collections.OrderedDict()
        self.versions: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.start_wall: collections.OrderedDict[int, float] = collections.OrderedDict()
        self.scenes: collections.OrderedDict[int, int] = collections.OrderedDict()   # id -> evaluation scene k
        self.first_stamp: Optional[float] = None  # node-clock time of the first event (sim time in the sim graph)
        self.last_stamp: Optional[float] = None
        self.env_steps = 0
        self.total_steps = 0
        self.n_train = self.n_eval = 0
        self.train_successes = self.eval_successes = 0
        self.eval_window = eval_window
        self.rows: list[dict] = []  # light copies for the eval windows of the progress line
        self.rejected = 0
        self.last_row: Optional[dict] = None

    @staticmethod
    def _remember(d: collections.OrderedDict, key, value):
        d[key] = value
        d.move_to_end(key)
        while len(d) > _MAX_TRACKED:
            d.popitem(last=False)

    def on_chunk(self, episode_id: int, policy_version: int):
        if episode_id < 0 or policy_version < 0:
            self.rejected += 1
            return
        if policy_version >= self.versions.get(episode_id, -1):
            self._remember(self.versions, int(episode_id), int(policy_version))

    def on_event(self, episode_id: int, event: int, step_count: int, evaluation: bool, detail: str = '',
                 wall_time: Optional[float] = None, stamp_s: Optional[float] = None) -> Optional[dict]:
        """Returns the CSV row when this event finished an episode. stamp_s: the event's header stamp [s]."""
        try:
            episode_id, event, step_count = int(episode_id), int(event), int(step_count)
        except (TypeError, ValueError, OverflowError):
            self.rejected += 1
            return None
        if episode_id < 0 or step_count < 0 or event not in (START, RESET, *OUTCOMES):
            self.rejected += 1
            return None
        now = time.time() if wall_time is None else wall_time
        if stamp_s is not None and math.isfinite(stamp_s) and stamp_s > 0:
            if self.first_stamp is None:
                self.first_stamp = stamp_s
            self.last_stamp = stamp_s
        else:
            stamp_s = None
        if event == START:
            self._remember(self.started, episode_id, bool(evaluation))
            self._remember(self.start_wall, episode_id, now)
            m = _SCENE.match(str(detail))
            if m:
                self._remember(self.scenes, episode_id, int(m.group(1)))
            return None
        if event == RESET:
            return None
        if episode_id in self.finished:  # e.g. an e-stop after the success: the first end counts
            self.rejected += 1
            return None
        self._remember(self.finished, episode_id, None)
        evaluation = bool(evaluation) or self.started.get(episode_id, False)
        success = int(event == SUCCESS)
        self.total_steps += step_count
        if evaluation:
            self.n_eval += 1
            self.eval_successes += success
        else:
            self.n_train += 1
            self.train_successes += success
            self.train_recent.append(success)
            self.env_steps += step_count
        started = self.start_wall.get(episode_id)
        row = dict(wall_time=round(now, 3), elapsed_s=round(now - self.t0, 3), episode_id=episode_id,
                   evaluation=int(evaluation), outcome=OUTCOMES[event], success=success, steps=step_count,
                   policy_version=self.versions.get(episode_id, ''), env_steps=self.env_steps,
                   total_steps=self.total_steps, detail=str(detail).replace('\n', ' ')[:200],
                   sim_time_s='' if stamp_s is None else round(stamp_s, 3),
                   episode_wall_s='' if started is None else round(now - started, 3),
                   scene=self.scenes.get(episode_id, ''))
        self.log.write(row)
        self.last_row = row
        self.rows.append(dict(evaluation=evaluation, success=float(success), env_steps=float(self.env_steps),
                              elapsed_s=row['elapsed_s']))
        return row

    @property
    def train_success_ma(self) -> Optional[float]:
        return sum(self.train_recent) / len(self.train_recent) if self.train_recent else None

    def progress(self) -> str:
        def r(x):
            return '-' if x is None else f'{x:.2f}'
        w = eval_windows(self.rows, self.eval_window)
        first, last = (w[0]['success_rate'], w[-1]['success_rate']) if w else (None, None)
        return (f'ep {self.n_train + self.n_eval} | train {self.n_train} succ {r(self.train_success_ma)}'
                f' (last {self.train_recent.maxlen}) | eval {self.n_eval} succ {r(last)} (pre-trained {r(first)})'
                f' | env steps {self.env_steps}{self.clock_progress()}')

    def clock_progress(self, wall_now: Optional[float] = None) -> str:
        """' (sim 120 s / wall 60 s = x2.0)': node-clock time between the first and last event against the
        wall time since the tracker started; '' before two stamped events."""
        if self.first_stamp is None or self.last_stamp is None or self.last_stamp <= self.first_stamp:
            return ''
        sim = self.last_stamp - self.first_stamp
        wall = (time.time() if wall_now is None else wall_now) - self.t0
        ratio = f' = x{sim / wall:.2f}' if wall > 0 else ''
        return f' (sim {sim:.0f} s / wall {wall:.0f} s{ratio})'


    def close(self):
        self.log.close()


class LearnerLog:
    def __init__(self, csv_path: Path, t0: Optional[float] = None):
        self.log = CsvLog(csv_path, LEARNER_FIELDS)
        self.t0 = time.time() if t0 is None else t0
        self.last: Optional[dict] = None

    def on_status(self, status: dict, wall_time: Optional[float] = None) -> dict:
        now = time.time() if wall_time is None else wall_time
        row = {k: _fmt(status.get(k, '')) for k in LEARNER_FIELDS[2:]}
        for k in ('phase', 'algorithm'):
            row[k] = str(row[k]).replace('\n', ' ')[:40]
        row.update(wall_time=round(now, 3), elapsed_s=round(now - self.t0, 3))
        self.log.write(row)
        self.last = row
        return row

    def progress(self) -> str:
        s = self.last
        if not s:
            return 'learner: no status yet'

        def f(k, spec='.3g'):
            v = s.get(k)
            return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
        upe = s.get('updates_per_env_step')
        utd = s.get('utd_ratio')
        per_step = ''
        if isinstance(upe, (int, float)) and not isinstance(upe, bool):  # 'nan' (a string) before online steps
            per_step = f' {upe:.2f} upd/env step' + (
                f' (target {utd:g})' if isinstance(utd, (int, float)) and not isinstance(utd, bool) and utd > 0
                else '')
        dropped = s.get('dropped_messages')
        dropped = f' | learner dropped {dropped} msgs' if isinstance(dropped, int) and dropped > 0 else ''
        return (f'learner {s["phase"]}/{s["algorithm"]} upd {s["update_step"]} v{s["weights_version"]}'
                f' Lq {f("critic_loss")} La {f("actor_loss")} buf {s["buffer_steps"]}'
                f' ({s["demo_steps"]} demo) {f("updates_per_second", ".2g")} upd/s{per_step}{dropped}')

    def close(self):
        self.log.close()
