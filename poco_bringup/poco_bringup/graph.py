"""THE description of the poco-ros node graph: which nodes run, with which parameters.

Both `launch/*.launch.py` (on a ROS 2 machine) and the pip-only runner (`run`) build their processes from
`sim_graph()` / `real_graph()` (the launch files through `launch_description()`); there is no second node list
anywhere. No ROS or launch import at module level, so it is testable as plain Python.

Parameter sources of every node, in order (later wins, like `ros2 launch` with `parameters=[...]`):
  config/robot.yaml, cameras.yaml, monitor.yaml, task_<task>.yaml, algo_poco.yaml (+ algo_<algorithm>.yaml
  layered on top for the baselines), the user's params files, then a dict of per-run values
  (obs_mode, run_dir, demo dataset, seed, preset) and the `node.param=value` overrides.
Every node gets every file: the files' `/**/<node>` sections pick what applies (idiomatic ROS, and it
means a section added for a node in any file just works).

Clocks: the sim graph runs on sim time. The sim node owns `/clock` (SIM_CLOCK: sim_time, pacing, below every
params file, so a robot/task/user file or `--set sim.pacing=false` changes them) and every other node of the
sim graph runs with `use_sim_time` true, so a paused sim pauses the graph and no watchdog fires. The sim
advances one 15 Hz tick at a time, as fast as the CPU allows, but only after the policy acknowledged its tick
(poco/policy_tick) and while the learner keeps its update-to-data ratio (poco/learner_pace): the same curve in
env steps on a slow and a fast machine, with the wall time reported beside it (episodes.csv). ROS's own `use_sim_time` is not a field of our node configs (rclpy declares it on every node),
so the graph sets it through the environment: POCO_USE_SIM_TIME=1, read by each node at start-up
(poco_policy.runtime.use_sim_time_from_env), and for rviz2 with `-p use_sim_time:=true`. The real graph keeps
the wall clock.

The learner is not `required` in either graph: the robot keeps acting on its last good weights while the
learner is down (the sim stops waiting for it after pace_timeout_s), and a restarted learner resumes.

Several robots (`robots` > 1, sim graph): robot i is `sim` + `policy` (+ `monitor`, run_dir/robot<i>) under the
namespace robot<i> (below `namespace`), one learner in `namespace` with `robots: [robot0, ...]` (it subscribes each
robot's transitions/events, prefixes their episode ids with the namespace, and publishes weights, pace and status
on each robot's own topics). /clock is global, so each robot keeps its own sim time: every node of robot i has
`/clock` remapped to `/<ns>/robot<i>/clock` (its sim publishes it, its policy and monitor follow it), and the
learner runs on the wall clock (it reports updates per env step; the pace message reaches every sim). Robot i > 0
gets seed + i (sim and policy), so the robots do not replay the same episodes. Runner labels (logs, params files,
`--set`): `robot<i>_sim`, ...; `--set sim.x=v` sets every robot's sim.
Each robot's monitor counts its own robot's episodes (run_dir/robot<i>); a `monitor.stop_after_steps` budget is
per robot, and the first monitor to reach it ends the run.

Split deployment (`part`): `robot` = everything but the learner, `learner` = the learner alone (same parameters
as in the whole graph); the two groups run as separate launches / runners in one ROS domain (docs/architecture.md,
"Learner on another host").
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from poco_bringup import rosparams

from poco_policy.contract import CLOCK as C_CLOCK  # plain data, no ROS: the one global topic a robot's sim owns

PACKAGE = 'poco_bringup'
TASKS = ('pick_cube', 'peg_insert')
ALGORITHMS = ('poco', 'poco_noclip', 'bc', 'qc_best_of_n')
OBS_MODES = ('pixels', 'state')
PARTS = ('all', 'robot', 'learner')
BASE_CONFIGS = ('robot.yaml', 'cameras.yaml', 'monitor.yaml')
SIM_TIME_ENV = {'POCO_USE_SIM_TIME': '1'}  # poco_policy.runtime.SIM_TIME_ENV
# The sim node's settings in the sim graph (poco_sim.config.SimNodeConfig; the standalone node keeps the wall
# clock). pace_timeout_s: wall seconds without an acknowledgement / pace message before the sim stops waiting
# for that node (a dead learner must not stop the robot; without a policy the sim runs at real time).
SIM_CLOCK = {'sim_time': True, 'pacing': True, 'pace_timeout_s': 1.0, 'max_real_time_factor': 0.0}
# The learner's hyper-parameter preset per graph (a graph default: real.yaml, params files, --preset win):
# the sim main job's CPU preset; the real graph's comes from real.yaml (the paper's real-robot Table III).
SIM_LEARNER = {'preset': 'sim_cpu'}


@dataclass
class NodeSpec:
    """One process of the graph (a ROS node unless `command` says otherwise)."""
    package: str
    executable: str
    name: str
    namespace: str = ''
    # Params-file paths and/or dicts of parameters, in override order (launch_ros `parameters=`).
    parameters: list = field(default_factory=list)
    remappings: dict[str, str] = field(default_factory=dict)
    arguments: list[str] = field(default_factory=list)  # plain argv before --ros-args (e.g. rviz2 -d)
    output_prefix: str = ''  # log line prefix; '' = '[name]'
    required: bool = True  # the graph stops when a required node exits
    # restart the node when it exits (launch_ros respawn/respawn_delay; the runner does the same)
    respawn: bool = False
    respawn_delay: float = 2.0
    env: dict[str, str] = field(default_factory=dict)
    # Runner only: explicit argv instead of install/<pkg>/lib/<pkg>/<exe> (tests, custom graphs).
    command: list[str] = field(default_factory=list)
    # Unique label of this process in a graph where node names repeat (several robots: `robot0_sim`): the runner's
    # log/params file names and a `--set` target; '' = the node name.
    label: str = ''

    @property
    def key(self) -> str:
        return self.label or self.name

    @property
    def fqn(self) -> str:
        return rosparams.fqn(self.name, self.namespace)

    @property
    def prefix(self) -> str:
        return self.output_prefix or f'[{self.name}]'

    def effective_parameters(self) -> dict[str, Any]:
        """What the node will see as parameter overrides (flattened names), per ROS params-file rules."""
        return rosparams.merge_sources(self.parameters, self.fqn)

    def launch_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for launch_ros.actions.Node (pure data; the launch files add on_exit)."""
        kw: dict[str, Any] = dict(package=self.package, executable=self.executable, name=self.name,
                                  output='screen', emulate_tty=True)
        if self.namespace.strip('/'):  # omitted when empty so an enclosing PushRosNamespace still applies
            kw['namespace'] = '/' + self.namespace.strip('/')
        params = [_defaults_file(p, self.fqn) if isinstance(p, rosparams.GraphDefaults)
                  else str(p) if not isinstance(p, dict) else p for p in self.parameters]
        if params:
            kw['parameters'] = params
        if self.remappings:
            kw['remappings'] = list(self.remappings.items())
        if self.arguments:
            kw['arguments'] = list(self.arguments)
        if self.env:
            kw['additional_env'] = dict(self.env)
        if self.respawn:
            kw['respawn'], kw['respawn_delay'] = True, float(self.respawn_delay)
        return kw


