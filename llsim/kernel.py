"""The clock kernel: the only module that knows simpy's internals.

Everything else in llsim schedules and waits through simpy's public API (``env.timeout``,
``env.event``, ``env.process``, ``simpy.AllOf``, yielding events) or through the helpers below.
The helpers exist for speed: the simulator's innermost paths (a stage's compute, the fluid
medium's timers and deliveries, a transfer's event, the phone lock's hand-over and the event loop
itself) build and schedule events without going through ``Event.__init__``, ``Timeout.__init__``
and ``Environment.schedule``/``step`` (measured: ``llsim bench simulator_speed``, ratio 0.17 ->
0.26 of an empty simpy timeout loop). Each helper is exactly the body of the simpy code it
replaces, so a run schedules the same events in the same order as with simpy's own calls
(``tests/test_sim.py::test_inlined_event_loop_matches_simpy_step`` checks the loop against
``Environment.step``).

The clock interface
-------------------
A :class:`Clock` is what the engine runs on: ``now``, ``timeout(delay)``, ``event()``,
``schedule_now(event)`` (an already-succeeded event processed at the current time, after the
events already due now), ``process(generator)`` and ``run_until(done, limit, max_t)`` (process up
to ``limit`` events, stopping when ``done`` has fired, when the next event is later than ``max_t``
or when none is left). :class:`VirtualClock` is today's only implementation: simulated time,
which jumps from one event to the next.

:class:`RealtimeClock` (hardware in the loop, ``hil.clock: realtime``) paces simulated seconds to
wall-clock seconds: before processing the next event of the queue it waits until its time has
come *or* an outside completion arrives, whichever is first (a ``queue.SimpleQueue`` of
``(event, value)`` pairs that worker threads fill with ``deliver(event, value)``, thread-safe, e.g.
from a :class:`~llsim.hil.client.StageFuture`'s callback); the loop moves simulated time up to the
wall clock, succeeds the event there and goes on. Nothing else changes: an engine node returns an
event from ``run`` and yields it, whichever clock fires it. The helpers below stay valid for it
since they only append to the same heap the loop pops from.
"""
from __future__ import annotations

from heapq import heappop, heappush
from operator import attrgetter
from typing import Callable, Generator, Iterable

import simpy
from simpy.events import NORMAL, PENDING, Event

__all__ = ["Clock", "VirtualClock", "FastPaths", "fast_paths", "timeout_now", "call_later", "new_pending",
           "ready_event", "schedule_now", "succeed_at", "succeed_now", "succeed_with", "set_value", "timer_at",
           "now", "advance", "RealtimeClock"]

INF = float("inf")
_new = object.__new__


# ---- fast paths (each the inlined body of the simpy call named in its docstring) -------------------
def timeout_now(env: simpy.Environment, delay: float) -> Event:
    """``env.timeout(delay)`` (``Timeout.__init__`` and ``Environment.schedule`` inlined): a bare
    event with a fresh callbacks list, processed ``delay`` from now."""
    tm = _new(Event)
    tm.env = env
    tm.callbacks = []
    tm._ok = True
    tm._value = None
    heappush(env._queue, (env._now + delay, NORMAL, next(env._eid), tm))
    return tm


def timer_at(env: simpy.Environment, t: float, callbacks) -> Event:
    """A bare event processed at absolute time ``t`` with the given callbacks (which may be a shared
    tuple: simpy only iterates over an event's callbacks when it processes it)."""
    timer = _new(Event)
    timer.env = env
    timer.callbacks = callbacks
    timer._ok = True
    timer._value = None
    heappush(env._queue, (t, NORMAL, next(env._eid), timer))
    return timer


def call_later(env: simpy.Environment, delay: float, fn: Callable[[Event], None]) -> Event:
    """An event processed ``delay`` from now whose one callback is ``fn`` (``Event(env)``,
    ``succeed`` without scheduling, ``env.schedule(t, NORMAL, delay)``)."""
    t = Event(env)
    t._ok = True
    t._value = None
    t.callbacks.append(fn)
    env.schedule(t, NORMAL, delay)
    return t


def new_pending(cls: type, env: simpy.Environment):
    """An untriggered instance of the event subclass ``cls`` without calling its ``__init__``
    (``Event.__init__``'s fields but ``callbacks``, which the caller sets)."""
    ev = _new(cls)
    ev.env = env
    ev._value = PENDING
    return ev


def ready_event(env: simpy.Environment) -> Event:
    """An event that has succeeded with value ``None`` but is not scheduled (re-armed with
    :func:`schedule_now`)."""
    ev = Event(env)
    ev._ok = True
    ev._value = None
    return ev


def schedule_now(env: simpy.Environment, ev: Event, callbacks) -> None:
    """Schedule the succeeded event ``ev`` at the current time with ``callbacks`` (``env.schedule``
    inlined)."""
    ev.callbacks = callbacks
    heappush(env._queue, (env._now, NORMAL, next(env._eid), ev))


