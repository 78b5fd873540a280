"""Plans judged by a short simulation of the scenario (see :mod:`llsim.alloc.evaluate` for why),
and :func:`allocate`, the allocator with that judgement: what ``llsim run`` plans with.
"""
from __future__ import annotations

from llsim.alloc.evaluate import Evaluation, model_evaluation
from llsim.alloc.plan import Plan
from llsim.alloc.problem import AllocProblem
from llsim.alloc import strategies
from llsim.errors import LLSimError
from llsim.network.links import KINDS
from llsim.sim.engine import Simulation

MAX_STAGE_STEPS = 6000  # stage executions per evaluation run, about (about 0.1-0.3 s of simulation)


class SimEvaluator:
    """Plans judged by a short simulation of the scenario (results cached per plan)."""

    def __init__(self, sc, devices, max_stage_steps: int = MAX_STAGE_STEPS):
        w = sc.workload
        T, N = w.new_tokens, w.in_flight
        waves = max(1, max_stage_steps // max(1, N * T * min(len(devices), 16)))  # whole waves of N requests
        self.requests = min(w.requests, N * waves)
        net = sc.network
        if KINDS[net.kind].random_rtt:
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


def allocate(sc, devices, strategy: str | None = None, objective: str | None = None,
             problem: AllocProblem | None = None) -> strategies.AllocResult:
    """:func:`llsim.alloc.strategies.allocate` with plans judged by :func:`evaluator_for`."""
    return strategies.allocate(sc, devices, strategy, objective, problem, evaluator=evaluator_for)