def _defaults_file(p: 'rosparams.GraphDefaults', fqn: str) -> str:
    # launch_ros would put a dict under the node's own section; defaults need the `/**/<name>` one
    import hashlib
    import tempfile
    text = rosparams.params_file_text(p.section(fqn), rosparams.flatten(p), '# graph defaults\n')
    path = Path(tempfile.gettempdir()) / f'poco_defaults_{hashlib.sha1(text.encode()).hexdigest()[:16]}.yaml'
    if not path.exists():  # content-addressed: the same defaults give the same file
        tmp = path.with_suffix(f'.{os.getpid()}.tmp')
        tmp.write_text(text)
        os.replace(tmp, path)
    return str(path)


def _arg(default, help_: str, choices: Sequence[str] = ()):
    return field(default=default, metadata={'help': help_, 'choices': tuple(choices)})


@dataclass
class GraphArgs:
    """Arguments of both graphs: launch arguments of the launch files and options of the runner."""
    run_dir: str = _arg('', 'run directory (learner checkpoints/buffer, monitor CSV/PNG); "" = node defaults')
    task: str = _arg('pick_cube', 'task; selects config/task_<task>.yaml', TASKS)
    obs_mode: str = _arg('pixels', 'observation mode (state = privileged sim state, sim only)', OBS_MODES)
    algorithm: str = _arg('poco', 'online algorithm; selects config/algo_<algorithm>.yaml', ALGORITHMS)
    preset: str = _arg('', 'learner hyper-parameter preset (learner.preset); "" = the YAML value')
    namespace: str = _arg('', 'ROS namespace of all nodes (one per robot)')
    demo_dataset: str = _arg('', 'episode dataset the learner pre-trains on and seeds its buffer with')
    encoder_checkpoint: str = _arg('', 'pixels: image encoder safetensors for the policy and the learner (one value '
                                       'for both, so their features agree); "" = the YAML values')
    seed: str = _arg('', 'seed for sim, policy and learner; "" = the YAML values')
    monitor: bool = _arg(True, 'start the monitor node (progress line, CSV, learning curve)')
    rviz: bool = _arg(False, 'start rviz2 with config/poco.rviz')
    allow_unsigned: bool = _arg(False, 'real graph: run without a weights key when none is set or found '
                                       '(the policy then accepts unsigned weights)')
    respawn: bool = _arg(False, 'restart the learner when it exits (after 2 s); it resumes its checkpoint and buffer')
    robots: int = _arg(1, 'sim graph: simulated robots (sim + policy each, namespaces robot0..) feeding one learner')
    part: str = _arg('all', 'which process group to start: all, robot (everything but the learner) or learner '
                            '(the learner alone): the split deployment, two groups in one ROS domain', PARTS)
    params_files: list[str] = _arg((), 'extra ROS params files, applied after the package configs')
    overrides: list[str] = _arg((), 'node.param=value overrides, applied last')

    def __post_init__(self):
        self.params_files = [str(p) for p in (self.params_files or ())]
        self.overrides = list(self.overrides or ())
        self.seed = '' if self.seed is None else str(self.seed)
        try:
            self.robots = int(self.robots)
        except (TypeError, ValueError):
            raise ValueError(f'robots must be an integer >= 1, got {self.robots!r}')
        if self.robots < 1:
            raise ValueError(f'robots must be >= 1, got {self.robots}')
        if self.part not in PARTS:
            raise ValueError(f'unknown part {self.part!r}; one of {PARTS}')


