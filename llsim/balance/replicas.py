"""Overlap replicas (LinguaLinked's second optimisation): boundary modules of each stage are also
stored on its ring neighbours, within their memory slack, so a later boundary shift needs no
weight transfer.

Each phone in the plan extends its held range outward from its own modules, alternately into its
predecessor's tail and its successor's head (so both of its boundaries can move), one module at a
time while the weights fit in ``budget - need(own stage)``: LinguaLinked maximises replicated
memory within the budget; alternating keeps both directions of a shift open. A neighbour always
keeps at least one module of its own. The result is, per device, the contiguous module range
whose weights it holds (own range included).
"""
from __future__ import annotations

from llsim.alloc.plan import Plan
from llsim.alloc.problem import AllocProblem

Holdings = dict[int, tuple[int, int]]  # device -> (first, last) module whose weights it should hold


def own_ranges(plan: Plan) -> Holdings:
    return {s.device: (s.start_module, s.end_module) for s in plan.stages}


def overlap_replicas(pb: AllocProblem, plan: Plan) -> Holdings:
    stages = plan.stages
    held: Holdings = {}
    for i, s in enumerate(stages):
        slack = pb.budget[s.device] - pb.stage_bytes(s.start_module, s.end_module)
        lo, hi = s.start_module, s.end_module
        lo_min = stages[i - 1].start_module + 1 if i > 0 else lo
        hi_max = stages[i + 1].end_module - 1 if i + 1 < len(stages) else hi
        grow = True
        while grow:
            grow = False
            for side in (-1, 1):  # predecessor's tail, then successor's head
                m = lo - 1 if side < 0 else hi + 1
                if (side < 0 and m < lo_min) or (side > 0 and m > hi_max):
                    continue
                w = float(pb.weight_bytes[m])
                if w <= slack:
                    slack -= w
                    lo, hi = (m, hi) if side < 0 else (lo, m)
                    grow = True
        held[s.device] = (lo, hi)
    return held


def replica_bytes(pb: AllocProblem, plan: Plan, held: Holdings) -> dict[int, float]:
    """Weight bytes each device holds beyond its own stage."""
    own = own_ranges(plan)
    out = {}
    for d, (lo, hi) in held.items():
        a, b = own.get(d, (0, -1))
        out[d] = float(pb.weight_bytes[lo:hi + 1].sum() - (pb.weight_bytes[a:b + 1].sum() if b >= a else 0.0))
    return out


def standby_replicas(pb: AllocProblem, plan: Plan, idle: list[int], risk: dict[int, float] | None = None) -> Holdings:
    """Standby copies on phones outside the plan: each idle phone holds one contiguous module range
    that it could run as a stage (weights + KV + activations within its budget), so that a re-plan
    or a failover around it moves no weights.

    Expected benefit decides what is copied: a stage's benefit is its phone's ``risk`` (how likely
    it is to slow down or leave; :meth:`llsim.balance.horizon.Episodes.risk`) times the weight bytes
    a re-plan would otherwise have to move, halved for each copy already made. The fastest idle
    phone takes the stage of highest benefit first; its range covers that stage (as much of it as
    fits) and grows alternately into the neighbouring stages while it fits."""
    risk = risk or {}
    n = pb.n_modules
    speed = pb.thr.compute.sum(axis=1) + pb.overhead
    copies = {i: 0 for i in range(len(plan.stages))}
    held: Holdings = {}
    for d in sorted(idle, key=lambda x: (speed[x], x)):
        budget = float(pb.budget[d])
        if budget <= 0:
            continue

        def benefit(i):
            s = plan.stages[i]
            return risk.get(s.device, 1.0) * float(pb.weight_bytes[s.start_module:s.end_module + 1].sum()) / 2 ** copies[i]
        i = max(copies, key=lambda k: (benefit(k), -k))
        s = plan.stages[i]
        lo, hi = s.start_module, s.start_module
        if pb.stage_bytes(lo, hi) > budget:
            continue
        while hi < s.end_module and pb.stage_bytes(lo, hi + 1) <= budget:  # the stage, as much as fits
            hi += 1
        grow = hi == s.end_module
        while grow:  # then its neighbours' modules, alternately before and after
            grow = False
            if lo > 0 and pb.stage_bytes(lo - 1, hi) <= budget:
                lo, grow = lo - 1, True
            if hi + 1 < n and pb.stage_bytes(lo, hi + 1) <= budget:
                hi, grow = hi + 1, True
        copies[i] += 1
        held[d] = (lo, hi)
    return held
