"""The simulated network: :class:`Network` moves bytes between phones inside a simpy run.

Model, per ``kind`` (see :mod:`llsim.network.config` for the defaults and their sources):

``infrastructure``
    One BSS. A transfer's bytes cross the air twice: src -> AP at src's PHY rate, AP -> dst at
    dst's PHY rate (packet-level pipelining: both hops are active together, so a byte costs the
    sum of the two hops' airtimes). All active transfers share the airtime as a fluid processor
    sharing medium: with F active transfers each gets 1/F of the airtime (airtime fairness) and
    moves ``(1/F) / sum_h 8 / (PHY_h x tcp_goodput_factor x c(n))`` bytes per second, where
    ``c(n)`` is the Bianchi contention factor (:func:`llsim.network.mac.contention_factor`) for
    the n distinct transmitters (phones with an active uplink hop, plus the AP) at that hop's
    MCS. Rates are recomputed exactly whenever a transfer starts or ends
    (:class:`llsim.network.fluid.FluidMedium`).
``wifi_direct``
    Phone ``ap_device`` is the hotspot / group owner: transfers to or from it are one hop,
    between two other phones two hops through it; same shared airtime. The hotspot never dozes.
``fixed``
    Deterministic: ``relay x nbytes x 8 / goodput + rtt/2`` (relay = 2 with ``ap_relay``);
    ``shared`` makes concurrent transfers split the goodput equally.
``trace``
    The throughput of a measured trace, integrated exactly over its breakpoints; latency = trace
    RTT/2 at the transfer's start. Optional ``shared`` / ``ap_relay`` as for ``fixed``.

Around the transmission (wireless kinds only):

* **Power save**: if the receiving phone has had no transfer for more than ``idle_timeout`` it
  dozes; the transfer first waits ``wake_delay`` (the AP buffers until the next beacon). Phones
  start awake (idle clock at the network's creation).
* **Latency**: after the last byte is sent, ``RTT/2`` with RTT drawn per transfer from
  :class:`llsim.network.latency.RttDistribution` (one normal draw per transfer, drawn
  :data:`RTT_BLOCK` at a time). One RTT per transfer, whatever the number of hops (the measured
  RTTs are end to end).
* **Loss**: ``k ~ Binomial(ceil(nbytes / packet_bytes), loss_rate)`` lost packets, each adding
  ``retransmit_delay`` (a delay only: the resent bytes' airtime is neglected).
* ``rtt_sampling: expected`` replaces both draws by their expectations (mean RTT, expected
  retransmission delay): no randomness. A token's latency is linear in these delays, so with one
  request in flight this is the expectation of the random run without its noise (the WiFiSeer
  tail has an RTT standard deviation of 232 ms, so telling plans 0.5 % apart by sampling would
  take millions of tokens); the allocator bench judges plans this way.

Simulated time of one transfer = wake + transmission (shared) + RTT/2 + k x retransmit_delay.
The analytic helpers (:meth:`Network.goodput_bps`, :meth:`Network.expected_transfer_s`,
:meth:`Network.rtt_s`) use the same formulas without simpy. All randomness comes from the ``rng``
passed in, drawn at each transfer's start in a fixed order (a block of RTTs when the previous
block is used up, then that transfer's losses), so a seed fixes every time.

**Signal changes** (wireless kinds): :meth:`Network.set_rssi` moves a phone to a new RSSI during the
run (fading Wi-Fi). Transfers that start after the call use the new MCS / PHY rate; a transfer
already started (in the air, or waiting for its receiver to wake) keeps the hop rates it started
with until its last byte, also when the medium recomputes the shares. A signal below MCS0's
sensitivity is out of range (:class:`~llsim.errors.LLSimError`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import simpy
from simpy.events import Event

from llsim.kernel import blank_event, call_later, set_value, succeed_with

from llsim.errors import LLSimError
from llsim.network.fluid import Flow, FluidMedium, Rates
from llsim.network.links import AP, Hop as _Hop, LinkModel, StationSpec, link_model, per_byte_airtime  # noqa: F401
#: RTTs are drawn this many at a time (one standard normal each, in transfer order).
RTT_BLOCK = 256


@dataclass(frozen=True)
class TransferRecord:
    """What happened to one transfer (times in seconds of simulated time)."""

    src: int
    dst: int
    nbytes: int
    start: float
    end: float
    tag: str = ""
    hops: int = 1
    wake_s: float = 0.0  # waiting for the receiver to leave power save
    transmit_s: float = 0.0  # from entering the medium to the last byte sent
    airtime_s: float = 0.0  # medium time used (share-weighted)
    latency_s: float = 0.0  # one-way latency (RTT/2)
    retransmits: int = 0
    retransmit_s: float = 0.0

    @property
    def duration(self) -> float:
        return self.end - self.start

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(slots=True)
class _LinkStats:
    transfers: int = 0
    bytes: int = 0
    total_time_s: float = 0.0
    airtime_s: float = 0.0
    wake_s: float = 0.0
    retransmits: int = 0


class _Route:
    """What every transfer src -> dst shares (cached per pair; the PHY-rate part is rebuilt after
    :meth:`Network.set_rssi`): ``meta`` is the wireless hops (``None`` for the capacity kinds),
    ``hops`` the transmitter ids, ``link`` the pair's statistics (kept for the whole run)."""

    __slots__ = ("meta", "hops", "link", "alone")

    def __init__(self, meta, hops: tuple, link: _LinkStats, alone: Rates | None):
        self.meta, self.hops, self.link = meta, hops, link
        self.alone = alone  # rates of a transfer alone on the medium (None when they vary: trace)


