"""The runtime load balancer: a monitor of what a coordinator can observe, overlap replicas, and a
pure policy that turns observations into rebalancing decisions (the same objects drive the
simulator and a real coordinator)."""
