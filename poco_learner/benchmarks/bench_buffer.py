"""Benchmark `poco_learner.buffer.ReplayBuffer` against a naive reference, in the same run.

    python poco_learner/benchmarks/bench_buffer.py [--episodes 200] [--length 100] [--obs-dim 135] [--reps 5]
                                                   [--json out.json] [--quick]

What is timed (each implementation on the same data, runs interleaved ours/reference, median reported):
  sample      sample(B=256, T=5, gamma=0.99): the learner's per-update batch (obs, T actions, rewards, valid,
              n-step return, next obs, discount, demo/intervention flags)
  add (mem)   add_step throughput, in memory (+ end_episode per episode)
  add (disk)  add_step throughput, persisted so that `kill -9` of the writer loses nothing already added
              (every step handed to the kernel at once; fsync at episode end)
  reload      reopen the persisted buffer (all episodes) and be ready to sample

The naive reference is what one writes first: a python list of episodes, each a list of per-step dicts
{'obs', 'action', 'reward', 'intervention'}; sampling draws (episode, t) from a flat index and walks the python
lists for T steps per sample, then np.stack's the batch. Persistence: one JSON line per step (json.dumps of the
lists, written + flushed to the kernel per step), reload = json.loads per line. A pickle-per-record variant is
timed as a second, faster persistence reference (reference only: the project never unpickles weights or data
from the network).

Before timing, the two samplers are cross-checked: each of our sampled windows is looked up by its start
(episode, t) and recomputed by the reference; all fields must agree.

Note: our add_step validates every step (shapes, finiteness, ids) and takes a lock; the reference does not.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

from poco_learner.buffer import BufferConfig, ReplayBuffer

A = 7


# --------------------------------------------------------------------------------------------- reference
class NaiveBuffer:
    """List of episodes, each a list of per-step dicts; optional JSON-lines (or pickle) append-only log."""

    def __init__(self, path: str | None = None, fmt: str = 'json'):
        self.episodes: list[dict] = []        # {'id', 'steps': [dict], 'final_obs', 'terminal', 'done', 'demo'}
        self.open: dict = {}                  # id -> episode dict
        self.index: list[tuple[int, int]] = []  # (episode position, t) of sampleable steps
        self.fmt = fmt
        self.f = open(path, 'ab') if path else None

    def _log(self, rec: dict) -> None:
        if self.f is None:
            return
        if self.fmt == 'json':
            self.f.write((json.dumps(rec) + '\n').encode())
        else:
            pickle.dump(rec, self.f, protocol=pickle.HIGHEST_PROTOCOL)
        self.f.flush()  # hand it to the kernel now: kill -9 loses nothing

    def _rec_obs(self, x: np.ndarray):
        return x.tolist() if self.fmt == 'json' else x

    def add_step(self, eid, obs, action, reward=0.0, demo=False, intervention=False) -> None:
        ep = self.open.get(eid)
        if ep is None:
            ep = self.open[eid] = {'id': eid, 'steps': [], 'demo': demo, 'done': False}
        step = {'obs': np.array(obs, np.float32), 'action': np.array(action, np.float32), 'reward': float(reward),
                'intervention': bool(intervention)}
        ep['steps'].append(step)
        self._log({'type': 'step', 'id': eid, 'obs': self._rec_obs(step['obs']),
                   'action': self._rec_obs(step['action']), 'reward': step['reward'],
                   'intervention': step['intervention'], 'demo': demo})

    def end_episode(self, eid, final_obs, terminal, success=False) -> None:
        ep = self.open.pop(eid)
        ep.update(final_obs=np.array(final_obs, np.float32), terminal=bool(terminal), success=bool(success),
                  done=True)
        pos = len(self.episodes)
        self.episodes.append(ep)
        self.index.extend((pos, t) for t in range(len(ep['steps'])))
        self._log({'type': 'end', 'id': eid, 'final_obs': self._rec_obs(ep['final_obs']), 'terminal': terminal,
                   'success': success})
        if self.f is not None:
            os.fsync(self.f.fileno())

    def close(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    @classmethod
    def load(cls, path: str, fmt: str = 'json') -> 'NaiveBuffer':
        buf = cls(None, fmt)
        with open(path, 'rb') as f:
            if fmt == 'json':
                recs = (json.loads(line) for line in f)
            else:
                def gen():
                    while True:
                        try:
                            yield pickle.load(f)
                        except EOFError:
                            return
                recs = gen()
            for r in recs:
                if r['type'] == 'step':
                    buf.add_step(r['id'], r['obs'], r['action'], r['reward'], r['demo'], r['intervention'])
                else:
                    buf.end_episode(r['id'], r['final_obs'], r['terminal'], r['success'])
        return buf

    def window(self, pos: int, t: int, T: int, gamma: float) -> dict:
        """One sample, by walking the python lists."""
        ep = self.episodes[pos]
        steps = ep['steps']
        L = len(steps)
        n = min(T, L - t)
        actions, rewards, valid, imask = [], [], [], []
        ret = 0.0
        for k in range(T):
            if k < n:
                s = steps[t + k]
                actions.append(s['action'])
                rewards.append(s['reward'])
                valid.append(1.0)
                imask.append(float(s['intervention']))
                ret += gamma ** k * s['reward']
            else:
                actions.append(steps[L - 1]['action'])
                rewards.append(0.0)
                valid.append(0.0)
                imask.append(0.0)
        next_obs = ep['final_obs'] if t + n == L else steps[t + n]['obs']
        discount = 0.0 if (t + n == L and ep['terminal']) else gamma ** n
        return {'obs': steps[t]['obs'], 'actions': np.stack(actions), 'rewards': np.array(rewards, np.float32),
                'valid': np.array(valid, np.float32), 'returns': np.float32(ret), 'next_obs': next_obs,
                'discount': np.float32(discount), 'is_demo': np.float32(ep['demo']),
                'intervention': np.float32(steps[t]['intervention']),
                'intervention_mask': np.array(imask, np.float32)}

    def sample(self, B: int, T: int, gamma: float, rng: random.Random) -> dict:
        items = [self.window(*self.index[rng.randrange(len(self.index))], T, gamma) for _ in range(B)]
        return {k: np.stack([it[k] for it in items]).astype(np.float32) for k in items[0]}


# ----------------------------------------------------------------------------------------------- data
def make_episodes(n: int, length: int, D: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n):
        L = int(rng.integers(max(2, length // 2), length + 1))
        success = bool(rng.random() < 0.5)
        rew = np.zeros(L, np.float32)
        if success:
            rew[-1] = 1.0
        eps.append({'id': i, 'obs': rng.standard_normal((L + 1, D)).astype(np.float32),
                    'actions': rng.uniform(-1, 1, (L, A)).astype(np.float32), 'rewards': rew,
                    'terminal': success or bool(rng.random() < 0.2), 'success': success,
                    'demo': i < n // 10, 'interv': rng.random(L) < 0.05})
    return eps


def fill(buf, eps) -> None:
    for e in eps:
        L = len(e['rewards'])
        for t in range(L):
            buf.add_step(e['id'], e['obs'][t], e['actions'][t], float(e['rewards'][t]), demo=e['demo'],
                         intervention=bool(e['interv'][t]))
        buf.end_episode(e['id'], e['obs'][L], e['terminal'], e['success'])


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def cross_check(ours: ReplayBuffer, naive: NaiveBuffer, eps: list[dict], T: int, gamma: float) -> int:
    """Each of our sampled windows, recomputed by the reference from its start: all fields must agree."""
    where = {}
    for pos, ep in enumerate(naive.episodes):
        for t, s in enumerate(ep['steps']):
            where[s['obs'].tobytes()] = (pos, t)
    s = ours.sample(512, T, gamma, np.random.default_rng(1))
    for i in range(512):
        pos, t = where[s['obs'][i].tobytes()]
        ref = naive.window(pos, t, T, gamma)
        for k, v in ref.items():
            if not np.allclose(np.asarray(v, np.float32), s[k][i], atol=1e-6):
                raise AssertionError(f'sample mismatch in {k!r} at episode {pos} t={t}: ours {s[k][i]} ref {v}')
    return 512


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--episodes', type=int, default=200)
    ap.add_argument('--length', type=int, default=100, help='max episode length (lengths drawn in [L/2, L])')
    ap.add_argument('--obs-dim', type=int, default=135, help='2 cameras x 64 features + 7 proprio')
    ap.add_argument('--batch', type=int, default=256)
    ap.add_argument('--horizon', type=int, default=5)
    ap.add_argument('--reps', type=int, default=5, help='interleaved repetitions of every measurement')
    ap.add_argument('--sample-calls', type=int, default=50, help='sample() calls per timed repetition (ours)')
    ap.add_argument('--dir', default=None, help='scratch directory (default: a temp dir, removed at the end)')
    ap.add_argument('--json', default=None)
    ap.add_argument('--quick', action='store_true',
                    help='smoke run: small sizes, one repetition (what `make bench` runs)')
    args = ap.parse_args(argv)
    if args.quick:
        ap.set_defaults(episodes=20, length=40, reps=1, sample_calls=5)
        args = ap.parse_args(argv)
    gamma = 0.99
    D, B, T = args.obs_dim, args.batch, args.horizon
    eps = make_episodes(args.episodes, args.length, D)
    n_steps = sum(len(e['rewards']) for e in eps)
    scratch = tempfile.mkdtemp(prefix='bench_buffer_', dir=args.dir)
    res: dict = {'sizes': dict(episodes=len(eps), steps=n_steps, obs_dim=D, action_dim=A, batch=B, horizon=T)}
    m: dict[str, list[float]] = {k: [] for k in (
        'sample_ours_ms', 'sample_ref_ms', 'add_mem_ours_sps', 'add_mem_ref_sps', 'add_disk_ours_sps',
        'add_disk_ref_json_sps', 'add_disk_ref_pickle_sps', 'reload_ours_s', 'reload_ref_json_s',
        'reload_ref_pickle_s')}
    try:
        # reference-correctness of the semantics (not timed)
        ours = ReplayBuffer(BufferConfig(), D, A)
        naive = NaiveBuffer()
        fill(ours, eps)
        fill(naive, eps)
        res['cross_checked_samples'] = cross_check(ours, naive, eps, T, gamma)
        rng_np, rng_py = np.random.default_rng(0), random.Random(0)
        ours.sample(B, T, gamma, rng_np)
        naive.sample(B, T, gamma, rng_py)
        nref = max(3, args.sample_calls // 10)
        for rep in range(args.reps):
            dt, _ = timed(lambda: [ours.sample(B, T, gamma, rng_np) for _ in range(args.sample_calls)])
            m['sample_ours_ms'].append(dt / args.sample_calls * 1e3)
            dt, _ = timed(lambda: [naive.sample(B, T, gamma, rng_py) for _ in range(nref)])
            m['sample_ref_ms'].append(dt / nref * 1e3)

            # in-memory add
            o2 = ReplayBuffer(BufferConfig(), D, A)
            dt, _ = timed(lambda: fill(o2, eps))
            m['add_mem_ours_sps'].append(n_steps / dt)
            n2 = NaiveBuffer()
            dt, _ = timed(lambda: fill(n2, eps))
            m['add_mem_ref_sps'].append(n_steps / dt)
            del o2, n2

            # persisted add + reload
            d_ours = os.path.join(scratch, f'ours{rep}')
            o3 = ReplayBuffer(BufferConfig(directory=d_ours), D, A)
            dt, _ = timed(lambda: fill(o3, eps))
            o3.close()
            m['add_disk_ours_sps'].append(n_steps / dt)
            for fmt in ('json', 'pickle'):
                p = os.path.join(scratch, f'ref{rep}.{fmt}')
                n3 = NaiveBuffer(p, fmt)
                dt, _ = timed(lambda: fill(n3, eps))
                n3.close()
                m[f'add_disk_ref_{fmt}_sps'].append(n_steps / dt)
            if rep == 0:
                res['disk_bytes'] = {'ours': os.path.getsize(os.path.join(d_ours, 'log.bin')),
                                     'ref_json': os.path.getsize(os.path.join(scratch, 'ref0.json')),
                                     'ref_pickle': os.path.getsize(os.path.join(scratch, 'ref0.pickle'))}

            def reload_ours():
                b = ReplayBuffer.load(d_ours)
                b.sample(B, T, gamma, 0)
                n = len(b)
                b.close()
                return n

            dt, n = timed(reload_ours)
            assert n == n_steps, (n, n_steps)
            m['reload_ours_s'].append(dt)
            for fmt in ('json', 'pickle'):
                p = os.path.join(scratch, f'ref{rep}.{fmt}')

                def reload_ref():
                    b = NaiveBuffer.load(p, fmt)
                    b.sample(B, T, gamma, random.Random(0))
                    return sum(len(e['steps']) for e in b.episodes)

                dt, n = timed(reload_ref)
                assert n == n_steps, (n, n_steps)
                m[f'reload_ref_{fmt}_s'].append(dt)
            shutil.rmtree(d_ours)
            for fmt in ('json', 'pickle'):
                os.remove(os.path.join(scratch, f'ref{rep}.{fmt}'))
        ours.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in m.items()}
    res['median'] = med
    res['runs'] = m
    res['ratios'] = {
        'sample_speedup': med['sample_ref_ms'] / med['sample_ours_ms'],
        'add_mem_throughput_ratio': med['add_mem_ours_sps'] / med['add_mem_ref_sps'],
        'add_disk_throughput_ratio_vs_json': med['add_disk_ours_sps'] / med['add_disk_ref_json_sps'],
        'add_disk_throughput_ratio_vs_pickle': med['add_disk_ours_sps'] / med['add_disk_ref_pickle_sps'],
        'reload_speedup_vs_json': med['reload_ref_json_s'] / med['reload_ours_s'],
        'reload_speedup_vs_pickle': med['reload_ref_pickle_s'] / med['reload_ours_s'],
    }
    r = res['ratios']
    print(json.dumps(res, indent=1))
    print(f'buffer: {n_steps} steps in {len(eps)} episodes, obs_dim {D}; medians of {args.reps} interleaved runs')
    print(f"  sample(B={B}, T={T}):  ours {med['sample_ours_ms']:.2f} ms   reference {med['sample_ref_ms']:.2f} ms"
          f"   x{r['sample_speedup']:.1f} faster")
    print(f"  add_step, memory:    ours {med['add_mem_ours_sps']:,.0f} steps/s   reference "
          f"{med['add_mem_ref_sps']:,.0f} steps/s   ratio {r['add_mem_throughput_ratio']:.2f}")
    print(f"  add_step, persisted: ours {med['add_disk_ours_sps']:,.0f} steps/s   reference json "
          f"{med['add_disk_ref_json_sps']:,.0f} (ratio {r['add_disk_throughput_ratio_vs_json']:.2f}), pickle "
          f"{med['add_disk_ref_pickle_sps']:,.0f} (ratio {r['add_disk_throughput_ratio_vs_pickle']:.2f})")
    print(f"  reload:              ours {med['reload_ours_s']:.3f} s   reference json {med['reload_ref_json_s']:.3f} s "
          f"(x{r['reload_speedup_vs_json']:.1f}), pickle {med['reload_ref_pickle_s']:.3f} s "
          f"(x{r['reload_speedup_vs_pickle']:.1f})")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == '__main__':
    sys.exit(0 if main() else 1)
