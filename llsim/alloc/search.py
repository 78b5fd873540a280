"""The ``milp`` strategy: exact solves of the linear model, then a finer evaluation picks the plan.

1. **Candidates.** The peers' plans (:mod:`llsim.alloc.baselines`), which also give an upper
   bound that prunes the MILP's stages; with several requests in flight, local searches from the
   best of them under the linear model (:func:`improve` over single moves, :func:`order_search`
   over device orders each with its best bottleneck cuts), incumbents for the MILP; the MILP
   optimum of the objective's linear model (:func:`llsim.alloc.milp.solve_once`; with several
   requests in flight the exact cycle search, within ``CYCLE_TOL`` of its LP bound, for models of
   up to ``EXACT_UP_TO_ARCS`` stage columns; above that (where one MILP's root alone can take
   seconds) ``MAX_MILPS`` MILPs of ``NODE_LIMIT`` nodes: by default only its LP relaxations, each
   rounded to a plan, which bracket the optimum, the gap reported), an order search from it, and
   the best plan's neighbours under the linear model, including the best with one stage fewer
   and one more (a shallower or deeper ring that the simulation may prefer). ``tie_eps > 0`` adds
   the fewest-stage plan within that band of the optimum (one more MILP).
2. **Power save** (one request in flight): the MILP takes wake-up charges as data; it is re-solved
   under the charges its plan really incurs until they repeat
   (:meth:`AllocProblem.power_save_fixed_point`), and the result is finished by a local search
   under the full plan evaluation (:func:`improve`: move a boundary, drop a stage, swap, replace,
   add or split a phone), since whether a phone dozes depends on the timeline.
3. **Selection** by the finer evaluation (:mod:`llsim.alloc.evaluate`): the exact model with one
   request in flight, a short simulation of the scenario with several. Candidates are judged in
   the order of their linear value (plans it ties, the more balanced first), at most
   ``max_evaluated`` of them plus the peers' plans, none whose linear value (nearly a lower
   bound) exceeds the best evaluated score by more than ``BAND``. Ties (within 1e-6) go to fewer
   stages, then the shorter ring (one request's latency).

Everything is a function of the problem (no wall-clock cut-offs), so the same scenario gives
the same plan.
"""
from __future__ import annotations

import time
from bisect import bisect_right

import numpy as np
from dataclasses import dataclass

from llsim.alloc.evaluate import Evaluation, model_evaluation
from llsim.alloc.milp import MilpResult, solve_once
from llsim.alloc.plan import Plan, StagePlan
from llsim.alloc.problem import AllocProblem

MAX_EVALUATED = 4  # candidates judged by the finer evaluation, at most (twice that for up to 6 phones)
BAND = 0.10  # a candidate whose linear value (about a lower bound) exceeds the best score so far by more is not judged
SAME = 1e-6  # evaluations closer than this (relative) are ties
CYCLE_TOL = 0.005  # the cycle search may stop this close to the linear optimum (several in flight)
NEIGHBOURS = 4  # neighbours of the MILP plan added as candidates (several in flight)
FREE_PHONES = 6  # phones outside the ring that a local move may bring in
NODE_LIMIT = 100  # branch-and-bound nodes per MILP of the cycle search (several in flight; deterministic)
MAX_MILPS = 0  # MILPs per cycle search of a large model (several in flight): each costs seconds there
EXACT_UP_TO_ARCS = 1500  # ... but a model of at most this many stage columns is solved exactly
POWER_SAVE_STARTS = 2  # local searches from the best plans by the full model and by the charge-free one


@dataclass
class Candidate:
    plan: Plan
    source: str
    value: float  # the linear model's value (seconds per token)
    evaluation: Evaluation | None = None
    peer: bool = False  # a peer strategy's plan: always judged when its value is within the band
    balance: float = 0.0  # sum of squared stage times: orders plans the linear model ties


def _key(p: Plan) -> tuple:
    return tuple((s.device, s.start_module, s.end_module) for s in p.stages)


