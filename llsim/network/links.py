"""One link model per network kind: what a link between two devices is, without simulating it.

A :class:`LinkModel` holds a network kind's links (for the wireless kinds: each phone's RSSI, MCS
and PHY rate, and the hops of a transfer) and answers analytically: goodput, RTT, the expected
duration of a transfer, who dozes, and the separable per-byte costs a planner prices transfers
with (:meth:`LinkModel.separable`). The simulated network (:class:`llsim.network.wifi.Network`)
runs its transfers on the model of its kind; the allocator (:mod:`llsim.network.planning`) reads
the same model, with no simpy environment.

Kinds: :class:`InfrastructureLinks`, :class:`WifiDirectLinks` (both :class:`WirelessLinks`),
:class:`FixedLinks` and :class:`TraceLinks` (both :class:`CapacityLinks`); :func:`link_model`
picks one from a config (:data:`KINDS`). Adding a kind: its config class in
:mod:`llsim.network.config`, a subclass here registered in :data:`KINDS`, and (if its
transfers share capacity differently) its rates in ``Network``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from llsim.errors import LLSimError
from llsim.network import mac, phy
from llsim.network.config import FixedConfig, InfrastructureConfig, TraceConfig, WifiDirectConfig, parse_network_config
from llsim.network.latency import RttDistribution
from llsim.network.trace import Trace, load_trace

#: Transmitter id of the infrastructure access point (and of the relay in fixed/trace ``ap_relay``).
AP = -1


@dataclass(frozen=True)
class StationSpec:
    """A phone on the network; ``None`` fields take the network config's defaults."""

    name: str
    rssi_dbm: float | None = None
    streams: int | None = None


@dataclass(frozen=True)
class Hop:
    tx: int  # transmitting node (station index or AP)
    rate_bps: float  # PHY rate x TCP goodput factor
    key: tuple  # (standard, mcs, width, streams, gi, rts_cts) for the contention factor


def per_byte_airtime(hops: Sequence[Hop], n_tx: int) -> list[float]:
    """Seconds of airtime per byte on each hop with ``n_tx`` distinct transmitters contending."""
    return [8.0 / (h.rate_bps * mac.contention_factor(n_tx, *h.key)) for h in hops]


class LinkModel:
    """The links of one network kind among ``stations`` (analytic: no simulation)."""

    kind = ""
    wireless = False
    random_rtt = False  # RTTs are drawn per transfer (config ``rtt_sampling``: random or expected)

    def __init__(self, cfg, stations: Sequence[StationSpec], base_dir: str | Path | None = None):
        self.cfg = cfg
        self.stations = list(stations)
        n = len(self.stations)
        self.n = n
        self.ap_index: int | None = None
        self.rssi: list[float | None] = [None] * n  # current RSSI of each phone's link (None: no link)
        self.mcs: list[int | None] = [None] * n
        self.phy_mbps: list[float | None] = [None] * n
        self.trace: Trace | None = None

    def check_pair(self, src: int, dst: int) -> None:
        n = self.n
        if not (0 <= src < n and 0 <= dst < n):
            raise ValueError(f"device indices must be in 0..{n - 1}, got {src}->{dst}")

    def sleeps(self, i: int) -> bool:
        """Does device ``i`` doze when idle (power save)?"""
        return False

    # ---- analytic figures (each kind defines them) ----------------------------------------------
    def goodput_bps(self, src: int, dst: int, concurrent_flows: int = 1, at: float = 0.0) -> float:
        raise NotImplementedError

    def rtt_s(self, src: int, dst: int, at: float = 0.0) -> float:
        raise NotImplementedError

    def mean_rtt_s(self, src: int, dst: int, at: float = 0.0) -> float:
        return self.rtt_s(src, dst, at)

    def expected_transfer_s(self, src: int, dst: int, nbytes: int, concurrent_flows: int = 1,
                            at: float = 0.0, include_wake: bool = False) -> float:
        raise NotImplementedError

    def separable(self, concurrent_flows: int) -> tuple[list[float], list[float], float, float, bool]:
        """(out, in, one-way latency, loss delay per byte, shared): a transfer of B bytes from s to d
        costs ``B x (out[s] + in[d] + loss) + one_way`` (see :mod:`llsim.network.planning`)."""
        raise NotImplementedError

    def pair_per_byte_s(self, src: int, dst: int, concurrent_flows: int) -> float:
        """The kind's own per-byte time of one of ``concurrent_flows`` flows src -> dst (what
        :meth:`separable` approximates)."""
        return 8.0 / self.goodput_bps(src, dst)

    def set_rssi(self, station: int, rssi_dbm: float) -> bool:
        raise LLSimError("set_rssi needs a wireless network (infrastructure or wifi_direct)")


