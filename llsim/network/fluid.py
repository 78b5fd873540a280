"""Event-driven fluid (processor-sharing) medium for simpy.

Active flows progress at rates that stay constant between *events*: a flow arriving, a flow
finishing, or a breakpoint of a time-varying capacity (a trace). One simpy process owns the
medium: it asks a rate function for every active flow's byte rate, sleeps until the earliest
completion or breakpoint, or until :meth:`FluidMedium.submit` wakes it, then advances every flow
by rate x elapsed time. Completion times are therefore exact (up to float rounding), not stepped.

The rate function also returns, per flow, its airtime share and how that share splits over the
flow's transmitters, which the medium integrates into airtime accounting.

simpy cannot cancel a timeout; a superseded one simply fires unused. The rate functions used by
:mod:`llsim.network.wifi` never speed up a flow when another one arrives, so a superseded
timeout never lies beyond the time the medium goes idle (it cannot stretch ``env.now`` at the end
of a run).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import simpy

#: Relative tolerance on bytes left for deciding that a flow has finished.
REL_TOL = 1e-9
#: A flow whose remaining bytes take less than this many seconds is finished: float rounding can
#: leave a residue whose completion time is below the resolution of ``env.now`` (a timeout that
#: does not advance the clock), which would otherwise loop forever (Zeno).
EPS_T = 1e-12


@dataclass(eq=False)
class Flow:
    """Bytes to push through the medium. ``hops`` lists the transmitter id of each hop."""

    size: float
    hops: tuple = ()
    remaining: float = field(init=False)
    airtime: float = 0.0  # integral of the flow's airtime share over time
    done: Optional[simpy.Event] = None
    tx_airtime: dict = field(default_factory=dict)  # transmitter id -> airtime
    meta: object = None  # whatever the rate function needs (e.g. the hops' PHY rates)

    def __post_init__(self) -> None:
        self.remaining = float(self.size)


@dataclass(frozen=True)
class RateInfo:
    """Rate of one flow between two events."""

    bytes_per_s: float
    share: float  # fraction of the medium's time the flow occupies (airtime share)
    tx_split: Sequence[tuple[object, float]] = ()  # (transmitter id, fraction of the share)


RateFn = Callable[[Sequence[Flow], float], Sequence[RateInfo]]


class FluidMedium:
    """A processor-sharing medium driven by ``rate_fn(flows, now)``."""

    def __init__(self, env: simpy.Environment, rate_fn: RateFn, breakpoint_fn: Callable[[float], float] | None = None,
                 on_airtime: Callable[[object, float], None] | None = None):
        self.env = env
        self.rate_fn = rate_fn
        self.breakpoint_fn = breakpoint_fn
        self.on_airtime = on_airtime
        self.flows: list[Flow] = []
        self._pending: list[Flow] = []
        self._wake: simpy.Event | None = None
        self.process = env.process(self._run())

    def submit(self, flow: Flow) -> simpy.Event:
        """Start ``flow`` now; the returned event fires when its last byte has been sent."""
        flow.done = self.env.event()
        if flow.remaining <= 0:
            flow.done.succeed(flow)
            return flow.done
        self._pending.append(flow)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        return flow.done

    def _run(self):
        env = self.env
        while True:
            if self._pending:
                self.flows.extend(self._pending)
                self._pending.clear()
            if not self.flows:
                self._wake = env.event()
                yield self._wake
                continue
            t0 = env.now
            infos = self.rate_fn(self.flows, t0)
            dt = math.inf
            for flow, info in zip(self.flows, infos):
                if info.bytes_per_s > 0:
                    dt = min(dt, flow.remaining / info.bytes_per_s)
            if self.breakpoint_fn is not None:
                dt = min(dt, max(self.breakpoint_fn(t0) - t0, 0.0))
            self._wake = env.event()
            if math.isinf(dt):
                yield self._wake
            elif dt > EPS_T:
                yield env.any_of([env.timeout(dt), self._wake])
            elapsed = env.now - t0
            finished = []
            for flow, info in zip(self.flows, infos):
                if elapsed > 0:
                    flow.remaining -= info.bytes_per_s * elapsed
                    busy = info.share * elapsed
                    flow.airtime += busy
                    for tx, frac in info.tx_split:
                        flow.tx_airtime[tx] = flow.tx_airtime.get(tx, 0.0) + busy * frac
                        if self.on_airtime is not None:
                            self.on_airtime(tx, busy * frac)
                if flow.remaining <= REL_TOL * flow.size or (
                        info.bytes_per_s > 0 and flow.remaining / info.bytes_per_s <= EPS_T):
                    finished.append(flow)
            if finished:
                self.flows = [f for f in self.flows if f not in finished]
                for flow in finished:
                    flow.remaining = 0.0
                    flow.done.succeed(flow)
