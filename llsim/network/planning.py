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
network's own pairwise figure (:attr:`LinkCosts.separable_error`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from llsim.network.wifi import AP, Network, StationSpec


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


def make_network(cfg, stations: list[StationSpec], base_dir=None) -> Network:
    """A :class:`Network` for its analytic helpers only (no simulation runs on it)."""
    return Network(simpy.Environment(), cfg, stations, base_dir=base_dir)


def link_costs(net: Network, concurrent_flows: int = 1) -> LinkCosts:
    n = len(net.stations)
    out = [0.0] * n
    inb = [0.0] * n
    cfg = net.cfg
    if net.kind in ("infrastructure", "wifi_direct"):
        ap = net.ap_index
        for s in range(n):
            for d in range(n):
                if s == d:
                    continue
                hops = net._hops(s, d)
                per = net._per_byte_airtime(hops, net.contenders(s, d, concurrent_flows))
                for h, a in zip(hops, per):
                    if h.tx == s and s != ap:
                        out[s] = max(out[s], a)
                    elif h.tx in (AP, ap):
                        inb[d] = max(inb[d], a)
        one_way = 0.5 * net.mean_rtt_s(0, 1) if n > 1 else 0.0
        loss = cfg.loss_rate * cfg.retransmit_delay_ms / 1e3 / cfg.packet_bytes
        shared = True
    else:
        per = 8.0 / net.goodput_bps(0, 1) if n > 1 else 0.0
        out = [per] * n
        one_way = 0.5 * net.rtt_s(0, 1) if n > 1 else 0.0
        loss = 0.0
        shared = bool(cfg.shared)
    err = 0.0
    for s in range(n):
        for d in range(n):
            if s != d:
                # goodput_bps is one of ``concurrent_flows`` flows' share: the per-byte airtime is 8 / (share x flows)
                ref = 8.0 / (net.goodput_bps(s, d, concurrent_flows) * concurrent_flows) if net.kind in (
                    "infrastructure", "wifi_direct") else 8.0 / net.goodput_bps(s, d)
                if ref > 0 and math.isfinite(ref):
                    err = max(err, abs(out[s] + inb[d] - ref) / ref)
    wake, idle, never = 0.0, float("inf"), tuple(False for _ in range(n))
    if net.kind in ("infrastructure", "wifi_direct") and cfg.power_save.enabled:
        wake, idle = cfg.power_save.wake_delay_ms / 1e3, cfg.power_save.idle_timeout_ms / 1e3
        never = tuple(i == net.ap_index for i in range(n))
    return LinkCosts(tuple(out), tuple(inb), one_way, loss, shared, concurrent_flows, err, wake, idle, never)