class WirelessLinks(LinkModel):
    """Stations of one BSS (see :mod:`llsim.network.wifi` for the model and its sources)."""

    wireless = True
    random_rtt = True

    def __init__(self, cfg, stations, base_dir=None):
        super().__init__(cfg, stations, base_dir)
        self.rtt = RttDistribution.from_ms(cfg.rtt_ms.median, cfg.rtt_ms.p90, cfg.rtt_ms.p99)
        self.rtt_mean = self.rtt.mean()
        self.ap_index = self._ap_device()
        self.hop_cache: dict[tuple[int, int], tuple[Hop, ...]] = {}
        for i, st in enumerate(self.stations):
            if i == self.ap_index:
                continue  # the hotspot phone's own link is not used
            rssi = cfg.default_rssi_dbm if st.rssi_dbm is None else st.rssi_dbm
            self.mcs[i], self.phy_mbps[i] = self.link_rate(i, rssi)
            self.rssi[i] = rssi

    def _ap_device(self) -> int | None:
        return None

    def ap_streams(self) -> int:
        """Spatial streams of the AP (the hotspot phone's own for ``wifi_direct``)."""
        return self.streams(self.ap_index) if self.ap_index is not None else self.cfg.ap_streams

    def streams(self, i: int) -> int:
        s = self.stations[i].streams
        s = self.cfg.streams if s is None else s
        if not 1 <= int(s) <= phy.MAX_STREAMS:
            raise LLSimError(f"device {self.stations[i].name!r}: streams must be 1..{phy.MAX_STREAMS}, not {s}")
        return int(s)

    def link_rate(self, station: int, rssi_dbm: float) -> tuple[int, float]:
        """(MCS, PHY rate in Mb/s) of the link between ``station`` and the AP at ``rssi_dbm``.

        Raises :class:`LLSimError` naming the device when the signal is below MCS0's sensitivity.
        """
        cfg = self.cfg
        streams = min(self.streams(station), self.ap_streams())
        try:
            mcs = phy.select_mcs(rssi_dbm, cfg.standard, cfg.width_mhz, streams)
        except LLSimError as exc:
            raise LLSimError(f"device {self.stations[station].name!r}: {exc}") from None
        return mcs, phy.mcs_rate_mbps(cfg.standard, mcs, cfg.width_mhz, streams, cfg.guard_interval)

    def link_hop(self, tx: int, station: int) -> Hop:
        """The hop between ``station`` and the AP, transmitted by ``tx``: at ``station``'s rate whichever end
        transmits (so the ``wifi_direct`` hotspot phone's own RSSI never enters a hop)."""
        cfg = self.cfg
        streams = min(self.streams(station), self.ap_streams())
        rate = self.phy_mbps[station] * 1e6 * cfg.tcp_goodput_factor
        key = (cfg.standard, self.mcs[station], cfg.width_mhz, streams, cfg.guard_interval, cfg.rts_cts)
        return Hop(tx, rate, key)

    def hops(self, src: int, dst: int) -> tuple[Hop, ...]:
        """Wireless hops of a transfer (cached until the next :meth:`set_rssi` that changes a rate)."""
        hops = self.hop_cache.get((src, dst))
        if hops is None:
            hops = self.hop_cache[(src, dst)] = self._make_hops(src, dst)
        return hops

    def _make_hops(self, src: int, dst: int) -> tuple[Hop, ...]:
        raise NotImplementedError

    def _tx_limit(self) -> int:
        """How many nodes could transmit."""
        return self.n

    def set_rssi(self, station: int, rssi_dbm: float) -> bool:
        """Move ``station``'s link to ``rssi_dbm``; True when its MCS or PHY rate changed (hops rebuilt).
        Out of range raises before any change; the hotspot phone has no link (no-op)."""
        if station == self.ap_index:
            return False
        mcs, mbps = self.link_rate(station, rssi_dbm)  # raises (out of range) before any change
        self.rssi[station] = rssi_dbm
        if mcs == self.mcs[station] and mbps == self.phy_mbps[station]:
            return False
        self.mcs[station] = mcs
        self.phy_mbps[station] = mbps
        self.hop_cache.clear()
        return True

    def sleeps(self, i: int) -> bool:
        return self.cfg.power_save.enabled and i != self.ap_index

    def contenders(self, src: int, dst: int, concurrent_flows: int = 1) -> int:
        """Distinct transmitters assumed by the analytic helpers for ``concurrent_flows`` flows like src->dst.

        The other flows are assumed to come from other phones (each adds its non-AP transmitters),
        capped by the number of nodes that could transmit.
        """
        hops = self.hops(src, dst)
        txs = {h.tx for h in hops}
        phones = len(txs - {AP, self.ap_index})
        return min(len(txs) + max(concurrent_flows - 1, 0) * phones, self._tx_limit())

    def goodput_bps(self, src: int, dst: int, concurrent_flows: int = 1, at: float = 0.0) -> float:
        per = per_byte_airtime(self.hops(src, dst), self.contenders(src, dst, concurrent_flows))
        return 8.0 / sum(per) / concurrent_flows

    def rtt_s(self, src: int, dst: int, at: float = 0.0) -> float:
        return self.rtt.median

    def mean_rtt_s(self, src: int, dst: int, at: float = 0.0) -> float:
        return self.rtt.mean()

    def expected_transfer_s(self, src, dst, nbytes, concurrent_flows=1, at=0.0, include_wake=False) -> float:
        t = 8.0 * nbytes / self.goodput_bps(src, dst, concurrent_flows) + 0.5 * self.mean_rtt_s(src, dst)
        cfg = self.cfg
        t += math.ceil(nbytes / cfg.packet_bytes) * cfg.loss_rate * cfg.retransmit_delay_ms / 1e3
        if include_wake and self.sleeps(dst):
            t += cfg.power_save.wake_delay_ms / 1e3
        return t

    def separable(self, concurrent_flows: int):
        n = self.n
        out = [0.0] * n
        inb = [0.0] * n
        ap = self.ap_index
        for s in range(n):
            for d in range(n):
                if s == d:
                    continue
                hops = self.hops(s, d)
                per = per_byte_airtime(hops, self.contenders(s, d, concurrent_flows))
                for h, a in zip(hops, per):
                    if h.tx == s and s != ap:
                        out[s] = max(out[s], a)
                    elif h.tx in (AP, ap):
                        inb[d] = max(inb[d], a)
        one_way = 0.5 * self.mean_rtt_s(0, 1) if n > 1 else 0.0
        cfg = self.cfg
        loss = cfg.loss_rate * cfg.retransmit_delay_ms / 1e3 / cfg.packet_bytes
        return out, inb, one_way, loss, True

    def pair_per_byte_s(self, src: int, dst: int, concurrent_flows: int) -> float:
        # goodput_bps is one of ``concurrent_flows`` flows' share: the per-byte airtime is 8 / (share x flows)
        return 8.0 / (self.goodput_bps(src, dst, concurrent_flows) * concurrent_flows)


