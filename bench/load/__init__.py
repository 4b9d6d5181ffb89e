"""End-to-end load: a steady open-loop mix of API calls against the cluster of processes."""
