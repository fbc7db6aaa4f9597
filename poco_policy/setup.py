from glob import glob

from setuptools import find_packages, setup

package_name = 'poco_policy'

setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'benchmarks']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
    ],
    install_requires=['setuptools'],
    extras_require={'test': ['pytest']},  # how colcon test picks pytest (else unittest: 0 tests)
    zip_safe=True,
    maintainer='poco-ros developers',
    maintainer_email='dev@poco-ros.invalid',
    description='Models that act: frozen ResNet-10 encoder, observation assembly, flow-matching chunk policy, policy and teleop nodes.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'policy_node = poco_policy.policy_node:main',
            'teleop_node = poco_policy.teleop_node:main',
            'poco_convert_encoder = poco_policy.convert_encoder:main',
            'poco_teleop = poco_policy.teleop_node:main',  # the name scripts/env.sh puts on PATH
        ],
    },
)
