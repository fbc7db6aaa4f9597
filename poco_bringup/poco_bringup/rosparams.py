"""ROS 2 parameter-file semantics and the nodes' parameter schemas, in plain Python (no ROS import).

Used by graph.py / the runner to write the *effective* parameters of each node to the run dir and to check
them against the config dataclass each node declares (before any node starts), and by the tests to check
the package YAMLs. The rules mirror what rcl/rclpy do with `--params-file a.yaml --params-file b.yaml`
(measured on the Kilted wheels: test_bringup_graph.py, test_effective_parameters_equal_what_rclpy_reads):
  - a section key (`/**/policy`, `/ns/policy`, `policy`, `/**`) selects nodes by fully qualified name;
    `**` matches any number of name tokens, `*` exactly one; a key without a leading slash is absolute;
  - all files are merged into one table of sections: a later file overwrites keys *within the same section*;
  - a node applies its matching sections in order of *first appearance* across the files, later sections
    overwriting earlier ones. So the config files use `/**/<node>` sections only, and the per-run
    parameters go last under the node's fully qualified name (what launch_ros does with a dict).
  - nested mappings under `ros__parameters` are dotted names (`a: {b: 1}` -> parameter `a.b`).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import importlib.metadata
import importlib.util
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import yaml

Params = dict[str, Any]


class _Loader(yaml.SafeLoader):
    """PyYAML is YAML 1.1: `1e-3` would be a string, rcl reads it as a double. Resolve floats like rcl.
    Mapping keys stay strings, as in rcl (`on:` names the parameter 'on', not True)."""

    def construct_mapping(self, node, deep=False):
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != 'tag:yaml.org,2002:str':
                key_node.tag = 'tag:yaml.org,2002:str'
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    'tag:yaml.org,2002:float',
    re.compile(r'''^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$''', re.X),
    list('-+0123456789.'))


def load_yaml(text_or_file) -> Any:
    return yaml.load(text_or_file, Loader=_Loader)


def flatten(params: Mapping[str, Any], prefix: str = '') -> Params:
    """Nested mapping -> dotted parameter names (ROS's own interpretation of nested YAML)."""
    out: Params = {}
    for k, v in params.items():
        name = f'{prefix}{k}'
        if isinstance(v, Mapping):
            out.update(flatten(v, name + '.'))
        else:
            out[name] = v
    return out


def fqn(name: str, namespace: str = '') -> str:
    ns = '/' + namespace.strip('/') if namespace.strip('/') else ''
    return f'{ns}/{name}'


def _key_regex(key: str) -> re.Pattern:
    key = key if key.startswith('/') else '/' + key
    parts = []
    for tok in key.strip('/').split('/'):
        if tok == '**':
            parts.append('(?:/[^/]+)*')
        else:
            parts.append('/' + re.escape(tok).replace(r'\*', '[^/]+'))
    return re.compile(''.join(parts) + '$')


def section_matches(key: str, node_fqn: str) -> bool:
    return bool(_key_regex(key).match(node_fqn))


def load_params_file(path: str | Path) -> dict[str, Params]:
    """{section key: flattened params} of one ROS params file; malformed structure raises ValueError."""
    with open(path) as f:
        doc = load_yaml(f) or {}
    if not isinstance(doc, Mapping):
        raise ValueError(f'{path}: a ROS params file is a mapping of node sections')
    out: dict[str, Params] = {}
    for key, body in doc.items():
        # rcl also allows namespace nesting (`ns: {node: {ros__parameters: ...}}`); resolve it to a key.
        out.update(_sections(str(key), body, path))
    return out


def _sections(key: str, body: Any, path) -> dict[str, Params]:
    if not isinstance(body, Mapping):
        raise ValueError(f'{path}: section {key!r} must be a mapping')
    if 'ros__parameters' in body:
        rp = body['ros__parameters'] or {}
        if not isinstance(rp, Mapping):
            raise ValueError(f'{path}: {key}.ros__parameters must be a mapping')
        return {key: flatten(rp)}
    out: dict[str, Params] = {}
    for sub, sub_body in body.items():
        out.update(_sections(f'{key.rstrip("/")}/{sub}', sub_body, path))
    return out


class GraphDefaults(dict):
    """Parameters a graph gives a node *below* every params file (a file, --params-file or --set changes them).

    rcl applies a node's matching sections in order of first appearance and merges all sources into one table
    of sections, so a plain dict at the front would open the node's own FQN section first and later per-run
    values (also that section) would then lose to the files. Defaults therefore live in the `/**/<name>`
    section, the same one the package files use: a later file overwrites them within that section."""

    def section(self, node_fqn: str) -> str:
        return '/**/' + node_fqn.rstrip('/').rsplit('/', 1)[-1]


def merge_sources(sources: Iterable[str | Path | Mapping[str, Any]], node_fqn: str) -> Params:
    """Effective parameters of node `node_fqn` given launch-style parameter sources, in order.

    A source is a params-file path or a dict of parameters for this node (placed under its FQN, as
    launch_ros does).
    """
    return {k: v for k, (v, _) in merge_traced(sources, node_fqn).items()}


def merge_traced(sources: Iterable[str | Path | Mapping[str, Any]], node_fqn: str) -> dict[str, tuple[Any, Any]]:
    """Like merge_sources, with where each value came from: {name: (value, source)} (source = the file
    path, or the dict itself for per-run parameter dicts)."""
    table: dict[str, dict[str, tuple[Any, Any]]] = {}
    for src in sources:
        if isinstance(src, GraphDefaults):
            sections = {src.section(node_fqn): flatten(src)}
        elif isinstance(src, Mapping):
            sections = {node_fqn: flatten(src)}
        else:
            sections = load_params_file(src)
        for key, params in sections.items():
            norm = key if key.startswith('/') else '/' + key
            table.setdefault(norm, {}).update({k: (v, src) for k, v in params.items()})
    out: dict[str, tuple[Any, Any]] = {}
    for key, params in table.items():
        if section_matches(key, node_fqn):
            out.update(params)
    return out


def check_ros_value(name: str, value: Any) -> None:
    """Raise ValueError for values a ROS parameter cannot hold (rcl would reject the file or the node)."""
    if value is None:
        raise ValueError(f'parameter {name!r}: null is not a ROS parameter value (use "" or omit it)')
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f'parameter {name!r}: empty lists have no ROS type; omit the parameter')
        kinds = {bool if isinstance(v, bool) else int if isinstance(v, int) else type(v) for v in value}
        if len(kinds) != 1 or next(iter(kinds)) not in (bool, int, float, str):
            raise ValueError(f'parameter {name!r}: a ROS array holds one scalar type, got {value!r}')
    elif not isinstance(value, (bool, int, float, str, bytes)):
        raise ValueError(f'parameter {name!r}: unsupported value {value!r}')