def _record(src, dst, nbytes, start, end, tag, hops, wake_s, transmit_s, airtime_s, latency_s, retransmits,
            retransmit_s) -> TransferRecord:
    """``TransferRecord(...)`` with every field given, without the frozen dataclass's per-field
    ``object.__setattr__`` calls (the same object: it has no ``__post_init__``)."""
    rec = object.__new__(TransferRecord)  # not an event: a frozen dataclass filled without __init__
    rec.__dict__.update(src=src, dst=dst, nbytes=nbytes, start=start, end=end, tag=tag, hops=hops, wake_s=wake_s,
                        transmit_s=transmit_s, airtime_s=airtime_s, latency_s=latency_s, retransmits=retransmits,
                        retransmit_s=retransmit_s)
    return rec


class _Transfer(Flow):
    """The event :meth:`Network.transfer` returns, which is also the transfer's flow in the medium:
    the medium schedules it for the arrival of the last byte, ``delay`` = RTT/2 + retransmission
    delays after it was sent. Its first callback, :meth:`Network._arrived`, accounts and sets the
    value. (:meth:`Network.send` sets its attributes directly, without ``Flow.__init__``.)"""

    __slots__ = ("net", "route", "src", "dst", "tag", "start", "wake", "latency", "k", "retx", "record", "t_in")

    def _enter(self, _timer: Event) -> None:
        """The receiver is awake: enter the medium."""
        self.t_in = self.env.now
        self.net._medium.submit(self)


