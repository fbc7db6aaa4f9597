"""The real graph signs weights: without the key config/real.yaml names, `run real` (also --dry-run) fails with
one line telling how to make one; --allow-unsigned runs it unsigned; a key readable by others or a learner and
policy with different keys are refused. The sim graph runs unsigned."""
import os
import subprocess

import pytest

from _bringup_helpers import PYTHON, private_domain, ros_env
from poco_bringup import graph, rosparams


def _run(tmp, home, *args):
    env = dict(ros_env(private_domain()[0]), HOME=str(home))
    r = subprocess.run([PYTHON, '-m', 'poco_bringup.runner', *args], capture_output=True, text=True, timeout=60,
                       env=env, cwd=tmp)
    return r.returncode, r.stdout, r.stderr


def test_real_dry_run_without_key_fails_in_one_line(tmp_path):
    home = tmp_path / 'home'
    home.mkdir()
    rc, out, err = _run(tmp_path, home, 'real', '--dry-run', '--run-dir', str(tmp_path / 'r1'))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert 'weights.key not found' in lines[0] and graph.WEIGHTS_KEY_HELP in lines[0] and '--allow-unsigned' in lines[0]
    # explicitly empty: still refused, with the same recipe
    rc, out, err = _run(tmp_path, home, 'real', '--dry-run', '--run-dir', str(tmp_path / 'r2'),
                        '--set', 'policy.weights_key_file=', '--set', 'learner.weights_key_file=')
    assert rc == 2 and 'weights_key_file is empty' in err and len(err.strip().splitlines()) == 1, err
    # the operator's explicit choice: unsigned
    rc, out, err = _run(tmp_path, home, 'real', '--dry-run', '--run-dir', str(tmp_path / 'r3'), '--allow-unsigned')
    assert rc == 0, err
    for n in ('policy', 'learner'):
        assert rosparams.load_params_file(tmp_path / 'r3' / 'params' / f'{n}.effective.yaml')[f'/{n}'][
            'weights_key_file'] == ''
    # the sim graph needs no key
    rc, out, err = _run(tmp_path, home, 'sim', '--dry-run', '--run-dir', str(tmp_path / 'r4'))
    assert rc == 0, err


def test_real_graph_gets_the_expanded_key_and_checks_it(tmp_path, monkeypatch):
    home = tmp_path / 'home'
    key = home / '.poco' / 'weights.key'
    key.parent.mkdir(parents=True)
    key.write_bytes(os.urandom(32))
    key.chmod(0o600)
    monkeypatch.setenv('HOME', str(home))
    specs = {s.name: s for s in graph.real_graph()}
    for n in ('policy', 'learner'):
        assert specs[n].effective_parameters()['weights_key_file'] == str(key)
    key.chmod(0o644)
    with pytest.raises(ValueError, match='readable by group/others'):
        graph.real_graph()
    key.chmod(0o600)
    other = tmp_path / 'other.key'
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    with pytest.raises(ValueError, match='keys differ'):
        graph.real_graph(overrides=[f'policy.weights_key_file={other}'])
    # one key file named for both on the command line wins over real.yaml's default
    specs = {s.name: s for s in graph.real_graph(overrides=[f'policy.weights_key_file={other}',
                                                            f'learner.weights_key_file={other}'])}
    assert specs['learner'].effective_parameters()['weights_key_file'] == str(other)
