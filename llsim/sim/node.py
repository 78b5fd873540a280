"""Nodes: what runs a pipeline stage for the engine.

The engine (:mod:`llsim.sim.engine`) drives every stage of every generation step through the
:class:`Node` interface below and knows nothing else about how a phone computes.
:class:`SimulatedPhone` implements it from the cost model (the stage's predicted seconds, scaled by
the phone's run-time speed and noise) and owns the phone's dynamic state; the scenario's dynamics
(:mod:`llsim.events`) and the coordinator (:mod:`llsim.sim.dynamics`) change that state through its
methods only.

A worker-backed node (a real onnxruntime worker: :class:`llsim.sim.hilnode.WorkerNode`) implements
the same interface: ``run`` has the worker execute the stage on its real inputs and returns an
event that fires after the compute time the worker measured; ``finish`` returns that time. The
engine, the network and the coordinator stay as they are.
"""
from __future__ import annotations

from collections import deque
from typing import Callable

import numpy as np
import simpy
from simpy.events import Event

from llsim.kernel import fast_paths
from llsim.cluster import DeviceInstance


def make_node(dev: DeviceInstance, env: simpy.Environment, rng: np.random.Generator,
              mark: Callable[..., None], hil=None) -> "Node":
    """The node that runs device ``dev``'s stages: a :class:`SimulatedPhone`, or, in a run with real
    tensors, the node ``hil`` (:class:`llsim.sim.hilnode.HilNodes`) gives it: a real worker for a
    device whose backend is real, a simulated phone that also computes its segment's outputs."""
    if hil is not None:
        return hil.node(dev, env, rng, mark)
    return SimulatedPhone(dev, env, rng, mark)


class MemoryOverflow(Exception):
    """A node's memory in use went over its budget: the run's terminal error (the message)."""


class StepWork:
    """One generation step of one request under one plan, as every stage's node sees it: the
    ``epoch`` (its ``plan.stages[s]`` is the segment stage ``s`` runs), the request id ``request``,
    the generation ``step``, its ``shape`` ``(S, P)`` (new tokens, cached tokens; ``recompute``: the
    step re-runs a request's whole context after its KV cache was lost), the step's
    ``cost`` (:class:`~llsim.sim.engine.StepCost`: predicted seconds per stage, route bytes) and
    ``kv_new``, the tokens that join each stage's KV cache (0 in recompute mode)."""

    __slots__ = ("epoch", "request", "step", "S", "recompute", "cost", "kv_new")

    def __init__(self, epoch, request: int, step: int, S: int, recompute: bool, cost, kv_new: int):
        self.epoch, self.request, self.step, self.S, self.recompute, self.cost, self.kv_new = \
            epoch, request, step, S, recompute, cost, kv_new

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, P)``: ``(S, 0)`` when the step recomputes a lost KV cache, else the step's own shape."""
        return (self.S, 0) if self.recompute else self.epoch.steps.step_shape(self.step)


class PhoneLock:
    """One segment execution at a time, granted in request order (the semantics of a
    ``simpy.Resource(capacity=1)``): a free lock is taken without an event; a busy one queues the
    requester, and :meth:`release` hands it straight to the head of the queue. Every :class:`Node`
    is one (its own methods: no call through a lock object per stage)."""

    __slots__ = ("env", "_fp", "held", "waiting")

    def __init__(self, env: simpy.Environment):
        self.env = env
        self._fp = fast_paths(env)
        self.held = False
        self.waiting: deque[Event] = deque()  # the requests queued, each an event

    def acquire(self) -> Event | None:
        """``None`` if the lock was free and is now held, else an event to yield (fires when granted)."""
        if not self.held:
            self.held = True
            return None
        ev = Event(self.env)
        self.waiting.append(ev)
        return ev

    request = acquire  # simpy.Resource's name

    def release(self) -> None:
        """The execution is over (or given up): the lock passes straight to the next in line, if any."""
        if self.waiting:  # still held: now by the next requester (its event's succeed())
            self._fp.succeed_now(self.waiting.popleft())
        else:
            self.held = False


