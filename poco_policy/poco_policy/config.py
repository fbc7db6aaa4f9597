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


def from_dict(cls: type[T], data: dict[str, Any] | None, *, strict: bool = True) -> T:
    """Build dataclass `cls` from a mapping; unknown keys are an error when strict (typos must not pass)."""
    data = dict(data or {})
    types = _field_types(cls)
    unknown = set(data) - set(types)
    if unknown and strict:
        raise ValueError(f'{cls.__name__}: unknown config keys {sorted(unknown)}; known: {sorted(types)}')
    kwargs = {k: _coerce(k, types[k], v) for k, v in data.items() if k in types}
    return cls(**kwargs)


def load_yaml(cls: type[T], path: str | Path, section: str | None = None, *, strict: bool = True) -> T:
    """Load `cls` from a YAML file, optionally from one top-level section (missing section = defaults)."""
    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    if section is not None:
        doc = doc.get(section) or {}
    return from_dict(cls, doc, strict=strict)


def to_dict(cfg: Any) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _ros_value(v: Any) -> Any:
    # ROS parameters have no None, tuples or dicts: use '' / lists / JSON strings.
    if v is None:
        return ''
    if isinstance(v, tuple):
        return list(v)
    if isinstance(v, dict):
        return json.dumps(v)
    return v


def declare_ros_parameters(node: Any, cls: type[T], prefix: str = '') -> T:
    """Declare every field of `cls` as a ROS parameter (default = dataclass default) and read them back."""
    types = _field_types(cls)
    defaults = cls()  # every config dataclass has full defaults
    values: dict[str, Any] = {}
    for name in types:
        default = _ros_value(getattr(defaults, name))
        param = node.declare_parameter(prefix + name, default)
        values[name] = param.value
    for name, tp in types.items():
        if values[name] == '' and typing.get_origin(tp) is typing.Union:
            values[name] = None
    return from_dict(cls, values)
