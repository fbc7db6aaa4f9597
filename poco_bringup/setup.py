from glob import glob

from setuptools import find_packages, setup

package_name = 'poco_bringup'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'benchmarks']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*.py')),
        ('share/' + package_name + '/config', glob('config/*')),
    ],
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},  # how colcon test picks pytest (else unittest: 0 tests)
    zip_safe=True,
    maintainer='poco-ros developers',
    maintainer_email='dev@poco-ros.invalid',
    description='Launch files, parameter YAML, rviz config and the pip-only runner for poco-ros.',
    license='Apache-2.0',
    entry_points={
        # lib/poco_bringup/: the ROS executables (`ros2 run poco_bringup run`, graph.py's `monitor`) and the
        # project-specific names scripts/env.sh puts on PATH (poco_*; never a generic `run`).
        'console_scripts': [
            'run = poco_bringup.runner:main',
            'monitor = poco_bringup.monitor_node:main',
            'plot_learning_curve = poco_bringup.plotting:main',
            'poco_run = poco_bringup.runner:main',
            'poco_plot_learning_curve = poco_bringup.plotting:main',
        ],
    },
)