def params_file_text(node_fqn: str, params: Mapping[str, Any], header: str = '') -> str:
    """A ROS params file with one section (the node's FQN), values as given (flattened names are fine)."""
    doc = {node_fqn: {'ros__parameters': {k: (list(v) if isinstance(v, tuple) else v)
                                          for k, v in params.items()}}}
    text = yaml.dump(doc, Dumper=_Dumper, default_flow_style=False, sort_keys=True)
    return (header + text) if header else text


class _Dumper(yaml.SafeDumper):
    """Block-style mappings, one-line lists (how people write ROS params files)."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence('tag:yaml.org,2002:seq', v, flow_style=True))


def parse_value(text: str) -> Any:
    """A `--set node.param=value` value: YAML scalar/list like `ros2 run -p`, plain string otherwise."""
    if text == '':
        return ''
    try:
        value = load_yaml(text)
    except yaml.YAMLError:
        return text
    if value is None or isinstance(value, Mapping):
        return text
    return value


# ------------------------------------------------------------------------------------ parameter schemas
# A node's schema is the config dataclass it declares with poco_policy.config.declare_ros_parameters:
# field names (nested dataclasses flattened with '.') and the type each is declared with. Parameter files
# and overrides are checked against it before any node starts, so a typo or a wrong type fails at once
# with one line instead of being ignored (unknown names) or crashing the node (wrong types).

# Parameters every rclpy node declares itself (or accepts) besides its config.
BUILTIN_PARAMS: dict[str, type] = {'use_sim_time': bool, 'start_type_description_service': bool}
BUILTIN_PREFIXES = ('qos_overrides.',)


def param_schema(cls) -> dict[str, Any]:
    """{dotted parameter name: Python type} of config dataclass `cls`.

    poco_policy.config.param_schema when it exists (the one definition); else the same flattening here:
    a field whose type is a dataclass contributes its own fields under `<field>.`."""
    try:
        from poco_policy.config import param_schema as shared
    except ImportError:
        return _flat_schema(cls)
    return dict(shared(cls))


def _flat_schema(cls, prefix: str = '') -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get('derived'):  # filled by its component (poco_policy.config.derived), not a parameter
            continue
        tp = hints.get(f.name, f.type)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update(_flat_schema(tp, f'{prefix}{f.name}.'))
        else:
            out[prefix + f.name] = tp
    return out


_SCALARS = (bool, int, float, str)
_TYPE_NAMES = {bool: 'bool', int: 'integer', float: 'float', str: 'string'}


class ParamType:
    """The ROS type a parameter is declared with: a scalar kind or an array of one (kind None = any)."""

    def __init__(self, kind: Optional[type], array: bool = False):
        self.kind, self.array = kind, array

    def __str__(self) -> str:
        if self.array:
            return f'list of {_TYPE_NAMES[self.kind]}' if self.kind else 'list'
        return _TYPE_NAMES[self.kind] if self.kind else 'any'

    def accepts(self, value: Any) -> bool:
        if self.array:
            if not isinstance(value, (list, tuple)) or not value:
                return False
            return self.kind is None or all(_scalar_kind(v) is self.kind for v in value)
        return self.kind is None or _scalar_kind(value) is self.kind


def _scalar_kind(v: Any) -> Optional[type]:
    for k in _SCALARS:  # bool before int: True is an int in Python, a BOOL in ROS
        if isinstance(v, k):
            return k
    return None


def ros_type(tp: Any, default: Any = None) -> ParamType:
    """ParamType of a config field from its type hint, refined by its default (what declare_parameter sees:
    None -> '' string, tuples -> arrays, dicts -> JSON strings)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: a None default is declared as '' (string)
        rest = [a for a in args if a is not type(None)]
        if default is None:
            return ParamType(str)
        tp = rest[0] if len(rest) == 1 else str
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SCALARS:
        return ParamType(tp)
    if tp is dict or origin is dict:
        return ParamType(str)
    if tp in (tuple, list) or origin in (tuple, list):
        elems = [a for a in args if a is not Ellipsis]
        kind = elems[0] if len(set(elems)) == 1 and elems[0] in _SCALARS else None
        if kind is None and isinstance(default, (tuple, list)) and default:
            kinds = {_scalar_kind(v) for v in default}
            kind = kinds.pop() if len(kinds) == 1 else None
        return ParamType(kind, array=True)
    if isinstance(tp, str):  # an unresolved annotation: fall back to the default's type
        return ros_type(type(default), default) if default is not None else ParamType(None)
    return ParamType(None)


