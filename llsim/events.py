"""Event kinds of a scenario's ``events``: what happens to the cluster during a run.

One class per kind is the whole kind: its schema (a pydantic model whose ``kind`` field is a
``Literal`` tag) and what it does (:meth:`EventKind.start`, called once when the simulation is set
up). :func:`register_event_kind` adds a kind to :data:`EVENT_KINDS`; the scenario schema's
``events`` union (:data:`llsim.scenario.DynamicsEvent`) is built from that registry, so a new kind is
one class here (or anywhere, registered before its scenario is loaded) and nothing else.

Handlers act on the simulation through its public API only: ``sim.env`` (simpy's public calls),
``sim.nodes[d]`` (:class:`~llsim.sim.node.SimulatedPhone`'s dynamics methods), ``sim.net``,
``sim.mark``, ``sim.leave``, ``sim.done``, ``sim.dyn_rng`` (the dynamics' random stream: draw from
it only in a fixed order) and ``sim.devices``.
"""
from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from llsim.errors import LLSimError


class EventKind(BaseModel):
    """Base of every event kind: its schema's fields, and :meth:`start`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # every number finite (as the scenario's)

    kind_name: ClassVar[str]

    def start(self, sim, where: str) -> None:
        """Set the event up in simulation ``sim`` (``where`` names it in error messages)."""
        raise NotImplementedError


#: kind tag -> its class, in registration order (the order the schema's error messages list them)
EVENT_KINDS: dict[str, type[EventKind]] = {}


def register_event_kind(cls: type[EventKind]) -> type[EventKind]:
    """Add an event kind (a class decorator). Its ``kind`` field must be a one-value ``Literal``."""
    (tag,) = cls.model_fields["kind"].annotation.__args__
    if tag in EVENT_KINDS and EVENT_KINDS[tag] is not cls:
        raise ValueError(f"event kind {tag!r} is already registered")
    cls.kind_name = tag
    EVENT_KINDS[tag] = cls
    import sys

    scenario = sys.modules.get("llsim.scenario")
    if scenario is not None and hasattr(scenario, "rebuild_events_schema"):
        scenario.rebuild_events_schema()  # a kind added after the schema was built
    return cls


def unregister_event_kind(tag: str) -> None:
    """Remove a kind (tests that add a toy one)."""
    del EVENT_KINDS[tag]
    import sys

    scenario = sys.modules.get("llsim.scenario")
    if scenario is not None:
        scenario.rebuild_events_schema()


def events_union():
    """The ``events`` items' type: the registered kinds, told apart by ``kind``."""
    return Annotated[Union[tuple(EVENT_KINDS.values())], Field(discriminator="kind")]


def device_index(sim, ref, where: str) -> int:
    names = {d.name: d.index for d in sim.devices}
    if isinstance(ref, int) and 0 <= ref < len(sim.devices):
        return ref
    if isinstance(ref, str) and ref in names:
        return names[ref]
    raise LLSimError(f"{where}: no device {ref!r}; use an index 0..{len(sim.devices) - 1} or one of "
                     f"{', '.join(names)}")


def device_indices(sim, refs, where: str) -> list[int]:
    return list(range(len(sim.devices))) if refs is None else [device_index(sim, r, where) for r in refs]


# ---- kinds that happen to one device at a time ``at`` ------------------------------------------------
class _Event(EventKind):
    at: float = Field(ge=0, le=1e9)  # seconds of simulated time
    device: int | str  # index into the expanded device list, or its name

    def start(self, sim, where: str) -> None:
        d = device_index(sim, self.device, where)
        sim.env.process(self._run(sim, d))

    def _run(self, sim, d: int):
        yield sim.env.timeout(self.at)
        then = self.act(sim, d)
        if then is not None:  # a generator: what follows (e.g. the end of a limited-time change)
            yield from then

    def act(self, sim, d: int):
        """What happens to device ``d`` at ``at``; may be a generator (it then goes on in simulated time)."""
        raise NotImplementedError


@register_event_kind
class ThrottleEvent(_Event):
    """The phone runs at ``factor`` x its speed (thermal throttling) from ``at``, for ``duration_s``
    (None: until the end or a later throttle event)."""

    kind: Literal["throttle"]
    factor: float = Field(gt=0, le=4)
    duration_s: float | None = Field(None, gt=0, le=1e9)

    def act(self, sim, d: int):
        sim.nodes[d].set_throttle(self.factor)
        sim.mark(f"throttle x{self.factor:g}", d)
        if self.duration_s:
            return self._end(sim, d)
        return None

    def _end(self, sim, d: int):
        yield sim.env.timeout(self.duration_s)
        sim.nodes[d].set_throttle(1.0)
        sim.mark("throttle ends", d)