def solve(pb: AllocProblem, objective: str | None = None, time_limit: float = 30.0, mip_gap: float = 1e-6,
          tie_eps: float = 0.0, evaluate=None, max_evaluated: int = MAX_EVALUATED) -> MilpResult:
    from llsim import registry
    from llsim.alloc.strategies import plan_problem

    objective = objective or pb.objective
    if evaluate is None:
        def evaluate(p):
            return model_evaluation(pb, p)
    t0 = time.perf_counter()
    cands: dict[tuple, Candidate] = {}

    def add(plan: Plan | None, source: str, peer: bool = False) -> None:
        if plan is None:
            return
        if _key(plan) in cands:
            cands[_key(plan)].peer |= peer
            return
        e = pb.evaluate(plan)
        if e.feasible:
            value, balance = _rank(pb, plan, objective)
            cands[_key(plan)] = Candidate(plan, source, value, peer=peer, balance=balance)

    clock = {"baselines": time.perf_counter()}
    for s in registry.peers():
        add(plan_problem(s, pb), f"{s.name} plan", peer=True)
    if pb.in_flight > 1 and cands:  # strong incumbents for the MILP: the best peer plan, improved
        best = min(cands.values(), key=lambda c: (c.value, len(c.plan.stages)))
        add(improve(pb, best.plan, objective), "local search from the best peer plan")
        add(order_search(pb, best.plan, objective), "order search from the best peer plan")
    ub = min((c.value for c in cands.values()), default=None)
    clock["milp"] = time.perf_counter()

    results: list[MilpResult] = []

    several = pb.in_flight > 1

    def once(wake):
        upper = None if ub is None else ub + sum(wake.values())  # a plan's model value <= its value + charges
        known = [c.plan for c in sorted(cands.values(), key=lambda c: c.value)] if several else []
        r = solve_once(pb, objective, time_limit, mip_gap, wake, upper, tie_eps=tie_eps,
                       tol=CYCLE_TOL if several else 0.0, incumbents=known,
                       node_limit=NODE_LIMIT if several else None, max_milps=MAX_MILPS if several else None,
                       exact_up_to_arcs=EXACT_UP_TO_ARCS)
        results.append(r)
        add(r.plan, "milp" if not wake else "milp (power-save round)")
        return r.plan

    plan, rounds, consistent = pb.power_save_fixed_point(once, objective)
    if plan is None:
        t = time.perf_counter() - t0
        r = results[-1] if results else MilpResult(None, "Infeasible", "highs", None, None, None, t, 0.0, 0, 0)
        r.info["total_time_s"] = t
        return r
    main = next(r for r in results if r.plan == plan)
    clock["candidates"] = time.perf_counter()
    if several:
        add(main.info.pop("near_plan", None), "milp (fewest stages near the optimum)")
        add(order_search(pb, plan, objective), "order search from the milp plan")
        best = min(cands.values(), key=lambda c: (c.value, c.balance, len(c.plan.stages)))
        for p in best_neighbours(pb, best.plan, objective):
            add(p, "neighbour of the best plan")
    elif pb.lat.links.wake_s > 0 and pb.n_devices > 1:
        # wake-ups make the landscape rugged: climb from the best plans by the full model and by the
        # model without charges (the MILP's first round: a good cut whose phones may doze)
        by_full = sorted(cands.values(), key=lambda c: (c.value, len(c.plan.stages)))
        by_bare = sorted(cands.values(), key=lambda c: (_lower_bound(pb, c.plan, objective), len(c.plan.stages)))
        starts = []
        for c in by_full[:POWER_SAVE_STARTS] + by_bare[:POWER_SAVE_STARTS]:
            if c.plan not in starts:
                starts.append(c.plan)
        for p in starts:
            add(improve(pb, p, objective), "local search (full power-save model)")
    clock["evaluation"] = time.perf_counter()
    if max_evaluated == MAX_EVALUATED and pb.n_devices <= 6:  # small rings simulate fast: judge more
        max_evaluated = 2 * MAX_EVALUATED
    chosen = _select(pb, list(cands.values()), objective, evaluate, max_evaluated)
    clock["end"] = time.perf_counter()
    names = list(clock)
    main.plan = Plan(chosen.plan.stages, "milp")
    main.iterations = rounds
    main.wake_consistent = consistent
    main.info.update({
        "total_time_s": time.perf_counter() - t0, "selected": chosen.source, "candidates": len(cands),
        "evaluated": sum(c.evaluation is not None for c in cands.values()),
        "evaluation": chosen.evaluation, "model_value_ms": chosen.value * 1e3,
        "exact": not several and (pb.lat.links.wake_s <= 0 or consistent),
        "phase_s": {a: round(clock[b] - clock[a], 4) for a, b in zip(names, names[1:])},
    })
    return main


