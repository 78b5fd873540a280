"""Re-export of :mod:`llsim.cluster` (the cluster types moved below the allocator and the
simulator); kept so that ``llsim.sim.engine`` imports unchanged while it is being restructured."""
from llsim.cluster import DeviceInstance, expand_devices  # noqa: F401
