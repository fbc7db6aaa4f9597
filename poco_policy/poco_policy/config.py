"""One config dataclass per component, loadable from YAML and from ROS parameters with the same names.

No ROS import here: `declare_ros_parameters` takes any object with rclpy's Node parameter API.
A parameter YAML file holds one section per component, e.g.::

    policy:            # -> PolicyNodeConfig
      control_rate_hz: 15.0
    agent:             # -> AgentConfig
      preset: table2_scene

The ROS parameter files in poco_bringup/config use the same names (flattened under ros__parameters).
"""
from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar('T')


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a YAML/ROS value to the dataclass field type, with a clear error on mismatch."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin in (tuple, list):
            seq = list(value)
            elem = args[0] if args else Any
            out = [elem(v) if elem in (int, float, str, bool) else v for v in seq]
            return tuple(out) if origin is tuple else out
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ('true', '1', 'yes'):
                    return True
                if value.lower() in ('false', '0', 'no'):
                    return False
                raise ValueError(value)
            return bool(value)
        if tp in (int, float, str):
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return tp(value)
        if tp is dict or origin is dict:
            return json.loads(value) if isinstance(value, str) else dict(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f'config field {name!r}: cannot convert {value!r} to {tp}') from e
    return value


def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _nest(data: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys ('agent.eta': x) -> nested mappings ({'agent': {'eta': x}}), as ROS parameter names do."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        head, dot, rest = str(k).partition('.')
        if dot:
            sub = out.setdefault(head, {})
            if not isinstance(sub, dict):
                raise ValueError(f'config key {k!r}: {head!r} is both a value and a section')
            sub[rest] = v
        else:
            if isinstance(out.get(k), dict) and isinstance(v, dict):
                out[k].update(v)
            else:
                out[k] = v
    return out


def from_dict(cls: type[T], data: dict[str, Any] | None, *, strict: bool = True, base: T | None = None) -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error when strict (typos must not pass).

    Fields that are config dataclasses themselves take a nested mapping or dotted keys (`agent.eta`).
    `base`: start from this instance instead of the defaults (only the given keys change)."""
    data = _nest(dict(data or {}))
    types = _field_types(cls)
    unknown = set(data) - set(types)
    if unknown and strict:
        raise ValueError(f'{cls.__name__}: unknown config keys {sorted(unknown)}; known: {sorted(types)}')
    kwargs: dict[str, Any] = {}
    for k, v in data.items():
        if k not in types:
            continue
        if _is_config(types[k]):
            if isinstance(v, types[k]):
                kwargs[k] = v
                continue
            if not isinstance(v, dict):
                raise ValueError(f'config field {k!r}: expected a section of {types[k].__name__} values, got {v!r}')
            sub_base = getattr(base, k) if base is not None else None
            kwargs[k] = from_dict(types[k], v, strict=strict, base=sub_base)
        else:
            kwargs[k] = _coerce(k, types[k], v)
    if base is not None:
        return dataclasses.replace(base, **kwargs)
    return cls(**kwargs)


def derived(default: Any) -> Any:
    """A config field filled by the component that owns it (e.g. obs_dim from the data), not a parameter:
    it stays out of param_schema / declare_ros_parameters, so it has exactly one home."""
    return dataclasses.field(default=default, metadata={'derived': True})


def _derived_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.metadata.get('derived')}


def param_schema(cls: type, prefix: str = '') -> dict[str, Any]:
    """Flattened parameter names of a config dataclass (nested configs as dotted names) -> field types.
    Fields made with `derived()` are not parameters and are left out."""
    out: dict[str, Any] = {}
    skip = _derived_names(cls)
    for name, tp in _field_types(cls).items():
        if name in skip:
            continue
        if _is_config(tp):
            out.update(param_schema(tp, f'{prefix}{name}.'))
        else:
            out[prefix + name] = tp
    return out


def flat_dict(cfg: Any, prefix: str = '') -> dict[str, Any]:
    """A config instance as {dotted name: value} (the ROS parameter view)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get('derived'):
            continue
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(flat_dict(v, f'{prefix}{f.name}.'))
        else:
            out[prefix + f.name] = list(v) if isinstance(v, tuple) else v
    return out


def load_yaml(cls: type[T], path: str | Path, section: str | None = None, *, strict: bool = True) -> T:
    """Load `cls` from a YAML file, optionally from one top-level section (missing section = defaults)."""
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if section is not None:
        doc = doc.get(section) or {}
    return from_dict(cls, doc, strict=strict)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists) of a config instance, e.g. for JSON/YAML."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return list(v) if isinstance(v, tuple) else v
    return plain(dataclasses.asdict(cfg))


def _ros_value(v: Any) -> Any:
    # ROS parameters have no None, tuples or dicts: use '' / lists / JSON strings.
    if v is None:
        return ''
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, dict):
        return json.dumps(v)
    return v


def declare_ros_parameters(node: Any, cls: type[T], prefix: str = '', describe=None) -> T:
    """Declare every field of `cls` as a ROS parameter (default = dataclass default) and read them back.

    Nested config dataclasses become dotted names (`agent.eta`). The names the node was explicitly given
    (params files, --ros-args -p, launch) are recorded on the node as `node.explicit_parameters`, so a preset
    can fill everything else without overriding what the user set. `describe(field, default)` -> a
    ParameterDescriptor (or None) for a top-level field (poco_policy.params passes one)."""
    types = param_schema(cls)
    defaults = flat_dict(cls())  # every config dataclass has full defaults
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name in types:
        default = _ros_value(defaults[name])
        desc = describe(fields[name], default) if describe is not None and name in fields else None
        param = (node.declare_parameter(prefix + name, default, desc) if desc is not None
                 else node.declare_parameter(prefix + name, default))
        values[name] = param.value
    for name, tp in types.items():
        if values[name] == '' and typing.get_origin(tp) is typing.Union:
            values[name] = None
    overrides = getattr(node, '_parameter_overrides', {}) or {}
    explicit = {n for n in types if prefix + n in overrides}
    try:
        node.explicit_parameters = set(getattr(node, 'explicit_parameters', set())) | explicit
    except AttributeError:
        pass
    return from_dict(cls, values)


def fresh_run_dir(base: str | Path = 'runs') -> Path:
    """A new, empty `base/<YYYYmmdd-HHMMSS>[-N]`, created atomically (two runs or learners started in the same
    second get two folders; neither resumes the other). Here, torch- and ROS-free, so that both the runner
    (which must start in about a second) and the learner use it."""
    import time
    stamp = time.strftime('%Y%m%d-%H%M%S')
    Path(base).mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        p = Path(base) / (stamp if n == 1 else f'{stamp}-{n}')
        try:
            p.mkdir()
        except FileExistsError:
            continue
        return p.resolve()
    raise RuntimeError(f'no free run folder name under {base}')
