"""Shared helpers of poco_bringup's tests (a uniquely named module: test dirs of all packages share one
pytest run without __init__.py files, so a second conftest.py/helpers.py could clash)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from poco_bringup import runner

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
# This checkout set up by its own scripts (scripts/setup.sh: .venv/ and install/ in the checkout, what
# scripts/env.sh, bench.sh, run_sim.sh and colcon_ws_check.sh use), as opposed to a copy in a standard
# ws/src/poco-ros workspace that colcon built into ws/install. Tests of those repo-root scripts need it; every
# other test finds the workspace through the environment (poco_policy.testing) and runs in both layouts.
REPO_SETUP = (REPO / 'install' / 'local_setup.bash').is_file() and (REPO / '.venv' / 'bin' / 'python').exists()


def needs_repo_setup(fn):
    """Skip (with the reason) where this checkout has no setup of its own: a ws/src layout under colcon test."""
    import pytest
    return pytest.mark.skipif(not REPO_SETUP, reason='tests a repo-root script (scripts/*.sh); this checkout '
                              'is a ws/src copy without its own .venv/ and install/')(fn)


def make_tmp(tmp_path_factory, name: str) -> Path:
    # scripts/test.sh gives a per-run temp dir; plain pytest falls back to pytest's own.
    base = os.environ.get('POCO_TEST_TMP')
    if base:
        p = Path(base) / f'bringup-{name}-{os.getpid()}-{time.time_ns()}'
        p.mkdir(parents=True)
        return p
    return tmp_path_factory.mktemp(name)


class Procs:
    """Tracks subprocesses started by a test; teardown kills whatever is left (whole process groups)."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd, **kw) -> subprocess.Popen:
        kw.setdefault('start_new_session', True)
        p = subprocess.Popen(cmd, **kw)
        self.procs.append(p)
        return p

    def cleanup(self, pid_dir: Path | None = None):
        for p in self.procs:
            if p.poll() is None:
                # SIGTERM first: a runner then stops its own children (they live in other sessions).
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=20)
                except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
                    pass
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                p.wait(timeout=10)
        # Anything a test child recorded in a pid file must be gone too; the command line is checked so a
        # recycled pid of some other process is never touched.
        for f in sorted(pid_dir.glob('*.pid')) if pid_dir and pid_dir.is_dir() else []:
            try:
                pid = int(f.read_text())
                with open(f'/proc/{pid}/cmdline', 'rb') as fh:
                    cmd = fh.read().decode(errors='replace')
                if pid_alive(pid) and (str(pid_dir.parent) in cmd or cmd == 'sleep\x00300\x00'):
                    os.kill(pid, signal.SIGKILL)
            except (ValueError, ProcessLookupError, PermissionError, OSError):
                pass


def ros_env(domain_id: int) -> dict:
    env = dict(os.environ)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED='1')
    env.pop('ROS_STATIC_PEERS', None)
    return env


def private_domain():
    """(domain id, lock) not used by any runner on this machine right now."""
    d, _, lock = runner.choose_domain_id(None, {})
    return d, lock


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists"; it is dead for our purpose.
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().split(')')[-1].split()[0] != 'Z'
    except OSError:
        return False


def wait_for(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()