def schema_types(cls) -> dict[str, ParamType]:
    """{dotted name: ParamType} of config dataclass `cls` (param_schema + the defaults of an instance)."""
    try:
        defaults = cls()
    except Exception:  # every node config has full defaults; without them only the hints count
        defaults = None
    out = {}
    for name, tp in param_schema(cls).items():
        d = defaults
        for part in name.split('.'):
            d = getattr(d, part, None)
        out[name] = ros_type(tp, d)
    return out


@dataclass
class NodeSchema:
    """What a node accepts: its config's parameters (+ rclpy's own); `source` names where it came from."""
    params: dict[str, ParamType]
    source: str

    def lookup(self, name: str) -> Optional[ParamType]:
        if name in self.params:
            return self.params[name]
        if name in BUILTIN_PARAMS:
            return ParamType(BUILTIN_PARAMS[name])
        if name.startswith(BUILTIN_PREFIXES):
            return ParamType(None)
        return None


def _node_module(package: str, executable: str) -> Optional[str]:
    """Module of a console script (its entry point), else the `<package>.<executable>` convention."""
    try:
        for ep in importlib.metadata.entry_points(group='console_scripts', name=executable):
            dist = getattr(ep, 'dist', None)
            if dist is None or dist.name.replace('-', '_') == package:
                return ep.value.partition(':')[0].strip()
    except Exception:  # a broken distribution must not hide the convention below
        pass
    name = f'{package}.{executable}'
    try:
        return name if importlib.util.find_spec(name) is not None else None
    except (ImportError, ValueError):
        return None


def node_schema(package: str, executable: str) -> Optional[NodeSchema]:
    """The schema of a node executable: every `declare_ros_parameters(node, Config[, prefix])` and literal
    `declare_parameter('name', default)` call in its module. None when the executable is not a Python
    module (rviz2, a custom command) or declares nothing; ImportError when its module cannot be loaded."""
    module = _node_module(package, executable)
    if module is None:
        return None
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith('.py'):
        return None
    tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
    mod = None
    params: dict[str, ParamType] = {}
    classes = []
    for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call)):
        fn = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, 'id', '')
        if fn == 'declare_ros_parameters' and len(call.args) >= 2 and isinstance(call.args[1], ast.Name):
            prefix = call.args[2] if len(call.args) >= 3 else next(
                (k.value for k in call.keywords if k.arg == 'prefix'), ast.Constant(''))
            if not isinstance(prefix, ast.Constant):
                raise ImportError(f'{module}: declare_ros_parameters with a computed prefix; cannot check it')
            if mod is None:
                mod = importlib.import_module(module)
            cls = _resolve_name(mod, tree, call.args[1].id)
            classes.append(cls.__name__)
            params.update({prefix.value + k: v for k, v in schema_types(cls).items()})
        elif fn == 'declare_parameter' and call.args and isinstance(call.args[0], ast.Constant):
            try:
                default = ast.literal_eval(call.args[1]) if len(call.args) > 1 else None
            except ValueError:
                default = None
            params[call.args[0].value] = (ros_type(type(default), default) if default is not None
                                          else ParamType(None))
    if not params:
        return None
    return NodeSchema(params, f'{module} ({", ".join(classes) or "declare_parameter"})')


