"""`ros2 launch poco_bringup sim.launch.py [task:=peg_insert] [obs_mode:=state] [run_dir:=...] ...`

MuJoCo sim impersonating the robot + policy + learner + monitor. The launch arguments, node list and
parameters come from poco_bringup.graph (the pip-only runner `run sim` starts the very same graph).
`robots:=2`: two simulated robots (namespaces robot0, robot1) feeding one learner; `part:=robot` / `part:=learner`:
one of the two process groups of a split deployment (docs/architecture.md).
"""
from poco_bringup import graph


def generate_launch_description():
    return graph.launch_description('sim')