def graph_args(**kw) -> GraphArgs:
    known = {f.name for f in dataclasses.fields(GraphArgs)}
    unknown = set(kw) - known
    if unknown:
        raise ValueError(f'unknown graph arguments {sorted(unknown)}; known: {sorted(known)}')
    return GraphArgs(**kw)


def args_from_strings(values: dict[str, str]) -> GraphArgs:
    """GraphArgs from launch-argument strings (lists: comma or whitespace separated / `;` for overrides)."""
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(GraphArgs):
        if f.name not in values:
            continue
        s = str(values[f.name]).strip()
        if f.name == 'params_files':
            kw[f.name] = [p for p in s.replace(',', ' ').split() if p]
        elif f.name == 'overrides':
            kw[f.name] = [p.strip() for p in s.split(';') if p.strip()]
        elif f.type in (bool, 'bool'):
            kw[f.name] = s.lower() in ('1', 'true', 'yes', 'on')
        else:
            kw[f.name] = s
    return GraphArgs(**kw)


def config_dir() -> Path:
    """Source tree config/ when running from a checkout (symlink-install), else the installed share dir."""
    pkg = Path(__file__).resolve().parent.parent
    if (pkg / 'package.xml').is_file() and (pkg / 'config').is_dir():
        return pkg / 'config'
    from ament_index_python.packages import get_package_share_directory  # only on installed systems
    return Path(get_package_share_directory(PACKAGE)) / 'config'