def _resolve_name(mod, tree, name: str):
    """A name used in the module: a module attribute, else bound by an import anywhere in it (local imports
    inside main() / __init__)."""
    if hasattr(mod, name):
        return getattr(mod, name)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if (a.asname or a.name) == name:
                    return getattr(importlib.import_module(node.module), a.name)
    raise ImportError(f'{mod.__name__}: cannot resolve the config class {name!r}')


def _type_of(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        kinds = sorted({_TYPE_NAMES.get(_scalar_kind(v), type(v).__name__) for v in value})
        return f'list of {"/".join(kinds)}' if kinds else 'empty list'
    return _TYPE_NAMES.get(_scalar_kind(value), 'null' if value is None else type(value).__name__)


def check_params(node: str, params: Mapping[str, tuple[Any, Any]], schema: NodeSchema,
                 where: Callable[[str, Any], str] = lambda name, src: str(src)) -> list[str]:
    """One line per parameter the node would ignore (unknown name) or reject (wrong type); [] when all fit.

    `params` as from merge_traced; `where(name, source)` describes a source for the message."""
    errors = []
    for name, (value, src) in sorted(params.items()):
        want = schema.lookup(name)
        origin = where(name, src)
        if want is None:
            close = difflib.get_close_matches(name, list(schema.params), n=1, cutoff=0.75)
            hint = f'; did you mean {node}.{close[0]} ({schema.params[close[0]]})?' if close else ''
            errors.append(f'unknown parameter {node}.{name} (from {origin}): not declared by '
                          f'{schema.source}{hint}')
        elif not want.accepts(value):
            hint = ''
            if want.kind is float and not want.array and _scalar_kind(value) is int:
                hint = f' (write {float(value)!r}, not {value!r})'
            elif (want.kind is float and want.array and isinstance(value, (list, tuple)) and value
                  and all(_scalar_kind(v) in (int, float) for v in value)):
                hint = ' (write every element with a decimal point)'
            errors.append(f'parameter {node}.{name} (from {origin}) expects {want}{hint}, '
                          f'got {value!r} ({_type_of(value)})')
    return errors


def check_graph(specs: Iterable[Any], overrides: Iterable[str] = ()) -> list[str]:
    """Check every node's effective parameters (package YAMLs, user params files, run values, `--set`) against
    the config the node declares, before anything starts: one line per parameter the node would ignore
    (unknown name) or reject (wrong type), [] when all fit. `specs` are graph.NodeSpec; processes given as
    an explicit `command` and executables that declare no config (rviz2) are not checked.

    `--set` values (`overrides`, 'node.param=value') are first typed like the parameter they set, in the
    spec's parameter dict (`1` for a float is 1.0, `on` for a string is 'on'): that is what the user means,
    and ROS would otherwise reject the node's start-up."""
    raw: dict[tuple[str, str], str] = {}
    for item in overrides:
        key, _, value = item.partition('=')
        node, _, param = key.strip().partition('.')
        raw[(node, param)] = value.strip()
    errors: list[str] = []
    for s in specs:
        if s.command or not s.parameters:
            continue
        try:
            schema = node_schema(s.package, s.executable)
        except (ImportError, SyntaxError) as e:
            errors.append(f'node {s.name}: cannot read the parameter schema of {s.package}/{s.executable}: {e}')
            continue
        if schema is None:
            continue
        for (node, param), text in raw.items():
            want = schema.lookup(param)
            if node in (s.name, getattr(s, 'key', s.name)) and want is not None:
                _type_override(s.parameters, param, text, want)

        def where(name, src, node=s.name, key=getattr(s, 'key', s.name)):
            if isinstance(src, Mapping):
                return '--set' if (node, name) in raw or (key, name) in raw else 'the run arguments'
            return str(src)
        try:
            params = merge_traced(s.parameters, s.fqn)
        except (ValueError, OSError) as e:  # a malformed or unreadable params file
            errors.append(f'node {s.name}: {e}')
            continue
        errors += check_params(s.name, params, schema, where)
    return errors


def _type_override(sources: list, param: str, text: str, want: ParamType) -> None:
    for p in reversed(sources):  # the dict the override went into (the last one holding it)
        if isinstance(p, dict) and param in p:
            v = p[param]
            if want.kind is str and not want.array and not isinstance(v, str):
                p[param] = text
            elif want.kind is float and not want.array and isinstance(v, int) and not isinstance(v, bool):
                p[param] = float(v)
            elif (want.kind is float and want.array and isinstance(v, list) and v
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                p[param] = [float(x) for x in v]
            return
