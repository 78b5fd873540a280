"""The oracle: exact dynamic programming over ordered device subsets, for small instances.

An independent second solver of the same model as the MILP (:mod:`llsim.alloc.milp`), used to
measure the MILP's optimality gap and in tests. States are (devices used so far, last device,
next module); a transition appends a stage (device, modules a..b) and pays its compute, the
bytes it receives (from the previous stage, and from the header for the residual/mask tensors),
half an RTT and the power-save charge of its input hop. The header (the first stage) is fixed per
outer loop, so the tensors it sends are priced with its sending cost. Latency labels are scalars;
throughput labels are Pareto sets of (busiest compute, airtime, ring latency), because the
objective ``max(compute, airtime, ring / N)`` is not additive.

Exact for models whose crossing tensors are either sequential (module m to m+1) or produced in
module 0 / a graph input (all zoo models); :func:`supported` says so for a problem. Exponential
in the number of devices: meant for up to 6 devices x 32 modules.

With power save and one request in flight, whether a phone dozes depends on the whole plan's
timeline, so no DP over partial plans is exact. :func:`solve_full` is then an exact branch and
bound under the full model (:meth:`AllocProblem.evaluate`, which replays the wake-ups): plans are
grown stage by stage, and a partial plan is cut when its additive ring latency without wake-up
charges plus the cheapest completion (every remaining module on whichever phone is cheapest, a
relaxation) cannot beat the best complete plan; charges are >= 0, so nothing better is cut.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from llsim.alloc.plan import Plan, StagePlan, plan_from_backpointers
from llsim.alloc.problem import AllocProblem, View
from llsim.cost.steps import TOKEN_BYTES

MAX_DEVICES = 6
MAX_MODULES = 32


def supported(pb: AllocProblem) -> str | None:
    """None if the oracle can solve ``pb`` exactly, else why not."""
    if pb.n_devices > MAX_DEVICES or pb.n_modules > MAX_MODULES:
        return f"oracle limited to {MAX_DEVICES} devices x {MAX_MODULES} modules"
    for g in pb.lat.tensors:
        if not (g.source == 0 or g.consumers == (g.source + 1,)):
            return f"tensor group {g.names[:1]} is produced in module {g.producer} and used beyond the next module"
    return None


@dataclass
class OracleResult:
    plan: Plan | None
    objective_s: float
    solve_time_s: float
    states: int


class _Pricer:
    """Costs of appending a stage, for one view."""

    def __init__(self, pb: AllocProblem, view: View, links, header: int, with_latency: bool,
                 wake: dict[int, float]):
        n = pb.n_modules
        self.pb, self.links, self.h = pb, links, header
        self.pre = np.concatenate([np.zeros((pb.n_devices, 1)), np.cumsum(view.compute, axis=1)], axis=1)
        self.loss = links.loss_per_byte_s if with_latency else 0.0
        self.lat = with_latency
        self.wake = wake
        # bytes a stage starting at a receives from its predecessor (sequential) and from the header
        self.seq_in = np.zeros(n + 1)
        head_groups = []
        for g in view.tensors:
            if g.consumers == (g.source + 1,) and g.source != 0:
                self.seq_in[g.source + 1] += g.nbytes
            elif g.source == 0 and g.consumers == (1,):
                self.seq_in[1] += g.nbytes
            else:
                head_groups.append(g)
        self.head_groups = head_groups

    def compute(self, d: int, a: int, b: int) -> float:
        return float(self.pb.overhead[d] + self.pre[d, b + 1] - self.pre[d, a])

    def receive(self, prev: int, d: int, a: int, b: int) -> float:
        """Transfers into stage (d, a..b) after stage ``prev`` (a >= 1)."""
        L = self.links
        c = self.seq_in[a] * (L.out[prev] + L.inb[d] + self.loss)
        for g in self.head_groups:
            if any(a <= x <= b for x in g.consumers):
                c += g.nbytes * (L.out[self.h] + L.inb[d] + self.loss)
        if self.lat:
            c += L.one_way_s + self.wake.get(d, 0.0)
        return c

    def token(self, tail: int) -> float:
        L = self.links
        c = TOKEN_BYTES * self.pb.batch * (L.out[tail] + L.inb[self.h] + self.loss)
        if self.lat:
            c += L.one_way_s + self.wake.get(self.h, 0.0)
        return c


def _next_stages(D: int, n: int, mask: int, a: int, fits):
    """Every stage (d, b) that can follow a partial plan ending before module ``a``: a device ``d``
    not yet in ``mask`` taking modules a..b, b growing while the stage fits (memory is monotone in b)."""
    for d in range(D):
        if mask >> d & 1:
            continue
        for b in range(a, n):
            if not fits(d, a, b):
                break
            yield d, b


def _pareto(labels: list[tuple]) -> list[tuple]:
    labels.sort()
    out: list[tuple] = []
    for lab in labels:
        if not any(all(o[i] <= lab[i] for i in range(3)) for o in out):
            out.append(lab)
    return out


def solve(pb: AllocProblem, objective: str | None = None, wake: dict[int, float] | None = None) -> OracleResult:
    why = supported(pb)
    if why:
        raise ValueError(why)
    objective = objective or pb.objective
    wake = wake or {}
    t0 = time.perf_counter()
    n, D = pb.n_modules, pb.n_devices
    fits = pb.fits  # the problem's stage memory (weights + KV + activation buffer) within the budget

    best_val, best_plan, states = float("inf"), None, 0
    headers = [pb.header] if pb.header is not None else range(D)
    for h in headers:
        if objective == "latency":
            pr = _Pricer(pb, pb.lat, pb.lat.links, h, True, wake)
            # label: (cost, back-pointer)
            table: dict[tuple[int, int, int], tuple[float, tuple | None, tuple]] = {}
            for b in range(n):
                if fits(h, 0, b):
                    table[(1 << h, h, b + 1)] = (pr.compute(h, 0, b) + pb.sample_s, None, (h, 0, b))
            for a in range(1, n + 1):
                for (mask, last, nxt), (cost, _, _) in sorted((k, v) for k, v in table.items() if k[2] == a):
                    states += 1
                    if a == n:
                        tot = cost + (pr.token(last) if mask != 1 << h else 0.0)
                        if tot < best_val - 1e-15:
                            best_val, best_plan = tot, plan_from_backpointers(table, (mask, last, nxt), "oracle")
                        continue
                    for d, b in _next_stages(D, n, mask, a, fits):
                        c = cost + pr.compute(d, a, b) + pr.receive(last, d, a, b)
                        key = (mask | 1 << d, d, b + 1)
                        if key not in table or c < table[key][0]:
                            table[key] = (c, (mask, last, a), (d, a, b))
        else:
            lat = _Pricer(pb, pb.thr, pb.thr.links, h, True, wake)
            air = _Pricer(pb, pb.thr, pb.thr.links, h, False, {})
            shared = pb.thr.links.shared
            N = pb.in_flight
            labels: dict[tuple[int, int, int], list] = {}
            for b in range(n):
                if fits(h, 0, b):
                    c = lat.compute(h, 0, b)
                    labels.setdefault((1 << h, h, b + 1), []).append((c, 0.0, c + pb.sample_s, None, (h, 0, b)))
            for a in range(1, n + 1):
                for key in sorted(k for k in labels if k[2] == a):
                    mask, last, _ = key
                    labs = labels[key]
                    states += len(labs)
                    for lab in labs:
                        mc, ar, rg = lab[:3]
                        if a == n:
                            if mask != 1 << h:
                                ar2 = ar + air.token(last)
                                rg2 = rg + lat.token(last)
                            else:
                                ar2, rg2 = ar, rg
                            val = max(mc, ar2 if shared else 0.0, rg2 / N)
                            if val < best_val - 1e-15:
                                best_val, best_plan = val, _backtrack_labels(labels, key, lab)
                            continue
                        for d, b in _next_stages(D, n, mask, a, fits):
                            c = lat.compute(d, a, b)
                            nl = (max(mc, c), ar + air.receive(last, d, a, b), rg + c + lat.receive(last, d, a, b),
                                  (key, lab), (d, a, b))
                            if max(nl[0], nl[2] / N) >= best_val:
                                continue
                            labels.setdefault((mask | 1 << d, d, b + 1), []).append(nl)
                nxt = a + 1
                for key in [k for k in labels if k[2] == nxt]:
                    labels[key] = [lab for lab in _pareto_full(labels[key])]
    return OracleResult(best_plan, best_val, time.perf_counter() - t0, states)


def _pareto_full(labs: list[tuple]) -> list[tuple]:
    keep = _pareto([lab[:3] for lab in labs])
    ks = set(keep)
    out, seen = [], set()
    for lab in labs:
        if lab[:3] in ks and lab[:3] not in seen:
            seen.add(lab[:3])
            out.append(lab)
    return out


def _backtrack_labels(labels, key, lab) -> Plan:
    stages = []
    while True:
        stages.append(StagePlan(*lab[4]))
        if lab[3] is None:
            break
        key, lab = lab[3]
    return Plan(tuple(reversed(stages)), "oracle")


def needs_full_model(pb: AllocProblem) -> bool:
    """Power save with one request in flight: the DP's per-device charges are not exact."""
    return pb.in_flight == 1 and pb.lat.links.wake_s > 0 and pb.n_devices > 1 and bool(pb.step_costs)


