"""`ros2 launch poco_bringup real.launch.py [task:=peg_insert] [params_files:=my_robot.yaml] [namespace:=robot1]`

Policy + learner + monitor for a real arm; the driver (joint_states / joint_commands), the cameras and the
success / e-stop buttons are the user's. The launch arguments, node list and parameters come from
poco_bringup.graph (the pip-only runner `run real` starts the very same graph).
Learner on a GPU server: `part:=robot` on the robot PC, `part:=learner` on the server (same ROS_DOMAIN_ID, same
weights key); several robots: one `part:=robot namespace:=robot<i>` per robot and one learner with
`learner.robots` (docs/architecture.md).
"""
from poco_bringup import graph


def generate_launch_description():
    return graph.launch_description('real')
