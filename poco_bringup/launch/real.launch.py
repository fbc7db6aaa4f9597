"""`ros2 launch poco_bringup real.launch.py [task:=peg_insert] [params_files:=my_robot.yaml] [namespace:=robot1]`

Policy + learner + monitor for a real arm; the driver (joint_states / joint_commands), the cameras and the
success / e-stop buttons are the user's. Node list and parameters come from poco_bringup.graph.real_graph
(the pip-only runner `run real` starts the very same graph)."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from poco_bringup import graph

GRAPH = 'real'


def _keep_strings(params: dict) -> dict:
    # launch_ros YAML-parses plain strings in parameter dicts ('on' -> true, '07' -> 7): keep them strings.
    return {k: ParameterValue(v, value_type=str) if isinstance(v, str) else v for k, v in params.items()}


def _nodes(context, *args, **kwargs):
    # Launch arguments are strings; graph.args_from_strings types them exactly as the runner's CLI does.
    values = {f.name: LaunchConfiguration(f.name).perform(context) for f in graph.graph_fields()}
    specs = graph.GRAPHS[GRAPH](**vars(graph.args_from_strings(values)))
    actions = []
    for spec in specs:
        kw = spec.launch_kwargs()
        if 'parameters' in kw:
            kw['parameters'] = [_keep_strings(p) if isinstance(p, dict) else p for p in kw['parameters']]
        if spec.required:  # like the runner: a required node exiting stops the whole graph
            kw['on_exit'] = Shutdown(reason=f'required node {spec.name} exited')
        actions.append(Node(**kw))
    return actions


def _description(f) -> str:
    if f.name in ('params_files', 'overrides'):
        return f.metadata['help'] + ' (files: comma-separated; overrides: ";"-separated node.param=value)'
    return f.metadata['help']


def generate_launch_description():
    args = [DeclareLaunchArgument(f.name, default_value=graph.default_string(f), description=_description(f),
                                  **({'choices': list(f.metadata['choices'])} if f.metadata['choices'] else {}))
            for f in graph.graph_fields()]
    return LaunchDescription(args + [OpaqueFunction(function=_nodes)])