class Network:
    """Wi-Fi (or fixed / trace) network among ``stations`` inside simpy environment ``env``.

    ``cfg`` may be a parsed config or a plain mapping (validated with
    :func:`llsim.network.config.parse_network_config`). ``base_dir`` resolves a relative trace
    path. ``on_transfer(record)`` is called with each finished :class:`TransferRecord`.
    """

    def __init__(
        self,
        env: simpy.Environment,
        cfg,
        stations: Sequence[StationSpec],
        rng: np.random.Generator | None = None,
        base_dir: str | Path | None = None,
        on_transfer: Callable[[TransferRecord], None] | None = None,
    ):
        links = self.links = link_model(cfg, stations, base_dir)  # the analytic model of the network's kind
        self.env = env
        self.cfg = cfg = links.cfg
        self.kind: str = cfg.kind
        self.stations = links.stations
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.on_transfer = on_transfer
        n = len(self.stations)
        self._wireless = links.wireless
        self.trace = links.trace
        self.ap_index = links.ap_index
        self._rssi, self._mcs, self._phy_mbps = links.rssi, links.mcs, links.phy_mbps  # the model's (shared) lists
        self._links: dict[tuple[int, int], _LinkStats] = {}
        self._last_active = [env.now] * n
        self._awake_at = [env.now] * n
        self._busy = [0] * n
        # per-run constants of the transfer hot path (same expressions as the formulas they replace);
        # set_rssi empties the ones that depend on PHY rates (_clear_rate_caches).
        self._routes: list[list[_Route | None]] = [[None] * n for _ in range(n)]  # [src][dst]
        # rates of a set of active flows, keyed by the tuple of id(flow.meta) (wireless) or of
        # id(flow.hops) (capacity kinds), in the flows' order. Each value holds those objects (its
        # last element), so the ids stay unique while the entry exists.
        self._rates_cache: dict[tuple, tuple[Rates, tuple]] = {}
        # (id(hops), n_tx) -> (seconds per byte, tx split, hops: keeps the id unique)
        self._per_flow_cache: dict[tuple[int, int], tuple[float, tuple, tuple]] = {}

        if self._wireless:
            self._rtt = links.rtt
            self._hops = links.hops
            self._medium = FluidMedium(env, self._wireless_rates)
        else:
            self._capacity_bps, self._relay, self._capacity_tx = links.capacity_bps, links.relay, links.capacity_tx
            self._medium = FluidMedium(env, self._capacity_rates,
                                       breakpoint_fn=self.trace.next_breakpoint if self.trace is not None else None)
        self._tx_airtime = self._medium.tx_airtime  # transmitter -> airtime, integrated by the medium
        self._n = n
        self._sleeper = [links.sleeps(i) for i in range(n)]
        if self._wireless:
            ps = cfg.power_save
            self._idle_timeout_s = ps.idle_timeout_ms / 1e3
            self._wake_delay_s = ps.wake_delay_ms / 1e3
            self._expected = cfg.rtt_sampling == "expected"
            self._lossy = cfg.loss_rate > 0
            self._half_rtt_mean = 0.5 * links.rtt_mean
            self._half_rtts: list[float] = []  # the current block of one-way latencies, consumed from the end
        elif self.kind == "fixed":
            self._half_rtt_fixed = 0.5 * cfg.rtt_ms / 1e3

    def _route(self, src: int, dst: int) -> _Route:
        """The cached :class:`_Route` of src -> dst (built on first use, and again after set_rssi)."""
        route = self._routes[src][dst]
        if route is None:
            link = self._links.get((src, dst))
            if link is None:
                link = self._links[(src, dst)] = _LinkStats()
            if self._wireless:
                meta = self._hops(src, dst)
                route = _Route(meta, tuple(h.tx for h in meta), link, None)
                route.alone = self._make_wireless_rates([route])
            else:
                route = _Route(None, self._capacity_tx(src), link, None)
                if self.kind == "fixed":
                    route.alone = self._make_capacity_shares([route])
            self._routes[src][dst] = route
        return route

    # ------------------------------------------------------------------ rates
    _per_byte_airtime = staticmethod(per_byte_airtime)

    def _remember(self, key, rates: Rates, objs: tuple) -> Rates:
        """Cache ``rates`` under ``key`` (ids of ``objs``, which the entry keeps alive)."""
        cache = self._rates_cache
        if len(cache) >= 65536:  # bound the memory of long runs with many distinct mixes
            cache.clear()
        cache[key] = (rates, objs)
        return rates

    def _wireless_rates(self, flows: Sequence[Flow], now: float) -> Rates:
        """Rates of the active flows, cached per sequence of their hops tuples (``meta``, by identity)."""
        key = id(flows[0].meta) if len(flows) == 1 else tuple([id(f.meta) for f in flows])
        hit = self._rates_cache.get(key)
        if hit is not None:
            return hit[0]
        return self._remember(key, self._make_wireless_rates(flows), tuple([f.meta for f in flows]))

    def _make_wireless_rates(self, flows: Sequence[Flow]) -> Rates:
        """Airtime fairness: each of F flows gets 1/F of the airtime; its byte rate is that share over
        its hops' seconds per byte, with the contention factor of the n distinct transmitters."""
        txs = set()
        for f in flows:
            txs.update(f.hops)
        n_tx = len(txs)
        share = 1.0 / len(flows)
        per_flow = self._per_flow_cache
        out = []
        for f in flows:
            key = (id(f.meta), n_tx)  # f.meta: the hops tuple, one object per (src, dst) and PHY rates
            c = per_flow.get(key)
            if c is None:
                per = self._per_byte_airtime(f.meta, n_tx)
                total = sum(per)
                c = per_flow[key] = (total, tuple((h.tx, a / total) for h, a in zip(f.meta, per)), f.meta)
            out.append((share / c[0], share, c[1]))
        return Rates.of(out)

    def _capacity_rates(self, flows: Sequence[Flow], now: float) -> Rates:
        key = id(flows[0].hops) if len(flows) == 1 else tuple([id(f.hops) for f in flows])
        hit = self._rates_cache.get(key)
        if hit is not None:
            shape = hit[0]
        else:
            shape = self._remember(key, self._make_capacity_shares(flows), tuple([f.hops for f in flows]))
        if self.kind == "fixed":
            return shape
        rate = self._capacity_bps(now) / 8.0 * shape.share[0] / self._relay()
        return Rates((rate,) * len(flows), shape.share, shape.tx_airtime)

    def _make_capacity_shares(self, flows: Sequence[Flow]) -> Rates:
        """Shares and airtime of capacity kinds; byte rates at the ``fixed`` goodput (a trace's
        replaces them at each event)."""
        share = 1.0 / len(flows) if self.cfg.shared else 1.0
        relay = self._relay()
        rate = self.cfg.goodput_mbps * 1e6 / 8.0 * share / relay if self.kind == "fixed" else 0.0
        return Rates.of([(rate, share, tuple((tx, 1.0 / relay) for tx in f.hops)) for f in flows])

    # ------------------------------------------------------------------ signal changes
    def set_rssi(self, station: int, rssi_dbm: float) -> None:
        """Change the RSSI of ``station``'s link to the AP from now on (e.g. a fading Wi-Fi event).

        Transfers that start after the call use the MCS and PHY rate of the new RSSI (chosen as at
        set-up: the same :meth:`_link_rate`); transfers already started keep the rates they started
        with until their last byte (their hops are fixed at the start). The analytic helpers and
        :meth:`station_stats` report the new rate at once. A signal below MCS0's sensitivity means the
        phone is out of range: :class:`LLSimError` naming the device and the RSSI, and nothing
        changes. For the ``wifi_direct`` hotspot phone (``ap_index``) this is a no-op: it has no link
        of its own, and the hops it transmits run at the receiving phone's rate (:meth:`_link_hop`).
        """
        if not self._wireless:
            raise LLSimError("set_rssi needs a wireless network (infrastructure or wifi_direct)")
        if not 0 <= station < self._n:
            raise ValueError(f"set_rssi: device index must be in 0..{self._n - 1}, not {station}")
        rssi_dbm = float(rssi_dbm)
        if math.isnan(rssi_dbm):
            raise ValueError(f"set_rssi: device {self.stations[station].name!r}: RSSI is NaN")
        if self.links.set_rssi(station, rssi_dbm):  # the MCS changed (same MCS: every cached rate is still right)
            self._clear_rate_caches()

    def _clear_rate_caches(self) -> None:
        """Forget every cached hop and rate (they embed PHY rates). In-flight transfers keep their own
        hops tuple (``meta``): their rates are recomputed from it, under new cache entries."""
        self.links.hop_cache.clear()
        self._routes = [[None] * self._n for _ in range(self._n)]
        self._rates_cache.clear()
        self._per_flow_cache.clear()

    def rssi_dbm(self, station: int) -> float | None:
        """Current RSSI (dBm) of a phone's link to its AP (``None`` for the hotspot phone or non-Wi-Fi kinds)."""
        return self._rssi[station]

    # ------------------------------------------------------------------ simulation
    def transfer(self, src: int, dst: int, nbytes: int, tag: str = "") -> simpy.Event:
        """Send ``nbytes`` from device ``src`` to device ``dst``.

        Returns a simpy event (yield it) that is processed when the bytes have arrived; its value
        is the :class:`TransferRecord`. ``src == dst`` completes at once and is not accounted.

        The transfer's random draws happen in this call, in call order: the RTT, then the losses.
        It then waits for the receiver to wake (power save), shares the medium until its last
        byte is sent, and arrives ``RTT/2`` (+ retransmission delays) later. No simpy process is
        involved: the returned event is also the transfer's flow in the medium, which schedules it
        for the arrival time (``delay`` after its last byte), with the accounting as its first
        callback.
        """
        return self.send(src, dst, nbytes, tag, True)

    def send(self, src: int, dst: int, nbytes: int, tag: str = "", _record: bool = False) -> simpy.Event:
        """:meth:`transfer` for callers that only wait for the arrival: same simulation and
        accounting, but the event's value is ``None`` (no :class:`TransferRecord` is built unless
        ``on_transfer`` wants one)."""
        n = self._n
        if not (0 <= src < n and 0 <= dst < n):
            raise ValueError(f"transfer {src}->{dst}: device indices must be in 0..{n - 1}")
        if nbytes < 0:
            raise ValueError(f"transfer {src}->{dst}: nbytes must be >= 0, not {nbytes}")
        nbytes = int(nbytes)
        env = self.env
        start = env.now
        # the event (Event.__init__ inlined), which is also the flow (see fluid.Flow)
        ev = blank_event(_Transfer)  # a pending kernel.Deferred once env and callbacks are set
        ev.env = env
        if src == dst:
            succeed_with(env, ev, TransferRecord(src, dst, nbytes, start, start, tag, hops=0) if _record else None)
            return ev
        ev.callbacks = [self._arrived]
        route = self._routes[src][dst]
        if route is None:
            route = self._route(src, dst)
        # Random draws, always in this order: RTT, then losses.
        wake = retx = 0.0
        k = 0
        if self._wireless:
            cfg = self.cfg
            if self._expected:
                latency = self._half_rtt_mean
                retx = math.ceil(nbytes / cfg.packet_bytes) * cfg.loss_rate * cfg.retransmit_delay_ms / 1e3
            else:
                half = self._half_rtts
                if not half:
                    half = self._half_rtts = self._draw_half_rtts()
                latency = half.pop()
                if self._lossy and nbytes > 0:
                    k = int(self.rng.binomial(math.ceil(nbytes / cfg.packet_bytes), cfg.loss_rate))
                    retx = k * cfg.retransmit_delay_ms / 1e3
            if self._sleeper[dst]:
                # power save: a receiver idle past the timeout (no transfer to or from it, since
                # last_active) dozes, and this transfer waits until it is awake again
                awake = self._awake_at
                if self._busy[dst] == 0 and start >= awake[dst] and start - self._last_active[dst] > self._idle_timeout_s:
                    awake[dst] = start + self._wake_delay_s
                if awake[dst] > start:
                    wake = awake[dst] - start
        elif self.kind == "fixed":
            latency = self._half_rtt_fixed
        else:
            latency = 0.5 * self.trace.rtt_at(start)
        ev.meta = route.meta
        ev.hops = route.hops
        ev.alone = route.alone
        ev.route = route
        ev.size = nbytes
        ev.remaining = float(nbytes)
        ev.airtime = 0.0
        busy = self._busy
        busy[src] += 1
        busy[dst] += 1
        ev.net = self
        ev.src = src
        ev.dst = dst
        ev.tag = tag
        ev.start = start
        ev.wake = wake
        ev.latency = latency
        ev.k = k
        ev.retx = retx
        ev.delay = latency + retx
        ev.record = _record
        if wake > 0:
            call_later(env, wake, ev._enter)
        else:
            ev.t_in = start
            self._medium.submit(ev)
        return ev

    def _arrived(self, ev: "_Transfer") -> None:
        """First callback of a transfer's event, at its arrival: accounting, then the record."""
        src = ev.src
        dst = ev.dst
        busy = self._busy
        busy[src] -= 1
        busy[dst] -= 1
        end = self.env.now
        last = self._last_active
        if end > last[src]:
            last[src] = end
        if end > last[dst]:
            last[dst] = end
        nbytes = ev.size
        link = ev.route.link
        link.transfers += 1
        link.bytes += nbytes
        link.total_time_s += end - ev.start
        link.airtime_s += ev.airtime
        link.wake_s += ev.wake
        link.retransmits += ev.k
        if ev.record or self.on_transfer is not None:
            rec = _record(src, dst, nbytes, ev.start, end, ev.tag, len(ev.hops), ev.wake, ev.t_out - ev.t_in,
                          ev.airtime, ev.latency, ev.k, ev.retx)
            set_value(ev, rec if ev.record else None)
            if self.on_transfer is not None:
                self.on_transfer(rec)
        # else: the value is already None (the medium delivered it with kernel.succeed_at)

    def _draw_half_rtts(self) -> list[float]:
        """The next :data:`RTT_BLOCK` one-way latencies (RTT/2), reversed so that ``pop()`` takes them
        in draw order: one normal draw per transfer, drawn a block at a time (a scalar numpy draw
        per transfer cost more than the rest of the RTT's handling)."""
        return (0.5 * self._rtt.sample(self.rng, RTT_BLOCK))[::-1].tolist()


    # ------------------------------------------------------------------ statistics
    def link_stats(self) -> list[dict]:
        """One row per directed link that carried a transfer (plain values, CSV-ready)."""
        rows = []
        for (s, d), st in sorted(self._links.items()):
            if not st.transfers:
                continue  # a route that was used, but no transfer on it arrived (yet)
            rows.append({
                "src": s, "dst": d,
                "src_name": self.stations[s].name, "dst_name": self.stations[d].name,
                "transfers": st.transfers, "bytes": st.bytes,
                "total_time_s": st.total_time_s, "airtime_s": st.airtime_s,
                "mean_time_s": st.total_time_s / st.transfers,
                "goodput_mbps": st.bytes * 8 / st.total_time_s / 1e6 if st.total_time_s > 0 else 0.0,
                "wake_s": st.wake_s, "retransmits": st.retransmits,
            })
        return rows

    def station_stats(self) -> list[dict]:
        """One row per device, plus a row ``index = -1, name = "AP"`` when an external AP/relay transmitted.

        ``airtime_s`` is the airtime the node spent transmitting.
        """
        n = self._n
        sent, received, n_sent, n_received = [0] * n, [0] * n, [0] * n, [0] * n
        for (s, d), link in self._links.items():
            sent[s] += link.bytes
            received[d] += link.bytes
            n_sent[s] += link.transfers
            n_received[d] += link.transfers
        rows = []
        for i, st in enumerate(self.stations):
            rows.append({
                "index": i, "name": st.name,
                "role": "ap" if self._wireless and i == self.ap_index else "station",
                "mcs": self._mcs[i], "phy_rate_mbps": self._phy_mbps[i],
                "bytes_sent": sent[i], "bytes_received": received[i],
                "transfers_sent": n_sent[i], "transfers_received": n_received[i],
                "airtime_s": self._tx_airtime.get(i, 0.0),
            })
        if self.kind == "infrastructure" or AP in self._tx_airtime:
            rows.append({
                "index": AP, "name": "AP", "role": "ap", "mcs": None, "phy_rate_mbps": None,
                "bytes_sent": 0, "bytes_received": 0, "transfers_sent": 0, "transfers_received": 0,
                "airtime_s": self._tx_airtime.get(AP, 0.0),
            })
        return rows

    # ------------------------------------------------------------------ analytic helpers
    def contenders(self, src: int, dst: int, concurrent_flows: int = 1) -> int:
        """Distinct transmitters assumed by the analytic helpers (:meth:`llsim.network.links.WirelessLinks.contenders`)."""
        return self.links.contenders(src, dst, concurrent_flows)

    def goodput_bps(self, src: int, dst: int, concurrent_flows: int = 1, at: float = 0.0) -> float:
        """Bits per second one of ``concurrent_flows`` equal concurrent transfers src->dst gets.

        ``at``: time (trace kind only). ``inf`` when ``src == dst``.
        """
        self.links.check_pair(src, dst)
        if concurrent_flows < 1:
            raise ValueError("concurrent_flows must be >= 1")
        if src == dst:
            return math.inf
        return self.links.goodput_bps(src, dst, concurrent_flows, at)

    def rtt_s(self, src: int, dst: int, at: float = 0.0) -> float:
        """Median RTT (s) between two devices (fixed: the constant; trace: the RTT at ``at``)."""
        self.links.check_pair(src, dst)
        if src == dst:
            return 0.0
        return self.links.rtt_s(src, dst, at)

    def mean_rtt_s(self, src: int, dst: int, at: float = 0.0) -> float:
        """Mean RTT (s); the simulated one-way latency averages half of it."""
        if self._wireless and src != dst:
            self.links.check_pair(src, dst)
            return self.links.mean_rtt_s(src, dst, at)
        return self.rtt_s(src, dst, at)

    def expected_transfer_s(self, src: int, dst: int, nbytes: int, concurrent_flows: int = 1,
                            at: float = 0.0, include_wake: bool = False) -> float:
        """Expected duration of a transfer with ``concurrent_flows`` equal transfers running throughout.

        ``8 nbytes / goodput + mean RTT / 2 + E[losses] x retransmit_delay`` (+ ``wake_delay`` if
        ``include_wake``, for a receiver that has been idle past the power-save timeout). Trace:
        the exact integral of the trace from ``at``.
        """
        self.links.check_pair(src, dst)
        if src == dst:
            return 0.0
        if concurrent_flows < 1:
            raise ValueError("concurrent_flows must be >= 1")
        return self.links.expected_transfer_s(src, dst, nbytes, concurrent_flows, at, include_wake)

    def phy_rate_mbps(self, station: int) -> float | None:
        """PHY rate (Mb/s) of a phone's link to its AP (``None`` for the hotspot phone or non-Wi-Fi kinds)."""
        return self._phy_mbps[station]
