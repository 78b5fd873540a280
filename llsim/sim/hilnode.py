"""Nodes of a simulation with real tensors: real workers, and simulated phones that compute real data.

:class:`HilNodes` is handed to :class:`~llsim.sim.engine.Simulation` (``hil=``) by the HIL runner
(:mod:`llsim.judge.hil`); :func:`llsim.sim.node.make_node` then asks it for each device's node:

* :class:`WorkerNode` for a device with a real backend (``backend: local``): ``run`` executes the
  stage on the worker through the data plane (:class:`~llsim.hil.plane.DataPlane`), waiting for
  its result, and the stage then takes the compute time the worker *measured* (measured-time
  injection: the virtual clock stops while the worker runs, so a real stage never contends with
  another for this host's cores). A lost worker (its connection gone, heartbeats missed, a missed
  deadline) makes the device leave the cluster, as a phone that crashed: the coordinator notices
  by its missed heartbeats and the balancer fails over. Any other failure ends the run with its
  error (the tokens so far are kept).
* :class:`TensorPhone` for a simulated device: the stage's segment is executed in this process to
  produce the real tensors the next stages need, and the stage takes the cost model's time, as
  :class:`~llsim.sim.node.SimulatedPhone` (whose dynamics it keeps).

The simulator-only dynamics (throttle, background load, thermal, noise) have no meaning on a real
worker: :class:`WorkerNode` refuses them (and the HIL runner refuses such scenarios before they run).
"""
from __future__ import annotations

from llsim.errors import LLSimError
from llsim.hil.errors import DeadlineExceeded, WorkerError, WorkerLost
from llsim.sim.node import Node, SimulatedPhone, StepWork


class HilNodes:
    """Which node runs each device of a simulation with real tensors, and their shared data plane."""

    def __init__(self, plane, real: set[int], shape: str = "model"):
        self.plane, self.real, self.shape = plane, set(real), shape
        self.sim = None
        self.lost: list[dict] = []  # workers lost during the run: device, time, reason
        self.last_send: dict[int, tuple[float, int]] = {}  # device -> its last real stage's (forwarding s, bytes)
        self.real_links: dict[tuple[int, int], list] = {}  # (src, dst) -> [transfers, bytes, seconds] (shape none)

    def bind(self, sim) -> None:
        self.sim = sim

    def node(self, dev, env, rng, mark) -> Node:
        if dev.index in self.real:
            return WorkerNode(dev, env, self)
        return TensorPhone(dev, env, rng, mark, self)

    def wrap_send(self, send):
        """The engine's send: the network model's (``hil.shape: model``), or, with ``shape: none``, for a
        tensor between two real workers the time it really took: on the virtual clock the producer's
        measured forwarding time (shared among its routes by their bytes), on the real-time clock none (the next worker waits for the tensor
        itself, inside its stage's measured time)."""
        if self.shape == "model":
            return send
        from llsim.hil.plane import route

        real, ex = self.real, self.plane.executors

        def direct(src: int, dst: int) -> bool:  # the two workers forward to each other (not via this host)
            return src in real and dst in real and route(ex[src], ex[dst]) is not None

        def real_send(src: int, dst: int, nbytes: int, tag: str = ""):
            if direct(src, dst):
                secs = 0.0
                if not self.realtime:  # the producer's measured forwarding time, shared by bytes among its routes
                    send_s, fwd = self.last_send.get(src, (0.0, 0))
                    secs = send_s * min(1.0, nbytes / fwd) if fwd else send_s
                rec = self.real_links.setdefault((src, dst), [0, 0, 0.0])
                rec[0] += 1
                rec[1] += int(nbytes)
                rec[2] += secs
                return self.sim.env.timeout(secs)
            return send(src, dst, nbytes, tag)

        return real_send

    @property
    def realtime(self) -> bool:
        return hasattr(self.sim.clock, "deliver")

    def execute(self, node: Node, s: int, work: StepWork):
        """Run the stage for real, waiting for it; ``None`` if it could not (the node left or the run ended)."""
        p = self.start(node, s, work)
        return None if p is None else self.collect(node, p)

    def start(self, node: Node, s: int, work: StepWork):
        """Submit the stage (a :class:`~llsim.hil.plane.PendingStage`); ``None`` if it could not be."""
        ep = work.epoch
        try:
            p = self.plane.start_stage(ep.index, ep.plan.boundaries, ep.devs, work.request, work.step, s,
                                       work.recompute, work.cost.stage_seconds[s])
        except (WorkerError, LLSimError) as e:
            self._failed(node, s, work, e)
            return None
        p.work = work
        return p

    def collect(self, node: Node, p):
        try:
            r = self.plane.finish_stage(p)
        except (WorkerError, LLSimError) as e:
            self._failed(node, p.s, p.work, e)
            return None
        if r.real:
            self.last_send[r.device] = (r.send_s, r.forwarded_bytes)
        return r

    def _failed(self, node: Node, s: int, work: StepWork, e: Exception) -> None:
        if isinstance(e, (WorkerLost, DeadlineExceeded)):
            who = self.blame(getattr(e, "worker", None), node, work.epoch)
            if who is not None and self.sim.nodes[who].dead:
                return  # already gone (another stage to the same worker failed first): recorded once
            self.lost.append({"device": who, "time_s": node.env.now, "reason": str(e)})
            if who is not None:
                self.sim.leave(who, f"worker lost: {e}")
            return
        self.sim.end_run(f"stage {s} of request {work.request} step {work.step} on {node.dev.name}: {e}")

    def blame(self, worker: str | None, node: Node, ep) -> int | None:
        """The device lost: the one whose worker the error names (a forward that found its peer gone
        blames the peer), else the stage's own device if real, else the first live real one of the plan."""
        names = {getattr(self.plane.executors.get(d), "name", None): d for d in self.real}
        if worker in names:
            return names[worker]
        if node.index in self.real:
            return node.index
        return next((d for d in ep.devs if d in self.real and not self.sim.nodes[d].dead), None)


