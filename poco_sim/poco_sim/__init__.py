"""MuJoCo 6-DoF arm with gripper and two cameras as gymnasium environments, scripted expert, and the sim node that impersonates the robot."""
