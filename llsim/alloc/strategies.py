"""Running a strategy of :mod:`llsim.registry` on an allocation problem.

:func:`allocate_problem` is the one entry point the initial plan of ``llsim run``, ``llsim
allocate``, the bench and the runtime balancer call: (problem, strategy name) -> plan + prediction.
The finer evaluation of plans (``evaluate``) is given by the caller (:mod:`llsim.judge.evaluate`
judges by simulation); by default it is the problem's own model.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from llsim import registry
from llsim.alloc import milp, oracle
from llsim.alloc.evaluate import model_evaluation
from llsim.alloc.plan import Plan, header_first
from llsim.alloc.problem import AllocProblem, Prediction, build_problem
from llsim.errors import LLSimError


@dataclass
class AllocResult:
    strategy: str
    plan: Plan | None
    prediction: Prediction | None
    solve_time_s: float
    info: dict = field(default_factory=dict)
    error: str | None = None

    @property
    def feasible(self) -> bool:
        return self.plan is not None and self.prediction is not None and self.prediction.feasible


def memory_diagnosis(pb: AllocProblem, devices) -> str:
    """Why the model cannot fit, how much is missing, and what to add."""
    need = pb.memory_need()
    have = float(pb.budget.sum())
    if pb.header is not None:
        h, first = pb.header, pb.stage_bytes(0, 0)
        if first > pb.budget[h]:
            return (f"allocation.header pins device {h} ({pb.device_names[h]}), whose budget "
                    f"{pb.budget[h] / 1e9:.2f} GB cannot hold module 0 ({pb.module_names[0]}), which needs "
                    f"{first / 1e9:.2f} GB: pin a phone with more memory, or remove allocation.header")
    w, kv, act = pb.weight_bytes.sum(), pb.kv_bytes.sum(), pb.act_bytes.max()
    parts = f"weights {w / 1e9:.2f} GB + KV {kv / 1e9:.2f} GB + activations {act / 1e9:.2f} GB"
    biggest = max(range(pb.n_modules), key=lambda m: pb.weight_bytes[m] + pb.kv_bytes[m] + pb.act_bytes[m])
    big = pb.weight_bytes[biggest] + pb.kv_bytes[biggest] + pb.act_bytes[biggest]
    if need <= have and big <= pb.budget.max():
        return (f"the model does not fit the cluster as contiguous stages: it needs {need / 1e9:.2f} GB ({parts}) and "
                f"the budgets total {have / 1e9:.2f} GB, but no "
                "contiguous split fits every phone's budget; add a device or lower the context/concurrency")
    missing = max(need - have, 0.0)
    msg = (f"the model does not fit the cluster: it needs {need / 1e9:.2f} GB ({parts}) but the devices' budgets "
           f"total {have / 1e9:.2f} GB")
    if missing > 0:
        msg += f": {missing / 1e9:.2f} GB missing"
    if big > pb.budget.max():
        msg += (f"; module {biggest} ({pb.module_names[biggest]}) alone needs {big / 1e9:.2f} GB, more than any "
                f"device's budget ({pb.budget.max() / 1e9:.2f} GB)")
    opts = []
    seen = set()
    for d in devices:
        key = d.profile.name
        if key in seen:
            continue
        seen.add(key)
        if d.budget_bytes >= big:
            k = max(1, math.ceil(missing / d.budget_bytes)) if missing > 0 else 1
            opts.append(f"{k} more {key} ({d.budget_bytes / 1e9:.2f} GB budget each)")
    if opts:
        msg += "; it would fit with " + " or ".join(opts)
    else:
        msg += "; no device of this cluster can hold that module: add a phone with more RAM, or use int8 weights"
    return msg + " (or lower workload.concurrency / the context in kv_cache mode)"


def plan_problem(s: registry.Strategy, pb: AllocProblem) -> Plan:
    """The plan of an ``order`` or ``plan`` strategy for ``pb`` (order: every device, header first)."""
    if s.kind == "order":
        return s.fn(pb.n_modules, header_first(list(range(pb.n_devices)), pb.header))
    return s.fn(pb)


def solve_milp(pb: AllocProblem, sc, evaluate) -> AllocResult:
    a = sc.allocation if sc is not None else None
    r = milp.solve(pb, time_limit=a.time_limit_s if a else 30.0, mip_gap=a.mip_gap if a else 1e-6, evaluate=evaluate)
    info = {"solver": r.solver, "status": r.status, "objective_ms": r.objective_ms, "bound_ms": r.bound_ms,
            "gap": r.gap, "variables": r.n_vars, "constraints": r.n_constraints, "rounds": r.iterations,
            "power_save_consistent": r.wake_consistent, "build_time_s": r.build_time_s,
            **{k: r.info[k] for k in ("selected", "candidates", "evaluated", "exact", "model_value_ms", "phase_s") if k in r.info}}
    return AllocResult("milp", r.plan, None, r.info.get("total_time_s", r.solve_time_s), info)


def solve_oracle(pb: AllocProblem, sc, evaluate=None) -> AllocResult:
    """The exact oracle of the linear model (DP), or under the full power-save model (branch and bound)."""
    why = oracle.supported(pb)
    if why:
        return AllocResult("oracle", None, None, 0.0, {"skipped": why}, error=why)
    t0 = time.perf_counter()
    if oracle.needs_full_model(pb):
        try:
            r = oracle.solve_full(pb)
        except ValueError as e:
            return AllocResult("oracle", None, None, time.perf_counter() - t0, {"skipped": str(e)}, error=str(e))
        return AllocResult("oracle", r.plan, None, time.perf_counter() - t0,
                           {"states": r.states, "model": "full (power-save wake-ups replayed)"})
    r = oracle.solve(pb)
    return AllocResult("oracle", r.plan, None, time.perf_counter() - t0, {"states": r.states, "model": "linear"})


def allocate_problem(pb: AllocProblem, strategy: str, sc=None, devices=None, evaluate=None) -> AllocResult:
    """Plan ``pb`` with one strategy; the plan's prediction carries the linear model's figures and
    the finer evaluation's (``evaluate``: default the problem's model, exact for one request in
    flight; :func:`llsim.judge.evaluate.evaluator_for` judges by simulation)."""
    s = registry.get(strategy)
    if s is None or not s.judged:
        raise LLSimError(f"allocation.strategy: {registry.unknown(strategy, judged_only=True)}")
    if evaluate is None:
        def evaluate(plan):
            return model_evaluation(pb, plan)
    if s.kind == "solver":
        res = s.fn(pb, sc, evaluate)
    else:
        t0 = time.perf_counter()
        plan = plan_problem(s, pb)
        res = AllocResult(strategy, plan, None, time.perf_counter() - t0)
    if res.plan is not None:
        res.prediction = pb.evaluate(res.plan)
        if not res.prediction.feasible and res.error is None:
            res.error = "over memory budget on " + ", ".join(f"{n} by {b / 1e9:.2f} GB"
                                                              for n, b in res.prediction.overflow)
        else:
            ev = evaluate(res.plan)
            res.prediction.evaluated_latency_s = ev.latency_s
            res.prediction.evaluated_tokens_per_s = ev.tokens_per_s
            res.prediction.evaluated_by = ev.by
    elif res.error is None:
        res.error = memory_diagnosis(pb, devices) if devices is not None else "no feasible plan"
    return res


def allocate(sc, devices, strategy: str | None = None, objective: str | None = None,
             problem: AllocProblem | None = None, evaluator=None) -> AllocResult:
    """Plan a scenario with one strategy; raises :class:`LLSimError` when the model cannot fit.
    ``evaluator(pb, sc, devices)``: makes the finer evaluation (default: the problem's model)."""
    strategy = strategy or sc.allocation.strategy
    pb = problem or build_problem(sc, devices, objective)
    if pb.memory_need() > pb.budget.sum():
        raise LLSimError((f"{sc.path}: " if sc.path else "") + memory_diagnosis(pb, devices))
    res = allocate_problem(pb, strategy, sc, devices, evaluator(pb, sc, devices) if evaluator else None)
    if strategy == "milp" and res.plan is None:
        raise LLSimError(res.error or "the allocator found no plan")
    return res
