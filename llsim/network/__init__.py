"""Wi-Fi network model for llsim: how long moving a tensor between phones takes.

Wi-Fi is modelled, not a constant:

* PHY (:mod:`.phy`): 802.11n/ac/ax MCS tables; a phone's RSSI picks the highest MCS whose
  minimum sensitivity it meets (IEEE 802.11-2020 Table 21-25, +3 dB per width doubling); the rate
  follows from subcarriers x bits x coding rate / symbol time (433.3 Mb/s for 11ac 80 MHz MCS9 SGI
  per stream, 1201 Mb/s for 11ax 80 MHz 2x2 MCS11).
* MAC (:mod:`.mac`): Bianchi's DCF saturation model (IEEE JSAC 2000), validated against ns-3's
  wifi-bianchi reference values; it gives how throughput degrades with the number of contenders.
* Medium (:mod:`.fluid`, :mod:`.wifi`): all transfers of a BSS share airtime as an exact,
  event-driven fluid processor-sharing queue in simpy; through an access point bytes cross the
  air twice; TCP goodput is a fraction of the PHY rate (65 % for one ideal client).
* Latency (:mod:`.latency`): per-transfer RTT from a spliced lognormal matched to WiFiSeer's
  median / p90 / p99 (MobiSys 2016); Android power save (about 200 ms idle timer) adds a wake
  delay; TCP losses add retransmission delays.
* ``fixed`` and ``trace`` kinds (:mod:`.trace`) give deterministic or measured links.

The numbers and their sources are in each module's docstring; the scenario keys in
:mod:`.config`.
"""
from llsim.network.config import (
    FixedConfig,
    InfrastructureConfig,
    NetworkConfig,
    PowerSaveConfig,
    RttQuantiles,
    TraceConfig,
    WifiDirectConfig,
    parse_network_config,
)
from llsim.network.latency import RttDistribution
from llsim.network.mac import MacResult, contention_factor, saturation_throughput, solve_tau
from llsim.network.phy import mcs_rate_mbps, phy_rate_mbps, select_mcs, sensitivity_dbm
from llsim.network.trace import Trace, load_trace
from llsim.network.wifi import AP, Network, StationSpec, TransferRecord

__all__ = [
    "AP",
    "FixedConfig",
    "InfrastructureConfig",
    "MacResult",
    "Network",
    "NetworkConfig",
    "PowerSaveConfig",
    "RttDistribution",
    "RttQuantiles",
    "StationSpec",
    "Trace",
    "TraceConfig",
    "TransferRecord",
    "WifiDirectConfig",
    "contention_factor",
    "load_trace",
    "mcs_rate_mbps",
    "parse_network_config",
    "phy_rate_mbps",
    "saturation_throughput",
    "select_mcs",
    "sensitivity_dbm",
    "solve_tau",
]
