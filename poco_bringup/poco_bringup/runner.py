"""`poco_run`: the pip-only stand-in for `ros2 launch poco_bringup <graph>.launch.py`.

`launch`/`launch_ros` are not installable from PyPI, so this starts the same NodeSpecs (graph.py) as plain
OS processes with the same command line launch_ros would build:

    install/<pkg>/lib/<pkg>/<exe> [arguments] --ros-args -r __node:=<name> [-r __ns:=<ns>] [-r from:=to]
        --params-file <yaml> ... --params-file <run_dir>/params/<name>.run.yaml

Usage:  poco_run sim [--duration 30m] [--run-dir DIR] [--task pick_cube] [--obs-mode state] [--set node.param=v]
        poco_run real ...      poco_run path/to/graph.py ...  (a file defining `graph(args: GraphArgs) -> [NodeSpec]`)
(the same entry point is the ROS executable `ros2 run poco_bringup run`, install/poco_bringup/lib/poco_bringup/run).
--run-dir DIR resumes the run in DIR when it holds one (checkpoint, buffer); without it every run gets a new
runs/<timestamp>[-N], so a default never picks up an earlier run.

Before anything starts (also for --dry-run), every node's effective parameters (package YAMLs, --params-file,
--set) are checked against the config dataclass the node declares: an unknown name or a wrong type is an
error naming the parameter and the type it expects.

A node marked `respawn` (the learner with --respawn) is started again `respawn_delay` s after it exits while
the graph runs, with the same command line and environment (launch_ros `respawn=True`); its exits are logged and
counted as crashes in the final report (exit status 1 when one was not a clean stop).

Every child gets ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST (workplace rule: loopback only), a Fast DDS profile
that binds DDS to --dds-interfaces (default 127.0.0.1; poco_bringup/dds.py) and the run's
ROS_DOMAIN_ID (--domain-id, else $ROS_DOMAIN_ID, else a free one picked per run). Each child runs in its own
process group; log lines are prefixed with `[name]`. Ctrl-C / SIGTERM / --duration stop everything: SIGINT,
wait, SIGTERM, wait, SIGKILL. Exit status 1 when a node crashed (named, with its last lines), 2 on bad
arguments or parameters or a missing executable, else 0 (also after a clean Ctrl-C, so wrapper scripts carry on).
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import dataclasses
import fcntl
import importlib.util
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional, Sequence, TextIO

import yaml

from poco_bringup import dds
from poco_bringup import graph as graph_mod
from poco_bringup import rosparams
from poco_bringup.graph import GraphArgs, NodeSpec
from poco_policy.config import fresh_run_dir

TAIL_LINES = 25
# Exit codes that mean "stopped because we asked it to".
_CLEAN_STOP = {0, -signal.SIGINT, 128 + signal.SIGINT, -signal.SIGTERM, 128 + signal.SIGTERM}
_DOMAIN_LOCK_DIR = Path('/tmp/poco_ros_domains')


class UsageError(Exception):
    pass


def parse_duration(text: str | None) -> Optional[float]:
    """'90', '90s', '30m', '1.5h' -> seconds; None/'0'/'' = no limit."""
    if text in (None, ''):
        return None
    m = re.fullmatch(r'\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*', str(text))
    if not m:
        raise UsageError(f'bad duration {text!r} (use e.g. 90, 90s, 30m, 2h)')
    value = float(m.group(1)) * {'': 1, 's': 1, 'm': 60, 'h': 3600}[m.group(2)]
    return value or None


# ----------------------------------------------------------------------------------------- domain id
def _lock_domain(d: int):
    _DOMAIN_LOCK_DIR.mkdir(parents=True, exist_ok=True)
    f = open(_DOMAIN_LOCK_DIR / f'{d}.lock', 'w')
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def choose_domain_id(explicit: Optional[int], environ: dict) -> tuple[int, str, object]:
    """(domain id, where it came from, lock handle to keep open for the run)."""
    if explicit is not None:
        return explicit, '--domain-id', None
    if environ.get('ROS_DOMAIN_ID', '').strip():
        try:
            return int(environ['ROS_DOMAIN_ID']), '$ROS_DOMAIN_ID', None
        except ValueError:
            raise UsageError(f'ROS_DOMAIN_ID={environ["ROS_DOMAIN_ID"]!r} is not an integer')
    # Per run: a random id whose lock file no other runner on this machine holds. 1..100 stays inside the
    # range whose Fast DDS ports are valid with default settings.
    candidates = list(range(1, 101))
    random.Random(os.getpid() ^ time.time_ns()).shuffle(candidates)
    for d in candidates:
        lock = _lock_domain(d)
        if lock is not None:
            return d, 'picked for this run', lock
    raise UsageError('no free ROS domain id (all 100 locked?); pass --domain-id')


def child_environment(base: dict, domain_id: int, run_dir: Path) -> dict:
    env = dict(base)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env.pop('ROS_STATIC_PEERS', None)  # static peers could point off-host: loopback only
    env.pop('ROS_LOCALHOST_ONLY', None)  # deprecated; conflicts with the discovery range
    env['PYTHONUNBUFFERED'] = '1'  # line-by-line logs through the pipes
    env['PYTHONFAULTHANDLER'] = '1'  # a segfaulting node still leaves a traceback in its last lines
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'
    env['RCUTILS_LOGGING_BUFFERED_STREAM'] = '1'
    env['ROS_LOG_DIR'] = str(run_dir / 'logs' / 'ros')
    return env


# ------------------------------------------------------------------------------------ command lines
def resolve_executable(spec: NodeSpec) -> list[str]:
    if spec.command:
        return list(spec.command)
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:  # pragma: no cover - ament_index comes with rclpy
        raise UsageError('ament_index_python missing: source scripts/env.sh')
    try:
        prefix = get_package_prefix(spec.package)
    except PackageNotFoundError:
        raise UsageError(f'node {spec.name!r}: package {spec.package!r} not found '
                         f'(built? `bash scripts/setup.sh`, then `source scripts/env.sh`)')
    exe = Path(prefix) / 'lib' / spec.package / spec.executable
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        raise UsageError(f'node {spec.name!r}: executable {exe} not found (rebuild: bash scripts/setup.sh)')
    return [str(exe)]


def write_params(spec: NodeSpec, params_dir: Path) -> tuple[list[str], Path]:
    """Params files for the command line (dicts written like launch_ros does) + the effective-params file."""
    params_dir.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    n_dicts = sum(isinstance(p, dict) and not isinstance(p, rosparams.GraphDefaults) for p in spec.parameters)
    for i, p in enumerate(spec.parameters):
        if isinstance(p, rosparams.GraphDefaults):
            path = params_dir / f'{spec.key}.defaults.yaml'
            path.write_text(rosparams.params_file_text(
                p.section(spec.fqn), rosparams.flatten(p), '# graph defaults (below every params file)\n'))
            files.append(str(path))
        elif isinstance(p, dict):
            tag = 'run' if n_dicts == 1 else f'run{i}'
            path = params_dir / f'{spec.key}.{tag}.yaml'
            path.write_text(rosparams.params_file_text(
                spec.fqn, rosparams.flatten(p), '# per-run parameters written by the runner\n'))
            files.append(str(path))
        else:
            files.append(str(p))
    effective = params_dir / f'{spec.key}.effective.yaml'
    header = ('# Effective parameter overrides of %s, merged from (in order):\n%s'
              % (spec.fqn, ''.join(f'#   {f}\n' for f in files)))
    params = rosparams.merge_sources(files, spec.fqn)
    effective.write_text(rosparams.params_file_text(spec.fqn, params, header))
    if (spec.package, spec.executable) == ('poco_learner', 'learner_node'):
        # the learner fills every agent value the files leave open from its preset: show what it trains with
        from poco_learner.learner import LearnerConfig, effective_parameters
        fields = {f.name for f in dataclasses.fields(LearnerConfig)}
        node_only = {k: v for k, v in params.items() if k.split('.')[0] not in fields}  # e.g. weights_key_file
        try:
            resolved = effective_parameters({k: v for k, v in params.items() if k not in node_only})
            resolved.update(node_only)
        except (KeyError, ValueError) as e:
            raise UsageError(f'{spec.name}: {e.args[0] if e.args else e}')
        (params_dir / f'{spec.key}.config.yaml').write_text(rosparams.params_file_text(
            spec.fqn, resolved, '# The configuration the learner trains with: the effective parameters above with\n'
            '# every agent.* value resolved (AgentConfig defaults <- preset <- explicit values).\n'))
    return files, effective


def build_command(spec: NodeSpec, params_files: Sequence[str]) -> list[str]:
    cmd = resolve_executable(spec) + list(spec.arguments)
    cmd += ['--ros-args', '-r', f'__node:={spec.name}']
    if spec.namespace.strip('/'):
        cmd += ['-r', f'__ns:=/{spec.namespace.strip("/")}']
    for src, dst in spec.remappings.items():
        cmd += ['-r', f'{src}:={dst}']
    for f in params_files:
        cmd += ['--params-file', f]
    return cmd


# --------------------------------------------------------------------------------------- processes
_libc = None


def _die_with_parent(parent_pid: int):
    # Runs in the child before exec: if the runner is SIGKILLed, the kernel SIGTERMs its nodes.
    if _libc is not None:
        _libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


class Output:
    """Serialised, prefixed output to the terminal and run_dir/logs/run.log."""

    def __init__(self, stream: TextIO, log_path: Optional[Path], width: int = 10):
        self.stream, self.width = stream, width
        self.lock = threading.Lock()
        self.log = open(log_path, 'a', buffering=1) if log_path else None

    def line(self, prefix: str, text: str):
        s = f'{prefix:<{self.width}} {text}\n'
        with self.lock:
            try:
                self.stream.write(s)
                self.stream.flush()
            except (OSError, ValueError):  # terminal gone (SIGHUP/EIO/broken pipe): keep the log file
                pass
            if self.log:
                self.log.write(s)

    def runner(self, text: str):
        self.line('[runner]', text)

    def close(self):
        if self.log:
            self.log.close()


class Child:
    def __init__(self, spec: NodeSpec, cmd: list[str], out: Output, log_dir: Path):
        self.spec, self.cmd, self.out = spec, cmd, out
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.log_path = log_dir / f'{spec.key}.log'
        self.popen: Optional[subprocess.Popen] = None
        self.rc: Optional[int] = None
        self.stop_signal: Optional[int] = None  # strongest signal we sent
        self.crashed = False
        self.reader: Optional[threading.Thread] = None
        self.restarts = 0
        self.restart_at: Optional[float] = None      # monotonic time of a pending respawn
        self.past_exits: list[str] = []              # exits of earlier instances (respawned nodes)
        self.pids: list[int] = []

    @property
    def name(self):
        return self.spec.key  # the node name, or its label where names repeat (several robots)

    def start(self, env: dict):
        self.popen = subprocess.Popen(
            self.cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**env, **self.spec.env}, start_new_session=True,  # own process group, Ctrl-C goes via us
            preexec_fn=lambda pid=os.getpid(): _die_with_parent(pid))
        self.pids.append(self.popen.pid)

    def restart(self, env: dict):
        """A new instance of an exited node (respawn). The runner has threads by now; the preexec_fn only calls
        prctl and getppid through an already loaded libc, which needs no lock another thread could hold."""
        self.join_reader()
        self.past_exits.append(self.describe_exit())
        self.rc, self.stop_signal, self.restart_at = None, None, None
        self.restarts += 1
        self.start(env)
        self.start_reader()

    def start_reader(self):
        self.reader = threading.Thread(target=self._read, name=f'log-{self.name}', daemon=True)
        self.reader.start()

    def _read(self):
        with open(self.log_path, 'ab') as log:
            for raw in iter(self.popen.stdout.readline, b''):
                log.write(raw)
                log.flush()
                text = raw.decode('utf-8', errors='replace').rstrip('\r\n')
                self.tail.append(text)
                self.out.line(self.spec.prefix, text)
        self.popen.stdout.close()

    def poll(self) -> Optional[int]:
        """Exit code once exited (reaps it), killing leftovers of its process group first."""
        if self.rc is not None or self.popen is None:  # None: never started
            return self.rc if self.popen is not None else 0
        try:
            # WNOWAIT: the exited leader stays a zombie, so its group id cannot be reused while we kill
            # any grandchildren still in the group.
            info = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            info = True
        if info is None:
            return None
        self._killpg(signal.SIGKILL)
        self.rc = self.popen.wait()
        return self.rc

    def _killpg(self, sig: int):
        try:
            os.killpg(self.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def send(self, sig: int):
        if self.popen is not None and self.poll() is None:
            self.stop_signal = sig
            self._killpg(sig)

    def join_reader(self, timeout: float = 2.0):
        if self.reader:
            self.reader.join(timeout)

    def describe_exit(self) -> str:
        rc = self.rc
        if rc is None:
            return 'running'
        if rc < 0:
            try:
                return f'killed by {signal.Signals(-rc).name}'
            except ValueError:
                return f'killed by signal {-rc}'
        return f'exit code {rc}'


class Runner:
    def __init__(self, specs: list[NodeSpec], run_dir: Path, env: dict, *, out: Optional[TextIO] = None,
                 sigint_timeout: float = 10.0, sigterm_timeout: float = 5.0):
        if not specs:
            raise UsageError('empty graph')
        names = [s.key for s in specs]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise UsageError(f'duplicate node names {sorted(dup)} (logs/params are per name)')
        self.specs, self.run_dir, self.env = specs, run_dir, env
        self.sigint_timeout, self.sigterm_timeout = sigint_timeout, sigterm_timeout
        (run_dir / 'logs').mkdir(parents=True, exist_ok=True)
        width = max(len(s.prefix) for s in specs + [NodeSpec('', '', 'runner')])
        self.out = Output(out or sys.stdout, run_dir / 'logs' / 'run.log', width)
        self.children: list[Child] = []
        for s in specs:  # resolve everything before starting anything: fail fast, start nothing
            files, _ = write_params(s, run_dir / 'params')
            self.children.append(Child(s, build_command(s, files), self.out, run_dir / 'logs'))
        self._wake = threading.Event()
        self.stop_reason: Optional[str] = None
        self._escalate = False
        self._signals = 0

    # signals -------------------------------------------------------------------------------------
    def request_stop(self, reason: str):
        if self.stop_reason is None:
            self.stop_reason = reason
        self._wake.set()

    def _on_signal(self, signum, _frame):
        self._signals += 1
        if self._signals > 1:  # impatient second Ctrl-C: skip the grace period
            self._escalate = True
        self.request_stop(f'{signal.Signals(signum).name} received')

    def install_signal_handlers(self):
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, self._on_signal)

    # life cycle ----------------------------------------------------------------------------------
    def start(self):
        global _libc
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:  # pragma: no cover
            _libc = None
        for c in self.children:  # all Popen first: preexec_fn is only safe while we have no threads
            c.start(self.env)
            self.out.runner(f'started {c.name} (pid {c.popen.pid}): {" ".join(c.cmd)}')
        for c in self.children:
            c.start_reader()

    def wait(self, duration: Optional[float]) -> None:
        deadline = None if duration is None else time.monotonic() + duration
        while self.stop_reason is None:
            for c in self.children:
                if c.rc is None and c.poll() is not None:
                    self._on_exit(c)
                if c.restart_at is not None and time.monotonic() >= c.restart_at and self.stop_reason is None:
                    c.restart(self.env)
                    self.out.runner(f'restarted {c.name} (pid {c.popen.pid}, restart {c.restarts})')
            if deadline is not None and time.monotonic() >= deadline:
                self.request_stop(f'duration of {duration:g} s reached')
            self._wake.wait(0.1)

    def _on_exit(self, c: Child):
        c.join_reader()
        if c.rc != 0:
            c.crashed = True
            self.out.runner(f'NODE CRASHED: {c.name} ({c.describe_exit()}); its last lines:')
            for line in c.tail:
                self.out.runner(f'  {c.name}| {line}')
        else:
            self.out.runner(f'{c.name} exited ({c.describe_exit()})')
        if c.spec.required:
            self.request_stop(f'required node {c.name} exited')
        elif c.spec.respawn and self.stop_reason is None:
            c.restart_at = time.monotonic() + c.spec.respawn_delay
            self.out.runner(f'respawn: restarting {c.name} in {c.spec.respawn_delay:g} s')

    def _wait_all(self, timeout: float, grace: bool = True) -> list[Child]:
        """Poll until all children exited or `timeout`; a second Ctrl-C cuts grace periods short."""
        end = time.monotonic() + timeout
        while True:
            alive = [c for c in self.children if c.poll() is None]
            if not alive or time.monotonic() >= end or (grace and self._escalate):
                return alive
            time.sleep(0.05)

    def shutdown(self):
        self.out.runner(f'stopping: {self.stop_reason}')
        for c in self.children:
            c.send(signal.SIGINT)
        alive = self._wait_all(self.sigint_timeout)
        if alive:
            self.out.runner(f'still running after SIGINT: {[c.name for c in alive]} -> SIGTERM')
            for c in alive:
                c.send(signal.SIGTERM)
            alive = self._wait_all(1.0 if self._escalate else self.sigterm_timeout, grace=False)
        if alive:
            self.out.runner(f'still running after SIGTERM: {[c.name for c in alive]} -> SIGKILL')
            for c in alive:
                c.send(signal.SIGKILL)
            self._wait_all(10.0, grace=False)
        for c in self.children:
            c.join_reader()

    def report(self) -> int:
        failed = []
        for c in self.children:
            if c.popen is None:
                self.out.runner(f'  {c.name:<12} {"not started":<22}')
                continue
            status = 'ok'
            if c.crashed:
                status = 'CRASHED'
            elif c.rc not in _CLEAN_STOP and not (c.stop_signal == signal.SIGKILL and c.rc == -signal.SIGKILL):
                # Non-zero exit while stopping (exception in a shutdown handler...): still a crash.
                c.crashed, status = True, 'CRASHED while stopping'
                self.out.runner(f'NODE CRASHED: {c.name} ({c.describe_exit()}) while stopping; its last lines:')
                for line in c.tail:
                    self.out.runner(f'  {c.name}| {line}')
            elif c.stop_signal in (signal.SIGTERM, signal.SIGKILL):
                status = f'ok (needed {signal.Signals(c.stop_signal).name})'
            if c.crashed:
                failed.append(c.name)
            if c.restarts:
                status += f' (restarted {c.restarts}x after: {", ".join(c.past_exits)})'
            self.out.runner(f'  {c.name:<12} {c.describe_exit():<22} {status}')
        if failed:
            self.out.runner(f'FAILED: crashed node(s): {", ".join(failed)} (logs: {self.run_dir / "logs"})')
            return 1
        return 0

    def run(self, duration: Optional[float]) -> int:
        start_error = None
        try:
            self.start()
            self.wait(duration)
        except OSError as e:  # a node could not be exec'd: stop the ones already running
            start_error = e
            self.request_stop(f'could not start a node: {e}')
            for c in self.children:  # keep draining the pipes of those that did start
                if c.popen is not None and c.reader is None:
                    c.start_reader()
        finally:
            self.shutdown()
        rc = self.report()
        self.out.close()
        return 2 if start_error is not None else rc  # the start-up failure is the root cause

    def summary(self) -> list[dict]:
        return [dict(name=c.name, package=c.spec.package, executable=c.spec.executable, fqn=c.spec.fqn,
                     command=c.cmd, pid=c.popen.pid if c.popen else None, exit=c.rc, crashed=c.crashed,
                     log=str(c.log_path), restarts=c.restarts, pids=c.pids, past_exits=c.past_exits)
                for c in self.children]


# ----------------------------------------------------------------------------------------------- CLI
def load_graph_file(path: str, args: GraphArgs) -> list[NodeSpec]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f'graph {path!r}: not "sim", "real" or a .py file')
    spec = importlib.util.spec_from_file_location(f'poco_graph_{p.stem}', p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, 'graph'):
        raise UsageError(f'{path}: must define graph(args: GraphArgs) -> list[NodeSpec]')
    return list(mod.graph(args))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog='poco_run', description='Start a poco-ros node graph without `ros2 launch` (same graph as the '
        'launch files). Ctrl-C stops all nodes cleanly.')
    ap.add_argument('graph', help='"sim", "real", or a .py file defining graph(args) -> [NodeSpec]')
    ap.add_argument('--duration', help='stop after this long (90, 90s, 30m, 2h); default: until Ctrl-C')
    ap.add_argument('--run-dir', help='run directory; an existing one is resumed (default: a new runs/<timestamp>)')
    ap.add_argument('--domain-id', type=int, help='ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID, else picked per run)')
    ap.add_argument('--params-file', action='append', default=[], dest='params_files', metavar='YAML',
                    help='extra ROS params file (repeatable; after the package configs)')
    ap.add_argument('--set', action='append', default=[], dest='overrides', metavar='NODE.PARAM=VALUE',
                    help='parameter override (repeatable; applied last)')
    for f in graph_mod.graph_fields():  # the graph's own arguments: one definition for launch and runner
        if f.name in ('run_dir', 'params_files', 'overrides'):
            continue
        opt = '--' + f.name.replace('_', '-')
        if f.type in (bool, 'bool'):
            ap.add_argument(opt, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata['help'])
        else:
            ap.add_argument(opt, default=f.default, choices=f.metadata['choices'] or None, help=f.metadata['help'])
    ap.add_argument('--dds-interfaces', default=','.join(dds.DEFAULT_INTERFACES), metavar='IP[,IP...]',
                    help='bind DDS to these interface addresses via a Fast DDS profile written to the run folder '
                         '(default: 127.0.0.1, this host only); a FASTDDS_DEFAULT_PROFILES_FILE already set wins')
    ap.add_argument('--sigint-timeout', type=float, default=10.0, help='grace period after SIGINT [s]')
    ap.add_argument('--sigterm-timeout', type=float, default=5.0, help='grace period after SIGTERM [s]')
    ap.add_argument('--dry-run', action='store_true', help='write params, print the commands, start nothing')
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = build_parser()
    ns = ap.parse_args(argv)
    lock = None
    try:
        duration = parse_duration(ns.duration)
        if ns.run_dir:  # named explicitly: an existing run folder is resumed (checkpoint, buffer)
            run_dir = Path(ns.run_dir).resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
        else:           # the default is always a new folder, never another run's
            try:
                run_dir = fresh_run_dir(Path('runs'))
            except RuntimeError as e:
                raise UsageError(str(e))
        kw = {f.name: getattr(ns, f.name) for f in graph_mod.graph_fields()
              if f.name not in ('run_dir',)}
        gargs = GraphArgs(run_dir=str(run_dir), **kw)
        try:
            if ns.graph in graph_mod.GRAPHS:
                specs = graph_mod.GRAPHS[ns.graph](**dataclasses.asdict(gargs))
            else:
                # A custom graph gets --set applied here (silently ignoring it would be worse).
                specs = graph_mod.apply_overrides(load_graph_file(ns.graph, gargs), gargs.overrides)
        except (ValueError, FileNotFoundError) as e:
            raise UsageError(str(e))
        errors = rosparams.check_graph(specs, gargs.overrides)  # also for --dry-run: fail here, not in a node
        if errors:
            raise UsageError('\npoco_run: error: '.join(errors))
        try:
            interfaces = dds.check_interfaces([a for a in ns.dds_interfaces.split(',') if a.strip()])
        except ValueError as e:
            raise UsageError(f'--dds-interfaces: {e}')
        domain_id, source, lock = choose_domain_id(ns.domain_id, os.environ)
        env = child_environment(os.environ, domain_id, run_dir)
        env.update(dds.dds_env(run_dir, interfaces, os.environ))
        runner = Runner(specs, run_dir, env, sigint_timeout=ns.sigint_timeout, sigterm_timeout=ns.sigterm_timeout)
    except UsageError as e:
        print(f'poco_run: error: {e}', file=sys.stderr)
        return 2
    meta = dict(argv=list(sys.argv if argv is None else argv), graph=ns.graph, args=dataclasses.asdict(gargs),
                ros_domain_id=domain_id, domain_id_source=source, discovery_range='LOCALHOST',
                dds_profile=env.get(dds.PROFILE_ENV, ''), dds_interfaces=interfaces,
                started=time.time(), duration_s=duration)
    runner.out.runner(f'run dir {run_dir}  ROS_DOMAIN_ID={domain_id} ({source})  discovery LOCALHOST  '
                      f'DDS on {",".join(interfaces)}  '
                      f'{"duration " + format(duration, "g") + " s" if duration else "until Ctrl-C"}')
    if ns.dry_run:
        for c in runner.children:
            runner.out.runner(f'{c.name}: {" ".join(c.cmd)}')
        _write_meta(run_dir, meta, runner)
        return 0
    runner.install_signal_handlers()
    try:
        rc = runner.run(duration)
    finally:
        meta.update(ended=time.time(), stop_reason=runner.stop_reason)
        _write_meta(run_dir, meta, runner)
        if lock is not None:
            lock.close()
    return rc


def _write_meta(run_dir: Path, meta: dict, runner: Runner):
    meta = dict(meta, nodes=runner.summary())
    (run_dir / 'run.json').write_text(json.dumps(meta, indent=2, default=str) + '\n')
    # The graph in one readable file too (what ran, with which parameter files).
    (run_dir / 'params' / 'graph.yaml').write_text(yaml.safe_dump(
        [dict(name=c.name, fqn=c.spec.fqn, command=c.cmd) for c in runner.children], sort_keys=False))


if __name__ == '__main__':
    sys.exit(main())