@register_event_kind
class BackgroundEvent(_Event):
    """Another app takes ``share`` of the phone's cores for ``duration_s``: segments run at
    ``1 - share`` of their speed meanwhile."""

    kind: Literal["background"]
    share: float = Field(gt=0, lt=1)
    duration_s: float = Field(gt=0, le=1e9)

    def act(self, sim, d: int):
        node = sim.nodes[d]
        node.add_background(self.share)
        sim.mark(f"background load {self.share:.0%}", d)
        yield sim.env.timeout(self.duration_s)
        node.remove_background(self.share)
        sim.mark("background load ends", d)


@register_event_kind
class RssiEvent(_Event):
    """The phone's signal changes to ``rssi_dbm`` (it walked away, a door closed). Below the
    weakest MCS's sensitivity the phone is out of range: it leaves."""

    kind: Literal["rssi"]
    rssi_dbm: float = Field(ge=-120, le=0)

    def act(self, sim, d: int):
        try:
            sim.net.set_rssi(d, self.rssi_dbm)
            sim.mark(f"RSSI {self.rssi_dbm:g} dBm", d)
        except LLSimError:
            sim.leave(d, f"out of range at {self.rssi_dbm:g} dBm")


@register_event_kind
class LeaveEvent(_Event):
    """The phone disappears without notice (crash, low-memory kill, out of range)."""

    kind: Literal["leave"]
    reason: str = "crash"

    def act(self, sim, d: int):
        sim.leave(d, self.reason)


@register_event_kind
class JoinEvent(_Event):
    """The phone (re)appears: it starts answering heartbeats and can be given work."""

    kind: Literal["join"]

    def act(self, sim, d: int):
        if sim.nodes[d].rejoin():
            sim.mark("join", d)


# ---- kinds over a set of devices (all if ``devices`` is None) -------------------------------------------
@register_event_kind
class BurstsEvent(EventKind):
    """Random background-load bursts: a Poisson process of ``rate_per_s`` on each listed phone
    (all if None) between ``start_s`` and ``end_s``; each burst takes ``share`` of the cores for
    an exponential time of mean ``mean_duration_s``. Seeded by the scenario's seed."""

    kind: Literal["background_bursts"]
    devices: list[int | str] | None = None
    rate_per_s: float = Field(gt=0, le=1e3)
    share: float = Field(gt=0, lt=1)
    mean_duration_s: float = Field(gt=0, le=1e9)
    start_s: float = Field(0.0, ge=0, le=1e9)
    end_s: float | None = Field(None, gt=0, le=1e9)

    def start(self, sim, where: str) -> None:
        for d in device_indices(sim, self.devices, where):
            sim.env.process(self._bursts(sim, d))

    def _bursts(self, sim, d: int):
        env, node, rng = sim.env, sim.nodes[d], sim.dyn_rng
        t = self.start_s
        while True:
            t += float(rng.exponential(1.0 / self.rate_per_s))
            if self.end_s is not None and t > self.end_s:
                return
            length = float(rng.exponential(self.mean_duration_s))
            if t > env.now:
                yield env.timeout(t - env.now)
            if sim.done.triggered:
                return
            node.add_background(self.share)
            sim.mark(f"background burst {self.share:.0%} for {length:.1f}s", d)
            env.process(_burst_end(sim, d, self.share, length))


def _burst_end(sim, d, share, length):
    yield sim.env.timeout(length)
    sim.nodes[d].remove_background(share)


@register_event_kind
class ThermalEvent(EventKind):
    """Sustained-load throttling from each listed phone's profile (``thermal``): after
    ``time_to_throttle_s`` of cumulative busy time (minus idle time, which cools it) the phone runs
    at ``sustained_speed``; it recovers when it has cooled to half that heat."""

    kind: Literal["thermal"]
    devices: list[int | str] | None = None

    def start(self, sim, where: str) -> None:
        for d in device_indices(sim, self.devices, where):
            th = sim.devices[d].profile.thermal
            sim.nodes[d].enable_thermal(th.time_to_throttle_s, th.sustained_speed / th.peak_speed)


@register_event_kind
class NoiseEvent(EventKind):
    """Run-to-run jitter of segment times: each execution takes ``lognormal(0, sigma)`` x its
    time (a noisy but stable phone: no sustained slowdown)."""

    kind: Literal["noise"]
    devices: list[int | str] | None = None
    sigma: float = Field(gt=0, le=1)

    def start(self, sim, where: str) -> None:
        for d in device_indices(sim, self.devices, where):
            sim.nodes[d].set_noise(self.sigma)