class Node(PhoneLock):
    """A device that runs pipeline stages: the interface the engine calls, and the state every
    backend shares (the device, its one-execution-at-a-time lock, its memory accounting, whether it
    is there). Backends subclass it and implement :meth:`run` and :meth:`finish`.

    A stage runs as (:meth:`llsim.sim.engine.Simulation.request`)::

        grant = node.acquire()          # one segment execution at a time, in request order
        if grant is not None:
            yield grant                 # queued behind another request's stage
        ...                             # (the engine may give up here: node.release())
        yield node.run(s, work)         # the stage executes; the event fires when it is done
        t0, t1, measured_s = node.finish()   # releases the node; what it measured

    ``run(s, work)`` starts stage ``s`` of the step ``work`` (:class:`StepWork`: which segment
    (``work.epoch.plan.stages[s]``), which step shape, which request, the step's predicted costs;
    the input tensors, for a backend that computes them, are the previous stages' outputs, which
    such a backend keeps per ``(work.request, work.step)``) and returns an event to yield. It first
    calls :meth:`cache_tokens` with ``work.kv_new`` (which may raise :class:`MemoryOverflow`, after
    releasing). ``finish()`` returns the start and end times of the execution and the compute
    seconds the node reports (the balancer's monitor gets them), and releases the node.
    ``probe_seconds(nominal_s)`` is what the node reports for an idle-time probe.

    State the engine reads: ``index``, ``dead``, ``busy_s``, ``peak_bytes``, ``used_bytes``. The
    engine sets the memory from the plan in force (:meth:`set_memory`, :meth:`set_kv_tokens`,
    :meth:`free_kv`, :meth:`add_static`); the coordinator calls :meth:`leave` / :meth:`rejoin`.
    A worker-backed node (:mod:`llsim.sim.hilnode`) subclasses this, and :func:`make_node` picks it for
    a device whose backend is real.
    """

    __slots__ = ("dev", "static_bytes", "kv_per_token", "kv_tokens", "busy_s", "peak_bytes", "dead")

    def __init__(self, dev: DeviceInstance, env: simpy.Environment):
        super().__init__(env)  # the node is its own lock (acquire / release)
        self.dev = dev
        self.static_bytes = 0  # weights + activation buffers
        self.kv_per_token = 0  # KV-cache bytes per cached token of one request (0 in recompute mode)
        self.kv_tokens = 0
        self.busy_s = 0.0
        self.peak_bytes = 0
        self.dead = False  # left the cluster (crash, killed, out of range)

    @property
    def index(self) -> int:
        return self.dev.index

    @property
    def used_bytes(self) -> int:
        return self.static_bytes + self.kv_tokens * self.kv_per_token

    # ---- running a stage ----------------------------------------------------------------------------
    def run(self, s: int, work: StepWork) -> Event:
        raise NotImplementedError

    def finish(self) -> tuple[float, float, float]:
        raise NotImplementedError

    def probe_seconds(self, nominal_s: float) -> float:
        raise NotImplementedError

    def cache_tokens(self, n: int) -> None:
        """``n`` tokens of a step join this node's KV cache; over the budget: :class:`MemoryOverflow`."""
        self.kv_tokens += n
        used = self.used_bytes
        if used > self.peak_bytes:
            self.peak_bytes = used
        if used > self.dev.budget_bytes:
            self.release()
            self._overflow(used)

    def _overflow(self, used: int) -> None:
        """This phone now holds ``used`` bytes, over its budget: the run's terminal error."""
        raise MemoryOverflow(
            f"memory overflow at t={self.env.now:.3f}s on {self.dev.name}: {used / 1e9:.2f} GB used "
            f"> budget {self.dev.budget_bytes / 1e9:.2f} GB ({self.kv_tokens} cached tokens); "
            "lower concurrency or context, or give that phone fewer modules")

    # ---- memory (set by the engine from the plan in force) ------------------------------------------
    def set_memory(self, static_bytes: int, kv_per_token: int) -> None:
        self.static_bytes, self.kv_per_token = static_bytes, kv_per_token

    def add_static(self, nbytes: int) -> None:
        """A replica's weights were loaded."""
        self.static_bytes += nbytes

    def set_kv_tokens(self, n: int) -> None:
        self.kv_tokens = n

    def free_kv(self, n: int) -> None:
        """A request that cached ``n`` tokens here has ended."""
        self.kv_tokens = max(0, self.kv_tokens - n)

    def reset_peak(self) -> None:
        self.peak_bytes = self.used_bytes

    # ---- presence -----------------------------------------------------------------------------------
    def leave(self) -> bool:
        """The phone is gone; ``False`` if it already was."""
        if self.dead:
            return False
        self.dead = True
        return True

    def rejoin(self) -> bool:
        """The phone is back (its KV cache lost); ``False`` if it was there."""
        if not self.dead:
            return False
        self.dead = False
        self.kv_tokens = 0
        return True


