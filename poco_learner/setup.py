from glob import glob

from setuptools import find_packages, setup

package_name = 'poco_learner'

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
    description='Everything that learns: replay buffer, chunk critic, POCO and baselines, offline pre-training, rosbag2 tools, learner node.',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'learner_node = poco_learner.learner_node:main',
            'pretrain = poco_learner.cli:pretrain_main',
            'evaluate = poco_learner.cli:evaluate_main',
            'poco_experiment = poco_learner.experiment:main',
            'poco_harness = poco_learner.experiment:sweep_main',
            'bag_record = poco_learner.bags:record_main',
            'bag_ingest = poco_learner.bags:ingest_main',
            'bag_replay = poco_learner.bags:replay_main',
            'bag_recover = poco_learner.bags:recover_main',
            'poco_pretrain_encoder = poco_learner.pretrain_encoder:main',
            # the names scripts/env.sh puts on PATH (project-specific; the ones above stay ROS executables)
            'poco_pretrain = poco_learner.cli:pretrain_main',
            'poco_evaluate = poco_learner.cli:evaluate_main',
            'poco_bag_record = poco_learner.bags:record_main',
            'poco_bag_ingest = poco_learner.bags:ingest_main',
            'poco_bag_replay = poco_learner.bags:replay_main',
            'poco_bag_recover = poco_learner.bags:recover_main',
        ],
    },
)
