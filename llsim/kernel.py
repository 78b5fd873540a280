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
from queue import Empty, SimpleQueue
from time import monotonic
from typing import Callable, Generator, Iterable

import simpy
from simpy.events import NORMAL, PENDING, Event

__all__ = ["Clock", "VirtualClock", "FastPaths", "fast_paths", "timeout_now", "call_later", "new_pending",
           "ready_event", "schedule_now", "succeed_at", "succeed_now", "succeed_with", "set_value", "timer_at",
           "advance", "Deferred", "blank_event", "Environment", "Process", "RealtimeClock"]

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
    heappush(env._queue, (env.now + delay, NORMAL, next(env._eid), tm))
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
    heappush(env._queue, (env.now, NORMAL, next(env._eid), ev))


def succeed_now(env: simpy.Environment, ev: Event) -> None:
    """``ev.succeed()`` (value ``None``) inlined."""
    ev._ok = True
    ev._value = None
    heappush(env._queue, (env.now, NORMAL, next(env._eid), ev))


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
    """The fast paths above bound to one environment, as methods of a small slotted object (its
    queue and event counter are slots): ``fp.timer_at(t, callbacks)`` costs about what a local
    closure call does, and less than a closure kept in an instance attribute (whose method call
    CPython 3.11 does not specialise; measured with instruction counts, ``cachegrind``). Get one per
    component with :func:`fast_paths` and call its methods on it (``self._fp.timeout_now(dur)``)."""

    __slots__ = ("env", "queue", "eid")

    def __init__(self, env: simpy.Environment):
        self.env, self.queue, self.eid = env, env._queue, env._eid  # simpy never replaces them

    def timeout_now(self, delay: float) -> Event:
        tm = _new(Event)
        env = tm.env = self.env
        tm.callbacks = []
        tm._ok = True
        tm._value = None
        heappush(self.queue, (env.now + delay, NORMAL, next(self.eid), tm))
        return tm

    def timer_at(self, t: float, callbacks) -> Event:
        timer = _new(Event)
        timer.env = self.env
        timer.callbacks = callbacks
        timer._ok = True
        timer._value = None
        heappush(self.queue, (t, NORMAL, next(self.eid), timer))
        return timer

    def schedule_now(self, ev: Event, callbacks) -> None:
        ev.callbacks = callbacks
        heappush(self.queue, (self.env.now, NORMAL, next(self.eid), ev))

    def succeed_now(self, ev: Event) -> None:
        ev._ok = True
        ev._value = None
        heappush(self.queue, (self.env.now, NORMAL, next(self.eid), ev))

    def succeed_at(self, ev: Event, t: float) -> None:
        ev._ok = True
        ev._value = None
        heappush(self.queue, (t, NORMAL, next(self.eid), ev))


class Deferred(Event):
    """A simpy event that can be made without running any Python code: ``blank_event(cls)`` of a
    subclass is a pending event once its ``env`` and ``callbacks`` are set (``_value`` is pending
    at class level; the fast paths above set the instance's when it succeeds). Events made with
    ``cls(env)`` (``Event.__init__``) are ordinary."""

    _value = PENDING


#: ``blank_event(cls)``: an instance of the :class:`Deferred` subclass ``cls`` without ``__init__``
#: (the caller sets ``env`` and ``callbacks``); a C call, not a Python one
blank_event = _new


def fast_paths(env: simpy.Environment) -> FastPaths:
    """:class:`FastPaths` of ``env``."""
    return FastPaths(env)


class Environment(simpy.Environment):
    """``simpy.Environment`` whose ``now`` is a plain attribute: simpy's is a property, a Python call
    at each read, and the simulator reads the time at every stage, transfer and medium reaction.
    ``_now`` (what simpy's own code reads and writes: ``schedule``, ``step``) is an alias of it, so
    ``now`` is right whichever loop advances the clock (:func:`advance` or simpy's ``step``/``run``).
    Only the kernel's loop sets ``now`` directly."""

    now = 0.0  # shadows simpy's property; each environment has its own (set by simpy's __init__)

    @property
    def _now(self) -> float:
        return self.now

    @_now.setter
    def _now(self, t: float) -> None:
        self.now = t


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
        env.now = t  # an Environment's now (its _now is an alias)
        event = item[3]
        callbacks, event.callbacks = event.callbacks, None
        for callback in callbacks:
            callback(event)
        if not event._ok and not hasattr(event, "_defused"):
            exc = type(event._value)(*event._value.args)  # as Environment.step
            exc.__cause__ = event._value
            raise exc
    return limit, None


