"""The finer evaluation of plans (:class:`Evaluation`) and its default, the problem's own model.

The evaluation by simulation is :mod:`llsim.judge.evaluate` (above both the allocator and the
simulator); the allocator takes it as its ``evaluate`` argument.

The MILP's linear model is exact for one request in flight (:meth:`AllocProblem.evaluate`
replays even the power-save wake-ups step by step). With N > 1 requests in flight it is only a
bound: requests queue at the busiest phone and on the shared medium near the knee, a request's
prefill holds up the others' decode steps, and a finite workload starts and drains. So the
allocator judges its best candidate plans by a short simulation of the scenario itself
(:class:`llsim.judge.evaluate.SimEvaluator`): the same simulator ``llsim run`` uses, with every RTT at its mean
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
