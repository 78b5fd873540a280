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
from llsim.kernel import fast_paths
from llsim.kernel import now as _clock_now
from llsim.sim.node import Node, SimulatedPhone, StepWork


class HilNodes:
    """Which node runs each device of a simulation with real tensors, and their shared data plane."""

    def __init__(self, plane, real: set[int]):
        self.plane, self.real = plane, set(real)
        self.sim = None
        self.lost: list[dict] = []  # workers lost during the run: device, time, reason

    def bind(self, sim) -> None:
        self.sim = sim

    def node(self, dev, env, rng, mark) -> Node:
        if dev.index in self.real:
            return WorkerNode(dev, env, self)
        return TensorPhone(dev, env, rng, mark, self)

    def execute(self, node: Node, s: int, work: StepWork):
        """Run the stage for real; ``None`` if it could not (the node left or the run was ended)."""
        ep = work.epoch
        try:
            return self.plane.stage(ep.index, ep.plan.boundaries, ep.devs, work.request, work.step, s,
                                    work.recompute, work.cost.stage_seconds[s])
        except (WorkerLost, DeadlineExceeded) as e:
            sim = self.sim
            who = self.blame(getattr(e, "worker", None), node, ep)
            self.lost.append({"device": who, "time_s": _clock_now(node.env), "reason": str(e)})
            if who is not None:
                sim.leave(who, f"worker lost: {e}")
            return None
        except (WorkerError, LLSimError) as e:
            self.sim.end_run(f"stage {s} of request {work.request} step {work.step} on {node.dev.name}: {e}")
            return None


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
    """A device whose stages run on a real worker (see the module docstring)."""

    __slots__ = ("hil", "t0", "t1", "_timeout_now")

    def __init__(self, dev, env, hil: HilNodes):
        super().__init__(dev, env)
        self.hil = hil
        self._timeout_now = fast_paths(env).timeout_now
        self.t0 = self.t1 = 0.0

    def run(self, s: int, work: StepWork):
        if work.kv_new:
            self.cache_tokens(work.kv_new)
        t0 = self.t0 = _clock_now(self.env)
        r = self.hil.execute(self, s, work)
        dur = r.compute_s if r is not None else 0.0
        self.t1 = t0 + dur
        return self._timeout_now(dur)

    def finish(self) -> tuple[float, float, float]:
        t0, t1 = self.t0, self.t1
        self.busy_s += t1 - t0
        self.release()
        return t0, t1, t1 - t0

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
