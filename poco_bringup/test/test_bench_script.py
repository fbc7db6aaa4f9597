"""`make bench` (scripts/bench.sh): every package's benchmarks/*.py runs in its --quick mode."""
from __future__ import annotations

import subprocess

from _bringup_helpers import REPO, needs_repo_setup, private_domain, ros_env

BENCHMARKS = sorted(REPO.glob('poco_*/benchmarks/*.py'))


def test_every_benchmark_has_a_quick_mode():
    assert BENCHMARKS
    missing = [str(p.relative_to(REPO)) for p in BENCHMARKS if "add_argument('--quick'" not in p.read_text()]
    assert not missing, f'bench.sh runs every benchmark with --quick; these have none: {missing}'


@needs_repo_setup
def test_bench_script_runs_the_selected_benchmarks_and_summarises():
    env = ros_env(private_domain()[0])
    r = subprocess.run(['bash', str(REPO / 'scripts' / 'bench.sh'), 'expert_success', 'bench_buffer'],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert '=== poco_learner/benchmarks/bench_buffer.py --quick' in out
    assert '=== poco_sim/benchmarks/expert_success.py --quick' in out
    assert 'sample(B=256, T=5)' in out and 'pick_cube   noiseless' in out  # the benchmarks' own output
    assert '[bench] 2 benchmark(s), quick mode:' in out
    assert out.count('  ok  ') == 2 and 'FAILED' not in out
    r = subprocess.run(['bash', str(REPO / 'scripts' / 'bench.sh'), 'no_such_benchmark'],
                       capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2 and 'no benchmark matches' in r.stderr
    h = subprocess.run(['bash', str(REPO / 'scripts' / 'bench.sh'), '--help'], capture_output=True, text=True)
    assert h.returncode == 0 and 'quick' in h.stdout and 'set -euo' not in h.stdout


def test_make_bench_calls_the_script():
    text = (REPO / 'Makefile').read_text()
    assert 'bash scripts/bench.sh' in text and (REPO / 'scripts' / 'bench.sh').is_file()