class InfrastructureLinks(WirelessLinks):
    """Through an access point: every transfer is two hops, src -> AP -> dst."""

    kind = "infrastructure"

    def _make_hops(self, src, dst):
        return (self.link_hop(src, src), self.link_hop(AP, dst))

    def _tx_limit(self) -> int:
        return self.n + 1  # the AP transmits too


class WifiDirectLinks(WirelessLinks):
    """Phone ``ap_device`` is the group owner: one hop to or from it, two hops through it otherwise."""

    kind = "wifi_direct"

    def _ap_device(self) -> int:
        n = self.n
        if self.cfg.ap_device >= n:
            raise LLSimError(
                f"network.ap_device is {self.cfg.ap_device} but there are only {n} devices (indices 0..{n - 1})"
            )
        return self.cfg.ap_device

    def _make_hops(self, src, dst):
        ap = self.ap_index
        if src == ap:
            return (self.link_hop(ap, dst),)
        if dst == ap:
            return (self.link_hop(src, src),)
        return (self.link_hop(src, src), self.link_hop(ap, dst))


class CapacityLinks(LinkModel):
    """A link of a given capacity (relayed twice with ``ap_relay``; split equally when ``shared``)."""

    def relay(self) -> int:
        return 2 if getattr(self.cfg, "ap_relay", False) else 1

    def capacity_tx(self, src: int) -> tuple:
        return (src, AP) if self.relay() == 2 else (src,)

    def capacity_bps(self, now: float) -> float:
        raise NotImplementedError

    def goodput_bps(self, src: int, dst: int, concurrent_flows: int = 1, at: float = 0.0) -> float:
        share = 1.0 / concurrent_flows if self.cfg.shared else 1.0
        return self.capacity_bps(at) * share / self.relay()

    def separable(self, concurrent_flows: int):
        n = self.n
        per = 8.0 / self.goodput_bps(0, 1) if n > 1 else 0.0
        one_way = 0.5 * self.rtt_s(0, 1) if n > 1 else 0.0
        return [per] * n, [0.0] * n, one_way, 0.0, bool(self.cfg.shared)