class WorkerNode(Node):
    """A device whose stages run on a real worker (see the module docstring). On the real-time clock
    (:class:`~llsim.kernel.RealtimeClock`) ``run`` only submits the stage, and its event fires when
    the worker's result arrives: the stage takes the wall time it took; the monitor is told the
    worker's compute time."""

    __slots__ = ("hil", "t0", "t1", "measured", "_pending")

    def __init__(self, dev, env, hil: HilNodes):
        super().__init__(dev, env)
        self.hil = hil
        self.t0 = self.t1 = self.measured = 0.0
        self._pending = None

    def run(self, s: int, work: StepWork):
        if work.kv_new:
            self.cache_tokens(work.kv_new)
        t0 = self.t0 = self.env.now
        hil = self.hil
        if hil.realtime:
            return self._run_realtime(s, work)
        r = hil.execute(self, s, work)
        dur = self.measured = r.compute_s if r is not None else 0.0
        self.t1 = t0 + dur
        self._pending = None
        return self._fp.timeout_now(dur)

    def _run_realtime(self, s: int, work: StepWork):
        import time

        clock = self.hil.sim.clock
        ev = clock.expect()
        p = self.hil.start(self, s, work)
        self._pending = p
        if p is None:
            clock.deliver(ev, None)
        else:
            def arrived(_f, p=p, ev=ev):
                p.done_at = time.perf_counter()
                clock.deliver(ev, p)

            p.future.add_done_callback(arrived)
        return ev

    def finish(self) -> tuple[float, float, float]:
        t0 = self.t0
        if self._pending is not None:  # real-time: the result has arrived; collect it
            p, self._pending = self._pending, None
            r = self.hil.collect(self, p)
            self.t1 = self.env.now
            self.measured = r.compute_s if r is not None else 0.0
        t1 = self.t1
        self.busy_s += t1 - t0
        self.release()
        return t0, t1, self.measured

    def probe_seconds(self, nominal_s: float) -> float:
        return nominal_s  # an idle worker runs at its speed: nothing of the simulator slows it

    def _simulated_only(self, what: str):
        raise LLSimError(f"{what} is a simulated dynamic; {self.dev.name} is a real worker "
                         f"(backend: {getattr(self.dev, 'backend', 'local')})")

    def set_throttle(self, factor: float) -> None:
        self._simulated_only("throttle")

    def add_background(self, share: float) -> None:
        self._simulated_only("background load")

    def remove_background(self, share: float) -> None:
        self._simulated_only("background load")

    def enable_thermal(self, time_to_throttle_s: float, sustained_ratio: float) -> None:
        self._simulated_only("thermal throttling")

    def set_noise(self, sigma: float) -> None:
        self._simulated_only("noise")


class TensorPhone(SimulatedPhone):
    """A simulated phone whose stages also compute their real outputs (in this process)."""

    __slots__ = ("hil",)

    def __init__(self, dev, env, rng, mark, hil: HilNodes):
        super().__init__(dev, env, rng, mark)
        self.hil = hil

    def run(self, s: int, work: StepWork):
        ev = super().run(s, work)  # the model's time (memory first: an overflow raises before anything runs)
        self.hil.execute(self, s, work)
        return ev
