"""Event-driven fluid (processor-sharing) medium for simpy.

Active flows progress at rates that stay constant between *events*: a flow arriving, a flow
finishing, or a breakpoint of a time-varying capacity (a trace). At each event the medium advances
every flow by rate x elapsed time, asks a rate function for every active flow's byte rate and
sets a timer for the earliest completion or breakpoint. Completion times are therefore exact (up
to float rounding), not stepped.

The medium is driven by callbacks, not by a simpy process: :meth:`FluidMedium.submit` queues the
flow and schedules one zero-delay "kick" event for all flows submitted at the same simulated
time (they enter the medium together, with one rate computation), and the timer is a plain
scheduled event whose callback reacts only if it is still the current timer. A flow is itself a
simpy event: at its last byte the medium schedules it ``flow.delay`` later (its delivery).

The rate function also returns each flow's airtime share and each transmitter's airtime per
second, which the medium integrates into airtime accounting (``Flow.airtime`` and
``FluidMedium.tx_airtime``). The medium schedules its events through :mod:`llsim.kernel`'s fast paths (the body of
``Environment.schedule``): the kick and the timer run for every transfer.

simpy cannot cancel a scheduled event; a superseded timer simply fires unused. The rate functions
used by :mod:`llsim.network.wifi` never speed up a flow when another one arrives, so a superseded
timer never lies beyond the time the medium goes idle (it cannot stretch ``env.now`` at the end
of a run).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import simpy
from simpy.events import Event

from llsim.kernel import Deferred, fast_paths, ready_event

#: Relative tolerance on bytes left for deciding that a flow has finished.
REL_TOL = 1e-9
#: A flow whose remaining bytes take less than this many seconds is finished: float rounding can
#: leave a residue whose completion time is below the resolution of ``env.now`` (a timeout that
#: does not advance the clock), which would otherwise loop forever (Zeno).
EPS_T = 1e-12

_INF = float("inf")


class Flow(Deferred):
    """Bytes to push through the medium; a flow is also the simpy event of its delivery.

    The medium schedules the flow ``delay`` seconds after its last byte has been sent (a
    propagation or protocol latency; ``t_out`` records when the last byte went), so yielding it
    waits for the delivery; its callbacks run then. ``hops`` and ``meta`` are whatever the rate
    function needs (e.g. the transmitter ids and the hops' PHY rates); ``airtime`` integrates the
    flow's airtime share over time. ``alone`` (optional) is the flow's :class:`Rates` when it is
    the only active flow, if those never change (the medium then skips the rate function). The
    medium uses only these attributes and ``size``, ``remaining``, so a subclass may set them
    without calling ``__init__`` (:mod:`llsim.network.wifi`'s transfers do).
    """

    __slots__ = ("size", "hops", "remaining", "airtime", "meta", "delay", "alone", "t_out")

    def __init__(self, env: simpy.Environment, size: float, hops: tuple = (), meta: object = None,
                 delay: float = 0.0, alone: Optional["Rates"] = None):
        super().__init__(env)
        self.size = size
        self.hops = hops
        self.remaining = float(size)
        self.airtime = 0.0
        self.meta = meta
        self.delay = delay
        self.alone = alone
        self.t_out: float | None = None

    def __repr__(self) -> str:
        return f"Flow(size={self.size!r}, hops={self.hops!r}, remaining={self.remaining!r})"


class Rates(NamedTuple):
    """Rates of a set of active flows between two events.

    ``bytes_per_s`` and ``share`` (the fraction of the medium's time each flow occupies, its airtime
    share) are per flow, in the order of the flows; ``tx_airtime`` is the medium's airtime per
    second of each transmitter, summed over the flows: ``(transmitter id, seconds per second)``.
    Rate functions may return the same object for the same set of flows (a cache): the medium
    never modifies it.
    """

    bytes_per_s: Sequence[float]
    share: Sequence[float]
    tx_airtime: Sequence[tuple[object, float]] = ()

    @classmethod
    def of(cls, per_flow: Sequence[tuple]) -> "Rates":
        """From one ``(bytes_per_s, share, tx_split)`` per flow, ``tx_split`` being
        ``(transmitter id, fraction of the flow's share)`` pairs."""
        air: dict = {}
        for _, share, split in per_flow:
            for tx, frac in split:
                air[tx] = air.get(tx, 0.0) + share * frac
        return cls(tuple(r[0] for r in per_flow), tuple(r[1] for r in per_flow), tuple(air.items()))


RateFn = Callable[[Sequence[Flow], float], Rates]


class FluidMedium:
    """A processor-sharing medium driven by ``rate_fn(flows, now)``, which returns the flows'
    :class:`Rates`."""

    def __init__(self, env: simpy.Environment, rate_fn: RateFn, breakpoint_fn: Callable[[float], float] | None = None):
        self.env = env
        self.rate_fn = rate_fn
        self.breakpoint_fn = breakpoint_fn
        #: transmitter id -> airtime (s) it spent transmitting, integrated at every event
        self.tx_airtime: dict[object, float] = {}
        self.flows: list[Flow] = []
        self._rates: Rates | None = None  # of self.flows, valid since self._t0
        self._t0 = env.now
        self._pending: list[Flow] = []
        # the kick: one event, re-armed for each instant that has new flows (never two in the queue)
        self._kick = ready_event(env)
        self._fp = fast_paths(env)
        self._kicked = False
        self._timer: Event | None = None
        # the callbacks of the kick and of every timer: one shared tuple (simpy only iterates over an
        # event's callbacks when it processes it; nothing else waits on these events)
        self._callbacks = (self._react,)

    def submit(self, flow: Flow) -> None:
        """Start ``flow`` now; yield the flow to wait for its delivery. (An empty flow goes through
        the medium too: it finishes at its first reaction, at once.)"""
        self._pending.append(flow)
        if not self._kicked:  # _react now, after the other callbacks of this instant (env.schedule inlined)
            self._kicked = True
            self._fp.schedule_now(self._kick, self._callbacks)

    # -------------------------------------------------------------------- reactions
    def _react(self, ev: Event) -> None:
        """Callback of the kick and of the timer: advance every flow to now, finish the completed
        ones, admit the pending ones and set the timer for the next completion or breakpoint. A
        superseded timer does nothing."""
        if ev is self._timer:
            self._timer = None
        elif ev is self._kick:
            self._kicked = False
            if not self._pending:  # a timer at the same instant has already admitted them
                return
        else:
            return
        now = self.env.now
        while True:
            flows = self.flows
            if flows:
                rates = self._rates
                elapsed = now - self._t0
                if elapsed > 0:
                    air = self.tx_airtime
                    for tx, a in rates.tx_airtime:
                        air[tx] = air.get(tx, 0.0) + a * elapsed
                if len(flows) == 1:  # the common case, unrolled: a transfer alone on the air
                    flow = flows[0]
                    rate = rates.bytes_per_s[0]
                    if elapsed > 0:
                        flow.remaining = rem = flow.remaining - rate * elapsed
                        flow.airtime += rates.share[0] * elapsed
                    else:
                        rem = flow.remaining
                    finished = (flow,) if rem <= REL_TOL * flow.size or rem <= EPS_T * rate else None
                elif elapsed > 0:  # (two loops: the test of elapsed is not made per flow)
                    finished = None
                    for flow, rate, share in zip(flows, rates.bytes_per_s, rates.share):
                        flow.remaining = rem = flow.remaining - rate * elapsed
                        flow.airtime += share * elapsed
                        # done: bytes left within the relative tolerance, or left for less than EPS_T
                        if rem <= REL_TOL * flow.size or rem <= EPS_T * rate:
                            if finished is None:
                                finished = [flow]
                            else:
                                finished.append(flow)
                else:
                    finished = None
                    for flow, rate in zip(flows, rates.bytes_per_s):
                        rem = flow.remaining
                        if rem <= REL_TOL * flow.size or rem <= EPS_T * rate:
                            if finished is None:
                                finished = [flow]
                            else:
                                finished.append(flow)
                if finished is not None:
                    if len(finished) == len(flows):
                        self.flows = flows = []
                    else:
                        self.flows = flows = [f for f in flows if f not in finished]
                    succeed_at = self._fp.succeed_at
                    for flow in finished:  # delivered flow.delay after its last byte
                        flow.remaining = 0.0
                        flow.t_out = now
                        succeed_at(flow, now + flow.delay)
            pending = self._pending
            if pending:
                flows.extend(pending)
                pending.clear()
            self._t0 = now
            if not flows:
                self._rates = None
                self._timer = None
                return
            if len(flows) == 1:
                flow = flows[0]
                rates = flow.alone
                if rates is None:
                    rates = self.rate_fn(flows, now)
                self._rates = rates
                rate = rates.bytes_per_s[0]
                dt = flow.remaining / rate if rate > 0 else _INF
            else:
                self._rates = rates = self.rate_fn(flows, now)
                dt = _INF
                for flow, rate in zip(flows, rates.bytes_per_s):
                    if rate > 0:
                        d = flow.remaining / rate
                        if d < dt:
                            dt = d
            if self.breakpoint_fn is not None:
                dt = min(dt, max(self.breakpoint_fn(now) - now, 0.0))
            if dt == _INF:
                self._timer = None  # nothing progresses: wait for a submission
                return
            if dt > EPS_T:  # the timer: a new bare event (Event(env) and env.schedule inlined)
                self._timer = self._fp.timer_at(now + dt, self._callbacks)
                return
            # a completion or breakpoint below the clock's resolution: react again at once
