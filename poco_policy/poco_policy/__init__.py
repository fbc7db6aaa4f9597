"""Models that act: frozen ResNet-10 encoder, observation assembly, flow-matching chunk policy, policy and teleop nodes."""
