"""Event-driven fluid (processor-sharing) medium for simpy.

Active flows progress at rates that stay constant between *events*: a flow arriving, a flow
finishing, or a breakpoint of a time-varying capacity (a trace). At each event the medium advances
every flow by rate x elapsed time, asks a rate function for every active flow's byte rate and
sets a timer for the earliest completion or breakpoint. Completion times are therefore exact (up
to float rounding), not stepped.

The medium is driven by callbacks, not by a simpy process: :meth:`FluidMedium.submit` queues the
flow and schedules one zero-delay "kick" event for all flows submitted at the same simulated
time (they enter the medium together, with one rate computation), and the timer is a plain
scheduled event whose callback reacts only if it is still the current timer. A finished flow's
``callback(flow)`` is called directly at its completion (or, without a callback, its ``done``
event is succeeded).

The rate function also returns, per flow, its airtime share and how that share splits over the
flow's transmitters, which the medium integrates into airtime accounting (``tx_airtime``, and
``on_airtime(tx, seconds)`` if given).

simpy cannot cancel a scheduled event; a superseded timer simply fires unused. The rate functions
used by :mod:`llsim.network.wifi` never speed up a flow when another one arrives, so a superseded
timer never lies beyond the time the medium goes idle (it cannot stretch ``env.now`` at the end
of a run).
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import simpy
from simpy.events import NORMAL, Event

#: Relative tolerance on bytes left for deciding that a flow has finished.
REL_TOL = 1e-9
#: A flow whose remaining bytes take less than this many seconds is finished: float rounding can
#: leave a residue whose completion time is below the resolution of ``env.now`` (a timeout that
#: does not advance the clock), which would otherwise loop forever (Zeno).
EPS_T = 1e-12

_INF = float("inf")


class Flow:
    """Bytes to push through the medium. ``hops`` lists the transmitter id of each hop.

    ``callback(flow)`` (optional) is called when the last byte has been sent; ``meta`` is whatever
    the rate function needs (e.g. the hops' PHY rates); ``airtime`` integrates the flow's airtime
    share over time. The medium uses only these attributes and ``remaining``, so any object that
    has them (with a ``callback``) can be submitted (:mod:`llsim.network.wifi`'s transfer events are
    their own flows).
    """

    __slots__ = ("size", "hops", "remaining", "airtime", "done", "meta", "callback")

    def __init__(self, size: float, hops: tuple = (), meta: object = None,
                 callback: Optional[Callable[["Flow"], None]] = None):
        self.size = size
        self.hops = hops
        self.remaining = float(size)
        self.airtime = 0.0
        self.done: Optional[simpy.Event] = None
        self.meta = meta
        self.callback = callback

    def __repr__(self) -> str:
        return f"Flow(size={self.size!r}, hops={self.hops!r}, remaining={self.remaining!r})"


class RateInfo(NamedTuple):
    """Rate of one flow between two events (a rate function may return plain 3-tuples)."""

    bytes_per_s: float
    share: float  # fraction of the medium's time the flow occupies (airtime share)
    tx_split: Sequence[tuple[object, float]] = ()  # (transmitter id, fraction of the share)


RateFn = Callable[[Sequence[Flow], float], Sequence[tuple]]


class FluidMedium:
    """A processor-sharing medium driven by ``rate_fn(flows, now)``.

    ``rate_fn`` returns one ``(bytes_per_s, share, tx_split)`` tuple (or :class:`RateInfo`) per
    flow, in the order of ``flows``.
    """

    def __init__(self, env: simpy.Environment, rate_fn: RateFn, breakpoint_fn: Callable[[float], float] | None = None,
                 on_airtime: Callable[[object, float], None] | None = None):
        self.env = env
        self.rate_fn = rate_fn
        self.breakpoint_fn = breakpoint_fn
        self.on_airtime = on_airtime
        #: transmitter id -> airtime (s) it spent transmitting, integrated at every event
        self.tx_airtime: dict[object, float] = {}
        self.flows: list[Flow] = []
        self._rates: Sequence[tuple] = ()  # parallel to self.flows, valid since self._t0
        self._t0 = env.now
        self._pending: list[Flow] = []
        self._kick: Event | None = None
        self._timer: Event | None = None

    def submit(self, flow: Flow) -> simpy.Event | None:
        """Start ``flow`` now. Without a ``flow.callback``, returns an event that fires when its last
        byte has been sent (value: the flow); with one, the callback is called then and ``None``
        is returned."""
        done = None
        if flow.callback is None:
            flow.done = done = Event(self.env)
        if flow.remaining <= 0:
            self._finish(flow)
            return done
        self._pending.append(flow)
        if self._kick is None:
            self._kick = ev = Event(self.env)
            ev._ok = True
            ev._value = None
            ev.callbacks.append(self._on_kick)
            self.env.schedule(ev)
        return done

    @staticmethod
    def _finish(flow: Flow) -> None:
        if flow.callback is not None:
            flow.callback(flow)
        else:
            flow.done.succeed(flow)

    # -------------------------------------------------------------------- reactions
    def _on_kick(self, ev: Event) -> None:
        if ev is self._kick:
            self._kick = None
        if self._pending:
            self._react()

    def _on_timer(self, ev: Event) -> None:
        if ev is self._timer:
            self._timer = None
            self._react()

    def _react(self) -> None:
        """Advance every flow to now, finish the completed ones, admit the pending ones and set the
        timer for the next completion or breakpoint."""
        env = self.env
        now = env.now
        air = self.tx_airtime
        on_airtime = self.on_airtime
        while True:
            flows = self.flows
            if flows:
                elapsed = now - self._t0
                finished = None
                for flow, (rate, share, split) in zip(flows, self._rates):
                    if elapsed > 0:
                        flow.remaining -= rate * elapsed
                        busy = share * elapsed
                        flow.airtime += busy
                        for tx, frac in split:
                            a = busy * frac
                            air[tx] = air.get(tx, 0.0) + a
                            if on_airtime is not None:
                                on_airtime(tx, a)
                    rem = flow.remaining
                    if rem <= REL_TOL * flow.size or (rate > 0 and rem / rate <= EPS_T):
                        if finished is None:
                            finished = [flow]
                        else:
                            finished.append(flow)
                if finished is not None:
                    if len(finished) == len(flows):
                        self.flows = flows = []
                    else:
                        self.flows = flows = [f for f in flows if f not in finished]
                    for flow in finished:
                        flow.remaining = 0.0
                        cb = flow.callback
                        if cb is not None:
                            cb(flow)
                        else:
                            flow.done.succeed(flow)
            if self._pending:
                flows.extend(self._pending)
                self._pending.clear()
            self._t0 = now
            if not flows:
                self._rates = ()
                self._timer = None
                return
            self._rates = infos = self.rate_fn(flows, now)
            dt = _INF
            for flow, info in zip(flows, infos):
                rate = info[0]
                if rate > 0:
                    d = flow.remaining / rate
                    if d < dt:
                        dt = d
            if self.breakpoint_fn is not None:
                dt = min(dt, max(self.breakpoint_fn(now) - now, 0.0))
            if dt == _INF:
                self._timer = None  # nothing progresses: wait for a submission
                return
            if dt > EPS_T:
                self._timer = ev = Event(env)
                ev._ok = True
                ev._value = None
                ev.callbacks.append(self._on_timer)
                env.schedule(ev, NORMAL, dt)
                return
            # a completion or breakpoint below the clock's resolution: react again at once