class Process(simpy.Process):
    """``simpy.Process`` with a leaner resume step (it runs at every event a process waits for): the
    bound methods it uses (its ``_resume``, the generator's ``send``) are made once, not at each
    resume. The body is ``Process._resume``'s, so the events, their order and the errors are simpy's
    (``tests/test_sim.py::test_inlined_event_loop_matches_simpy_step`` runs the engine both ways)."""

    def __init__(self, env: simpy.Environment, generator: Generator):
        self._resume = self._resume  # one bound method (simpy's Initialize, made below, takes it)
        super().__init__(env, generator)
        self._send = generator.send

    def _resume(self, event: Event) -> None:
        env = self.env
        env._active_proc = self
        while True:
            try:
                if event._ok:
                    event = self._send(event._value)
                else:  # the process must handle the failed event (or fail itself)
                    event._defused = True
                    exc = type(event._value)(*event._value.args)  # an exclusive copy, as simpy
                    exc.__cause__ = event._value
                    event = self._generator.throw(exc)
            except StopIteration as e:
                event = None
                self._ok = True
                self._value = e.args[0] if len(e.args) else None
                env.schedule(self)
                break
            except BaseException as e:
                event = None
                self._ok = False
                e.__traceback__ = e.__traceback__.tb_next  # strip this frame, as simpy
                self._value = e
                env.schedule(self)
                break
            try:
                callbacks = event.callbacks
            except AttributeError:
                raise RuntimeError(f'\n{simpy.events._describe_frame(self._generator.gi_frame)}'
                                   f'Invalid yield value "{event}"') from None
            if callbacks is not None:  # not yet processed: resume when it is
                callbacks.append(self._resume)
                break
        self._target = event
        env._active_proc = None


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

    def __init__(self, env: Environment | None = None):
        if env is not None and not isinstance(env, Environment):
            raise TypeError("VirtualClock runs a llsim.kernel.Environment (its loop sets env.now)")
        self.env = Environment() if env is None else env

    @property
    def now(self) -> float:
        return self.env.now

    def timeout(self, delay: float) -> Event:
        return self.env.timeout(delay)

    def event(self) -> Event:
        return self.env.event()

    def schedule_now(self, ev: Event) -> None:
        succeed_now(self.env, ev)

    def process(self, gen: Generator) -> simpy.Process:
        return Process(self.env, gen)

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
        super().__init__(env)
        self._inbox: SimpleQueue = SimpleQueue()
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
        ev, value = item
        self.outstanding -= 1
        env = self.env
        wall = monotonic() - self.wall0
        if wall > env.now:  # simulated time catches up with the wall clock, never past the next event
            env.now = min(wall, env.peek())
        ev.succeed(value)

    def run_until(self, done: Event, limit: int, max_t: float) -> tuple[int, str | None]:
        env = self.env
        if self.wall0 is None:
            self.wall0 = monotonic() - env.now
        n = 0
        while n < limit:
            if done._value is not PENDING:
                return n, "completed"
            while True:  # completions that arrived meanwhile, first
                try:
                    self._take(self._inbox.get_nowait())
                except Empty:
                    break
            t = env.peek()
            if t == INF and not self.outstanding:
                return n, "deadlock" if max_t == INF else "stalled"
            if t > max_t and not self.outstanding:
                return n, "max_sim_s"
            wait = (self.wall0 + t - monotonic()) if t != INF else 0.5
            if wait > 0:
                try:
                    self._take(self._inbox.get(timeout=min(wait, 0.5)))
                except Empty:
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