class SimulatedPhone(Node):
    """A simulated phone: compute time from the cost model (the stage's predicted seconds) scaled by
    its run-time speed (throttle x background x thermal) and lognormal noise (drawn from ``rng``).
    ``mark(name, device)`` puts an instant on the timeline (thermal throttling). The scenario's
    dynamics (:mod:`llsim.events`) change its state through the methods at the end."""

    __slots__ = ("rng", "mark", "speed", "throttle", "background", "thermal", "heat_s", "hot", "last_end",
                 "noise", "t0", "t1")

    def __init__(self, dev: DeviceInstance, env: simpy.Environment, rng: np.random.Generator,
                 mark: Callable[..., None]):
        super().__init__(dev, env)
        self.rng, self.mark = rng, mark
        self.speed = 1.0  # run-time multiplier: throttle x background x thermal (see _update_speed)
        self.throttle = 1.0
        self.background: list[float] = []  # shares of the cores taken by other apps
        self.thermal: tuple[float, float] | None = None  # (time to throttle s, sustained / peak) when modelled
        self.heat_s = 0.0  # busy seconds not yet cooled off
        self.hot = False
        self.last_end = 0.0
        self.noise = 0.0  # lognormal sigma of each execution's time
        self.t0 = self.t1 = 0.0  # start and end of the current execution

    def _update_speed(self) -> None:
        f = self.throttle * (self.thermal[1] if (self.thermal and self.hot) else 1.0)
        for share in self.background:
            f *= 1.0 - share
        self.speed = f

    # ---- running a stage (the Node interface) -------------------------------------------------------
    def run(self, s: int, work: StepWork) -> Event:
        kv_new = work.kv_new
        if kv_new:  # this step's tokens join the phone's KV cache (Node.cache_tokens, inlined: per stage)
            self.kv_tokens += kv_new
            used = self.static_bytes + self.kv_tokens * self.kv_per_token  # used_bytes, inlined
            if used > self.peak_bytes:
                self.peak_bytes = used
            if used > self.dev.budget_bytes:
                self.release()
                self._overflow(used)
        env = self.env
        t0 = self.t0 = env.now
        if self.thermal is not None:
            self.heat_s = max(0.0, self.heat_s - (t0 - self.last_end))
            hot = self.heat_s >= self.thermal[0] if not self.hot else self.heat_s > self.thermal[0] / 2
            if hot != self.hot:
                self.hot = hot
                self._update_speed()
                self.mark("thermal throttled" if hot else "thermal recovered", self.dev.index)
        dur = work.cost.stage_seconds[s] / self.speed
        if self.noise:
            dur *= float(self.rng.lognormal(0.0, self.noise))
        self.t1 = t0 + dur  # the clock's time when the timeout fires (the same float sum as its schedule)
        return self._fp.timeout_now(dur)  # compute: env.timeout(dur)

    def finish(self) -> tuple[float, float, float]:
        t0, t1 = self.t0, self.t1
        self.busy_s += t1 - t0
        self.last_end = t1
        if self.thermal is not None:
            self.heat_s += t1 - t0
        if self.waiting:  # release(), inlined (per stage)
            self._fp.succeed_now(self.waiting.popleft())
        else:
            self.held = False
        return t0, t1, t1 - t0

    # ---- dynamics (the scenario's events act through these) --------------------------------------
    def set_throttle(self, factor: float) -> None:
        self.throttle = factor
        self._update_speed()

    def add_background(self, share: float) -> None:
        self.background.append(share)
        self._update_speed()

    def remove_background(self, share: float) -> None:
        self.background.remove(share)
        self._update_speed()

    def enable_thermal(self, time_to_throttle_s: float, sustained_ratio: float) -> None:
        self.thermal = (time_to_throttle_s, sustained_ratio)

    def set_noise(self, sigma: float) -> None:
        self.noise = sigma

    def probe_seconds(self, nominal_s: float) -> float:
        """The time the phone reports for a probe that takes ``nominal_s`` at full speed."""
        return nominal_s / self.speed
