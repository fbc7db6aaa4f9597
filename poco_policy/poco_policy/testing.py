"""Test support shared by the packages' test suites, benchmarks and fuzzers (no pytest, no rclpy import).

Everything is found through the sourced workspace, never through this checkout's layout, so the suites run
the same from the repo root (`scripts/test.sh`: install/ here) and in a standard `ws/src/poco-ros` workspace
(`colcon test`: ws/install):
  - `executable(pkg, name)`: an installed executable, lib/<pkg>/<name> under the package's prefix
    (ament_index_python, i.e. AMENT_PREFIX_PATH of the sourced workspace);
  - `share_file(pkg, *parts)`: a file under share/<pkg>/;
  - `ros_env(domain)`: the environment for child ROS processes (loopback-only discovery, a private domain);
  - `NodeProc`: one node in its own process (own session) with a params file and a log file.
"""
from __future__ import annotations

import os
import random
import subprocess
from signal import SIGCONT, SIGINT, SIGKILL
from pathlib import Path
from typing import Optional


def package_prefix(pkg: str) -> Path:
    """Install prefix of `pkg` in the sourced workspace; AssertionError saying what to do when it is not there."""
    from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    try:
        return Path(get_package_prefix(pkg))
    except PackageNotFoundError:
        raise AssertionError(f'package {pkg} is not in the sourced workspace (AMENT_PREFIX_PATH): build it '
                             '(scripts/setup.sh, or colcon build) and source it (scripts/env.sh, or '
                             'install/setup.bash)') from None


def installed(pkg: str, *parts: str) -> Path:
    """<install prefix of pkg>/<parts...>, not checked (a package missing from the sourced workspace gives a
    relative path that does not exist, for the caller's own message)."""
    try:
        return package_prefix(pkg).joinpath(*parts)
    except AssertionError:
        return Path(f'<{pkg} not in the sourced workspace>').joinpath(*parts)


def executable(pkg: str, name: str) -> str:
    """Path of the executable `name` that package `pkg` installed (what `ros2 run pkg name` runs)."""
    p = package_prefix(pkg) / 'lib' / pkg / name
    assert p.exists(), f'{p} missing: rebuild the workspace (scripts/setup.sh, or colcon build)'
    return str(p)


def share_file(pkg: str, *parts: str) -> Path:
    """Path of share/<pkg>/<parts...> of the sourced workspace."""
    p = package_prefix(pkg).joinpath('share', pkg, *parts)
    assert p.exists(), f'{p} missing: rebuild the workspace (scripts/setup.sh, or colcon build)'
    return p


def ros_env(domain: Optional[int] = None, **extra: str) -> dict:
    """os.environ for a child ROS process: loopback-only discovery, no static peers, unbuffered output, and
    ROS_DOMAIN_ID `domain` (None: the caller's own, i.e. the one this process's rclpy uses)."""
    env = dict(os.environ, ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST', PYTHONUNBUFFERED='1', **extra)
    if domain is not None:
        env['ROS_DOMAIN_ID'] = str(domain)
    env.pop('ROS_STATIC_PEERS', None)
    return env


def private_domain() -> int:
    """A random ROS domain id in 120..200 (the test suites' range)."""
    return random.randint(120, 200)


def params_file(tmp: Path, node: str, params: dict) -> Path:
    """A ROS 2 params file `<tmp>/<node>.params.yaml` with `params` for the node `node` in any namespace."""
    import yaml
    p = Path(tmp) / f'{node}.params.yaml'
    p.write_text(yaml.safe_dump({f'/**/{node}': {'ros__parameters': dict(params)}}))
    return p


class NodeProc:
    """The installed executable `exe` of `pkg` as node `name` with `params` (a params file), in its own process
    group, output to `<tmp>/<name>.log`; or any command `cmd` the same way."""

    def __init__(self, tmp: Path, pkg: str, exe: str, name: str, params: Optional[dict] = None,
                 env: Optional[dict] = None, cmd: Optional[list] = None):
        self.name, self.log_path = name, Path(tmp) / f'{name}.log'
        if cmd is None:
            cmd = [executable(pkg, exe), '--ros-args', '-r', f'__node:={name}', '--params-file',
                   str(params_file(tmp, name, params or {}))]
        self.log = open(self.log_path, 'a')
        self.p = subprocess.Popen(cmd, env=env if env is not None else ros_env(), stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        return self.log_path.read_text(errors='replace')

    def alive(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig) -> None:
        os.killpg(self.p.pid, sig)

    def stop(self, sig=SIGINT, timeout: float = 15) -> Optional[int]:
        """`sig` to the process group (after SIGCONT, in case a test stopped it), SIGKILL after `timeout`."""
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, SIGCONT)
                os.killpg(self.p.pid, sig)
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, SIGKILL)
                self.p.wait(5)
            except ProcessLookupError:
                self.p.wait(5)
        self.log.close()
        return self.p.returncode
