"""Judge strategies by the simulator: every plan is run through the same DES, with the same seed.

:func:`compare` is what ``llsim allocate`` prints and the allocator bench records. With
``expected_rtt`` every transfer gets the mean RTT (``network.rtt_sampling: expected``): a token's
latency is linear in the RTTs, so this is the random run's expectation without its noise, and
two plans can be told apart by far less than 0.5 % in a few hundred tokens.
"""
from __future__ import annotations

from dataclasses import dataclass

from llsim.alloc.problem import build_problem
from llsim import registry
from llsim.alloc.strategies import AllocResult, allocate_problem, memory_diagnosis
from llsim.errors import LLSimError
from llsim.judge.evaluate import evaluator_for
from llsim.judge.run import simulate
from llsim.network.links import KINDS
from llsim.scenario import Scenario
from llsim.cluster import expand_devices


@dataclass
class Judged:
    result: AllocResult
    simulated_token_latency_ms: float | None = None
    simulated_tokens_per_s: float | None = None
    sim_error: str | None = None

    @property
    def feasible(self) -> bool:
        return self.result.feasible and self.sim_error is None and self.simulated_tokens_per_s is not None

    def score(self, objective: str) -> float | None:
        """Lower is better: simulated ms/token (latency) or s/token (throughput)."""
        if not self.feasible:
            return None
        if objective == "latency":
            return self.simulated_token_latency_ms
        return 1.0 / self.simulated_tokens_per_s

    def to_json(self, names: list[str]) -> dict:
        r, p = self.result, self.result.prediction
        return {
            "feasible": self.feasible,
            "stages": [{"device": s.device, "device_name": names[s.device], "start_module": s.start_module,
                        "end_module": s.end_module} for s in r.plan.stages] if r.plan else [],
            "predicted_token_latency_ms": _ms(p.evaluated_latency_s) if p else None,
            "simulated_token_latency_ms": self.simulated_token_latency_ms,
            "predicted_tokens_per_s": p.evaluated_tokens_per_s if p else None,
            "predicted_by": p.evaluated_by if p else None,
            "model_bound_token_latency_ms": p.latency_s * 1e3 if p else None,
            "model_bound_tokens_per_s": p.tokens_per_s if p else None,
            "tokens_per_s": self.simulated_tokens_per_s,
            "solve_time_s": r.solve_time_s,
            "error": r.error or self.sim_error,
            **({"solver": r.info} if r.info else {}),
        }


def _ms(s: float | None) -> float | None:
    return None if s is None else s * 1e3


def judge_scenario(sc: Scenario, expected_rtt: bool) -> Scenario:
    if not expected_rtt or not KINDS[sc.network.kind].random_rtt:
        return sc
    net = sc.network.model_copy(update={"rtt_sampling": "expected"})
    return sc.model_copy(update={"network": net})


def compare(sc: Scenario, strategies: list[str] | None = None, objective: str | None = None,
            expected_rtt: bool = False, simulate_plans: bool = True) -> tuple[list[Judged], list[str], object]:
    objective = objective or sc.allocation.objective
    devices = expand_devices(sc)
    pb = build_problem(sc, devices, objective)
    if pb.memory_need() > pb.budget.sum():
        raise LLSimError(memory_diagnosis(pb, devices))
    names = [d.name for d in devices]
    judge = judge_scenario(sc, expected_rtt)
    out = []
    evaluate = evaluator_for(pb, sc, devices)  # one cache of evaluations for every strategy's plan
    known = registry.names(judged_only=True)
    for name in strategies or list(known):
        if name not in known:
            raise LLSimError(f"--strategy: {registry.unknown(name, judged_only=True, extra=' or all')}")
        res = allocate_problem(pb, name, sc, devices, evaluate)
        j = Judged(res)
        if res.plan is not None and res.feasible and simulate_plans:
            try:
                sim, _, _ = simulate(judge, res.plan, timeline=False)
            except LLSimError as e:
                j.sim_error = str(e)
            else:
                if sim.error:
                    j.sim_error = sim.error
                else:
                    m = sim.metrics
                    j.simulated_token_latency_ms = m["token_latency_ms"]["mean"] or m["ttft_ms"]
                    j.simulated_tokens_per_s = m["tokens_per_s"]
        out.append(j)
    return out, names, pb