class FixedLinks(CapacityLinks):
    """Deterministic: ``relay x nbytes x 8 / goodput + rtt/2``."""

    kind = "fixed"

    def capacity_bps(self, now: float) -> float:
        return self.cfg.goodput_mbps * 1e6

    def rtt_s(self, src, dst, at=0.0) -> float:
        return self.cfg.rtt_ms / 1e3

    def expected_transfer_s(self, src, dst, nbytes, concurrent_flows=1, at=0.0, include_wake=False) -> float:
        return 8.0 * nbytes / self.goodput_bps(src, dst, concurrent_flows) + 0.5 * self.mean_rtt_s(src, dst)


class TraceLinks(CapacityLinks):
    """The throughput and RTT of a measured trace over time."""

    kind = "trace"

    def __init__(self, cfg, stations, base_dir=None):
        super().__init__(cfg, stations, base_dir)
        self.trace = load_trace(cfg.resolve_path(base_dir), on_end=cfg.on_end)

    def capacity_bps(self, now: float) -> float:
        return self.trace.throughput_at(now)

    def rtt_s(self, src, dst, at=0.0) -> float:
        return self.trace.rtt_at(at)

    def expected_transfer_s(self, src, dst, nbytes, concurrent_flows=1, at=0.0, include_wake=False) -> float:
        share = (1.0 / concurrent_flows if self.cfg.shared else 1.0) / self.relay()
        return self.trace.finish_time(at, 8.0 * nbytes, share) - at + 0.5 * self.trace.rtt_at(at)


#: network kind -> its link model (the ``kind`` of :mod:`llsim.network.config`)
KINDS: dict[str, type[LinkModel]] = {c.kind: c for c in (InfrastructureLinks, WifiDirectLinks, FixedLinks, TraceLinks)}


def link_model(cfg, stations: Sequence[StationSpec], base_dir: str | Path | None = None) -> LinkModel:
    """The link model of ``cfg``'s kind (``cfg``: a parsed config or a plain mapping)."""
    if not isinstance(cfg, (InfrastructureConfig, WifiDirectConfig, FixedConfig, TraceConfig)):
        cfg = parse_network_config(cfg)
    if not stations:
        raise LLSimError("the network needs at least one device")
    stations = [s if isinstance(s, StationSpec) else StationSpec(**s) for s in stations]
    return KINDS[cfg.kind](cfg, stations, base_dir)
