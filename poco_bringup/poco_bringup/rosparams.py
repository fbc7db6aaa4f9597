"""ROS 2 parameter-file semantics in plain Python (no ROS import).

Used by graph.py / the runner to write the *effective* parameters of each node to the run dir, and by the
tests to check the YAMLs against the node config dataclasses. The rules mirror what rcl/rclpy do with
`--params-file a.yaml --params-file b.yaml` (measured on the Kilted wheels, see test_graph.py):
  - a section key (`/**/policy`, `/ns/policy`, `policy`, `/**`) selects nodes by fully qualified name;
    `**` matches any number of name tokens, `*` exactly one; a key without a leading slash is absolute;
  - all files are merged into one table of sections: a later file overwrites keys *within the same section*;
  - a node applies its matching sections in order of *first appearance* across the files, later sections
    overwriting earlier ones. So the config files use `/**/<node>` sections only, and the per-run
    parameters go last under the node's fully qualified name (what launch_ros does with a dict).
  - nested mappings under `ros__parameters` are dotted names (`agent: {eta: 0.1}` -> `agent.eta`).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

Params = dict[str, Any]


class _Loader(yaml.SafeLoader):
    """PyYAML is YAML 1.1: `1e-3` would be a string, rcl reads it as a double. Resolve floats like rcl."""


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


def merge_sources(sources: Iterable[str | Path | Mapping[str, Any]], node_fqn: str) -> Params:
    """Effective parameters of node `node_fqn` given launch-style parameter sources, in order.

    A source is a params-file path or a dict of parameters for this node (placed under its FQN, as
    launch_ros does).
    """
    table: dict[str, Params] = {}  # insertion order = first appearance
    for src in sources:
        if isinstance(src, Mapping):
            sections = {node_fqn: flatten(src)}
        else:
            sections = load_params_file(src)
        for key, params in sections.items():
            norm = key if key.startswith('/') else '/' + key
            table.setdefault(norm, {}).update(params)
    out: Params = {}
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
