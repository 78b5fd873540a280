"""What a planner needs to know about the network, without simulating it.

The allocator prices a transfer of B bytes from device s to device d as::

    B x (out[s] + in[d])  seconds of transmission (airtime on a shared medium)
    + one_way             seconds of latency (half the mean RTT)
    + B x loss_per_byte   seconds of expected retransmission delay

This *separable* form is exact for the simulator's wireless model whenever the contention factor
is the same for every pair: through an access point a transfer occupies the sender's uplink hop
and the receiver's downlink hop, each at that station's PHY rate x TCP goodput factor x Bianchi
contention factor (:mod:`llsim.network.wifi`); in Wi-Fi Direct the group-owner phone has no hop
of its own (``out = in = 0``). ``fixed`` and ``trace`` links cost ``relay x 8 / goodput`` per byte
on the sender's side. :func:`link_costs` also reports how far the separable form is from the
network's own pairwise figure (:attr:`LinkCosts.separable_error`). Everything comes from the link
model of the network's kind (:mod:`llsim.network.links`), the same one the simulator runs on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llsim.network.links import LinkModel, StationSpec, link_model


@dataclass(frozen=True)
class LinkCosts:
    out: tuple[float, ...]  # seconds per byte on the sender's side
    inb: tuple[float, ...]  # seconds per byte on the receiver's side
    one_way_s: float  # mean one-way latency per transfer (RTT/2)
    loss_per_byte_s: float  # expected retransmission delay per byte
    shared: bool  # transfers share one medium (airtime is a cluster-wide resource)
    concurrent_flows: int
    separable_error: float  # max relative error of out[s] + in[d] vs the pairwise per-byte time
    wake_s: float = 0.0  # power save: delay of a transfer to a phone idle for longer than idle_timeout_s
    idle_timeout_s: float = float("inf")
    never_dozes: tuple[bool, ...] = ()  # the Wi-Fi Direct group owner

    def per_byte(self, src: int, dst: int) -> float:
        return 0.0 if src == dst else self.out[src] + self.inb[dst]

    def transfer_s(self, src: int, dst: int, nbytes: float) -> float:
        if src == dst:
            return 0.0
        return nbytes * (self.per_byte(src, dst) + self.loss_per_byte_s) + self.one_way_s


def make_network(cfg, stations: list[StationSpec], base_dir=None) -> LinkModel:
    """The link model of the network's kind (:mod:`llsim.network.links`): analytic, no simulation."""
    return link_model(cfg, stations, base_dir)


def link_costs(links: LinkModel, concurrent_flows: int = 1) -> LinkCosts:
    n = links.n
    cfg = links.cfg
    out, inb, one_way, loss, shared = links.separable(concurrent_flows)
    err = 0.0
    for s in range(n):
        for d in range(n):
            if s != d:
                ref = links.pair_per_byte_s(s, d, concurrent_flows)
                if ref > 0 and math.isfinite(ref):
                    err = max(err, abs(out[s] + inb[d] - ref) / ref)
    wake, idle, never = 0.0, float("inf"), tuple(False for _ in range(n))
    if links.wireless and cfg.power_save.enabled:
        wake, idle = cfg.power_save.wake_delay_ms / 1e3, cfg.power_save.idle_timeout_ms / 1e3
        never = tuple(i == links.ap_index for i in range(n))
    return LinkCosts(tuple(out), tuple(inb), one_way, loss, shared, concurrent_flows, err, wake, idle, never)