def config_file(name: str) -> Path:
    path = config_dir() / name
    if not path.is_file():
        raise FileNotFoundError(f'{PACKAGE} config file not found: {path}')
    return path


def _config_files(a: GraphArgs) -> list[Path]:
    if a.task not in TASKS:
        raise ValueError(f'unknown task {a.task!r}; known: {TASKS}')
    if a.algorithm not in ALGORITHMS:
        raise ValueError(f'unknown algorithm {a.algorithm!r}; known: {ALGORITHMS}')
    files = [config_file(n) for n in BASE_CONFIGS]
    files.append(config_file(f'task_{a.task}.yaml'))
    files.append(config_file('algo_poco.yaml'))
    if a.algorithm != 'poco':  # baselines are small diffs on top of the POCO settings
        files.append(config_file(f'algo_{a.algorithm}.yaml'))
    for p in a.params_files:
        if not Path(p).is_file():
            raise FileNotFoundError(f'params file not found: {p}')
        files.append(Path(p).resolve())
    return files


def parse_overrides(items: Sequence[str], node_names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """['learner.agent.eta=0.01', ...] -> {'learner': {'agent.eta': 0.01}}; unknown node = error."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition('=')
        node, dot, param = key.strip().partition('.')
        if not sep or not dot or not param:
            raise ValueError(f'override {item!r}: expected node.param=value')
        if node not in node_names:
            raise ValueError(f'override {item!r}: no node {node!r} in the graph; nodes: {list(node_names)}')
        out.setdefault(node, {})[param] = rosparams.parse_value(value.strip())
    return out


def _run_params(a: GraphArgs, node: str) -> dict[str, Any]:
    """Per-run values derived from the graph arguments."""
    p: dict[str, Any] = {}
    if node in ('sim', 'policy', 'learner'):
        p['obs_mode'] = a.obs_mode
        if a.seed != '':
            p['seed'] = int(a.seed)
    if a.encoder_checkpoint and node == 'policy':
        p['encoder_checkpoint'] = str(Path(a.encoder_checkpoint).expanduser().resolve())
    if a.encoder_checkpoint and node == 'learner':
        p['encoder.checkpoint_path'] = str(Path(a.encoder_checkpoint).expanduser().resolve())
    if node in ('learner', 'monitor') and a.run_dir:
        p['run_dir'] = str(Path(a.run_dir).resolve())
    if node == 'learner':
        if a.demo_dataset:
            p['demo_dataset'] = str(Path(a.demo_dataset).resolve())
        if a.preset:
            p['preset'] = a.preset
    return p


def apply_overrides(specs: list[NodeSpec], items: Sequence[str],
                    extra: Optional[dict[str, dict[str, Any]]] = None) -> list[NodeSpec]:
    """Append one dict per node: `extra[node]` then the `node.param=value` overrides (applied last).

    An integer override of a parameter the YAMLs give as a float stays a float: ROS parameters are typed,
    and `--set learner.utd_ratio=2` must not make the node fail on INTEGER vs DOUBLE.
    """
    overrides = parse_overrides(items, list(dict.fromkeys([s.name for s in specs] + [s.key for s in specs])))
    for s in specs:
        d = dict((extra or {}).get(s.key, {}))
        user = dict(overrides.get(s.name, {}))
        if s.key != s.name:
            user.update(overrides.get(s.key, {}))  # `robot1_sim.x` beats `sim.x`
        if user:
            current = rosparams.merge_sources(s.parameters, s.fqn)
            for k, v in user.items():
                if isinstance(v, int) and not isinstance(v, bool) and isinstance(current.get(k), float):
                    v = float(v)
                d[k] = v
        for k, v in d.items():
            rosparams.check_ros_value(f'{s.name}.{k}', v)
        if d:
            s.parameters.append(d)
    return specs


def _finish(specs: list[NodeSpec], a: GraphArgs, files: list[Path]) -> list[NodeSpec]:
    """Add the optional monitor and rviz, then attach the per-run values and the overrides (rviz takes no
    parameters)."""
    if a.monitor:
        specs.append(_node(PACKAGE, 'monitor', 'monitor', a, files))
    if a.rviz:
        specs.append(_rviz(a))
    specs = apply_overrides(specs, a.overrides,
                            {s.key: _run_params(a, s.name) for s in specs if s.package != 'rviz2'})
    return _episode_length_from_preset(specs)


def _episode_length_from_preset(specs: list[NodeSpec]) -> list[NodeSpec]:
    """The policy's episode length H comes from the learner's preset (or its explicit agent.max_episode_steps),
    as a graph default: a params file or --set policy.max_episode_steps still wins."""
    from poco_learner.presets import PRESETS  # plain data, no torch
    learners = [s for s in specs if s.name == 'learner']
    policies = [s for s in specs if s.name == 'policy']
    if not learners or not policies:
        return specs
    lrn = learners[0].effective_parameters()
    H = lrn.get('agent.max_episode_steps') or PRESETS.get(lrn.get('preset', ''), {}).get('max_episode_steps')
    if H:
        for p in policies:
            p.parameters.insert(0, rosparams.GraphDefaults(max_episode_steps=int(H)))
    return specs


def _node(package: str, executable: str, name: str, a: GraphArgs, files: list[Path]) -> NodeSpec:
    return NodeSpec(package=package, executable=executable, name=name, namespace=a.namespace,
                    parameters=[str(f) for f in files])


def _learner(a: GraphArgs, files: list[Path]) -> NodeSpec:
    spec = _node('poco_learner', 'learner_node', 'learner', a, files)
    spec.required = False  # the robot survives the learner: it acts on its last good weights meanwhile
    spec.respawn = bool(a.respawn)
    return spec


def _rviz(a: GraphArgs) -> NodeSpec:
    return NodeSpec(package='rviz2', executable='rviz2', name='rviz2', namespace=a.namespace,
                    arguments=['-d', str(config_file('poco.rviz'))], required=False)


def _on_sim_time(specs: list[NodeSpec]) -> list[NodeSpec]:
    """Every node but the sim (which publishes /clock) follows the sim's clock."""
    for s in specs:
        if s.name == 'sim':
            continue
        if s.package == 'rviz2':
            s.arguments += ['--ros-args', '-p', 'use_sim_time:=true', '--']
        else:
            s.env.update(SIM_TIME_ENV)
    return specs


def sim_graph(**kw) -> list[NodeSpec]:
    """MuJoCo sim impersonating the robot + policy + learner (+ monitor, rviz); `robots` > 1: that many
    simulated robots (namespaced) feeding the one learner."""
    a = graph_args(**kw)
    if a.obs_mode not in OBS_MODES:
        raise ValueError(f'unknown obs_mode {a.obs_mode!r}; known: {OBS_MODES}')
    files = _config_files(a)
    if a.robots > 1:
        return _part(_multi_robot_sim(a, files), a)
    sim = _node('poco_sim', 'sim_node', 'sim', a, files)
    sim.parameters.insert(0, rosparams.GraphDefaults(SIM_CLOCK))  # graph defaults: every params file may change them
    learner = _learner(a, files)
    learner.parameters.insert(0, rosparams.GraphDefaults(SIM_LEARNER))
    specs = [
        sim,
        _node('poco_policy', 'policy_node', 'policy', a, files),
        learner,
    ]
    return _part(_on_sim_time(_finish(specs, a, files)), a)


def robot_namespaces(n: int) -> list[str]:
    """Namespaces of the simulated robots, relative to the graph's namespace (= the learner's)."""
    return [f'robot{i}' for i in range(n)]


def _join_ns(*parts: str) -> str:
    return '/'.join(p.strip('/') for p in parts if p.strip('/'))


def _multi_robot_sim(a: GraphArgs, files: list[Path]) -> list[NodeSpec]:
    """K robots (sim + policy + monitor each, namespace robot<i>, own /clock) and one learner on the wall clock."""
    specs: list[NodeSpec] = []
    robots = robot_namespaces(a.robots)
    for r in robots:
        ns = _join_ns(a.namespace, r)
        sim = _node('poco_sim', 'sim_node', 'sim', a, files)
        sim.parameters.insert(0, rosparams.GraphDefaults(SIM_CLOCK))
        nodes = [sim, _node('poco_policy', 'policy_node', 'policy', a, files)]
        if a.monitor:
            nodes.append(_node(PACKAGE, 'monitor', 'monitor', a, files))
        for s in nodes:
            s.namespace, s.label, s.output_prefix = ns, f'{r}_{s.name}', f'[{r}/{s.name}]'
            s.remappings[C_CLOCK] = f'/{ns}/clock'       # this robot's own sim time
            if s.name != 'sim':
                s.env.update(SIM_TIME_ENV)
        specs += nodes
    learner = _learner(a, files)
    learner.parameters.insert(0, rosparams.GraphDefaults(SIM_LEARNER))
    specs.append(learner)
    if a.rviz:
        specs.append(_rviz(a))
    extra = {s.key: _run_params(a, s.name) for s in specs if s.package != 'rviz2'}
    extra['learner']['robots'] = robots
    for s in specs:
        if s.name == 'monitor' and a.run_dir:
            extra[s.key]['run_dir'] = str(Path(a.run_dir).resolve() / s.namespace.rsplit('/', 1)[-1])
    specs = apply_overrides(specs, a.overrides, extra)
    # robot i > 0: seed + i, so the robots do not all draw the same scenes and noise
    for s in specs:
        if s.name in ('sim', 'policy') and not s.label.startswith('robot0_'):
            i = int(s.label.split('_')[0][len('robot'):])
            s.parameters.append({'seed': int(s.effective_parameters().get('seed', 0)) + i})
    return _episode_length_from_preset(specs)


def _part(specs: list[NodeSpec], a: GraphArgs) -> list[NodeSpec]:
    """The process group `a.part` of a whole graph (built whole first, so both groups get the same values)."""
    if a.part == 'all':
        return specs
    keep = [s for s in specs if (s.name == 'learner') == (a.part == 'learner')]
    if a.part == 'learner':
        for s in keep:  # the learner group is the learner: it ends when the learner does (unless respawned)
            s.required = not s.respawn
    return keep


def real_graph(**kw) -> list[NodeSpec]:
    """Policy + learner (+ monitor, rviz); the robot driver, cameras and buttons are the user's."""
    a = graph_args(**kw)
    if a.obs_mode != 'pixels':
        raise ValueError('the real robot has no privileged state: obs_mode must be "pixels"')
    files = _config_files(a)
    files.insert(len(BASE_CONFIGS), config_file('real.yaml'))  # real-robot episode handling, before user files
    if a.robots != 1:
        raise ValueError('the real graph starts one robot; several robots: one `run real --part robot` per robot '
                         '(its own namespace) and one learner with learner.robots (docs/architecture.md)')
    specs = [
        _node('poco_policy', 'policy_node', 'policy', a, files),
        _learner(a, files),
    ]
    return _require_weights_key(_part(_finish(specs, a, files), a), a)


WEIGHTS_KEY_HELP = ('mkdir -p ~/.poco && head -c 32 /dev/urandom > ~/.poco/weights.key && '
                    'chmod 600 ~/.poco/weights.key')


def _require_weights_key(specs: list[NodeSpec], a: GraphArgs) -> list[NodeSpec]:
    """The real graph signs weights: policy and learner both get the key file (config/real.yaml: ~/.poco/
    weights.key; params files and --set may name another), `~` expanded, checked here (exists, >= 16 bytes,
    not readable by others), so a missing key is one line before anything starts. --allow-unsigned: a node whose
    key is unset or missing runs unsigned (weights_key_file ''). Policy and learner must agree."""
    from poco_policy.weights import load_key  # stdlib only
    by = {s.name: s for s in specs}
    keys = {}
    for n in ('learner', 'policy'):
        if n not in by:
            continue
        k = str(by[n].effective_parameters().get('weights_key_file', '') or '')
        path = os.path.expanduser(k) if k else ''
        if path and os.path.isfile(path):
            try:
                keys[n] = load_key(path)
            except (OSError, ValueError) as e:
                raise ValueError(f'{n}.weights_key_file: {e}')
        elif a.allow_unsigned:
            path, keys[n] = '', None
        elif not k:
            raise ValueError(f'the real graph needs a weights key: {n}.weights_key_file is empty; make one with '
                             f'`{WEIGHTS_KEY_HELP}` (or run unsigned with --allow-unsigned)')
        else:
            raise ValueError(f'weights key {path} not found ({n}.weights_key_file); make one with '
                             f'`{WEIGHTS_KEY_HELP}` (or run unsigned with --allow-unsigned)')
        last = by[n].parameters[-1] if by[n].parameters else None
        if isinstance(last, dict) and not isinstance(last, rosparams.GraphDefaults):
            last['weights_key_file'] = path       # the run's own dict (the same value, `~` expanded)
        else:
            by[n].parameters.append({'weights_key_file': path})
    if len(keys) == 2 and keys['learner'] != keys['policy']:
        raise ValueError('learner and policy weights keys differ (one unsigned, or different files with '
                         'different bytes): the policy would refuse every weights message')
    return specs


GRAPHS: dict[str, Callable[..., list[NodeSpec]]] = {'sim': sim_graph, 'real': real_graph}


def graph_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(GraphArgs))