def solve_full(pb: AllocProblem, objective: str | None = None, max_nodes: int = 2_000_000) -> OracleResult:
    """Exact optimum under the full model (power-save wake-ups replayed), by branch and bound.

    Raises ``ValueError`` when the search would exceed ``max_nodes`` partial plans (the instance is
    too large for an exhaustive proof)."""
    why = supported(pb)
    if why:
        raise ValueError(why)
    objective = objective or pb.objective
    t0 = time.perf_counter()
    n, D = pb.n_modules, pb.n_devices
    view = pb.lat if objective == "latency" else pb.thr
    fits = pb.fits  # the problem's stage memory (weights + KV + activation buffer) within the budget

    # a first incumbent: the DP's optimum of the charge-free model, priced under the full model
    best_plan = solve(pb, objective).plan
    best_val = pb.value(best_plan, objective) if best_plan is not None else float("inf")
    nodes = 0
    headers = [pb.header] if pb.header is not None else range(D)
    for h in headers:
        pr = _Pricer(pb, view, view.links, h, True, {})
        # cheapest completion from module a (any phone, any number of stages, distinctness relaxed)
        rest = np.full(n + 1, np.inf)
        rest[n] = 0.0
        for a in range(n - 1, 0, -1):
            for b in range(a, n):
                c = min((pr.compute(d, a, b) + min(pr.receive(p, d, a, b) for p in range(D) if p != d)
                         for d in range(D) if d != h and fits(d, a, b)), default=np.inf)
                rest[a] = min(rest[a], c + rest[b + 1])
        tok_min = min((pr.token(d) for d in range(D) if d != h), default=0.0)
        stack: list[tuple[float, int, int, tuple]] = []
        for b in range(n):
            if fits(h, 0, b):
                stack.append((pr.compute(h, 0, b) + pb.sample_s, b + 1, 1 << h, ((h, 0, b),)))
        while stack:
            cost, a, mask, stages = stack.pop()
            nodes += 1
            if nodes > max_nodes:
                raise ValueError(f"the exact power-save search exceeds {max_nodes} partial plans")
            if a == n:
                plan = Plan(tuple(StagePlan(*st) for st in stages), "oracle")
                v = pb.value(plan, objective)
                if v < best_val - 1e-15:
                    best_val, best_plan = v, plan
                continue
            if cost + rest[a] + (tok_min if len(stages) else 0.0) >= best_val:
                continue
            last = stages[-1][0]
            for d, b in _next_stages(D, n, mask, a, fits):
                c = cost + pr.compute(d, a, b) + pr.receive(last, d, a, b)
                done = c + (pr.token(d) if b == n - 1 else rest[b + 1] + tok_min)
                if done < best_val:
                    stack.append((c + (pr.token(d) if b == n - 1 else 0.0), b + 1, mask | 1 << d,
                                  stages + ((d, a, b),)))
    return OracleResult(best_plan, best_val, time.perf_counter() - t0, nodes)
