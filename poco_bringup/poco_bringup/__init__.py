"""Launch files, parameter YAML, rviz config and the pip-only runner for poco-ros."""
