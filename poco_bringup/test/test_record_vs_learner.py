"""Issue #6: record a live sim session to MCAP while the learner learns from it; the bag, ingested, must hold
the same episodes (lengths, actions, rewards) as the live learner stored, and pre-training must run on it."""
import signal
import subprocess

import numpy as np
import rclpy

from poco_learner.bag_io import IngestConfig, ingest_bag, load_dataset_episodes
from poco_learner.buffer import ReplayBuffer
from poco_policy.observation import ActionScaler

from test_end_to_end import Proc, Watcher, _exe  # same-folder helpers (processes, recorder of topics)


def test_recorded_bag_equals_what_the_live_learner_stored(tmp_path):
    demos = tmp_path / 'demos'
    # pixels mode: a bag holds what a real robot gives (camera images), and ingest encodes them
    r = subprocess.run([_exe('poco_sim', 'collect_demos'), '--task', 'pick_cube', '--obs-mode', 'pixels',
                        '--episodes', '3', '--out', str(demos), '--seed', '5'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = tmp_path / 'run'
    sim = Proc(tmp_path, 'poco_sim', 'sim_node', 'sim', dict(task='pick_cube', obs_mode='pixels', seed=2))
    policy = Proc(tmp_path, 'poco_policy', 'policy_node', 'policy',
                  dict(obs_mode='pixels', max_episode_steps=25, eval_every=0, auto_reset=True))
    learner = Proc(tmp_path, 'poco_learner', 'learner_node', 'learner', {
        'run_dir': str(run_dir), 'demo_dataset': str(demos), 'obs_mode': 'pixels',
        'agent.actor_hidden_dims': [64, 64], 'agent.critic_hidden_dims': [64, 64], 'agent.batch_size': 32,
        'agent.num_candidates': 4, 'agent.flow_steps': 4, 'agent.horizon': 5, 'agent.pretrain_steps': 50,
        'agent.critic_warmup_steps': 20, 'publish_every': 10, 'checkpoint_every_s': 2.0, 'status_rate_hz': 4.0})
    bag = tmp_path / 'live_bag'
    rec = subprocess.Popen([_exe('poco_learner', 'bag_record'), '--out', str(bag)], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    procs = [sim, policy, learner]
    rclpy.init()
    w = Watcher()
    try:
        # at least 3 finished episodes after the recorder is surely subscribed
        assert w.spin_until(lambda: sum(e.event in (1, 2, 4) for e in w.events) >= 4, 180, procs), \
            f'too few episodes\n{policy.text()[-2000:]}\n{learner.text()[-2000:]}'
        w.spin_until(lambda: False, 1.0, procs)
        rec.send_signal(signal.SIGINT)
        out, _ = rec.communicate(timeout=30)
        assert rec.returncode == 0, out
        learner.stop(signal.SIGINT)   # clean stop: the buffer file is closed
        policy.stop()
    finally:
        w.destroy_node()
        rclpy.shutdown()
        if rec.poll() is None:
            rec.kill()
        for p in procs:
            p.stop()

    rep = ingest_bag(bag, tmp_path / 'ds', IngestConfig(tolerance_s=0.4))
    meta, bag_eps = load_dataset_episodes(tmp_path / 'ds')
    assert rep.episodes >= 2, rep.summary()
    assert rep.stamp_aligned_steps >= 0.95 * (rep.steps + rep.episodes), rep.summary()
    assert not [w for w in rep.warnings if 'differ from the actions' in w], rep.warnings

    buf = ReplayBuffer.load(str(run_dir / 'buffer'))
    live = [buf.get_episode(i) for i in buf.episode_ids()]
    live = [e for e in live if not e['demo'] and e['ended']]
    scaler = ActionScaler(0.05)
    # the recorder may have joined mid-episode: match bag episodes to live ones by length and rewards
    matched = 0
    for be in bag_eps:
        cands = [le for le in live if len(le['actions']) == len(be['actions'])
                 and np.allclose(le['rewards'], be['rewards'])]
        assert cands, f'bag episode of {len(be["actions"])} steps has no live counterpart'
        errs = [np.abs(scaler.denormalize(le['actions']) - be['actions']).max(axis=1) for le in cands]
        best = min(errs, key=lambda e: np.median(e))
        # Ingest finds the joint state each command was computed from by the transition's stamp, so actions
        # agree to float precision (a joint state the recorder dropped would fall back to arrival order).
        assert np.mean(best < 1e-4) >= 0.95, best
        matched += 1
    assert matched == len(bag_eps) >= 2
    assert any(be['success'] for be in bag_eps) == any(np.sum(be['rewards']) > 0 for be in bag_eps)

    # offline pre-training from the ingested bag works
    r = subprocess.run([_exe('poco_learner', 'pretrain'), '--dataset', str(tmp_path / 'ds'), '--out',
                        str(tmp_path / 'pre'), '--steps', '20', '--set', 'actor_hidden_dims=[32,32]',
                        '--set', 'critic_hidden_dims=[32,32]', '--set', 'batch_size=16', '--no-progress'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / 'pre.safetensors').exists() or list(tmp_path.glob('pre*.safetensors'))