def default_string(f: dataclasses.Field) -> str:
    """Launch-argument default of a GraphArgs field."""
    d = f.default
    if isinstance(d, bool):
        return 'true' if d else 'false'
    if isinstance(d, (tuple, list)):
        return ''
    return str(d)



# ------------------------------------------------------------------------------------------ ros2 launch
def launch_description(kind: str):
    """The LaunchDescription of graph `kind` ('sim' | 'real'), for the launch files: one launch argument per
    GraphArgs field, and the nodes built at launch time from this module, exactly as the runner builds them.
    `launch` / `launch_ros` are imported here, so the runner works on machines that do not have them."""
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    def keep_strings(params: dict) -> dict:
        # launch_ros YAML-parses plain strings in parameter dicts ('on' -> true, '07' -> 7): keep them strings.
        return {k: ParameterValue(v, value_type=str) if isinstance(v, str) else v for k, v in params.items()}

    def nodes(context, *args, **kwargs):
        # Launch arguments are strings; args_from_strings types them exactly as the runner's CLI does.
        values = {f.name: LaunchConfiguration(f.name).perform(context) for f in graph_fields()}
        actions = []
        for spec in GRAPHS[kind](**vars(args_from_strings(values))):
            kw = spec.launch_kwargs()
            if 'parameters' in kw:
                kw['parameters'] = [keep_strings(p) if isinstance(p, dict) else p for p in kw['parameters']]
            if spec.required:  # like the runner: a required node exiting stops the whole graph
                kw['on_exit'] = Shutdown(reason=f'required node {spec.name} exited')
            actions.append(Node(**kw))
        return actions

    def description(f) -> str:
        if f.name in ('params_files', 'overrides'):
            return f.metadata['help'] + ' (files: comma-separated; overrides: ";"-separated node.param=value)'
        return f.metadata['help']

    if kind not in GRAPHS:
        raise ValueError(f'unknown graph {kind!r}; one of {sorted(GRAPHS)}')
    args = [DeclareLaunchArgument(f.name, default_value=default_string(f), description=description(f),
                                  **({'choices': list(f.metadata['choices'])} if f.metadata['choices'] else {}))
            for f in graph_fields()]
    return LaunchDescription(args + [OpaqueFunction(function=nodes)])