def succeed_now(env: simpy.Environment, ev: Event) -> None:
    """``ev.succeed()`` (value ``None``) inlined."""
    ev._ok = True
    ev._value = None
    heappush(env._queue, (env._now, NORMAL, next(env._eid), ev))


def succeed_at(env: simpy.Environment, ev: Event, t: float) -> None:
    """Succeed ``ev`` with value ``None`` and schedule it at absolute time ``t``."""
    ev._ok = True
    ev._value = None
    heappush(env._queue, (t, NORMAL, next(env._eid), ev))


def succeed_with(env: simpy.Environment, ev: Event, value) -> None:
    """Succeed an event made by :func:`new_pending` with ``value`` and a fresh callbacks list, now
    (``env.schedule``)."""
    ev.callbacks = []
    ev._ok = True
    ev._value = value
    env.schedule(ev)


def set_value(ev: Event, value) -> None:
    """Set the value of an event being processed (from its first callback)."""
    ev._value = value


class FastPaths:
    """The fast paths above bound to one environment: its queue, event counter and the helpers'
    globals are closure cells and default arguments, so a call costs about what the inlined code
    did (a module-level helper adds its lookups of ``env._queue``/``env._eid`` and globals to every
    call: measured +7% on ``speed-bloom-1b1``). Get one per component with :func:`fast_paths`."""

    __slots__ = ("timeout_now", "timer_at", "new_pending", "schedule_now", "succeed_now", "succeed_at")


def fast_paths(env: simpy.Environment) -> FastPaths:
    """:class:`FastPaths` of ``env`` (simpy never replaces an environment's queue or counter)."""
    queue, eid = env._queue, env._eid
    fp = FastPaths()

    def timeout_now_(delay, _new=_new, Event=Event, heappush=heappush, NORMAL=NORMAL, next=next):
        tm = _new(Event)
        tm.env = env
        tm.callbacks = []
        tm._ok = True
        tm._value = None
        heappush(queue, (env._now + delay, NORMAL, next(eid), tm))
        return tm

    def timer_at_(t, callbacks, _new=_new, Event=Event, heappush=heappush, NORMAL=NORMAL, next=next):
        timer = _new(Event)
        timer.env = env
        timer.callbacks = callbacks
        timer._ok = True
        timer._value = None
        heappush(queue, (t, NORMAL, next(eid), timer))
        return timer

    def new_pending_(cls, _new=_new, PENDING=PENDING):
        ev = _new(cls)
        ev.env = env
        ev._value = PENDING
        return ev

    def schedule_now_(ev, callbacks, heappush=heappush, NORMAL=NORMAL, next=next):
        ev.callbacks = callbacks
        heappush(queue, (env._now, NORMAL, next(eid), ev))

    def succeed_now_(ev, heappush=heappush, NORMAL=NORMAL, next=next):
        ev._ok = True
        ev._value = None
        heappush(queue, (env._now, NORMAL, next(eid), ev))

    def succeed_at_(ev, t, heappush=heappush, NORMAL=NORMAL, next=next):
        ev._ok = True
        ev._value = None
        heappush(queue, (t, NORMAL, next(eid), ev))

    fp.timeout_now, fp.timer_at, fp.new_pending = timeout_now_, timer_at_, new_pending_
    fp.schedule_now, fp.succeed_now, fp.succeed_at = schedule_now_, succeed_now_, succeed_at_
    return fp


#: ``now(env)``: the environment's current time (``env.now`` without the property's Python call)
now = attrgetter("_now")


def advance(env: simpy.Environment, done: Event, limit: int, max_t: float) -> tuple[int, str | None]:
    """Process up to ``limit`` events; returns how many were processed and why it stopped early
    (``None``: it did not). Each event is processed as ``Environment.step`` does (its body,
    inlined: it is the innermost loop of every run): pop the earliest, advance the clock, run
    its callbacks, and fail the run on a failed event nobody handled. It stops before an event
    later than ``max_t`` (left in the queue; reason ``"max_sim_s"``), when ``done`` has fired
    (``"completed"``), or when no event is left (``"deadlock"`` if ``max_t`` is infinite, else
    ``"stalled"``)."""
    queue = env._queue
    for n in range(limit):
        if done._value is not PENDING:
            return n, "completed"
        try:
            item = heappop(queue)
        except IndexError:
            return n, "deadlock" if max_t == INF else "stalled"
        t = item[0]
        if t > max_t:
            heappush(queue, item)
            return n, "max_sim_s"
        env._now = t
        event = item[3]
        callbacks, event.callbacks = event.callbacks, None
        for callback in callbacks:
            callback(event)
        if not event._ok and not hasattr(event, "_defused"):
            exc = type(event._value)(*event._value.args)  # as Environment.step
            exc.__cause__ = event._value
            raise exc
    return limit, None


