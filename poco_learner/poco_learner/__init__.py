"""Everything that learns: replay buffer, chunk critic, POCO and baselines, offline pre-training, rosbag2 tools, learner node."""
