"""The finer evaluation of plans: what the simulator will show for the scenario's workload.

The MILP's linear model is exact for one request in flight (:meth:`AllocProblem.evaluate`
replays even the power-save wake-ups step by step). With N > 1 requests in flight it is only a
bound: requests queue at the busiest phone and on the shared medium near the knee, a request's
prefill holds up the others' decode steps, and a finite workload starts and drains. So the
allocator judges its best candidate plans by a short simulation of the scenario itself
(:class:`SimEvaluator`): the same simulator ``llsim run`` uses, with every RTT at its mean
(``network.rtt_sampling: expected``, the expectation of the random run without its noise), no
dynamics events and no balancer (the plan is for the cluster as it starts), and, when the
workload is large, only its first waves of requests (whole waves of N, about ``max_stage_steps``
stage executions at most, one wave at least), which changes the estimate's transients, not its
steady state.

An :class:`Evaluation` is what ``llsim allocate`` prints as the predicted figures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from llsim.alloc.plan import Plan
from llsim.alloc.problem import AllocProblem

MAX_STAGE_STEPS = 6000  # stage executions per evaluation run, about (about 0.1-0.3 s of simulation)


@dataclass(frozen=True)
class Evaluation:
    latency_s: float | None  # mean decode time per token of a request (TTFT when one token)
    tokens_per_s: float
    by: str  # "model" (exact for one request in flight) or "simulation"
    requests: int = 0  # requests simulated (of the workload's)
    error: str | None = None

    def score(self, objective: str) -> float:
        """Seconds per token, lower is better (inf when the plan failed)."""
        if self.error is not None:
            return math.inf
        if objective == "latency":
            return self.latency_s if self.latency_s is not None else math.inf
        return 1.0 / self.tokens_per_s if self.tokens_per_s > 0 else math.inf


def model_evaluation(pb: AllocProblem, plan: Plan) -> Evaluation:
    e = pb.evaluate(plan)
    if not e.feasible:
        return Evaluation(None, 0.0, "model", error="over memory budget")
    return Evaluation(e.latency_s, e.tokens_per_s, "model")


class SimEvaluator:
    """Plans judged by a short simulation of the scenario (results cached per plan)."""

    def __init__(self, sc, devices, max_stage_steps: int = MAX_STAGE_STEPS):
        w = sc.workload
        T, N = w.new_tokens, w.in_flight
        waves = max(1, max_stage_steps // max(1, N * T * min(len(devices), 16)))  # whole waves of N requests
        self.requests = min(w.requests, N * waves)
        net = sc.network
        if net.kind in ("infrastructure", "wifi_direct"):
            net = net.model_copy(update={"rtt_sampling": "expected"})
        work = w.model_copy(update={"requests": self.requests})
        bal = sc.balancer.model_copy(update={"enabled": False})
        self.sc = sc.model_copy(update={"network": net, "workload": work, "events": [], "balancer": bal})
        self.devices = devices
        self.graphs: dict = {}
        self.cache: dict[tuple, Evaluation] = {}
        self.runs = 0

    def __call__(self, plan: Plan) -> Evaluation:
        key = tuple(plan.stages)
        if key not in self.cache:
            self.cache[key] = self._simulate(plan)
        return self.cache[key]

    def _simulate(self, plan: Plan) -> Evaluation:
        from llsim.errors import LLSimError
        from llsim.sim.engine import Simulation

        self.runs += 1
        try:
            res = Simulation(self.sc, self.devices, plan, timeline=False, graphs=self.graphs).run()
        except LLSimError as e:
            return Evaluation(None, 0.0, "simulation", self.requests, error=str(e))
        m = res.metrics
        if res.error or m["requests_completed"] < self.requests:
            return Evaluation(None, 0.0, "simulation", self.requests,
                              error=res.error or f"stopped: {m['stop_reason']}")
        lat = m["token_latency_ms"]["mean"]
        lat = (lat if lat is not None else m["ttft_ms"]) / 1e3
        return Evaluation(lat, m["tokens_per_s"], "simulation", self.requests)


def evaluator_for(pb: AllocProblem, sc=None, devices=None):
    """The finer evaluation for ``pb``: the exact model with one request in flight, else a short
    simulation of the scenario when it is known (the model's bound otherwise)."""
    if pb.in_flight > 1 and sc is not None and devices is not None:
        return SimEvaluator(sc, devices)
    return lambda plan: model_evaluation(pb, plan)
