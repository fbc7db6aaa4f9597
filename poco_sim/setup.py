from glob import glob

from setuptools import find_packages, setup

package_name = 'poco_sim'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'benchmarks']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/assets', glob('poco_sim/assets/*.xml')),
    ],
    package_data={package_name: ['assets/*.xml']},
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},  # how colcon test picks pytest (else unittest: 0 tests)
    zip_safe=True,
    maintainer='poco-ros developers',
    maintainer_email='dev@poco-ros.invalid',
    description='MuJoCo 6-DoF arm with gripper and two cameras as gymnasium environments, scripted expert, and the sim node that impersonates the robot.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'sim_node = poco_sim.sim_node:main',
            'collect_demos = poco_sim.collect:main',
            'poco_collect_demos = poco_sim.collect:main',  # the name scripts/env.sh puts on PATH
        ],
    },
)