def _select(pb: AllocProblem, cands: list[Candidate], objective: str, evaluate, max_evaluated: int) -> Candidate:
    """The best candidate by the finer evaluation (ties: fewer stages, then the shorter ring)."""
    # in the order of the linear value, plans it ties (a network-bound plateau) balanced first
    cands.sort(key=lambda c: (round(c.value, 12), c.balance, len(c.plan.stages), _key(c.plan)))
    best_score = float("inf")
    judged: list[Candidate] = []
    for c in cands:
        if c.value > best_score * (1 + BAND):
            break
        if len(judged) >= max_evaluated and not c.peer:  # a peer's plan is always judged in the band
            continue
        c.evaluation = evaluate(c.plan)
        judged.append(c)
        best_score = min(best_score, c.evaluation.score(objective))
    if best_score == float("inf"):  # nothing evaluated cleanly: the linear model decides
        return cands[0]
    tied = [c for c in judged if c.evaluation.score(objective) <= best_score * (1 + SAME)]
    return min(tied, key=lambda c: (len(c.plan.stages), pb.evaluate(c.plan).ring_latency_s, _key(c.plan)))


# ---- local search under the full model ------------------------------------------------------------
def _neighbours(pb: AllocProblem, plan: Plan):
    st = list(plan.stages)
    K, n = len(st), pb.n_modules
    used = {s.device for s in st}
    free = _fastest_free(pb, used)

    def make(stages):
        return Plan(tuple(StagePlan(*s) for s in stages), "local")

    tup = [(s.device, s.start_module, s.end_module) for s in st]
    for i in range(1, K):  # move boundary i
        for delta in (-8, -4, -2, -1, 1, 2, 4, 8):
            a = tup[i][1] + delta
            if tup[i - 1][1] < a <= tup[i][2]:
                t = list(tup)
                t[i - 1] = (t[i - 1][0], t[i - 1][1], a - 1)
                t[i] = (t[i][0], a, t[i][2])
                yield make(t)
    for i in range(K):  # drop stage i (its modules to a neighbour)
        if K == 1 or (i == 0 and pb.header is not None):
            continue
        t = list(tup)
        if i > 0:
            t2 = t[:i - 1] + [(t[i - 1][0], t[i - 1][1], t[i][2])] + t[i + 1:]
            yield make(t2)
        if i < K - 1:
            t2 = t[:i] + [(t[i + 1][0], t[i][1], t[i + 1][2])] + t[i + 2:]
            yield make(t2)
    first = 1 if pb.header is not None else 0
    for i in range(first, K):  # swap two stages' phones
        for j in range(i + 1, K):
            t = list(tup)
            t[i], t[j] = (tup[j][0], tup[i][1], tup[i][2]), (tup[i][0], tup[j][1], tup[j][2])
            yield make(t)
    for i in range(first, K):  # another phone for stage i
        for d in free:
            t = list(tup)
            t[i] = (d, tup[i][1], tup[i][2])
            yield make(t)
    for i in range(K):  # split stage i with a phone that is not in the ring
        d0, a, b = tup[i]
        if b <= a:
            continue
        for m in sorted({a + (b - a + 1) // 3, a + (b - a + 1) // 2, a + 2 * (b - a + 1) // 3} - {a}):
            for d in free:
                yield make(tup[:i] + [(d0, a, m - 1), (d, m, b)] + tup[i + 1:])
                if i > 0 or pb.header is None:
                    yield make(tup[:i] + [(d, a, m - 1), (d0, m, b)] + tup[i + 1:])


def _fastest_free(pb: AllocProblem, used: set[int], k: int = FREE_PHONES) -> list[int]:
    """The ``k`` fastest phones not in the ring (one of each kind of phone first): what moves that
    bring a phone in try, so a search's neighbourhood does not grow with the cluster."""
    speed = pb.lat.compute.sum(axis=1) + pb.overhead
    out, kinds = [], set()
    order = sorted((d for d in range(pb.n_devices) if d not in used and pb.budget[d] > 0),
                   key=lambda d: (speed[d], d))
    for d in order:  # distinct kinds first: identical phones are interchangeable
        if pb.device_keys[d] not in kinds:
            kinds.add(pb.device_keys[d])
            out.append(d)
    out += [d for d in order if d not in out]
    return sorted(out[:k])


def best_neighbours(pb: AllocProblem, plan: Plan, objective: str, k: int = NEIGHBOURS) -> list[Plan]:
    """The ``k`` best feasible neighbours of ``plan`` by the linear model, the best with one stage
    fewer and one more among them when they exist (the finer evaluation may prefer another depth)."""
    K = len(plan.stages)
    scored = []
    for nb in _neighbours(pb, plan):
        if all(pb.fits(s.device, s.start_module, s.end_module) for s in nb.stages):
            scored.append((pb.value(nb, objective), len(nb.stages), _key(nb), nb))
    scored.sort(key=lambda x: x[:3])
    out: list[Plan] = []
    for depth in (K - 1, K + 1):
        out += [x[3] for x in scored if x[1] == depth][:1]
    out += [x[3] for x in scored if x[3] not in out][:max(0, k - len(out))]
    return out


def improve(pb: AllocProblem, plan: Plan, objective: str | None = None, max_rounds: int = 100) -> Plan:
    """First-improvement hill-climb from ``plan`` under the full model (:meth:`AllocProblem.evaluate`,
    power-save replay included). A neighbour is priced only when its value without wake-up
    charges (a lower bound: charges are >= 0) could beat the current plan."""
    objective = objective or pb.objective
    cur, cur_v = plan, _rank(pb, plan, objective)
    seen = {_key(plan)}
    for _ in range(max_rounds):
        for nb in _neighbours(pb, cur):
            k = _key(nb)
            if k in seen:
                continue
            seen.add(k)
            if any(not pb.fits(s.device, s.start_module, s.end_module) for s in nb.stages):
                continue
            if _lower_bound(pb, nb, objective) > cur_v[0] * (1 + 1e-12):
                continue
            v = _rank(pb, nb, objective)
            if v[0] < cur_v[0] * (1 - 1e-12) or (v[0] <= cur_v[0] * (1 + 1e-12) and v[1] < cur_v[1] * (1 - 1e-9)):
                cur, cur_v = nb, v
                break
        else:
            break
    return Plan(cur.stages, "local")


def _rank(pb: AllocProblem, plan: Plan, objective: str) -> tuple[float, float]:
    """(the linear value, a tie-breaker): a min-max value has plateaus where no single move lowers
    the maximum; the sum of squared stage times then says which plan is more balanced."""
    view = pb.lat if objective == "latency" else pb.thr
    sq = sum(pb.stage_compute(view, s.device, s.start_module, s.end_module) ** 2 for s in plan.stages)
    return pb.value(plan, objective), sq


def _lower_bound(pb: AllocProblem, plan: Plan, objective: str) -> float:
    """The plan's linear value with no power-save charge."""
    if objective == "latency" and pb.in_flight == 1:
        return pb.ring_latency(pb.lat, plan)
    view = pb.lat if objective == "latency" else pb.thr
    scale = pb.in_flight if objective == "latency" else 1
    return scale * pb.cycle(view, plan)


# ---- search over device orders, each with its best bottleneck cuts (several in flight) -----------
def balanced_cuts(pb: AllocProblem, order: list[int], view) -> Plan | None:
    """The plan over ``order`` (a prefix of it may suffice) whose slowest stage is fastest, within
    memory: a binary search on the bottleneck with greedy filling (each phone takes as many
    modules as fit under the bottleneck and its budget), which is exact for a fixed order."""
    n = pb.n_modules
    pre, mem_end = _cut_tables(pb, view)
    ov = [float(pb.overhead[d]) for d in range(pb.n_devices)]

    def fill(theta: float) -> list[tuple[int, int, int]] | None:
        a, out = 0, []
        for d in order:
            if a == n:
                break
            # the last b with compute(d, a..b) <= theta, and within d's memory from a
            b = min(bisect_right(pre[d], pre[d][a] + theta - ov[d]) - 2, mem_end[d][a])
            if b < a:
                return None
            out.append((d, a, b))
            a = b + 1
        return out if a == n else None

    lo, hi = 0.0, max(ov[d] + pre[d][n] for d in order)
    if fill(hi) is None:  # memory alone rules this order out
        return None
    for _ in range(24):
        mid = (lo + hi) / 2
        if fill(mid) is not None:
            hi = mid
        else:
            lo = mid
    return Plan(tuple(StagePlan(*s) for s in fill(hi)), "order")


def _cut_tables(pb: AllocProblem, view) -> tuple[list[list[float]], list[list[int]]]:
    """Per device: running sums of module seconds, and for each start the last module its memory
    holds (cached on the problem per view)."""
    cache = pb.meta.setdefault("_cut_tables", {})
    key = id(view)
    if key not in cache:
        n = pb.n_modules
        pre = np.concatenate([np.zeros((pb.n_devices, 1)), np.cumsum(view.compute, axis=1)], axis=1)
        table = np.where(np.isfinite(pb.stage_bytes_table()), pb.stage_bytes_table(), np.inf)
        mem_end = []
        for d in range(pb.n_devices):
            ends = np.array([a - 1 + int(np.searchsorted(table[a, a:], pb.budget[d], side="right"))
                             for a in range(n)])
            mem_end.append(ends)
        cache[key] = ([list(map(float, row)) for row in pre], [list(map(int, e)) for e in mem_end])
    return cache[key]


def _order_moves(pb: AllocProblem, cur: list[int]) -> list[list[int]]:
    """Device orders one move from ``cur``: drop, add, replace or swap a phone (the header stays)."""
    first = 1 if pb.header is not None else 0
    free = _fastest_free(pb, set(cur))
    moves = [cur[:i] + cur[i + 1:] for i in range(first, len(cur)) if len(cur) > 1]
    moves += [cur[:i] + [d] + cur[i:] for d in free for i in range(first, len(cur) + 1)]
    moves += [cur[:i] + [d] + cur[i + 1:] for d in free for i in range(first, len(cur))]
    moves += [cur[:i] + [cur[j]] + cur[i + 1:j] + [cur[i]] + cur[j + 1:]
              for i in range(first, len(cur)) for j in range(i + 1, len(cur))]
    return moves


def order_neighbours(pb: AllocProblem, plan: Plan, objective: str, k: int = NEIGHBOURS) -> list[Plan]:
    """The ``k`` best plans one device-order move from ``plan``, each with its balanced cuts, and
    ``plan``'s own order re-balanced: plans that keep most phones and their order, so most weights
    stay where they are (what a re-plan at run time wants)."""
    view = pb.lat if objective == "latency" else pb.thr
    scored = []
    for order in [list(plan.devices)] + _order_moves(pb, list(plan.devices)):
        p = balanced_cuts(pb, order, view)
        if p is not None and pb.evaluate(p).feasible:
            scored.append((_rank(pb, p, objective), _key(p), p))
    scored.sort(key=lambda x: x[:2])
    out, seen = [], set()
    for _, key, p in scored:
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out[:k]


def order_search(pb: AllocProblem, plan: Plan, objective: str, max_rounds: int = 20) -> Plan:
    """Hill-climb over device orders (drop, add, swap or replace a phone), each order with its
    balanced cuts (:func:`balanced_cuts`), under the linear model: moves a boundary search alone
    cannot make, since every move re-balances the whole ring."""
    view = pb.lat if objective == "latency" else pb.thr
    cur = list(plan.devices)
    cur_plan = balanced_cuts(pb, cur, view) or plan
    cur_v = _rank(pb, cur_plan, objective) if pb.evaluate(cur_plan).feasible else (float("inf"), 0.0)
    if _rank(pb, plan, objective) < cur_v:
        cur_plan, cur_v = plan, _rank(pb, plan, objective)
    seen = {tuple(cur)}
    for _ in range(max_rounds):
        improved = False
        for order in _order_moves(pb, cur):
            if tuple(order) in seen:
                continue
            seen.add(tuple(order))
            p = balanced_cuts(pb, order, view)
            if p is None or not pb.evaluate(p).feasible:
                continue
            v = _rank(pb, p, objective)
            if v[0] < cur_v[0] * (1 - 1e-12) or (v[0] <= cur_v[0] * (1 + 1e-12) and v[1] < cur_v[1] * (1 - 1e-9)):
                cur, cur_plan, cur_v, improved = list(p.devices), p, v, True
                break
        if not improved:
            break
    return Plan(cur_plan.stages, "order")