# ---- the clock interface --------------------------------------------------------------------------
class Clock:
    """What the engine runs on (see the module docstring). ``env`` is the simpy environment the
    events belong to: processes, the network and the nodes schedule on it."""

    env: simpy.Environment

    @property
    def now(self) -> float:
        raise NotImplementedError

    def timeout(self, delay: float) -> Event:
        raise NotImplementedError

    def event(self) -> Event:
        raise NotImplementedError

    def schedule_now(self, ev: Event) -> None:
        raise NotImplementedError

    def process(self, gen: Generator) -> simpy.Process:
        raise NotImplementedError

    def all_of(self, events: Iterable[Event]) -> Event:
        raise NotImplementedError

    def run_until(self, done: Event, limit: int, max_t: float) -> tuple[int, str | None]:
        raise NotImplementedError


class VirtualClock(Clock):
    """Simulated time on a :class:`simpy.Environment`: the clock jumps to the next event."""

    def __init__(self, env: simpy.Environment | None = None):
        self.env = simpy.Environment() if env is None else env

    @property
    def now(self) -> float:
        return self.env._now

    def timeout(self, delay: float) -> Event:
        return self.env.timeout(delay)

    def event(self) -> Event:
        return self.env.event()

    def schedule_now(self, ev: Event) -> None:
        succeed_now(self.env, ev)

    def process(self, gen: Generator) -> simpy.Process:
        return self.env.process(gen)

    def all_of(self, events: Iterable[Event]) -> Event:
        return simpy.AllOf(self.env, list(events))

    def run_until(self, done: Event, limit: int, max_t: float) -> tuple[int, str | None]:
        return advance(self.env, done, limit, max_t)


class RealtimeClock(VirtualClock):
    """Simulated seconds paced to wall-clock seconds (hardware in the loop, ``hil.clock: realtime``).

    Before processing an event due at simulated time ``t`` the loop waits until ``t`` seconds of
    wall time have passed since the run began, *or* until an outside completion arrives, whichever
    comes first. Outside completions are events that another thread (a worker client's reader, via
    a future's callback) hands in with :meth:`deliver`; the loop then moves simulated time up to the
    wall clock (never past the next queued event) and succeeds the event there. An event processed
    later than its time (the loop was busy: an in-process segment, Python itself) counts as *lag*:
    :attr:`lag_max_s`, :attr:`lag_mean_s` (the run's metrics record them).

    :meth:`expect` makes the event an outside completion will succeed and counts it as outstanding:
    a run with no event left waits for those instead of ending."""

    def __init__(self, env: simpy.Environment | None = None):
        import queue as _queue

        super().__init__(env)
        self._inbox: _queue.SimpleQueue = _queue.SimpleQueue()
        self._empty = _queue.Empty
        self.outstanding = 0
        self.wall0: float | None = None
        self.lag_max_s = 0.0
        self._lag_sum = 0.0
        self._lag_n = 0

    @property
    def lag_mean_s(self) -> float:
        return self._lag_sum / self._lag_n if self._lag_n else 0.0

    def expect(self) -> Event:
        """An event that an outside thread will complete through :meth:`deliver`."""
        self.outstanding += 1
        return Event(self.env)

    def deliver(self, ev: Event, value=None) -> None:
        """Thread-safe: ``ev`` (from :meth:`expect`) completes with ``value`` as soon as the loop sees it."""
        self._inbox.put((ev, value))

    def _take(self, item) -> None:
        import time as _time

        ev, value = item
        self.outstanding -= 1
        env = self.env
        wall = _time.monotonic() - self.wall0
        if wall > env._now:  # simulated time catches up with the wall clock, never past the next event
            env._now = min(wall, env.peek())
        ev.succeed(value)

    def run_until(self, done: Event, limit: int, max_t: float) -> tuple[int, str | None]:
        import time as _time

        env = self.env
        if self.wall0 is None:
            self.wall0 = _time.monotonic() - env._now
        n = 0
        while n < limit:
            if done._value is not PENDING:
                return n, "completed"
            while True:  # completions that arrived meanwhile, first
                try:
                    self._take(self._inbox.get_nowait())
                except self._empty:
                    break
            t = env.peek()
            if t == INF and not self.outstanding:
                return n, "deadlock" if max_t == INF else "stalled"
            if t > max_t and not self.outstanding:
                return n, "max_sim_s"
            wait = (self.wall0 + t - _time.monotonic()) if t != INF else 0.5
            if wait > 0:
                try:
                    self._take(self._inbox.get(timeout=min(wait, 0.5)))
                except self._empty:
                    pass
                continue
            if t > max_t:
                return n, "max_sim_s"
            lag = -wait
            self._lag_n += 1
            self._lag_sum += lag
            if lag > self.lag_max_s:
                self.lag_max_s = lag
            env.step()
            n += 1
        return n, None
