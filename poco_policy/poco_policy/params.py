"""`declare_ros_parameters` with descriptors: poco_policy.config's declaration (same names, defaults, explicit
parameters, result), plus each field's `description`, `range` and `read_only` metadata (node_config.param) as
an rcl_interfaces ParameterDescriptor, so `ros2 param describe` tells what a parameter means, a value outside
its range is refused, and a parameter the node cannot change at run time refuses `ros2 param set`.
rclpy is imported by the call only."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from poco_policy.config import declare_ros_parameters as _declare

T = TypeVar('T')


def descriptor(field: dataclasses.Field, default: Any):
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
    m = field.metadata
    d = ParameterDescriptor(description=m.get('description', ''), read_only=bool(m.get('read_only', False)))
    if 'choices' in m:
        d.additional_constraints = 'one of: ' + ', '.join(m['choices'])
    rng = m.get('range')
    if rng is not None:
        lo, hi = rng
        if isinstance(default, bool):
            pass
        elif isinstance(default, int):
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=0)]
        elif isinstance(default, float):
            big = 1.7e308  # rcl ranges are finite doubles
            d.floating_point_range = [FloatingPointRange(from_value=max(float(lo), -big),
                                                         to_value=min(float(hi), big), step=0.0)]
    return d


def declare_ros_parameters(node: Any, cls: type[T], prefix: str = '') -> T:
    """Declare every field of `cls` with its descriptor and read them back as a `cls` instance (the
    declaration itself is poco_policy.config's)."""
    return _declare(node, cls, prefix, describe=descriptor)
