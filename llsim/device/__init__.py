"""Devices: profiles (validated YAML with provenance), the cost model that predicts op and segment
latency from them, the executors that run ops (locally or on a phone), and the profiler."""
from llsim.device.profile import DeviceProfile, load_profile, list_profiles  # noqa: F401
from llsim.device.costmodel import CostModel  # noqa: F401
